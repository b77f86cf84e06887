"""A sweep: its parameter grid and run options, parsed from flags and/or a TOML file, validated up front.

A sweep is the cartesian product of the listed values of its *grid* fields. Its ``experiment`` says
what a cell of the grid is: ``init`` (the default, :class:`Spec`), a Monte Carlo of random networks
at initialisation; ``train`` (:class:`TrainSpec`), one network trained on a dataset. Each
experiment has its own keys (a key of the other one is refused) and defaults.

A Monte Carlo sweep is of two kinds:

- on the Edge of Chaos (default): axes ``family, sparsity | tau, clip, q_star``; each cell's
  (sigma_w^2, sigma_b^2) comes from ``gp.edge_of_chaos`` and, with ``sparsity``, its threshold from
  ``tau = sqrt(q*) Phi^{-1}(s)`` (CReLU), ``sqrt(q*) Phi^{-1}((1+s)/2)`` (CST), or for a user
  shape by root finding (:meth:`Shape.tau_for_sparsity`);
- off the Edge of Chaos (``sigma_w2`` and ``sigma_b2`` given, with ``tau``): axes
  ``family, tau, clip, sigma_w2, sigma_b2``, for (sigma_w^2, sigma_b^2) phase diagrams. There is no q*;
  the inputs start at variance ``q0``.

Every parameter cell is crossed with every ``width``; a (parameter cell, width) pair is one *cell* of
the sweep, the unit of work, of storage and of resumption.

A Monte Carlo network gets ``inputs`` = B inputs: of variance q0 with the initial correlations
``input_corr`` (one value for every pair, or the B(B-1)/2 pairs a < b in row-major order; its former
name ``c0`` is still read), or the first B test images of a dataset (``input_corr =
"images:digits"``). Escapes are watched on ``escape_on`` (v or q); ``record`` and ``record_every``
say what the store keeps (:mod:`simulate.schema`).

A training sweep is on the Edge of Chaos: axes ``family, sparsity | tau, clip, q_star`` as above,
crossed with ``width, depth, lr, run_seed``; each cell is one training run of a network of ``depth``
hidden layers, initialised at the EoC for q* (:mod:`simulate.train`). The dataset, epochs,
optimiser, schedule, warm-up, batch size, output gain and probe size are one value per sweep.

Values are written the same way on the command line and in a TOML file: a list ``a,b,c``, a linear
range ``start:stop:count`` (endpoints included), a log range ``log:start:stop:count``, or any comma
list of those; ``inf`` is a number (a valid clip). In TOML a key may also hold a number or an array.
Flags override the file; ``sparsity`` and ``tau`` are alternatives, so giving one drops the other.

A spec file may also define activations of its own, as ``[shape]`` tables (or ``[[shape]]`` for
several), each a continuous piecewise-linear function given by its knots, its values there and its
slopes outside them; a knot, value or slope is a number or a short expression in the grid's ``tau``
and clip level ``m`` (numbers, ``tau``, ``m``, ``+ - * /``, parentheses)::

    family = ["cst", "leaky_st"]            # a named family and the shape below, side by side
    [shape]
    name = "leaky_st"
    knots = ["-tau - m", "-tau", "tau", "tau + m"]
    values = ["-m", 0, 0, "m"]
    left_slope = 0.05
    right_slope = 0.05

The shape's name is its ``family`` label. With a ``sparsity`` axis its tau is found per cell (see
:meth:`Shape.tau_for_sparsity`). Every grid point must give a valid activation (finite, strictly
increasing knots; finite values and slopes) with an Edge of Chaos; otherwise the spec is refused.

Every problem is reported as one :class:`SpecError` line ``field=value: what is allowed``.
"""

from __future__ import annotations

import argparse
import ast
import math
import operator
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from itertools import pairwise, product
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import tomli_w
from scipy import optimize

from simulate import gp
from simulate.activations import FAMILIES, Activation
from simulate.engines import ESCAPE_OBSERVABLES, engine_names
from simulate.engines.run import SEMIDEFINITE_TOL, correlation_matrix
from simulate.train.data import DATASETS, FASHION_DIR
from simulate.train.options import OPTIMIZERS, SCHEDULES, missing_modules

BACKENDS = ("loky", "threading", "dask")

EXPERIMENTS = ("init", "train")
"""``init``: random networks at initialisation, by Monte Carlo (the default); ``train``: networks
trained on a dataset (:mod:`simulate.train`)."""
INIT, TRAIN = ("init",), ("train",)

RECORDS = ("layers", "summary")
"""What a Monte Carlo store keeps (``record``): per-layer records and per-network summaries, or the
summaries only."""


class SpecError(ValueError):
    """A bad sweep: one line naming the field, the value and what is allowed."""


@dataclass(frozen=True)
class _Field:
    """One key of a sweep: how to read a value, when it is valid, and what to say when it is not."""

    name: str
    kind: Callable[[Any], Any]  # one raw token -> typed value, ValueError if unreadable
    ok: Callable[[Any], bool]
    allowed: str
    help: str
    grid: tuple[str, ...] = ()  # the experiments in which it is an axis (a list of values)
    experiments: tuple[str, ...] = EXPERIMENTS  # the experiments that have this key
    former: str | None = None  # an earlier name of the key, still read (not with the key itself)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _number(token) -> float:
    if isinstance(token, bool):
        raise ValueError(token)
    return float(token)


def _integer(token) -> int:
    """An exact integer (seeds beyond 2**53 must not round through float); "1e3" is accepted."""
    if isinstance(token, bool):
        raise ValueError(token)
    if isinstance(token, int):
        return token
    try:
        return int(str(token).strip())
    except ValueError:
        value = _number(token)
        if not value.is_integer():
            raise
        return int(value)


def _text(token) -> str:
    if not isinstance(token, str):
        raise ValueError(token)
    return token.strip()


def _flag(token) -> bool:
    if isinstance(token, bool):
        return token
    raise ValueError(token)


def _q0(token) -> float | str:
    return "q_star" if token == "q_star" else _number(token)


IMAGES = "images:"
"""Prefix of an ``input_corr`` that takes the inputs from a dataset: ``images:digits``."""


def _input_corr(token) -> float | tuple[float, ...] | str:
    """One correlation (a float), several (a tuple, from a TOML array or ``a,b,c``; one value
    reads as a float) or ``images:NAME``; the values are checked with ``inputs`` (_check_inputs)."""
    if isinstance(token, str) and token.strip().startswith(IMAGES):
        return token.strip()
    parts = token.split(",") if isinstance(token, str) else token
    values = tuple(_number(t) for t in parts) if isinstance(parts, list) else (_number(parts),)
    if not values:
        raise ValueError(token)
    return values[0] if len(values) == 1 else values


_FAMILY_ALLOWED = f"one of {', '.join(FAMILIES)}, or the name of a [shape] in the spec file"

