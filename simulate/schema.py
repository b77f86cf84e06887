"""The schema of a sweep store, defined once: dimensions, variables, dtypes, fills, units, long names
and dataset attributes. The writer (``simulate.store``, ``simulate.grid``), the reader (``analysis``)
and the tests' synthetic stores (:func:`synthetic_store`) all take it from here.

Dimensions. A sweep has parameter axes P (``Spec.param_dims``: ``family, sparsity | tau, clip,
q_star`` on the Edge of Chaos; ``family, tau, clip, sigma_w2, sigma_b2`` off it), then ``width``;
a (parameter cell, width) pair is a *cell*. Inside a cell: ``net``; ``layer`` (the recorded layers,
below); ``input`` (the B = ``inputs`` inputs, b = 0..B-1); ``pair`` (the B(B-1)/2 pairs a < b in
row-major order (0,1), (0,2), ..., (1,2), ...; coordinate ``pair`` = 0..B(B-1)/2-1, with the
non-index coordinates ``input_a(pair)``, ``input_b(pair)``; size 1 for the default B = 2, size 0
for B = 1). The activation descriptions run along ``knot`` (as many as the largest K of the sweep).

Recorded layers (``record``, ``record_every`` = k). ``record = "layers"``: the ``layer`` coordinate
holds the true layer numbers 0, k, 2k, ... and always the last layer ``depth`` (k = 1: every layer,
0 = the inputs' first pre-activations). ``record = "summary"``: no ``layer`` dimension, none of the
per-layer variables and no ``q_gp``; the per-network summaries and ``escape_layer`` only.

Per-layer variables (``record = "layers"``), at the recorded layers; NaN after a network's escape
layer, and NaN where the engine does not compute them (``attrs["engine"]``: the sparse engine, which
``auto`` picks where it is faster, computes v, v_corr, zero_frac, v_log_gain but not q, corr,
log_gain):

    q(P, width, net, layer, input)          float32   empirical variance (1/N) sum_i (h_bi^l)^2
    v(P, width, net, layer, input)          float32   conditional variance sigma_w^2 (1/N)
                                                      sum_i phi(h_bi^(l-1))^2 + sigma_b^2 (layer 0:
                                                      the input kernel); E[v^l | v^(l-1)] = V(v^(l-1))
    zero_frac(P, width, net, layer, input)  float32   fraction of units with phi(h_bi^l) = 0
    corr(P, width, net, layer, pair)        float32   empirical correlation of inputs a, b of the pair
    v_corr(P, width, net, layer, pair)      float32   conditional correlation K_ab / sqrt(K_aa K_bb)
    log_gain(P, width, net, layer)          float32   tangent gain ln(|t^l|^2 / |t^(l-1)|^2), input 0
    v_log_gain(P, width, net, layer)        float32   ln(K_tt^l / K_tt^(l-1)), its conditional variance

Per-network summaries (every ``record``), computed by the engine run from every layer (so exact
whatever k), with r = escape_layer if the network escaped, else depth (the last layer reached):

    escape_layer(P, width, net)             int32     first layer where some input's escape
                                                      variance (attrs escape_on: v or q) leaves
                                                      [q_ref / f, f q_ref]; -1 never, -2 not computed
    final_v, final_q(P, width, net, input)  float32   v^r, q^r
    final_zero_frac(P, width, net, input)   float32   zero_frac^r
    mean_zero_frac(P, width, net, input)    float32   (1 / (r+1)) sum_{l=0..r} zero_frac^l
    mean_log_gain(P, width, net)            float32   mean of log_gain^l over l = 1..r, the layers
                                                      where the tangent died (-inf) left out; NaN if
                                                      none is left (r = 0)
    mean_v_log_gain(P, width, net)          float32   the same for v_log_gain

Per cell and per parameter cell:

    cell_done(P, width)                     bool      the cell's values above are written
    cell_version(P, width)                  <U64      coordinate: the numerics that wrote them
                                                      (:func:`numerics_version`; "" not recorded)
    tau, sigma_w2, sigma_b2 (P)             float64   those that are not axes
    q_gp(P, layer)                          float64   GP iterate q^{l+1} = V(q^l) from q0, at the
                                                      recorded layers
    v_slope(P), gp_sparsity(P)              float64   V'(q_ref) and GP sparsity at q_ref
    act_knots(P, knot), act_values(P, knot) float64   the activation's knots and values, NaN-padded
    act_left_slope(P), act_right_slope(P)   float64   its slopes left of the first, right of the last knot

with q_ref = q* on the Edge of Chaos and q0 off it. Every cell variable is stored as one chunk per
cell, so reading a cell reads one chunk per variable.

Inputs (``attrs``: ``inputs`` = B, ``input_corr``). Layer 0 has rows N(0, K0): K0 = q0 C with
C_ab = input_corr (a float; then also ``attrs["c0"]``) or the listed pair correlations; or, for
``input_corr = "images:NAME"``, the first B test images X of that dataset (normalised as
``simulate.train.data.load_dataset`` does), K0 = (sigma_w^2 / d) X X^T + sigma_b^2. Either way the
layer-0 conditional variance and correlation are ``v`` and ``v_corr`` at layer 0.

A training sweep (``experiment = "train"``, :class:`~simulate.spec.TrainSpec`) has the parameter
axes ``family, sparsity | tau, clip, q_star`` (on the Edge of Chaos) and, when the sweep leaves it
at the same q*, ``chi1``; then ``width, depth, lr, run_seed``: one training run per cell. Inside a cell: ``epoch`` (0 = at initialisation, then after
each pass over the training set), ``probe`` ("train", "test": the first ``probe_size`` images of each
set), ``layer`` (hidden layer 1 to the largest depth of the sweep; NaN beyond a run's own depth):

    train_loss, test_loss(C, epoch)          float32   mean cross-entropy on the whole set
    train_acc, test_acc(C, epoch)            float32   accuracy on the whole set
    act_sparsity(C, epoch, probe, layer)     float32   fraction of exact zeros of phi(h^l)
    q(C, epoch, probe, layer)                float32   mean square pre-activation of layer l
    diverged(C)                              bool      a loss was NaN or inf: the run stopped
    diverged_epoch(C)                        int32     the epoch it stopped at (-1 never, -2 not run)

(C = the cell axes; epochs after ``diverged_epoch`` are NaN), and per parameter cell the same
variables as a Monte Carlo sweep but ``q_gp`` (the network starts at q^1 = q*, where the GP iterate
stays). ``attrs["experiment"]`` tells the two kinds of store apart.

The activation of a parameter cell is the
continuous piecewise-linear function through (act_knots, act_values) with the two outer slopes
(:func:`activation_at` rebuilds it); ``family`` is its label (a named family, or a user shape's
name). Cells not yet computed hold the fill values (NaN, -2 for ``escape_layer``) and
``cell_done = False``: readers select on ``cell_done``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import xarray as xr

from simulate import engines, gp
from simulate.activations import Activation
from simulate.numba_cache import PACKAGE, STAMP, source_stamp
from simulate.spec import Params, Spec, SweepCell, TrainSpec, cells, resolve
from simulate.train.run import PROBES


@dataclass(frozen=True)
class Variable:
    """A stored variable: its dimensions after the leading axes (P and width for a cell variable,
    P for a parameter variable), dtype, meaning, units and the value of what is not written yet."""

    dims: tuple[str, ...]
    dtype: str
    long_name: str
    units: str = "1"
    fill: float | int | bool = math.nan

    @property
    def attrs(self) -> dict[str, str]:
        return {"long_name": self.long_name, "units": self.units}


CELL_VARIABLES = {
    "q": Variable(
        ("net", "layer", "input"),
        "float32",
        "empirical pre-activation variance (1/N) sum_i (h_i^l)^2",
    ),
    "corr": Variable(
        ("net", "layer", "pair"),
        "float32",
        "empirical correlation of the pre-activations of the pair's inputs input_a, input_b",
    ),
    "zero_frac": Variable(
        ("net", "layer", "input"),
        "float32",
        "fraction of units with phi(h_i^l) = 0 (empirical sparsity)",
    ),
    "log_gain": Variable(
        ("net", "layer"),
        "float32",
        "per-layer tangent gain ln(|t^l|^2 / |t^(l-1)|^2) along input 0 (NaN at "
        "layer 0; -inf where the tangent dies)",
    ),
    "v": Variable(
        ("net", "layer", "input"),
        "float32",
        "conditional variance of layer l given layer l-1: sigma_w^2 (1/N) sum_j phi(h_j^{l-1})^2 + "
        "sigma_b^2 (layer 0: the input kernel); E[v^l | v^{l-1}] = V(v^{l-1}) exactly",
    ),
    "v_corr": Variable(
        ("net", "layer", "pair"),
        "float32",
        "conditional correlation of the pair's pre-activations given the previous layer",
    ),
    "v_log_gain": Variable(
        ("net", "layer"),
        "float32",
        "ln(K_tt^l / K_tt^(l-1)): gain of the tangent's conditional variance (NaN at layer 0)",
    ),
    "escape_layer": Variable(
        ("net",),
        "int32",
        "first layer where some input's escape variance (attrs escape_on: v or q) leaves "
        "[q_ref / escape_factor, q_ref * escape_factor] (-1: never; -2: cell not computed)",
        fill=-2,
    ),
    "final_v": Variable(
        ("net", "input"), "float32", "v at the last layer reached (escape layer, else depth)"
    ),
    "final_q": Variable(
        ("net", "input"), "float32", "q at the last layer reached (escape layer, else depth)"
    ),
    "final_zero_frac": Variable(
        ("net", "input"),
        "float32",
        "zero_frac at the last layer reached (escape layer, else depth)",
    ),
    "mean_zero_frac": Variable(
        ("net", "input"), "float32", "mean of zero_frac over the layers 0..last reached"
    ),
    "mean_log_gain": Variable(
        ("net",),
        "float32",
        "mean of the finite log_gain over the layers 1..last reached (NaN: none)",
    ),
    "mean_v_log_gain": Variable(
        ("net",),
        "float32",
        "mean of the finite v_log_gain over the layers 1..last reached (NaN: none)",
    ),
}
"""Per cell (after the axes P, width): what the engine measures (the module docstring). Its
per-layer variables (those with a ``layer`` dim) are left out of a ``record = "summary"`` store."""

TRAIN_CELL_VARIABLES = {
    "train_loss": Variable(("epoch",), "float32", "mean softmax cross-entropy on the training set"),
    "test_loss": Variable(("epoch",), "float32", "mean softmax cross-entropy on the test set"),
    "train_acc": Variable(("epoch",), "float32", "accuracy on the training set"),
    "test_acc": Variable(("epoch",), "float32", "accuracy on the test set"),
    "act_sparsity": Variable(
        ("epoch", "probe", "layer"),
        "float32",
        "fraction of exact zeros of phi(h^l) on the probe batch (hidden sparsity)",
    ),
    "q": Variable(
        ("epoch", "probe", "layer"),
        "float32",
        "mean square pre-activation mean_{b,i} (h^l_bi)^2 on the probe batch",
    ),
    "diverged": Variable(
        (), "bool", "a loss was NaN or inf: the run stopped at diverged_epoch", fill=False
    ),
    "diverged_epoch": Variable(
        (),
        "int32",
        "epoch whose loss was NaN or inf (-1: none; -2: cell not computed); later epochs are NaN",
        fill=-2,
    ),
}
"""Per cell of a training sweep (after the axes P, width, depth, lr, run_seed): one training run,
the arrays of :func:`simulate.train.run.train_network` (the ``layer`` axis padded with NaN to the
sweep's largest depth)."""

CELL_VARIABLES_OF = {"init": CELL_VARIABLES, "train": TRAIN_CELL_VARIABLES}
"""The cell variables of each experiment (a store's ``attrs["experiment"]``, init if absent)."""

CELL_DONE = Variable(
    (), "bool", "the cell's values are written (readers select on this)", fill=False
)
"""``cell_done(P, width)``."""

CELL_VERSION = Variable(
    (),
    "<U64",
    "the numerics that computed the cell: engine and source hash "
    "(simulate.schema.numerics_version; '': not recorded)",
    fill="",
)
"""``cell_version(P, width)``, a coordinate beside ``cell_done``: :func:`numerics_version` of
each cell, written with the cell. Stores written before it have no such coordinate, or "" in the
cells they finished before it was added; a resumed sweep refuses to mix recorded versions
(``simulate.grid``) and the report names them."""


def numerics_version(engine: str) -> str:
    """What ``cell_version`` records for a cell computed by ``engine`` (an engine's name, or
    ``train`` for a training run): the name and the first 12 hex digits of a hash of its sources.
    An engine: :data:`simulate.numba_cache.STAMP`, the hash of every file of the package that
    defines Numba kernels (the one the kernel cache follows). ``train``: the hash of
    ``simulate/train/*.py``. Neither covers the glue that calls them (``simulate.grid``, the
    engines' Python wrappers)."""
    stamp = _train_stamp() if engine == "train" else STAMP
    return f"{engine} {stamp[:12]}"


def cell_engine(spec: Spec | TrainSpec, cell: SweepCell) -> str:
    """The name of the engine that computes ``cell``: the one ``spec.engine`` picks for it
    (:func:`simulate.engines.select_engine`), or ``train``."""
    if spec.experiment == "train":
        return "train"
    return engines.select_engine(
        spec.engine, cell.activation, spec.inputs, cell.width, spec.escape_on
    ).name


@cache
def _train_stamp() -> str:
    return source_stamp(sorted((PACKAGE / "train").glob("*.py")))


PARAM_VARIABLES = {
    "tau": Variable((), "float64", "threshold tau of the activation"),
    "sigma_w2": Variable((), "float64", "weight variance sigma_w^2 (W_ij ~ N(0, sigma_w^2 / N))"),
    "sigma_b2": Variable((), "float64", "bias variance sigma_b^2"),
    "q_gp": Variable(("layer",), "float64", "GP variance iterate q^{l+1} = V(q^l), q^0 = q0"),
    "v_slope": Variable((), "float64", "slope V'(q_ref) of the GP variance map"),
    "gp_sparsity": Variable((), "float64", "GP sparsity P(phi(sqrt(q_ref) z) = 0)"),
    "act_knots": Variable(
        ("knot",), "float64", "knots of the piecewise-linear activation (NaN: no such knot)"
    ),
    "act_values": Variable(("knot",), "float64", "activation values phi(knot) (NaN: no such knot)"),
    "act_left_slope": Variable((), "float64", "activation slope left of the first knot"),
    "act_right_slope": Variable((), "float64", "activation slope right of the last knot"),
}
"""Per parameter cell (after the axes P): the network's variances, the GP theory, the activation."""

AXIS_VARIABLES = ("tau", "sigma_w2", "sigma_b2")
"""Parameter variables that are not stored when they are axes of the sweep."""

_NOT_IN_TRAINING = ("q_gp",)
"""Parameter variables a training store does not have: its networks start at q^1 = q*."""

COORDINATES = {
    "family": "activation family (crelu: clipped shifted ReLU; cst: clipped soft thresholding; "
    "else a user shape's name)",
    "sparsity": "target GP sparsity at q*",
    "tau": "threshold tau of the activation",
    "clip": "clip level m (inf: unclipped)",
    "q_star": "fixed-point variance q* of the Edge of Chaos",
    "sigma_w2": "weight variance sigma_w^2 (W_ij ~ N(0, sigma_w^2 / N))",
    "sigma_b2": "bias variance sigma_b^2",
    "width": "hidden width N",
    "net": "network index within a cell",
    "layer": "layer index l (0: the inputs' first pre-activations); the recorded layers",
    "input": "input index b",
    "pair": "pair index p of the inputs a < b (row-major)",
    "input_a": "first input a of the pair",
    "input_b": "second input b of the pair",
    "knot": "knot index of the activation description",
}
"""Long names of the coordinates (all with units ``1``)."""

TRAIN_COORDINATES = {
    **{dim: COORDINATES[dim] for dim in ("family", "sparsity", "tau", "clip", "q_star", "width")},
    "chi1": "chi_1 at q* (1: the Edge of Chaos; the same q* and sparsity off it)",
    "depth": "number of hidden layers L",
    "lr": "peak learning rate",
    "run_seed": "training seed (the run's stream: simulate.grid.cell_seed)",
    "epoch": "epoch (0: at initialisation; e: after e passes over the training set)",
    "probe": "probe batch: the first probe_size images of the training or the test set",
    "layer": "hidden layer l (1: h^1 = W^1 x + b^1; values are NaN beyond a run's depth)",
    "knot": COORDINATES["knot"],
}
"""Long names of the coordinates of a training store (all with units ``1``)."""


def _summary(spec: Spec | TrainSpec) -> bool:
    """A Monte Carlo store without per-layer records (``record = "summary"``)."""
    return spec.experiment == "init" and spec.record == "summary"


def cell_variables(spec: Spec | TrainSpec) -> dict[str, Variable]:
    """The cell variables of the sweep's experiment (without the per-layer ones in a summary
    store)."""
    return stored_variables(spec.experiment, "summary" if _summary(spec) else "layers")


def stored_variables(experiment: str, record: str = "layers") -> dict[str, Variable]:
    """The cell variables of a store of ``experiment`` (``attrs["experiment"]``) with ``record``
    (``attrs["record"]``; "summary": without the per-layer variables)."""
    variables = CELL_VARIABLES_OF[experiment]
    if record == "summary":
        return {name: var for name, var in variables.items() if "layer" not in var.dims}
    return variables


def param_variables(spec: Spec | TrainSpec) -> tuple[str, ...]:
    """The per-parameter variables of this sweep: tau / sigma_w2 / sigma_b2 unless they are axes
    (and no ``q_gp`` in a training sweep or a summary store)."""
    dropped = (*spec.param_dims, *(_NOT_IN_TRAINING if spec.experiment == "train" else ()))
    if _summary(spec):
        dropped += ("q_gp",)
    return tuple(v for v in PARAM_VARIABLES if v not in dropped)


def array_names(spec: Spec | TrainSpec) -> tuple[str, ...]:
    """Every array of the store of ``spec``: coordinates, parameter and cell variables, cell_done."""
    pair_coords = ("input_a", "input_b") if spec.experiment == "init" else ()
    return (
        *spec.cell_dims,
        *dim_lengths(spec),
        *pair_coords,
        "knot",
        *param_variables(spec),
        *cell_variables(spec),
        "cell_done",
    )


def dim_lengths(spec: Spec | TrainSpec) -> dict[str, int]:
    """Lengths of the dimensions inside a cell (all but ``knot``)."""
    if spec.experiment == "train":
        return {"epoch": spec.epochs + 1, "probe": len(PROBES), "layer": max(spec.depth)}
    layers = {"layer": n_recorded(spec)} if not _summary(spec) else {}
    b = spec.inputs
    return {"net": spec.nets, **layers, "input": b, "pair": b * (b - 1) // 2}


def n_recorded(spec: Spec) -> int:
    """``len(spec.recorded_layers)``, counted without listing them: sizing a sweep of depth 1e9
    (to refuse it) must not build a tuple of a billion layers."""
    return spec.depth // spec.record_every + 1 + (spec.depth % spec.record_every > 0)


def param_dims(ds: xr.Dataset) -> tuple[str, ...]:
    """The parameter axes P of a store, in storage order."""
    return tuple(d for d in ds["cell_done"].dims if d != "width")


def n_knots(params: Params) -> int:
    """Length of the ``knot`` axis: the most knots of any activation of the sweep."""
    return max(act.knots.size for act in params.acts.flat)


def param_values(spec: Spec, params: Params) -> dict[str, np.ndarray]:
    """Per parameter cell: tau / sigma_w2 / sigma_b2 (those not on an axis), the GP columns

        q_gp[..., l] = q^l with q^0 = q0, q^{l+1} = V(q^l);  v_slope = V'(q_ref);
        gp_sparsity = P(phi(sqrt(q_ref) z) = 0),

    with q_ref = q* on the Edge of Chaos and q0 off it, and the activation's description (knots and
    values NaN-padded to ``n_knots``, outer slopes). The theory is evaluated for all cells of one
    piece structure at once (``Activation.stack``); a sweep may mix several structures."""
    shape, k = spec.param_shape, n_knots(params)
    q_ref = params.q_star if spec.eoc else params.q0
    wanted = param_variables(spec)
    out = {
        "tau": params.tau,
        "sigma_w2": params.sigma_w2,
        "sigma_b2": params.sigma_b2,
        "q_gp": np.empty((*shape, len(spec.recorded_layers))) if "q_gp" in wanted else None,
        "v_slope": np.empty(shape),
        "gp_sparsity": np.empty(shape),
        "act_knots": np.full((*shape, k), np.nan),
        "act_values": np.full((*shape, k), np.nan),
        "act_left_slope": np.empty(shape),
        "act_right_slope": np.empty(shape),
    }
    groups: dict[tuple[int, int], list] = {}  # cells sharing a piece structure, theory in one go
    for i in np.ndindex(shape):
        act = params.acts[i]
        groups.setdefault((act.knots.size, act.pieces.slope.size), []).append(i)
    for members in groups.values():
        index = tuple(np.array(members).T)
        act = Activation.stack(params.acts[i] for i in members)
        sw2, sb2 = params.sigma_w2[index], params.sigma_b2[index]
        if "q_gp" in wanted:
            q_gp = gp.iterate_variance(act, params.q0[index], sw2, sb2, spec.depth)
            out["q_gp"][index] = q_gp[list(spec.recorded_layers)].T
        out["v_slope"][index] = gp.variance_slope(act, q_ref[index], sw2, sb2)
        out["gp_sparsity"][index] = gp.sparsity(act, q_ref[index])
    for i in np.ndindex(shape):
        act = params.acts[i]
        out["act_knots"][i][: act.knots.size] = act.knots
        out["act_values"][i][: act.values.size] = act.values
        out["act_left_slope"][i] = act.left_slope
        out["act_right_slope"][i] = act.right_slope
    return {name: out[name] for name in wanted}


def attributes(spec: Spec | TrainSpec) -> dict[str, Any]:
    """The dataset attributes a store's readers rely on: the experiment, the spec as TOML and the
    run constants. (``simulate.grid`` adds provenance: versions, git commit, creation time and wall
    time; for training, the dataset's sizes and checksum.)"""
    if spec.experiment == "train":
        sizes = {k: getattr(spec, k) for k in ("train_size", "test_size") if getattr(spec, k)}
        return {
            "title": "Training sweep of deep networks initialised at the Edge of Chaos "
            "(simulate.grid --experiment train)",
            "experiment": "train",
            "spec": spec.to_toml(),
            "seed": spec.seed,
            "dataset": spec.dataset,
            **sizes,
            "epochs": spec.epochs,
            "optimizer": spec.optimizer,
            "schedule": spec.schedule,
            "warmup": spec.warmup,
            "batch_size": spec.batch_size,
            "output_gain": spec.output_gain,
            "probe_size": spec.probe_size,
            "q_ref": "q_star",
        }
    return {
        "title": "Monte Carlo sweep of deep random networks (simulate.grid)",
        "experiment": "init",
        "spec": spec.to_toml(),
        "seed": spec.seed,
        "depth": spec.depth,
        "nets": spec.nets,
        "q0": spec.q0,
        "q_ref": "q_star" if spec.eoc else "q0",
        "inputs": spec.inputs,
        "input_corr": list(corr) if isinstance(corr := spec.input_corr, tuple) else corr,
        **({"c0": corr} if isinstance(corr, float) else {}),
        "escape_factor": spec.escape_factor,
        "escape_on": spec.escape_on,
        "engine": spec.engine,
        "record": spec.record,
        "record_every": spec.record_every,
    }


def coordinates(spec: Spec | TrainSpec, knots: int) -> dict[str, np.ndarray]:
    """Values of every dimension of the store."""
    axes = {dim: np.asarray(values) for dim, values in spec.coords().items()}
    n = dim_lengths(spec)
    if spec.experiment == "train":
        inner = {
            "epoch": np.arange(n["epoch"]),
            "probe": np.asarray(PROBES),
            "layer": np.arange(1, n["layer"] + 1),
        }
    else:
        inner = {dim: np.arange(length) for dim, length in n.items()}
        if "layer" in n:
            inner["layer"] = np.asarray(spec.recorded_layers)
    return {**axes, **inner, "knot": np.arange(knots)}


def skeleton(spec: Spec | TrainSpec, values: dict[str, np.ndarray], attrs: dict) -> xr.Dataset:
    """The store without its cell variables: coordinates, the parameter variables ``values`` (from
    :func:`param_values`), ``cell_done = False`` and ``attrs``."""
    coords = coordinates(spec, values["act_knots"].shape[-1])
    long_names = TRAIN_COORDINATES if spec.experiment == "train" else COORDINATES
    ds = xr.Dataset(
        {
            name: (
                (*spec.param_dims, *PARAM_VARIABLES[name].dims),
                values[name],
                PARAM_VARIABLES[name].attrs,
            )
            for name in param_variables(spec)
        },
        coords={
            dim: (dim, values, {"long_name": long_names[dim], "units": "1"})
            for dim, values in coords.items()
        },
        attrs=attrs,
    )
    if "pair" in coords:
        input_a, input_b = np.triu_indices(spec.inputs, k=1)
        for name, value in (("input_a", input_a), ("input_b", input_b)):
            ds.coords[name] = ("pair", value, {"long_name": COORDINATES[name], "units": "1"})
    ds["cell_done"] = (spec.cell_dims, np.zeros(spec.cell_shape, dtype=bool), CELL_DONE.attrs)
    return ds


def cell_shape(spec: Spec | TrainSpec, name: str) -> tuple[int, ...]:
    """Shape of the cell variable ``name`` over all of its dimensions (the cell axes, then its own)."""
    lengths = dim_lengths(spec)
    return (*spec.cell_shape, *(lengths[d] for d in cell_variables(spec)[name].dims))


def activation_at(ds: xr.Dataset, where: dict | tuple[int, ...] | None = None) -> Activation:
    """The activation of one parameter cell, rebuilt from its stored description:

        Activation.piecewise_linear(act_knots, act_values, act_left_slope, act_right_slope,
                                    name=family)

    (the NaN padding dropped). ``where``: a dict of coordinate labels (``ds.sel``, e.g.
    ``{"family": "cst", "sparsity": 0.8, "clip": 1.0, "q_star": 1.0}``; a ``width`` entry is
    ignored), a tuple of positions along the parameter axes (``ds.isel``), or None when ``ds`` is
    already one parameter cell."""
    names = ("act_knots", "act_values", "act_left_slope", "act_right_slope", "family")
    point = ds[list(names[:4])].assign_coords(family=ds["family"])
    if isinstance(where, dict):
        point = point.sel({k: v for k, v in where.items() if k in point.dims})
    elif where is not None:
        point = point.isel(dict(zip(point["act_left_slope"].dims, where, strict=True)))
    if point["act_left_slope"].ndim:
        raise ValueError(
            f"where={where!r}: must select one parameter cell (left: {point['act_left_slope'].dims})"
        )
    knots, values = point["act_knots"].values, point["act_values"].values
    real = ~np.isnan(knots)
    return Activation.piecewise_linear(
        knots[real],
        values[real],
        float(point["act_left_slope"]),
        float(point["act_right_slope"]),
        name=str(point["family"].values),
    )


Fill = Callable[[Spec | TrainSpec, SweepCell], dict[str, np.ndarray]]


def synthetic_store(
    fill: Fill | None = None, done: bool | np.ndarray = True, **spec_values
) -> xr.Dataset:
    """A small in-memory store in exactly the schema of ``python -m simulate.grid``, for tests.

    ``spec_values`` are keys of a spec file (``family``, ``sparsity`` or ``tau``, ``clip``,
    ``q_star`` or ``sigma_w2``/``sigma_b2``, ``width``, ``depth``, ``nets``, ``q0``, ``c0``, ``seed``,
    ``escape_factor``, ``shape``...), validated as the sweep validates them; keys not given take the
    values of a tiny sweep (crelu unless ``shape`` is given, sparsity 0.8, clip 1 and inf, q* = 1,
    width 64, depth 10, 4 nets) and then the sweep's defaults. With ``experiment="train"`` it is a
    training store (keys ``lr``, ``epochs``, ``run_seed``...; tiny: width 16, depth 3, 2 epochs, run
    seed 0). The parameter variables are the real theory (``param_values``).
    Each cell's variables are ``fill(spec, cell)`` (a dict of some of the cell variables, each over
    that variable's own dims; ``cell`` a :class:`~simulate.spec.SweepCell` with its activation,
    variances, q0 and flat index for seeding) or their fill values; ``done`` (a bool or a mask over
    the cell axes) is ``cell_done``, and ``cell_version`` of a done cell is what the sweep would
    record (:func:`numerics_version` of :func:`cell_engine`). The attributes are those of a real
    store (:func:`attributes`).

    Example: a store of two CST clip levels whose trajectories are real Monte Carlo::

        from simulate import grid
        ds = synthetic_store(grid.simulate_cell, family="cst", clip=[1, "inf"], width=[32, 64])

    or planted values, and a partial store (the unclipped cells not done)::

        def fill(spec, cell):
            rng = np.random.default_rng(cell.flat)
            noise = 1 + 0.01 * rng.standard_normal((spec.nets, spec.depth + 1, 2))
            return {"q": (cell.q0 * noise).astype("float32")}

        mask = np.ones((1, 1, 2, 1, 1), bool)  # (family, sparsity, clip, q_star, width)
        mask[:, :, 1] = False
        ds = synthetic_store(fill, done=mask, depth=50)

    or thinned, summary-only, many-input stores (a planted fill gives each per-layer variable over
    the recorded layers, ``spec.recorded_layers``, and corr / v_corr over the pairs)::

        ds = synthetic_store(grid.simulate_cell, record_every=5, depth=20)   # layers 0, 5, .., 20
        ds = synthetic_store(grid.simulate_cell, record="summary")          # no layer dimension
        ds = synthetic_store(grid.simulate_cell, inputs=4, input_corr=0.3)  # 6 pairs

    or a training store whose runs are real (digits, the first 64 training images)::

        ds = synthetic_store(grid.train_cell, experiment="train", train_size=64, batch_size=32)
    """
    if spec_values.get("experiment") == "train":
        values = {"clip": [1.0, math.inf], "width": 16, "depth": 3, "epochs": 2, "run_seed": 0}
    else:
        values = {"clip": [1.0, math.inf], "width": 64, "depth": 10, "nets": 4}
    if not {"family", "shape"} & set(spec_values):
        values["family"] = "crelu"
    if not {"sparsity", "tau", "q_star", "sigma_w2", "sigma_b2"} & set(spec_values):
        values |= {"sparsity": 0.8, "q_star": 1.0}
    spec = Spec.from_values(values | spec_values)
    params = resolve(spec)
    ds = skeleton(spec, param_values(spec, params), attributes(spec))
    variables = cell_variables(spec)
    data = {
        name: np.full(cell_shape(spec, name), var.fill, dtype=var.dtype)
        for name, var in variables.items()
    }
    if fill is not None:
        for cell in cells(spec, params):
            for name, value in fill(spec, cell).items():
                data[name][cell.index] = value
    for name, var in variables.items():
        ds[name] = ((*spec.cell_dims, *var.dims), data[name], var.attrs)
    ds["cell_done"][...] = np.broadcast_to(done, spec.cell_shape)
    versions = np.full(spec.cell_shape, CELL_VERSION.fill, dtype=CELL_VERSION.dtype)
    for cell in cells(spec, params):
        if ds["cell_done"].values[cell.index]:
            versions[cell.index] = numerics_version(cell_engine(spec, cell))
    ds.coords["cell_version"] = (spec.cell_dims, versions, CELL_VERSION.attrs)
    return ds
