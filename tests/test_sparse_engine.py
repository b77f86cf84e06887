"""The sparse engine: its numerical kernels against scipy, one layer against a full draw of every row,
and whole networks against the Gram engine, in distribution.

Statistical tests use fixed seeds and two-sample Kolmogorov-Smirnov tests (or one-sample against
scipy's distribution), each family at a stated family-wise level with a Bonferroni correction.
Counts (zero_frac, escape_layer) have ties: the KS p-value is then conservative.
"""

import math
import re

import numpy as np
import pytest
from numba import njit
from scipy import special, stats

from simulate import gp
from simulate.activations import Activation
from simulate.engines import run_cell
from simulate.engines import sparse as sp
from simulate.engines._bvn import bvn_cdf, bvn_cdf_grid, ndtri

FAMILY_LEVEL = 1e-3

CRELU_CLIPPED = Activation.from_sparsity("crelu", 0.85, 1.0, m=1.0)
CRELU = Activation.from_sparsity("crelu", 0.85, 1.0)
CST_CLIPPED = Activation.from_sparsity("cst", 0.8, 1.0, m=1.0)
CST = Activation.from_sparsity("cst", 0.8, 1.0)
CUSTOM = Activation.piecewise_linear([-1.0, 0.5, 2.0], [-0.3, 0.0, 1.5], 0.2, 0.0, name="custom")
ACTIVATIONS = {
    "crelu-clipped": CRELU_CLIPPED,
    "crelu": CRELU,
    "cst-clipped": CST_CLIPPED,
    "cst": CST,
    "custom": CUSTOM,
}


def pieces_of(act):
    p = act.pieces
    return p.breaks, p.anchor_x, p.anchor_y, p.slope


# --------------------------------------------------------------------------------------------------
# Numerical kernels against scipy


def test_ndtri_matches_scipy():
    """AS 241 against scipy.special.ndtri from p = 1e-300 to 1 - 1e-16: relative error < 2e-15
    (measured 5e-16), and the conventions at 0 and 1."""
    p = np.concatenate(
        [
            10.0 ** -np.arange(1, 300, 3.7),
            np.linspace(1e-3, 1 - 1e-3, 999),
            1 - 10.0 ** -np.arange(1, 16, 0.5),
        ]
    )
    ours = np.array([ndtri(x) for x in p])
    ref = special.ndtri(p)
    assert np.all(np.abs(ours - ref) <= 2e-15 * np.maximum(1.0, np.abs(ref)))
    assert ndtri(0.0) == -math.inf and ndtri(1.0) == math.inf


BVN_R = (-1.0, -0.9999999, -0.99, -0.925, -0.8, -0.75, -0.5, -0.3, 0.0, 0.29, 0.3, 0.6, 0.74,
         0.75, 0.9, 0.924, 0.925, 0.95, 0.999, 0.9999999, 1.0)  # fmt: skip
BVN_POINTS = ((0.0, 0.0), (1.036, 2.036), (-3.0, 3.0), (6.0, -6.0), (-8.0, -8.0), (0.5, -0.2),
              (-1.3, -0.4), (2.5, 2.4), (-0.7, 4.0), (3.3, 0.1))  # fmt: skip


def test_bvn_cdf_matches_scipy():
    """Bivariate normal CDF against scipy.stats.multivariate_normal.cdf (abseps 1e-14) to 1e-12
    absolute, across the method's switch points |r| = 0.3, 0.75, 0.925 and up to |r| = 1 (there
    against the closed forms Phi(min(h, k)) and max(0, Phi(h) - Phi(-k))); the grid evaluator
    equals the pointwise one; infinite limits give the one-dimensional values."""
    worst = 0.0
    for r in BVN_R:
        for h, k in BVN_POINTS:
            if abs(r) < 1.0:
                ref = stats.multivariate_normal.cdf(
                    [h, k], mean=[0.0, 0.0], cov=[[1.0, r], [r, 1.0]], abseps=1e-14, releps=1e-14
                )
            else:
                ref = (
                    special.ndtr(min(h, k))
                    if r > 0
                    else max(0.0, special.ndtr(h) - special.ndtr(-k))
                )
            worst = max(worst, abs(bvn_cdf(h, k, r) - ref))
        xs = np.array([h for h, _ in BVN_POINTS])
        ys = np.array([k for _, k in BVN_POINTS])
        grid = np.empty((xs.size, ys.size))
        bvn_cdf_grid(xs, ys, r, grid)
        pointwise = np.array([[bvn_cdf(x, y, r) for y in ys] for x in xs])
        np.testing.assert_array_equal(grid, pointwise)
    assert worst < 1e-12, worst
    assert bvn_cdf(math.inf, 0.3, 0.5) == pytest.approx(special.ndtr(0.3), abs=1e-16)
    assert bvn_cdf(-math.inf, 0.3, 0.5) == 0.0
    assert bvn_cdf(0.3, math.inf, -0.5) == pytest.approx(special.ndtr(0.3), abs=1e-16)


