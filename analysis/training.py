"""Training sweeps: final accuracy, hidden sparsity through training, and the link between the
initialisation theory (and Monte Carlo) and what trains.

    python -m analysis.training STORE [STORE ...] [--table accuracy|pairs|sparsity|link|correlations]
        [--init INIT_STORE]

A training store is written by ``python -m simulate.grid --experiment train`` (schema:
:mod:`simulate.schema`; ``attrs["experiment"] == "train"``): one training run per cell (family,
sparsity | tau, clip, q*, width, depth, lr, run_seed). A *configuration* is a cell without its run
seed; every table has one row per configuration with a finished run, with statistics over its
finished runs (the seeds). ``--init`` names a Monte Carlo store of the same activations (``python -m
simulate.grid``) for the link.

Several stores of one *study* (:class:`StudyTables`): stores trained on the same budget (the same
images, epochs, optimiser, schedule, batch and probe: ``BUDGET_ATTRS``) with the same parameter axes,
no run (configuration and seed) in two of them (e.g. a baseline with its learning-rate search, a
main grid, a larger q*, more seeds of some of its configurations), read as one: each store's
per-configuration tables stacked in the order given, a configuration found in several stores
pooled over all its runs in the accuracy and link tables (:func:`pool_runs`; the sparsity table
keeps a row per store), the clipped-against-unclipped pairs and the rank correlations over the
stacked tables.

Definitions.

- Final epoch of a run: the sweep's last epoch E, or for a diverged run ``diverged_epoch``, the
  epoch whose loss was not finite (its last measurement; later epochs are NaN). A run's final
  accuracy is the accuracy measured at its final epoch, so a diverged run counts with what its
  network predicted when it stopped (with NaN logits every image gets the first class: about
  chance). Mean and sd (ddof = 1; blank for one run) over the runs; ``best_test_acc`` is the mean
  over the runs of the highest test accuracy over epochs.
- Theory window of a clipped cell: [gp.min_gradient_clip, gp.max_stable_clip] at its GP sparsity
  and q* (:func:`analysis.instability.theory_window`: a named family, or a user shape that uses m);
  ``window`` is "inside", "below", "above", "unclipped", or "none" (a shape without a clip level
  to vary, which has no window).
- Hidden sparsity of a run at epoch e on a probe batch: the fraction of exact zeros of phi(h^l)
  averaged over its L hidden layers, s_bar^e = (1/L) sum_l s^{e,l}; mean over the runs that did not
  diverge (a network with NaN weights has no sparsity). Its spread over layers is the smallest and
  largest s^{E,l} of the run-mean profile at the last epoch E. A configuration *stays at the target*
  when |s_bar^E - s_target| <= ``SPARSITY_TOL`` on the test probe, s_target = ``gp_sparsity`` (the
  GP sparsity at q*, the sweep's target).
- Clipped against unclipped (``pairs``): at equal (family, sparsity | tau, q*, width, depth, lr),
  each clipped configuration's mean final test accuracy minus the unclipped one's,
  diff = a_c - a_u, with the standard error se = sqrt(sd_c^2 / n_c + sd_u^2 / n_u).
- The link (``link``): per configuration, V'(q*) (``v_slope``), the window, the final test
  accuracy; with an init store, from its cell of the same activation (family, threshold, clip, q*)
  and width: the fraction of networks staying at q* to the init store's depth
  (:func:`analysis.instability.stability_table`), the KM median escape depth
  (:func:`analysis.instability.escape_table`; inf: not reached) and the fraction escaped within the
  training network's depth. The training network's hidden pre-activations h^1..h^L and the Monte
  Carlo's layers 0..L-1 both start at q*, so "escaped within depth L" is
  0 <= escape_layer <= L - 1 (NaN when the init store is shallower than L - 1).
- The hypotheses' predictors of a configuration (in the link; docs/training.md, "Why sparse networks
  stop training"), each at its own depth L, width N and (sigma_w^2, sigma_b^2):
  - H1, ``gp_corr_gap``: the GP input signal 1 - c^L, the correlation of two inputs started at
    c^0 = 1/2 after L layers of the GP correlation map at q* (``gp.correlation_gaps``). On the EoC
    c^l -> 1; the smaller 1 - c^L, the less the last hidden layer tells two inputs apart;
  - H2, ``log_gain_sd``: the 1/N theory's spread, over networks, of the log gain of a forward
    tangent through the L layers (``gp.log_gain_spread``); with an init store also measured,
    ``mc_log_gain_sd``: the sd of the summed ``v_log_gain`` of its networks that reach layer L;
  - H5, ``margin``: the stability margin 1 - V'(q*);
  - H6, ``jacobian_spread``: the normalised variance L r of the squared singular values of the
    input-output Jacobian at infinite width (``gp.jacobian_spread``).
- ``correlations``: Spearman's rank correlation (two-sided p-value, scipy) between the mean final
  test accuracy and each predictor (:data:`PREDICTORS`) over the configurations of each (width,
  depth, lr), and over all of them.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats

from simulate import gp, schema
from simulate.activations import Activation
from simulate.spec import Shape

from ._cli import CommandError, Parser, run_cli
from ._store import (
    CellProgress,
    Results,
    StoreError,
    check_variables,
    load_dataset,
    open_dataset,
)
from ._table import markdown_table
from .instability import SPARSITY_TOL, theory_window
from .tables import Tables

RUN_DIMS = ("width", "depth", "lr")
"""The run axes of a configuration (besides the parameter axes); ``run_seed`` indexes its runs."""

READ_PARAMS = (
    "sigma_w2",
    "sigma_b2",
    "v_slope",
    "gp_sparsity",
    "act_knots",
    "act_values",
    "act_left_slope",
    "act_right_slope",
)
"""Per-parameter variables the analysis reads."""

PREDICTORS = {
    "v_slope": "V'(q*)",
    "gp_corr_gap": "H1: GP input signal 1 - c^L",
    "log_gain_sd": "H2: log-gain spread (1/N theory)",
    "mc_log_gain_sd": "H2: log-gain spread (Monte Carlo)",
    "margin": "H5: stability margin 1 - V'(q*)",
    "jacobian_spread": "H6: Jacobian spectrum spread L r",
    "mc_frac_stay": "MC fraction at q*",
    "mc_frac_escaped": "MC fraction escaped within depth L",
}
"""Initialisation statistics set against the final test accuracy (column -> name)."""


BUDGET_ATTRS = (
    "dataset",
    "data_sha256",
    "n_train",
    "n_test",
    "epochs",
    "optimizer",
    "schedule",
    "warmup",
    "batch_size",
    "output_gain",
    "probe_size",
)
"""The attributes of a training store that make its budget: the stores of one study agree on them."""


class TrainingResults(CellProgress):
    """A validated, in-memory training store (module docstring)."""

    def __init__(self, ds: xr.Dataset, path: Path | str = "<memory>"):
        self.path = Path(path)
        _validate(ds, self.path)
        self.ds = load_dataset(ds, self.path)

    @property
    def param_dims(self) -> tuple[str, ...]:
        """The parameter axes: family, sparsity | tau, clip, q_star."""
        return tuple(self.ds["v_slope"].dims)

    @property
    def config_dims(self) -> tuple[str, ...]:
        """The axes of a configuration: the parameter axes and width, depth, lr."""
        return (*self.param_dims, *RUN_DIMS)

    @property
    def threshold(self) -> str:
        """``sparsity`` or ``tau``: the axis that sets the threshold."""
        return "sparsity" if "sparsity" in self.param_dims else "tau"

    @property
    def epochs(self) -> int:
        return self.ds.sizes["epoch"] - 1

    def activation(self, key: dict) -> Activation:
        """The activation of the parameter point ``key`` (other keys ignored)."""
        return schema.activation_at(self.ds, key)

    def coords(self, dim: str) -> list:
        return [v.item() for v in self.ds[dim].values]


def _validate(ds: xr.Dataset, path: Path) -> None:
    cell = ("run_seed", *RUN_DIMS)
    required = {
        **{name: (*cell, *var.dims) for name, var in schema.TRAIN_CELL_VARIABLES.items()},
        "cell_done": cell,
        **{name: schema.PARAM_VARIABLES[name].dims for name in READ_PARAMS},
    }
    check_variables(ds, path, required, "training store")
    absent = [d for d in ("family", "clip", "q_star") if d not in ds["v_slope"].dims]
    if absent:
        raise StoreError(f"{path}: training store without the axis(es) {', '.join(absent)}")


def open_store(path: Path | str) -> Results | TrainingResults:
    """A Monte Carlo store (:class:`analysis._store.Results`) or a training store
    (:class:`TrainingResults`), told apart by ``attrs["experiment"]`` (init when absent)."""
    path = Path(path)
    ds = open_dataset(path)
    if ds.attrs.get("experiment") == "train":
        return TrainingResults(ds, path)
    return Results(ds, path)


def open_init(path: Path | str) -> Results:
    """The ``--init`` store: a Monte Carlo store on the Edge of Chaos, else StoreError."""
    store = open_store(path)
    if isinstance(store, TrainingResults) or not store.eoc:
        kind = "a training store" if isinstance(store, TrainingResults) else "off the Edge of Chaos"
        raise StoreError(
            f"init={path}: is {kind}; give a Monte Carlo store on the Edge of Chaos "
            "(python -m simulate.grid)"
        )
    return store


def open_stores(
    path: Path | str, init: Path | str | None = None
) -> tuple[Results | TrainingResults, TrainingTables | None]:
    """The store at ``path`` and, for a training store, its tables with the init store ``init``
    (None for a Monte Carlo store; CommandError if ``init`` is given with one)."""
    store = open_store(path)
    if isinstance(store, TrainingResults):
        return store, TrainingTables(store, open_init(init) if init else None)
    if init:
        raise CommandError(
            f"init={init}: only for a training store, and {path} is a Monte Carlo store"
        )
    return store, None


# -- per configuration --------------------------------------------------------------------------


def _frame(data: xr.Dataset, dims: tuple[str, ...], keep: xr.DataArray) -> pd.DataFrame:
    """One row per point of ``dims`` where ``keep``, in store order; columns: dims, variables."""
    data = data.reset_coords(drop=True).assign(_keep=keep.reset_coords(drop=True))
    frame = data.to_dataframe(dim_order=list(dims)).reset_index()
    frame = frame[frame["_keep"].astype(bool)].drop(columns="_keep")
    return frame[[*dims, *(c for c in frame.columns if c not in dims)]].reset_index(drop=True)


@contextmanager
def _quiet():
    """Means and sds of empty or one-run groups are NaN on purpose: no warnings about them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def final_epoch(tr: TrainingResults) -> xr.DataArray:
    """Per cell: E, or ``diverged_epoch`` for a diverged run (module docstring)."""
    return xr.where(tr.ds["diverged"], tr.ds["diverged_epoch"], tr.epochs)


