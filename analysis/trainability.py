"""The trainability study: which deep networks train, and which initialisation statistic says so.

    python -m analysis.trainability STORE [STORE ...] [--out DIR] [--tolerance 0.02]

reads the training stores of one study (the same budget and axes, :class:`analysis.training.
StudyTables`) and writes ``DIR/report.md`` and ``DIR/figures/trainability_map.png`` (at the
study's main width), ``trainability_predictors.png`` and, where some configurations were run at
more than one width, ``trainability_width.png`` (default DIR: the first store's folder). The stores' configurations
differ in activation, depth and, off the Edge of Chaos, chi_1 (a sweep's ``chi1`` axis; 1 where
there is none).

Definitions.

- *The baseline* is ReLU: CReLU at sparsity 0.5, unclipped (tau = 0), at chi_1 = 1.
- *Reference depth* L_ref: the deepest baseline depth whose mean final test accuracy is within
  ``tolerance`` of the baseline's best over depths, and g_ref etc. the baseline's statistics there.
- Each hypothesis (docs/training.md, "Why sparse networks stop training") predicts the depth at
  which an activation stops training as the depth where its statistic reaches the baseline's value
  at L_ref (searched over 1 to ``MAX_DEPTH`` layers; inf: never):
  - H1, the GP input signal 1 - c^L (``gp.correlation_gaps`` from c^0 = 1/2): the smallest L
    with 1 - c^L <= g_ref. Off the EoC on the chaotic side it settles at 1 - c* and may never get
    there;
  - H2, the spread of the log gain (``gp.log_gain_spread``, at the configuration's width): the
    smallest L where it reaches the baseline's at L_ref;
  - H6, the spread of the Jacobian's spectrum L r (``gp.jacobian_spread``): L_ref r_ReLU / r;
  - and, off the EoC, Schoenholz et al.'s 6 xi_c (``gp.xi_c``; inf on the EoC).
- A configuration *trains* when its mean final test accuracy is within ``tolerance`` of the
  baseline's best.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from scipy import stats

from analysis._cli import Parser, run_cli
from analysis._store import StoreError
from analysis._table import markdown_table
from analysis.figures import _save, _style
from analysis.training import (
    PREDICTORS,
    StudyTables,
    TrainingResults,
    open_store,
)
from simulate import gp
from simulate.activations import Activation

MAX_DEPTH = 2000
"""Deepest network the predictions look at."""

ACTIVATION_DIMS = ("family", "sparsity", "clip", "q_star")
"""The axes that name an activation in a study (at sparsity, not tau)."""

SHOWN = ("gp_corr_gap", "log_gain_sd", "margin", "jacobian_spread")
"""The hypotheses' predictors drawn against accuracy, in the figure's order."""


def activation_label(row) -> str:
    """``ReLU`` for the baseline, else ``CReLU s=0.85 m=0.86`` (``q*=4`` appended off q* = 1)."""
    family, s, m, q = (row[d] for d in ACTIVATION_DIMS)
    if family == "crelu" and s == 0.5 and not math.isfinite(m):
        name = "ReLU"
    else:
        base = {"crelu": "ReLU", "cst": "ST"}.get(family, family)
        clipped = math.isfinite(m)
        name = f"{'C' if clipped else ''}{base}{'' if clipped else '_tau'} s={s:g}"
        name += f" m={m:g}" if clipped else ""
    return name + (f" q*={q:g}" if q != 1 else "")


def study_table(tables: StudyTables) -> pd.DataFrame:
    """The link table of the study, one row per configuration, with ``activation`` and ``chi1``
    (1 where the store has no such axis)."""
    link = tables.link.copy()
    if "sparsity" not in link:
        raise StoreError("the trainability study needs stores with a sparsity axis (not tau)")
    if "chi1" not in link:
        link["chi1"] = 1.0
    link["chi1"] = link["chi1"].fillna(1.0)
    link["activation"] = [activation_label(r) for r in link.to_dict("records")]
    return link


def _activation(tables: StudyTables, row: dict) -> tuple[Activation, float, float]:
    """The activation of ``row`` and its (sigma_w^2, sigma_b^2), read from the store holding it."""
    for part in tables.parts:
        tr = part.tr
        key = {d: row[d] for d in tr.param_dims}
        try:
            sw2, sb2 = (float(tr.ds[v].sel(key)) for v in ("sigma_w2", "sigma_b2"))
        except KeyError:
            continue
        return tr.activation(key), sw2, sb2
    raise KeyError(row)


def _first_depth(values: np.ndarray, reference: float, falling: bool) -> float:
    """The first depth (1-based index into ``values``) where they pass ``reference`` (inf: never)."""
    passed = values <= reference if falling else values >= reference
    hits = np.flatnonzero(passed)
    return float(hits[0] + 1) if hits.size else math.inf


def predictions(
    tables: StudyTables, link: pd.DataFrame, tolerance: float, max_depth: int = MAX_DEPTH
) -> pd.DataFrame:
    """Per (activation, chi_1, width): the depth each hypothesis predicts training to stop at
    (module docstring; searched to ``max_depth``), beside the deepest measured depth that trains."""
    base = link[(link["activation"] == "ReLU") & (link["chi1"] == 1.0)]
    if base.empty:
        raise StoreError("the trainability study needs the ReLU baseline at chi1 = 1")
    by_depth = base.groupby("depth")["test_acc"].mean()
    best = float(by_depth.max())
    l_ref = int(max(d for d, a in by_depth.items() if a >= best - tolerance))
    ref = base[base["depth"] == l_ref].iloc[0].to_dict()
    relu, relu_w2, relu_b2 = _activation(tables, ref)
    relu_gaps = gp.correlation_gaps(relu, ref["q_star"], relu_w2, relu_b2, 0.5, l_ref)
    g_ref = float(relu_gaps[-1])
    spread_ref = gp.log_gain_spread(relu, ref["q_star"], relu_w2, relu_b2, l_ref, ref["width"])[-1]
    r_ref = float(gp.slope_kurtosis(relu, ref["q_star"]))
    rows = []
    keys = ["activation", *ACTIVATION_DIMS, "chi1", "width"]
    for key, group in link.groupby(keys, sort=False):
        row = dict(zip(keys, key, strict=True))
        act, sw2, sb2 = _activation(tables, group.iloc[0].to_dict())
        q = row["q_star"]
        gaps = gp.correlation_gaps(act, q, sw2, sb2, 0.5, max_depth)[1:]
        trains = group[group["test_acc"] >= best - tolerance]["depth"]
        spreads = gp.log_gain_spread(act, q, sw2, sb2, max_depth, row["width"])
        rows.append(
            {
                **{k: row[k] for k in ("activation", "chi1", "width")},
                "deepest_trained": float(trains.max()) if len(trains) else 0.0,
                "H1_depth": _first_depth(gaps, g_ref, falling=True),
                "H2_depth": _first_depth(spreads, spread_ref, falling=False),
                "H6_depth": l_ref * r_ref / float(gp.slope_kurtosis(act, q)),
                "six_xi_c": 6 * gp.xi_c(act, q, sw2, sb2),
            }
        )
    table = pd.DataFrame(rows)
    table.attrs.update(l_ref=l_ref, best=best, g_ref=g_ref, spread_ref=spread_ref)
    return table


def rank_correlations(link: pd.DataFrame) -> pd.DataFrame:
    """Spearman's rho (two-sided p) of the mean final test accuracy with each predictor, over every
    configuration of the study, and over those at chi_1 = 1 (the EoC)."""
    rows = []
    for where, subset in (("all", link), ("EoC", link[link["chi1"] == 1.0])):
        for column in [c for c in PREDICTORS if c in subset]:
            x, y = subset[column].to_numpy(float), subset["test_acc"].to_numpy(float)
            ok = np.isfinite(x) & np.isfinite(y)
            rho = p = math.nan
            if ok.sum() >= 3 and np.ptp(x[ok]) > 0:
                rho, p = stats.spearmanr(x[ok], y[ok])
            rows.append(
                {
                    "configurations": where,
                    "predictor": PREDICTORS[column],
                    "n": int(ok.sum()),
                    "rho": rho,
                    "p_value": p,
                }
            )
    return pd.DataFrame(rows)


# -- figures --------------------------------------------------------------------------------------


def _edges(values) -> np.ndarray:
    """Cell edges around sorted positive values, at their geometric midpoints."""
    v = np.asarray(sorted(values), dtype=float)
    if v.size == 1:
        return np.array([v[0] / 1.1, v[0] * 1.1])
    mid = np.sqrt(v[1:] * v[:-1])
    return np.concatenate([[v[0] ** 2 / mid[0]], mid, [v[-1] ** 2 / mid[-1]]])


def fig_map(link: pd.DataFrame, pred: pd.DataFrame, out: Path) -> Path:
    """Mean final test accuracy over (depth, chi_1), a panel per activation, with the depth each
    hypothesis predicts training to stop at."""
    names = sorted(link["activation"].unique(), key=lambda a: (a != "ReLU", a))
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False, sharex=True, sharey=True
    )
    norm = plt.Normalize(0.1, max(0.9, float(link["test_acc"].max())))
    for ax, name in zip(axes.flat, names, strict=False):
        sub = link[link["activation"] == name]
        grid = sub.pivot_table(index="chi1", columns="depth", values="test_acc", aggfunc="mean")
        mesh = ax.pcolormesh(
            _edges(grid.columns), _edges(grid.index), grid.to_numpy(), cmap="viridis", norm=norm
        )
        for (chi, depth), acc in grid.stack().dropna().items():
            ax.text(
                depth,
                chi,
                f"{acc:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if acc < 0.5 else "black",
            )
        p = pred[pred["activation"] == name].sort_values("chi1")
        for column, style in PREDICTION_STYLES.items():
            depth = p[column].to_numpy(float)
            shown = np.isfinite(depth) & (depth <= 4 * grid.columns.max())
            if shown.any():
                ax.plot(depth[shown], p["chi1"].to_numpy(float)[shown], **style)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(_edges(grid.columns)[[0, -1]])
        ax.set_title(name, fontsize=9)
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    for column in axes.T:  # the lowest panel of each column carries the depth axis
        lowest = [ax for ax in column if ax.get_visible()][-1]
        lowest.xaxis.set_tick_params(labelbottom=True)
        lowest.set_xlabel("depth L (hidden layers)")
    for ax in axes[:, 0]:
        ax.set_ylabel("chi_1 at q* (1: EoC)")
    for ax in axes.flat:
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_yticks(sorted(link["chi1"].unique()))
        ax.set_xticks(sorted(link["depth"].unique()))
    fig.colorbar(mesh, ax=axes, label="final test accuracy (mean over seeds)", shrink=0.8)
    handles = [plt.Line2D([], [], **style) for style in PREDICTION_STYLES.values()]
    fig.legend(
        handles,
        [s["label"] for s in PREDICTION_STYLES.values()],
        loc="upper center",
        ncol=2,
        bbox_to_anchor=(0.45, -0.05),
        fontsize=8,
        title=f"depth where training is predicted to stop (calibrated on ReLU at L_ref = "
        f"{pred.attrs['l_ref']})",
        title_fontsize=8,
    )
    fig.suptitle("Final test accuracy over depth and chi_1", fontsize=10, y=1.0)
    return _save(fig, out, "trainability_map")[0]


PREDICTION_STYLES = {
    "H1_depth": dict(color="tab:red", marker="^", ls="-", label="H1: 1 - c^L at ReLU's L_ref"),
    "H2_depth": dict(color="tab:orange", marker="s", ls=":", label="H2: log-gain spread"),
    "H6_depth": dict(color="black", marker="|", ls="--", label="H6: Jacobian spread L r"),
    "six_xi_c": dict(color="tab:pink", marker="o", ls="-.", label="6 xi_c (off the EoC)"),
}
"""How each predicted depth is drawn on the map."""


def fig_predictors(link: pd.DataFrame, out: Path) -> Path:
    """Final test accuracy against each hypothesis' predictor, every configuration on the same
    axes: colour the activation, size the depth, filled at chi_1 = 1; Spearman's rho in the titles."""
    names = sorted(link["activation"].unique(), key=lambda a: (a != "ReLU", a))
    colors = dict(zip(names, sns.color_palette("tab10", len(names)), strict=True))
    fig, axes = plt.subplots(1, len(SHOWN), figsize=(4.0 * len(SHOWN), 3.6), sharey=True)
    for ax, column in zip(axes, SHOWN, strict=True):
        for name in names:
            sub = link[link["activation"] == name]
            eoc = sub["chi1"] == 1.0
            for mask, face in ((eoc, colors[name]), (~eoc, "none")):
                ax.scatter(
                    sub.loc[mask, column],
                    sub.loc[mask, "test_acc"],
                    s=8 + sub.loc[mask, "depth"] * 0.6,
                    facecolors=face,
                    edgecolors=colors[name],
                    linewidths=1.0,
                )
        x, y = link[column].to_numpy(float), link["test_acc"].to_numpy(float)
        ok = np.isfinite(x) & np.isfinite(y)
        rho = stats.spearmanr(x[ok], y[ok])[0] if ok.sum() >= 3 else math.nan
        ax.set_title(f"{PREDICTORS[column]}\nSpearman rho = {rho:.2f} (n = {ok.sum()})", fontsize=9)
        if column == "gp_corr_gap":
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        if column == "jacobian_spread":
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(PREDICTOR_UNITS[column])
    axes[0].set_ylabel("final test accuracy")
    handles = [plt.Line2D([], [], marker="o", ls="", color=colors[n], label=n) for n in names]
    handles += [
        plt.Line2D([], [], marker="o", ls="", color="gray", label="chi_1 = 1 (EoC)"),
        plt.Line2D([], [], marker="o", ls="", mfc="none", color="gray", label="chi_1 != 1"),
    ]
    axes[-1].legend(
        handles=handles,
        loc="center left",
        bbox_to_anchor=(1.03, 0.5),
        fontsize=8,
        title="marker size: depth",
    )
    return _save(fig, out, "trainability_predictors")[0]


