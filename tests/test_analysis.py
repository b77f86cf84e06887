"""The analysis package on synthetic stores with known answers (see test_analysis_synthetic.py).

Statistical tolerances are stated where used; every random draw has a fixed seed.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.special import (
    betainc,
    betaincinv,
    gammainc,
    gammaincc,
    gammainccinv,
    gammaincinv,
    ndtri_exp,
)
from synthetic import make_store, plant_escapes, plant_jumps

from analysis import _tails, fit, instability, phase, theory
from analysis._cli import run_cli
from analysis._store import Results, StoreError, open_results
from analysis._table import markdown_table
from analysis.survival import kaplan_meier, median_survival, survival_at
from simulate import gp, schema
from simulate.activations import Activation
from simulate.spec import Shape

# -- Kaplan-Meier -------------------------------------------------------------------------------


def test_kaplan_meier_matches_a_hand_computed_example():
    """times 1, 2, 2+, 3, 3, 4+ (+ = censored): at t=1 6 at risk, 1 event -> 5/6; t=2 5 at risk,
    1 event -> 5/6 * 4/5 = 2/3; t=3 3 at risk (the censored 2 left), 2 events -> 2/3 * 1/3."""
    curve = kaplan_meier([1, 2, 2, 3, 3, 4], [True, True, False, True, True, False])
    np.testing.assert_array_equal(curve["time"], [1, 2, 3])
    np.testing.assert_array_equal(curve["at_risk"], [6, 5, 3])
    np.testing.assert_allclose(curve["survival"], [5 / 6, 2 / 3, 2 / 9])
    greenwood = np.cumsum([1 / (6 * 5), 1 / (5 * 4), 2 / (3 * 1)])
    se = np.sqrt(greenwood) / np.abs(np.log(curve["survival"]))
    z = stats.norm.isf(0.025)
    np.testing.assert_allclose(curve["lower"], curve["survival"] ** np.exp(z * se))
    assert (curve["lower"] <= curve["survival"]).all() and (
        curve["survival"] <= curve["upper"]
    ).all()
    assert median_survival(curve)[0] == 3
    np.testing.assert_allclose(survival_at(curve, [0, 1, 2.5, 10]), [1, 5 / 6, 2 / 3, 2 / 9])


def test_kaplan_meier_band_covers_a_known_survival_curve():
    """Geometric escape times (hazard 3% per layer) censored at 60: over 200 replicate samples
    of 64 networks the 95% pointwise band at t = 20 covers S(20) = 0.97^20 in 95% +- 4.5% (3 SE)."""
    rng = np.random.default_rng(1)
    truth = 0.97**20
    covered = []
    for _ in range(200):
        times = rng.geometric(0.03, 64).astype(float)
        observed = times <= 60
        curve = kaplan_meier(np.minimum(times, 60), observed)
        lo, hi = (survival_at(curve, 20.0, c) for c in ("lower", "upper"))
        covered.append(lo <= truth <= hi)
    assert abs(np.mean(covered) - 0.95) < 3 * math.sqrt(0.95 * 0.05 / 200)


def test_median_is_infinite_when_fewer_than_half_escape():
    """One event in four: S stays at 3/4 > 1/2, so the median and its upper limit are beyond the
    censoring time; the lower band (0.75^e^{1.96 se}, se ~ 1) dips below 1/2 at the event."""
    median, lo, hi = median_survival(kaplan_meier([5, 200, 200, 200], [1, 0, 0, 0]))
    assert math.isinf(median) and math.isinf(hi) and lo == 5


def test_no_escape_at_all_is_survival_one():
    """Every network censored: no event, S = 1 at every time, median beyond the sweep."""
    curve = kaplan_meier([40, 40, 40], [False, False, False])
    assert curve.empty
    np.testing.assert_array_equal(survival_at(curve, [0, 10, 40]), [1, 1, 1])
    assert all(math.isinf(x) for x in median_survival(curve))


# -- theory on a cell ---------------------------------------------------------------------------


def _hand_sparsity(zero_edges):
    """s(q) = sum of Phi(hi / sqrt q) - Phi(lo / sqrt q) over the zero intervals, with scipy.stats."""

    def s(q):
        root = np.sqrt(q)
        return sum(stats.norm.cdf(hi / root) - stats.norm.cdf(lo / root) for lo, hi in zero_edges)

    return s


@pytest.mark.parametrize(
    ("act", "zero_edges"),
    [
        (Activation.crelu(0.7, 1.0), [(-np.inf, 0.7)]),
        (Activation.cst(0.7, 1.0), [(-0.7, 0.7)]),
        (  # asymmetric: zero on [-0.3, 0.5], leaky outside, a nonzero flat piece far right
            Activation.piecewise_linear(
                [-0.3, 0.5, 1.5, 2.0], [0.0, 0.0, 1.0, 1.0], left_slope=0.1, right_slope=0.0
            ),
            [(-0.3, 0.5)],
        ),
    ],
    ids=["crelu", "cst", "asymmetric"],
)
def test_sparsity_derivatives_match_scipy_and_finite_differences(act, zero_edges):
    """s against the probability of the zero set from scipy.stats (1e-12), s' and s'' against
    central differences of it (step 1e-4: truncation ~1e-8 and ~1e-6 relative)."""
    hand = _hand_sparsity(zero_edges)
    q, h = np.array([0.5, 1.0, 2.0]), 1e-4
    s, first, second = gp.sparsity_derivatives(act, q)
    np.testing.assert_allclose(s, hand(q), rtol=1e-12)
    f = [hand(q + k * h) for k in (-1, 0, 1)]
    np.testing.assert_allclose(first, (f[2] - f[0]) / (2 * h), rtol=1e-6)
    np.testing.assert_allclose(second, (f[2] - 2 * f[1] + f[0]) / h**2, rtol=1e-4)


def test_zero_fraction_prediction_matches_a_binomial_mixture():
    """Given G ~ N(q + G1/N, V4/N), the zero count is Binomial(N, s(G)): 200 000 draws reproduce the
    predicted mean and sd of the zero fraction within 5 standard errors (plus the O(1/N^2) terms
    the first-order formula drops, below 1e-4 here)."""
    ds = make_store(clips=(1.0,), widths=(100,), depth=30, nets=4)
    cell = next(Results(ds).cells())
    pred = {k: float(v) for k, v in theory.cell_theory(cell, 30).isel(layer=30).items()}
    rng = np.random.default_rng(2)
    n = 200_000
    g = pred["q_gp"] + pred["g1"] / 100 + math.sqrt(pred["v4"] / 100) * rng.standard_normal(n)
    tau = float(cell.data["tau"])  # crelu: a unit is zero when h <= tau, s(G) = Phi(tau / sqrt G)
    zf = rng.binomial(100, stats.norm.cdf(tau / np.sqrt(np.maximum(g, 1e-9)))) / 100
    assert abs(zf.mean() - pred["zf_mean"]) < 5 * zf.std() / math.sqrt(n) + 1e-4
    assert abs(zf.std() / pred["zf_sd"] - 1) < 0.02


@pytest.mark.parametrize(("clip", "layer"), [(1.0, 30), (math.inf, 5)])
def test_variance_prediction_matches_its_definition(clip, layer):
    """q_hat = (1/N) sum_i h_i^2 with h_i ~ N(0, G) i.i.d. given G, i.e. G chi^2_N / N, and
    G ~ N(mu, V4/N), mu = q + G1/N: 400 000 draws at N = 1000 reproduce the predicted mean within
    5 standard errors and the predicted sd within 1%. The exact variance of this model is
    (2 mu^2 + V4 (1 + 2/N)) / N; the first-order prediction drops its O(1/N^2) part, checked below
    1% of it here (sd bias < 0.5%; the rest of the tolerance is 4 SE of the sample sd). Deep down an
    unclipped cell's G1 and V4 grow and that part does not stay small, hence layer 5 there."""
    n_units = 1000
    ds = make_store(clips=(clip,), widths=(n_units,), depth=30, nets=4)
    cell = next(Results(ds).cells())
    pred = {k: float(v) for k, v in theory.cell_theory(cell, 30).isel(layer=layer).items()}
    mu = pred["q_gp"] + pred["g1"] / n_units
    exact = (2 * mu**2 + pred["v4"] * (1 + 2 / n_units)) / n_units
    assert abs(exact / pred["q_sd"] ** 2 - 1) < 0.01
    rng = np.random.default_rng(13)
    n = 400_000
    g = mu + math.sqrt(pred["v4"] / n_units) * rng.standard_normal(n)
    q_hat = g * rng.chisquare(n_units, n) / n_units
    assert abs(q_hat.mean() - pred["q_mean"]) < 5 * q_hat.std() / math.sqrt(n)
    assert abs(q_hat.std() / pred["q_sd"] - 1) < 0.01