def accuracy_table(tr: TrainingResults) -> pd.DataFrame:
    """Per configuration: finished runs, diverged runs, final test and train accuracy (mean, sd)
    and the mean best test accuracy over epochs (module docstring)."""
    ds, done = tr.ds, tr.done
    final = final_epoch(tr)
    runs = xr.Dataset(
        {
            "test_acc": ds["test_acc"].isel(epoch=final),
            "train_acc": ds["train_acc"].isel(epoch=final),
            "best_test_acc": ds["test_acc"].max("epoch"),
        }
    ).where(done)
    with _quiet():
        table = xr.Dataset(
            {
                "n_runs": done.sum("run_seed"),
                "n_diverged": (ds["diverged"] & done).sum("run_seed"),
                "test_acc": runs["test_acc"].mean("run_seed"),
                "test_acc_sd": runs["test_acc"].std("run_seed", ddof=1),
                "train_acc": runs["train_acc"].mean("run_seed"),
                "train_acc_sd": runs["train_acc"].std("run_seed", ddof=1),
                "best_test_acc": runs["best_test_acc"].mean("run_seed"),
            }
        )
    return _frame(table, tr.config_dims, done.any("run_seed"))


def window_status(
    family: str, sparsity: float, q_star: float, clip: float, shape: Shape | None = None
) -> str:
    """Where the clip level lies: "unclipped", or ``gp.ClipWindow.place`` in the theory window of
    :func:`analysis.instability.theory_window` ("inside", "below", "above", or "none" for a family
    without one; ``shape``: the user shape named ``family``, if it is one)."""
    if not math.isfinite(clip):
        return "unclipped"
    return theory_window(family, sparsity, q_star, shape).place(clip)


