""":func:`run_cell`: validate a cell, build its layer-0 kernel and escape band, dispatch to an
engine, and return the networks' statistics as an xarray Dataset.

Layer 0. Its pre-activations have i.i.d. Gaussian rows h^0_i ~ N(0, K0):

- B = ``n_inputs`` inputs of variance q0 (default: the pair, B = 2): K0 = q0 C with C_bb = 1 and
  C_ab = c0 for a float c0 (equicorrelated: K0 = q0 [(1 - c0) I + c0 1 1^T]), or C_ab = c0[p] for
  a list of the B (B-1) / 2 pair correlations (p the pair (a, b), a < b, in row-major order);
- ``inputs=X`` (B x d raw vectors): h^0 = W^0 x + b^0 with W^0_ij ~ N(0, sigma_w^2 / d) and
  b^0_i ~ N(0, sigma_b^2), i.e. K0 = (sigma_w^2 / d) X X^T + sigma_b^2 1 1^T. Engines sample it
  exactly from K0, so the cost does not depend on d.

Random numbers: one ``numpy.random.Generator(SFC64(SeedSequence(seed)))`` per call, handed to the
engine, so the output is a deterministic function of ``seed`` and the engine (bit-identical on a
machine). SFC64 rather than the default PCG64: drawing normals from it inside Numba is about 30%
faster.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import xarray as xr

from simulate.activations import Activation
from simulate.engines.registry import Outputs, Problem, engine_names, select_engine

MAX_BAND = 1e100
"""Upper limit of the escape band escape_factor * q_ref: a network is stopped before its squared
pre-activations, summed over N units, could get anywhere near the float64 range (~1e308)."""

ESCAPE_OBSERVABLES = ("q", "v")
"""Allowed values of ``run_cell(escape_on=...)``."""


def run_cell(
    act: Activation,
    sigma_w2: float,
    sigma_b2: float,
    *,
    width: int,
    depth: int,
    nets: int,
    q0: float | None = None,
    c0: float | Sequence[float] | None = None,
    n_inputs: int = 2,
    q_ref: float | None = None,
    engine: str = "gram",
    seed: int | np.random.SeedSequence = 0,
    escape_factor: float = 10.0,
    escape_on: str = "q",
    inputs: np.ndarray | None = None,
) -> xr.Dataset:
    """Simulate ``nets`` independent random networks of the given width and depth.

    Parameters
    ----------
    act : a single :class:`~simulate.activations.Activation` (not a batch)
    sigma_w2, sigma_b2 : weight and bias variances (weights N(0, sigma_w2 / fan_in))
    width, depth, nets : N >= 1 units per layer, depth >= 0 random layers, nets >= 1 networks
    q0, c0 : variance and correlation(s) of the inputs at layer 0 (q0 required, c0 default 0.5):
        c0 a float in [-1, 1] (equicorrelated) or the B (B-1) / 2 pair correlations, with a positive
        semidefinite correlation matrix; both must be left None when ``inputs`` is given
    n_inputs : B >= 1, the number of inputs of variance q0 (ignored with ``inputs``)
    q_ref : reference variance of the escape band (default: each input's layer-0 variance, K0_bb)
    engine : a registered engine (``engine_names()``: "gram", "dense", ...) or "auto", the
        cheapest one that supports the activation, the number of inputs and ``escape_on``
    seed : int >= 0 or numpy.random.SeedSequence; with the engine, fully determines the output
    escape_factor : a network escapes at the first layer where, for some input b, the observable
        ``escape_on`` leaves [q_ref / escape_factor, escape_factor * q_ref]; must be > 1 with
        escape_factor * q_ref <= MAX_BAND
    escape_on : "q" (the empirical variance) or "v" (the conditional variance)
    inputs : optional (B, d) array of raw input vectors, replacing q0 and c0

    Returns
    -------
    xarray.Dataset with dimensions ``net`` (nets), ``layer`` (0..depth), ``input`` (B; 2 for the
    default pair) and ``pair`` (B (B-1) / 2: every pair a < b in row-major order, with coordinates
    ``input_a``, ``input_b``; size 1 for the default pair), the variables of
    :class:`~simulate.engines.registry.Outputs` (q, corr, v, v_corr, zero_frac, log_gain,
    v_log_gain, escape_layer) and the per-network summaries of :func:`summaries`, computed from
    every layer. Those the engine does not compute are NaN; ``attrs["observables"]`` lists the
    ones it does.
    """
    _check_activation(act)
    sigma_w2 = _check_number("sigma_w2", sigma_w2, lambda x: x > 0, "must be finite and > 0")
    sigma_b2 = _check_number("sigma_b2", sigma_b2, lambda x: x >= 0, "must be finite and >= 0")
    width = _check_int("width", width, 1)
    depth = _check_int("depth", depth, 0)
    nets = _check_int("nets", nets, 1)
    if engine not in engine_names():
        raise ValueError(f"engine={engine!r}: must be one of {', '.join(engine_names())}")
    if escape_on not in ESCAPE_OBSERVABLES:
        raise ValueError(f"escape_on={escape_on!r}: must be one of {', '.join(ESCAPE_OBSERVABLES)}")
    seed_seq = _seed_sequence(seed)

    k0, attrs = layer0_kernel(q0, c0, n_inputs, inputs, sigma_w2, sigma_b2)
    band_lo, band_hi = escape_band(k0, q_ref, escape_factor)
    chosen = select_engine(engine, act, k0.shape[0], width, escape_on)
    problem = Problem(act, sigma_w2, sigma_b2, width, k0, band_lo, band_hi, escape_on)
    out = Outputs.empty(nets, depth, k0.shape[0])
    chosen.run(problem, np.random.Generator(np.random.SFC64(seed_seq)), out)

    attrs.update(
        engine=chosen.name,
        observables=sorted(chosen.observables),
        width=width,
        depth=depth,
        nets=nets,
        escape_factor=float(escape_factor),
        escape_on=escape_on,
        sigma_w2=sigma_w2,
        sigma_b2=sigma_b2,
        activation=act.label(),
        rng="numpy.random.Generator(SFC64(SeedSequence(seed)))",
    )
    if q_ref is not None:
        attrs["q_ref"] = float(q_ref)
    return output_dataset(out, attrs)


def layer0_kernel(
    q0, c0, n_inputs, inputs, sigma_w2: float, sigma_b2: float
) -> tuple[np.ndarray, dict]:
    """The layer-0 kernel K0 (B x B) of B inputs of variance q0 or of raw ``inputs``, and its
    attrs."""
    return (
        _input_kernel(inputs, q0, c0, sigma_w2, sigma_b2)
        if inputs is not None
        else _correlation_kernel(q0, c0, n_inputs)
    )


def escape_band(k0: np.ndarray, q_ref, escape_factor) -> tuple[np.ndarray, np.ndarray]:
    """[q_ref / f, f q_ref] per input (q_ref default: K0_bb), after checking q_ref and f."""
    escape_factor = _check_number(
        "escape_factor", escape_factor, lambda x: x > 1, "must be finite and > 1"
    )
    if q_ref is None:
        ref = np.diag(k0).copy()
    else:
        ref = np.full(
            k0.shape[0],
            _check_number("q_ref", q_ref, lambda x: x > 0, "must be finite and > 0 or None"),
        )
    if np.max(ref) * escape_factor > MAX_BAND:
        raise ValueError(
            f"escape_factor={escape_factor!r}: escape_factor * q_ref = "
            f"{np.max(ref) * escape_factor:.3g} must be <= {MAX_BAND:.0e}, so nothing can overflow"
        )
    return ref / escape_factor, ref * escape_factor


VARIABLES = {
    "q": (("net", "layer", "input"), "pre-activation variance", "(1/N) sum_i h_i^2"),
    "corr": (("net", "layer", "pair"), "1", "empirical correlation of the pre-activations"),
    "v": (
        ("net", "layer", "input"),
        "pre-activation variance",
        "conditional variance sigma_w^2 (1/N) sum_i phi(h_i^(l-1))^2 + sigma_b^2",
    ),
    "v_corr": (("net", "layer", "pair"), "1", "conditional correlation K_ab / sqrt(K_aa K_bb)"),
    "zero_frac": (("net", "layer", "input"), "1", "fraction of exactly-zero activations"),
    "log_gain": (("net", "layer"), "1", "ln(|t^l|^2 / |t^(l-1)|^2), tangent gain"),
    "v_log_gain": (
        ("net", "layer"),
        "1",
        "ln(K_tt^l / K_tt^(l-1)), gain of the tangent's conditional variance",
    ),
    "escape_layer": ("net", "layer", "first layer outside the escape band (-1: never)"),
}
"""Per-layer dataset variables of :func:`run_cell`: dims, units, long_name."""

SUMMARIES = {
    "final_v": (("net", "input"), "pre-activation variance", "v at the last layer reached"),
    "final_q": (("net", "input"), "pre-activation variance", "q at the last layer reached"),
    "final_zero_frac": (("net", "input"), "1", "zero_frac at the last layer reached"),
    "mean_zero_frac": (("net", "input"), "1", "mean of zero_frac over layers 0..last reached"),
    "mean_log_gain": (("net",), "1", "mean of the finite log_gain over layers 1..last reached"),
    "mean_v_log_gain": (
        ("net",),
        "1",
        "mean of the finite v_log_gain over layers 1..last reached",
    ),
}
"""Per-network summaries of :func:`run_cell` (:func:`summaries`): dims, units, long_name."""


def summaries(out: Outputs) -> dict[str, np.ndarray]:
    """Per-network summaries of the engine's full per-layer arrays (every layer, whatever a store
    keeps of them). With r = escape_layer if the network escaped, else depth (the last layer
    reached; later layers are NaN):

        final_X          = X^r                                   (X = v, q, zero_frac; per input)
        mean_zero_frac   = (1 / (r + 1)) sum_{l=0}^{r} zero_frac^l                  (per input)
        mean_log_gain    = mean of log_gain^l over l in 1..r with log_gain^l finite
        mean_v_log_gain  = the same for v_log_gain

    The gains leave out the layers where the tangent died (-inf); they are NaN when no layer is
    left (r = 0, or an engine that does not compute that gain). Their mean estimates ln chi_1.
    """
    nets, layers, _ = out.v.shape
    reached = np.where(out.escape_layer >= 0, out.escape_layer, layers - 1)
    rows = np.arange(nets)
    within = np.arange(layers)[None, :] <= reached[:, None]  # (net, layer)
    result = {f"final_{x}": getattr(out, x)[rows, reached] for x in ("v", "q", "zero_frac")}
    kept = np.where(within[..., None], out.zero_frac, 0.0)  # NaN after the escape layer
    result["mean_zero_frac"] = kept.sum(axis=1) / (reached[:, None] + 1)
    for name in ("log_gain", "v_log_gain"):
        gain = getattr(out, name)
        kept = within & np.isfinite(gain)
        count = kept.sum(axis=1)
        total = np.where(kept, gain, 0.0).sum(axis=1)
        result[f"mean_{name}"] = np.divide(total, count, out=np.full(nets, np.nan), where=count > 0)
    return result


def output_dataset(out: Outputs, attrs: dict) -> xr.Dataset:
    """The engine's arrays and their :func:`summaries` as a Dataset (module docstring of
    :func:`run_cell`)."""
    nets, layers, n_inputs = out.q.shape
    input_a, input_b = np.triu_indices(n_inputs, k=1)
    values = {name: getattr(out, name) for name in VARIABLES} | summaries(out)
    return xr.Dataset(
        {
            name: (dims, values[name], {"units": units, "long_name": long_name})
            for name, (dims, units, long_name) in (VARIABLES | SUMMARIES).items()
        },
        coords={
            "net": np.arange(nets),
            "layer": np.arange(layers),
            "input": np.arange(n_inputs),
            "input_a": ("pair", input_a, {"long_name": "first input of the pair"}),
            "input_b": ("pair", input_b, {"long_name": "second input of the pair"}),
        },
        attrs=attrs,
    )


def correlation_matrix(c0: float | Sequence[float], n_inputs: int) -> np.ndarray:
    """C (B x B): C_bb = 1, C_ab = C_ba = c0 (a float) or c0[p] for the pair p = (a, b), a < b, in
    row-major order (a sequence of B (B-1) / 2 values; ValueError for another length)."""
    a, b = np.triu_indices(n_inputs, k=1)
    values = np.asarray(c0, dtype=float)
    if values.ndim and values.shape != a.shape:
        raise ValueError(
            f"c0={list(values)!r}: must be one correlation or B(B-1)/2 = {a.size} of them "
            f"(B = {n_inputs} inputs)"
        )
    c = np.eye(n_inputs)
    c[a, b] = c[b, a] = values
    return c


SEMIDEFINITE_TOL = 1e-12
"""A correlation matrix with an eigenvalue below -SEMIDEFINITE_TOL is not a correlation matrix."""


def _correlation_kernel(q0, c0, n_inputs):
    """K0 = q0 C (:func:`correlation_matrix`) for B = n_inputs inputs, and its attrs."""
    if q0 is None:
        raise ValueError("q0=None: must be finite and > 0 when inputs= is not given")
    q0 = _check_number("q0", q0, lambda x: x > 0, "must be finite and > 0")
    n_inputs = _check_int("n_inputs", n_inputs, 1)
    c0 = 0.5 if c0 is None else c0
    if isinstance(c0, numbers.Real):
        c0 = _check_number("c0", c0, lambda x: abs(x) <= 1, "must be in [-1, 1]")
    elif not all(isinstance(c, numbers.Real) and math.isfinite(c) and abs(c) <= 1 for c in c0):
        raise ValueError(f"c0={list(c0)!r}: every correlation must be in [-1, 1]")
    c = correlation_matrix(c0, n_inputs)
    smallest = float(np.linalg.eigvalsh(c)[0])
    if smallest < -SEMIDEFINITE_TOL:
        raise ValueError(
            f"c0={c0!r}: the inputs' correlation matrix is not positive semidefinite "
            f"(smallest eigenvalue {smallest:.3g})"
        )
    shown = c0 if isinstance(c0, float) else [float(x) for x in c0]
    return q0 * c, {"q0": q0, "c0": shown, "n_inputs": n_inputs}


def _input_kernel(inputs, q0, c0, sigma_w2, sigma_b2):
    """K0 = (sigma_w^2 / d) X X^T + sigma_b^2 1 1^T for raw inputs X (B x d), and its attrs."""
    for name, value in (("q0", q0), ("c0", c0)):
        if value is not None:
            raise ValueError(
                f"{name}={value!r}: must be None when inputs= is given (layer 0 follows from them)"
            )
    x = np.asarray(inputs, dtype=float)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1 or not np.all(np.isfinite(x)):
        raise ValueError(
            f"inputs with shape {x.shape}: must be a finite (B, d) array with B >= 1, d >= 1"
        )
    k0 = sigma_w2 / x.shape[1] * (x @ x.T) + sigma_b2
    if np.any(np.diag(k0) <= 0):
        bad = int(np.argmin(np.diag(k0)))
        raise ValueError(
            f"inputs[{bad}]: is zero with sigma_b2 = 0, so its layer-0 variance is 0; "
            "every input needs a positive layer-0 variance"
        )
    return k0, {"n_inputs": x.shape[0], "input_dim": x.shape[1]}


def _check_activation(act):
    if not isinstance(act, Activation) or act.batch_shape:
        raise ValueError(f"act={act!r}: must be a single Activation (not a batch)")


def _check_number(name, value, ok, allowed):
    if not isinstance(value, numbers.Real) or not math.isfinite(value) or not ok(value):
        raise ValueError(f"{name}={value!r}: {allowed}")
    return float(value)


def _check_int(name, value, low):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name}={value!r}: must be an integer >= {low}")
    return int(value)


def _seed_sequence(seed):
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool) and seed >= 0:
        return np.random.SeedSequence(int(seed))
    raise ValueError(f"seed={seed!r}: must be an integer >= 0 or a numpy.random.SeedSequence")
