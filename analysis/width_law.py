"""The width law of the escape depth in its asymptotic regime (docs/theory.md, "The width law").

Near q* on the Edge of Chaos of an unclipped activation the conditional variance v (the Markov
state) is a noisy saddle node, x^{l+1} = x^l + kappa (x^l)^2 + sqrt(D / N) xi^l with x = v - q*
(``gp.saddle_node``), so the mean escape depth tends to

    T(N) = C kappa^{-2/3} (D / N)^{-1/3}      (``gp.asymptotic_depth``, C = ``gp.passage_constant``),

and at finite N it is the first-passage time of the diffusion with the whole drift V(v) - v and
noise, from v = q* to the band edge f q* (``gp.diffusion_depth``), which tends to the asymptotic law
as N grows and shows the pre-asymptotic local exponents.

Measured, per unclipped cell (:func:`width_law_table`): the mean escape depth over networks with
its standard error sd / sqrt(n) (NaN when a network did not escape within the depth: the mean of a
censored sample is not identified); per (family, sparsity, q*) the local exponents between adjacent
widths, beta = Delta ln T / Delta ln N with standard error sqrt(se_1^2 / T_1^2 + se_2^2 / T_2^2) /
Delta ln N, and the pooled exponent (weighted least squares of ln T on ln N, one intercept per group,
weights T^2 / se^2).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from simulate import gp

from ._cli import Parser, run_cli
from ._store import Results, open_results
from ._table import markdown_table
from .instability import ESCAPES, escape_times


def mean_escape(results: Results) -> pd.DataFrame:
    """Per unclipped cell on the Edge of Chaos: the mean escape depth, its standard error, the
    networks, the fraction escaped, and the theory's T: asymptotic and diffusion."""
    rows = []
    for cell in results.cells(ESCAPES, clip=math.inf):
        times, observed = escape_times(cell, results.depth)
        n = times.size
        censored = not observed.all()
        mean = math.nan if censored else float(times.mean())
        se = math.nan if censored or n < 2 else float(times.std(ddof=1) / math.sqrt(n))
        rows.append(
            {
                **cell.key,
                "group": " ".join(f"{d}={cell.key[d]}" for d in results.param_dims if d != "clip"),
                "n_nets": n,
                "frac_escaped": float(observed.mean()),
                "mean_escape": mean,
                "mean_se": se,
                "asymptotic": float(
                    gp.asymptotic_depth(cell.act, cell.sigma_w2, cell.q_ref, cell.width)
                ),
                "diffusion": gp.diffusion_depth(
                    cell.act,
                    cell.sigma_w2,
                    cell.sigma_b2,
                    cell.q_ref,
                    results.escape_factor,
                    float(cell.width),
                ),
            }
        )
    return pd.DataFrame(rows)


def local_exponents(table: pd.DataFrame) -> pd.DataFrame:
    """Per group and adjacent pair of widths (N_1, N_2): the geometric-mean width, the measured
    local exponent and its standard error (module docstring), and the diffusion theory's local
    exponent over the same pair (1/3 for the asymptotic law)."""
    rows = []
    for group, cells in table.sort_values("width").groupby("group", sort=False):
        for (_, one), (_, two) in zip(
            cells.iloc[:-1].iterrows(), cells.iloc[1:].iterrows(), strict=True
        ):
            span = math.log(two["width"] / one["width"])
            rows.append(
                {
                    "group": group,
                    **{d: one[d] for d in ("family", "sparsity", "q_star") if d in one},
                    "width_lo": int(one["width"]),
                    "width_hi": int(two["width"]),
                    "width_mid": math.sqrt(one["width"] * two["width"]),
                    "beta_local": math.log(two["mean_escape"] / one["mean_escape"]) / span,
                    "beta_se": math.hypot(
                        one["mean_se"] / one["mean_escape"], two["mean_se"] / two["mean_escape"]
                    )
                    / span,
                    "beta_diffusion": math.log(two["diffusion"] / one["diffusion"]) / span,
                }
            )
    return pd.DataFrame(rows)