def fig_width(link: pd.DataFrame, out: Path) -> Path | None:
    """The width slice at chi_1 = 1: final test accuracy over depth, a line per width, a panel per
    activation measured at more than one width; and the same runs against the log-gain spread
    (H2), which puts the widths on one axis."""
    eoc = link[link["chi1"] == 1.0]
    names = [
        n for n in sorted(eoc["activation"].unique(), key=lambda a: (a != "ReLU", a))
        if eoc.loc[eoc["activation"] == n, "width"].nunique() > 1
    ]  # fmt: skip
    if not names:
        return None
    widths = sorted(eoc["width"].unique())
    colors = dict(zip(widths, sns.color_palette("colorblind", len(widths)), strict=True))
    markers = dict(zip(names, "osD^v", strict=False))
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(4.0 * (len(names) + 1), 3.4))
    for ax, name in zip(axes, names, strict=False):
        sub = eoc[eoc["activation"] == name]
        for width, runs in sub.groupby("width"):
            runs = runs.sort_values("depth")
            ax.plot(runs["depth"], runs["test_acc"], marker=markers[name], color=colors[width])
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("depth L (hidden layers)")
        ax.set_xscale("log")
        ax.set_xticks(sorted(sub["depth"].unique()))
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[0].set_ylabel("final test accuracy")
    last = axes[-1]
    for name in names:
        for width, runs in eoc[eoc["activation"] == name].groupby("width"):
            last.scatter(
                runs["log_gain_sd"], runs["test_acc"], marker=markers[name], color=colors[width]
            )
    last.set_xlabel(PREDICTOR_UNITS["log_gain_sd"])
    last.set_title("against H2 (every depth, chi_1 = 1)", fontsize=9)
    handles = [plt.Line2D([], [], color=colors[w], lw=2, label=f"width {w}") for w in widths]
    handles += [plt.Line2D([], [], marker=markers[n], ls="", color="gray", label=n) for n in names]
    last.legend(handles=handles, loc="center left", bbox_to_anchor=(1.03, 0.5), fontsize=8)
    for ax in axes:
        ax.set_ylim(0.0, 0.9)
    fig.suptitle("Width slice at the Edge of Chaos", fontsize=10, y=1.02)
    return _save(fig, out, "trainability_width")[0]


