"""``python -m analysis.figures RESULTS [--out DIR] [--init INIT_STORE] [--n-jobs N]``: the figures
of a results store, PNG and PDF (``--n-jobs``: processes for the tables read cell by cell).

Default output: a ``figures/`` folder next to the store. Figures (those that need what the store
lacks are skipped); on an Edge-of-Chaos store every panel row is one (family, q*) facet, so a sweep
over several q* gets one row per q*, never an average over them:

- ``variance_maps``: V(q)/q against the identity (= 1) for the store's activations (every sparsity
  at the largest clip level, every clip level at one sparsity), fixed points marked (theory only);
- ``trajectories``: q^l through depth, Monte Carlo median and 10-90% band per width against the GP
  iterate and the 1/N-corrected mean, unclipped beside clipped;
- ``phase_diagram``: sparsity x clip, colour = fraction of networks staying at q* to full depth,
  with the theory window's edges drawn over it (families with a window);
- ``escape_width``: median escape depth against width (log-log), the fitted law and the onset
  layer of the 1/N theory; ``survival``: Kaplan-Meier curves of the unclipped cells;
- ``width_law`` (unclipped cells at 4 widths or more): local exponent of the mean escape depth
  against N with the asymptotic 1/3 and the diffusion theory, and T against N under both laws;
- ``zero_frac_corr_<family>[_q<q*>]``: zero fraction and 1 - correlation through depth against theory;
- ``correlation_map``: the empirical map 1 - c^(l+1) against 1 - c^l over every pair of inputs and
  layer (binned mean and 10-90% band per width) over the GP map R, unclipped beside clipped;
- ``sigma_phase``: for an off-EoC sweep, the (sigma_w^2, sigma_b^2) plane with the chi_1 = 1 line,
  ordered and chaotic regions, V'(q) at the attracting fixed point and the measured gains.

A training store (``python -m simulate.grid --experiment train``; ``--init INIT_STORE`` adds the
Monte Carlo of the same activations) gets, from the tables of :mod:`analysis.training`:

- ``training_phase``: final test accuracy over (sparsity, clip) per (family, q*, width, depth,
  lr), with the theory window (its edges, or the cells inside it outlined when the grid has one
  finite clip level); beside it, with an init store, the Monte Carlo fraction at q*;
- ``training_curves[_<setting>]``: test accuracy and loss against epoch per activation;
- ``training_sparsity[_<setting>]``: hidden sparsity against its target, through training (mean
  and spread over layers) and through depth (at initialisation and at the end);
- ``training_link``: final accuracy against V'(q*) and, with an init store, the Monte Carlo
  escape fraction and fraction at q*, coloured by where m lies against the theory window.

Panels are named by the store's ``family`` label (a named family or a user shape's name) and the
cell's parameters. On a partial store (an interrupted sweep) every Monte Carlo figure says so in
its title, and the phase diagram hatches the cells not run. The figures through depth (trajectories, zero fraction and correlation, the
correlation map) need per-layer records: a summary store has none of them.
"""

from __future__ import annotations

import itertools
import math
import re
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import xarray as xr
from matplotlib.colors import TwoSlopeNorm
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import LogFormatter, MaxNLocator, NullFormatter

from simulate import gp
from simulate.activations import Activation
from simulate.spec import Shape

from ._cli import Parser, add_n_jobs, run_cli, writable_dir
from ._store import Cell, Results
from .instability import ESCAPES, escape_times, theory_window
from .survival import kaplan_meier, survival_at
from .tables import Tables
from .theory import Prepared, cell_theory
from .training import PREDICTORS, TrainingResults, TrainingTables, open_stores, pooled
from .width_law import applies

WIDTH_IN = 8.0
DPI = 120


def _style() -> None:
    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.85)
    plt.rcParams.update({"figure.dpi": DPI, "savefig.bbox": "tight", "legend.framealpha": 0.9})