def theory_table(tr: TrainingResults) -> pd.DataFrame:
    """Per parameter point: V'(q*), the GP sparsity and the window status."""
    table = _frame(
        tr.ds[["v_slope", "gp_sparsity"]],
        tr.param_dims,
        xr.ones_like(tr.ds["v_slope"], dtype=bool),
    )
    table["window"] = [
        window_status(r.family, r.gp_sparsity, r.q_star, r.clip, tr.shapes.get(r.family))
        for r in table.itertuples()
    ]
    return table


def pairs_table(tr: TrainingResults, accuracy: pd.DataFrame, theory: pd.DataFrame) -> pd.DataFrame:
    """Each clipped configuration against the unclipped one of the same (family, threshold, q*,
    width, depth, lr): their mean final test accuracies, diff and its se (module docstring)."""
    keys = [d for d in tr.config_dims if d != "clip"]
    cols = ["test_acc", "test_acc_sd", "n_runs"]
    finite = np.isfinite(accuracy["clip"].to_numpy(float))
    clipped = accuracy[finite].merge(theory[[*tr.param_dims, "window"]], on=list(tr.param_dims))
    unclipped = accuracy.loc[~finite, [*keys, *cols]].rename(
        columns={
            "test_acc": "unclipped_acc",
            "test_acc_sd": "unclipped_acc_sd",
            "n_runs": "n_unclipped",
        }
    )
    table = clipped[[*keys, "clip", "window", *cols]].merge(unclipped, on=keys)
    table["diff"] = table["test_acc"] - table["unclipped_acc"]
    table["diff_se"] = np.sqrt(
        table["test_acc_sd"] ** 2 / table["n_runs"]
        + table["unclipped_acc_sd"] ** 2 / table["n_unclipped"]
    )
    return table


