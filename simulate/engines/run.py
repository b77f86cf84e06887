""":func:`run_cell`: validate a cell, build its layer-0 kernel and escape band, dispatch to an
engine, and return the networks' statistics as an xarray Dataset.

Layer 0. Its pre-activations have i.i.d. Gaussian rows h^0_i ~ N(0, K0):

- default pair: K0 = q0 [[1, c0], [c0, 1]], i.e. i.i.d. N(0, q0) coordinates, correlation c0;
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
    c0: float | None = None,
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
    q0, c0 : variance and correlation of the default input pair at layer 0 (q0 required, c0 default
        0.5); both must be left None when ``inputs`` is given
    q_ref : reference variance of the escape band (default: each input's layer-0 variance, K0_bb)
    engine : a registered engine (``engine_names()``: "gram", "dense", ...) or "auto", the
        cheapest one that supports the activation, the number of inputs and ``escape_on``
    seed : int >= 0 or numpy.random.SeedSequence; with the engine, fully determines the output
    escape_factor : a network escapes at the first layer where, for some input b, the observable
        ``escape_on`` leaves [q_ref / escape_factor, escape_factor * q_ref]; must be > 1 with
        escape_factor * q_ref <= MAX_BAND
    escape_on : "q" (the empirical variance) or "v" (the conditional variance)
    inputs : optional (B, d) array of raw input vectors, replacing the default pair

    Returns
    -------
    xarray.Dataset with dimensions ``net`` (nets), ``layer`` (0..depth), ``input`` (B; 2 for the
    default pair) and ``pair`` (B (B-1) / 2: every pair a < b in row-major order, with coordinates
    ``input_a``, ``input_b``; size 1 for the default pair), and the variables of
    :class:`~simulate.engines.registry.Outputs` (q, corr, v, v_corr, zero_frac, log_gain,
    v_log_gain, escape_layer). Those the engine does not compute are NaN;
    ``attrs["observables"]`` lists the ones it does.
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

    k0, attrs = layer0_kernel(q0, c0, inputs, sigma_w2, sigma_b2)
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


def layer0_kernel(q0, c0, inputs, sigma_w2: float, sigma_b2: float) -> tuple[np.ndarray, dict]:
    """The layer-0 kernel K0 (B x B) of the default pair or of raw ``inputs``, and its attrs."""
    return (
        _input_kernel(inputs, q0, c0, sigma_w2, sigma_b2)
        if inputs is not None
        else _pair_kernel(q0, c0)
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
"""Dataset variables of :func:`run_cell`: dims, units, long_name."""


def output_dataset(out: Outputs, attrs: dict) -> xr.Dataset:
    """The engine's arrays as a Dataset (module docstring of :func:`run_cell`)."""
    nets, layers, n_inputs = out.q.shape
    input_a, input_b = np.triu_indices(n_inputs, k=1)
    return xr.Dataset(
        {
            name: (dims, getattr(out, name), {"units": units, "long_name": long_name})
            for name, (dims, units, long_name) in VARIABLES.items()
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


def _pair_kernel(q0, c0):
    """K0 = q0 [[1, c0], [c0, 1]] for the default pair, and its attrs."""
    if q0 is None:
        raise ValueError("q0=None: must be finite and > 0 for the default input pair")
    q0 = _check_number("q0", q0, lambda x: x > 0, "must be finite and > 0")
    c0 = 0.5 if c0 is None else _check_number("c0", c0, lambda x: abs(x) <= 1, "must be in [-1, 1]")
    return q0 * np.array([[1.0, c0], [c0, 1.0]]), {"q0": q0, "c0": c0}


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