# -- the fit ------------------------------------------------------------------------------------


def test_sidak_threshold():
    assert fit.sidak_threshold(0.05, 1) == pytest.approx(stats.norm.isf(0.025))
    assert (
        fit.sidak_threshold(0.01, 400) > fit.sidak_threshold(0.01, 4) > fit.sidak_threshold(0.05, 4)
    )


def test_z_scores_are_calibrated_under_the_null():
    """Gaussian pure-noise cells (64 networks x 100 layers x 2 inputs): the family-wise false-alarm
    rate of each test at alpha = 5% (Sidak over the 200 tests) is within 3 SE of 5% over 400
    cells. With skewed data (gamma, shape 16: skew 0.5, excess kurtosis 0.375, about what q_hat
    shows at N >= 300) the spread test is approximate: its kurtosis correction fixes the variance of
    S^2 but not its skew, and the documented inflation stays below 3 alpha."""
    rng = np.random.default_rng(3)
    alpha, cells = 0.05, 400
    threshold = fit.sidak_threshold(alpha, 200)
    alarms = {"mean": 0, "spread": 0, "t": 0, "spread_skewed": 0}
    for _ in range(cells):
        x = rng.standard_normal((64, 100, 2))
        skewed = (rng.gamma(16.0, size=(64, 100, 2)) - 16.0) / 4.0
        alarms["mean"] += np.nanmax(np.abs(fit.z_known_sd(x, 0.0, 1.0))) > threshold
        alarms["spread"] += np.nanmax(np.abs(fit.z_spread(x, 1.0))) > threshold
        alarms["t"] += np.nanmax(np.abs(fit.z_sample_sd(x, 0.0))) > threshold
        alarms["spread_skewed"] += np.nanmax(np.abs(fit.z_spread(skewed, 1.0))) > threshold
    tolerance = 3 * math.sqrt(alpha * (1 - alpha) / cells)
    for name in ("mean", "spread", "t"):
        assert abs(alarms[name] / cells - alpha) < tolerance, name
    assert alarms["spread_skewed"] / cells < 3 * alpha