def sparsity_profile(tr: TrainingResults) -> xr.DataArray:
    """The hidden sparsity s^{e,l} per configuration, epoch, probe and layer: the mean over the
    runs that did not diverge (NaN beyond the configuration's depth)."""
    ok = tr.done & ~tr.ds["diverged"]
    with _quiet():
        return tr.ds["act_sparsity"].where(ok).mean("run_seed")


def sparsity_table(tr: TrainingResults, profile: xr.DataArray) -> pd.DataFrame:
    """Per configuration with a run that did not diverge: the target, the layer-mean hidden
    sparsity at initialisation (test probe) and at the end (train and test probes), the smallest
    and largest layer of the final profile (test probe), the largest |s_bar^e - target| over
    epochs (test probe), and whether it stays at the target (module docstring). ``profile``: the
    store's :func:`sparsity_profile`."""
    ok = tr.done & ~tr.ds["diverged"]
    target = tr.ds["gp_sparsity"]
    with _quiet():
        layer_mean = profile.mean("layer")  # (config, epoch, probe)
        test = layer_mean.sel(probe="test", drop=True)
        final = test.isel(epoch=-1, drop=True)
        last = profile.isel(epoch=-1, drop=True).sel(probe="test", drop=True)
        table = xr.Dataset(
            {
                "n_runs": ok.sum("run_seed"),
                "target": target,
                "init": test.isel(epoch=0, drop=True),
                "final_train": layer_mean.isel(epoch=-1, drop=True).sel(probe="train", drop=True),
                "final_test": final,
                "layer_min": last.min("layer"),
                "layer_max": last.max("layer"),
                "max_drift": abs(test - target).max("epoch"),
                "stays": abs(final - target) <= SPARSITY_TOL,
            }
        )
    return _frame(table, tr.config_dims, ok.any("run_seed"))