def _save(fig, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for path in paths:
        fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return paths


def _coords(results: Results, dim: str) -> list:
    return [v.item() if hasattr(v, "item") else v for v in results.ds[dim].values]


def _facets(results: Results) -> list[tuple[str, float]]:
    """The (family, q*) pairs of an Edge-of-Chaos store: one panel row each."""
    return [(f, q) for f in _coords(results, "family") for q in _coords(results, "q_star")]


def _at_q(results: Results, q_star: float) -> str:
    """``, q* = 2`` when the store has several q*, else nothing."""
    return f", q* = {q_star:g}" if results.ds.sizes["q_star"] > 1 else ""


def _suptitle(fig, results: Results, title: str, **kwargs) -> None:
    """The figure title, with a second line on a partial store saying how much of it there is."""
    if results.partial:
        title += (
            f"\nPARTIAL STORE: {results.n_done} of {results.n_cells} cells done "
            "(the sweep was interrupted; cells not run are missing here)"
        )
    fig.suptitle(title, **kwargs)


def _param_key(results: Results, **given) -> dict:
    """A full parameter key: ``given`` values, the first coordinate for the other dimensions."""
    return {d: given.get(d, _coords(results, d)[0]) for d in results.param_dims}


def _cell_label(cell: Cell) -> str:
    """``crelu, tau = 0.842, m = 1`` (the family label, the threshold and the clip level)."""
    m = cell.key["clip"]
    clip = f"m = {m:g}" if math.isfinite(m) else "unclipped"
    return f"{cell.key['family']}, tau = {float(cell.data['tau']):.3g}, {clip}"


def _width_colors(widths) -> dict:
    palette = sns.color_palette("viridis", len(widths) + 1)
    return {w: palette[i] for i, w in enumerate(sorted(widths))}


def _show_sparsity(results: Results) -> float:
    """The sparsity the depth figures show: 0.8 when simulated, else the middle one."""
    values = _coords(results, "sparsity")
    return 0.8 if any(math.isclose(v, 0.8) for v in values) else values[len(values) // 2]


def _show_clip(results: Results, family: str, sparsity: float, q_star: float) -> float | None:
    """The clipped example: the simulated finite m closest to sqrt(q*) inside the theory window
    (among every finite m when the family has no window)."""
    window = theory_window(family, sparsity, q_star, results.shapes.get(family))
    finite = [m for m in _coords(results, "clip") if math.isfinite(m)]
    inside = [m for m in finite if window.contains(m)] if window.defined else finite
    if not inside:
        return None
    return min(inside, key=lambda m: abs(math.log(m / math.sqrt(q_star))))


def _filled_variance(cell: Cell) -> np.ndarray:
    """The variance observable (q or v) per (net, recorded layer), input 0, with the layers after
    an escape set to +inf (escaped up) or 0."""
    q = cell.variance.isel(input=0).transpose("net", "layer").values.astype(float)
    escape = cell.data["escape_layer"].values
    after = (escape[:, None] >= 0) & (cell.layers[None, :] > escape[:, None])
    up = np.nanmax(cell.final(cell.observable), axis=1) > cell.q_ref
    return np.where(after, np.where(up, np.inf, 0.0)[:, None], q)


VARIANCE_LABEL = {
    "q": r"$q^l$ (mean square pre-activation)",
    "v": r"$v^l$ (conditional variance of layer l)",
}
"""Axis label of each variance observable (:attr:`analysis._store.Results.observable`)."""


def _band(ax, layers, values, color, label=None, median=True):
    """Median (or mean) line and 10-90% band of ``values`` (net, layer) over networks; returns the
    band's edges."""
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN layers after every escape
        lo, mid, hi = np.nanquantile(values, [0.1, 0.5, 0.9], axis=0)
        if not median:
            mid = np.nanmean(np.where(np.isfinite(values), values, np.nan), axis=0)
    ax.fill_between(layers, lo, hi, color=color, alpha=0.2, lw=0)
    ax.plot(layers, mid, color=color, lw=1.4, label=label)
    return lo, hi


# -- theory: variance maps ----------------------------------------------------------------------


def fig_variance_maps(results: Results, out: Path) -> list[Path]:
    """V(q)/q per (family, q*) from the stored activations and initialisations: at every sparsity
    with the largest clip level of the grid (unclipped when simulated), and at one sparsity with
    every finite clip level."""
    facets = _facets(results)
    sparsities = _coords(results, "sparsity")
    clips = _coords(results, "clip")
    largest = max(clips)
    finite = [m for m in clips if math.isfinite(m)]
    s_show = _show_sparsity(results)
    fig, axes = plt.subplots(len(facets), 2, figsize=(WIDTH_IN, 3.0 * len(facets)), squeeze=False)
    markers = {"stable": ("o", "full"), "unstable": ("o", "none"), "marginal": ("D", "full")}
    for row, (family, q_star) in zip(axes, facets, strict=True):
        q = np.geomspace(q_star / 30, 100 * q_star, 600)
        panels = [
            (row[0], [(s, largest) for s in sparsities], "sparsity", "mako_r"),
            (row[1], [(s_show, m) for m in finite], "m", "flare"),
        ]
        for ax, members, key, cmap in panels:
            if not members:
                ax.set_visible(False)
                continue
            palette = sns.color_palette(cmap, len(members))
            for (s, m), color in zip(members, palette, strict=True):
                point = _param_key(results, family=family, sparsity=s, clip=m, q_star=q_star)
                act = results.activation(point)
                sigma_w2, sigma_b2 = (
                    float(results.ds[v].sel(point)) for v in ("sigma_w2", "sigma_b2")
                )
                v = gp.variance_map(act, q, sigma_w2, sigma_b2)
                label = f"s = {s:g}" if key == "sparsity" else f"m = {m:g}"
                ax.plot(q, v / q, color=color, lw=1.5, label=label)
                for fixed in _fixed_points(act, sigma_w2, sigma_b2, q_star):
                    marker, fill = markers[fixed.kind]
                    ax.plot(fixed.q, 1.0, marker=marker, fillstyle=fill, color=color, ms=6, mew=1.3)
            ax.axhline(1.0, color="black", lw=1, ls="--")
            ax.set_xscale("log")
            ax.set_ylim(0.4, 2.6)
            title = (
                f"{family}, m = {largest:g}, every sparsity"
                if key == "sparsity"
                else f"{family}, sparsity {s_show:g}, every m"
            )
            ax.set_title(title + _at_q(results, q_star))
            ax.set_ylabel("V(q) / q")
            ax.set_xlabel(f"pre-activation variance q  (q* = {q_star:g})")
            ax.legend(fontsize="small", ncol=2, loc="upper left")
    handles = [
        Line2D([], [], color="grey", marker=mk, fillstyle=fs, ls="none", label=kind)
        for kind, (mk, fs) in markers.items()
    ] + [Line2D([], [], color="black", ls="--", label="identity V(q) = q")]
    fig.legend(handles=handles, loc="lower center", ncol=4, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle("Edge-of-Chaos variance maps against the identity; fixed points marked")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return _save(fig, out, "variance_maps")


def _fixed_points(act: Activation, sigma_w2: float, sigma_b2: float, q_star: float) -> list:
    """The GP fixed points; for a map with V(q) = q everywhere (ReLU), q* marked marginal."""
    try:
        return gp.fixed_points(act, sigma_w2, sigma_b2)
    except ValueError:
        return [gp.FixedPoint(q_star, 1.0, "marginal")]


# -- Monte Carlo through depth ------------------------------------------------------------------


def _example_cells(results: Results, family: str, q_star: float) -> list[list[Cell]]:
    """[unclipped, clipped] finished cells per width at the shown sparsity (empty where not
    simulated)."""
    s = _show_sparsity(results)
    cells = []
    for clip in (math.inf, _show_clip(results, family, s, q_star)):
        if clip is None or clip not in _coords(results, "clip"):
            cells.append([])
            continue
        where = {"family": family, "sparsity": s, "q_star": q_star, "clip": clip}
        cells.append(list(results.cells(**where)))
    return cells


def _escape_horizon(cells: list[Cell], depth: int) -> float:
    """Layer by which 90% of the networks of every width have escaped, plus 30% (at most depth)."""
    late = 0.0
    for cell in cells:
        layer = cell.data["escape_layer"].values
        late = max(late, np.quantile(np.where(layer >= 0, layer, depth), 0.9))
    return min(depth, max(20.0, 1.3 * late))


def fig_trajectories(results: Results, out: Path, prepared: Prepared | None = None) -> list[Path]:
    """q^l: MC median and 10-90% band per width vs the GP iterate and the 1/N mean (the cells'
    theory from ``prepared`` when they are in it)."""
    facets = _facets(results)
    colors = _width_colors(_coords(results, "width"))
    fig, axes = plt.subplots(
        len(facets), 2, figsize=(WIDTH_IN, 3.0 * len(facets) + 0.4), squeeze=False
    )
    for row, (family, q_star) in zip(axes, facets, strict=True):
        for ax, cells in zip(row, _example_cells(results, family, q_star), strict=True):
            if not cells:
                ax.set_visible(False)
                continue
            for cell in cells:
                theory = cell_theory(cell, results.depth, prepared=prepared)
                layers = theory["layer"].values
                color = colors[cell.width]
                _band(ax, cell.layers, _filled_variance(cell), color, f"N = {cell.width}")
                ax.plot(layers, theory[f"{cell.observable}_mean"], color=color, ls="--", lw=1)
            ax.plot(layers, theory["q_gp"], color="black", lw=1.2, label="GP iterate")
            cell = cells[0]
            ef = results.escape_factor
            if not cell.act.clipped:
                ax.set_yscale("log")
                ax.set_ylim(cell.q_ref / 2, cell.q_ref * ef * 1.5)
                ax.axhline(cell.q_ref * ef, color="firebrick", lw=0.8, ls=":")
                ax.set_xlim(0, _escape_horizon(cells, results.depth))
            ax.set_title(
                f"{_cell_label(cell)}, s = {cell.key['sparsity']:g}{_at_q(results, q_star)}",
                fontsize="medium",
            )
            ax.set_xlabel("layer l")
            ax.set_ylabel(VARIANCE_LABEL[cell.observable])
            ax.legend(fontsize="small", loc="upper left")
    handles = [
        Line2D([], [], color="grey", lw=1.4, label="MC median (band: 10-90%)"),
        Line2D([], [], color="grey", lw=1, ls="--", label="1/N theory mean q + G1/N"),
        Line2D([], [], color="firebrick", lw=0.8, ls=":", label="escape threshold"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, bbox_to_anchor=(0.5, -0.02))
    _suptitle(fig, results, "Variance through depth: unclipped escapes, clipped stays at q*")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return _save(fig, out, "trajectories")


MIN_SURVIVORS = 0.25
"""Depth profiles are drawn only where at least this fraction of the networks has not escaped."""


def _survivors(values: xr.DataArray) -> np.ndarray:
    """(sample, layer) values, a sample per network (and per input or pair when ``values`` has
    those), NaN at the layers where fewer than ``MIN_SURVIVORS`` of the samples are left (their
    mean would describe a few stragglers)."""
    values = values.transpose("layer", ...).values.astype(float)
    values = values.reshape(values.shape[0], -1).T
    alive = np.isfinite(values).mean(axis=0) >= MIN_SURVIVORS
    return np.where(alive, values, np.nan)


def fig_zero_corr(
    results: Results, out: Path, family: str, q_star: float, prepared: Prepared | None = None
) -> list[Path] | None:
    """Zero fraction and 1 - corr through depth (MC mean, 10-90% band) against theory (from
    ``prepared`` when the cells are in it), for one (family, q*); None when none of its example
    cells is finished."""
    examples = _example_cells(results, family, q_star)
    if not any(examples):
        return None
    colors = _width_colors(_coords(results, "width"))
    fig, axes = plt.subplots(2, 2, figsize=(WIDTH_IN, 5.6), sharex="col")
    for col, cells in enumerate(examples):
        extent = [1.0, 0.0]
        if not cells:
            axes[0, col].set_visible(False)
            axes[1, col].set_visible(False)
            continue
        for cell in cells:
            theory = cell_theory(cell, results.depth, results.c0, prepared)
            layers = theory["layer"].values
            color = colors[cell.width]
            zf = _survivors(cell.data["zero_frac"].mean("input"))
            lo, hi = _band(axes[0, col], cell.layers, zf, color, f"N = {cell.width}", median=False)
            extent = [min(extent[0], np.nanmin(lo)), max(extent[1], np.nanmax(hi))]
            axes[0, col].plot(layers, theory["zf_mean"], color=color, ls="--", lw=1)
            gap = 1.0 - _survivors(cell.correlation)
            _band(axes[1, col], cell.layers, gap, color, f"N = {cell.width}", median=False)
        act = cells[0].act
        axes[0, col].plot(
            layers, gp.sparsity(act, theory["q_gp"].values), color="black", lw=1.2, label="GP"
        )
        axes[1, col].plot(layers, 1.0 - theory["corr"], color="black", lw=1.2, label="GP R-iterate")
        axes[0, col].set_ylim(max(0.0, extent[0] - 0.02), min(1.0, extent[1] + 0.02))
        axes[1, col].set_yscale("log")
        axes[1, col].set_ylim(bottom=1e-7)  # float32 resolution of a stored correlation
        if not act.clipped:
            axes[1, col].set_xlim(0, _escape_horizon(cells, results.depth))
        axes[0, col].set_title(_cell_label(cells[0]), fontsize="medium")
        axes[0, col].set_ylabel("zero fraction")
        axes[1, col].set_ylabel("1 - correlation of two inputs")
        axes[1, col].set_xlabel("layer l")
        for ax in axes[:, col]:
            ax.legend(fontsize="small")
    _suptitle(
        fig,
        results,
        f"Zero fraction and input correlation through depth, target sparsity "
        f"{_show_sparsity(results):g}{_at_q(results, q_star)}\nMC mean (while >= 25% of networks "
        "remain) and 10-90% band; dashed: 1/N theory; black: GP",
        fontsize="medium",
    )
    fig.tight_layout()
    suffix = f"_q{q_star:g}" if results.ds.sizes["q_star"] > 1 else ""
    return _save(fig, out, f"zero_frac_corr_{family}{suffix}")


# -- the correlation map ------------------------------------------------------------------------

MAP_BINS = 14
"""Bins of ln(1 - c^l) of the empirical correlation map."""

MIN_IN_BIN = 5
"""A bin of the correlation map is drawn when it holds at least this many (pair, layer) points."""


def correlation_steps(cell: Cell) -> tuple[np.ndarray, np.ndarray, int]:
    """(c^l, c^(l+k)) over every network, pair and recorded layer l whose successor is recorded k
    layers later (k: the store's recording step, the most common gap), both finite; and k."""
    corr = cell.correlation
    corr = corr.expand_dims("pair", axis=-1) if "pair" not in corr.dims else corr
    values = corr.transpose("net", "pair", "layer").values.astype(float)
    gaps = np.diff(cell.layers)
    step = int(np.bincount(gaps).argmax()) if gaps.size else 1
    regular = np.flatnonzero(gaps == step)
    before, after = values[..., regular].ravel(), values[..., regular + 1].ravel()
    keep = np.isfinite(before) & np.isfinite(after)
    return before[keep], after[keep], step


def binned_map(before: np.ndarray, after: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Per bin of 1 - c^l (``edges``): the mean, 10% and 90% quantiles of 1 - c^(l+k), and the
    count; NaN where fewer than ``MIN_IN_BIN`` points (rows: mean, lo, hi, n)."""
    gap_before, gap_after = 1.0 - before, 1.0 - after
    index = np.digitize(gap_before, edges) - 1
    out = np.full((4, edges.size - 1), np.nan)
    for b in range(edges.size - 1):
        sel = gap_after[index == b]
        out[3, b] = sel.size
        if sel.size >= MIN_IN_BIN:
            out[0, b] = sel.mean()
            out[1, b], out[2, b] = np.quantile(sel, [0.1, 0.9])
    return out


def _map_theory(cell: Cell, gap: np.ndarray, step: int) -> np.ndarray:
    """1 - R^step(1 - gap): the GP correlation map at q* applied ``step`` times, as a map of the
    gap 1 - c (``gp.correlation_gap``, precise however small the gap)."""
    for _ in range(step):
        gap = gp.correlation_gap(
            cell.act, np.clip(gap, 0.0, 2.0), cell.q_ref, cell.sigma_w2, cell.sigma_b2
        )
    return gap


def fig_correlation_map(results: Results, out: Path) -> list[Path] | None:
    """The empirical correlation map: 1 - c^(l+k) against 1 - c^l (log-log; k the recording step,
    1 when every layer is recorded) over every network, pair and layer, binned in ln(1 - c^l):
    the mean per bin and its 10-90% band, per width, over the GP map 1 - R^k(c) at q* and the
    identity; one row per (family, q*), the unclipped cells beside the clipped example (as in the
    trajectories figure). The correlation is the store's observable's (v_corr or corr). None when
    the store has no pair of inputs or no example cell is finished."""
    if not results.pairs or not results.per_layer:
        return None
    facets = _facets(results)
    examples = [_example_cells(results, family, q_star) for family, q_star in facets]
    if not any(any(e) for e in examples):
        return None
    colors = _width_colors(_coords(results, "width"))
    fig, axes = plt.subplots(
        len(facets), 2, figsize=(WIDTH_IN, 3.6 * len(facets) + 0.5), squeeze=False
    )
    for row, cells_of, (_, q_star) in zip(axes, examples, facets, strict=True):
        for ax, cells in zip(row, cells_of, strict=True):
            steps = [correlation_steps(cell) for cell in cells]
            gaps = np.concatenate([1.0 - b for b, _, _ in steps]) if steps else np.array([])
            gaps = gaps[gaps > 0]
            if not gaps.size:
                ax.set_visible(False)
                continue
            edges = np.geomspace(gaps.min(), gaps.max() * (1 + 1e-9), MAP_BINS + 1)
            centres = np.sqrt(edges[1:] * edges[:-1])
            step = steps[0][2]
            for cell, (before, after, _) in zip(cells, steps, strict=True):
                mean, lo, hi, _ = binned_map(before, after, edges)
                color = colors[cell.width]
                ax.fill_between(centres, lo, hi, color=color, alpha=0.2, lw=0)
                ax.plot(centres, mean, "o-", color=color, ms=3.5, lw=1.2, label=f"N = {cell.width}")
            fine = np.geomspace(edges[0], edges[-1], 80)
            cell = cells[0]
            ax.plot(fine, _map_theory(cell, fine, step), color="black", lw=1.3,
                    label="GP map" + (f" R^{step}" if step > 1 else " R"))  # fmt: skip
            ax.plot(fine, fine, color="grey", lw=0.8, ls="--", label="identity")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(
                f"{_cell_label(cell)}, s = {cell.key['sparsity']:g}{_at_q(results, q_star)}",
                fontsize="medium",
            )
            later = f"l+{step}" if step > 1 else "l+1"
            ax.set_xlabel(r"$1 - c^{l}$ (correlation of a pair at layer l)")
            ax.set_ylabel(f"$1 - c^{{{later}}}$")
            ax.legend(fontsize="small", loc="upper left")
    name = OBSERVED_CORR[results.observable]
    _suptitle(
        fig,
        results,
        f"Correlation map over every pair and layer ({name}): binned mean (band: 10-90%) "
        "against the GP map",
        fontsize="medium",
    )
    fig.tight_layout()
    return _save(fig, out, "correlation_map")


OBSERVED_CORR = {"q": "empirical correlation corr", "v": "conditional correlation v_corr"}
"""How the correlation map names the store's correlation."""


# -- phase diagram and escapes ------------------------------------------------------------------


def _clip_position(clips: np.ndarray, m):
    """Categorical x position of clip level m: linear in ln m between the finite grid clips;
    beyond the last finite clip, halfway towards the inf column at most."""
    finite = clips[np.isfinite(clips)]
    index = np.arange(finite.size)
    m = np.asarray(m, float)
    pos = np.interp(np.log(m), np.log(finite), index)
    slope = 1.0 / np.log(finite[-1] / finite[-2]) if finite.size > 1 else 1.0
    beyond = np.minimum(index[-1] + slope * np.log(m / finite[-1]), index[-1] + 0.5)
    return np.where(m > finite[-1], beyond, pos)


def table_grid(table, value: str, sparsities, clips, **where) -> np.ndarray:
    """``value`` of the rows of ``table`` matching ``where`` as a (sparsity, clip) array over the
    given coordinates; NaN where there is no row."""
    grid = np.full((len(sparsities), len(clips)), np.nan)
    if table.empty:
        return grid
    sel = table[np.logical_and.reduce([(table[k] == v).to_numpy() for k, v in where.items()])]
    lookup = sel.set_index(["sparsity", "clip"])[value]
    for i, s in enumerate(sparsities):
        for j, m in enumerate(clips):
            grid[i, j] = lookup.get((s, m), np.nan)
    return grid


def phase_grid(stability, results: Results, family: str, q_star: float, width: int) -> np.ndarray:
    """frac_stay as a (sparsity, clip) array in the store's coordinate order for one facet and
    width; NaN where the cell is not finished."""
    return table_grid(
        stability,
        "frac_stay",
        _coords(results, "sparsity"),
        _coords(results, "clip"),
        family=family,
        q_star=q_star,
        width=width,
    )


def _window_edges(family: str, q_star: float, sparsities: np.ndarray, shape: Shape | None):
    """(s_fine, edges): the theory window's (lower, upper) edges at the grid sparsities and halfway
    between them (each upper edge is a bifurcation search; ``theory_window`` caches them);
    ``shape``: the user shape named ``family``, if it is one."""
    s_fine = np.sort(np.concatenate([sparsities, (sparsities[1:] + sparsities[:-1]) / 2]))
    windows = [theory_window(family, s, q_star, shape) for s in s_fine]
    return s_fine, np.array([(w.low, w.high) for w in windows]).reshape(-1, 2)


def _outline_window(ax, family: str, q_star: float, sparsities, clips, shape: Shape | None) -> None:
    """Outline the cells whose clip level lies inside the theory window (a grid with one finite
    clip level, where the edges have no scale to be drawn on)."""
    for i, s in enumerate(sparsities):
        window = theory_window(family, s, q_star, shape)
        for j, m in enumerate(clips):
            if window.contains(m):  # False for NaN edges and for m = inf
                ax.add_patch(
                    Rectangle(
                        (j - 0.45, i - 0.45),
                        0.9,
                        0.9,
                        fill=False,
                        color="lime",
                        lw=2,
                        ls="--",
                        label="clip inside the theory window",
                    )
                )


MAX_LABELLED = 12
"""A heat map writes its values in the cells up to this many rows and columns; a finer grid (a
phase diagram at publication resolution) has its colour bar."""

MAX_TICKS = 12
"""A heat-map axis of more values than this (the most that get a number in each cell) labels every
ceil(n / MAX_TICKS)-th tick counted back from the last (the unclipped column), two significant
digits; a row of more than two panels shares this many between its panels' clip axes."""


def _thinned_ticks(values, text, most: int = MAX_TICKS) -> tuple[np.ndarray, list[str]]:
    """Tick positions and labels of a heat-map axis over ``values``, at most ``most`` of them
    (``MAX_TICKS``)."""
    if len(values) <= most:
        return np.arange(len(values)), [text(v) for v in values]
    step = math.ceil(len(values) / most)
    at = range(len(values) - 1, -1, -step)[::-1]  # evenly spaced, ending at the last
    return np.array(at), [text(float(f"{values[i]:.2g}")) for i in at]


def _heat_panel(
    ax, grid, done, sparsities, clips, family, q_star, cmap, notes=None, panels=1, shape=None
):
    """One (sparsity, clip) heat map of values in [0, 1]: each value written in its cell (with its
    ``notes`` text, if any; grids up to ``MAX_LABELLED`` rows and columns), cells not run hatched,
    the theory window's edges over it (families with a window: named, or a user ``shape`` that
    uses m); ``panels``: how many share its row (more than two share ``MAX_TICKS`` clip ticks).
    Returns the mesh (for a colour bar)."""
    written = max(grid.shape) <= MAX_LABELLED
    mesh = ax.pcolormesh(
        np.arange(clips.size + 1) - 0.5,
        np.arange(sparsities.size + 1) - 0.5,
        grid,
        cmap=cmap,
        vmin=0,
        vmax=1,
    )
    for i, j in np.ndindex(grid.shape):
        value = grid[i, j]
        if not done[i, j]:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", color="0.6"))
        elif np.isfinite(value) and written:
            ax.text(
                j,
                i,
                ("1" if value == 1 else f"{value:.2f}".removeprefix("0"))
                + ("" if notes is None else notes[i, j]),
                ha="center",
                va="center",
                fontsize=7.5,
                color="black" if value > 0.55 else "white",
            )
    s_fine, edges = _window_edges(family, q_star, sparsities, shape)
    y = np.interp(s_fine, sparsities, np.arange(sparsities.size))
    if np.isfinite(clips).sum() == 1:  # one clip column: no scale to draw the edges on
        _outline_window(ax, family, q_star, sparsities, clips, shape)
    elif np.isfinite(edges).all() and np.isfinite(clips).sum():
        ax.plot(
            _clip_position(clips, edges[:, 0]),
            y,
            color="deepskyblue",
            lw=2,
            label="theory lower edge",
        )
        ax.plot(
            _clip_position(clips, edges[:, 1]),
            y,
            color="lime",
            lw=2,
            label="theory upper edge",
        )
    most = MAX_TICKS if panels <= 2 else max(MAX_TICKS // (panels - 1), 4)
    ax.set_xticks(*_thinned_ticks(clips, lambda m: f"{m:g}" if math.isfinite(m) else "∞", most))
    ax.set_yticks(*_thinned_ticks(sparsities, lambda s: f"{s:g}"))
    ax.set_xlim(-0.5, clips.size - 0.5)
    ax.set_ylim(-0.5, sparsities.size - 0.5)
    ax.grid(False)
    return mesh


def fig_phase(results: Results, out: Path, stability) -> list[Path]:
    """Heat map of the fraction of networks staying at q* (``stability``: the store's stability
    table), one row per (family, q*) and one column per width, with the theory window's edges
    (gradient lower edge, gp.max_stable_clip upper edge) over it; cells not run are hatched."""
    facets = _facets(results)
    widths = _coords(results, "width")
    clips = np.array(_coords(results, "clip"), float)
    sparsities = np.array(_coords(results, "sparsity"), float)
    fig, axes = plt.subplots(
        len(facets),
        len(widths),
        figsize=(WIDTH_IN, 2.7 * len(facets) + 0.6),
        squeeze=False,
        sharex=True,
        sharey=True,
    )
    for row, (family, q_star) in zip(axes, facets, strict=True):
        for ax, width in zip(row, widths, strict=True):
            grid = phase_grid(stability, results, family, q_star, width)
            done = results.done.sel(family=family, q_star=q_star, width=width)
            done = done.transpose("sparsity", "clip").values
            mesh = _heat_panel(
                ax,
                grid,
                done,
                sparsities,
                clips,
                family,
                q_star,
                "rocket",
                panels=len(widths),
                shape=results.shapes.get(family),
            )
            ax.set_title(f"{family}{_at_q(results, q_star)}, N = {width}")
        row[0].set_ylabel("target sparsity s")
    for ax in axes[-1]:
        ax.set_xlabel("clip level m")
    handles = axes[0, 0].get_legend_handles_labels()[0]
    if results.partial:
        handles.append(Patch(fill=False, hatch="///", color="0.6", label="not run"))
    fig.legend(handles=handles, loc="lower center", ncol=3, bbox_to_anchor=(0.45, -0.03))
    fig.colorbar(
        mesh, ax=axes, label=f"fraction of networks at q* to depth {results.depth}", shrink=0.8
    )
    _suptitle(fig, results, "Phase diagram: where clipping keeps the networks at q*")
    return _save(fig, out, "phase_diagram")


MAX_LAW_GROUPS = 8
"""The width-law figures draw at most this many sparsities (escape_width: per panel; width_law:
(family, sparsity) groups), evenly spread over the store's in order (the tables have them all);
groups without a saddle node (infinite asymptotic law, ReLU) are left out of width_law."""


def _spread(items: list, most: int = MAX_LAW_GROUPS) -> list:
    """At most ``most`` of ``items``, evenly spread, first and last included."""
    picked = np.linspace(0, len(items) - 1, min(len(items), most)).round().astype(int)
    return [items[i] for i in np.unique(picked)]


def fig_escape_width(results: Results, out: Path, law) -> list[Path] | None:
    """Median escape depth (KM, 95% interval) against width, log-log, with the fitted law and the
    1/N theory's onset layer: one panel per (family, q*). ``law``: the store's (points, fits) of
    :func:`analysis.instability.width_law`. A panel where no median was reached within the sweep's
    depth says so (the onset layers are drawn all the same)."""
    points, fits = law
    if points.empty:
        return None
    facets = [
        (f, q)
        for f, q in _facets(results)
        if ((points["family"] == f) & (points["q_star"] == q)).any()
    ]
    every = list(_coords(results, "sparsity"))
    sparsities = _spread(every)
    drawn = (
        f"; {len(sparsities)} of {len(every)} sparsities" if len(sparsities) < len(every) else ""
    )
    palette = dict(zip(sparsities, sns.color_palette("mako_r", len(sparsities)), strict=True))
    fig, axes = plt.subplots(
        1, len(facets), figsize=(WIDTH_IN, 4.6), sharey=True, squeeze=False, layout="constrained"
    )
    fit_by_group = fits.set_index("group")
    x_line = np.geomspace(points["width"].min() / 1.2, points["width"].max() * 1.2, 50)
    for ax, (family, q_star) in zip(axes[0], facets, strict=True):
        for s in sparsities:
            group = points[
                (points["family"] == family)
                & (points["q_star"] == q_star)
                & (points["sparsity"] == s)
            ]
            if group.empty:
                continue
            color = palette[s]
            ax.plot(group["width"], group["onset_layer"], "x--", color=color, lw=0.8, ms=5)
            sel = group[np.isfinite(group["median_escape"])]
            if sel.empty:
                continue
            med = sel["median_escape"].to_numpy(float)
            upper = np.minimum(sel["median_hi"].to_numpy(float), 2 * results.depth)
            err = np.array([med - sel["median_lo"].to_numpy(float), upper - med])
            ax.errorbar(sel["width"], med, yerr=err, fmt="o", color=color, capsize=3, ms=5)
            fit = fit_by_group.loc[sel["group"].iloc[0]]
            if np.isfinite(fit["beta"]):
                ax.plot(
                    x_line,
                    np.exp(fit["intercept"]) * x_line ** fit["beta"],
                    color=color,
                    lw=1.2,
                    label=f"s = {s:.3g}: {fit['beta']:.2f} [{fit['beta_lo']:.2f}, {fit['beta_hi']:.2f}]",
                )
        ax.axhline(results.depth, color="grey", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{family}, unclipped{_at_q(results, q_star)}")
        ax.set_xlabel("width N")
        if not ax.collections:  # no error bars: no median reached
            ax.text(
                0.5,
                0.5,
                f"no median escape depth\nreached by layer {results.depth}",
                transform=ax.transAxes,
                ha="center",
                va="center",
                fontsize="small",
            )
        if not ax.get_legend_handles_labels()[0]:
            continue
        ax.legend(
            fontsize="x-small",
            loc="upper center",
            bbox_to_anchor=(0.5, -0.25),
            ncol=2,
            title=f"exponent $\\beta$ of L = A N$^\\beta$ [95% bootstrap CI]{drawn}",
            title_fontsize="x-small",
        )
    axes[0, 0].set_ylabel("median escape depth (layers)")
    pooled = fits[fits["group"] == "pooled"].iloc[0]
    handles = [
        Line2D([], [], color="grey", marker="o", ls="none", label="MC median, 95% KM interval"),
        Line2D(
            [], [], color="grey", marker="x", ls="--", lw=0.8, label="1/N theory onset $l_{pt}(N)$"
        ),
        Line2D([], [], color="grey", ls=":", lw=1, label="sweep depth (censoring)"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=3)
    headline = (
        f"pooled $\\beta$ = {pooled['beta']:.2f} [{pooled['beta_lo']:.2f}, {pooled['beta_hi']:.2f}]"
        if np.isfinite(pooled["beta"])
        else "no fit (a median at two widths at least is needed)"
    )
    _suptitle(
        fig,
        results,
        f"Width law of the escape depth at the EoC: {headline}; theory onset: "
        f"$\\beta$ = {pooled['beta_theory']:.2f}",
    )
    return _save(fig, out, "escape_width")


def fig_width_law(results: Results, out: Path, law) -> list[Path] | None:
    """The width law in its asymptotic regime (:mod:`analysis.width_law`). Left: the local exponent
    d ln T / d ln N between adjacent widths (MC mean escape depth, +-1 standard error) against N,
    the asymptotic 1/3 and the diffusion theory's local exponent (lines). Right: the mean escape
    depth T against N (MC, +-1 se), the asymptotic law C kappa^{-2/3} (D/N)^{-1/3} (solid) and the
    diffusion theory (dashed). ``law``: (cells, local exponents) of the store."""
    table, local = law
    if table.empty or local.empty:
        return None
    has_law = table.groupby("group", sort=False)["asymptotic"].agg(lambda t: np.isfinite(t).all())
    every = [g for g in dict.fromkeys(table["group"]) if has_law[g]]
    if not every:
        return None
    groups = _spread(every)
    palette = dict(zip(groups, sns.color_palette("tab10", len(groups)), strict=True))
    fig, (ax_beta, ax_t) = plt.subplots(1, 2, figsize=(WIDTH_IN * 1.25, 4.4), layout="constrained")
    offsets = dict(zip(groups, np.linspace(-0.04, 0.04, len(groups)), strict=True))
    n_fine = np.geomspace(table["width"].min(), table["width"].max(), 60)
    for group in groups:
        color, mc = palette[group], local[local["group"] == group]
        cells = table[table["group"] == group].sort_values("width")
        label = group.replace(" q_star=1.0", "").replace("family=", "").replace("sparsity=", "s = ")
        label = re.sub(r"\d+\.\d+", lambda x: f"{float(x.group()):.3g}", label)
        points = {"fmt": "o", "color": color, "capsize": 3, "ms": 5, "label": label}
        ax_beta.errorbar(
            mc["width_mid"] * 10 ** offsets[group], mc["beta_local"], yerr=mc["beta_se"], **points
        )
        ax_beta.plot(mc["width_mid"], mc["beta_diffusion"], color=color, lw=1.2, ls="--")
        ax_t.errorbar(cells["width"], cells["mean_escape"], yerr=cells["mean_se"], **points)
        ax_t.plot(cells["width"], cells["diffusion"], color=color, lw=1.2, ls="--")
        prefactor = cells["asymptotic"].iloc[-1] / cells["width"].iloc[-1] ** (1 / 3)
        ax_t.plot(n_fine, prefactor * n_fine ** (1 / 3), color=color, lw=1.0)
    ax_beta.axhline(1 / 3, color="black", lw=1.2, label="asymptotic 1/3")
    ax_beta.plot([], [], color="grey", lw=1.2, ls="--", label="diffusion theory (finite N)")
    ax_beta.set_xscale("log")
    mids = np.unique(local["width_mid"].round())  # ticks at the midpoints (log-axis minor labels
    ax_beta.set_xticks(mids, [f"{m:.0f}" for m in mids])  # overlap within a decade)
    ax_beta.xaxis.set_minor_formatter(NullFormatter())
    ax_beta.set_xlabel("width N (geometric mean of the two widths)")
    ax_beta.set_ylabel("local exponent d ln T / d ln N")
    ax_beta.set_title("Local exponent of the mean escape depth", fontsize="medium")
    ax_beta.legend(fontsize="x-small", loc="lower right")
    ax_t.set_xscale("log")
    ax_t.set_yscale("log")
    ax_t.set_xlabel("width N")
    ax_t.set_ylabel("mean escape depth T (layers)")
    ax_t.set_title("Mean escape depth against width", fontsize="medium")
    handles = [
        Line2D([], [], color="grey", marker="o", ls="none", label="Monte Carlo (+-1 se)"),
        Line2D([], [], color="grey", lw=1.0, label=r"asymptotic law $C\kappa^{-2/3}(D/N)^{-1/3}$"),
        Line2D([], [], color="grey", lw=1.2, ls="--", label="diffusion theory (finite N)"),
    ]
    ax_t.legend(handles=handles, fontsize="x-small", loc="upper left")
    _suptitle(
        fig,
        results,
        f"Width law of the escape depth (unclipped, escapes on {results.observable}, "
        f"{int(table['n_nets'].median())} networks per width"
        + (f"; {len(groups)} of {len(every)} groups" if len(groups) < len(every) else "")
        + ")",
    )
    return _save(fig, out, "width_law")


def fig_survival(results: Results, out: Path) -> list[Path] | None:
    """Kaplan-Meier survival (not yet escaped) over depth for the unclipped cells, one row per
    (family, q*) and one column per width."""
    if not np.isinf(np.array(_coords(results, "clip"), float)).any():
        return None
    facets = _facets(results)
    widths = _coords(results, "width")
    every = list(_coords(results, "sparsity"))
    sparsities = _spread(every)
    palette = dict(zip(sparsities, sns.color_palette("mako_r", len(sparsities)), strict=True))
    many = len(widths) > 3  # narrow panels: the width alone in their titles, 2 inches each
    fig, axes = plt.subplots(
        len(facets),
        len(widths),
        figsize=(max(WIDTH_IN, 2.0 * len(widths)), 2.5 * len(facets) + 0.5),
        sharex=True,
        sharey=True,
        squeeze=False,
    )
    layers = np.arange(results.depth + 1)
    for row, (family, q_star) in zip(axes, facets, strict=True):
        for ax, width in zip(row, widths, strict=True):
            where = {"family": family, "q_star": q_star, "clip": math.inf, "width": width}
            for cell in results.cells(ESCAPES, **where):
                if cell.key["sparsity"] not in palette:
                    continue
                curve = kaplan_meier(*escape_times(cell, results.depth))
                color = palette[cell.key["sparsity"]]
                ax.step(
                    layers,
                    survival_at(curve, layers),
                    where="post",
                    color=color,
                    label=f"s = {cell.key['sparsity']:.3g}",
                )
                ax.fill_between(
                    layers,
                    survival_at(curve, layers, "lower"),
                    survival_at(curve, layers, "upper"),
                    step="post",
                    color=color,
                    alpha=0.15,
                    lw=0,
                )
            facet = f"{family}, unclipped{_at_q(results, q_star)}"
            ax.set_title(f"N = {width:g}" if many else f"{facet}, N = {width}")
            ax.set_xscale("symlog", linthresh=10)
        row[0].set_ylabel(f"{facet}\nfraction not escaped" if many else "fraction not escaped")
    for ax in axes[-1]:
        ax.set_xlabel("layer l")
    if axes[0, -1].get_legend_handles_labels()[0]:
        axes[0, -1].legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    drawn = (
        f"; {len(sparsities)} of {len(every)} sparsities" if len(sparsities) < len(every) else ""
    )
    _suptitle(
        fig, results, f"Kaplan-Meier survival of unclipped networks (95% log-log bands{drawn})"
    )
    fig.tight_layout()
    return _save(fig, out, "survival")


# -- off the Edge of Chaos ----------------------------------------------------------------------


def fig_sigma(results: Results, out: Path, table) -> list[Path] | None:
    """(sigma_w^2, sigma_b^2) plane per activation (at most four): theory ln chi_1 at the attracting
    fixed point (colour), chi_1 = 1 (black), V'(q) contours (grey), the region where the variance
    diverges (light grey), MC ln mean tangent gain (dots, same colours; x where every network
    escaped). ``table``: the store's :func:`analysis.phase.sigma_mc`."""
    if table.empty:
        return None
    acts = table.drop_duplicates(["family", "tau", "clip"]).head(4)
    sw = np.array(_coords(results, "sigma_w2"), float)
    sb = np.array(_coords(results, "sigma_b2"), float)
    w_fine = np.linspace(sw.min(), sw.max(), 90)
    b_fine = np.linspace(sb.min(), sb.max(), 70)
    W, B = np.meshgrid(w_fine, b_fine)
    fig, axes = plt.subplots(
        1, len(acts), figsize=(WIDTH_IN, 4.2), squeeze=False, sharey=True, layout="constrained"
    )
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-1.0, vmax=1.0)
    for ax, (_, spec) in zip(axes[0], acts.iterrows(), strict=True):
        act = results.activation({d: spec[d] for d in results.param_dims})
        theory = gp.variance_attractor(act, W, B, results.q0(None))
        log_chi = np.log(theory["chi1"])
        mesh = ax.pcolormesh(
            W, B, np.clip(log_chi, -1, 1), cmap="coolwarm", norm=norm, shading="auto"
        )
        ax.contour(W, B, log_chi, levels=[0.0], colors="black", linewidths=1.5)
        lines = ax.contour(
            W, B, theory["v_slope"], levels=[0.25, 0.5, 0.75, 0.9], colors="dimgrey", linewidths=0.7
        )
        ax.clabel(lines, fontsize=6, fmt="V'=%.2g")
        diverges = ~np.isfinite(theory["q_inf"])
        if diverges.any():
            ax.contourf(W, B, diverges.astype(float), levels=[0.5, 1.5], colors=["0.85"])
        sel = table[
            (table["family"] == spec["family"])
            & (table["tau"] == spec["tau"])
            & (table["clip"] == spec["clip"])
        ]
        measured = np.isfinite(sel["log_mean_gain"])
        ax.scatter(
            sel.loc[~measured, "sigma_w2"],
            sel.loc[~measured, "sigma_b2"],
            marker="x",
            color="black",
            s=30,
            zorder=3,
            clip_on=False,
        )
        sel = sel[measured]
        ax.scatter(
            sel["sigma_w2"],
            sel["sigma_b2"],
            c=np.clip(sel["log_mean_gain"], -1, 1),
            cmap="coolwarm",
            norm=norm,
            edgecolors="black",
            s=40,
            zorder=3,
            clip_on=False,
        )
        clip = f"m = {spec['clip']:g}" if math.isfinite(spec["clip"]) else "unclipped"
        ax.set_title(f"{spec['family']}, tau = {spec['tau']:g}, {clip}", fontsize="small")
        ax.set_xlabel(r"$\sigma_w^2$")
        ax.text(0.03, 0.95, "ordered\n$\\chi_1 < 1$", transform=ax.transAxes, va="top", fontsize=7)
        ax.text(
            0.97,
            0.95,
            "chaotic\n$\\chi_1 > 1$",
            transform=ax.transAxes,
            va="top",
            ha="right",
            fontsize=7,
        )
    axes[0, 0].set_ylabel(r"$\sigma_b^2$")
    fig.colorbar(mesh, ax=axes, label=r"$\ln\chi_1$ (dots: MC, ln mean tangent gain)", shrink=0.9)
    _suptitle(
        fig,
        results,
        r"Off the EoC: $\ln\chi_1$ at the attracting fixed point, black line $\chi_1 = 1$,"
        "\n"
        r"grey lines: $V'(q)$ there; light grey: variance diverges; x: all networks escaped",
        fontsize="medium",
    )
    return _save(fig, out, "sigma_phase")


# -- training sweeps ----------------------------------------------------------------------------

WINDOW_COLORS = {
    "inside": "tab:green",
    "below": "tab:blue",
    "above": "tab:orange",
    "unclipped": "tab:red",
    "none": "tab:grey",
}
"""Colour of a configuration by where its clip level lies against the theory window."""

WINDOW_LABELS = {
    "inside": "clipped, inside the theory window",
    "below": "clipped, below the window",
    "above": "clipped, above the window",
    "unclipped": "unclipped",
    "none": "shape without a clip level (no window)",
}

FAMILY_MARKERS = ("o", "s", "^", "D", "v", "P")

SETTING_NAMES = {"q_star": "q*", "width": "N", "depth": "L", "lr": "lr"}
"""How a figure names the axes of a training setting."""


def _settings(tr: TrainingResults) -> list[dict]:
    """Every (q*, width, depth, lr) of the store: one set of training figures each."""
    dims = tuple(SETTING_NAMES)
    return [
        dict(zip(dims, values, strict=True))
        for values in itertools.product(*(tr.coords(d) for d in dims))
    ]


def _setting_label(setting: dict) -> str:
    """``q* = 1, N = 300, L = 100, lr = 0.001``."""
    return ", ".join(f"{SETTING_NAMES[d]} = {v:g}" for d, v in setting.items())


def _setting_suffix(tr: TrainingResults, setting: dict) -> str:
    """File-name suffix naming the setting's values along the axes with several (``_L100_lr0.001``)."""
    short = {"q_star": "q", "width": "N", "depth": "L", "lr": "lr"}
    return "".join(f"_{short[d]}{v:g}" for d, v in setting.items() if tr.ds.sizes[d] > 1)


def _clip_colors(clips) -> dict:
    """A colour per clip level: finite ones from a sequential palette, unclipped black."""
    finite = [m for m in clips if math.isfinite(m)]
    colors = dict(zip(finite, sns.color_palette("flare", len(finite)), strict=True))
    return colors | {m: "black" for m in clips if not math.isfinite(m)}


def _clip_label(m: float) -> str:
    return f"m = {m:g}" if math.isfinite(m) else "unclipped"


def fig_training_phase(tr: TrainingResults, out: Path, tables: TrainingTables) -> list[Path] | None:
    """Mean final test accuracy over (sparsity, clip), one row per (family, q*, width, depth, lr),
    with the theory window's edges; beside it, with an init store, the Monte Carlo fraction of
    networks at q* for the same family, q* and width. A dagger marks a cell with a diverged run;
    cells with no finished run are hatched. Sweeps over sparsity only (None otherwise)."""
    if tr.threshold != "sparsity":
        return None
    init = tables.init
    sparsities = np.array(tr.coords("sparsity"), float)
    clips = np.array(tr.coords("clip"), float)
    facets = [{"family": f, **s} for f in tr.coords("family") for s in _settings(tr)]
    fig, axes = plt.subplots(
        len(facets),
        2 if init else 1,
        figsize=(WIDTH_IN if init else WIDTH_IN * 0.6, 2.6 * len(facets) + 1.2),
        squeeze=False,
        layout="constrained",
    )
    done_any = tr.done.any("run_seed")
    meshes = {}
    for row, facet in zip(axes, facets, strict=True):
        family, q_star = facet["family"], facet["q_star"]
        grid = table_grid(tables.accuracy, "test_acc", sparsities, clips, **facet)
        diverged = table_grid(tables.accuracy, "n_diverged", sparsities, clips, **facet)
        notes = np.where(diverged > 0, "†", "")
        done = done_any.sel(facet).transpose("sparsity", "clip").values
        meshes["acc"] = _heat_panel(
            row[0],
            grid,
            done,
            sparsities,
            clips,
            family,
            q_star,
            "mako",
            notes,
            shape=tr.shapes.get(family),
        )
        setting = {k: v for k, v in facet.items() if k != "family"}
        row[0].set_title(f"{family}, {_setting_label(setting)}", fontsize="small")
        row[0].set_ylabel("target sparsity s")
        if init is not None:
            meshes["mc"] = _mc_panel(
                row[1], init, tables.init_tables.stability, family, q_star, facet
            )
    for ax in axes[-1]:
        ax.set_xlabel("clip level m")
    fig.colorbar(meshes["acc"], ax=axes[:, 0], label="final test accuracy, mean over seeds")
    if meshes.get("mc") is not None:
        fig.colorbar(
            meshes["mc"],
            ax=axes[:, 1],
            label=f"MC fraction of networks at q* to depth {init.depth}",
        )
    drawn = dict(  # the window's edges or outlines, once each
        (label, handle)
        for ax in axes.flat
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True)
    )
    handles = [
        *drawn.values(),
        Line2D([], [], ls="none", marker="$†$", color="black", label="a run diverged"),
        Patch(fill=False, hatch="///", color="0.6", label="not run"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize="small")
    title = "Final test accuracy over (sparsity, clip)"
    if init is not None:
        title += " beside the Monte Carlo's fraction of networks staying at q*"
    _suptitle(fig, tr, title, fontsize="medium")
    return _save(fig, out, "training_phase")


def _mc_panel(ax, init: Results, stability, family: str, q_star: float, facet: dict):
    """The Monte Carlo phase panel of ``init`` at (family, q*, width); a note where it has none."""
    width = facet["width"]
    have = "sparsity" in init.ds.dims and all(
        value in _coords(init, dim)
        for dim, value in (("family", family), ("q_star", q_star), ("width", width))
    )
    if not have:
        ax.text(
            0.5,
            0.5,
            f"no Monte Carlo cell of {family}\nat q* = {q_star:g}, N = {width}\nin the init store",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
        ax.set_axis_off()
        return None
    sparsities = np.array(_coords(init, "sparsity"), float)
    clips = np.array(_coords(init, "clip"), float)
    grid = phase_grid(stability, init, family, q_star, width)
    done = init.done.sel(family=family, q_star=q_star, width=width)
    mesh = _heat_panel(
        ax,
        grid,
        done.transpose("sparsity", "clip").values,
        sparsities,
        clips,
        family,
        q_star,
        "rocket",
        shape=init.shapes.get(family),
    )
    ax.set_title(f"Monte Carlo: {family}, q* = {q_star:g}, N = {width}", fontsize="small")
    return mesh


def _diverged_marks(ax, tr: TrainingResults, key: dict, color) -> None:
    """An x at (diverged_epoch, test accuracy there) for each finished run at ``key`` that
    diverged."""
    runs = tr.ds.sel(key)
    stopped = (runs["diverged"] & tr.done.sel(key)).values
    epochs = runs["diverged_epoch"].values[stopped]
    acc = runs["test_acc"].values[stopped, epochs] if stopped.any() else []
    ax.plot(epochs, acc, "x", color=color, ms=7, mew=1.8)


def _training_grid(tr: TrainingResults, panels: int, title: str):
    """Figure with one row per threshold value and ``panels`` columns per family."""
    rows, families = tr.coords(tr.threshold), tr.coords("family")
    fig, axes = plt.subplots(
        len(rows),
        panels * len(families),
        figsize=(WIDTH_IN * 1.3, 2.4 * len(rows) + 1.2),
        squeeze=False,
        layout="constrained",
    )
    _suptitle(fig, tr, title, fontsize="medium")
    return fig, axes, rows, families


def fig_training_curves(tr: TrainingResults, out: Path, tables: TrainingTables) -> list[Path]:
    """Test accuracy (mean over seeds, band min-max; train accuracy dotted) and test loss against
    epoch, one figure per (q*, width, depth, lr): a row per threshold, two panels per family, a
    line per clip level; an x where a run diverged."""
    written = []
    colors = _clip_colors(tr.coords("clip"))
    epochs = tr.ds["epoch"].values
    seeds = tr.ds.sizes["run_seed"]
    for setting in _settings(tr):
        fig, axes, rows, families = _training_grid(
            tr,
            2,
            f"Training curves, {_setting_label(setting)}; mean over {seeds} seed(s)",
        )
        for i, t in enumerate(rows):
            for k, family in enumerate(families):
                ax_acc, ax_loss = axes[i, 2 * k], axes[i, 2 * k + 1]
                for m, color in colors.items():
                    key = {**setting, "family": family, tr.threshold: t, "clip": m}
                    if not tr.done.sel(key).any():
                        continue
                    c = tables.curves.sel(key)
                    ax_acc.plot(epochs, c["test_acc"], color=color, lw=1.5)
                    ax_acc.fill_between(
                        epochs, c["test_acc_min"], c["test_acc_max"], color=color, alpha=0.15, lw=0
                    )
                    ax_acc.plot(epochs, c["train_acc"], color=color, lw=1, ls=":")
                    _diverged_marks(ax_acc, tr, key, color)
                    ax_loss.plot(epochs, c["test_loss"], color=color, lw=1.5)
                name = f"{family}, {tr.threshold} = {t:g}"
                ax_acc.set_title(f"{name}: accuracy", fontsize="small")
                ax_loss.set_title(f"{name}: loss", fontsize="small")
                ax_acc.set_ylim(0, 1)
                ax_loss.set_yscale("log")
                ax_loss.yaxis.set_major_formatter(LogFormatter())  # plain numbers, not 2x10^0
                ax_loss.yaxis.set_minor_formatter(LogFormatter(minor_thresholds=(1, 0.4)))
            axes[i, 0].set_ylabel("accuracy (fraction correct)")
            axes[i, 1].set_ylabel("test loss (nats)")
        for ax in axes[-1]:
            ax.set_xlabel("epoch")
        for ax in axes.flat:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        handles = [Line2D([], [], color=c, lw=1.5, label=_clip_label(m)) for m, c in colors.items()]
        handles += [
            Line2D([], [], color="grey", lw=1.5, label="test (band: min-max over seeds)"),
            Line2D([], [], color="grey", lw=1, ls=":", label="train"),
            Line2D([], [], color="grey", ls="none", marker="x", mew=1.8, label="run diverged"),
        ]
        fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize="small")
        written += _save(fig, out, "training_curves" + _setting_suffix(tr, setting))
    return written


def fig_training_sparsity(tr: TrainingResults, out: Path, tables: TrainingTables) -> list[Path]:
    """Hidden sparsity on the test probe against its target, one figure per (q*, width, depth,
    lr): per family, the mean over layers against epoch (band: smallest to largest layer) and the
    profile over layers at initialisation (dotted) and after the last epoch (solid); a line per
    clip level, runs that diverged left out."""
    written = []
    colors = _clip_colors(tr.coords("clip"))
    epochs = tr.ds["epoch"].values
    for setting in _settings(tr):
        fig, axes, rows, families = _training_grid(
            tr,
            2,
            f"Hidden sparsity through training against the target (dashed), test probe, "
            f"{_setting_label(setting)}",
        )
        layers = np.arange(1, setting["depth"] + 1)
        for i, t in enumerate(rows):
            for k, family in enumerate(families):
                ax_epoch, ax_layer = axes[i, 2 * k], axes[i, 2 * k + 1]
                for m, color in colors.items():
                    key = {**setting, "family": family, tr.threshold: t, "clip": m}
                    c = tables.curves.sel(key)
                    if not np.isfinite(c["sparsity_mean"]).any():
                        continue
                    ax_epoch.plot(epochs, c["sparsity_mean"], color=color, lw=1.5)
                    ax_epoch.fill_between(
                        epochs, c["sparsity_min"], c["sparsity_max"], color=color, alpha=0.15, lw=0
                    )
                    profile = c["profile"].sel(layer=layers)
                    ax_layer.plot(layers, profile.isel(epoch=0), color=color, lw=1, ls=":")
                    ax_layer.plot(layers, profile.isel(epoch=-1), color=color, lw=1.5)
                    target = float(tr.ds["gp_sparsity"].sel({d: key[d] for d in tr.param_dims}))
                    for ax in (ax_epoch, ax_layer):
                        ax.axhline(target, color=color, ls="--", lw=0.8)
                name = f"{family}, {tr.threshold} = {t:g}"
                ax_epoch.set_title(f"{name}: mean over layers", fontsize="small")
                ax_layer.set_title(f"{name}: per layer", fontsize="small")
                ax_epoch.set_xlabel("epoch")
                ax_layer.set_xlabel("hidden layer l")
                for ax in (ax_epoch, ax_layer):
                    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            axes[i, 0].set_ylabel("fraction of zeros")
        handles = [Line2D([], [], color=c, lw=1.5, label=_clip_label(m)) for m, c in colors.items()]
        handles += [
            Line2D([], [], color="grey", ls="--", lw=0.8, label="target (GP sparsity at q*)"),
            Patch(color="grey", alpha=0.3, label="smallest to largest layer"),
            Line2D([], [], color="grey", lw=1, ls=":", label="at initialisation"),
            Line2D([], [], color="grey", lw=1.5, label="after the last epoch"),
        ]
        fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize="small")
        written += _save(fig, out, "training_sparsity" + _setting_suffix(tr, setting))
    return written


LINK_AXES = {
    "v_slope": "V'(q*) (slope of V at q*)",
    "mc_frac_escaped": "MC fraction escaped by layer L",
    "mc_frac_stay": "MC fraction at q* to depth {depth}",
    "gp_corr_gap": "GP input signal 1 - c^L (from c^0 = 1/2)",
}
"""The link figure's panels: column of the link table -> x-axis label (``depth``: the init
store's)."""

LOG_LINK_AXES = ("gp_corr_gap",)
"""Link panels drawn on a log axis when their values span more than a decade (Spearman's rho is
rank-based)."""


def fig_training_link(tr: TrainingResults, out: Path, tables: TrainingTables) -> list[Path] | None:
    """Final test accuracy (mean ± sd over seeds) of every configuration against each
    initialisation statistic of the link table that it has (V'(q*); with an init store the Monte
    Carlo escape fraction within depth L and fraction at q*); colour: where the clip level lies
    against the theory window; marker: family. Each panel's title gives Spearman's rho over all
    configurations."""
    link = tables.link
    if link.empty:
        return None
    panels = [c for c in LINK_AXES if c in link and np.isfinite(link[c]).any()]
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(WIDTH_IN * len(panels) / 2.4 + 1.2, 4.2),
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    markers = dict(zip(tr.coords("family"), itertools.cycle(FAMILY_MARKERS)))
    rho = pooled(tables.correlations)
    for ax, column in zip(axes[0], panels, strict=True):
        for (window, family), group in link.groupby(["window", "family"], sort=False):
            ax.errorbar(
                group[column],
                group["test_acc"],
                yerr=group["test_acc_sd"],
                fmt=markers[family],
                color=WINDOW_COLORS[window],
                ms=6,
                capsize=2,
                alpha=0.85,
            )
        row = rho[rho["predictor"] == PREDICTORS[column]]
        stat = (
            f"Spearman rho = {row['rho'].iloc[0]:.2f} (p = {row['p_value'].iloc[0]:.2g}, "
            f"n = {row['n'].iloc[0]})"
            if len(row) and np.isfinite(row["rho"].iloc[0])
            else "Spearman rho undefined"
        )
        ax.set_title(stat, fontsize="small")
        ax.set_xlabel(LINK_AXES[column].format(depth=getattr(tables.init, "depth", "")))
        values = link[column]
        if column in LOG_LINK_AXES:
            if (values > 0).all() and values.max() > 10 * values.min():
                ax.set_xscale("log")
            else:  # a narrow range of tiny values (1 - c^L ~ 1e-4): few, long tick labels
                ax.xaxis.set_major_locator(MaxNLocator(4))
    axes[0, 0].set_ylabel("final test accuracy (mean ± sd over seeds)")
    handles = [
        Line2D([], [], color=WINDOW_COLORS[w], marker="o", ls="none", label=WINDOW_LABELS[w])
        for w in WINDOW_COLORS
        if (link["window"] == w).any()
    ] + [
        Line2D([], [], color="grey", marker=mk, ls="none", label=family)
        for family, mk in markers.items()
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize="small")
    _suptitle(
        fig,
        tr,
        "Initialisation statistics against final test accuracy, one point per configuration",
        fontsize="medium",
    )
    return _save(fig, out, "training_link")


def _draw_training(tr: TrainingResults, out: Path, tables: TrainingTables) -> list[Path]:
    written = fig_training_phase(tr, out, tables) or []
    written += fig_training_curves(tr, out, tables)
    written += fig_training_sparsity(tr, out, tables)
    written += fig_training_link(tr, out, tables) or []
    return written


# -- all of them ----------------------------------------------------------------------------------


def make_figures(
    results: Results | TrainingResults, out: Path, tables: Tables | TrainingTables | None = None
) -> list[Path]:
    """Draw every figure the store supports into ``out``; returns the files written. ``tables``:
    the store's tables when already computed (the report passes its own; for a training store,
    with the init store of the link)."""
    _style()
    if isinstance(results, TrainingResults):
        tables = TrainingTables(results) if tables is None else tables
        with np.errstate(invalid="ignore"):
            return _draw_training(results, out, tables)
    tables = Tables(results) if tables is None else tables
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # chi_1 = 0, far tails
        return _draw_all(results, out, tables)


def _draw_all(results: Results, out: Path, tables: Tables) -> list[Path]:
    written: list[Path] = []
    if not results.eoc:
        written += fig_sigma(results, out, tables.sigma) or []
        return written
    if "sparsity" not in results.ds.dims:
        return written
    written += fig_variance_maps(results, out)
    if results.per_layer:
        written += fig_trajectories(results, out, tables.prepared)
        for family, q_star in _facets(results):
            written += fig_zero_corr(results, out, family, q_star, tables.prepared) or []
        written += fig_correlation_map(results, out) or []
    written += fig_phase(results, out, tables.stability)
    written += fig_escape_width(results, out, tables.width_law) or []
    written += fig_survival(results, out) or []
    if applies(results):
        written += fig_width_law(results, out, tables.asymptotic_width_law) or []
    return written


def default_out(store: Path) -> Path:
    """``figures/`` next to the store."""
    return Path(store).resolve().parent / "figures"


def main(argv: list[str] | None = None) -> int:
    parser = Parser(
        prog="python -m analysis.figures", description="Draw the figures of a results store."
    )
    parser.add_argument("results", help="results store (.zarr directory or .nc file)")
    parser.add_argument(
        "--out", type=Path, help="output folder (default: figures/ next to the store)"
    )
    parser.add_argument(
        "--init", help="training store only: the Monte Carlo store of the same activations"
    )
    add_n_jobs(parser)
    args = parser.parse_args(argv)
    out = writable_dir(args.out or default_out(args.results))
    results, tables = open_stores(args.results, args.init)
    written = make_figures(
        results, out, tables if tables is not None else Tables(results, n_jobs=args.n_jobs)
    )
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    run_cli(main)