@pytest.mark.parametrize("dof", [2.0, 7.5, 38.4, 500.0])
def test_chi2_score_matches_scipy_where_scipy_is_exact(dof):
    """Inside the range where the CDF and survival function are representable, the score is
    Phi^{-1}(F) from scipy's own chi^2 and normal quantiles (to 1e-9)."""
    x = stats.chi2.ppf(np.array([1e-200, 1e-12, 0.01, 0.5, 0.99, 1 - 1e-12]), dof)
    x = np.append(x, stats.chi2.isf(1e-200, dof))
    cdf, sf = stats.chi2.cdf(x, dof), stats.chi2.sf(x, dof)
    expected = np.where(cdf < 0.5, stats.norm.ppf(cdf), stats.norm.isf(sf))
    np.testing.assert_allclose(_tails.chi2_score(x, dof), expected, rtol=1e-9, atol=1e-9)


def test_scores_stay_finite_where_the_tail_probability_underflows():
    """Far tails against closed forms: chi^2_2 has P(X > x) = e^{-x/2} and P(X < x) = 1 - e^{-x/2};
    t_2 has P(T > t) = (1 - t / sqrt(2 + t^2)) / 2 ~ 1/(2 t^2). At x = 3000 (tail e^{-1500}), x =
    1e-300 and t = 1e160 (tail 5e-321) scipy's tails are 0 or subnormal, the scores finite and equal
    to Phi^{-1} of the exact log tail (1e-12)."""
    np.testing.assert_allclose(_tails.chi2_score(3000.0, 2.0), -ndtri_exp(-1500.0), rtol=1e-12)
    np.testing.assert_allclose(
        _tails.chi2_score(1e-300, 2.0), ndtri_exp(math.log(5e-301)), rtol=1e-12
    )
    t = 1e160
    np.testing.assert_allclose(
        _tails.t_score([t, -t], 2.0),
        np.array([1, -1]) * -ndtri_exp(-math.log(2) - 2 * math.log(t)),
        rtol=1e-12,
    )