_COUNT = "an integer >= 1 and < 2**31"


def _count(n: int) -> bool:
    """Widths, depths, counts: positive and small enough that sizes computed from them are floats."""
    return 1 <= n < 2**31


TRAIN_EXTRA = (
    "experiment=train: needs JAX, optax and scikit-learn, the optional extra: "
    "pip install 'sparse-eoc[train]'"
)
"""The refusal of a training sweep where the extra is not installed."""


def _train_names(names: tuple[str, ...]) -> tuple[str, ...]:
    """``names`` (a training option's allowed values), after checking that the ``[train]`` extra is
    installed; without importing it, so parsing a training spec does not start JAX."""
    if missing_modules():
        raise SpecError(TRAIN_EXTRA)
    return names


VARIANCE_RANGE = (1e-30, 1e30)
"""Input and fixed-point variances a store can hold: float32 trajectories, with the escape band."""

_FIELDS = (
    _Field(
        "experiment",
        _text,
        lambda e: e in EXPERIMENTS,
        f"one of {', '.join(EXPERIMENTS)}",
        "init: random networks at initialisation (Monte Carlo); train: training them on a dataset",
    ),
    _Field(
        "family",
        _text,
        lambda f: f != "",
        _FAMILY_ALLOWED,
        "activation families (named, or a [shape] of the spec file)",
        grid=EXPERIMENTS,
    ),
    _Field(
        "sparsity",
        _number,
        lambda s: 0 <= s < 1,
        "in [0, 1) ([0.5, 1) for crelu)",
        "target GP sparsity at q*, sets tau (on the EoC)",
        grid=EXPERIMENTS,
    ),
    _Field(
        "tau",
        _number,
        lambda t: math.isfinite(t) and t >= 0,
        "finite and >= 0",
        "thresholds, instead of sparsity; required off the EoC",
        grid=EXPERIMENTS,
    ),
    _Field(
        "clip",
        _number,
        lambda m: m > 0,
        "> 0, or inf for no clipping",
        "clip levels m",
        grid=EXPERIMENTS,
    ),
    _Field(
        "q_star",
        _number,
        lambda q: VARIANCE_RANGE[0] <= q <= VARIANCE_RANGE[1],
        "in [1e-30, 1e30] (trajectories are stored as float32)",
        "fixed-point variances q* of the EoC",
        grid=EXPERIMENTS,
    ),
    _Field(
        "chi1",
        _number,
        lambda c: math.isfinite(c) and c > 0,
        "finite and > 0",
        "chi_1 at q*: default 1, the EoC; off it at the same q* and sparsity (sigma_b^2 falls)",
        grid=TRAIN,
        experiments=TRAIN,
    ),
    _Field(
        "sigma_w2",
        _number,
        lambda v: math.isfinite(v) and v > 0,
        "finite and > 0",
        "weight variances: off the EoC, with --sigma-b2 and --tau",
        grid=INIT,
        experiments=INIT,
    ),
    _Field(
        "sigma_b2",
        _number,
        lambda v: math.isfinite(v) and v >= 0,
        "finite and >= 0",
        "bias variances: off the EoC, with --sigma-w2 and --tau",
        grid=INIT,
        experiments=INIT,
    ),
    _Field("width", _integer, _count, _COUNT, "hidden widths N", grid=EXPERIMENTS),
    _Field(
        "depth",
        _integer,
        _count,
        _COUNT,
        "number of layers L (train: of hidden layers, a list)",
        grid=TRAIN,
    ),
    _Field("nets", _integer, _count, _COUNT, "networks per cell", experiments=INIT),
    _Field("inputs", _integer, _count, _COUNT, "inputs B per network", experiments=INIT),
    _Field(
        "q0",
        _q0,
        lambda q: q == "q_star" or VARIANCE_RANGE[0] <= q <= VARIANCE_RANGE[1],
        "in [1e-30, 1e30] (trajectories are stored as float32), or q_star",
        "input variance; default q_star on the EoC, 1 off it",
        experiments=INIT,
    ),
    _Field(
        "input_corr",
        _input_corr,
        lambda c: not isinstance(c, str) or c[len(IMAGES) :] in DATASETS,
        "a correlation in (-1, 1) (all pairs), B(B-1)/2 of them (pairs a < b, row-major), or "
        f"{', '.join(IMAGES + d for d in DATASETS)} (the first B test images)",
        "initial correlations of the inputs (their variance is q0); or the inputs are images",
        experiments=INIT,
        former="c0",
    ),
    _Field(
        "engine",
        _text,
        lambda e: e in engine_names(),
        f"one of {', '.join(engine_names())}",
        "Monte Carlo engine",
        experiments=INIT,
    ),
    _Field(
        "seed",
        _integer,
        lambda s: 0 <= s < 2**63,
        "an integer in [0, 2**63) (a TOML integer)",
        "root seed of the sweep",
    ),
    _Field(
        "escape_factor",
        _number,
        lambda f: math.isfinite(f) and f > 1,
        "finite and > 1",
        "a network escapes when its variance leaves [q_ref / f, q_ref * f]",
        experiments=INIT,
    ),
    _Field(
        "escape_on",
        _text,
        lambda e: e in ESCAPE_OBSERVABLES,
        f"one of {', '.join(ESCAPE_OBSERVABLES)}",
        "the variance watched for escapes: v (conditional, the Markov state every engine sees) "
        "or q (empirical; gram and dense only)",
        experiments=INIT,
    ),
    _Field(
        "record",
        _text,
        lambda r: r in RECORDS,
        f"one of {', '.join(RECORDS)}",
        "layers: per-layer records (every record_every-th layer) and per-network summaries; "
        "summary: the summaries only",
        experiments=INIT,
    ),
    _Field(
        "record_every",
        _integer,
        _count,
        _COUNT,
        "keep layers 0, k, 2k, ... and the last (record = layers)",
        experiments=INIT,
    ),
    _Field(
        "lr",
        _number,
        lambda v: math.isfinite(v) and v > 0,
        "finite and > 0",
        "peak learning rates",
        grid=TRAIN,
        experiments=TRAIN,
    ),
    _Field(
        "run_seed",
        _integer,
        lambda s: 0 <= s < 2**63,
        "an integer in [0, 2**63) (a TOML integer)",
        "training seeds: one run per seed and cell (its stream: see simulate.grid.cell_seed)",
        grid=TRAIN,
        experiments=TRAIN,
    ),
    _Field(
        "dataset",
        _text,
        lambda d: d in DATASETS,
        f"one of {', '.join(DATASETS)}",
        "the data to train on",
        experiments=TRAIN,
    ),
    _Field(
        "train_size",
        _integer,
        _count,
        _COUNT,
        "train on the first N training images only; default all",
        experiments=TRAIN,
    ),
    _Field(
        "test_size",
        _integer,
        _count,
        _COUNT,
        "test on the first N test images only; default all",
        experiments=TRAIN,
    ),
    _Field("epochs", _integer, _count, _COUNT, "passes over the training set", experiments=TRAIN),
    _Field(
        "optimizer",
        _text,
        lambda o: o in _train_names(OPTIMIZERS),
        "one of adam, sgd",
        "adam, or sgd with momentum 0.9",
        experiments=TRAIN,
    ),
    _Field(
        "schedule",
        _text,
        lambda o: o in _train_names(SCHEDULES),
        "one of constant, cosine",
        "learning rate after the warm-up: constant, or cosine decay to 0",
        experiments=TRAIN,
    ),
    _Field(
        "warmup",
        _number,
        lambda w: math.isfinite(w) and w >= 0,
        "finite and >= 0, and < epochs",
        "linear warm-up of the learning rate from 0, in epochs",
        experiments=TRAIN,
    ),
    _Field("batch_size", _integer, _count, _COUNT, "images per step", experiments=TRAIN),
    _Field(
        "output_gain",
        _number,
        lambda g: 0 <= g <= 1e6,
        "in [0, 1e6] (the output weights stay far from float32 overflow)",
        "scale g of the output layer's variances (1: one more EoC layer; 0: zero logits)",
        experiments=TRAIN,
    ),
    _Field(
        "probe_size",
        _integer,
        _count,
        _COUNT,
        "images per probe batch (the first of each set), where q and act_sparsity are measured",
        experiments=TRAIN,
    ),
    _Field(
        "data",
        _text,
        lambda p: p != "",
        "a directory",
        f"directory of the Fashion-MNIST IDX files; default {FASHION_DIR}",
    ),
    _Field(
        "out",
        _text,
        lambda p: p != "",
        "a path",
        "the zarr store; default results/default.zarr (train: results/train.zarr), or "
        "results/NAME.zarr for NAME.toml",
    ),
    _Field(
        "n_jobs",
        _integer,
        lambda n: 1 <= abs(n) <= 1024,
        "a non-zero integer in [-1024, 1024] (-1: all cores)",
        "parallel workers",
    ),
    _Field(
        "backend",
        _text,
        lambda b: b in BACKENDS,
        f"one of {', '.join(BACKENDS)}",
        "joblib backend",
    ),
    _Field(
        "scheduler",
        _text,
        lambda a: a != "",
        "an address tcp://HOST:PORT",
        "dask scheduler, with --backend dask; default a local cluster",
    ),
    _Field(
        "max_batch",
        _integer,
        _count,
        _COUNT,
        "most cells per parallel task; default: small cells batched to ~50 ms",
    ),
    _Field(
        "overwrite",
        _flag,
        lambda b: True,
        "true or false",
        "replace an existing store that holds a different sweep",
    ),
    _Field(
        "repair",
        _flag,
        lambda b: True,
        "true or false",
        "rebuild a damaged store whose metadata cannot be read, from this spec, keeping its "
        "intact cells (damaged cells of a readable store are recomputed on any run)",
    ),
    _Field(
        "allow_mixed_versions",
        _flag,
        lambda b: True,
        "true or false",
        "finish a store whose cells were computed by other numerics (another version of the "
        "engines' code) with this version; each cell records its own (cell_version)",
    ),
)
_BY_NAME = {f.name: f for f in _FIELDS}