def link_table(
    tr: TrainingResults,
    accuracy: pd.DataFrame,
    theory: pd.DataFrame,
    init: Tables | None = None,
) -> pd.DataFrame:
    """Per configuration: V'(q*), the window, the GP input signal 1 - c^L and the final test
    accuracy; with ``init`` (the tables of an init store), the Monte Carlo's fraction at q*, median
    escape depth and fraction escaped within depth L (module docstring)."""
    table = accuracy[[*tr.config_dims, "n_runs", "n_diverged", "test_acc", "test_acc_sd"]]
    table = table.merge(theory[[*tr.param_dims, "v_slope", "window"]], on=list(tr.param_dims))
    predicted = pd.DataFrame([_predictors(tr, row) for row in table.to_dict("records")])
    table = pd.concat([table, predicted.set_index(table.index)], axis=1)
    if init is not None:
        table = pd.concat([table, _monte_carlo(tr, table, init)], axis=1)
    return table


def _predictors(tr: TrainingResults, row: dict) -> dict[str, float]:
    """H1, H2, H5 and H6's predictors of the configuration ``row`` (module docstring)."""
    key = {d: row[d] for d in tr.param_dims}
    sigma_w2, sigma_b2 = (float(tr.ds[v].sel(key)) for v in ("sigma_w2", "sigma_b2"))
    act, q_star, depth = tr.activation(key), row["q_star"], int(row["depth"])
    gaps = gp.correlation_gaps(act, q_star, sigma_w2, sigma_b2, 0.5, depth)
    return {
        "gp_corr_gap": float(gaps[-1]),
        "log_gain_sd": float(
            gp.log_gain_spread(act, q_star, sigma_w2, sigma_b2, depth, row["width"])[-1]
        ),
        "margin": 1.0 - row["v_slope"],
        "jacobian_spread": float(gp.jacobian_spread(act, q_star, depth)),
    }


def _monte_carlo(tr: TrainingResults, table: pd.DataFrame, init: Tables) -> pd.DataFrame:
    """The init store's statistics for each row of ``table`` (NaN where it has no finished cell of
    that activation and width); StoreError where its activation differs from the training store's."""
    mc = init.results
    keys = [*mc.param_dims, "width"]
    out = pd.DataFrame(np.nan, index=table.index, columns=list(MC_COLUMNS))
    if not set(keys) <= set(table.columns):  # another threshold axis: no cell matches
        return out
    finished = {tuple(key.values()) for key in Results._keys(mc.done)}
    rows = [(i, {k: row[k] for k in keys}) for i, row in table.iterrows()]
    rows = [(i, key) for i, key in rows if tuple(key.values()) in finished]
    for _, key in rows:
        _same_activation(tr, mc, key)
    stats = init.stability[[*keys, "frac_stay"]].merge(
        init.escape[[*keys, "median_escape"]], on=keys
    )
    stats = stats.set_index(keys)
    for i, key in rows:
        point = stats.loc[tuple(key.values())]
        out.loc[i, "mc_frac_stay"] = float(point["frac_stay"])
        out.loc[i, "mc_median_escape"] = float(point["median_escape"])
        reach = int(table.loc[i, "depth"]) - 1
        if reach <= mc.depth:
            escape = mc.ds["escape_layer"].sel(key).values
            out.loc[i, "mc_frac_escaped"] = float(((escape >= 0) & (escape <= reach)).mean())
        out.loc[i, "mc_log_gain_sd"] = _measured_log_gain_sd(mc, key, reach + 1)
    return out


def _measured_log_gain_sd(mc: Results, key: dict, depth: int) -> float:
    """sd over the networks that reach layer ``depth`` of sum_{l=1}^{depth} v_log_gain^l (NaN when
    the store does not record v_log_gain at every one of those layers, or fewer than 2 reach)."""
    if "v_log_gain" not in mc.ds or depth > mc.depth:
        return math.nan
    layers = mc.ds["layer"].values
    if not np.isin(np.arange(1, depth + 1), layers).all():
        return math.nan
    gains = mc.ds["v_log_gain"].sel(key).sel(layer=slice(1, depth)).values
    summed = gains.sum(axis=-1)
    summed = summed[np.isfinite(summed)]
    return float(np.std(summed, ddof=1)) if summed.size >= 2 else math.nan


