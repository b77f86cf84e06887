"""``python -m analysis.figures RESULTS [--out DIR]``: the figures of a results store, PNG and PDF.

Default output: a ``figures/`` folder next to the store. Figures (those that need what the store
lacks are skipped):

- ``variance_maps``: V(q)/q against the identity (= 1) for the store's families, sparsities and clip
  levels, fixed points marked (theory only);
- ``trajectories``: q^l through depth, Monte Carlo median and 10-90% band per width against the GP
  iterate and the 1/N-corrected mean, unclipped beside clipped;
- ``phase_diagram``: sparsity x clip, colour = fraction of networks staying at q* to full depth,
  with the theory window's edges drawn over it;
- ``escape_width``: median escape depth against width (log-log), the fitted law and the onset
  layer of the 1/N theory; ``survival``: Kaplan-Meier curves of the unclipped cells;
- ``zero_frac_corr_<family>``: zero fraction and 1 - correlation through depth against theory;
- ``sigma_phase``: for an off-EoC sweep, the (sigma_w^2, sigma_b^2) plane with the chi_1 = 1 line,
  ordered and chaotic regions, V'(q) at the attracting fixed point and the measured gains.
"""

from __future__ import annotations

import argparse
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

from simulate import gp
from simulate.activations import Activation

from ._store import Cell, Results, open_results, run_cli
from .instability import (
    escape_times,
    stability_table,
    theory_window,
    width_law,
)
from .phase import sigma_mc, sigma_theory
from .survival import kaplan_meier, survival_at
from .theory import cell_theory

WIDTH_IN = 8.0
DPI = 120
FAMILY_NAME = {"crelu": ("ReLU", "CReLU"), "cst": ("ST", "CST")}
"""(unclipped, clipped) display names."""


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


def _name(family: str, m: float) -> str:
    return FAMILY_NAME[family][math.isfinite(m)]


def _width_colors(widths) -> dict:
    palette = sns.color_palette("viridis", len(widths) + 1)
    return {w: palette[i] for i, w in enumerate(sorted(widths))}


def _coords(results: Results, dim: str) -> list:
    return [v.item() if hasattr(v, "item") else v for v in results.ds[dim].values]