PREDICTOR_UNITS = {
    "gp_corr_gap": "1 - c^L (from c^0 = 1/2), dimensionless",
    "log_gain_sd": "sd of ln(gain) through L layers, nats",
    "margin": "1 - V'(q*), dimensionless",
    "jacobian_spread": "var / mean^2 of squared singular values",
}


# -- report ---------------------------------------------------------------------------------------


def accuracy_grids(link: pd.DataFrame) -> str:
    """Per activation, mean final test accuracy (± sd over seeds) as a chi_1 x depth table."""
    parts = []
    for (name, width), sub in sorted(
        link.groupby(["activation", "width"]), key=lambda item: (item[0][0] != "ReLU", item[0])
    ):
        sub = sub.copy()
        sub["cell"] = [
            f"{m:.3f}" + ("" if math.isnan(s) else f" ± {s:.3f}")
            for m, s in zip(sub["test_acc"], sub["test_acc_sd"], strict=True)
        ]
        grid = sub.pivot_table(index="chi1", columns="depth", values="cell", aggfunc="first")
        grid = grid.reset_index().rename(columns={"chi1": "chi_1 \\ L"})
        grid.columns = [str(c) for c in grid.columns]
        parts.append(f"**{name}**, width {width}\n\n{markdown_table(grid.fillna(''))}")
    return "\n\n".join(parts)