MC_COLUMNS = ("mc_frac_stay", "mc_median_escape", "mc_frac_escaped", "mc_log_gain_sd")
"""The link table's columns from an init store."""


def _same_activation(tr: TrainingResults, init: Results, key: dict) -> None:
    """StoreError unless both stores hold the same activation at ``key``."""
    a, b = tr.activation(key).description(), init.activation(key).description()
    same = all(np.allclose(a[k], b[k], rtol=1e-12, atol=0.0) for k in a)
    if not same:
        where = " ".join(f"{k}={v}" for k, v in key.items() if k != "width")
        raise StoreError(
            f"init={init.path}: its activation at {where} differs from the training store's "
            f"({b} against {a}); give the Monte Carlo store of the same sweep"
        )


def correlations(link: pd.DataFrame) -> pd.DataFrame:
    """Spearman's rho of each predictor in the link table with the mean final test accuracy, per
    (width, depth, lr) and over all configurations (module docstring)."""
    groups = [(dict(zip(RUN_DIMS, k, strict=True)), g) for k, g in link.groupby(list(RUN_DIMS))]
    if len(groups) > 1:
        groups.append(({d: "all" for d in RUN_DIMS}, link))
    rows = []
    for where, group in groups:
        for column, name in PREDICTORS.items():
            if column not in group:
                continue
            x, y = group[column].to_numpy(float), group["test_acc"].to_numpy(float)
            ok = np.isfinite(x) & np.isfinite(y)
            rho = p = math.nan
            if ok.sum() >= 3 and np.ptp(x[ok]) > 0 and np.ptp(y[ok]) > 0:
                rho, p = stats.spearmanr(x[ok], y[ok])
            rows.append({**where, "predictor": name, "n": int(ok.sum()), "rho": rho, "p_value": p})
    return pd.DataFrame(rows)


def pooled(correlations: pd.DataFrame) -> pd.DataFrame:
    """The rows of a :func:`correlations` table over every configuration: the ``all`` group, or
    the one (width, depth, lr) group there is."""
    every = correlations["width"].astype(str) == "all"
    return correlations[every] if every.any() else correlations


# -- through training ---------------------------------------------------------------------------


def epoch_curves(tr: TrainingResults, profile: xr.DataArray) -> xr.Dataset:
    """Per configuration and epoch: the test accuracy (mean, min and max over the runs), the train
    accuracy and test loss (means over the runs; finite losses only; epochs after a run diverged
    are not in its statistics), and on the test probe the hidden sparsity (``profile``: the store's
    :func:`sparsity_profile`) over layers and its layer mean, smallest and largest layer."""
    ds, done = tr.ds, tr.done
    with _quiet():
        acc = ds["test_acc"].where(done)
        loss = ds["test_loss"].where(done & np.isfinite(ds["test_loss"]))
        test = profile.sel(probe="test", drop=True)
        return xr.Dataset(
            {
                "test_acc": acc.mean("run_seed"),
                "test_acc_min": acc.min("run_seed"),
                "test_acc_max": acc.max("run_seed"),
                "train_acc": ds["train_acc"].where(done).mean("run_seed"),
                "test_loss": loss.mean("run_seed"),
                "profile": test,
                "sparsity_mean": test.mean("layer"),
                "sparsity_min": test.min("layer"),
                "sparsity_max": test.max("layer"),
            }
        )


def diverged_runs(tr: TrainingResults) -> pd.DataFrame:
    """The finished runs that diverged: their cell and the epoch they stopped at."""
    data = xr.Dataset({"diverged_epoch": tr.ds["diverged_epoch"]})
    return _frame(data, (*tr.config_dims, "run_seed"), tr.done & tr.ds["diverged"])


# -- tables, once ---------------------------------------------------------------------------------


