"""``python -m analysis.report RESULTS [--out FILE.md] [--init INIT_STORE] [--n-jobs N]``: a
markdown report of a results store.

Default output: ``report.md`` next to the store, with the figures (drawn by
:mod:`analysis.figures`) in a ``figures/`` folder beside it, embedded by relative path. The report
states the tables (fit verdicts, escape statistics, width law, clip window theory vs Monte Carlo,
fixed-point jumps, phase tables), each under the command that prints it, and opens with a summary
of what they show. The report of a partial store (an interrupted sweep) opens with how many cells
are done, which are missing and the commands that finish the sweep. The report of a thinned store
(``record_every = k``) says which layers were recorded; that of a summary store (``record =
summary``) says, one line per item, what it cannot compute without per-layer records (the fit
verdicts, the figures through depth), and gives the rest from the per-network summaries. The
outputs are checked before any work, and every table is computed once
(:class:`analysis.tables.Tables`), reading the store a block of cells at a time. The tables read
cell by cell start first, in ``--n-jobs`` worker processes on a large store
(:mod:`analysis._parallel`), and the theory's tables are computed meanwhile; every table is done
before the first figure is drawn.

A training store (``python -m simulate.grid --experiment train``) gets a report with a "Training"
section instead: the dataset, its subset sizes, epochs, learning rates, optimizer and schedule
(from the store's attributes), the diverged runs, a summary of what the tables show, the figures,
and the tables of :mod:`analysis.training` (accuracy, clipped against unclipped, hidden sparsity,
the link to the initialisation theory and its rank correlations). ``--init`` names the Monte Carlo
store of the same activations, for the phase diagram beside the accuracy one and the link.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from simulate.spec import Shape

from ._cli import Parser, add_n_jobs, run_cli, writable_dir, writable_file
from ._store import Results
from ._table import markdown_table
from .figures import make_figures
from .fit import ALPHA, EPS_SMALL
from .instability import SPARSITY_TOL, STAY_LEVEL, theory_window
from .tables import Tables
from .training import (
    TABLES as TRAINING_TABLE_VIEWS,
)
from .training import (
    TrainingResults,
    TrainingTables,
    open_stores,
    pooled,
)
from .width_law import applies

TABLES = {
    "fit": (
        "Fit verdicts: Monte Carlo against the GP and its 1/N corrections",
        "analysis.fit {store}",
    ),
    "escape": ("Escape statistics", "analysis.instability {store} --table escape"),
    "width-law": (
        "Width law of the escape depth",
        "analysis.instability {store} --table width-law",
    ),
    "width-points": (
        "Median escape depth and 1/N onset layer per width",
        "analysis.instability {store} --table width-points",
    ),
    "window": ("Clip window: theory vs Monte Carlo", "analysis.instability {store} --table window"),
    "jumps": ("Jumps to the upper fixed point", "analysis.instability {store} --table jumps"),
    "phase-theory": ("Phase table from theory", "analysis.phase {store} --source theory"),
    "phase-mc": ("Phase table from Monte Carlo", "analysis.phase {store} --source mc"),
    "sigma": ("Off-EoC (sigma_w^2, sigma_b^2) table", "analysis.phase {store}"),
    "asymptotic": (
        "Width law in its asymptotic regime: exponents and T against the saddle-node law",
        "analysis.width_law {store}",
    ),
    "local": (
        "Mean escape depth per width and local exponents",
        "analysis.width_law {store} --table local",
    ),
}
"""Report tables: key -> (heading, the ``python -m`` command that prints the table)."""


def _command(key: str, store: str) -> str:
    return "python -m " + TABLES[key][1].format(store=store)


def _section(key: str, table: pd.DataFrame, store: str, note: str = "") -> str:
    heading, _ = TABLES[key]
    body = markdown_table(table) if not table.empty else "_(nothing in this store)_"
    return f"### {heading}\n\n    {_command(key, store)}\n\n{note}{body}\n"


def _in_theory_window(fit: pd.DataFrame, shapes: dict[str, Shape]) -> pd.Series:
    """Clipped EoC cells whose m lies in the theory window of their (family, sparsity, q*)
    (``shapes``: the store's user shapes, :attr:`analysis._store.Results.shapes`)."""

    def inside(row) -> bool:
        if not math.isfinite(row["clip"]):  # unclipped: outside any window, none to compute
            return False
        family = row["family"]
        window = theory_window(family, row["sparsity"], row["q_star"], shapes.get(family))
        return bool(window.contains(row["clip"]))

    return fit.apply(inside, axis=1).astype(bool)


OBSERVABLE_NOTE = {
    "q": "the empirical variance q = (1/N) sum_i h_i^2 (its correlation corr and tangent gain "
    "log_gain), against the 1/N theory's mean q + G1/N and spread sqrt((2 q^2 + V4)/N)",
    "v": "the conditional variance v = sigma_w^2 (1/N) sum_i phi(h_i)^2 + sigma_b^2 of each layer "
    "given the one below (the Markov state; its correlation v_corr and gain v_log_gain), against "
    "the 1/N theory's mean q + G1/N and spread sqrt(V4/N)",
}
"""What the report's variance tests, escapes and figures use, per observable."""


def _observable_line(results: Results) -> str:
    """Which variance the report works from, and why (:attr:`Results.observable`)."""
    declared = results.ds.attrs.get("escape_on")
    why = (
        f"the sweep detected escapes on it (escape_on = {declared})"
        if declared
        else "the store does not say what escapes were detected on (written before escape_on): "
        + ("q, which it recorded" if results.observable == "q" else "v, as its q is not recorded")
    )
    return (
        f"**Variance observable: {results.observable}** ({why}). Fits, escapes, network fates, "
        f"the phase tables and the figures use {OBSERVABLE_NOTE[results.observable]}."
    )


def _recorded_lines(results: Results) -> list[str]:
    """What the store recorded (thinned layers, or summaries only) and, one line each, what the
    report cannot compute from it; nothing for a store of every layer."""
    if results.per_layer:
        layers = results.layers
        if layers.size == results.depth + 1:
            return []
        return [
            f"**Recorded layers:** {layers.size} of {results.depth + 1} (every "
            f"{results.ds.attrs.get('record_every', '?')} layers, and the last); the per-layer "
            "tests and figures use these, escape layers are exact (per-network scalars).",
            "",
        ]
    return [
        "**Summary store:** per-network summaries (escape layer, final variance and zero "
        "fraction, time averages) only. What this report cannot compute from what was recorded:",
        "",
        *results.skipped(),
        "",
    ]


def _fit_summary(fit: pd.DataFrame, eoc_sparsity: bool, shapes: dict[str, Shape]) -> list[str]:
    if fit.empty:
        return []
    lines = []
    if eoc_sparsity:
        inside = _in_theory_window(fit, shapes)
        claim = fit[inside & (fit["eps_1n"] <= EPS_SMALL)]
        edge = fit[inside & (fit["eps_1n"] > EPS_SMALL)]
        failed = claim[~claim["agrees"]]
        lines.append(
            f"- **Clipped, inside the theory window, first-order correction eps_1n <= {EPS_SMALL}:** "
            f"{int(claim['agrees'].sum())} of {len(claim)} cells agree with the GP + 1/N theory at "
            f"every layer (variance mean, variance spread, zero fraction, tangent gain; "
            f"family-wise level "
            f"{ALPHA:.0%} per cell, Sidak over layers; about {ALPHA * len(claim):.1f} false alarms "
            "expected)."
            + (
                " Failing: "
                + "; ".join(
                    f"{r.family} s={r.sparsity:g} m={r.clip:g} N={r.width} (layer "
                    f"{r.first_fail_layer:.0f}, {r.first_fail_stat})"
                    for r in failed.itertuples()
                )
                + "."
                if len(failed)
                else ""
            )
        )
        if len(edge):
            lines.append(
                f"- **Inside the window but near its upper edge (eps_1n > {EPS_SMALL}):** "
                f"{int(edge['agrees'].sum())} of {len(edge)} agree; there V'(q*) -> 1 amplifies the "
                "1/N corrections and the first-order theory needs larger widths."
            )
    unclipped = fit[~np.isfinite(fit["clip"])] if "clip" in fit else fit.iloc[:0]
    if len(unclipped):
        lines.append(
            f"- **Unclipped:** {int((~unclipped['agrees']).sum())} of {len(unclipped)} cells depart "
            f"from the theory, first at layer {unclipped['first_fail_layer'].median():.0f} (median "
            "over cells): the 1/N drift and the escapes the GP limit does not have."
        )
    inside = fit[_in_theory_window(fit, shapes)] if eoc_sparsity else fit.iloc[:0]
    if len(inside):
        lines.append(
            "- **Correlation of the two inputs** (infinite-width R-iterate, not in the verdict): "
            "largest deviation of the mean correlation from it, median over the cells inside the "
            "window: "
            + ", ".join(
                f"N={w}: {g['corr_max_dev'].median():.3g}" for w, g in inside.groupby("width")
            )
            + " (shrinking with width; the first-order theory here has no finite-width correction "
            "for the correlation)."
        )
    return lines


def _width_summary(points: pd.DataFrame, fits: pd.DataFrame, fit: pd.DataFrame) -> list[str]:
    if fits.empty:
        return []
    pooled = fits[fits["group"] == "pooled"].iloc[0]
    failing = (
        "first layer where the fit fails = "
        f"{points.merge(fit, on=[c for c in points if c in fit])['first_fail_layer'].median():.0f}, "
        if len(fit)
        else ""
    )
    return [
        f"- **Width law (unclipped):** median escape depth ~ N^beta with pooled beta = "
        f"{pooled['beta']:.3f}, 95% bootstrap interval [{pooled['beta_lo']:.3f}, "
        f"{pooled['beta_hi']:.3f}] ({int(pooled['n_widths'])} medians); the 1/N theory's onset "
        f"layer scales with beta = {pooled['beta_theory']:.3f} over the same widths (1/3 "
        "asymptotically). Median over the unclipped cells: onset layer l_pt = "
        f"{points['onset_layer'].median():.0f}, {failing}median escape depth = "
        f"{points['median_escape'].median():.0f}."
    ]


def _asymptotic_summary(law: pd.DataFrame) -> list[str]:
    if law.empty:
        return []
    pooled = law.set_index("group").loc["pooled"]
    upper = next(c for c in law.columns if c.startswith("beta_from_") and not c.endswith("_se"))
    groups = law[law["group"] != "pooled"]
    ratio = groups["T_top"] / groups["T_asymptotic"]
    return [
        f"- **Width law, asymptotic regime** (mean escape depth T of the unclipped cells, "
        f"{len(groups)} groups, widths up to {int(pooled['width_top'])}): pooled exponent "
        f"{pooled['beta_all']:.3f} +- {pooled['beta_all_se']:.3f} over every width, "
        f"{pooled[upper]:.3f} +- {pooled[upper + '_se']:.3f} from N = {upper[10:]} on "
        "(standard errors); the saddle-node law predicts 1/3 asymptotically, and its finite-N "
        "diffusion theory the smaller local exponents drawn in the width_law figure. At the "
        f"largest width the measured T is {ratio.min():.2f} to {ratio.max():.2f} times the "
        "asymptotic C kappa^{-2/3} (D/N)^{-1/3} (docs/theory.md)."
    ]


def _window_summary(window: pd.DataFrame) -> list[str]:
    if window.empty:
        return []
    agree = int(window["agrees"].sum())
    below = int((window["upper_steps"] < 0).sum())
    above = int((window["upper_steps"] > 0).sum())
    return [
        f"- **Clip window upper edge:** the Monte Carlo edge agrees with gp.max_stable_clip to "
        f"within one grid step in {agree} of {len(window)} (family, sparsity, width) rows; it lies "
        f"below the theory's grid cell in {below} and above it in {above}. Below: at finite width "
        "fluctuations of the layer variance carry networks past the slow region near a "
        "saddle-node (or over a nearby unstable fixed point) that the GP limit never crosses; "
        "above: at finite depth a network may not yet have left a metastable q*."
    ]


def _numerics(results: Results | TrainingResults) -> str:
    """The numerics that computed the finished cells, as the store records them per cell
    (``cell_version``: engine and source hash, ``simulate.schema.numerics_version``), each with
    its number of cells; "not recorded" for a store, or cells, written before the record."""
    if "cell_version" not in results.ds.coords:
        return "numerics not recorded (a store written before cells recorded them)"
    finished = results.ds["cell_version"].values[results.done.values].tolist()
    counts = Counter(version or "not recorded" for version in finished)
    mixed = (
        " (mixed, as --allow-mixed-versions allowed)"
        if "mixed_versions" in results.ds.attrs
        else ""
    )
    return "numerics " + ", ".join(f"{v} ({n} cells)" for v, n in counts.items()) + mixed


def _wall_time(results: Results | TrainingResults) -> str:
    """The simulation wall time as recorded: runs add theirs when they finish, so an interrupted
    run adds nothing."""
    seconds = float(results.ds.attrs.get("wall_time_s", math.nan))
    if not results.partial:
        return f"simulation wall time {seconds:.0f} s"
    if seconds > 0:
        return (
            f"simulation wall time {seconds:.0f} s over the runs that finished (an interrupted "
            "run records none)"
        )
    return "simulation wall time not recorded (no run of this sweep has finished)"


MAX_LISTED = 20
"""Missing parameter points listed one by one in a partial store's report; the rest are counted."""


def _show(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _missing_lines(results: Results | TrainingResults) -> list[str]:
    """The missing cells, one line per parameter point with its missing widths (a training store:
    its missing (width, depth, lr, run_seed))."""
    by_point: dict[tuple, list] = {}
    for key in results.missing():
        point = tuple((d, key[d]) for d in results.param_dims)
        rest = {d: v for d, v in key.items() if d not in results.param_dims}
        by_point.setdefault(point, []).append(rest)
    lines = []
    for point, rests in list(by_point.items())[:MAX_LISTED]:
        names = list(rests[0])
        runs = (
            _show(*r.values()) if len(r) == 1 else "(" + ", ".join(map(_show, r.values())) + ")"
            for r in rests
        )
        lines.append(
            "- "
            + " ".join(f"{d}={_show(v)}" for d, v in point)
            + f": {', '.join(names)} "
            + ", ".join(runs)
        )
    if len(by_point) > MAX_LISTED:
        lines.append(f"- ... and {len(by_point) - MAX_LISTED} more parameter points")
    return lines


def _partial_note(results: Results | TrainingResults, store: str) -> list[str]:
    """For an unfinished sweep: how much is done, what is missing, how to finish it."""
    if not results.partial:
        return []
    spec_file = Path(store).with_suffix(".spec.toml").as_posix()
    return [
        f"**Partial store: {results.n_done} of {results.n_cells} cells done.** The sweep was "
        "interrupted (or damaged cells were reset); every table and figure below covers the "
        f"finished cells only. Missing ({results.n_cells - results.n_done} cells):",
        "",
        *_missing_lines(results),
        "",
        "Finish the sweep (it computes only the missing cells), then run this report again:",
        "",
        f"    python -c \"import xarray as xr; print(xr.open_zarr('{store}').attrs['spec'])\" "
        f"> {spec_file}",
        f"    python -m simulate.grid {spec_file} --out {store}",
        "",
    ]


def build_report(results: Results, store: str, out: Path, tables: Tables | None = None) -> str:
    """The markdown text; draws the figures into ``figures/`` next to ``out``. Every table is
    computed once (``tables``), before any figure is drawn."""
    tables = Tables(results) if tables is None else tables
    # workers (if any) read the cells while this process computes the theory: the per-layer
    # predictions of every parameter cell at once (Tables.prepared), then the fixed points and
    # clip windows
    tables.start()
    eoc_sparsity = results.eoc and "sparsity" in results.ds.dims
    phase_theory = tables.phase_theory if eoc_sparsity else None
    points, fits = tables.width_law
    sections = [
        *([_section("fit", tables.fit, store)] if results.per_layer else []),
        _section("escape", tables.escape, store),
    ]
    if eoc_sparsity:
        sections += [
            _section("width-law", fits, store),
            _section("width-points", points, store),
            _section("window", tables.window, store),
            _section("jumps", tables.jumps, store),
            _section("phase-theory", phase_theory, store),
            _section("phase-mc", tables.phase_mc, store),
        ]
    if not results.eoc:
        sections.append(_section("sigma", tables.sigma, store))
    if applies(results):
        sections += [
            _section("asymptotic", tables.width_law_summary, store),
            _section("local", tables.asymptotic_width_law[1], store),
        ]
    summary = [
        *_fit_summary(tables.fit, eoc_sparsity, results.shapes),
        *_width_summary(points, fits, tables.fit),
        *_window_summary(tables.window),
        *(_asymptotic_summary(tables.width_law_summary) if applies(results) else []),
    ]
    figures = make_figures(results, out.parent / "figures", tables)
    pngs = [p for p in figures if p.suffix == ".png"]
    attrs = results.ds.attrs
    lines = [
        f"# Monte Carlo against the Gaussian-process theory: `{store}`",
        "",
        *_partial_note(results, store),
        f"Engine {attrs.get('engine', '?')}, seed {attrs.get('seed', '?')}, depth "
        f"{results.depth}, escape band [q_ref/{results.escape_factor:g}, "
        f"{results.escape_factor:g} q_ref], git commit {attrs.get('git_commit', '?')}, "
        f"{_numerics(results)}, {_wall_time(results)}.",
        "",
        _observable_line(results),
        "",
        *_recorded_lines(results),
        "Reproduce: the sweep from the spec below, then (this draws the figures too)",
        "",
        f"    python -m analysis.report {store}",
        "",
        "## Summary",
        "",
        *(summary or ["_(no finished cell to summarise)_"]),
        "",
        "Definitions: see the docstrings of `analysis.fit` (z-scores, verdict), "
        "`analysis.instability` (escape, width law, onset layer, clip windows: MC window = at "
        f"least {STAY_LEVEL:.0%} of networks stay at q* and the final zero fraction is within "
        f"{SPARSITY_TOL} of the target) and `analysis.theory` (1/N predictions).",
        "",
        "## Figures",
        "",
        f"    python -m analysis.figures {store}   # the figures alone",
        "",
        *[f"![{p.stem}]({Path(os.path.relpath(p, out.parent)).as_posix()})\n" for p in pngs],
        "## Tables",
        "",
        *sections,
    ]
    spec = attrs.get("spec", "")
    if spec:
        lines += ["## The sweep's spec", "", "```toml", spec.strip(), "```", ""]
    return "\n".join(lines)


TRAINING_TABLES = {
    "accuracy": "Final accuracy per configuration (mean ± sd over seeds)",
    "pairs": "Clipped against unclipped at equal sparsity",
    "sparsity": "Hidden sparsity through training against the target",
    "link": "Initialisation against training, configuration by configuration",
    "correlations": "Rank correlations of the initialisation statistics with accuracy",
}
"""Training report tables: ``python -m analysis.training --table`` key -> heading."""

SETTING = {
    "family": "",
    "sparsity": "s",
    "tau": "tau",
    "clip": "m",
    "q_star": "q*",
    "width": "N",
    "depth": "L",
    "lr": "lr",
}
"""How the training report names a configuration's axes."""


def _config(row) -> str:
    """``crelu s=0.85 m=1 q*=1 N=300 L=100 lr=0.001`` (``unclipped`` for m = inf)."""
    parts = []
    for dim, short in SETTING.items():
        if dim not in row:
            continue
        value = row[dim]
        if dim == "clip" and not math.isfinite(value):
            parts.append("unclipped")
        else:
            parts.append(f"{short}={_show(value)}" if short else str(value))
    return " ".join(parts)


def _training_setup(tr: TrainingResults, tables: TrainingTables, store: str) -> list[str]:
    """What was trained, on what and how; the diverged runs; the init store."""
    attrs = tr.ds.attrs
    sizes = " and ".join(
        f"{attrs.get(f'n_{k}', attrs.get(f'{k}_size', 'all'))} {name}"
        for k, name in (("train", "training"), ("test", "test"))
    )
    subsets = {"train_size", "test_size"} & set(attrs)
    seeds = tr.coords("run_seed")
    lines = [
        f"- **Data:** {attrs.get('dataset', '?')}, {sizes} images"
        + (" (the first images of the fixed splits)" if subsets else " (the fixed splits)")
        + "; q and the hidden sparsity are measured on probe batches, the first "
        f"{attrs.get('probe_size', '?')} images of each set.",
        f"- **Training:** epochs {attrs.get('epochs', tr.epochs)}, optimizer "
        f"{attrs.get('optimizer', '?')}, learning rate {', '.join(map(_show, tr.coords('lr')))} "
        f"({attrs.get('schedule', '?')} schedule, {_show(attrs.get('warmup', '?'))} epochs of "
        f"warm-up), batch size {attrs.get('batch_size', '?')}, output gain "
        f"{_show(attrs.get('output_gain', '?'))}; every network initialised at the Edge of Chaos "
        "of its q* (simulate.train.init.initialise).",
        f"- **Grid:** {len(tables.accuracy)} configurations with a finished run, "
        f"{len(seeds)} seed(s) each ({', '.join(map(str, seeds))}); widths "
        f"{', '.join(map(str, tr.coords('width')))}, depths "
        f"{', '.join(map(str, tr.coords('depth')))} hidden layers; {tr.n_done} of {tr.n_cells} "
        f"runs done; git commit {attrs.get('git_commit', '?')}, {_numerics(tr)}, "
        f"{_wall_time(tr)}.",
    ]
    diverged = tables.diverged
    if diverged.empty:
        lines.append(f"- **Diverged runs:** none of the {tr.n_done}.")
    else:
        listed = "; ".join(
            f"{_config(r)} seed {r['run_seed']} at epoch {r['diverged_epoch']}"
            for _, r in diverged.head(MAX_LISTED).iterrows()
        )
        more = f"; and {len(diverged) - MAX_LISTED} more" if len(diverged) > MAX_LISTED else ""
        lines.append(
            f"- **Diverged runs:** {len(diverged)} of {tr.n_done} (a loss was NaN or inf; the run "
            f"stopped and counts with the accuracy measured then): {listed}{more}."
        )
    init = tables.init
    if init is None:
        lines.append(
            "- **Monte Carlo:** no init store given (`--init`): the phase diagram shows the "
            "theory window only, and the link uses V'(q*) alone."
        )
    else:
        matched = int(np.isfinite(tables.link["mc_frac_stay"]).sum())
        lines.append(
            f"- **Monte Carlo:** init store `{init.path}` (depth {init.depth}, "
            f"{init.ds.sizes['net']} networks per cell); it has a cell of the same activation "
            f"and width for {matched} of the {len(tables.link)} configurations."
        )
    return lines


WHERE = {
    "inside": "inside the theory window",
    "below": "below the theory window",
    "above": "above the theory window",
    "none": "a shape without a clip level to vary, no window",
}
"""A clipped configuration's place against the theory window, in words."""


def _pairs_summary(pairs: pd.DataFrame) -> list[str]:
    lines = []
    for window, group in pairs.groupby("window", sort=False):
        diff, se = group["diff"].to_numpy(float), group["diff_se"].to_numpy(float)
        known = np.isfinite(se)
        better, worse = int((diff > 2 * se).sum()), int((diff < -2 * se).sum())
        lines.append(
            f"- **Clipped ({WHERE[window]}) against unclipped** at equal family, "
            f"sparsity, q*, width, depth and lr: the clipped one has the higher mean final test "
            f"accuracy in {int((diff > 0).sum())} of {len(group)} pairs; of the {int(known.sum())} "
            f"with a standard error (two seeds or more), higher by more than 2 in {better} and "
            f"lower by more than 2 in {worse}; median difference {np.nanmedian(diff):+.3f}."
        )
    return lines


def _training_summary(tables: TrainingTables) -> list[str]:
    accuracy = tables.accuracy
    if accuracy.empty:
        return []
    best = accuracy.loc[accuracy["test_acc"].idxmax()]
    worst = accuracy.loc[accuracy["test_acc"].idxmin()]
    lines = [
        f"- **Final test accuracy:** highest {best['test_acc']:.3f} ({_config(best)}), lowest "
        f"{worst['test_acc']:.3f} ({_config(worst)}), means over seeds."
    ]
    lines += _pairs_summary(tables.pairs)
    every = tables.correlations["width"].nunique() > 1
    for _, row in pooled(tables.correlations).iterrows():
        lines.append(
            f"- **{row['predictor']} against final test accuracy** (Spearman, "
            f"{row['n']} configurations{', every setting together' if every else ''}): "
            + (
                f"rho = {row['rho']:.2f}, p = {row['p_value']:.2g}."
                if np.isfinite(row["rho"])
                else "undefined (fewer than 3 values, or all equal)."
            )
        )
    sparsity = tables.sparsity
    if len(sparsity):
        gap = (sparsity["final_test"] - sparsity["target"]).abs()
        far = sparsity.loc[gap.idxmax()]
        spread = sparsity["layer_max"] - sparsity["layer_min"]
        lines.append(
            f"- **Hidden sparsity:** {int(sparsity['stays'].sum())} of {len(sparsity)} "
            f"configurations end within {SPARSITY_TOL} of their target (mean over layers, test "
            f"probe, runs that did not diverge); the farthest is {_config(far)}: "
            f"{far['final_test']:.3f} against {far['target']:.3g}. Spread over layers at the end "
            f"(largest minus smallest layer): median {spread.median():.3f}, largest "
            f"{spread.max():.3f}."
        )
    return lines


def _training_section(key: str, table: pd.DataFrame, store: str, init: str | None) -> str:
    command = f"python -m analysis.training {store} --table {key}" + (
        f" --init {init}" if init else ""
    )
    body = markdown_table(table) if not table.empty else "_(nothing in this store)_"
    return f"#### {TRAINING_TABLES[key]}\n\n    {command}\n\n{body}\n"


def build_training_report(
    tr: TrainingResults, store: str, out: Path, tables: TrainingTables | None = None
) -> str:
    """The markdown report of a training store (the tables of :mod:`analysis.training`, with the
    init store of ``tables``); draws its figures into ``figures/`` next to ``out``."""
    tables = TrainingTables(tr) if tables is None else tables
    init = None if tables.init is None else str(tables.init.path)
    sections = [
        _training_section(key, TRAINING_TABLE_VIEWS[key](tables), store, init)
        for key in TRAINING_TABLES
    ]
    summary = _training_summary(tables)
    figures = make_figures(tr, out.parent / "figures", tables)
    pngs = [p for p in figures if p.suffix == ".png"]
    lines = [
        f"# Training deep sparse networks initialised at the Edge of Chaos: `{store}`",
        "",
        *_partial_note(tr, store),
        "## Training",
        "",
        *_training_setup(tr, tables, store),
        "",
        "Reproduce: the sweep from the spec below, then (this draws the figures too)",
        "",
        f"    python -m analysis.report {store}" + (f" --init {init}" if init else ""),
        "",
        "### Summary",
        "",
        *(summary or ["_(no finished run to summarise)_"]),
        "",
        "Definitions (final epoch, diverged runs, theory window, hidden sparsity, the link): the "
        "docstring of `analysis.training`.",
        "",
        "### Figures",
        "",
        f"    python -m analysis.figures {store}" + (f" --init {init}" if init else ""),
        "",
        *[f"![{p.stem}]({Path(os.path.relpath(p, out.parent)).as_posix()})\n" for p in pngs],
        "### Tables",
        "",
        *sections,
    ]
    spec = tr.ds.attrs.get("spec", "")
    if spec:
        lines += ["## The sweep's spec", "", "```toml", spec.strip(), "```", ""]
    return "\n".join(lines)


def default_out(store: Path) -> Path:
    """``report.md`` next to the store."""
    return Path(store).resolve().parent / "report.md"


def main(argv: list[str] | None = None) -> int:
    parser = Parser(
        prog="python -m analysis.report", description="Markdown report of a results store."
    )
    parser.add_argument("results", help="results store (.zarr directory or .nc file)")
    parser.add_argument(
        "--out", type=Path, help="report file (default: report.md next to the store)"
    )
    parser.add_argument(
        "--init", help="training store only: the Monte Carlo store of the same activations"
    )
    add_n_jobs(parser)
    args = parser.parse_args(argv)
    out = writable_file(args.out or default_out(args.results))
    writable_dir(out.parent / "figures")
    results, tables = open_stores(args.results, args.init)
    if tables is None:
        text = build_report(results, args.results, out, Tables(results, n_jobs=args.n_jobs))
    else:
        text = build_training_report(results, args.results, out, tables)
    out.write_text(text)
    print(out)
    return 0


if __name__ == "__main__":
    run_cli(main)