@pytest.mark.parametrize("a", [1.0, 19.2, 250.0])
def test_log_tails_agree_with_scipy_where_both_hold(a):
    """The continued fractions (gamma upper tail, incomplete beta) and the gamma series against
    log of scipy's regularised incomplete gamma / beta where those are around 1e-200 (1e-11)."""
    y = gammainccinv(a, 1e-200)
    np.testing.assert_allclose(_tails._log_gamma_upper(a, y), math.log(gammaincc(a, y)), rtol=1e-11)
    y = gammaincinv(a, 1e-200)
    np.testing.assert_allclose(_tails._log_gamma_lower(a, y), math.log(gammainc(a, y)), rtol=1e-11)
    x = betaincinv(a, 0.5, 1e-200)
    np.testing.assert_allclose(
        _tails._log_beta_lower(a, 0.5, x), math.log(betainc(a, 0.5, x)), rtol=1e-11
    )


def test_a_far_off_spread_gets_a_finite_score():
    """The spread of the clipped N = 1000 cell inflated 8x (variance 64x, as for networks split
    between two fixed points): its chi^2 tail is far below 1e-308, and the reported max |z| is
    finite and beyond what an underflowing tail could give (37.5)."""

    def inflate(cell, values, rng):
        if cell.act.clipped and cell.width == 1000:
            q = values["q"]
            values["q"] = q.mean(axis=0) + 8.0 * (q - q.mean(axis=0))

    ds = make_store(clips=(1.0,), widths=(1000,), depth=20, seed=15, perturb=inflate)
    row = fit.fit_table(Results(ds)).iloc[0]
    assert 37.5 < row["max_abs_z_q_sd"] < np.inf
    assert row["first_fail_stat"] == "q_sd"


@pytest.fixture(scope="module")
def matching_store():
    return make_store(widths=(100, 1000), depth=40, seed=4)


def test_fit_passes_a_store_drawn_from_the_theory(matching_store):
    table = fit.fit_table(Results(matching_store))
    assert len(table) == 4
    assert table["agrees"].all()
    assert table["first_fail_layer"].isna().all()
    assert (table["n_tests"] > 0).all()


def _shift_from(layer: int, name: str, sigmas: float):
    """Perturbation: add ``sigmas`` predicted standard errors of the mean to ``name`` of the
    clipped N = 100 cell from ``layer`` on."""

    def perturb(cell, values, rng):
        if cell.act.clipped and cell.width == 100:
            pred = theory.cell_theory(cell, values["q"].shape[1] - 1)
            sd = pred["q_sd" if name == "q" else "zf_sd"].values
            nets = values[name].shape[0]
            values[name][:, layer:] += sigmas * sd[layer:, None] / math.sqrt(nets)

    return perturb


@pytest.mark.parametrize(("name", "stat"), [("q", "q_mean"), ("zero_frac", "zero_frac")])
def test_fit_flags_a_planted_mean_shift_at_its_layer(name, stat):
    """A 10-SE shift from layer 25 on: the cell fails, first at layer 25, by that statistic; the
    other cells still pass."""
    ds = make_store(widths=(100, 1000), depth=40, seed=5, perturb=_shift_from(25, name, 10.0))
    table = fit.fit_table(Results(ds)).set_index(["clip", "width"])
    row = table.loc[(1.0, 100)]
    assert not row["agrees"]
    assert row["first_fail_layer"] == 25 and row["first_fail_stat"] == stat
    assert table.loc[(1.0, 1000), "agrees"]


def test_layers_left_untested_fail_the_verdict():
    """Every network of the clipped cell stops at layer 10 (in band): layers 0-10 agree, and
    layer 11, where nothing is left to test, fails the verdict as "untested"."""

    def stop_at_10(cell, values, rng):
        if cell.act.clipped:
            values["escape_layer"][:] = 10

    table = fit.fit_table(Results(make_store(clips=(1.0,), widths=(1000,), perturb=stop_at_10)))
    row = table.iloc[0]
    assert not row["agrees"]
    assert (row["first_fail_layer"], row["first_fail_stat"]) == (11, "untested")


