"""Synthetic results stores in the schema of ``simulate.grid`` (``simulate.schema.synthetic_store``),
with known answers planted: a plain module the test modules import (its own tests are
tests/test_analysis_synthetic.py).

The trajectories are drawn per layer from the distributions the theory predicts (independent
across layers: the analysis tests layer by layer, so correlations along depth do not matter to it),
then optionally perturbed: a shifted mean from some layer on, planted escape layers, or networks
moved to another fixed point.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import xarray as xr

from analysis._store import OBSERVED, Cell, Results
from analysis.theory import cell_theory
from simulate import gp, schema
from simulate.engines.run import summaries

PARAM_DIMS = ("family", "sparsity", "clip", "q_star")


def theory_sample(
    cell: Cell, depth: int, c0: float, rng: np.random.Generator, observable: str = "q"
) -> dict:
    """Trajectories drawn from the predicted per-layer distributions: the variance ``observable``
    (q, or the conditional variance v) and zero_frac normal with the 1/N mean and spread; the
    correlation (corr or v_corr) normal around the GP R-iterate with spread 0.5/sqrt(N); the gain
    (log_gain or v_log_gain) lognormal with mean chi_1 and log-spread 1/sqrt(N)."""
    theory = cell_theory(cell, depth, c0)
    nets = cell.data.sizes["net"]
    shape2 = (nets, depth + 1, 2)

    def normal(mean, sd, shape):
        return mean + sd * rng.standard_normal(shape)

    col = (slice(None), None)
    sd_log = 1.0 / math.sqrt(cell.width)  # lognormal gain with mean chi_1
    log_chi1 = np.log(np.nan_to_num(theory["chi1"].values, nan=1.0))
    variance, corr, gain = OBSERVED[observable]
    mean, sd = theory[f"{observable}_mean"].values[col], theory[f"{observable}_sd"].values[col]
    return {
        variance: normal(mean, sd, shape2),
        "zero_frac": normal(theory["zf_mean"].values[col], theory["zf_sd"].values[col], shape2),
        corr: normal(theory["corr"].values, 0.5 / math.sqrt(cell.width), shape2[:2]),
        gain: normal(log_chi1 - sd_log**2 / 2, sd_log, shape2[:2]),
    }


Perturb = Callable[[Cell, dict, np.random.Generator], None]


def _outputs(values: dict, nets: int, depth: int) -> SimpleNamespace:
    """The planted values as the engines' outputs (what they do not hold is NaN), for
    ``summaries``."""
    missing = np.full((nets, depth + 1, 2), np.nan)
    fields = ("q", "v", "zero_frac", "log_gain", "v_log_gain", "escape_layer")
    return SimpleNamespace(
        **{
            name: values.get(name, missing[..., 0] if "gain" in name else missing)
            for name in fields
        }
    )


def make_store(
    families=("crelu",),
    sparsities=(0.8,),
    clips=(1.0, math.inf),
    q_stars=(1.0,),
    widths=(100, 1000),
    nets=64,
    depth=40,
    seed=0,
    perturb: Perturb | None = None,
    done: bool | np.ndarray = True,
    observable: str = "q",
) -> xr.Dataset:
    """A store in the sweep's schema (``schema.synthetic_store``: coordinates, the real per-cell
    theory and activation descriptions, attributes) whose every cell marked in ``done`` is drawn by
    :func:`theory_sample`, then ``perturb``-ed in place (``perturb(cell, values, rng)`` may edit
    values and set ``values["escape_layer"]``); the other cells keep the schema's fill values.
    After an escape the trajectory is NaN, as in the real stores, and the per-network summaries
    (final and mean values) are the sweep's own (``simulate.engines.run.summaries``). ``observable="v"``: the cells hold
    v, v_corr and v_log_gain, with q, corr and log_gain NaN (a sparse-engine store)."""
    ds = schema.synthetic_store(
        family=list(families),
        sparsity=list(sparsities),
        clip=list(clips),
        q_star=list(q_stars),
        width=list(widths),
        nets=nets,
        depth=depth,
    )
    ds["cell_done"][...] = np.broadcast_to(done, ds["cell_done"].shape)
    ds.attrs["escape_on"] = observable  # the variance the planted values (and escapes) are on
    results = Results(ds)
    rng = np.random.default_rng(seed)
    for cell in results.cells():
        values = theory_sample(cell, depth, ds.attrs["c0"], rng, observable)
        values[OBSERVED[observable][2]][:, 0] = np.nan
        values["escape_layer"] = np.full(nets, -1)
        if perturb is not None:
            perturb(cell, values, rng)
        for net, layer in enumerate(values["escape_layer"]):
            if layer >= 0:
                for name in ("zero_frac", *OBSERVED[observable]):
                    values[name][net, layer + 1 :] = np.nan
        values |= summaries(_outputs(values, nets, depth))
        for name, value in values.items():
            target = ds[name].loc[cell.key]
            ds[name].loc[cell.key] = np.reshape(value, target.shape)  # corr: one pair
    return ds


def plant_escapes(times_for: Callable[[Cell, np.random.Generator], np.ndarray]) -> Perturb:
    """A perturbation that makes unclipped cells escape (upwards) at ``times_for(cell, rng)``
    (entries > depth mean: never)."""

    def perturb(cell: Cell, values: dict, rng: np.random.Generator) -> None:
        if cell.act.clipped:
            return
        variance = values["q" if "q" in values else "v"]
        depth = variance.shape[1] - 1
        times = np.asarray(times_for(cell, rng))
        escaped = times <= depth
        values["escape_layer"] = np.where(escaped, times, -1)
        for net in np.flatnonzero(escaped):
            variance[net, times[net]] = 30.0 * cell.q_ref

    return perturb


def plant_jumps(n_jump: int, from_layer: int) -> Perturb:
    """A perturbation for every clipped cell whose GP map has a stable fixed point above q*: from
    ``from_layer`` on, ``n_jump`` networks sit at that point (its variance and GP sparsity), the
    others at q* (within 1%), whatever the 1/N theory (invalid so close to the bifurcation) says."""

    def perturb(cell: Cell, values: dict, rng: np.random.Generator) -> None:
        act = cell.act
        points = [
            p.q
            for p in gp.fixed_points(act, cell.sigma_w2, cell.sigma_b2)
            if p.kind == "stable" and p.q > 1.5 * cell.q_ref
        ]
        if not act.clipped or not points:
            return
        values["q"][:n_jump, from_layer:] = points[0]
        values["zero_frac"][:n_jump, from_layer:] = gp.sparsity(act, points[0])
        stay = values["q"][n_jump:, from_layer:]
        stay[:] = cell.q_ref * (1.0 + 0.01 * rng.standard_normal(stay.shape))
        values["zero_frac"][n_jump:, from_layer:] = cell.target_sparsity

    return perturb