def pooled_exponent(table: pd.DataFrame, min_width: float = 0.0) -> dict:
    """Weighted least squares of ln T on ln N over the cells of width >= ``min_width`` with a
    measured mean, one intercept per group, weights T^2 / se^2: (beta, se, cells)."""
    sel = table[(table["width"] >= min_width) & np.isfinite(table["mean_se"])]
    if sel["group"].nunique() == 0 or len(sel) <= sel["group"].nunique():
        return {"beta": math.nan, "beta_se": math.nan, "n_cells": len(sel)}
    groups = pd.get_dummies(sel["group"]).to_numpy(float)
    design = np.column_stack([np.log(sel["width"].to_numpy(float)), groups])
    y = np.log(sel["mean_escape"].to_numpy(float))
    w = (sel["mean_escape"] / sel["mean_se"]).to_numpy(float)  # 1 / se of ln T
    coef, *_ = np.linalg.lstsq(design * w[:, None], y * w, rcond=None)
    resid = (y - design @ coef) * w
    dof = len(y) - design.shape[1]
    scale = max(float(resid @ resid) / dof, 1.0) if dof > 0 else 1.0  # overdispersion, never < 1
    cov = np.linalg.inv((design * w[:, None]).T @ (design * w[:, None])) * scale
    return {"beta": float(coef[0]), "beta_se": float(math.sqrt(cov[0, 0])), "n_cells": len(sel)}


def width_law_table(
    results: Results, table: pd.DataFrame | None = None, local: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row per unclipped (family, sparsity, q*) group and one pooled: the pooled exponent
    over all widths and over the upper half of them (with standard errors), the largest width's
    local exponent, kappa, D, the prefactor C kappa^{-2/3} D^{-1/3} of T = prefactor N^{1/3}, and
    measured against predicted (asymptotic and diffusion) mean depth at the largest width.
    ``table``, ``local``: :func:`mean_escape` and :func:`local_exponents`, when already computed."""
    table = mean_escape(results) if table is None else table
    if table.empty:
        return table
    widths = np.sort(table["width"].unique())
    upper = widths[len(widths) // 2]
    local = local_exponents(table) if local is None else local
    rows = []
    for group, cells in [*table.groupby("group", sort=False), ("pooled", table)]:
        top = cells[cells["width"] == cells["width"].max()]
        row = {"group": group}
        if group != "pooled":
            cell = next(results.cells(ESCAPES, **{d: top.iloc[0][d] for d in results.param_dims}))
            kappa, noise = gp.saddle_node(cell.act, cell.sigma_w2, cell.q_ref)
            row |= {
                "kappa": kappa,
                "D": noise,
                "prefactor": float(gp.asymptotic_depth(cell.act, cell.sigma_w2, cell.q_ref, 1.0)),
            }
        every, high = pooled_exponent(cells), pooled_exponent(cells, upper)
        last = local[local["group"].isin(cells["group"])]
        last = last[last["width_hi"] == last["width_hi"].max()]
        row |= {
            "beta_all": every["beta"],
            "beta_all_se": every["beta_se"],
            f"beta_from_{upper:g}": high["beta"],
            f"beta_from_{upper:g}_se": high["beta_se"],
            "beta_local_top": float(last["beta_local"].mean()) if len(last) == 1 else math.nan,
            "beta_local_top_se": float(last["beta_se"].mean()) if len(last) == 1 else math.nan,
            "width_top": int(cells["width"].max()),
            "T_top": float(top["mean_escape"].mean()) if len(top) == 1 else math.nan,
            "T_top_se": float(top["mean_se"].mean()) if len(top) == 1 else math.nan,
            "T_asymptotic": float(top["asymptotic"].mean()) if len(top) == 1 else math.nan,
            "T_diffusion": float(top["diffusion"].mean()) if len(top) == 1 else math.nan,
        }
        rows.append(row)
    return pd.DataFrame(rows)


MIN_WIDTHS = 4
"""The report's width-law section and figure need unclipped Edge-of-Chaos cells at this many
widths at least (three local exponents)."""


def applies(results: Results) -> bool:
    """True for an Edge-of-Chaos store with unclipped cells at ``MIN_WIDTHS`` widths or more."""
    return (
        results.eoc
        and bool(np.isinf(results.ds["clip"].values).any())
        and results.ds.sizes["width"] >= MIN_WIDTHS
    )


def main(argv: list[str] | None = None) -> int:
    parser = Parser(
        prog="python -m analysis.width_law",
        description="The width law of the escape depth against its asymptotic theory.",
    )
    parser.add_argument("results", help="results store (.zarr directory or .nc file)")
    parser.add_argument("--table", choices=("summary", "local", "cells"), default="summary")
    args = parser.parse_args(argv)
    results = open_results(args.results)
    cells = mean_escape(results)
    if args.table == "cells":
        table = cells
    elif args.table == "local":
        table = local_exponents(cells) if len(cells) else cells
    else:
        table = width_law_table(results, cells)
    print(markdown_table(table))
    return 0


if __name__ == "__main__":
    run_cli(main)