def test_fit_flags_a_planted_excess_spread():
    """Deviations from the mean doubled from layer 10 on: the spread test fails there."""

    def perturb(cell, values, rng):
        if cell.act.clipped and cell.width == 1000:
            q = values["q"][:, 10:]
            values["q"][:, 10:] = q + (q - q.mean(axis=0))

    ds = make_store(widths=(100, 1000), depth=40, seed=6, perturb=perturb)
    row = fit.fit_table(Results(ds)).set_index(["clip", "width"]).loc[(1.0, 1000)]
    assert not row["agrees"] and row["first_fail_stat"] == "q_sd" and row["first_fail_layer"] == 10


def test_unclipped_cells_fail_where_the_1n_drift_sets_in(matching_store):
    """The synthetic unclipped cells follow the 1/N theory, so they pass; real unclipped networks
    escape, which the planted escapes mimic: their variance leaves the band and the fit fails."""
    escaped = make_store(
        widths=(100,), depth=40, seed=7, perturb=plant_escapes(lambda c, r: np.full(64, 12))
    )
    results = Results(escaped)
    row = fit.fit_table(results).set_index("clip").loc[math.inf]
    assert not row["agrees"] and row["first_fail_layer"] <= 12 and row["n_escaped"] == 64
    comparison = fit.compare_cell(next(results.cells(clip=math.inf)), 40)
    assert np.abs(comparison["z_q_mean"].sel(layer=12)).min() > row["z_crit"]


# -- escape statistics and the width law --------------------------------------------------------


def _power_law_escapes(beta: float, spread: float = 0.25):
    """Escape layers A N^beta e^{spread z}, A = 3: median 3 N^beta."""
    return plant_escapes(
        lambda cell, rng: np.round(
            3.0 * cell.width**beta * np.exp(spread * rng.standard_normal(64))
        ).astype(int)
    )


@pytest.fixture(scope="module")
def escape_store():
    return make_store(
        sparsities=(0.8, 0.9),
        widths=(100, 300, 1000, 3000),
        depth=120,
        nets=64,
        seed=8,
        perturb=_power_law_escapes(1 / 3),
    )


def test_escape_table_recovers_the_planted_medians(escape_store):
    table = instability.escape_table(Results(escape_store))
    unclipped = table[~np.isfinite(table["clip"])]
    clipped = table[np.isfinite(table["clip"])]
    assert (clipped["frac_escaped"] == 0).all() and np.isinf(clipped["median_escape"]).all()
    truth = 3.0 * unclipped["width"] ** (1 / 3)
    assert ((unclipped["median_lo"] <= truth + 1) & (truth - 1 <= unclipped["median_hi"])).all()
    assert (unclipped["frac_escaped"] == 1).all()


def test_escaped_fraction_is_the_empirical_cdf(escape_store):
    results = Results(escape_store)
    cell = next(results.cells(clip=math.inf))
    frac = instability.escaped_fraction(cell, results.depth)
    layers = cell.data["escape_layer"].values
    assert frac[0] == 0 and frac[-1] == 1 and np.all(np.diff(frac) >= 0)
    assert frac[20] == np.mean(layers <= 20)


def test_width_law_recovers_a_planted_exponent(escape_store):
    """Planted beta = 1/3: every group's and the pooled 95% bootstrap interval contain it, and the
    pooled interval is narrower than 0.2."""
    points, fits = instability.width_law(Results(escape_store), n_boot=500)
    assert len(points) == 8 and len(fits) == 3
    assert ((fits["beta_lo"] <= 1 / 3) & (1 / 3 <= fits["beta_hi"])).all()
    pooled = fits.set_index("group").loc["pooled"]
    assert pooled["beta_hi"] - pooled["beta_lo"] < 0.2
    assert pooled["boot_valid"] == 1.0


def test_width_law_finds_no_width_dependence_when_there_is_none():
    ds = make_store(widths=(100, 300, 1000), depth=60, seed=9, perturb=_power_law_escapes(0.0))
    _, fits = instability.width_law(Results(ds), n_boot=500)
    pooled = fits.set_index("group").loc["pooled"]
    assert pooled["beta_lo"] <= 0 <= pooled["beta_hi"]


