"""``python -m analysis.figures RESULTS [--out DIR]``: the figures of a results store, PNG and PDF.

Default output: a ``figures/`` folder next to the store. Figures (those that need what the store
lacks are skipped); on an Edge-of-Chaos store every panel row is one (family, q*) facet, so a sweep
over several q* gets one row per q*, never an average over them:

- ``variance_maps``: V(q)/q against the identity (= 1) for the store's activations (every sparsity
  at the largest clip level, every clip level at one sparsity), fixed points marked (theory only);
- ``trajectories``: q^l through depth, Monte Carlo median and 10-90% band per width against the GP
  iterate and the 1/N-corrected mean, unclipped beside clipped;
- ``phase_diagram``: sparsity x clip, colour = fraction of networks staying at q* to full depth,
  with the theory window's edges drawn over it (named families only);
- ``escape_width``: median escape depth against width (log-log), the fitted law and the onset
  layer of the 1/N theory; ``survival``: Kaplan-Meier curves of the unclipped cells;
- ``zero_frac_corr_<family>[_q<q*>]``: zero fraction and 1 - correlation through depth against theory;
- ``sigma_phase``: for an off-EoC sweep, the (sigma_w^2, sigma_b^2) plane with the chi_1 = 1 line,
  ordered and chaotic regions, V'(q) at the attracting fixed point and the measured gains.

Panels are named by the store's ``family`` label (a named family or a user shape's name) and the
cell's parameters. On a partial store (an interrupted sweep) every Monte Carlo figure says so in
its title, and the phase diagram hatches the cells not run.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.colors import TwoSlopeNorm
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from simulate import gp
from simulate.activations import Activation

from ._cli import Parser, run_cli, writable_dir
from ._store import Cell, Results, open_results
from .instability import escape_times, theory_window
from .phase import sigma_theory
from .survival import kaplan_meier, survival_at
from .tables import Tables
from .theory import cell_theory

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
    low, high = theory_window(family, sparsity, q_star)
    finite = [m for m in _coords(results, "clip") if math.isfinite(m)]
    inside = finite if math.isnan(low) else [m for m in finite if low <= m <= high]
    if not inside:
        return None
    return min(inside, key=lambda m: abs(math.log(m / math.sqrt(q_star))))


def _filled_q(cell: Cell) -> np.ndarray:
    """q (net, layer), input 0, with the layers after an escape set to +inf (escaped up) or 0."""
    q = cell.data["q"].isel(input=0).transpose("net", "layer").values.astype(float)
    for net, layer in enumerate(cell.data["escape_layer"].values):
        if layer >= 0:
            up = np.nanmax(cell.data["q"].isel(net=net, layer=layer).values) > cell.q_ref
            q[net, layer + 1 :] = np.inf if up else 0.0
    return q


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


def fig_trajectories(results: Results, out: Path) -> list[Path]:
    """q^l: MC median and 10-90% band per width vs the GP iterate and the 1/N mean."""
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
                theory = cell_theory(cell, results.depth)
                layers = theory["layer"].values
                color = colors[cell.width]
                _band(ax, layers, _filled_q(cell), color, f"N = {cell.width}")
                ax.plot(layers, theory["q_mean"], color=color, ls="--", lw=1)
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
            ax.set_ylabel(r"$q^l$ (mean square pre-activation)")
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


def _survivors(cell: Cell, values) -> np.ndarray:
    """(net, layer) values, NaN at the layers where fewer than ``MIN_SURVIVORS`` of the networks
    are left (their mean would describe a few stragglers)."""
    values = values.transpose("net", "layer").values.astype(float)
    alive = np.isfinite(values).mean(axis=0) >= MIN_SURVIVORS
    return np.where(alive, values, np.nan)


def fig_zero_corr(results: Results, out: Path, family: str, q_star: float) -> list[Path] | None:
    """Zero fraction and 1 - corr through depth (MC mean, 10-90% band) against theory, for one
    (family, q*); None when none of its example cells is finished."""
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
            theory = cell_theory(cell, results.depth, results.c0)
            layers = theory["layer"].values
            color = colors[cell.width]
            zf = _survivors(cell, cell.data["zero_frac"].mean("input"))
            lo, hi = _band(axes[0, col], layers, zf, color, f"N = {cell.width}", median=False)
            extent = [min(extent[0], np.nanmin(lo)), max(extent[1], np.nanmax(hi))]
            axes[0, col].plot(layers, theory["zf_mean"], color=color, ls="--", lw=1)
            gap = 1.0 - _survivors(cell, cell.data["corr"])
            _band(axes[1, col], layers, gap, color, f"N = {cell.width}", median=False)
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


def phase_grid(stability, results: Results, family: str, q_star: float, width: int) -> np.ndarray:
    """frac_stay as a (sparsity, clip) array in the store's coordinate order for one facet and
    width; NaN where the cell is not finished."""
    grid = np.full((results.ds.sizes["sparsity"], results.ds.sizes["clip"]), np.nan)
    if stability.empty:
        return grid
    sel = stability[
        (stability["family"] == family)
        & (stability["q_star"] == q_star)
        & (stability["width"] == width)
    ]
    table = sel.set_index(["sparsity", "clip"])["frac_stay"]
    for i, s in enumerate(_coords(results, "sparsity")):
        for j, m in enumerate(_coords(results, "clip")):
            grid[i, j] = table.get((s, m), np.nan)
    return grid


def fig_phase(results: Results, out: Path, stability) -> list[Path]:
    """Heat map of the fraction of networks staying at q* (``stability``: the store's stability
    table), one row per (family, q*) and one column per width, with the theory window's edges
    (gradient lower edge, gp.max_stable_clip upper edge) over it; cells not run are hatched."""
    facets = _facets(results)
    widths = _coords(results, "width")
    clips = np.array(_coords(results, "clip"), float)
    sparsities = np.array(_coords(results, "sparsity"), float)
    # the edges at the simulated sparsities (cached for the tables) and halfway between them: each
    # upper edge is a bifurcation search
    s_fine = np.sort(np.concatenate([sparsities, (sparsities[1:] + sparsities[:-1]) / 2]))
    fig, axes = plt.subplots(
        len(facets),
        len(widths),
        figsize=(WIDTH_IN, 2.7 * len(facets) + 0.6),
        squeeze=False,
        sharex=True,
        sharey=True,
    )
    for row, (family, q_star) in zip(axes, facets, strict=True):
        edges = np.array([theory_window(family, s, q_star) for s in s_fine])
        for ax, width in zip(row, widths, strict=True):
            grid = phase_grid(stability, results, family, q_star, width)
            mesh = ax.pcolormesh(
                np.arange(clips.size + 1) - 0.5,
                np.arange(sparsities.size + 1) - 0.5,
                grid,
                cmap="rocket",
                vmin=0,
                vmax=1,
            )
            done = results.done.sel(family=family, q_star=q_star, width=width)
            done = done.transpose("sparsity", "clip").values
            for i, j in np.ndindex(grid.shape):
                value = grid[i, j]
                if not done[i, j]:
                    ax.add_patch(
                        Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", color="0.6")
                    )
                elif np.isfinite(value):
                    ax.text(
                        j,
                        i,
                        "1" if value == 1 else f"{value:.2f}".removeprefix("0"),
                        ha="center",
                        va="center",
                        fontsize=7.5,
                        color="black" if value > 0.55 else "white",
                    )
            y = np.interp(s_fine, sparsities, np.arange(sparsities.size))
            if np.isfinite(edges).all() and np.isfinite(clips).sum():
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
            ax.set_title(f"{family}{_at_q(results, q_star)}, N = {width}")
            ax.set_xticks(
                np.arange(clips.size), [f"{m:g}" if math.isfinite(m) else "∞" for m in clips]
            )
            ax.set_yticks(np.arange(sparsities.size), [f"{s:g}" for s in sparsities])
            ax.set_xlim(-0.5, clips.size - 0.5)
            ax.set_ylim(-0.5, sparsities.size - 0.5)
            ax.grid(False)
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
    sparsities = _coords(results, "sparsity")
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
                    label=f"s = {s:g}: {fit['beta']:.2f} [{fit['beta_lo']:.2f}, {fit['beta_hi']:.2f}]",
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
            bbox_to_anchor=(0.5, -0.2),
            ncol=2,
            title="exponent $\\beta$ of L = A N$^\\beta$ [95% bootstrap CI]",
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


def fig_survival(results: Results, out: Path) -> list[Path] | None:
    """Kaplan-Meier survival (not yet escaped) over depth for the unclipped cells, one row per
    (family, q*) and one column per width."""
    if not np.isinf(np.array(_coords(results, "clip"), float)).any():
        return None
    facets = _facets(results)
    widths = _coords(results, "width")
    sparsities = _coords(results, "sparsity")
    palette = dict(zip(sparsities, sns.color_palette("mako_r", len(sparsities)), strict=True))
    fig, axes = plt.subplots(
        len(facets),
        len(widths),
        figsize=(WIDTH_IN, 2.5 * len(facets) + 0.5),
        sharex=True,
        sharey=True,
        squeeze=False,
    )
    layers = np.arange(results.depth + 1)
    for row, (family, q_star) in zip(axes, facets, strict=True):
        for ax, width in zip(row, widths, strict=True):
            where = {"family": family, "q_star": q_star, "clip": math.inf, "width": width}
            for cell in results.cells(**where):
                curve = kaplan_meier(*escape_times(cell, results.depth))
                color = palette[cell.key["sparsity"]]
                ax.step(
                    layers,
                    survival_at(curve, layers),
                    where="post",
                    color=color,
                    label=f"s = {cell.key['sparsity']:g}",
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
            ax.set_title(f"{family}, unclipped{_at_q(results, q_star)}, N = {width}")
            ax.set_xscale("symlog", linthresh=10)
        row[0].set_ylabel("fraction not escaped")
    for ax in axes[-1]:
        ax.set_xlabel("layer l")
    if axes[0, -1].get_legend_handles_labels()[0]:
        axes[0, -1].legend(fontsize="x-small", loc="upper right")
    _suptitle(fig, results, "Kaplan-Meier survival of unclipped networks (95% log-log bands)")
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
        theory = sigma_theory(act, W, B, results.q0(None))
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


# -- all of them ----------------------------------------------------------------------------------


def make_figures(results: Results, out: Path, tables: Tables | None = None) -> list[Path]:
    """Draw every figure the store supports into ``out``; returns the files written. ``tables``:
    the store's tables when already computed (the report passes its own)."""
    _style()
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
    written += fig_trajectories(results, out)
    for family, q_star in _facets(results):
        written += fig_zero_corr(results, out, family, q_star) or []
    written += fig_phase(results, out, tables.stability)
    written += fig_escape_width(results, out, tables.width_law) or []
    written += fig_survival(results, out) or []
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
    args = parser.parse_args(argv)
    out = writable_dir(args.out or default_out(args.results))
    results = open_results(args.results)
    written = make_figures(results, out)
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    run_cli(main)