DEFAULTS = {
    "family": "crelu,cst",
    "sparsity": "0.6,0.7,0.8,0.85,0.9",
    "clip": "0.5,1,1.5,2,3,inf",
    "q_star": "1",
    "width": "100,300,1000",
    "depth": 200,
    "nets": 64,
    "inputs": 2,
    "input_corr": 0.5,
    "engine": "auto",
    "seed": 0,
    "escape_factor": 10.0,
    "escape_on": "v",
    "record": "layers",
    "record_every": 1,
    "n_jobs": -1,
    "backend": "loky",
    "overwrite": False,
    "repair": False,
    "allow_mixed_versions": False,
}
"""The built-in sweep (``python -m simulate.grid`` with no arguments) and the run defaults."""

TRAIN_DEFAULTS = {
    "family": "crelu,cst",
    "sparsity": "0.5,0.85",
    "clip": "1,inf",
    "q_star": "1",
    "width": "100",
    "depth": "20",
    "lr": "1e-3",
    "run_seed": "0,1",
    "dataset": "digits",
    "epochs": 10,
    "optimizer": "adam",
    "schedule": "constant",
    "warmup": 0.0,
    "batch_size": 32,
    "output_gain": 1.0,
    "probe_size": 256,
    "seed": 0,
    "n_jobs": -1,
    "backend": "loky",
    "overwrite": False,
    "repair": False,
    "allow_mixed_versions": False,
}
"""The built-in training sweep (``python -m simulate.grid --experiment train``): CReLU and CST at
sparsity 0.85, clipped at m = 1 and unclipped, beside the ReLU baseline (CReLU at sparsity 0.5:
tau = 0, unclipped) and its clipped twin; depth 20, width 100, 10 epochs of Adam (learning rate 1e-3,
batches of 32) on digits, 2 seeds."""

_DEFAULTS = {"init": DEFAULTS, "train": TRAIN_DEFAULTS}
_DEFAULT_OUT = {"init": Path("results/default.zarr"), "train": Path("results/train.zarr")}


class _Sweep:
    """What the two kinds of spec share: the grid of cells and the spec as TOML.

    The grid's axes are the parameter axes (``param_dims``), then the run axes (``run_dims``); a
    *cell* is one point of it, the unit of work, of storage and of resumption."""

    experiment: ClassVar[str]
    run_dims: ClassVar[tuple[str, ...]]

    @property
    def cell_dims(self) -> tuple[str, ...]:
        """The axes of the grid of cells: the parameter axes, then the run axes."""
        return (*self.param_dims, *self.run_dims)

    def coords(self) -> dict[str, tuple]:
        """Values along each cell axis."""
        return {dim: getattr(self, dim) for dim in self.cell_dims}

    @property
    def param_shape(self) -> tuple[int, ...]:
        return tuple(len(getattr(self, dim)) for dim in self.param_dims)

    @property
    def cell_shape(self) -> tuple[int, ...]:
        return (*self.param_shape, *(len(getattr(self, dim)) for dim in self.run_dims))

    def activation(self, family: str, tau: float, m: float) -> Activation:
        """The activation of ``family`` (named, or one of this spec's shapes) at (tau, m)."""
        for shape in self.shape or ():
            if shape.name == family:
                return shape.at(tau, m)
        return Activation(family, tau, m)

    def to_toml(self) -> str:
        """The spec as a TOML file that ``python -m simulate.grid FILE`` runs again. ``init`` is
        the default experiment and is not written: an init spec reads as it did before there were
        experiments."""
        body = {"experiment": self.experiment} if self.experiment != "init" else {}
        body |= {
            f.name: list(value) if isinstance(value, tuple) else value
            for f in fields(self)
            if (value := getattr(self, f.name)) is not None
        }
        if self.shape:
            body["shape"] = [shape.table() for shape in self.shape]
        return "# python -m simulate.grid THIS.toml reproduces this sweep\n" + tomli_w.dumps(body)

    @staticmethod
    def from_toml(text: str) -> Spec | TrainSpec:
        """Inverse of :meth:`to_toml` (validated like any spec file); the class follows the
        file's ``experiment``."""
        return _spec(_merge(_read_toml(text, "spec"), {}))

    @staticmethod
    def from_values(values: dict[str, Any]) -> Spec | TrainSpec:
        """A spec from the keys of a spec file given as Python values (numbers, lists, range
        strings; ``shape`` a dict or a list of dicts), defaults for the rest, validated."""
        return _spec(_merge(dict(values), {}))


