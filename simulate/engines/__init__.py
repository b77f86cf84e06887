"""Finite-width Monte Carlo: push inputs and a tangent through random networks, layer by layer.

One entry point, :func:`run_cell`, over two engines that sample the same distribution:

- ``"gram"`` (:mod:`simulate.engines.gram`): the exact conditional-Gaussian sampler,
  O(N (B+1)^2 + (B+1)^3) per layer;
- ``"dense"`` (:mod:`simulate.engines.dense`): explicit N x N Gaussian weights, O(N^2 (B+1));
- ``"auto"``: the cheaper of the two by that cost model (:func:`choose_engine`).

Layer 0 (both engines). Its pre-activations have i.i.d. Gaussian rows h^0_i ~ N(0, K0):

- default pair: K0 = q0 [[1, c0], [c0, 1]], i.e. i.i.d. N(0, q0) coordinates, correlation c0;
- ``inputs=X`` (B x d raw vectors): h^0 = W^0 x + b^0 with W^0_ij ~ N(0, sigma_w^2 / d) and
  b^0_i ~ N(0, sigma_b^2), i.e. K0 = (sigma_w^2 / d) X X^T + sigma_b^2 1 1^T. This is sampled
  exactly from K0 (Cholesky), so the cost does not depend on d.

The tangent starts as t^0 with i.i.d. N(0, 1) coordinates, independent of the inputs, and follows
input 0: t^{l+1} = W^{l+1} (phi'(h_0^l) * t^l). Layer l >= 1 is after l random hidden layers
h^{l} = W^{l} phi(h^{l-1}) + b^{l}, W_ij ~ N(0, sigma_w^2 / N), b_i ~ N(0, sigma_b^2), fresh each layer.

Random numbers: one ``numpy.random.Generator(SFC64(SeedSequence(seed)))`` per call, consumed in a
fixed order, so the output is a deterministic function of ``seed`` (bit-identical on a machine).
SFC64 rather than the default PCG64: drawing normals from it inside Numba is about 30% faster.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import xarray as xr

from simulate.activations import Activation
from simulate.engines.gram import safe_cholesky
from simulate.engines.propagate import ENGINE_CODES, run_networks

ENGINES = ("gram", "dense", "auto")
"""Allowed values of ``run_cell(engine=...)``."""


MAX_BAND = 1e100
"""Upper limit of the escape band escape_factor * q_ref: a network is stopped before its squared
pre-activations, summed over N units, could get anywhere near the float64 range (~1e308)."""


def choose_engine(width: int, n_inputs: int) -> str:
    """The cheaper engine for B = n_inputs inputs (plus the tangent, n = B + 1 vectors) at width N.

    Per layer the Gram sampler costs about N n^2 + n^3 and explicit weights about N^2 n.
    """
    n = n_inputs + 1
    return "gram" if width * n**2 + n**3 <= width**2 * n else "dense"


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
    q_star: float | None = None,
    engine: str = "gram",
    seed: int | np.random.SeedSequence = 0,
    escape_factor: float = 10.0,
    inputs: np.ndarray | None = None,
) -> xr.Dataset:
    """Simulate ``nets`` independent random networks of the given width and depth.

    Parameters
    ----------
    act : a scalar :class:`~simulate.activations.Activation`
    sigma_w2, sigma_b2 : weight and bias variances (weights N(0, sigma_w2 / fan_in))
    width, depth, nets : N >= 1 units per layer, depth >= 0 random layers, nets >= 1 networks
    q0, c0 : variance and correlation of the default input pair at layer 0 (q0 required, c0 default
        0.5); both must be left None when ``inputs`` is given
    q_star : reference variance of the escape band (default: each input's layer-0 variance, K0_bb)
    engine : "gram", "dense" or "auto"
    seed : int >= 0 or numpy.random.SeedSequence; fully determines the output
    escape_factor : a network escapes at the first layer where some q_b leaves
        [q_ref / escape_factor, escape_factor * q_ref]; must be > 1 with escape_factor * q_ref
        <= MAX_BAND
    inputs : optional (B, d) array of raw input vectors, replacing the default pair

    Returns
    -------
    xarray.Dataset with dimensions ``net`` (nets), ``layer`` (0..depth), ``input`` (B; 2 for the
    default pair) and ``pair`` (B (B-1) / 2: every pair a < b in row-major order, with coordinates
    ``input_a``, ``input_b``; size 1 for the default pair), and variables

    - ``q(net, layer, input)``: (1/N) sum_i h_i^2, the empirical pre-activation variance;
    - ``corr(net, layer, pair)``: sum_i h_ai h_bi / sqrt(sum_i h_ai^2 sum_i h_bi^2);
    - ``zero_frac(net, layer, input)``: fraction of units with phi(h_i) = 0 exactly;
    - ``log_gain(net, layer)``: ln(|t^l|^2 / |t^{l-1}|^2), NaN at layer 0; -inf at a layer where
      the tangent dies (exact zero gain: every unit it reaches has phi' = 0), after which the
      tangent is redrawn i.i.d. N(0, 1);
    - ``escape_layer(net)``: first layer outside the escape band, -1 if none.

    After a network escapes at layer l its later layers (> l) are NaN: it is not propagated further.
    """
    _check_activation(act)
    sigma_w2 = _check_number("sigma_w2", sigma_w2, lambda x: x > 0, "must be finite and > 0")
    sigma_b2 = _check_number("sigma_b2", sigma_b2, lambda x: x >= 0, "must be finite and >= 0")
    width = _check_int("width", width, 1)
    depth = _check_int("depth", depth, 0)
    nets = _check_int("nets", nets, 1)
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}: must be one of {', '.join(ENGINES)}")
    escape_factor = _check_number(
        "escape_factor", escape_factor, lambda x: x > 1, "must be finite and > 1"
    )
    if q_star is not None:
        q_star = _check_number("q_star", q_star, lambda x: x > 0, "must be finite and > 0 or None")
    seed_seq = _seed_sequence(seed)

    if inputs is None:
        k0, attrs = _pair_kernel(q0, c0)
    else:
        k0, attrs = _input_kernel(inputs, q0, c0, sigma_w2, sigma_b2)
    n_inputs = k0.shape[0]
    if engine == "auto":
        engine = choose_engine(width, n_inputs)

    q_ref = np.full(n_inputs, q_star) if q_star is not None else np.diag(k0).copy()
    if np.max(q_ref) * escape_factor > MAX_BAND:
        raise ValueError(
            f"escape_factor={escape_factor!r}: escape_factor * q_ref = "
            f"{np.max(q_ref) * escape_factor:.3g} must be <= {MAX_BAND:.0e}, so nothing can overflow"
        )
    kernel = np.zeros((n_inputs + 1, n_inputs + 1))
    kernel[:n_inputs, :n_inputs] = k0
    kernel[n_inputs, n_inputs] = 1.0
    factor = np.empty_like(kernel)
    safe_cholesky(kernel, factor)

    n_pairs = n_inputs * (n_inputs - 1) // 2
    q = np.full((nets, depth + 1, n_inputs), np.nan)
    corr = np.full((nets, depth + 1, n_pairs), np.nan)
    zero_frac = np.full((nets, depth + 1, n_inputs), np.nan)
    log_gain = np.full((nets, depth + 1), np.nan)
    escape_layer = np.full(nets, -1, dtype=np.int64)
    rng = np.random.Generator(np.random.SFC64(seed_seq))
    run_networks(
        ENGINE_CODES[engine],
        factor,
        width,
        act.code,
        float(act.tau),
        float(act.m),
        sigma_w2,
        sigma_b2,
        q_ref / escape_factor,
        q_ref * escape_factor,
        rng,
        q,
        corr,
        zero_frac,
        log_gain,
        escape_layer,
    )

    input_a, input_b = np.triu_indices(n_inputs, k=1)
    attrs.update(
        engine=engine,
        width=width,
        depth=depth,
        nets=nets,
        escape_factor=escape_factor,
        sigma_w2=sigma_w2,
        sigma_b2=sigma_b2,
        activation=act.label(),
        rng="numpy.random.Generator(SFC64(SeedSequence(seed)))",
    )
    if q_star is not None:
        attrs["q_star"] = q_star
    return xr.Dataset(
        {
            "q": (
                ("net", "layer", "input"),
                q,
                {"units": "pre-activation variance", "long_name": "(1/N) sum_i h_i^2"},
            ),
            "corr": (
                ("net", "layer", "pair"),
                corr,
                {"units": "1", "long_name": "empirical correlation of the pre-activations"},
            ),
            "zero_frac": (
                ("net", "layer", "input"),
                zero_frac,
                {"units": "1", "long_name": "fraction of exactly-zero activations"},
            ),
            "log_gain": (
                ("net", "layer"),
                log_gain,
                {"units": "1", "long_name": "ln(|t^l|^2 / |t^(l-1)|^2), tangent gain"},
            ),
            "escape_layer": (
                "net",
                escape_layer,
                {"units": "layer", "long_name": "first layer outside the escape band (-1: never)"},
            ),
        },
        coords={
            "net": np.arange(nets),
            "layer": np.arange(depth + 1),
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
    if not isinstance(act, Activation) or np.ndim(act.tau) or np.ndim(act.m):
        raise ValueError(f"act={act!r}: must be an Activation with scalar tau and m")


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