def width_slice(link: pd.DataFrame) -> pd.DataFrame:
    """At chi_1 = 1, the (activation, depth) measured at more than one width: the Jacobian spread
    L r (the same at every width) and, per width, the mean final test accuracy (± its sd over
    seeds, where there are several) with the log-gain spread sd in brackets (H2: it falls like
    1 / sqrt(width))."""
    eoc = link[link["chi1"] == 1.0]
    widths = eoc.groupby(["activation", "depth"])["width"].transform("nunique")
    eoc = eoc[widths > 1].copy()
    if eoc.empty:
        return pd.DataFrame()
    eoc["cell"] = [
        f"{a:.3f}" + ("" if math.isnan(spread) else f" ± {spread:.3f}") + f" ({sd:.2f})"
        for a, spread, sd in zip(
            eoc["test_acc"], eoc["test_acc_sd"], eoc["log_gain_sd"], strict=True
        )
    ]
    table = eoc.pivot_table(
        index=["activation", "depth", "jacobian_spread"],
        columns="width",
        values="cell",
        aggfunc="first",
    )
    table.columns = [f"width {w}" for w in table.columns]
    table = table.reset_index().rename(columns={"jacobian_spread": "L r"})
    order = table["activation"] != "ReLU"
    return (
        table.assign(_order=order)
        .sort_values(["_order", "activation", "depth"])
        .drop(columns="_order")
    )