class TrainingTables:
    """The tables of a training store (and the link to an init store), each computed once."""

    def __init__(
        self, tr: TrainingResults, init: Results | None = None, init_tables: Tables | None = None
    ):
        """``init_tables``: the tables of ``init`` when already made (a study shares one)."""
        self.tr = tr
        self.init = init
        if init is not None and init_tables is None:
            init_tables = Tables(init)
        self.init_tables = init_tables

    @cached_property
    def accuracy(self) -> pd.DataFrame:
        return accuracy_table(self.tr)

    @cached_property
    def theory(self) -> pd.DataFrame:
        return theory_table(self.tr)

    @cached_property
    def pairs(self) -> pd.DataFrame:
        return pairs_table(self.tr, self.accuracy, self.theory)

    @cached_property
    def profile(self) -> xr.DataArray:
        return sparsity_profile(self.tr)

    @cached_property
    def sparsity(self) -> pd.DataFrame:
        return sparsity_table(self.tr, self.profile)

    @cached_property
    def link(self) -> pd.DataFrame:
        return link_table(self.tr, self.accuracy, self.theory, self.init_tables)

    @cached_property
    def correlations(self) -> pd.DataFrame:
        return correlations(self.link)

    @cached_property
    def curves(self) -> xr.Dataset:
        return epoch_curves(self.tr, self.profile)

    @cached_property
    def diverged(self) -> pd.DataFrame:
        return diverged_runs(self.tr)


# -- several stores, one study ----------------------------------------------------------------------


def finished_runs(tr: TrainingResults) -> set[tuple]:
    """The finished runs of a store: their configuration (``config_dims`` values) and run seed."""
    dims = (*tr.config_dims, "run_seed")
    return set(_frame(xr.Dataset(), dims, tr.done).itertuples(index=False, name=None))


def check_one_study(stores: list[TrainingResults]) -> None:
    """StoreError unless the stores share their budget (``BUDGET_ATTRS``) and parameter axes and no
    configuration has finished runs in two of them (module docstring)."""
    first, seen = stores[0], {}
    for tr in stores:
        for name in BUDGET_ATTRS:
            mine, theirs = tr.ds.attrs.get(name), first.ds.attrs.get(name)
            if mine != theirs:
                raise StoreError(
                    f"{tr.path}: trained with {name}={mine}, {first.path} with {name}={theirs}; "
                    "the stores of one study share their budget"
                )
        if tr.config_dims != first.config_dims:
            raise StoreError(
                f"{tr.path}: axes {', '.join(tr.config_dims)}, {first.path}: "
                f"{', '.join(first.config_dims)}; the stores of one study share their axes"
            )
        for run in finished_runs(tr):
            if run in seen:
                dims = (*tr.config_dims, "run_seed")
                where = " ".join(f"{d}={v}" for d, v in zip(dims, run, strict=True))
                raise StoreError(
                    f"{tr.path}: the run {where} is also in {seen[run]}; "
                    "a run belongs to one store of a study"
                )
            seen[run] = tr.path


def pool_runs(table: pd.DataFrame, dims: list[str]) -> pd.DataFrame:
    """The rows of one configuration from several stores (their seeds: other runs of it) as one
    row, so that its statistics are over all its runs: counts (``n_*``) summed; a column x with a
    column x_sd, the mean and sd (ddof = 1) of all the runs from each row's n = ``n_runs``, mean
    m_i and sd s_i,

        m = sum n_i m_i / N,   sd^2 = (sum (n_i - 1) s_i^2 + sum n_i (m_i - m)^2) / (N - 1);

    any other number that differs between the rows, its mean weighted by n_i; the rest (the
    theory of the configuration, the same in every row) from the first. Rows keep their order."""
    if not table.duplicated(dims).any():
        return table
    rows = []
    for _, group in table.groupby(dims, sort=False, dropna=False):
        row = group.iloc[0].copy()
        n = group["n_runs"].to_numpy(float)
        total = n.sum()
        for column in group.columns.difference(dims):
            values = group[column]
            if len(group) == 1 or column.endswith("_sd"):
                continue
            if column.startswith("n_"):
                row[column] = values.sum()
            elif f"{column}_sd" in group:
                m, s = values.to_numpy(float), group[f"{column}_sd"].to_numpy(float)
                mean = float((n * m).sum() / total)
                within = float(np.where(n > 1, (n - 1) * s**2, 0.0).sum())
                spread = within + float((n * (m - mean) ** 2).sum())
                row[column] = mean
                row[f"{column}_sd"] = math.sqrt(spread / (total - 1))
            elif pd.api.types.is_numeric_dtype(values) and values.nunique(dropna=False) > 1:
                row[column] = float((n * values.to_numpy(float)).sum() / total)
        rows.append(row)
    return pd.DataFrame(rows).infer_objects().reset_index(drop=True)