@dataclass(frozen=True)
class Spec(_Sweep):
    """The scientific content of a Monte Carlo sweep (experiment ``init``): what the stored numbers
    depend on, and nothing else.

    Grid fields are sorted tuples (families in ``FAMILIES`` order) or None when not part of this kind
    of sweep; the order fixes each cell's position in the grid and so its random stream.
    """

    family: tuple[str, ...]
    sparsity: tuple[float, ...] | None
    tau: tuple[float, ...] | None
    clip: tuple[float, ...]
    q_star: tuple[float, ...] | None
    sigma_w2: tuple[float, ...] | None
    sigma_b2: tuple[float, ...] | None
    width: tuple[int, ...]
    depth: int
    nets: int
    q0: float | str
    inputs: int
    input_corr: float | tuple[float, ...] | str
    engine: str
    seed: int
    escape_factor: float
    escape_on: str
    record: str
    record_every: int
    shape: tuple[Shape, ...] | None = None  # the user shapes named in ``family``

    experiment: ClassVar[str] = "init"
    run_dims: ClassVar[tuple[str, ...]] = ("width",)

    @property
    def images(self) -> str | None:
        """The dataset whose first ``inputs`` test images are the inputs, or None (inputs of
        variance q0 with correlations ``input_corr``)."""
        corr = self.input_corr
        return corr[len(IMAGES) :] if isinstance(corr, str) else None

    @property
    def recorded_layers(self) -> tuple[int, ...]:
        """The layers a store keeps per-layer records of: 0, k, 2k, ... and ``depth`` (k =
        ``record_every``); none with ``record = "summary"``."""
        if self.record == "summary":
            return ()
        return tuple(sorted({*range(0, self.depth + 1, self.record_every), self.depth}))

    @property
    def eoc(self) -> bool:
        """True on the Edge of Chaos (sigma_w^2, sigma_b^2 solved per cell), False off it."""
        return self.sigma_w2 is None

    @property
    def param_dims(self) -> tuple[str, ...]:
        """The axes of the parameter grid, in storage order."""
        threshold = "sparsity" if self.sparsity is not None else "tau"
        if self.eoc:
            return ("family", threshold, "clip", "q_star")
        return ("family", "tau", "clip", "sigma_w2", "sigma_b2")


@dataclass(frozen=True)
class TrainSpec(_Sweep):
    """The scientific content of a training sweep (experiment ``train``).

    Parameter axes ``family, sparsity | tau, clip, q_star`` and, when given, ``chi1`` (the
    initialiser's (sigma_w^2, sigma_b^2) are ``gp.edge_of_chaos(act, q*, chi1)``: the Edge of Chaos
    without it, or off it at the same q* and sparsity), then the run axes ``width, depth, lr,
    run_seed``: one training run per cell. ``depth`` counts the hidden layers. Everything
    else is one value for the whole sweep; ``train_size`` / ``test_size`` None mean the whole split.
    """

    family: tuple[str, ...]
    sparsity: tuple[float, ...] | None
    tau: tuple[float, ...] | None
    clip: tuple[float, ...]
    q_star: tuple[float, ...]
    width: tuple[int, ...]
    depth: tuple[int, ...]
    lr: tuple[float, ...]
    run_seed: tuple[int, ...]
    dataset: str
    train_size: int | None
    test_size: int | None
    epochs: int
    optimizer: str
    schedule: str
    warmup: float
    batch_size: int
    output_gain: float
    probe_size: int
    seed: int
    shape: tuple[Shape, ...] | None = None  # the user shapes named in ``family``
    chi1: tuple[float, ...] | None = None  # None: on the Edge of Chaos (chi_1 = 1, no axis)

    experiment: ClassVar[str] = "train"
    run_dims: ClassVar[tuple[str, ...]] = ("width", "depth", "lr", "run_seed")
    eoc: ClassVar[bool] = True
    q0: ClassVar[str] = "q_star"
    """The first hidden layer starts at q* (the initialiser scales the input layer so)."""

    @property
    def param_dims(self) -> tuple[str, ...]:
        """The axes of the parameter grid, in storage order."""
        threshold = "sparsity" if self.sparsity is not None else "tau"
        return ("family", threshold, "clip", "q_star", *(("chi1",) if self.chi1 else ()))


@dataclass(frozen=True)
class Run:
    """How to run a sweep; none of it changes the numbers. (``data`` says where the named dataset's
    files are; a training store records a checksum of the images and refuses to resume on others.)"""

    out: Path
    n_jobs: int
    backend: str
    scheduler: str | None
    max_batch: int | None
    overwrite: bool
    repair: bool
    data: Path | None = None
    allow_mixed_versions: bool = False


@dataclass(frozen=True)
class SweepCell:
    """One cell: a parameter cell and a value of each run axis; where it sits in the grid and what
    to run.

    ``flat`` is its C-order position in the full grid of cells; it names the cell's random stream.
    ``depth`` is the spec's depth for a Monte Carlo sweep; ``lr`` and ``run_seed`` are None there; ``chi1`` is 1 (the EoC) unless the sweep has that axis.
    """

    flat: int
    index: tuple[int, ...]
    family: str
    tau: float
    clip: float
    sigma_w2: float
    sigma_b2: float
    q_star: float | None
    q0: float
    width: int
    activation: Activation
    depth: int
    lr: float | None = None
    run_seed: int | None = None
    chi1: float = 1.0


@dataclass(frozen=True)
class Params:
    """Per parameter cell (arrays of ``spec.param_shape``): threshold, clip and variances."""

    tau: np.ndarray
    clip: np.ndarray
    sigma_w2: np.ndarray
    sigma_b2: np.ndarray
    q_star: np.ndarray | None  # None off the Edge of Chaos
    q0: np.ndarray
    acts: np.ndarray  # the Activation of each parameter cell (dtype object)