def test_onset_layer_scales_as_the_cube_root_of_width():
    """l_pt(N) ~ (4 N / (V''^2 v))^{1/3} asymptotically: 8x the width, 2x the onset (+-15%, the
    pre-asymptotic growth of V4 and integer layers)."""
    ds = make_store(clips=(math.inf,), widths=(1000, 8000), depth=120, nets=2, seed=10)
    results = Results(ds)
    onset = [instability.onset_layer(c, results.depth) for c in results.cells()]
    assert onset[1] / onset[0] == pytest.approx(2.0, rel=0.15)


# -- clip window, fates and jumps ---------------------------------------------------------------


def _fixed_point_count(act: Activation, sigma_w2: float, sigma_b2: float, q_star: float) -> int:
    """Fixed points of a clipped map by brute force: sign changes of V(q) - q on a fine geometric
    grid over [q*/10, 1000 q*] (step 0.05%; q* itself, a transversal crossing, seen from grid points
    at least 0.1% away so that rounding cannot split it). Independent of the secant-excess search
    behind ``gp.max_stable_clip``."""
    grid = np.geomspace(q_star / 10, 1000 * q_star, 20_000)
    grid = grid[np.abs(np.log(grid / q_star)) > 1e-3]
    gap = gp.variance_map(act, grid, sigma_w2, sigma_b2) - grid
    return int(np.sum(np.sign(gap[1:]) != np.sign(gap[:-1])))


@pytest.mark.parametrize("family", ["crelu", "cst"])
def test_theory_window_edges(family):
    """Lower edge: the m where half of the active units pass gradient; against the closed form
    m_low = sqrt(q*) [Phi^{-1}((1 + Phi(a)) / 2) - a] (a = Phi^{-1}(s) for crelu, Phi^{-1}((1+s)/2)
    for cst, from scipy.stats) to 1e-9, and against a Monte Carlo count of the definition (10^6
    draws of h ~ N(0, q*): the share of h with phi(h) != 0 that also have phi'(h) != 0 is 1/2
    within 4 SE). Upper edge: q* is the only fixed point of V at m = 0.99 m_high, and three
    appear at 1.01 m_high. At q* = 2 so that the sqrt(q*) scaling shows."""
    s, q_star = 0.8, 2.0
    window = instability.theory_window(family, s, q_star)
    low, high = window.low, window.high
    a = stats.norm.ppf(s if family == "crelu" else (1 + s) / 2)
    hand = math.sqrt(q_star) * (stats.norm.ppf((1 + stats.norm.cdf(a)) / 2) - a)
    assert low == pytest.approx(hand, rel=1e-9)
    act = Activation.from_sparsity(family, s, q_star, low)
    h = math.sqrt(q_star) * np.random.default_rng(14).standard_normal(1_000_000)
    active = act(h) != 0
    passing = (act.derivative(h) != 0)[active]
    assert abs(passing.mean() - 0.5) < 4 * math.sqrt(0.25 / passing.size)
    for m, count in ((0.99 * high, 1), (1.01 * high, 3)):
        act = Activation.from_sparsity(family, s, q_star, m)
        eoc = gp.edge_of_chaos(act, q_star)
        assert _fixed_point_count(act, eoc.sigma_w2, eoc.sigma_b2, q_star) == count, m


CST_BY_POINTS = {
    "name": "cst_pts",
    "knots": ["-tau - m", "-tau", "tau", "tau + m"],
    "values": ["-m", 0, 0, "m"],
}


