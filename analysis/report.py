"""``python -m analysis.report RESULTS [--out FILE.md]``: a markdown report of a results store.

Default output: ``report.md`` next to the store, with the figures (drawn by
:mod:`analysis.figures`) in a ``figures/`` folder beside it, embedded by relative path. The report
states the tables (fit verdicts, escape statistics, width law, clip window theory vs Monte Carlo,
fixed-point jumps, phase tables), each under the command that prints it, and opens with a summary
of what they show. The report of a partial store (an interrupted sweep) opens with how many cells
are done, which are missing and the commands that finish the sweep. The outputs are checked before
any work, and every table is computed once (:class:`analysis.tables.Tables`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ._cli import Parser, run_cli, writable_dir, writable_file
from ._store import Results, open_results
from ._table import markdown_table
from .figures import make_figures
from .fit import ALPHA, EPS_SMALL
from .instability import SPARSITY_TOL, STAY_LEVEL, theory_window
from .tables import Tables

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
}
"""Report tables: key -> (heading, the ``python -m`` command that prints the table)."""


def _command(key: str, store: str) -> str:
    return "python -m " + TABLES[key][1].format(store=store)


def _section(key: str, table: pd.DataFrame, store: str, note: str = "") -> str:
    heading, _ = TABLES[key]
    body = markdown_table(table) if not table.empty else "_(nothing in this store)_"
    return f"### {heading}\n\n    {_command(key, store)}\n\n{note}{body}\n"


def _in_theory_window(fit: pd.DataFrame) -> pd.Series:
    """Clipped EoC cells whose m lies in the theory window of their (family, sparsity, q*)."""

    def inside(row) -> bool:
        if not math.isfinite(row["clip"]):
            return False
        low, high = theory_window(row["family"], row["sparsity"], row["q_star"])
        return low <= row["clip"] <= high

    return fit.apply(inside, axis=1).astype(bool)


def _fit_summary(fit: pd.DataFrame, eoc_sparsity: bool) -> list[str]:
    if fit.empty:
        return []
    lines = []
    if eoc_sparsity:
        inside = _in_theory_window(fit)
        claim = fit[inside & (fit["eps_1n"] <= EPS_SMALL)]
        edge = fit[inside & (fit["eps_1n"] > EPS_SMALL)]
        failed = claim[~claim["agrees"]]
        lines.append(
            f"- **Clipped, inside the theory window, first-order correction eps_1n <= {EPS_SMALL}:** "
            f"{int(claim['agrees'].sum())} of {len(claim)} cells agree with the GP + 1/N theory at "
            f"every layer (q mean, q spread, zero fraction, tangent gain; family-wise level "
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
    inside = fit[_in_theory_window(fit)] if eoc_sparsity else fit.iloc[:0]
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
    keys = [c for c in points.columns if c in fit.columns]
    onset = points.merge(fit, on=keys)
    return [
        f"- **Width law (unclipped):** median escape depth ~ N^beta with pooled beta = "
        f"{pooled['beta']:.3f}, 95% bootstrap interval [{pooled['beta_lo']:.3f}, "
        f"{pooled['beta_hi']:.3f}] ({int(pooled['n_widths'])} medians); the 1/N theory's onset "
        f"layer scales with beta = {pooled['beta_theory']:.3f} over the same widths (1/3 "
        "asymptotically). Median over the unclipped cells: onset layer l_pt = "
        f"{onset['onset_layer'].median():.0f}, first layer where the fit fails = "
        f"{onset['first_fail_layer'].median():.0f}, median escape depth = "
        f"{onset['median_escape'].median():.0f}."
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


def _wall_time(results: Results) -> str:
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


def _missing_lines(results: Results) -> list[str]:
    """The missing cells, one line per parameter point with its missing widths."""
    by_point: dict[tuple, list] = {}
    for key in results.missing():
        point = tuple((d, key[d]) for d in results.param_dims)
        by_point.setdefault(point, []).append(key["width"])
    lines = [
        "- "
        + " ".join(f"{d}={v:g}" if isinstance(v, float) else f"{d}={v}" for d, v in point)
        + ": width "
        + ", ".join(str(w) for w in widths)
        for point, widths in list(by_point.items())[:MAX_LISTED]
    ]
    if len(by_point) > MAX_LISTED:
        lines.append(f"- ... and {len(by_point) - MAX_LISTED} more parameter points")
    return lines


def _partial_note(results: Results, store: str) -> list[str]:
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
    eoc_sparsity = results.eoc and "sparsity" in results.ds.dims
    points, fits = tables.width_law
    sections = [_section("fit", tables.fit, store), _section("escape", tables.escape, store)]
    if eoc_sparsity:
        sections += [
            _section("width-law", fits, store),
            _section("width-points", points, store),
            _section("window", tables.window, store),
            _section("jumps", tables.jumps, store),
            _section("phase-theory", tables.phase_theory, store),
            _section("phase-mc", tables.phase_mc, store),
        ]
    if not results.eoc:
        sections.append(_section("sigma", tables.sigma, store))
    summary = [
        *_fit_summary(tables.fit, eoc_sparsity),
        *_width_summary(points, fits, tables.fit),
        *_window_summary(tables.window),
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
        f"{_wall_time(results)}.",
        "",
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
    args = parser.parse_args(argv)
    out = writable_file(args.out or default_out(args.results))
    writable_dir(out.parent / "figures")
    results = open_results(args.results)
    text = build_report(results, args.results, out)
    out.write_text(text)
    print(out)
    return 0


if __name__ == "__main__":
    run_cli(main)