class StudyTables:
    """The tables of the training stores of one study (module docstring), each computed once:
    the attributes of :class:`TrainingTables` that :data:`TABLES` shows. One store: the same
    tables as its :class:`TrainingTables`."""

    def __init__(self, stores: list[TrainingResults], init: Results | None = None):
        check_one_study(stores)
        init_tables = None if init is None else Tables(init)
        self.parts = [TrainingTables(tr, init, init_tables) for tr in stores]

    def _stacked(self, name: str) -> pd.DataFrame:
        return pd.concat([getattr(p, name) for p in self.parts], ignore_index=True)

    def _pooled(self, name: str) -> pd.DataFrame:
        """The stores' per-configuration tables, stacked; a configuration in several stores (other
        seeds of it) one row over all its runs (:func:`pool_runs`)."""
        return pool_runs(self._stacked(name), list(self.parts[0].tr.config_dims))

    @cached_property
    def accuracy(self) -> pd.DataFrame:
        return self._pooled("accuracy")

    @cached_property
    def theory(self) -> pd.DataFrame:
        tr = self.parts[0].tr
        return self._stacked("theory").drop_duplicates(list(tr.param_dims), ignore_index=True)

    @cached_property
    def pairs(self) -> pd.DataFrame:
        return pairs_table(self.parts[0].tr, self.accuracy, self.theory)

    @cached_property
    def sparsity(self) -> pd.DataFrame:
        """One row per store and configuration: its extremes over layers and epochs are of the
        store's mean profile, which do not pool."""
        return self._stacked("sparsity")

    @cached_property
    def link(self) -> pd.DataFrame:
        return self._pooled("link")

    @cached_property
    def correlations(self) -> pd.DataFrame:
        return correlations(self.link)


def with_sd(table: pd.DataFrame) -> pd.DataFrame:
    """For display: each column ``x`` with a column ``x_sd`` becomes ``mean ± sd`` text (the sd
    left out where it is NaN: one run)."""
    table = table.copy()
    for column in [c for c in table.columns if f"{c}_sd" in table.columns]:
        sd = table.pop(f"{column}_sd")
        table[column] = [
            "" if math.isnan(m) else f"{m:.3f}" + ("" if math.isnan(s) else f" ± {s:.3f}")
            for m, s in zip(table[column], sd, strict=True)
        ]
    return table


TABLES = {
    "accuracy": lambda t: with_sd(t.accuracy),
    "pairs": lambda t: with_sd(t.pairs),
    "sparsity": lambda t: t.sparsity,
    "link": lambda t: with_sd(t.link),
    "correlations": lambda t: t.correlations,
}


def main(argv: list[str] | None = None) -> int:
    parser = Parser(
        prog="python -m analysis.training",
        description="Tables of a training store, or of the stores of one study.",
    )
    parser.add_argument(
        "results",
        nargs="+",
        help="training store(s) (.zarr directory or .nc file); several: one study, same budget",
    )
    parser.add_argument("--table", choices=sorted(TABLES), default="accuracy")
    parser.add_argument("--init", help="Monte Carlo store of the same activations (for the link)")
    args = parser.parse_args(argv)
    stores = [open_store(path) for path in args.results]
    for path, store in zip(args.results, stores, strict=True):
        if not isinstance(store, TrainingResults):
            raise StoreError(
                f"{path}: a Monte Carlo store, not a training store "
                "(python -m simulate.grid --experiment train writes one)"
            )
    init = open_init(args.init) if args.init else None
    print(markdown_table(TABLES[args.table](StudyTables(stores, init))))
    return 0


if __name__ == "__main__":
    run_cli(main)