@pytest.mark.slow
def test_theory_window_of_a_user_shape_that_uses_m():
    """CST written as a shape in tau and m has CST's window (its tau found per m by root finding,
    to 1e-13 sqrt(q*)); an asymmetric shape whose dead zone [-tau - m/2, tau] widens with m (so
    its tau at the target sparsity moves with m) gets its own window,
    whose lower edge passes the definition (half of its active units pass gradient, by
    quadrature) and whose upper edge separates one fixed point from three."""
    s, q_star = 0.8, 2.0
    named = instability.theory_window("cst", s, q_star)
    shape = Shape.from_table(CST_BY_POINTS)
    window = instability.theory_window("cst_pts", s, q_star, shape)
    assert window.low == pytest.approx(named.low, abs=1e-10)
    assert window.high == pytest.approx(named.high, abs=1e-10)

    wide = Shape.from_table({"name": "wide", "knots": ["-tau - m", "-tau - m/2", "tau", "tau + m"],
                             "values": ["-m/2", 0, 0, "m"]})  # fmt: skip
    window = instability.theory_window("wide", s, q_star, wide)
    assert 0 < window.low < window.high

    def at(m):
        return wide.at(wide.tau_for_sparsity(s, q_star, m), m)

    act = at(window.low)
    assert float(gp.sparsity(act, q_star)) == pytest.approx(s, abs=1e-12)
    passing = gp.gaussian_expectation(lambda x: float(act.derivative(x) != 0), q_star, act.kinks)
    active = gp.gaussian_expectation(lambda x: float(act(x) != 0), q_star, act.kinks)
    assert passing / active == pytest.approx(0.5, rel=1e-9)
    for m, count in ((0.99 * window.high, 1), (1.01 * window.high, 3)):
        act = at(m)
        eoc = gp.edge_of_chaos(act, q_star)
        assert _fixed_point_count(act, eoc.sigma_w2, eoc.sigma_b2, q_star) == count, m


def test_theory_window_is_undefined_without_a_clip_level_to_vary():
    """No window (NaN edges, nothing inside) for a shape that does not use m (it is the same
    function at every clip level), for a family whose shape is not known, and for a shape whose
    window the search cannot find (here: m does not change how many units pass gradient)."""
    no_m = Shape.from_table({"name": "st", "knots": ["-tau", "tau"], "values": [0, 0],
                             "left_slope": 1, "right_slope": 1})  # fmt: skip
    stuck = Shape.from_table({"name": "stuck", "knots": ["tau", "tau + 0.01", "tau + 0.01 + m"],
                              "values": [0, 0.01, 0.01]})  # fmt: skip
    for family, shape in (("st", no_m), ("my_shape", None), ("stuck", stuck)):
        window = instability.theory_window(family, 0.8, 1.0, shape)
        assert window is instability.NO_WINDOW and not window.defined, family
        assert not window.contains(1.0)


def test_stored_user_shape_gets_its_window():
    """A store of CST and the same function as a user shape: the store reads the shape from its
    spec, and the phase table marks the same clip levels inside the window for both."""
    ds = schema.synthetic_store(
        family=["cst", "cst_pts"],
        shape=CST_BY_POINTS,
        sparsity=[0.8],
        clip=[0.1, 1.0, 2.0],  # a shape that uses m needs finite clip levels
        width=[16],
        depth=2,
        nets=2,
    )
    results = Results(ds)
    assert results.shapes == {"cst_pts": Shape.from_table(CST_BY_POINTS)}
    table = phase.theory_phase_of(results)
    inside = {f: list(g["in_window_theory"]) for f, g in table.groupby("family")}
    assert inside["cst"] == inside["cst_pts"] == [False, True, False]


@pytest.fixture(scope="module")
def jump_store():
    """crelu s = 0.8 (max stable clip 2.12): m = 3 is bistable with a stable point at q ~ 7.7;
    40 of 64 networks are planted there from layer 15."""
    return make_store(
        clips=(0.5, 1.0, 2.0, 3.0), widths=(300,), depth=40, seed=11, perturb=plant_jumps(40, 15)
    )


def test_jump_table_counts_the_planted_jumps(jump_store):
    table = instability.jump_table(Results(jump_store))
    assert list(table["clip"]) == [3.0]
    row = table.iloc[0]
    assert row["n_upper"] == 40 and row["n_q*"] == 24
    assert row["upper_mean_q"] == pytest.approx(row["gp_upper_q"], rel=1e-6)
    assert row["upper_mean_zero_frac"] == pytest.approx(row["gp_upper_sparsity"], rel=1e-6)


def test_clip_window_matches_theory_on_planted_jumps(jump_store):
    window = instability.clip_window(Results(jump_store))
    row = window.iloc[0]
    assert row["mc_clips"] == "0.5, 1, 2"
    assert row["mc_high"] == 2.0 and row["upper_steps"] == 0 and row["agrees"]


