"""Phase-diagram tables, from theory and from Monte Carlo.

On the Edge of Chaos the diagram is sparsity x clip level per family (and q*):

- theory (``theory_phase_of``, from each cell's stored activation): sigma_w^2, sigma_b^2, V'(q*),
  R(0), the fraction of the active units that pass gradient at q* (``gp.gradient_fraction``), the
  GP's stable fixed points (``n_stable``; an upper one means bistability), and whether m lies in
  the theory window of :func:`analysis.instability.theory_window` (false where it is undefined);
- Monte Carlo (``mc_phase``, per width): the fraction of networks that stay at q* to full depth,
  the median escape depth, the mean final zero fraction and the MC window flag.

Off the Edge of Chaos (a sweep over sigma_w^2 x sigma_b^2 at fixed activation) the diagram is
(sigma_w^2, sigma_b^2): ``gp.variance_attractor`` iterates V from q0 to the attracting fixed point
q_inf and gives chi_1(q_inf) (ordered below 1, chaotic above) and V'(q_inf); ``sigma_mc`` reports the
measured ln of the mean tangent gain over the second half of the layers (an estimate of
ln chi_1(q_inf)), the
escaped fraction and the median final variance. (The variance and the gain are those of the
store's observable, q or v: :attr:`analysis._store.Results.observable`.)
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from simulate import gp

from ._cli import Parser, run_cli
from ._store import FINAL, Results, open_results
from ._table import markdown_table
from .instability import escape_table, stability_table, stable_fixed_points, theory_window


def theory_phase_of(results: Results) -> pd.DataFrame:
    """The GP quantities of the module docstring at every parameter point of the store (finished or
    not), from its stored activation and (sigma_w^2, sigma_b^2); empty unless the store is an
    Edge-of-Chaos sweep over sparsity."""
    if not results.eoc or "sparsity" not in results.ds.dims:
        return pd.DataFrame()
    rows = []
    for key in results.param_keys():
        act = results.activation(key)
        point = results.ds.sel(key)
        sigma_w2, sigma_b2 = float(point["sigma_w2"]), float(point["sigma_b2"])
        q_star, m = float(key["q_star"]), float(key["clip"])
        points = stable_fixed_points(act, sigma_w2, sigma_b2, q_star)
        family = str(key["family"])
        window = theory_window(family, float(key["sparsity"]), q_star, results.shapes.get(family))
        rows.append(
            {
                **key,
                "sigma_w2": sigma_w2,
                "sigma_b2": sigma_b2,
                "v_slope": float(gp.variance_slope(act, q_star, sigma_w2)),
                "r0": float(gp.correlation_map(act, 0.0, q_star, sigma_w2, sigma_b2)),
                "pass_of_active": float(gp.gradient_fraction(act, q_star)),
                "n_stable": len(points),
                "upper_q": max(points) if len(points) > 1 else math.nan,
                "in_window_theory": bool(window.contains(m)),
            }
        )
    return pd.DataFrame(rows)


def mc_phase(
    results: Results,
    stability: pd.DataFrame | None = None,
    escape: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Per finished cell: fraction staying at q*, median escape depth, final zero fraction, MC
    window flag. ``stability``, ``escape``: the store's tables, when already computed."""
    stability = stability_table(results) if stability is None else stability
    escape = escape_table(results) if escape is None else escape
    if stability.empty:
        return stability
    keys = [*results.param_dims, "width"]
    return stability.merge(escape[[*keys, "frac_escaped", "median_escape"]], on=keys)


def pivot(table: pd.DataFrame, value: str, **where) -> pd.DataFrame:
    """``value`` as a sparsity x clip table, rows restricted by ``where`` (e.g. family, width)."""
    sel = np.ones(len(table), bool)
    for key, val in where.items():
        sel &= (table[key] == val).to_numpy()
    return table[sel].pivot_table(index="sparsity", columns="clip", values=value, aggfunc="first")


def _log_mean(values: np.ndarray) -> float:
    """ln of the mean of the finite entries (NaN if none; -inf if they are all 0)."""
    finite = values[np.isfinite(values)]
    with np.errstate(divide="ignore"):
        return float(np.log(finite.mean())) if finite.size else math.nan


def sigma_mc(results: Results) -> pd.DataFrame:
    """Off-EoC store: per finished cell, ln of the mean tangent gain over the recorded layers
    l >= depth/2 (an estimate of ln chi_1 at the reached fixed point; the mean of log_gain would
    be biased low; NaN in a summary store), the escaped fraction, the median final variance of
    the networks that did not escape, and the theory's q_inf, ln chi_1 and V' at the fixed point
    reached from q0 (``gp.variance_attractor``)."""
    rows = []
    read = ("log_gain", "escape_layer", "variance", FINAL[results.observable])
    for cell in results.cells(read):
        theory = gp.variance_attractor(cell.act, cell.sigma_w2, cell.sigma_b2, cell.q0)
        escaped = cell.data["escape_layer"].values >= 0
        with np.errstate(over="ignore", divide="ignore"):  # chi_1 = 0 when q collapses to 0
            log_chi1 = float(np.log(theory["chi1"]))
            gain = (
                np.exp(
                    cell.log_gain.sel(layer=cell.layers[cell.layers >= results.depth // 2]).values
                )
                if results.per_layer
                else np.array([])
            )
        final = np.where(escaped, np.nan, cell.final(cell.observable).mean(axis=1))
        rows.append(
            {
                **cell.key,
                "log_mean_gain": _log_mean(gain),
                "frac_escaped": float(escaped.mean()),
                "median_final_q": (
                    float(np.median(final[np.isfinite(final)]))
                    if np.isfinite(final).any()
                    else math.nan
                ),
                "gp_q_inf": float(theory["q_inf"]),
                "gp_log_chi1": log_chi1,
                "gp_v_slope": float(theory["v_slope"]),
            }
        )
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = Parser(
        prog="python -m analysis.phase", description="Phase-diagram tables (theory and MC)."
    )
    parser.add_argument("results", help="results store (.zarr directory or .nc file)")
    parser.add_argument("--source", choices=("theory", "mc"), default="mc")
    args = parser.parse_args(argv)
    results = open_results(args.results)
    if not results.eoc:
        table = sigma_mc(results)
    elif args.source == "theory":
        table = theory_phase_of(results)
    else:
        table = mc_phase(results)
    print(markdown_table(table))
    return 0


if __name__ == "__main__":
    run_cli(main)