def main_width(link: pd.DataFrame) -> int:
    """The width of most of the study's configurations: the maps are drawn at it."""
    return int(link["width"].mode().iloc[0])


def main_lr(link: pd.DataFrame) -> float:
    """The learning rate of most of the study's configurations: every table and figure but the
    learning-rate slice is at it (a study's learning-rate search would otherwise be averaged into
    its maps)."""
    return float(link["lr"].mode().iloc[0])


def lr_slice(link: pd.DataFrame) -> pd.DataFrame:
    """The configurations measured at more than one learning rate: mean final test accuracy (± its
    sd over seeds) per learning rate."""
    keys = ["activation", "chi1", "width", "depth"]
    rates = link.groupby(keys)["lr"].transform("nunique")
    sub = link[rates > 1].copy()
    if sub.empty:
        return pd.DataFrame()
    sub["cell"] = [
        f"{a:.3f}" + ("" if math.isnan(sd) else f" ± {sd:.3f}")
        for a, sd in zip(sub["test_acc"], sub["test_acc_sd"], strict=True)
    ]
    table = sub.pivot_table(index=keys, columns="lr", values="cell", aggfunc="first")
    table.columns = [f"lr {lr:g}" for lr in table.columns]
    return table.reset_index()


def build_report(paths: list[Path], out: Path, tolerance: float) -> Path:
    stores = [open_store(path) for path in paths]
    for path, store in zip(paths, stores, strict=True):
        if not isinstance(store, TrainingResults):
            raise StoreError(f"{path}: a Monte Carlo store, not a training store")
    tables = StudyTables(stores)
    every = study_table(tables)
    lr = main_lr(every)
    link = every[every["lr"] == lr]
    rates = lr_slice(every)
    pred = predictions(tables, link, tolerance)
    figures = out / "figures"
    _style()
    width = main_width(link)
    made = [
        fig_map(link[link["width"] == width], pred[pred["width"] == width], figures),
        fig_predictors(link, figures),
        fig_width(link, figures),
    ]
    made = [path for path in made if path is not None]
    slice_ = width_slice(link)
    done = sum(int(s.done.sum()) for s in stores)
    total = sum(int(s.done.size) for s in stores)
    attrs = stores[0].ds.attrs
    lines = [
        "# Trainability study",
        "",
        f"Stores: {', '.join(f'`{p}`' for p in paths)} ({done} of {total} runs finished).",
        f"Budget: {attrs.get('dataset')}, {attrs.get('n_train')} training and "
        f"{attrs.get('n_test')} test images, {attrs.get('epochs')} epochs of batches of "
        f"{attrs.get('batch_size')}, {attrs.get('optimizer')} ({attrs.get('schedule')}).",
        f"Baseline: ReLU at chi_1 = 1, best mean final test accuracy {pred.attrs['best']:.3f}; "
        f"reference depth L_ref = {pred.attrs['l_ref']} (deepest within {tolerance:g} of it), "
        f"where 1 - c^L = {pred.attrs['g_ref']:.3g} and the log-gain spread is "
        f"{pred.attrs['spread_ref']:.3g}.",
        "",
        *[f"![{p.stem}](figures/{p.name})" for p in made],
        "",
        "## Final test accuracy",
        "",
        accuracy_grids(link),
        "",
        *(
            [
                "## Width slice (chi_1 = 1)",
                "",
                "Final test accuracy, with the log-gain spread (H2, which falls like "
                "1 / sqrt(width)) in brackets; L r (H6) does not depend on the width.",
                "",
                markdown_table(slice_),
                "",
            ]
            if not slice_.empty
            else []
        ),
        *(
            [
                "## Learning rates",
                "",
                f"Every table and figure above and below is at the study's main learning rate, "
                f"{lr:g}; the configurations also run at others (final test accuracy):",
                "",
                markdown_table(rates),
                "",
            ]
            if not rates.empty
            else []
        ),
        "## Predicted depth where training stops, against the deepest that trains",
        "",
        f"A configuration trains when within {tolerance:g} of the baseline's best. Depths in "
        "hidden layers (inf: never within 2000).",
        "",
        markdown_table(pred),
        "",
        "## Rank correlations of accuracy with the predictors",
        "",
        markdown_table(rank_correlations(link)),
        "",
        "## Per configuration",
        "",
        markdown_table(
            link[
                [
                    "activation",
                    "chi1",
                    "width",
                    "depth",
                    "n_runs",
                    "test_acc",
                    "test_acc_sd",
                    "v_slope",
                    *SHOWN,
                ]
            ]
        ),
        "",
        "Reproduce: `python -m analysis.trainability "
        + " ".join(map(str, paths))
        + f" --out {out}`; each store's spec is in its attributes "
        "(`python -m simulate.grid SPEC.toml` resumes or rebuilds it).",
        f"Stores made by commit(s): {', '.join(sorted({str(s.ds.attrs.get('git_commit'))[:7] for s in stores}))}.",
    ]
    out.mkdir(parents=True, exist_ok=True)
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = Parser(
        prog="python -m analysis.trainability",
        description="Trainability maps and the hypotheses' predictions, from training stores.",
    )
    parser.add_argument("results", nargs="+", help="training stores of one study")
    parser.add_argument("--out", help="output folder (default: the first store's folder)")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.02,
        help="accuracy below the baseline's best that still counts as trained",
    )
    args = parser.parse_args(argv)
    if not 0 < args.tolerance < 1:
        raise StoreError(f"tolerance={args.tolerance}: must be in (0, 1)")
    paths = [Path(p) for p in args.results]
    out = Path(args.out) if args.out else paths[0].parent
    report = build_report(paths, out, args.tolerance)
    print(f"analysis.trainability: wrote {report}")
    return 0


if __name__ == "__main__":
    run_cli(main)