def test_network_fates_sort_escapes_by_direction():
    def perturb(cell, values, rng):
        if cell.act.clipped:
            values["escape_layer"] = np.array([3, 4] + [-1] * 62)
            values["q"][0, 3] = 50.0
            values["q"][1, 4] = 0.01

    ds = make_store(clips=(1.0,), widths=(100,), depth=10, seed=12, perturb=perturb)
    fates = instability.network_fates(next(Results(ds).cells()))
    assert list(fates["fate"][:3]) == ["escaped up", "escaped down", "q*"]
    assert fates["final_q"][:2].isna().all() and fates["final_q"][2:].notna().all()


# -- phase tables -------------------------------------------------------------------------------


def test_theory_phase_marks_the_window_and_bistability():
    """crelu s = 0.8 (window [0.30, 2.12]): V'(q*) = 1 unclipped and < 1 clipped; m = 0.5 and 1
    inside, 3 bistable (a second stable fixed point), inf outside; the gradient fraction grows
    with m up to 1."""
    ds = make_store(clips=(0.5, 1.0, 3.0, math.inf), widths=(32,), depth=2, nets=2)
    table = phase.theory_phase_of(Results(ds)).set_index("clip")
    assert table.loc[math.inf, "v_slope"] == pytest.approx(1.0)
    assert (table.loc[[0.5, 1.0, 3.0], "v_slope"] < 1).all()
    assert list(table["in_window_theory"]) == [True, True, False, False]
    assert table.loc[3.0, "n_stable"] == 2 and table.loc[1.0, "n_stable"] == 1
    assert table.loc[0.5, "pass_of_active"] < table.loc[3.0, "pass_of_active"] <= 1


def test_mc_phase_and_pivot(jump_store):
    table = phase.mc_phase(Results(jump_store))
    grid = phase.pivot(table, "frac_stay", family="crelu", width=300)
    assert grid.shape == (1, 4)
    np.testing.assert_allclose(grid.values[0], [1, 1, 1, 24 / 64])


def test_variance_attractor_orders_relu_at_sigma_w2_two():
    """ReLU with sigma_b^2 = 0: chi_1 = sigma_w^2 / 2 at every q, so chi_1 = 1 exactly at 2."""
    act = Activation("crelu", 0.0)
    out = gp.variance_attractor(act, np.array([1.5, 2.0, 2.5]), 0.0, q0=1.0, depth=200)
    np.testing.assert_allclose(out["chi1"][:2], [0.75, 1.0])
    assert np.isinf(out["q_inf"][2])  # chaotic and unbounded: the variance diverges


# -- the store and the command line -------------------------------------------------------------


def test_open_results_squeezes_a_unit_pair_dimension(tmp_path):
    ds = make_store(depth=5, nets=4, widths=(20,))
    assert ds.sizes["pair"] == 1  # the default input pair
    ds.to_zarr(tmp_path / "p.zarr")
    results = open_results(tmp_path / "p.zarr")
    assert "pair" not in results.ds.dims


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.zarr", "no such results store"),
        (lambda d: (d / "x.txt").write_text("x") and d / "x.txt", "not a results store"),
        (lambda d: (d / "bad.nc").write_text("not netcdf") and d / "bad.nc", "cannot be read"),
    ],
)
def test_bad_paths_raise_one_line(tmp_path, make, message):
    with pytest.raises(StoreError, match=message) as err:
        open_results(make(tmp_path))
    assert "\n" not in str(err.value)


def test_store_without_needed_variables_is_refused(tmp_path):
    make_store(depth=5, nets=4, widths=(20,)).drop_vars(["escape_layer", "zero_frac"]).to_zarr(
        tmp_path / "partial.zarr"
    )
    with pytest.raises(StoreError, match="missing escape_layer, zero_frac"):
        open_results(tmp_path / "partial.zarr")


@pytest.mark.parametrize("module", ["fit", "instability", "phase", "figures", "report"])
def test_cli_bad_input_is_one_line_and_status_2(tmp_path, capsys, module):
    import importlib

    main = importlib.import_module(f"analysis.{module}").main
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [str(tmp_path / "nothing.zarr")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such results store" in err


def test_markdown_table():
    df = pd.DataFrame({"a": ["x", "y"], "b": [1.23456, math.inf], "c": [True, math.nan]})
    assert markdown_table(df).splitlines() == [
        "| a | b | c |",
        "|---|---|---|",
        "| x | 1.235 | yes |",
        "| y | inf |  |",
    ]