def resolve(spec: Spec) -> Params:
    """The activation and (tau, sigma_w^2, sigma_b^2) of every parameter cell; SpecError naming the
    first infeasible one.

    On the Edge of Chaos, per cell: tau from the sparsity if the grid has one
    (``Activation.from_sparsity`` for a named family, :meth:`Shape.tau_for_sparsity` for a shape),
    then (sigma_w^2, sigma_b^2) from ``gp.edge_of_chaos(act, q*)``, which must be finite. Off it
    they are coordinates.
    """
    shape = spec.param_shape
    tau, sigma_w2, sigma_b2 = np.empty(shape), np.empty(shape), np.empty(shape)
    acts = np.empty(shape, dtype=object)
    for index in np.ndindex(shape):
        point = {dim: getattr(spec, dim)[i] for dim, i in zip(spec.param_dims, index, strict=True)}
        where = ", ".join(f"{k}={_show(v)}" for k, v in point.items())
        family, m = point["family"], point["clip"]
        try:
            if "sparsity" not in point:
                t = point["tau"]
                act = spec.activation(family, t, m)
            elif family in FAMILIES:
                act = Activation.from_sparsity(family, point["sparsity"], point["q_star"], m)
                t = act.tau
            else:
                user = next(s for s in spec.shape if s.name == family)
                t = user.tau_for_sparsity(point["sparsity"], point["q_star"], m)
                act = user.at(t, m)
            chi_1 = point.get("chi1", 1.0)
            eoc = gp.edge_of_chaos(act, point["q_star"], chi_1) if spec.eoc else None
        except ValueError as err:
            raise SpecError(f"{err} (at {where})") from None
        if eoc and not (math.isfinite(eoc.sigma_w2) and math.isfinite(eoc.sigma_b2)):
            raise SpecError(
                f"{where}: the Edge of Chaos there is not finite (sigma_w2={_show(eoc.sigma_w2)}, "
                f"sigma_b2={_show(eoc.sigma_b2)})"
            )
        acts[index] = act
        tau[index] = t
        sigma_w2[index] = eoc.sigma_w2 if eoc else point["sigma_w2"]
        sigma_b2[index] = eoc.sigma_b2 if eoc else point["sigma_b2"]
    q_star = _along(spec, "q_star") if spec.eoc else None
    q0 = q_star if spec.q0 == "q_star" else np.full(shape, float(spec.q0))
    return Params(tau, _along(spec, "clip"), sigma_w2, sigma_b2, q_star, q0, acts)


def _along(spec: Spec, dim: str) -> np.ndarray:
    """The coordinate ``dim`` at every parameter cell."""
    shape = [1] * len(spec.param_dims)
    shape[spec.param_dims.index(dim)] = -1
    return np.broadcast_to(np.reshape(getattr(spec, dim), shape), spec.param_shape)


def cells(spec: Spec, params: Params) -> Iterator[SweepCell]:
    """Every cell of the sweep, in C order over ``spec.cell_dims``."""
    n = len(spec.param_dims)
    for flat, index in enumerate(product(*(range(k) for k in spec.cell_shape))):
        p = index[:n]
        run = {d: getattr(spec, d)[i] for d, i in zip(spec.run_dims, index[n:], strict=True)}
        chi1 = spec.chi1[p[spec.param_dims.index("chi1")]] if "chi1" in spec.param_dims else 1.0
        yield SweepCell(
            flat=flat,
            index=index,
            family=spec.family[p[0]],
            tau=float(params.tau[p]),
            clip=float(params.clip[p]),
            sigma_w2=float(params.sigma_w2[p]),
            sigma_b2=float(params.sigma_b2[p]),
            q_star=None if params.q_star is None else float(params.q_star[p]),
            q0=float(params.q0[p]),
            width=run["width"],
            activation=params.acts[p],
            depth=run.get("depth", spec.depth),
            lr=run.get("lr"),
            run_seed=run.get("run_seed"),
            chi1=chi1,
        )


