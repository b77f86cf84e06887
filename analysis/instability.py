"""Where the variance runs away: escape statistics, the width law, the clip window, fixed-point jumps.

Escape. A network escapes at the first layer where its variance leaves the band
[q_ref / f, f q_ref] (f = the store's ``escape_factor``); networks that never do are censored at
the sweep's depth. Per cell: the fraction escaped by each layer, the Kaplan-Meier survival curve
and the median escape depth with its 95% interval (:mod:`analysis.survival`).

Width law. For unclipped activations at the Edge of Chaos (V'(q*) = 1, V'' > 0) the median escape
depth is fitted as L_esc = A N^beta by least squares on (ln N, ln median) over the widths whose
median was reached before the sweep's depth. The 95% interval on beta is a percentile bootstrap
over networks (resampled within each width, B = 2000, fixed seed). A pooled beta shares the slope
across every unclipped (family, sparsity, q*) with its own intercept (within-group regression).

Onset of the instability in the 1/N theory (``gp.onset_layer``): the first layer l_pt(N) where the
predicted spread of the layer variance, sqrt(V4^l / N), reaches the distance to instability
d_l = 2 / (V''(q*) l), the deviation from the one-sided fixed point that blows up within l layers.
With V4^l ~ v l (ReLU_tau, ST_tau) l_pt = (4 N / (V''^2 v))^{1/3}: beta_theory = 1/3, reported
beside the fitted beta.

Clip window for (family, sparsity, q*), for every family with a clip level m to vary: the named
ones, and a user shape whose knots, values or slopes use m (:func:`theory_window`).
- Theory (``gp.clip_window`` of the family's members at that sparsity and q*, as functions of m):
  lower edge = ``gp.min_gradient_clip``, the smallest m at which at least half of the
  active units (phi != 0) pass gradient (phi' != 0) at q*: P(sloped piece) / P(not a zero piece)
  >= 1/2 (``gp.gradient_fraction``, which grows with m from 0 to 1). In general it marks
  where an activation stops being mostly a sparse *gate* and becomes mostly a *saturating* one:
  below it most active units sit on a flat nonzero piece and the backward signal dies out. For
  CReLU and CST, with a = tau / sqrt(q*), it is m_low = sqrt(q*) [Phi^{-1}((1 + Phi(a))/2) - a].
  Upper edge = ``gp.max_stable_clip`` (above it V has extra fixed points). m is inside when
  m_low <= m <= m_high (``gp.ClipWindow.contains``). A shape that does not use m is the same
  function at every clip level: it has no clip level to vary and no window (NaN edges).
- Monte Carlo, per width: the simulated m for which at least ``STAY_LEVEL`` (90%) of the networks
  stay at q* to full depth (not escaped, and the final variance nearest to q* among the GP's stable
  fixed points, on a log scale) and the mean final zero fraction of the networks that did not
  escape is within ``SPARSITY_TOL`` = 0.02 of the target.

Jumps. For clipped cells whose map has a stable upper fixed point, each network's final variance
and zero fraction are assigned to the nearest stable fixed point, and the cluster means are set
against the GP's fixed point and its sparsity.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache, partial

import numpy as np
import pandas as pd

from simulate import gp
from simulate.activations import FAMILIES, Activation
from simulate.spec import Shape

from ._cli import Parser, add_n_jobs, run_cli
from ._parallel import start_cells
from ._store import FINAL, Cell, Results, open_results
from ._table import markdown_table
from .survival import kaplan_meier, median_survival
from .theory import Prepared, layer_theory

STAY_LEVEL = 0.9
"""Fraction of networks that must stay at q* for a clip level to be in the Monte Carlo window."""

SPARSITY_TOL = 0.02
"""Allowed gap between the mean final zero fraction and the target sparsity in the MC window."""

N_BOOT = 2000
"""Bootstrap replicates for the interval on the width-law exponent."""

FATES = ("q*", "upper", "lower", "escaped up", "escaped down")
"""What happens to a network by the last layer (:func:`network_fates`)."""

ESCAPES = ("escape_layer",)
"""What the escape tables read of a cell (:meth:`analysis._store.Results.cells`)."""


def fate_variables(results: Results) -> tuple[str, ...]:
    """What :func:`network_fates` reads of a cell: the escape layers, and the final variance and
    zero fraction: their per-network summaries, or the trajectories in a store without them."""
    obs = results.observable
    return (
        "escape_layer",
        *(FINAL[x] if FINAL[x] in results.ds else x for x in (obs, "zero_frac")),
    )


# -- escape statistics --------------------------------------------------------------------------


def escape_times(cell: Cell, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """(time, observed): the escape layer of each network, or ``depth`` (censored) if none."""
    layer = cell.data["escape_layer"].values.astype(int)
    observed = layer >= 0
    return np.where(observed, layer, depth).astype(float), observed


def escaped_fraction(cell: Cell, depth: int) -> np.ndarray:
    """Fraction of networks escaped at or before each layer 0..depth."""
    layer = cell.data["escape_layer"].values
    hit = layer[layer >= 0]
    return np.array([(hit <= l).sum() for l in range(depth + 1)]) / layer.size


ESCAPE_COLUMNS = ("n_nets", "frac_escaped", "median_escape", "median_lo", "median_hi")
STABILITY_COLUMNS = ("frac_stay", "final_zero_frac", "target_sparsity", "in_window_mc")
JUMP_COLUMNS = (
    "gp_upper_q",
    "gp_upper_sparsity",
    *(f"n_{f.replace(' ', '_')}" for f in FATES),
    "upper_mean_q",
    "upper_mean_zero_frac",
)
"""The columns of :func:`escape_table`, :func:`stability_table` and :func:`jump_table` (after the
cell's coordinates), all from one :func:`network_table`."""


def network_row(cell: Cell, depth: int, fates: bool) -> dict:
    """One cell's row of :func:`network_table`: its escape statistics and, with ``fates``, what
    its networks' fates give the stability and jump tables (``gp_upper_q``: the GP's lowest stable
    fixed point above q* of a clipped activation, NaN when it has none)."""
    times, observed = escape_times(cell, depth)
    median, lo, hi = median_survival(kaplan_meier(times, observed))
    row = {
        **cell.key,
        "n_nets": times.size,
        "frac_escaped": observed.mean(),
        "median_escape": median,
        "median_lo": lo,
        "median_hi": hi,
    }
    if not fates:
        return row
    table = network_fates(cell)
    stay = float((table["fate"] == "q*").mean())
    zero = float(table["final_zero_frac"].mean())
    counts = table["fate"].value_counts()
    jumped = table[table["fate"] == "upper"]
    points = stable_fixed_points(cell.act, cell.sigma_w2, cell.sigma_b2, cell.q_ref)
    upper = [q for q in points if q > cell.q_ref] if cell.act.clipped else []
    return row | {
        "frac_stay": stay,
        "final_zero_frac": zero,
        "target_sparsity": cell.target_sparsity,
        "in_window_mc": bool(
            stay >= STAY_LEVEL and abs(zero - cell.target_sparsity) <= SPARSITY_TOL
        ),
        "gp_upper_q": upper[0] if upper else math.nan,
        **{f"n_{f.replace(' ', '_')}": int(counts.get(f, 0)) for f in FATES},
        "upper_mean_q": float(jumped["final_q"].mean()) if len(jumped) else math.nan,
        "upper_mean_zero_frac": (
            float(jumped["final_zero_frac"].mean()) if len(jumped) else math.nan
        ),
    }


def network_table(results: Results, fates: bool, n_jobs: int = 1) -> pd.DataFrame:
    """One row per finished cell (:func:`network_row`) from one read of its per-network data:
    what :func:`escape_table` and, with ``fates`` (Edge-of-Chaos stores), :func:`stability_table`
    and :func:`jump_table` show. ``n_jobs``: processes (``analysis._parallel.start_cells``)."""
    return start_network_table(results, fates, n_jobs)()


def start_network_table(
    results: Results, fates: bool, n_jobs: int = 1
) -> Callable[[], pd.DataFrame]:
    """:func:`network_table`, started (``analysis._parallel.start_cells``): call the result for
    it."""
    read = fate_variables(results) if fates else ESCAPES
    row = partial(network_row, depth=results.depth, fates=fates)
    rows = start_cells(results, row, read, n_jobs)
    return lambda: pd.DataFrame(rows())


def _columns(results: Results, networks: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """The cell coordinates and ``columns`` of ``networks`` (empty when no cell is finished)."""
    if networks.empty:
        return pd.DataFrame()
    return networks[[*results.param_dims, "width", *columns]]


def escape_table(results: Results, networks: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per finished cell: networks, escaped fraction by depth, median escape depth and its
    95% Kaplan-Meier interval (inf: not reached within the sweep's depth). ``networks``: the
    store's :func:`network_table`, when already computed."""
    networks = network_table(results, fates=False) if networks is None else networks
    return _columns(results, networks, ESCAPE_COLUMNS)


# -- the width law ------------------------------------------------------------------------------


def _median_of_sorted(times: np.ndarray) -> np.ndarray:
    """KM median without censoring before the end: the ceil(n/2)-th smallest time (inf = censored),
    along the last axis."""
    k = math.ceil(times.shape[-1] / 2) - 1
    return np.partition(times, k, axis=-1)[..., k].copy()  # not a view keeping the whole alive


def _slope(x: np.ndarray, y: np.ndarray, group: np.ndarray) -> float:
    """Within-group least-squares slope of y on x (one intercept per group); NaN if undetermined."""
    keep = np.isfinite(y)
    x, y, group = x[keep], y[keep], group[keep]
    num = den = 0.0
    for g in np.unique(group):
        sel = group == g
        if sel.sum() < 2:
            continue
        dx = x[sel] - x[sel].mean()
        num += float(dx @ (y[sel] - y[sel].mean()))
        den += float(dx @ dx)
    return num / den if den > 0 else math.nan


def onset_layer(cell: Cell, depth: int, prepared: Prepared | None = None) -> float:
    """l_pt(N) of the cell (``gp.onset_layer``) from its V4 over layers 0..depth
    (:func:`analysis.theory.layer_theory`, from ``prepared`` when the cell is in it); inf if none."""
    base = layer_theory(cell.act, cell.sigma_w2, cell.sigma_b2, cell.q0, depth, prepared)
    return gp.onset_layer(cell.act, cell.sigma_w2, cell.q_ref, base["v4"].values, cell.width)


def _group_label(results: Results, cell: Cell) -> str:
    """``family=crelu sparsity=0.8 q_star=1.0``: the cell's parameters except the clip."""
    return " ".join(f"{d}={cell.key[d]}" for d in results.param_dims if d != "clip")


def width_law(
    results: Results, n_boot: int = N_BOOT, seed: int = 0, prepared: Prepared | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fit L_esc = A N^beta for every unclipped parameter group, and pooled.

    Returns (points, fits): ``points`` has one row per unclipped cell (its group label, median
    escape depth with its KM interval, onset layer l_pt); ``fits`` one row per group plus a
    ``pooled`` row, with beta, the group's intercept ln A, its 95% bootstrap interval, the fraction of bootstrap replicates that could be fitted, and the
    theory exponent fitted to l_pt over the same widths. Edge-of-Chaos stores only (off it an
    escape is the ordered or chaotic phase, not the instability): empty otherwise. ``prepared``:
    the store's theory (:func:`analysis.theory.prepare`), when already computed.
    """
    if not results.eoc or not np.isinf(results.ds["clip"].values).any():
        return pd.DataFrame(), pd.DataFrame()
    rows, samples = [], []
    for cell in results.cells(ESCAPES, clip=math.inf):
        times, observed = escape_times(cell, results.depth)
        median, lo, hi = median_survival(kaplan_meier(times, observed))
        rows.append(
            {
                **cell.key,
                "group": _group_label(results, cell),
                "median_escape": median,
                "median_lo": lo,
                "median_hi": hi,
                "onset_layer": onset_layer(cell, results.depth, prepared),
            }
        )
        samples.append(np.where(observed, times, math.inf))
    points = pd.DataFrame(rows)
    if points.empty:
        return points, pd.DataFrame()
    rng = np.random.default_rng(seed)
    boot = np.stack(
        [_median_of_sorted(t[rng.integers(0, t.size, (n_boot, t.size))]) for t in samples], axis=1
    )  # (n_boot, cells)
    x = np.log(points["width"].to_numpy(dtype=float))
    codes = pd.factorize(points["group"])[0]
    fits = []
    for code in [*np.unique(codes), None]:
        sel = np.ones(len(points), bool) if code is None else codes == code
        fits.append(_fit_row(points[sel], x[sel], codes[sel], boot[:, sel], pooled=code is None))
    return points, pd.DataFrame(fits)


def _fit_row(points: pd.DataFrame, x, codes, boot, pooled: bool) -> dict:
    with np.errstate(divide="ignore"):
        y = np.log(points["median_escape"].to_numpy(dtype=float))
        y_theory = np.log(points["onset_layer"].to_numpy(dtype=float))
        slopes = np.array([_slope(x, np.log(b), codes) for b in boot])
    finite = slopes[np.isfinite(slopes)]
    lo, hi = np.quantile(finite, [0.025, 0.975]) if finite.size else (math.nan, math.nan)
    beta = _slope(x, y, codes)
    ok = np.isfinite(y)
    return {
        "group": "pooled" if pooled else points["group"].iloc[0],
        "n_widths": int(np.isfinite(y).sum()),
        "beta": beta,
        "intercept": math.nan if pooled or ok.sum() < 2 else y[ok].mean() - beta * x[ok].mean(),
        "beta_lo": lo,
        "beta_hi": hi,
        "boot_valid": finite.size / max(slopes.size, 1),
        "beta_theory": _slope(x, y_theory, codes),
    }


# -- fixed points, network fates and the clip window --------------------------------------------


@gp.activation_cache(maxsize=1024)
def stable_fixed_points(
    act: Activation, sigma_w2: float, sigma_b2: float, q_ref: float
) -> tuple[float, ...]:
    """Sorted attracting (stable or one-sided) fixed points of V on the Edge of Chaos, the one at
    q* snapped to exactly ``q_ref`` (fates compare against it); just (q_ref,) when every q is fixed."""
    try:
        found = gp.fixed_points(act, sigma_w2, sigma_b2)
    except ValueError:  # V(q) = q identically (ReLU at the EoC): q_ref is as good as any
        return (q_ref,)
    points = [p.q for p in found if p.kind != "unstable"]
    return tuple(sorted(q_ref if abs(math.log(q / q_ref)) <= 1e-3 else q for q in points))


def network_fates(cell: Cell) -> pd.DataFrame:
    """Per network: escape layer, final variance (the cell's observable, q or v) and zero
    fraction (mean over inputs at the depth, NaN if escaped), the nearest stable fixed point
    ``basin`` and ``fate`` in {"q*", "upper", "lower", "escaped up", "escaped down"}: an escaped
    network went up when its largest variance over the inputs at its escape layer is above q_ref.
    The values at the last layer reached are :meth:`analysis._store.Cell.final`'s."""
    final = cell.final(cell.observable)  # (net, input) at the escape layer, else at the depth
    escape = cell.data["escape_layer"].values.astype(int)
    points = np.array(stable_fixed_points(cell.act, cell.sigma_w2, cell.sigma_b2, cell.q_ref))
    final_q = final.mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        basin = points[np.argmin(np.abs(np.log(final_q[:, None] / points[None, :])), axis=1)]
    fate = np.where(
        basin == cell.q_ref, "q*", np.where(basin > cell.q_ref, "upper", "lower")
    ).astype(object)
    up = final.max(axis=1) > cell.q_ref
    fate[escape >= 0] = np.where(up[escape >= 0], "escaped up", "escaped down")
    return pd.DataFrame(
        {
            "escape_layer": escape,
            "final_q": np.where(escape >= 0, np.nan, final_q),
            "final_zero_frac": np.where(escape >= 0, np.nan, cell.final("zero_frac").mean(axis=1)),
            "basin": np.where(escape >= 0, np.nan, basin),
            "fate": fate,
        }
    )


def stability_table(results: Results, networks: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per finished cell: fraction of networks staying at q*, mean final zero fraction of
    the networks that did not escape, and whether the cell is in the Monte Carlo window.
    Edge-of-Chaos stores only (off it there is no q*): empty otherwise. ``networks``: the store's
    :func:`network_table` with fates, when already computed."""
    if not results.eoc:
        return pd.DataFrame()
    networks = network_table(results, fates=True) if networks is None else networks
    return _columns(results, networks, STABILITY_COLUMNS)


NO_WINDOW = gp.ClipWindow(math.nan, math.nan)
"""The window of a family without a clip level to vary: nothing is inside."""


@lru_cache(maxsize=256)
def theory_window(
    family: str, sparsity: float, q_star: float, shape: Shape | None = None
) -> gp.ClipWindow:
    """The theory clip window of ``family`` at GP sparsity ``sparsity`` and q* (module docstring):
    ``gp.clip_window`` of its member of that sparsity at q* as a function of the clip level m, as
    a sweep over sparsity builds its cells (:func:`simulate.spec.resolve`).

    - A named family: ``gp.family_clip_window`` (tau fixed by the sparsity).
    - A user shape (``shape``, its ``[shape]`` table: a store's :attr:`~analysis._store.Results.shapes`)
      whose knots, values or slopes use m: m -> ``shape.at(tau(m), m)`` with
      tau(m) = ``shape.tau_for_sparsity(sparsity, q*, m)`` (its zero set may move with m).
      ``NO_WINDOW`` when the search finds no window (gp's ValueError: e.g. the sparsity is out of
      the shape's reach at some m, or V is bistable already at m = 0.25 sqrt(q*) or never by
      1e3 sqrt(q*)).
    - ``NO_WINDOW`` for a shape that does not use m (every clip level is the same function, there
      is no clip level to vary) and for a family whose shape is not known (``shape`` None: a store
      without its spec).
    """
    if family in FAMILIES:
        return gp.family_clip_window(family, sparsity, q_star)
    if shape is None or not shape.uses("m"):
        return NO_WINDOW

    def at_clip(m: float) -> Activation:
        return shape.at(shape.tau_for_sparsity(sparsity, q_star, m), m)

    try:
        return gp.clip_window(at_clip, q_star)
    except ValueError:
        return NO_WINDOW


def _grid_index(clips: np.ndarray, m: float) -> int:
    """Index of the largest grid clip <= m (-1 if m is below the grid)."""
    return int(np.searchsorted(clips, m, side="right")) - 1


def clip_window(results: Results, stability: pd.DataFrame | None = None) -> pd.DataFrame:
    """Theory window and Monte Carlo window per (family, sparsity, q*[, width]), side by side.

    ``mc_low``/``mc_high`` are the smallest and largest finite simulated m in the MC window;
    ``upper_steps`` is the number of grid steps between the MC upper edge and the largest grid m
    not above ``gp.max_stable_clip`` (0: same grid cell; |steps| <= 1 counts as agreement).
    ``stability``: the store's :func:`stability_table`, when already computed. Families without a
    theory window (:func:`theory_window`) are left out.
    """
    if not results.eoc or "sparsity" not in results.ds.dims:
        return pd.DataFrame()
    table = stability_table(results) if stability is None else stability
    if table.empty:
        return pd.DataFrame()
    table = table[np.isfinite(table["clip"])]
    points = list(zip(table["family"], table["sparsity"], table["q_star"], strict=True))
    windows = {p: theory_window(*p, results.shapes.get(p[0])) for p in dict.fromkeys(points)}
    table = table[np.array([windows[p].defined for p in points], dtype=bool)]
    clips = np.sort(np.unique(table["clip"].to_numpy(dtype=float)))
    keys = ["family", "sparsity", "q_star", "width"]
    rows = []
    for key, group in table.groupby(keys, sort=True):
        window = windows[key[:3]]
        inside = np.sort(group.loc[group["in_window_mc"], "clip"].to_numpy(dtype=float))
        mc_high = float(inside[-1]) if inside.size else math.nan
        steps = (
            _grid_index(clips, mc_high) - _grid_index(clips, window.high)
            if inside.size
            else math.nan
        )
        rows.append(
            {
                **dict(zip(keys, key, strict=True)),
                "theory_low": window.low,
                "theory_high": window.high,
                "mc_low": float(inside[0]) if inside.size else math.nan,
                "mc_high": mc_high,
                "mc_clips": ", ".join(f"{m:g}" for m in inside),
                "upper_steps": steps,
                "agrees": bool(abs(steps) <= 1) if inside.size else False,
            }
        )
    return pd.DataFrame(rows)


def jump_table(results: Results, networks: pd.DataFrame | None = None) -> pd.DataFrame:
    """Clipped cells whose GP map has a stable fixed point above q*: networks per fate, and the
    upper cluster's mean final variance and zero fraction against the GP fixed point and its
    sparsity. Edge-of-Chaos stores only: empty otherwise. ``networks``: the store's
    :func:`network_table` with fates, when already computed."""
    if not results.eoc:
        return pd.DataFrame()
    networks = network_table(results, fates=True) if networks is None else networks
    if networks.empty:
        return pd.DataFrame()
    jumps = networks[np.isfinite(networks["gp_upper_q"])].reset_index(drop=True)
    keys = jumps[[*results.param_dims, "width"]].to_dict("records")
    jumps["gp_upper_sparsity"] = [
        float(gp.sparsity(results.activation(key), q))
        for key, q in zip(keys, jumps["gp_upper_q"], strict=True)
    ]
    return _columns(results, jumps, JUMP_COLUMNS)


def _fates(results: Results, n_jobs: int) -> pd.DataFrame:
    return network_table(results, fates=results.eoc, n_jobs=n_jobs)


TABLES = {
    "escape": lambda r, n_jobs: escape_table(r, network_table(r, fates=False, n_jobs=n_jobs)),
    "width-law": lambda r, n_jobs: width_law(r)[1],
    "width-points": lambda r, n_jobs: width_law(r)[0],
    "window": lambda r, n_jobs: clip_window(r, stability_table(r, _fates(r, n_jobs))),
    "jumps": lambda r, n_jobs: jump_table(r, _fates(r, n_jobs)),
    "stability": lambda r, n_jobs: stability_table(r, _fates(r, n_jobs)),
}
"""``--table`` -> the table of a store, with ``n_jobs`` processes for the cells' network data."""


def main(argv: list[str] | None = None) -> int:
    parser = Parser(
        prog="python -m analysis.instability", description="Escape, width-law and window tables."
    )
    parser.add_argument("results", help="results store (.zarr directory or .nc file)")
    parser.add_argument("--table", choices=sorted(TABLES), default="escape")
    add_n_jobs(parser)
    args = parser.parse_args(argv)
    print(markdown_table(TABLES[args.table](open_results(args.results), args.n_jobs)))
    return 0


if __name__ == "__main__":  # the module's own main, so that workers can pickle its functions
    from analysis.instability import main as module_main

    run_cli(module_main)