@njit
def _truncated_draws(a, b, n, strips, rng):
    row = np.empty(sp.TABLE_COLUMNS)
    sp.interval_row(a, b, row)
    strip = np.empty((sp.STRIPS + 3, 4))
    guide = np.empty(sp.GUIDE, dtype=np.int64)
    tails = np.empty((2, sp.TABLE_COLUMNS))
    if strips:
        sp.prepare_strips(row, strip, guide, tails)
    out = np.empty(n)
    sp.fill_truncated(row, strip, guide, tails, rng, out)
    return out


TRUNCATIONS = ((-math.inf, math.inf), (1.036, math.inf), (-math.inf, -2.0), (-math.inf, 0.5),
               (1.036, 2.036), (-0.5, 0.7), (-3.0, -1.0), (2.0, 8.0), (-1e-3, 2e-3), (0.0, 1.0),
               (-2.0, 0.0), (6.0, 9.0), (-9.0, -7.0), (8.0, math.inf), (-math.inf, -12.0),
               (30.0, 30.5))  # fmt: skip


@pytest.mark.slow
def test_truncated_normal_matches_scipy():
    """Both samplers (inversion; strips with exact tails) against scipy.stats.truncnorm, 100000
    draws per interval, one-sample KS, family-wise level 1e-3 over 2 x 16 intervals; every draw
    inside [a, b]. Intervals reach far tails (beyond 8, 12 and 30 standard deviations)."""
    rng = np.random.Generator(np.random.SFC64(20))
    level = FAMILY_LEVEL / (2 * len(TRUNCATIONS))
    for strips in (False, True):
        for a, b in TRUNCATIONS:
            x = _truncated_draws(a, b, 100_000, strips, rng)
            assert np.all((x >= a) & (x <= b)), (strips, a, b)
            p = stats.kstest(x, stats.truncnorm(a, b).cdf).pvalue
            assert p > level, (strips, a, b, p)


# --------------------------------------------------------------------------------------------------
# One layer: the sums S = sum_i a_i a_i^T and the zero counts, against drawing every row


@njit
def _sparse_layers(K, width, pieces, reps, rng, sums, zeros_out):
    nv = K.shape[0]
    work = sp.workspace(nv, pieces[2].size, width)
    S = np.empty((nv, nv))
    zeros = np.empty(nv - 1, dtype=np.int64)
    for r in range(reps):
        sp.draw_layer(K, width, pieces, rng, work, S, zeros)
        k = 0
        for i in range(nv):
            for j in range(i + 1):
                sums[r, k] = S[i, j]
                k += 1
        zeros_out[r, :] = zeros


def _full_layers(factor, width, act, reps, rng):
    """The same statistics from every row drawn: rows = L g, g i.i.d. N(0, 1) (numpy)."""
    nv = factor.shape[0]
    b = nv - 1
    h = rng.standard_normal((reps, width, nv)) @ factor.T
    a = np.empty_like(h)
    a[..., :b] = act(h[..., :b])
    a[..., b] = act.derivative(h[..., 0]) * h[..., b]
    s = np.einsum("rni,rnj->rij", a, a)
    sums = np.stack([s[:, i, j] for i in range(nv) for j in range(i + 1)], axis=1)
    return sums, (a[..., :b] == 0.0).sum(axis=1)


def _factor(rho, sigma0=1.1, sigma1=0.9, tangent=(0.3, -0.2, 1.0)):
    """A lower-triangular factor L of K = L L^T for (h_0, h_1, t): standard deviations sigma0,
    sigma1, correlation rho, and a tangent correlated with both inputs."""
    return np.array(
        [
            [sigma0, 0.0, 0.0],
            [sigma1 * rho, sigma1 * math.sqrt((1 - rho) * (1 + rho)), 0.0],
            list(tangent),
        ]
    )