# --------------------------------------------------------------------------------------------------
# Parsing


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m simulate.grid``: a spec file and one flag per field."""
    p = _OneLineParser(
        prog="python -m simulate.grid",
        description="A sweep into a resumable zarr store: Monte Carlo of deep random networks "
        "(--experiment init, the default), or training them on a dataset (--experiment train); "
        "CReLU, CST, or shapes of your own given in a spec file. Lists: a,b,c; ranges: "
        "start:stop:count or log:start:stop:count; inf is a valid clip. With no arguments: the "
        "built-in default sweep into results/default.zarr (train: results/train.zarr). Flags "
        "marked (init) or (train) belong to that experiment only.",
        epilog="Before any work the sweep plans its memory and disk, and refuses in one line what "
        "does not fit. Memory: the tasks in flight, three per worker, each its cells' engine "
        "output and stored copy and the engine's workspace at the largest width, against "
        "MemAvailable in /proc/meminfo (or the room left under the cgroup's memory limit, if "
        "less); lower --n-jobs, --nets, --depth or --width. Disk: the cells left to write, each "
        "chunk file at its uncompressed size rounded up to whole blocks, against the free "
        "space and inodes of --out's filesystem. One sweep writes a store at a time (a lock, "
        "NAME.zarr.lock beside it): another is refused, naming it. Exit status: 0 done, 1 the "
        "disk filled up (the same command finishes), 2 refused (nothing written), 130 "
        "interrupted.",
    )
    p.add_argument(
        "spec",
        nargs="?",
        help="TOML file with the same keys as the flags, and [shape] tables for activations of "
        "your own (knots, values, left_slope, right_slope: numbers or expressions in tau and m; "
        "see specs/custom_shape.toml)",
    )
    for f in _FIELDS:
        only = f"({f.experiments[0]}) " if len(f.experiments) == 1 else ""
        if f.kind is _flag:
            p.add_argument(f.flag, action="store_true", default=None, help=only + f.help)
            continue
        shown = {e: _DEFAULTS[e][f.name] for e in f.experiments if f.name in _DEFAULTS[e]}
        default = ""
        if shown:
            first, *rest = shown.items()
            default = f"; default {first[1]}" + "".join(
                f" ({e}: {v})" for e, v in rest if v != first[1]
            )
        former = (f"--{f.former.replace('_', '-')}",) if f.former else ()
        p.add_argument(
            f.flag,
            *former,
            dest=f.name,
            metavar="LIST" if f.grid else f.name.upper(),
            help=f"{only}{f.help} [{f.allowed}{default}]"
            + (f" ({former[0]}: its former name)" if former else ""),
        )
    return p


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        raise SpecError(message)


def parse(argv: list[str] | None = None) -> tuple[Spec | TrainSpec, Run]:
    """(spec, Run) from a command line; SpecError on the first bad value."""
    args = vars(parser().parse_args(argv))
    path = args.pop("spec")
    flags = {k: v for k, v in args.items() if v is not None}
    if path is None:
        values = _merge({}, flags)
        return _spec(values), _run(values, _DEFAULT_OUT[values["experiment"]])
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise SpecError(f"spec={path}: cannot read it ({err.strerror})") from None
    values = _merge(_read_toml(text, path), flags)
    return _spec(values), _run(values, Path("results") / (Path(path).stem + ".zarr"))


def _read_toml(text: str, name: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"spec={name}: not valid TOML ({err})") from None


def _check_keys(data: dict[str, Any], experiment: str) -> None:
    """Every key is a field of ``experiment`` (or ``shape``)."""
    for key in data:
        field = _BY_NAME.get(key)
        if key == "shape" or (field is not None and experiment in field.experiments):
            continue
        if field is None:
            keys = [f.name for f in _FIELDS if experiment in f.experiments]
            raise SpecError(
                f"{key}={_show(data[key])}: unknown key; allowed: {', '.join(keys)}, shape"
            )
        raise SpecError(
            f"{key}={_show(data[key])}: only with experiment={field.experiments[0]} "
            f"(this sweep is experiment={experiment})"
        )


def _merge(file: dict, flags: dict) -> dict[str, Any]:
    """Defaults < file < flags, every value typed and checked, the kind of sweep settled."""
    file = _rename_former(file)
    experiment = _value(_BY_NAME["experiment"], {**file, **flags}.get("experiment", "init"))
    _check_keys({**file, **flags}, experiment)
    for given, other in (("sparsity", "tau"), ("tau", "sparsity")):
        if given in flags:
            file = {k: v for k, v in file.items() if k != other}
    shapes = _shapes(file.get("shape"))
    given = {k: v for k, v in {**file, **flags}.items() if k not in ("shape", "experiment")}
    values = {name: _value(_BY_NAME[name], token, experiment) for name, token in given.items()}
    if shapes and "family" not in values:
        values["family"] = tuple(s.name for s in shapes)
    if "family" in values:
        values["family"] = _families(values["family"], shapes)
        used = tuple(s for s in shapes if s.name in values["family"])
        values["shape"] = used or None
    eoc = "sigma_w2" not in values and "sigma_b2" not in values
    _check_kind(values, eoc)
    skip = set(values) | ({"sparsity"} if "tau" in values else set())
    if not eoc:
        skip |= {"sparsity", "q_star"}
    defaults = _DEFAULTS[experiment]
    values |= {
        k: _value(_BY_NAME[k], token, experiment) for k, token in defaults.items() if k not in skip
    }
    values["experiment"] = experiment
    if experiment == "train":
        _check_training(values)
        return values
    values.setdefault("q0", "q_star" if eoc else 1.0)
    _check_band(values, eoc)
    _check_inputs(values, given)
    if values["record"] == "summary" and values["record_every"] != 1:
        raise SpecError(
            f"record_every={values['record_every']}: only with record=layers (a summary store "
            "keeps no layers)"
        )
    return values


_FORMER = {f.former: f.name for f in _FIELDS if f.former}


def _rename_former(file: dict) -> dict:
    """A spec file's keys under their current names (``_Field.former``); SpecError if a file gives
    both names. (Flags need no renaming: the former flag fills the same field.)"""
    out = {}
    for key, value in file.items():
        name = _FORMER.get(key, key)
        if name != key and name in file:
            raise SpecError(f"{key}={_show(value)}: the former name of {name}; give only {name}")
        out[name] = value
    return out


def _check_inputs(values: dict, given: dict) -> None:
    """B inputs with initial correlations: every correlation in (-1, 1), one or B(B-1)/2 of them,
    and a positive definite correlation matrix; images: q0 not given, and at most as many images
    as the test set has (checked when it is loaded). ``data`` only for images:fashion-mnist."""
    b, corr = values["inputs"], values["input_corr"]
    if isinstance(corr, str):
        if "q0" in given:
            raise SpecError(
                f"q0={_show(values['q0'])}: not with input_corr={corr} (the images set the "
                "inputs' variances)"
            )
    else:
        values_ = corr if isinstance(corr, tuple) else (corr,)
        for c in values_:
            if not -1 < c < 1:
                raise SpecError(f"input_corr={_show(c)}: must be in (-1, 1)")
        pairs = b * (b - 1) // 2
        if isinstance(corr, tuple) and len(corr) != pairs:
            raise SpecError(
                f"input_corr={_show(corr)}: {len(corr)} values, must be one or B(B-1)/2 = {pairs} "
                f"(inputs={b}; pairs a < b in row-major order)"
            )
        smallest = (  # equicorrelated: eigenvalues 1 - c and 1 + (B - 1) c, no B x B matrix
            float(np.linalg.eigvalsh(correlation_matrix(corr, b))[0])
            if isinstance(corr, tuple)
            else (min(1 - corr, 1 + (b - 1) * corr) if b > 1 else 1.0)
        )
        if smallest <= SEMIDEFINITE_TOL:
            raise SpecError(
                f"input_corr={_show(corr)}: the initial Gram matrix of the {b} inputs is not "
                f"positive definite (smallest eigenvalue {smallest:.3g} of their correlation matrix)"
            )
    if "data" in values and values.get("input_corr") != IMAGES + "fashion-mnist":
        raise SpecError(
            f"data={values['data']}: only with input_corr={IMAGES}fashion-mnist (the other "
            "inputs need no files)"
        )


def _check_training(values: dict) -> None:
    """What a training sweep's single values must satisfy together (the dataset's own sizes are
    checked when it is loaded, by ``simulate.grid``)."""
    if values["warmup"] >= values["epochs"]:
        raise SpecError(
            f"warmup={_show(values['warmup'])}: must be < epochs ({values['epochs']}), "
            "the warm-up is part of the run"
        )
    if values.get("train_size", math.inf) < values["batch_size"]:
        raise SpecError(
            f"batch_size={values['batch_size']}: must be <= train_size ({values['train_size']})"
        )
    if "data" in values and values["dataset"] != "fashion-mnist":
        raise SpecError(
            f"data={values['data']}: only with dataset=fashion-mnist "
            f"({values['dataset']} ships with scikit-learn)"
        )


def _check_band(values: dict, eoc: bool) -> None:
    """The escape band [q_ref / f, f q_ref] must hold the inputs (q0, else every network escapes at
    layer 0) and stay far from overflow (f q_ref <= 1e100, the engines' limit)."""
    f, q0 = values["escape_factor"], values["q0"]
    refs = values["q_star"] if eoc else [q0]
    if f * max(refs) > 1e100:
        raise SpecError(
            f"escape_factor={_show(f)}: escape_factor * q_ref must be <= 1e100 "
            f"(q_ref up to {_show(max(refs))})"
        )
    if eoc and q0 != "q_star":
        outside = [q for q in refs if not q / f <= q0 <= q * f]
        if outside:
            raise SpecError(
                f"q0={_show(q0)}: must lie inside the escape band [q*/{_show(f)}, {_show(f)} q*] "
                f"of every q* (not of q*={_show(outside[0])})"
            )


def _shapes(tables) -> tuple[Shape, ...]:
    """The ``[shape]`` table or ``[[shape]]`` tables of a spec file, names distinct."""
    if tables is None:
        return ()
    shapes = tuple(Shape.from_table(t) for t in (tables if isinstance(tables, list) else [tables]))
    names = [s.name for s in shapes]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise SpecError(f"shape.name={name}: two shapes have this name; give each its own")
    return shapes


def _families(given: tuple[str, ...], shapes: tuple[Shape, ...]) -> tuple[str, ...]:
    """The family labels, each named or a shape's name, in the order: named families, shapes."""
    order = [*FAMILIES, *(s.name for s in shapes)]
    for family in given:
        if family not in order:
            raise SpecError(f"family={family}: must be {_FAMILY_ALLOWED}")
    return tuple(sorted(given, key=order.index))


def _spec(values: dict) -> Spec | TrainSpec:
    cls = TrainSpec if values["experiment"] == "train" else Spec
    return cls(**{f.name: values.get(f.name) for f in fields(cls)})


def _run(values: dict, default_out: Path) -> Run:
    if "scheduler" in values and values["backend"] != "dask":
        raise SpecError(
            f"scheduler={values['scheduler']}: only with backend=dask (not {values['backend']})"
        )
    return Run(
        out=Path(values.get("out", default_out)),
        n_jobs=values["n_jobs"],
        backend=values["backend"],
        scheduler=values.get("scheduler"),
        max_batch=values.get("max_batch"),
        overwrite=values["overwrite"],
        repair=values["repair"],
        data=Path(values["data"]) if "data" in values else None,
        allow_mixed_versions=values["allow_mixed_versions"],
    )


def _check_kind(values: dict, eoc: bool) -> None:
    """The fields that may appear together: sparsity xor tau; off the EoC tau and both sigmas."""
    if "sparsity" in values and "tau" in values:
        raise SpecError(f"tau={_show(values['tau'])}: give sparsity or tau, not both")
    if eoc:
        return
    for need in ("sigma_w2", "sigma_b2", "tau"):
        if need not in values:
            raise SpecError(f"{need}=(missing): required off the Edge of Chaos (with sigma_w2/b2)")
    for banned in ("sparsity", "q_star"):
        if banned in values:
            raise SpecError(
                f"{banned}={_show(values[banned])}: only on the Edge of Chaos; off it "
                "(sigma_w2/sigma_b2 given) the grid takes tau and the inputs start at q0"
            )
    if values.get("q0") == "q_star":
        raise SpecError("q0=q_star: off the Edge of Chaos there is no q*; give a number")


def _value(field: _Field, token, experiment: str = "init"):
    """A checked value of ``field``: a sorted tuple of distinct values for a grid (an axis of
    ``experiment``), else one value."""
    grid = experiment in field.grid
    items = _items(field, token, grid)
    for item in items:
        if not field.ok(item):
            raise SpecError(f"{field.name}={_show(item)}: must be {field.allowed}")
    if not grid:
        if len(items) != 1:
            raise SpecError(f"{field.name}={_show(token)}: must be one value, {field.allowed}")
        return items[0]
    if not items:
        raise SpecError(f"{field.name}=(empty): needs at least one value, {field.allowed}")
    seen = set()  # (not a scan of the items before each: a long range would take hours)
    for item in items:
        if item in seen:
            raise SpecError(f"{field.name}={_show(item)}: listed twice; give each value once")
        seen.add(item)
    return tuple(items) if field.name == "family" else tuple(sorted(items))  # see _families


_NUMERIC = (_number, _integer, _q0)


def _items(field: _Field, token, grid: bool) -> list:
    """Typed values of one raw token: a TOML scalar or array, or a flag-style string (a comma list
    for grids and numbers; ranges for numbers). A field of another kind reads the whole token."""
    if not (grid or field.kind in _NUMERIC):
        return [_typed(field, token)]
    if isinstance(token, list):
        return [v for t in token for v in _items(field, t, grid)]
    if not isinstance(token, str):
        return [_typed(field, token)]
    return [v for part in token.split(",") for v in _expand(field, part.strip())]


MAX_RANGE = 10**6
"""Most values a range expands to: a longer axis makes a sweep of millions of cells, which no disk
holds (a cell is about 17 files), and listing it would itself take the memory such a sweep is
refused for."""


def _expand(field: _Field, part: str) -> list:
    """``a``, ``start:stop:count`` (linear, endpoints included) or ``log:start:stop:count``;
    ranges of an integer field are rounded to the nearest integer."""
    if ":" not in part or field.kind not in _NUMERIC:
        return [_typed(field, part)]
    pieces = part.split(":")
    log = pieces[0] == "log"
    bounds = pieces[1:] if log else pieces
    try:
        if len(bounds) != 3:
            raise ValueError(part)
        start, stop, count = float(bounds[0]), float(bounds[1]), _integer(bounds[2])
        if not 1 <= count <= MAX_RANGE or not (math.isfinite(start) and math.isfinite(stop)):
            raise ValueError(part)
        if log and (start <= 0 or stop <= 0):
            raise ValueError(part)
    except ValueError:
        raise SpecError(
            f"{field.name}={part}: a range is start:stop:count or log:start:stop:count "
            f"(finite ends, 1 <= count <= {MAX_RANGE:,}, log ends > 0)"
        ) from None
    points = (np.geomspace if log else np.linspace)(start, stop, count)
    if field.kind is _integer:
        points = np.rint(points)
    return [field.kind(float(p)) for p in points]


def _typed(field: _Field, token):
    try:
        return field.kind(token)
    except (ValueError, TypeError):
        raise SpecError(f"{field.name}={_show(token)}: must be {field.allowed}") from None


# --------------------------------------------------------------------------------------------------
# User shapes

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_NAMES = ("tau", "m")
_GRAMMAR = "numbers, tau, m, + - * / and parentheses"
_ALLOWED = (ast.BinOp, ast.UnaryOp, ast.Name, ast.Load, *_BINARY, *_UNARY)


def _compile(text: str, field: str) -> ast.expr:
    """The syntax tree of an arithmetic expression in tau and m; SpecError for anything else."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError):  # ValueError: an integer literal too long to parse
        raise SpecError(f"{field}={text}: not an expression; allowed: {_GRAMMAR}") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in _NAMES:
            raise SpecError(f"{field}={text}: unknown name {node.id}; allowed: {_GRAMMAR}")
        number = isinstance(node, ast.Constant) and type(node.value) in (int, float)
        if not (number or isinstance(node, _ALLOWED)) or (
            number and not math.isfinite(_as_float(node.value))
        ):
            raise SpecError(f"{field}={text}: not allowed in an expression; allowed: {_GRAMMAR}")
    return tree


def _as_float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _evaluate(node: ast.expr, names: dict[str, float]) -> float:
    """The value of a tree from :func:`_compile` (IEEE arithmetic: x / 0 is +-inf or nan)."""
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        return names[node.id]
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_evaluate(node.operand, names))
    left, right = _evaluate(node.left, names), _evaluate(node.right, names)
    with np.errstate(all="ignore"):
        return float(_BINARY[type(node.op)](np.float64(left), np.float64(right)))


def _term(token, field: str) -> float | str:
    """One knot, value or slope of a shape as written: a number, or an expression (kept as text)."""
    if isinstance(token, bool) or not isinstance(token, int | float | str):
        raise SpecError(f"{field}={_show(token)}: must be a number or an expression in {_GRAMMAR}")
    if isinstance(token, str):
        _compile(token, field)
        return token.strip()
    return float(token)


@dataclass(frozen=True)
class Shape:
    """A user's continuous piecewise-linear activation: knots, values at them, slopes outside,
    each a number or an expression in the grid's tau and clip level m (see the module docstring)."""

    name: str
    knots: tuple[float | str, ...]
    values: tuple[float | str, ...]
    left_slope: float | str = 0.0
    right_slope: float | str = 0.0

    @classmethod
    def from_table(cls, table) -> Shape:
        """A ``[shape]`` table of a spec file; SpecError naming the first bad entry."""
        if not isinstance(table, dict):
            raise SpecError(f"shape={_show(table)}: must be a table [shape] or [[shape]]")
        name = table.get("name")
        if not isinstance(name, str) or not name.strip() or "," in name or name in FAMILIES:
            raise SpecError(
                f"shape.name={_show(name)}: must be a text without commas, other than "
                f"{', '.join(FAMILIES)} (it labels the shape's family)"
            )
        name = name.strip()
        keys = ("name", "knots", "values", "left_slope", "right_slope")
        for key in table:
            if key not in keys:
                raise SpecError(
                    f"shape.{name}.{key}={_show(table[key])}: unknown key; allowed: {', '.join(keys)}"
                )
        lists = {}
        for key in ("knots", "values"):
            items = table.get(key)
            if not isinstance(items, list) or not items:
                raise SpecError(
                    f"shape.{name}.{key}={_show(items)}: must be a list of at least one number "
                    f"or expression in {_GRAMMAR}"
                )
            lists[key] = tuple(_term(t, f"shape.{name}.{key}") for t in items)
        if len(lists["values"]) != len(lists["knots"]):
            raise SpecError(
                f"shape.{name}.values={_show(list(lists['values']))}: must have one value per knot "
                f"({len(lists['knots'])})"
            )
        slopes = {k: _term(table.get(k, 0.0), f"shape.{name}.{k}") for k in keys[3:]}
        return cls(name, lists["knots"], lists["values"], **slopes)

    def table(self) -> dict:
        """The ``[shape]`` table this shape reads from."""
        return {
            "name": self.name,
            "knots": list(self.knots),
            "values": list(self.values),
            "left_slope": self.left_slope,
            "right_slope": self.right_slope,
        }

    def uses(self, name: str) -> bool:
        """True when some entry is an expression that mentions ``name`` (tau or m)."""
        terms = (*self.knots, *self.values, self.left_slope, self.right_slope)
        return any(
            isinstance(t, str)
            and any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(_compile(t, "")))
            for t in terms
        )

    def at(self, tau: float, m: float) -> Activation:
        """The activation at one grid point; ValueError naming the field, its entries and what is
        wrong with their values there."""
        names = {"tau": float(tau), "m": float(m)}
        where = f"at tau={_show(float(tau))}, m={_show(float(m))}"

        def evaluate(key: str, terms) -> list[float]:
            out = [t if isinstance(t, float) else _evaluate(_compile(t, key), names) for t in terms]
            if not all(math.isfinite(v) for v in out):
                raise ValueError(
                    f"shape.{self.name}.{key}={_show(list(terms))}: must be finite; {where} it is "
                    f"{_show(out)}"
                    + (" (a shape that uses m needs finite clip levels)" if math.isinf(m) else "")
                )
            return out

        knots = evaluate("knots", self.knots)
        values = evaluate("values", self.values)
        (left,) = evaluate("left_slope", (self.left_slope,))
        (right,) = evaluate("right_slope", (self.right_slope,))
        if any(b <= a for a, b in pairwise(knots)):
            raise ValueError(
                f"shape.{self.name}.knots={_show(list(self.knots))}: must be strictly increasing; "
                f"{where} they are {_show(knots)}"
            )
        return Activation.piecewise_linear(knots, values, left, right, name=self.name)

    def tau_for_sparsity(self, sparsity: float, q_star: float, m: float) -> float:
        """The smallest tau in [0, 40 sqrt(q*)] at which the GP sparsity at q*,

            s(tau) = P(phi_tau(sqrt(q*) z) = 0),  z ~ N(0, 1)   (``gp.sparsity``),

        equals ``sparsity``: s is evaluated on a grid of tau (0 and 120 geometric steps from
        1e-6 sqrt(q*)), skipping the taus where the shape is invalid, and the first bracket where
        s - sparsity changes sign is solved by brentq (to 1e-13 sqrt(q*)). s is continuous in tau
        when the knots move continuously with it (as a shape's expressions do). ValueError naming
        the reachable range when no bracket exists."""
        scale = math.sqrt(q_star)
        taus = scale * np.concatenate([[0.0], np.geomspace(1e-6, 40.0, 120)])

        def gap(tau: float) -> float:
            return float(gp.sparsity(self.at(tau, m), q_star)) - sparsity

        points = []
        for tau in taus:
            try:
                points.append((float(tau), gap(float(tau))))
            except ValueError:
                continue
        for (t0, g0), (t1, g1) in pairwise(points):
            if g0 == 0.0:
                return t0
            if g0 * g1 < 0:
                try:
                    return optimize.brentq(
                        gap, t0, t1, xtol=1e-13 * scale, rtol=4 * np.finfo(float).eps
                    )
                except ValueError:  # the shape is invalid somewhere between two valid taus
                    break
        if points and points[-1][1] == 0.0:
            return points[-1][0]
        reach = [g + sparsity for _, g in points]
        span = f"[{min(reach):.4g}, {max(reach):.4g}]" if reach else "nothing (no valid tau)"
        raise ValueError(
            f"sparsity={_show(sparsity)}: shape {self.name} reaches GP sparsity {span} at q*={_show(q_star)}, "
            f"m={_show(m)} for tau in [0, {_show(40.0)} sqrt(q*)]"
            + (" (its zero set does not depend on tau)" if not self.uses("tau") else "")
        )


def _show(value) -> str:
    """A value as a user would write it: 0.5, inf, crelu, [1, 2]."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, float):  # the shortest text that reads back as the same float
        return str(int(value)) if value.is_integer() and abs(value) < 1e16 else repr(value)
    if isinstance(value, (list, tuple)):
        return ",".join(_show(v) for v in value)
    return str(value)
