"""Monte Carlo against the GP and its 1/N corrections: per-layer z-scores and one verdict per cell.

For every finished cell and every layer l, over the n_l networks still propagated at l (not escaped
before l; a network's out-of-band value at its escape layer is included, since the theory predicts
no such values):

    q_mean     z = (mean_n q_hat - [q^l + G1^l/N]) / (sd_pred / sqrt(n_l)),  sd_pred = predicted
               sd of q_hat over networks, sqrt((2 (q^l)^2 + V4^l)/N) (``gp.finite_width``)
    q_sd       the sample variance S^2 against sd_pred^2, a chi^2 test with kurtosis-corrected
               degrees of freedom (:func:`z_spread`)

    (on a store whose observable is the conditional variance v, :attr:`analysis._store.Results.
    observable`, these are ``v_mean`` and ``v_sd``: the same tests of v against q^l + G1^l/N and
    sd_pred = sqrt(V4^l / N); corr and gain then read v_corr and v_log_gain)
    zero_frac  z = (mean - zf_mean) / (zf_sd / sqrt(n_l)) with the 1/N prediction of
               ``analysis.theory`` (binomial spread plus the spread of the layer variance)
    corr       one-sample t statistic of the correlation of two inputs against c^l = R(c^{l-1})
               (each pair of a store of more than two inputs its own test, from its initial c0)
    gain       one-sample t statistic of the tangent gain |t^l|^2 / |t^{l-1}|^2 = exp(log_gain)
               against chi_1(q^{l-1}) (the gain itself, not its log: E[log] is biased below
               ln chi_1 by Var/2 = O(1/N), and a dead tangent has log_gain = -inf but gain 0)

Each input of ``q`` and ``zero_frac`` is its own test. Standard errors: the q and zero-fraction
tests use the *predicted* spread (under the theory the statistic is then exactly standard normal up
to the CLT over networks, with no Student-t tail to correct for); corr and log_gain have no 1/N
spread prediction and use the sample spread.

For corr the GP map is reported beside the verdict, not in it: the empirical correlation of N
coordinates is biased at O(1/N) (already for i.i.d. Gaussian rows, by -rho (1 - rho^2) / (2N)),
and the fluctuations of the layer variances feed into it, none of which the first-order theory
here predicts; meanwhile its spread over networks shrinks like (1 - c) as c -> 1, so the t
statistic of a fixed relative bias grows along depth. ``corr_max_dev`` reports the largest deviation of
the mean correlation from the GP iterate. Every statistic is mapped to an equivalent standard
normal score through its own null distribution (z = Phi^{-1}(F(stat)): normal, chi^2 or Student t,
computed from the log of the smaller tail so that a p-value below 1e-308 still gives its finite
score, :mod:`analysis._tails`), so that one threshold serves all.

Verdict: the cell agrees with theory when no |z| among the K tests of :func:`verdict_stats` over all
layers exceeds the Sidak threshold z_K = Phi^{-1}(1 - p_K / 2), p_K = 1 - (1 - alpha)^{1/K}, at
family-wise level alpha = ``ALPHA`` (1%). The tests at neighbouring layers are positively
correlated, so this is conservative. A layer where no network is left to test (all escaped)
fails too, as "untested": the GP predicts no escapes. Otherwise the first failing layer and
statistic are reported.

Only clipped activations inside their window are expected to pass: an unclipped one sits at a
one-sided fixed point (V'(q*) = 1, V'' > 0), where the 1/N noise is pushed upward by the curvature,
its mean drifts as l^2/N and networks escape (:mod:`analysis.instability`), so its failure layer says
where the 1/N theory breaks.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from functools import partial

import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats

from ._cli import Parser, add_n_jobs, probability, run_cli
from ._parallel import start_cells
from ._store import Cell, Results, open_results
from ._table import markdown_table
from ._tails import chi2_score, t_score
from .theory import Prepared, correlation_theory, theory_columns

ALPHA = 0.01
"""Family-wise significance level of the per-cell verdict."""


def verdict_stats(observable: str) -> tuple[str, ...]:
    """Statistics whose prediction is unbiased to the order tested; they decide the verdict
    (``observable``: the variance tested, "q" or "v")."""
    return (f"{observable}_mean", f"{observable}_sd", "zero_frac", "gain")


EPS_SMALL = 0.01
"""The first-order theory is claimed where its relative mean shift eps = max_l |G1^l| / (N q^l)
stays below this (see :func:`fit_table`)."""

REPORTED_STATS = ("corr",)
"""Compared with the infinite-width map only (O(1/N) bias); reported, not part of the verdict."""


def _moments(x: np.ndarray):
    """(n, mean, sample sd) over the leading (network) axis, ignoring NaN (escaped networks)."""
    n = np.sum(np.isfinite(x), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        total = np.nansum(x, axis=0)
        mean = np.where(n > 0, total / np.maximum(n, 1), np.nan)
        dev = np.nansum((x - mean) ** 2, axis=0)
        sd = np.where(n > 1, np.sqrt(dev / np.maximum(n - 1, 1)), np.nan)
    return n, mean, sd


def z_known_sd(x: np.ndarray, mean, sd) -> np.ndarray:
    """z = (sample mean - mean) / (sd / sqrt(n)) over axis 0; NaN where n < 2 or sd is not > 0."""
    n, sample_mean, _ = _moments(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (sample_mean - mean) / (sd / np.sqrt(n))
    return np.where((n >= 2) & (sd > 0), z, np.nan)


def _pooled_excess_kurtosis(x: np.ndarray) -> float:
    """Mean over layers (and inputs) of the sample excess kurtosis m4 / m2^2 - 3, floored at 0."""
    n, mean, _ = _moments(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        dev = x - mean
        kurt = n * np.nansum(dev**4, axis=0) / np.nansum(dev**2, axis=0) ** 2 - 3.0
    kurt = kurt[np.isfinite(kurt)]
    return max(float(kurt.mean()), 0.0) if kurt.size else 0.0


def z_spread(x: np.ndarray, sd) -> np.ndarray:
    """Normal score of the sample variance S^2 against sd^2 over axis 0, kurtosis-robust.

    S^2 / sd^2 is referred to chi^2_d / d with d matched to its variance (Satterthwaite):
    Var[S^2 / sd^2] = 2 / (n - 1) + kappa / n for excess kurtosis kappa, so d = 2 / (2 / (n - 1) +
    kappa / n); with kappa = 0 this is the exact chi^2_{n-1} test for Gaussian data. kappa is pooled
    over the cell's layers (:func:`_pooled_excess_kurtosis`), because q_hat is not Gaussian at these
    widths (skew ~ 1 at N = 100) and one layer's n ~ 64 networks estimate it poorly. Positive z:
    spread larger than predicted. The correction matches the variance of S^2, not its skew: for a
    skewed q_hat the right tail is heavier than referred (tests/test_analysis.py measures the
    false-alarm inflation, under 3x nominal at skew 0.5).
    """
    n, _, sample_sd = _moments(x)
    kappa = _pooled_excess_kurtosis(x)
    dof = 2.0 / (2.0 / np.maximum(n - 1, 1) + kappa / np.maximum(n, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        chi2 = dof * (sample_sd / sd) ** 2
    z = chi2_score(chi2, dof)
    return np.where((n >= 3) & (sd > 0), z, np.nan)


def z_sample_sd(x: np.ndarray, mean) -> np.ndarray:
    """Normal score of the one-sample t statistic (sample mean - mean) / (S / sqrt(n)), t_{n-1}."""
    n, sample_mean, sample_sd = _moments(x)
    dof = np.maximum(n - 1, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (sample_mean - mean) / (sample_sd / np.sqrt(n))
    z = t_score(t, dof)
    return np.where((n >= 2) & (sample_sd > 0) & np.isfinite(mean), z, np.nan)


def sidak_threshold(alpha: float, k: int) -> float:
    """|z| threshold for K two-sided tests at family-wise level alpha (Sidak)."""
    p_each = -math.expm1(math.log1p(-alpha) / max(k, 1))
    return float(stats.norm.isf(p_each / 2.0))


def _per_input(x: xr.DataArray, inner: str = "input") -> np.ndarray:
    """(net, layer, ``inner``) array; a variable without ``inner`` gets a length-1 axis."""
    order = ("net", "layer", *([inner] if inner in x.dims else []))
    values = np.transpose(x.values, [x.dims.index(d) for d in order])  # no DataArray to build
    return values.astype(float).reshape(*values.shape[:2], -1)


def _compare(
    cell: Cell, depth: int, c0, prepared: Prepared | None
) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
    """The variables of :func:`compare_cell` as name -> (dims, values), layer first."""
    theory = {k: v[cell.layers] for k, v in theory_columns(cell, depth, prepared=prepared).items()}
    obs = cell.observable
    x = _per_input(cell.variance)
    zf = _per_input(cell.data["zero_frac"])
    corr = _per_input(cell.correlation, "pair")
    c0s = np.broadcast_to(np.asarray(c0, dtype=float), corr.shape[-1:])
    per_c0 = [correlation_theory(cell, depth, c, prepared) for c in c0s]
    corr_theory = np.stack(per_c0, axis=-1)[cell.layers]
    with np.errstate(over="ignore"):
        gain = np.exp(_per_input(cell.log_gain)[:, :, 0])
    col = (slice(None), None)  # layer predictions broadcast over inputs
    mean, sd = theory[f"{obs}_mean"][col], theory[f"{obs}_sd"][col]
    n_alive, x_mc_mean, x_mc_sd = _moments(x)
    pair_dims = ("layer", "pair") if "pair" in cell.correlation.dims else ("layer",)
    squeeze = (slice(None), slice(None)) if len(pair_dims) == 2 else (slice(None), 0)
    z = {
        f"{obs}_mean": z_known_sd(x, mean, sd),
        f"{obs}_sd": z_spread(x, sd),
        "zero_frac": z_known_sd(zf, theory["zf_mean"][col], theory["zf_sd"][col]),
        "corr": z_sample_sd(corr, corr_theory)[squeeze],
        "gain": z_sample_sd(gain, theory["chi1"]),
    }
    theory["corr"] = corr_theory[squeeze]
    dims, layer = ("layer", "input"), ("layer",)
    dims_of = {"corr": pair_dims, "gain": layer}
    return {
        **{k: (pair_dims if k == "corr" else layer, v) for k, v in theory.items()},
        "n_alive": (dims, n_alive),
        f"{obs}_mc_mean": (dims, x_mc_mean),
        f"{obs}_mc_sd": (dims, x_mc_sd),
        "zf_mc_mean": (dims, _moments(zf)[1]),
        "corr_mc_mean": (pair_dims, _moments(corr)[1][squeeze]),
        "gain_mc_mean": (layer, _moments(gain)[1]),
        **{f"z_{k}": (dims_of.get(k, dims), v) for k, v in z.items()},
    }


def compare_cell(
    cell: Cell, depth: int, c0=math.nan, prepared: Prepared | None = None
) -> xr.Dataset:
    """Per-layer Monte Carlo summaries, predictions and z-scores for one cell, at its recorded
    layers.

    Returns a Dataset over ``layer`` (and ``input``; ``pair`` for the correlation when the store
    has several pairs, ``c0`` then their initial correlations, one or one per pair) with n_alive,
    the Monte Carlo mean and sd of the cell's variance observable (``<obs>_mc_mean``,
    ``<obs>_mc_sd``, obs = q or v), the predictions of :func:`analysis.theory.cell_theory` (from
    ``prepared`` when the cell is in it), and one ``z_<stat>`` per statistic.
    """
    return xr.Dataset(_compare(cell, depth, c0, prepared), coords={"layer": cell.layers})


def _first_exceedance(z: np.ndarray, layers: np.ndarray, threshold: float) -> float:
    """First layer where |z| (layer first, then any inputs or pairs) exceeds the threshold, NaN if
    none."""
    over = (np.abs(z) > threshold).reshape(z.shape[0], -1).any(axis=1)
    return float(layers[over][0]) if over.any() else math.nan


def verdict(comparison: xr.Dataset, alpha: float = ALPHA) -> dict:
    """One row: max |z| per statistic, the Sidak threshold, the largest deviation of the mean
    correlation from the GP, pass/fail and the first failing layer and statistic."""
    arrays = {
        name: comparison[name].transpose("layer", ...).values for name in comparison.data_vars
    }
    return _verdict(arrays, comparison["layer"].values, alpha)


def _verdict(arrays: dict[str, np.ndarray], layers: np.ndarray, alpha: float) -> dict:
    """:func:`verdict` of a comparison given as arrays by name (layer first)."""
    obs = "q" if "z_q_mean" in arrays else "v"
    stats_tested = verdict_stats(obs)
    z = {s: arrays[f"z_{s}"] for s in (*stats_tested, *REPORTED_STATS)}
    finite = sum(int(np.isfinite(z[s]).sum()) for s in stats_tested)
    threshold = sidak_threshold(alpha, finite)
    row: dict = {"n_tests": finite, "z_crit": threshold}
    first_layer, first_stat = math.inf, ""
    for stat, values in z.items():
        row[f"max_abs_z_{stat}"] = (
            float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else math.nan
        )
        layer = _first_exceedance(values, layers, threshold)
        if stat in stats_tested and layer < first_layer:
            first_layer, first_stat = layer, stat
    # (v at layer 0 is exact: sd 0, no z, yet not untested)
    tested = (arrays["n_alive"] >= 2).reshape(layers.size, -1).any(axis=1)
    untested = layers[~tested]
    if untested.size and untested[0] < first_layer:
        first_layer, first_stat = float(untested[0]), "untested"
    deviation = np.abs(arrays["corr_mc_mean"] - arrays["corr"])
    row["corr_max_dev"] = float(np.nanmax(deviation)) if np.isfinite(deviation).any() else math.nan
    row["agrees"] = math.isinf(first_layer) and finite > 0
    row["first_fail_layer"] = math.nan if math.isinf(first_layer) else first_layer
    row["first_fail_stat"] = first_stat
    return row


FIT_VARIABLES = ("variance", "correlation", "log_gain", "zero_frac", "escape_layer")
"""What :func:`fit_table` reads of a cell."""


def fit_row(
    cell: Cell, depth: int, pair_c0, alpha: float, prepared: Prepared | None = None
) -> dict:
    """The row of :func:`fit_table` of one cell (its theory from ``prepared`` when it is in it)."""
    arrays = {k: v for k, (_, v) in _compare(cell, depth, pair_c0, prepared).items()}
    escaped = int((cell.data["escape_layer"].values >= 0).sum())
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all NaN: nanmax is NaN
        eps = np.nanmax(np.abs(arrays["g1"] / arrays["q_gp"])) / cell.width
    return {
        **cell.key,
        "n_nets": int(cell.data.sizes["net"]),
        "n_escaped": escaped,
        "eps_1n": float(eps),
        **_verdict(arrays, cell.layers, alpha),
    }


def fit_table(results: Results, alpha: float = ALPHA, n_jobs: int = 1) -> pd.DataFrame:
    """The tidy verdict table: one row per finished cell (parameters, width, network counts, the
    verdict columns of :func:`verdict`) and ``eps_1n``, the size of the first-order correction,
    max_l |G1^l| / (N q^l). Near the upper edge of the clip window (V'(q*) -> 1) the correction
    is amplified by 1 / (1 - V'(q*)) and the neglected O(1/N^2) terms with it, so the verdict is
    only expected to pass where eps_1n is small (``EPS_SMALL``). Empty for a summary store (no
    per-layer records to test). ``n_jobs``: processes (``analysis._parallel.start_cells``)."""
    return start_fit_table(results, alpha, n_jobs)()


def start_fit_table(
    results: Results,
    alpha: float = ALPHA,
    n_jobs: int = 1,
    theory: Callable[[], Prepared | None] = lambda: None,
) -> Callable[[], pd.DataFrame]:
    """:func:`fit_table`, started (``analysis._parallel.start_cells``): call the result for it.
    ``theory``: the store's theory for the rows computed in this process, called when they are
    (the default: each cell's theory computed alone; workers prepare their own)."""
    if not results.per_layer:
        return pd.DataFrame
    row = partial(fit_row, depth=results.depth, pair_c0=results.pair_c0, alpha=alpha)
    rows = start_cells(results, row, FIT_VARIABLES, n_jobs, theory)
    return lambda: pd.DataFrame(rows())


def main(argv: list[str] | None = None) -> int:
    parser = Parser(
        prog="python -m analysis.fit", description="Monte Carlo vs GP verdict per cell."
    )
    parser.add_argument("results", help="results store (.zarr directory or .nc file)")
    parser.add_argument(
        "--alpha", type=probability, default=ALPHA, help="family-wise level per cell, in (0, 1)"
    )
    add_n_jobs(parser)
    args = parser.parse_args(argv)
    print(markdown_table(fit_table(open_results(args.results), args.alpha, args.n_jobs)))
    return 0


if __name__ == "__main__":  # the module's own main, so that workers can pickle its functions
    from analysis.fit import main as module_main

    run_cli(module_main)