FACTORS = {
    "B1": np.array([[1.2, 0.0], [0.4, 0.9]]),
    "B2-rho0.5": _factor(0.5),
    "B2-rho-0.7": _factor(-0.7),
    "B2-rho0.99": _factor(0.99),
    "B2-sliver": _factor(0.99999, 1.0, 1.0),  # D_k per flat piece, from both sides
    "B2-rare-flat": _factor(0.5, 0.6, 1.0),  # custom: D_k per flat piece, from the flat side
    "B2-rho1": _factor(1.0),  # identical inputs up to scale: the row-by-row path
    "B2-dead-input": np.array([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.5, 0.8]]),
}
LAYER_CASES = [
    (act_name, factor_name, width)
    for act_name in ACTIVATIONS
    for factor_name in FACTORS
    for width in (40, 600)
    if not (factor_name in ("B2-rho1", "B2-dead-input") and width == 600)
]


def _layer_case(act_name, factor_name, width, seed):
    act, factor = ACTIVATIONS[act_name], FACTORS[factor_name]
    reps = 4000 if width == 40 else 1500
    nv = factor.shape[0]
    sums = np.empty((reps, nv * (nv + 1) // 2))
    zeros = np.empty((reps, nv - 1), dtype=np.int64)
    rng = np.random.Generator(np.random.SFC64(seed))
    _sparse_layers(factor @ factor.T, width, pieces_of(act), reps, rng, sums, zeros)
    ref_sums, ref_zeros = _full_layers(factor, width, act, reps, np.random.default_rng(seed + 1))
    return sums, zeros, ref_sums, ref_zeros


N_LAYER_TESTS = sum(
    FACTORS[f].shape[0] * (FACTORS[f].shape[0] + 1) // 2 + FACTORS[f].shape[0] - 1
    for _, f, _ in LAYER_CASES
)


@pytest.mark.slow
@pytest.mark.parametrize(("act_name", "factor_name", "width"), LAYER_CASES)
def test_one_layer_matches_full_draw(act_name, factor_name, width):
    """Every entry of S (inputs and tangent) and every zero count, sparse vs all rows drawn, KS at
    family-wise level 1e-3 over all cases (Bonferroni). Width 40 draws by inversion, width 600 by
    strips; correlations 0.5, -0.7, 0.99, a sliver (rho = 0.99999, equal variances: D_k thin), a
    rare flat piece (custom shape, sigma_0 = 0.6), and the degenerate kernels (|rho| = 1, a zero
    variance)."""
    seed = 1000 + LAYER_CASES.index((act_name, factor_name, width))
    sums, zeros, ref_sums, ref_zeros = _layer_case(act_name, factor_name, width, seed)
    level = FAMILY_LEVEL / N_LAYER_TESTS
    for k in range(sums.shape[1]):
        if np.ptp(ref_sums[:, k]) == 0.0:  # N phi(0)^2 of a dead input: a constant
            np.testing.assert_allclose(sums[:, k], ref_sums[0, k], rtol=1e-12)
            continue
        p = stats.ks_2samp(sums[:, k], ref_sums[:, k], method="asymp").pvalue
        assert p > level, (k, p)
    for b in range(zeros.shape[1]):
        if np.ptp(ref_zeros[:, b]) == 0 and np.ptp(zeros[:, b]) == 0:
            assert zeros[0, b] == ref_zeros[0, b]
            continue
        p = stats.ks_2samp(zeros[:, b], ref_zeros[:, b], method="asymp").pvalue
        assert p > level, ("zeros", b, p)


@njit
def _pairs(lo, hi, sigma, slope, sd, breaks, accept, per_row, n, rng):
    row = np.empty(sp.TABLE_COLUMNS)
    sp.interval_row(lo / sigma, hi / sigma, row)
    strip = np.empty((sp.STRIPS + 3, 4))
    guide = np.empty(sp.GUIDE, dtype=np.int64)
    tails = np.empty((2, sp.TABLE_COLUMNS))
    xs, ys = np.empty(n), np.empty(n)
    zbuf = np.empty(4096)
    done = sp.conditional_pairs(
        n, row, strip, guide, tails, sigma, slope, sd, breaks, accept, per_row, rng, zbuf, xs, ys,
        4096,
    )  # fmt: skip
    return done, xs, ys


PAIR_CASES = {
    # name: (activation, sigma_x, sigma_y, rho, piece of x, accepted pieces of y)
    "rare-flat-side": (CUSTOM, 0.6, 1.0, 0.5, 3, (2,)),
    "sliver-sloped-side": (CRELU_CLIPPED, 1.0, 1.0, 0.999, 1, (0,)),
    "all-flat": (CRELU_CLIPPED, 1.0, 1.2, 0.5, 1, (0, 2)),
    "cst-sliver": (CST_CLIPPED, 1.0, 1.0, 0.999, 3, (2, 4)),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", PAIR_CASES)
@pytest.mark.parametrize("n", [40, 3000])
def test_conditional_pairs_match_rectangle(case, n):
    """The rejection step of the D classes: pairs (x, y) of a bivariate normal (standard deviations
    sigma_x, sigma_y, correlation rho) conditioned on x in one piece and y in a set of pieces,
    against keeping the pairs of plain bivariate normal draws that fall there (numpy). KS on x, y,
    x + y and x - y (the joint law along two more directions), family-wise level 1e-3 over 4 x 2
    cases x 4 tests. Rare flat pieces (acceptance 1e-3) and slivers at rho = 0.999; n = 40 draws
    by inversion, n = 3000 by strips."""
    act, sx, sy, rho, piece, accepted = PAIR_CASES[case]
    p = act.pieces
    mask = np.zeros(p.slope.size, dtype=np.bool_)
    mask[list(accepted)] = True
    seed = 300 + list(PAIR_CASES).index(case) + n
    rng = np.random.Generator(np.random.SFC64(seed))
    done, xs, ys = _pairs(
        p.lo[piece], p.hi[piece], sx, rho * sy / sx, sy * math.sqrt(1 - rho * rho), p.breaks,
        mask, 10.0, n, rng,
    )  # fmt: skip
    assert done
    ref = np.random.default_rng(seed + 1)
    kept = []
    while sum(k.shape[1] for k in kept) < 3000:
        g = ref.standard_normal((2, 2_000_000))
        x = sx * g[0]
        y = sy * (rho * g[0] + math.sqrt(1 - rho * rho) * g[1])
        inside = (x >= p.lo[piece]) & (x < p.hi[piece])
        inside &= mask[np.searchsorted(p.breaks, y, side="right")]
        kept.append(np.stack([x[inside], y[inside]]))
    rx, ry = np.concatenate(kept, axis=1)
    level = FAMILY_LEVEL / (len(PAIR_CASES) * 2 * 4)
    for a, b in ((xs, rx), (ys, ry), (xs + ys, rx + ry), (xs - ys, rx - ry)):
        p_value = stats.ks_2samp(a, b).pvalue
        assert p_value > level, (case, n, p_value)


# --------------------------------------------------------------------------------------------------
# Whole networks against the Gram engine


COMPARED_LAYERS = (1, 5, 10, 20)
ENGINE_ACTS = ("crelu-clipped", "crelu", "cst-clipped", "cst", "custom")


def _cell(act_name, n_inputs, engine, seed):
    """At the EoC with q* = 1: N = 64, depth 20, 2000 networks, layer-0 variance q*, escape on v
    (band [q*/10, 10 q*]). B = 1: one raw input x with sigma_w^2 x^2 + sigma_b^2 = q*."""
    act = ACTIVATIONS[act_name]
    eoc = gp.edge_of_chaos(act, 1.0)
    sw2, sb2 = eoc.sigma_w2, eoc.sigma_b2
    if n_inputs == 1:
        layer0 = dict(inputs=np.array([[math.sqrt((1.0 - sb2) / sw2)]]))
    else:
        layer0 = dict(q0=1.0, c0=0.5)
    return run_cell(
        act, sw2, sb2, width=64, depth=20, nets=2000, q_ref=1.0, engine=engine, seed=seed,
        escape_on="v", **layer0,
    )  # fmt: skip


def _statistics(ds):
    """name -> per-network values at each compared layer (finite values: survivors)."""
    out = {}
    for layer in COMPARED_LAYERS:
        for b in range(ds.sizes["input"]):
            out[f"v{b}@{layer}"] = ds.v.isel(layer=layer, input=b).values
            out[f"zero_frac{b}@{layer}"] = ds.zero_frac.isel(layer=layer, input=b).values
        if ds.sizes["pair"]:
            out[f"v_corr@{layer}"] = ds.v_corr.isel(layer=layer, pair=0).values
        out[f"v_log_gain@{layer}"] = ds.v_log_gain.isel(layer=layer).values
    return {k: v[np.isfinite(v)] for k, v in out.items()}


ENGINE_CASES = [(a, b) for a in ENGINE_ACTS for b in (1, 2)]
N_ENGINE_TESTS = sum(len(COMPARED_LAYERS) * (3 if b == 1 else 6) + 1 for _, b in ENGINE_CASES)


@pytest.mark.slow
@pytest.mark.parametrize(("act_name", "n_inputs"), ENGINE_CASES)
def test_sparse_matches_gram_in_distribution(act_name, n_inputs):
    """Two-sample KS, sparse vs gram (N = 64, depth 20, 2000 networks each, escape on v) on v, the
    conditional correlation, zero_frac, v_log_gain (layers 1, 5, 10, 20) and escape_layer, for
    CReLU and CST (s = 0.85 and 0.8, clipped at m = 1 and not) at the EoC and a user-defined shape,
    B = 1 and 2. Family-wise level 1e-3, Bonferroni over all N_ENGINE_TESTS tests. Finite values
    only, the same rule for both engines: the survivors, and v_log_gain without the -inf of a dead
    tangent."""
    seed = 50 + 2 * ENGINE_CASES.index((act_name, n_inputs))
    sparse = _cell(act_name, n_inputs, "sparse", seed)
    gram = _cell(act_name, n_inputs, "gram", seed + 1)
    assert np.all(np.isnan(sparse.q)) and np.all(np.isnan(sparse.log_gain))
    level = FAMILY_LEVEL / N_ENGINE_TESTS
    a, b = _statistics(sparse), _statistics(gram)
    for name in a:
        p = stats.ks_2samp(a[name], b[name]).pvalue
        assert p > level, f"{name}: KS p = {p:.2e} <= {level:.1e}"
    p = stats.ks_2samp(sparse.escape_layer.values, gram.escape_layer.values).pvalue
    assert p > level, f"escape_layer: KS p = {p:.2e}"


# --------------------------------------------------------------------------------------------------
# Mechanics


def test_escape_dead_tangent_and_layout():
    """Escape on v fills later layers with NaN; a tangent that dies (tau = 3 sigma, width 4) gives
    v_log_gain = -inf and restarts; q, corr and log_gain stay NaN; the seed fixes the output."""
    kwargs = dict(width=4, depth=30, nets=10, q0=1.0, engine="sparse", escape_on="v")
    act = Activation("crelu", 3.0, 1.0)
    ds = run_cell(act, 1.0, 1.0, seed=3, **kwargs)
    gain = ds.v_log_gain.values[:, 1:]
    assert np.any(np.isneginf(gain))
    assert not np.any(np.isnan(gain[ds.escape_layer.values == -1]))
    assert ds.attrs["engine"] == "sparse"
    assert set(ds.attrs["observables"]) == {"v", "v_corr", "zero_frac", "v_log_gain"}
    for name in ("q", "corr", "log_gain"):
        assert np.all(np.isnan(ds[name]))
    assert ds.identical(run_cell(act, 1.0, 1.0, seed=3, **kwargs))

    eoc = gp.edge_of_chaos(CRELU, 1.0)
    free = run_cell(
        CRELU, eoc.sigma_w2, eoc.sigma_b2, width=64, depth=200, nets=20, q0=5.0, q_ref=1.0,
        engine="sparse", escape_on="v", seed=4,
    )  # fmt: skip
    layer = free.escape_layer.values
    assert np.all(layer >= 0)
    for i, l in enumerate(layer):
        assert np.all(np.isfinite(free.v.values[i, : l + 1]))
        assert np.any(free.v.values[i, l] > 10.0)
        for name in ("v", "v_corr", "zero_frac", "v_log_gain"):
            assert np.all(np.isnan(free[name].values[i, l + 1 :]))


def test_supports_and_selection():
    """B > 2 is refused in one line naming the engine and why; escape on q is refused (the engine
    does not see q); auto picks sparse for a sparse activation at large width when escaping on v,
    never when escaping on q."""
    assert sp.supports(CRELU_CLIPPED, 2) is None
    reason = sp.supports(CRELU_CLIPPED, 3)
    assert reason is not None and "\n" not in reason and "B=3" in reason
    x = np.eye(3)
    eoc = gp.edge_of_chaos(CRELU_CLIPPED, 1.0)
    args = (CRELU_CLIPPED, eoc.sigma_w2, eoc.sigma_b2)
    with pytest.raises(ValueError, match=re.escape("engine='sparse': cannot run")):
        run_cell(*args, width=8, depth=1, nets=1, inputs=x, engine="sparse", escape_on="v")
    with pytest.raises(ValueError, match="does not compute q"):
        run_cell(*args, width=8, depth=1, nets=1, q0=1.0, engine="sparse")
    wide = dict(width=4096, depth=1, nets=1, q0=1.0, engine="auto")
    assert run_cell(*args, escape_on="v", **wide).attrs["engine"] == "sparse"
    assert run_cell(*args, escape_on="q", **wide).attrs["engine"] == "gram"