def _show_sparsity(results: Results) -> float:
    """The sparsity the depth figures show: 0.8 when simulated, else the middle one."""
    values = _coords(results, "sparsity")
    return 0.8 if any(math.isclose(v, 0.8) for v in values) else values[len(values) // 2]


def _show_clip(results: Results, family: str, sparsity: float, q_star: float) -> float | None:
    """The clipped example: the simulated finite m inside the theory window closest to sqrt(q*)."""
    low, high = theory_window(family, sparsity, q_star)
    inside = [m for m in _coords(results, "clip") if math.isfinite(m) and low <= m <= high]
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
    """V(q)/q for each family: unclipped at every sparsity; clipped at one sparsity, every m."""
    families = _coords(results, "family")
    sparsities = _coords(results, "sparsity")
    clips = [m for m in _coords(results, "clip") if math.isfinite(m)]
    q_star = _coords(results, "q_star")[0]
    s_show = _show_sparsity(results)
    q = np.geomspace(q_star / 30, 100 * q_star, 600)
    fig, axes = plt.subplots(
        len(families), 2, figsize=(WIDTH_IN, 3.0 * len(families)), sharex=True, squeeze=False
    )
    markers = {"stable": ("o", "full"), "unstable": ("o", "none"), "marginal": ("D", "full")}
    for row, family in zip(axes, families, strict=True):
        panels = [
            (
                row[0],
                [(s, math.inf) for s in sparsities],
                "sparsity",
                sns.color_palette("mako_r", len(sparsities)),
            ),
            (row[1], [(s_show, m) for m in clips], "m", sns.color_palette("flare", len(clips))),
        ]
        for ax, members, key, palette in panels:
            for (s, m), color in zip(members, palette, strict=True):
                act = Activation.from_sparsity(family, s, q_star, m)
                eoc = gp.edge_of_chaos(act, q_star)
                v = gp.variance_map(act, q, eoc.sigma_w2, eoc.sigma_b2)
                label = f"s = {s:g}" if key == "sparsity" else f"m = {m:g}"
                ax.plot(q, v / q, color=color, lw=1.5, label=label)
                for point in _fixed_points(act, eoc, q_star):
                    marker, fill = markers[point.kind]
                    ax.plot(point.q, 1.0, marker=marker, fillstyle=fill, color=color, ms=6, mew=1.3)
            ax.axhline(1.0, color="black", lw=1, ls="--")
            ax.set_xscale("log")
            ax.set_ylim(0.4, 2.6)
            title = (
                f"{_name(family, math.inf)}$_\\tau$ (unclipped), all sparsities"
                if key == "sparsity"
                else f"{_name(family, 1.0)}$_{{\\tau,m}}$, sparsity {s_show:g}"
            )
            ax.set_title(title)
            ax.set_ylabel("V(q) / q")
            ax.legend(fontsize="small", ncol=2, loc="upper left")
    for ax in axes[-1]:
        ax.set_xlabel(f"pre-activation variance q  (q* = {q_star:g})")
    handles = [
        Line2D([], [], color="grey", marker=mk, fillstyle=fs, ls="none", label=kind)
        for kind, (mk, fs) in markers.items()
    ] + [Line2D([], [], color="black", ls="--", label="identity V(q) = q")]
    fig.legend(handles=handles, loc="lower center", ncol=4, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle("Edge-of-Chaos variance maps against the identity; fixed points marked")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return _save(fig, out, "variance_maps")


def _fixed_points(act: Activation, eoc, q_star: float) -> list:
    """The GP fixed points; for a map with V(q) = q everywhere (ReLU), q* marked marginal."""
    try:
        return gp.fixed_points(act, eoc.sigma_w2, eoc.sigma_b2)
    except ValueError:
        return [gp.FixedPoint(q_star, 1.0, "marginal")]


# -- Monte Carlo through depth ------------------------------------------------------------------


def _example_cells(results: Results, family: str) -> list[Cell | None]:
    """[unclipped, clipped] cells per width at the shown sparsity (None where not simulated)."""
    q_star = _coords(results, "q_star")[0]
    s = _show_sparsity(results)
    m = _show_clip(results, family, s, q_star)
    clips = [math.inf, m]
    cells = []
    for clip in clips:
        if clip is None or clip not in _coords(results, "clip"):
            cells.append([])
            continue
        where = {"family": family, "sparsity": s, "q_star": q_star, "clip": clip}
        cells.append([c for c in results.cells(**where)])
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
    families = _coords(results, "family")
    colors = _width_colors(_coords(results, "width"))
    fig, axes = plt.subplots(
        len(families), 2, figsize=(WIDTH_IN, 3.0 * len(families)), squeeze=False
    )
    for row, family in zip(axes, families, strict=True):
        for ax, cells in zip(row, _example_cells(results, family), strict=True):
            for cell in cells:
                theory = cell_theory(cell, results.depth)
                layers = theory["layer"].values
                color = colors[cell.width]
                _band(ax, layers, _filled_q(cell), color, f"N = {cell.width}")
                ax.plot(layers, theory["q_mean"], color=color, ls="--", lw=1)
            if not cells:
                ax.set_visible(False)
                continue
            ax.plot(layers, theory["q_gp"], color="black", lw=1.2, label="GP iterate")
            cell = cells[0]
            ef = results.escape_factor
            if not cell.act.clipped:
                ax.set_yscale("log")
                ax.set_ylim(cell.q_ref / 2, cell.q_ref * ef * 1.5)
                ax.axhline(cell.q_ref * ef, color="firebrick", lw=0.8, ls=":")
                ax.set_xlim(0, _escape_horizon(cells, results.depth))
            ax.set_title(f"{cell.act.label()}, sparsity {cell.key['sparsity']:g}")
            ax.set_xlabel("layer l")
            ax.set_ylabel(r"$q^l$ (mean square pre-activation)")
            ax.legend(fontsize="small", loc="upper left")
    handles = [
        Line2D([], [], color="grey", lw=1.4, label="MC median (band: 10-90%)"),
        Line2D([], [], color="grey", lw=1, ls="--", label="1/N theory mean q + G1/N"),
        Line2D([], [], color="firebrick", lw=0.8, ls=":", label="escape threshold"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle("Variance through depth: unclipped escapes, clipped stays at q*")
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


def fig_zero_corr(results: Results, out: Path, family: str) -> list[Path]:
    """Zero fraction and 1 - corr through depth (MC mean, 10-90% band) against theory."""
    colors = _width_colors(_coords(results, "width"))
    fig, axes = plt.subplots(2, 2, figsize=(WIDTH_IN, 5.6), sharex="col")
    for col, cells in enumerate(_example_cells(results, family)):
        extent = [1.0, 0.0]
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
        if not cells:
            axes[0, col].set_visible(False)
            axes[1, col].set_visible(False)
            continue
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
        axes[0, col].set_title(f"{act.label()}")
        axes[0, col].set_ylabel("zero fraction")
        axes[1, col].set_ylabel("1 - correlation of two inputs")
        axes[1, col].set_xlabel("layer l")
        for ax in axes[:, col]:
            ax.legend(fontsize="small")
    fig.suptitle(
        f"Zero fraction and input correlation through depth, target sparsity "
        f"{_show_sparsity(results):g}\nMC mean (while >= 25% of networks remain) and 10-90% band; "
        "dashed: 1/N theory; black: GP",
        fontsize="medium",
    )
    fig.tight_layout()
    return _save(fig, out, f"zero_frac_corr_{family}")


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


def fig_phase(results: Results, out: Path) -> list[Path]:
    """Heat map of the fraction of networks staying at q*, per family and width, with the theory
    window edges (gradient lower edge, gp.max_stable_clip upper edge) over it."""
    table = stability_table(results)
    families = _coords(results, "family")
    widths = _coords(results, "width")
    clips = np.array(_coords(results, "clip"), float)
    sparsities = np.array(_coords(results, "sparsity"), float)
    q_star = _coords(results, "q_star")[0]
    s_fine = np.linspace(sparsities.min(), sparsities.max(), 25)
    fig, axes = plt.subplots(
        len(families),
        len(widths),
        figsize=(WIDTH_IN, 2.7 * len(families) + 0.6),
        squeeze=False,
        sharex=True,
        sharey=True,
    )
    for row, family in zip(axes, families, strict=True):
        edges = np.array([theory_window(family, s, q_star) for s in s_fine])
        for ax, width in zip(row, widths, strict=True):
            sel = table[(table["family"] == family) & (table["width"] == width)]
            grid = sel.pivot_table(index="sparsity", columns="clip", values="frac_stay")
            grid = grid.reindex(index=sparsities, columns=clips)
            mesh = ax.pcolormesh(
                np.arange(clips.size + 1) - 0.5,
                np.arange(sparsities.size + 1) - 0.5,
                grid.values,
                cmap="rocket",
                vmin=0,
                vmax=1,
            )
            for i, j in np.ndindex(grid.shape):
                value = grid.values[i, j]
                if np.isfinite(value):
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
            ax.plot(
                _clip_position(clips, edges[:, 0]),
                y,
                color="deepskyblue",
                lw=2,
                label="theory lower edge",
            )
            ax.plot(
                _clip_position(clips, edges[:, 1]), y, color="lime", lw=2, label="theory upper edge"
            )
            ax.set_title(f"{FAMILY_NAME[family][1]}, N = {width}")
            ax.set_xticks(
                np.arange(clips.size), [f"{m:g}" if math.isfinite(m) else "∞" for m in clips]
            )
            ax.set_yticks(np.arange(sparsities.size), [f"{s:g}" for s in sparsities])
            ax.set_xlim(-0.5, clips.size - 0.5)
            ax.set_ylim(-0.5, sparsities.size - 0.5)
            ax.grid(False)
        row[0].set_ylabel("target sparsity s")
    for ax in axes[-1]:
        ax.set_xlabel(f"clip level m  (q* = {q_star:g})")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, bbox_to_anchor=(0.45, -0.03))
    fig.colorbar(
        mesh, ax=axes, label=f"fraction of networks at q* to depth {results.depth}", shrink=0.8
    )
    fig.suptitle("Phase diagram: where clipping keeps the networks at q*")
    return _save(fig, out, "phase_diagram")


def fig_escape_width(results: Results, out: Path) -> list[Path] | None:
    """Median escape depth (KM, 95% interval) against width, log-log, with the fitted law and the
    1/N theory's onset layer."""
    points, fits = width_law(results)
    if points.empty:
        return None
    families = _coords(results, "family")
    sparsities = _coords(results, "sparsity")
    palette = dict(zip(sparsities, sns.color_palette("mako_r", len(sparsities)), strict=True))
    fig, axes = plt.subplots(
        1, len(families), figsize=(WIDTH_IN, 4.6), sharey=True, squeeze=False, layout="constrained"
    )
    fit_by_group = fits.set_index("group")
    x_line = np.geomspace(points["width"].min() / 1.2, points["width"].max() * 1.2, 50)
    for ax, family in zip(axes[0], families, strict=True):
        for s in sparsities:
            sel = points[(points["family"] == family) & (points["sparsity"] == s)]
            sel = sel[np.isfinite(sel["median_escape"])]
            if sel.empty:
                continue
            med = sel["median_escape"].to_numpy(float)
            color = palette[s]
            upper = np.minimum(sel["median_hi"].to_numpy(float), 2 * results.depth)
            err = np.array([med - sel["median_lo"].to_numpy(float), upper - med])
            ax.errorbar(sel["width"], med, yerr=err, fmt="o", color=color, capsize=3, ms=5)
            ax.plot(sel["width"], sel["onset_layer"], "x--", color=color, lw=0.8, ms=5)
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
        ax.set_title(f"{FAMILY_NAME[family][0]}$_\\tau$ at the EoC")
        ax.set_xlabel("width N")
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
    fig.suptitle(
        f"Width law of the escape depth: pooled $\\beta$ = {pooled['beta']:.2f} "
        f"[{pooled['beta_lo']:.2f}, {pooled['beta_hi']:.2f}]; theory onset: "
        f"$\\beta$ = {pooled['beta_theory']:.2f}"
    )
    return _save(fig, out, "escape_width")


def fig_survival(results: Results, out: Path) -> list[Path] | None:
    """Kaplan-Meier survival (not yet escaped) over depth for the unclipped cells."""
    if not np.isinf(np.array(_coords(results, "clip"), float)).any():
        return None
    families = _coords(results, "family")
    widths = _coords(results, "width")
    sparsities = _coords(results, "sparsity")
    palette = dict(zip(sparsities, sns.color_palette("mako_r", len(sparsities)), strict=True))
    fig, axes = plt.subplots(
        len(families),
        len(widths),
        figsize=(WIDTH_IN, 2.5 * len(families) + 0.5),
        sharex=True,
        sharey=True,
        squeeze=False,
    )
    layers = np.arange(results.depth + 1)
    for row, family in zip(axes, families, strict=True):
        for ax, width in zip(row, widths, strict=True):
            for cell in results.cells(family=family, clip=math.inf, width=width):
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
            ax.set_title(f"{FAMILY_NAME[family][0]}$_\\tau$, N = {width}")
            ax.set_xscale("symlog", linthresh=10)
        row[0].set_ylabel("fraction not escaped")
    for ax in axes[-1]:
        ax.set_xlabel("layer l")
    axes[0, -1].legend(fontsize="x-small", loc="upper right")
    fig.suptitle("Kaplan-Meier survival of unclipped networks (95% log-log bands)")
    fig.tight_layout()
    return _save(fig, out, "survival")


# -- off the Edge of Chaos ----------------------------------------------------------------------


def fig_sigma(results: Results, out: Path) -> list[Path] | None:
    """(sigma_w^2, sigma_b^2) plane per activation: theory ln chi_1 at the attracting fixed point
    (colour), chi_1 = 1 (black), V'(q) contours (grey), the region where the variance diverges
    (light grey), MC ln mean tangent gain (dots, same colours; x where every network escaped)."""
    table = sigma_mc(results)
    acts = table.drop_duplicates(["family", "tau", "clip"])[["family", "tau", "clip"]].head(4)
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
        act = Activation(spec["family"], spec["tau"], spec["clip"])
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
        ax.set_title(act.label(), fontsize="small")
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
    fig.suptitle(
        r"Off the EoC: $\ln\chi_1$ at the attracting fixed point, black line $\chi_1 = 1$,"
        "\n"
        r"grey lines: $V'(q)$ there; light grey: variance diverges; x: all networks escaped",
        fontsize="medium",
    )
    return _save(fig, out, "sigma_phase")


# -- all of them ----------------------------------------------------------------------------------


def make_figures(results: Results, out: Path) -> list[Path]:
    """Draw every figure the store supports into ``out``; returns the files written."""
    _style()
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # chi_1 = 0, far tails
        return _draw_all(results, out)


def _draw_all(results: Results, out: Path) -> list[Path]:
    written: list[Path] = []
    if not results.eoc:
        written += fig_sigma(results, out) or []
        return written
    if "sparsity" not in results.ds.dims:
        return written
    written += fig_variance_maps(results, out)
    written += fig_trajectories(results, out)
    for family in _coords(results, "family"):
        written += fig_zero_corr(results, out, family)
    written += fig_phase(results, out)
    written += fig_escape_width(results, out) or []
    written += fig_survival(results, out) or []
    return written


def default_out(store: Path) -> Path:
    """``figures/`` next to the store."""
    return Path(store).resolve().parent / "figures"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.figures", description="Draw the figures of a results store."
    )
    parser.add_argument("results", help="results store (.zarr directory or .nc file)")
    parser.add_argument(
        "--out", type=Path, help="output folder (default: figures/ next to the store)"
    )
    args = parser.parse_args(argv)
    results = open_results(args.results)
    written = make_figures(results, args.out or default_out(args.results))
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    run_cli(main)
