"""The engine interface: what an engine receives, what it fills, what it declares; the registry.

An engine samples ``nets`` independent random networks of one cell (:class:`Problem`) from a
``numpy.random.Generator`` and writes their per-layer statistics into pre-allocated arrays
(:class:`Outputs`). It declares, in an :class:`Engine`:

- ``supports(act, n_inputs)``: None when it can run that activation with B = n_inputs inputs, else a
  one-line reason (``run_cell(engine="auto")`` then passes it over);
- ``cost(width, n_inputs, act=None)``: its estimated time per network and layer, in ns on one core
  of the development machine (a relative measure: ``auto`` takes the cheapest engine by it, and a
  sweep's scheduler sizes its tasks with it); ``act`` is the activation when known (an engine whose
  cost depends on it, through its sparsity say, assumes a typical one without it);
- ``workspace(width, n_inputs)``: bytes of working memory it holds while running (outputs aside);
- ``observables``: which of :data:`OBSERVABLES` it computes; the others stay NaN in its output;
- ``run(problem, rng, out)``: the sampler.

Adding an engine (a GPU one, say) is one call, ``register(Engine(...))``, in its own module; nothing
else changes. Its randomness must come from ``rng`` alone, so that its output is a deterministic
function of the seed (a device generator can be seeded from ``rng.integers``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from simulate.activations import Activation

OBSERVABLES = ("q", "corr", "v", "v_corr", "zero_frac", "log_gain", "v_log_gain")
"""Per-layer statistics an engine may compute (definitions in :class:`Outputs`)."""

AUTO = "auto"
"""``run_cell(engine=AUTO)``: the cheapest registered engine that supports the cell."""


@dataclass(frozen=True)
class Problem:
    """One cell, validated, as an engine receives it.

    Layer 0 has i.i.d. Gaussian rows h^0_i ~ N(0, k0) (one column per input), the tangent t^0 i.i.d.
    N(0, 1) independent of them; layer l >= 1 is h^l = W^l phi(h^{l-1}) + b^l with
    W_ij ~ N(0, sigma_w2 / width), b_i ~ N(0, sigma_b2) fresh each layer, and the tangent follows
    input 0: t^l = W^l (phi'(h_0^{l-1}) * t^{l-1}).

    A network escapes at the first layer where, for some input b, the observable ``escape_on``
    ("q" or "v") leaves [band_lo[b], band_hi[b]] (NaN counts as leaving).
    """

    act: Activation
    sigma_w2: float
    sigma_b2: float
    width: int
    k0: np.ndarray
    band_lo: np.ndarray
    band_hi: np.ndarray
    escape_on: str

    @property
    def n_inputs(self) -> int:
        return self.k0.shape[0]


@dataclass(frozen=True)
class Outputs:
    """The arrays an engine fills, pre-filled with NaN (escape_layer: -1), with ``nets`` networks,
    ``depth + 1`` layers, B inputs and B (B-1) / 2 pairs a < b in row-major order:

    - ``q (net, layer, input)``: (1/N) sum_i h_bi^2, the empirical pre-activation variance;
    - ``corr (net, layer, pair)``: sum_i h_ai h_bi / sqrt(sum_i h_ai^2 sum_i h_bi^2);
    - ``v (net, layer, input)``: the conditional variance of h_b^l given layer l - 1,
      v^l = sigma_w^2 (1/N) sum_i phi(h_bi^{l-1})^2 + sigma_b^2 (layer 0: k0_bb); its conditional
      mean is exactly the GP variance map, E[v^{l+1} | v^l] = V(v^l);
    - ``v_corr (net, layer, pair)``: K_ab / sqrt(K_aa K_bb) of that conditional covariance
      K_ab = sigma_w^2 (1/N) sum_i phi(h_ai^{l-1}) phi(h_bi^{l-1}) + sigma_b^2 (layer 0: k0);
    - ``zero_frac (net, layer, input)``: fraction of units with phi(h_bi) = 0 exactly;
    - ``log_gain (net, layer)``: ln(|t^l|^2 / |t^{l-1}|^2), NaN at layer 0; -inf where the tangent
      dies (every unit it reaches has phi' = 0), after which it is redrawn i.i.d. N(0, 1);
    - ``v_log_gain (net, layer)``: ln(K^l_tt / K^{l-1}_tt), the gain of the tangent's conditional
      variance K^l_tt = sigma_w^2 (1/N) sum_i (phi'(h_0i^{l-1}) t_i^{l-1})^2 (K^0_tt = 1), NaN at
      layer 0; -inf where the tangent dies, after which K_tt restarts at 1 (the redrawn tangent);
    - ``escape_layer (net)``: the escape layer (:class:`Problem`), -1 if none. Layers after it stay
      NaN: an escaped network is not propagated further.
    """

    q: np.ndarray
    corr: np.ndarray
    v: np.ndarray
    v_corr: np.ndarray
    zero_frac: np.ndarray
    log_gain: np.ndarray
    v_log_gain: np.ndarray
    escape_layer: np.ndarray

    @classmethod
    def empty(cls, nets: int, depth: int, n_inputs: int) -> Outputs:
        per_input = (nets, depth + 1, n_inputs)
        per_pair = (nets, depth + 1, n_inputs * (n_inputs - 1) // 2)
        return cls(
            q=np.full(per_input, np.nan),
            corr=np.full(per_pair, np.nan),
            v=np.full(per_input, np.nan),
            v_corr=np.full(per_pair, np.nan),
            zero_frac=np.full(per_input, np.nan),
            log_gain=np.full((nets, depth + 1), np.nan),
            v_log_gain=np.full((nets, depth + 1), np.nan),
            escape_layer=np.full(nets, -1, dtype=np.int64),
        )


def supports_everything(act: Activation, n_inputs: int) -> str | None:
    """``Engine.supports`` of an engine that runs any activation and any number of inputs."""
    return None


@dataclass(frozen=True)
class Engine:
    """A Monte Carlo engine (module docstring)."""

    name: str
    run: Callable[[Problem, np.random.Generator, Outputs], None]
    cost: Callable[..., float]
    workspace: Callable[[int, int], float]
    supports: Callable[[Activation, int], str | None] = supports_everything
    observables: frozenset[str] = frozenset(OBSERVABLES)
    summary: str = ""


ENGINES: dict[str, Engine] = {}
"""The registered engines by name, in registration order."""


def register(engine: Engine) -> Engine:
    """Add ``engine`` to :data:`ENGINES` (its name must be new and not "auto"); return it."""
    if not engine.name.isidentifier() or engine.name == AUTO or engine.name in ENGINES:
        raise ValueError(f"engine name {engine.name!r}: must be a new identifier, not {AUTO!r}")
    unknown = set(engine.observables) - set(OBSERVABLES)
    if unknown or "v" not in engine.observables:
        raise ValueError(
            f"observables of engine {engine.name!r}: must include v and be among "
            f"{', '.join(OBSERVABLES)}"
        )
    ENGINES[engine.name] = engine
    return engine


def engine_names() -> tuple[str, ...]:
    """Allowed values of ``run_cell(engine=...)``: the registered engines, then "auto"."""
    return (*ENGINES, AUTO)


def why_not(engine: Engine, act: Activation, n_inputs: int, escape_on: str) -> str | None:
    """None when ``engine`` can run the cell, escapes detected on ``escape_on``; else why not."""
    if escape_on not in engine.observables:
        return f"it does not compute {escape_on}, the escape observable (use escape_on='v')"
    return engine.supports(act, n_inputs)


def select_engine(
    name: str, act: Activation, n_inputs: int, width: int, escape_on: str = "q"
) -> Engine:
    """The engine ``name``, or for "auto" the cheapest (by ``cost(width, n_inputs, act)``, ties to
    the first registered) that supports the cell; ValueError naming the engine and the reason if
    none."""
    if name != AUTO:
        if name not in ENGINES:
            raise ValueError(f"engine={name!r}: must be one of {', '.join(engine_names())}")
        reason = why_not(ENGINES[name], act, n_inputs, escape_on)
        if reason is not None:
            raise ValueError(
                f"engine={name!r}: cannot run {act.label()} with B={n_inputs}: {reason}"
            )
        return ENGINES[name]
    able = [e for e in ENGINES.values() if why_not(e, act, n_inputs, escape_on) is None]
    if not able:
        raise ValueError(
            f"engine={AUTO!r}: no registered engine runs {act.label()} with B={n_inputs} "
            f"and escape_on={escape_on!r}"
        )
    return min(able, key=lambda e: e.cost(width, n_inputs, act))
