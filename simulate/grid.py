"""``python -m simulate.grid``: run a sweep from its spec into a resumable zarr store.

    spec (flags / TOML) -> validated whole: values, EoC per cell, engine, disk and memory
        -> store created empty, or an existing one inspected (every chunk read back against its
           checksum; damaged cells unmarked, unreadable coordinates and theory rewritten)
        -> batches of unfinished cells -> joblib (loky, threading, or dask.distributed)
        -> each finished cell written, flushed to disk, then marked done

Two experiments share this machinery: ``init`` (the default), a Monte Carlo of random networks per
cell (:func:`simulate_cell`), and ``train``, one training run per cell (:func:`train_cell`, with
:func:`simulate.train.run.train_network`). A training sweep first loads its dataset in the main
process (a missing or bad one is a spec error), and records the images' checksum in the store;
each worker process loads it once, and caps XLA at one thread (:func:`simulate.train.
limit_cpu_threads`) so that n workers use n cores. The main process caps it too, before anything can
import JAX, so a run in-process (``--n-jobs 1``, threads) computes what the workers compute.

Determinism: the cell at flat position i of the full grid (C order over ``Spec.cell_dims``) draws its
random numbers from ``SeedSequence(seed).spawn(n_cells)[i]``, built directly as
``SeedSequence(seed, spawn_key=(i,))`` (the same object); a training run's stream is a grandchild
(:func:`cell_seed`). A cell's values therefore depend on the spec alone, never on n_jobs, backend,
batching, order or how many times the sweep was resumed.

A store whose root metadata cannot be read (so its spec is lost) is refused, unless ``--repair``:
then its metadata is rebuilt from the given spec and its chunk files kept, and it is inspected as above.

One sweep writes a store at a time (``store.lock``): a second is refused, naming the first. Before
any work the sweep plans its disk and memory (:func:`_check_disk`, :func:`_check_memory`) and
compares the numerics that computed the store's cells with its own (:func:`_check_versions`); each
cell records its own (``cell_version``). Worker processes end with the main process, even when it
is killed -9 (:mod:`simulate.workers`).

Exit status: 0 done (or nothing left to do), 1 the disk filled up (one line; the store keeps every
finished cell and the same command resumes), 2 bad spec, a store another sweep is writing or one
computed by other numerics (one line on stderr, nothing written), 130 interrupted (the store keeps
every finished cell; the same command resumes).
"""

from __future__ import annotations

import datetime
import errno
import functools
import hashlib
import importlib.metadata
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

import joblib
import numba
import numpy as np
import xarray as xr
from tqdm import tqdm

from simulate import engines, resources, schema, store, workers
from simulate.resources import human_size
from simulate.spec import (
    TRAIN_EXTRA,
    Params,
    Run,
    Spec,
    SpecError,
    SweepCell,
    TrainSpec,
    cells,
    parse,
    resolve,
)
from simulate.train import checkpoint, limit_cpu_threads
from simulate.train.data import FASHION_DIR, Dataset, MissingDataError, load_dataset
from simulate.train.run import train_network

TASK_COST = 5e7
"""Work a parallel task aims for, in the engines' cost unit (ns on one core): small cells are
batched up to it, so that a task takes some tens of milliseconds and joblib's per-task overhead stays
small."""


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _stop_on_sigterm() -> None:
    """SIGTERM (``kill``, a batch scheduler's stop) ends the sweep as Ctrl-C does: the finished
    cells are kept and the same command resumes. (Only the main thread may set a handler; a
    sweep run from another thread keeps the default.)"""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


def main(argv: list[str] | None = None) -> int:
    """Run the sweep given by ``argv`` (see ``python -m simulate.grid --help``); the exit status."""
    started = time.perf_counter()
    _cap_xla_threads()
    try:
        _stop_on_sigterm()
        spec, run = parse(argv)
        images = _images(spec, run)
        _check_writable(run)
        try:
            with store.lock(run.out):
                n_todo = _sweep(spec, run, images)
        except store.Busy as holder:
            raise SpecError(
                f"out={run.out}: another sweep is writing this store ({holder}); wait for it to "
                "end, or stop it, then run this again"
            ) from None
    except SpecError as err:
        print(f"simulate.grid: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _log("interrupted: finished cells are kept in the store; the same command resumes")
        return 130
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        _log(
            f"out={run.out}: the disk is full ({err.strerror}); the finished cells are kept: "
            "free some space, then run the same command to finish"
        )
        return 1
    if n_todo is None:
        _next_steps(run.out)
        return 0
    elapsed = time.perf_counter() - started
    _log(f"done: {n_todo} cells in {elapsed:.1f} s ({n_todo / max(elapsed, 1e-9):.2f} cells/s)")
    print(f"simulate.grid: wrote {run.out}")
    _next_steps(run.out)
    return 0


def _sweep(spec: Spec | TrainSpec, run: Run, images: Images | None) -> int | None:
    """The sweep, under the store's lock: the store found at ``run.out`` checked against the spec,
    the resources planned and the numerics' versions compared (SpecError, nothing written), then
    the store created, rebuilt or repaired and its missing cells run. Returns how many cells ran,
    None when there was nothing to do."""
    started = time.perf_counter()
    mode, found = _existing(spec, run, images)
    done = found.intact if found is not None else np.zeros(spec.cell_shape, dtype=bool)
    n_todo = int(done.size - np.count_nonzero(done))
    _check_disk(spec, run, n_todo, mode != "resume", images)  # before resolve: a huge grid fails
    params = resolve(spec)
    engine = _check_engine(spec, params)
    _check_memory(spec, run, mode != "resume", images, engine)
    skeleton = None
    if mode == "rebuild":  # asked for (--repair); then inspected as any store
        skeleton = _skeleton(spec, params, images)
        store.rebuild(run.out, skeleton, spec)
        mode, found = "resume", store.Writer(run.out).inspect(schema.array_names(spec))
    version = _planned_versions(engine)
    mixed = _check_versions(spec, run, found, version) if mode == "resume" else None
    if mode == "resume" and found.intact.all() and not found.damaged:
        print(f"simulate.grid: nothing to do: all {done.size} cells of {run.out} are done")
        return None
    with _parallel(run) as n_workers:
        if skeleton is None and (mode == "create" or found.arrays):  # the theory takes a while
            skeleton = _skeleton(spec, params, images)
        if mode == "create":
            store.create(run.out, skeleton, spec)
            shutil.rmtree(checkpoint_folder(run.out), ignore_errors=True)  # another sweep's
        store.clean(run.out)
        writer = store.Writer(run.out)
        writer.record_versions()
        if found is not None and found.damaged:
            _log(f"{run.out}: {found.describe()}: repairing (damaged cells are recomputed)")
            writer.repair(found, skeleton)
        if mixed:
            writer.update_attrs(
                {"mixed_versions": [*writer.attrs.get("mixed_versions", []), mixed]}
            )
        done = writer.done()
        n_todo = int(done.size - np.count_nonzero(done))
        _execute(spec, run, params, done, n_workers, images, engine, version)
    writer.update_attrs(
        {"wall_time_s": writer.attrs["wall_time_s"] + time.perf_counter() - started}
    )
    return n_todo


def _existing(
    spec: Spec | TrainSpec, run: Run, images: Images | None
) -> tuple[str, store.Inspection | None]:
    """What to do at ``run.out``: ("create", None) for a new store; ("resume", what
    ``Writer.inspect`` found) when it holds this sweep (a training sweep: on the same images);
    ("rebuild", None) when it is a sweep store whose metadata cannot be read and ``--repair`` was
    given. SpecError if it holds something else or is damaged (without ``--overwrite``; a damaged one
    also without ``--repair``), or is not a sweep store."""
    if not run.out.exists():
        return "create", None
    try:
        text = store.read_spec(run.out)
    except store.DamagedStore as err:
        if run.overwrite:
            return "create", None
        if run.repair:
            return "rebuild", None
        raise SpecError(
            f"out={run.out}: a damaged sweep store ({err}); give --repair to rebuild it from "
            "this spec, keeping its intact cells, or --overwrite to start again"
        ) from None
    if text is None:
        raise SpecError(
            f"out={run.out}: exists and is not a sweep store; choose another --out "
            "(it is never replaced, even with --overwrite)"
        )
    if run.overwrite:
        return "create", None
    old = Spec.from_toml(text)
    if old != spec:
        changed = (
            [f.name for f in fields(spec) if getattr(old, f.name) != getattr(spec, f.name)]
            if type(old) is type(spec)
            else ["experiment"]
        )
        raise SpecError(
            f"out={run.out}: holds a different sweep (differs in {', '.join(changed)}); "
            "give --overwrite to replace it, or another --out"
        )
    writer = store.Writer(run.out)
    stored = writer.attrs.get("data_sha256")
    if images is not None and stored != images.sha256:
        name, verb = (
            (spec.dataset, "trained on")
            if spec.experiment == "train"
            else (spec.images, "made from")
        )
        raise SpecError(
            f"{_where(name, run)}: other images than the store was {verb} "
            f"(sha256 {images.sha256[:12]}..., the store's {str(stored)[:12]}...); give the "
            "same data, or --overwrite"
        )
    return "resume", writer.inspect(schema.array_names(spec))


def _execute(
    spec: Spec | TrainSpec,
    run: Run,
    params: Params,
    done: np.ndarray,
    n_workers: int,
    images: Images | None,
    engine: np.ndarray,
    version: np.ndarray,
) -> None:
    """Run the cells not ``done`` in parallel tasks, writing the cells of each task to the store
    as it arrives, with their ``version`` (:func:`_planned_versions`).

    Cells, batches and tasks are generated lazily (joblib pre-dispatches two tasks per worker), so
    memory holds a few tasks' cells whatever the size of the grid."""
    writer = store.Writer(run.out)
    n_todo = int(done.size - np.count_nonzero(done))
    if spec.experiment == "train":
        work = f"{spec.epochs} epochs of {spec.dataset} ({images.n_train} images), {spec.optimizer}"
    else:
        inputs = f"{spec.inputs} inputs" + (f" ({spec.images} images)" if spec.images else "")
        counts = Counter(engine.flat)
        engines_used = ", ".join(f"{name} {n}" for name, n in counts.items())
        work = (
            f"{spec.nets} nets, depth {spec.depth}, {inputs}, escape on {spec.escape_on}, "
            f"engine {spec.engine}: {engines_used} cells"
        )
    _log(
        f"{n_todo} of {done.size} cells to run ({' x '.join(map(str, spec.cell_shape))} over "
        f"{', '.join(spec.cell_dims)}; {work}) on {n_workers} {run.backend} workers -> {run.out}"
    )
    todo = (cell for cell in cells(spec, params) if not done[cell.index])
    target = min(TASK_COST, _todo_cost(spec, params, done, images) / (4 * n_workers))
    batches = _batches(spec, todo, target, run.max_batch, images)
    training = spec.experiment == "train"
    folder = checkpoint_folder(run.out) if training else None
    if training:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CHECKPOINTS_VERSION).write_text(str(version.flat[0]))
    tasks = (joblib.delayed(run_batch)(spec, batch, run.data, folder) for batch in batches)
    parallel = joblib.Parallel(n_jobs=run.n_jobs, return_as="generator_unordered", batch_size=1)
    progress = (
        _Progress(n_todo, "epoch", spec.epochs, lambda: _epochs_in_flight(folder))
        if training
        else _Progress(n_todo)
    )
    with progress, warnings.catch_warnings(), closing(parallel(tasks)) as results:
        # on Ctrl-C joblib warns that it cancelled the tasks in flight: that is the point
        warnings.filterwarnings("ignore", "tasks which were still being processed", UserWarning)
        for finished in results:
            writer.write_cells(
                [(cell.index, values, version[cell.index]) for cell, values in finished]
            )
            for cell, _ in finished if training else ():
                checkpoint_file(folder, cell.flat).unlink(missing_ok=True)
            progress.update(len(finished))
    if training and not any(folder.glob("cell-*.npz")):
        shutil.rmtree(folder)


def _epochs_in_flight(folder: Path) -> int:
    """Epochs finished by the runs in flight: the sum of their checkpoints' last epochs."""
    files = folder.glob("cell-*.npz") if folder.is_dir() else ()
    return sum(epoch for f in files if (epoch := checkpoint.epoch_of(f)) is not None)


def _next_steps(out: Path) -> None:
    print(f"next: python -m analysis.report {out}   (figures and report)")


def _log(message: str) -> None:
    print(f"simulate.grid: {message}", file=sys.stderr, flush=True)


class _Progress:
    """Progress over ``cells`` cells of ``per_cell`` units each: a tqdm bar (units, rate, ETA) on a
    terminal; otherwise a log line per tenth of the units.

    ``in_flight()``, when given, counts the units finished by the cells still running (a training
    sweep: the epochs in its checkpoints); it is polled every ``POLL_S`` seconds, so a sweep of few
    long runs moves epoch by epoch."""

    POLL_S = 5.0

    def __init__(self, cells: int, unit="cell", per_cell=1, in_flight=None):
        self.cells, self.per_cell, self.unit, self.done = cells, per_cell, unit, 0
        self.total, self._logged, self._start = cells * per_cell, 0, time.perf_counter()
        self._in_flight, self._lock, self._stop = in_flight, threading.Lock(), threading.Event()
        self._bar = tqdm(
            total=self.total, unit=unit, disable=not sys.stderr.isatty(), file=sys.stderr
        )
        self._poller = threading.Thread(target=self._poll, daemon=True) if in_flight else None
        self._resumed = in_flight() if in_flight else 0  # done before this run: not in the rate
        self._bar.update(self._resumed)

    def update(self, k: int) -> None:
        """``k`` more cells are finished (and written)."""
        with self._lock:
            self.done += k
        self._show(self._in_flight() if self._in_flight else 0)

    def _show(self, extra: int) -> None:
        with self._lock:
            n = min(self.done * self.per_cell + extra, self.total)
            self._bar.n = n
            self._bar.set_postfix_str(f"{self.done}/{self.cells} cells", refresh=False)
            self._bar.refresh()
            if self._bar.disable and 10 * n // max(self.total, 1) > self._logged:
                self._logged = 10 * n // max(self.total, 1)
                rate = (n - self._resumed) / (time.perf_counter() - self._start)
                _log(
                    f"{n}/{self.total} {self.unit}s, {self.done}/{self.cells} cells "
                    f"({rate:.3g} {self.unit}s/s)"
                )

    def _poll(self) -> None:
        while not self._stop.wait(self.POLL_S):
            self._show(self._in_flight())

    def __enter__(self):
        if self._poller:
            self._poller.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._bar.close()


# --------------------------------------------------------------------------------------------------
# The work


def cell_seed(spec: Spec | TrainSpec, cell: SweepCell) -> np.random.SeedSequence:
    """The random stream of ``cell``.

    Monte Carlo: child ``cell.flat`` of ``SeedSequence(spec.seed)``. Training: child ``run_seed``
    (the seed's value) of child p of ``SeedSequence(spec.seed)``, p the cell's flat position in the
    grid without the run_seed axis (its last axis). So a run depends on its seed's value, not on
    which other seeds the sweep lists: ``--run-seed 2`` alone reproduces that run of
    ``--run-seed 0,1,2`` (with the other axes the same)."""
    if spec.experiment == "train":
        position = cell.flat // len(spec.run_seed)
        return np.random.SeedSequence(spec.seed, spawn_key=(position, cell.run_seed))
    return np.random.SeedSequence(spec.seed, spawn_key=(cell.flat,))


def simulate_cell(
    spec: Spec, cell: SweepCell, data_dir: Path | None = None
) -> dict[str, np.ndarray]:
    """One cell through the engine, as the stored arrays (``schema.cell_variables``): B inputs of
    variance q0 with correlations ``input_corr``, or the first B test images of a dataset (from
    ``data_dir`` for Fashion-MNIST, default the system's), escapes on ``escape_on``; the per-layer
    variables at the recorded layers (the summaries are the engine run's, from every layer)."""
    if spec.images:
        layer0 = {"inputs": _dataset(spec.images, data_dir, None, None).x_test[: spec.inputs]}
    else:
        layer0 = {"q0": cell.q0, "c0": spec.input_corr, "n_inputs": spec.inputs}
    ds = engines.run_cell(
        cell.activation,
        cell.sigma_w2,
        cell.sigma_b2,
        width=cell.width,
        depth=spec.depth,
        nets=spec.nets,
        q_ref=cell.q_star,
        engine=spec.engine,
        seed=cell_seed(spec, cell),
        escape_factor=spec.escape_factor,
        escape_on=spec.escape_on,
        **layer0,
    )
    if spec.recorded_layers:
        ds = ds.sel(layer=list(spec.recorded_layers))
    return {
        name: ds[name].transpose(*var.dims).values.astype(var.dtype)
        for name, var in schema.cell_variables(spec).items()
    }


def train_cell(
    spec: TrainSpec,
    cell: SweepCell,
    data_dir: Path | None = None,
    checkpoints: Path | None = None,
) -> dict[str, np.ndarray]:
    """One training run (:func:`simulate.train.run.train_network` with the cell's activation, q*,
    chi_1, depth, width, learning rate and stream :func:`cell_seed`, and the spec's other settings)
    as the stored arrays (``schema.TRAIN_CELL_VARIABLES``), the ``layer`` axis padded with NaN to the
    sweep's largest depth. ``data_dir``: where the Fashion-MNIST files are (default: the system's).
    ``checkpoints``: the folder of the runs' checkpoints (:func:`checkpoint_file`); the run saves
    its state there after every epoch and resumes from it."""
    _cap_xla_threads()
    result = train_network(
        cell.activation,
        cell.q_star,
        cell.depth,
        cell.width,
        _dataset(spec.dataset, data_dir, spec.train_size, spec.test_size),
        epochs=spec.epochs,
        lr=cell.lr,
        optimizer=spec.optimizer,
        schedule=spec.schedule,
        warmup=spec.warmup,
        batch_size=spec.batch_size,
        seed=cell_seed(spec, cell),
        output_gain=spec.output_gain,
        probe_size=spec.probe_size,
        chi_1=cell.chi1,
        checkpoint=None if checkpoints is None else checkpoint_file(checkpoints, cell.flat),
    )
    out = {}
    for name, var in schema.TRAIN_CELL_VARIABLES.items():
        value = np.asarray(result[name])
        if "layer" in var.dims:
            pad = [(0, 0)] * value.ndim
            pad[var.dims.index("layer")] = (0, max(spec.depth) - cell.depth)
            value = np.pad(value, pad, constant_values=np.nan)
        out[name] = value.astype(var.dtype)
    return out


def run_batch(
    spec: Spec | TrainSpec,
    batch: list[SweepCell],
    data_dir: Path | None = None,
    checkpoints: Path | None = None,
) -> list[tuple[SweepCell, dict]]:
    """A parallel task: (cell, stored arrays) of each cell of ``batch``."""
    if spec.experiment == "train":
        return [(cell, train_cell(spec, cell, data_dir, checkpoints)) for cell in batch]
    return [(cell, simulate_cell(spec, cell, data_dir)) for cell in batch]


def checkpoint_folder(out: Path) -> Path:
    """Where a training sweep keeps the checkpoints of its runs in flight: beside the store,
    ``NAME.zarr.checkpoints/``. A run's file is removed once its cell is written, and the folder
    once the sweep is done; a new store (``--overwrite``) starts with none."""
    return out.with_name(out.name + ".checkpoints")


CHECKPOINTS_VERSION = "numerics"
"""The file in the checkpoint folder that names the numerics of its checkpoints (the sweep that
wrote them: ``schema.numerics_version``)."""


def checkpoint_file(folder: Path, flat: int) -> Path:
    """The checkpoint of the cell at flat position ``flat`` (:mod:`simulate.train.checkpoint`)."""
    return folder / f"cell-{flat}.npz"


@functools.lru_cache(maxsize=2)
def _dataset(name: str, data_dir: Path | None, train_size: int | None, test_size: int | None):
    """``simulate.train.data.load_dataset``, once per process (a worker trains many cells)."""
    return load_dataset(name, data_dir, train_size=train_size, test_size=test_size)


@dataclass(frozen=True)
class Images:
    """A training sweep's dataset as the main process checks and records it: sizes, and a SHA-256
    of the normalised images and labels (dtype, shape and bytes of x_train, y_train, x_test,
    y_test), so that a resume on other files is refused."""

    n_train: int
    n_test: int
    input_dim: int
    n_classes: int
    sha256: str

    @classmethod
    def of(cls, data: Dataset) -> Images:
        digest = hashlib.sha256()
        for a in (data.x_train, data.y_train, data.x_test, data.y_test):
            digest.update(f"{a.dtype}{a.shape}".encode())
            digest.update(np.ascontiguousarray(a).tobytes())
        n_train, n_test = data.x_train.shape[0], data.x_test.shape[0]
        return cls(n_train, n_test, data.input_dim, data.n_classes, digest.hexdigest())


def _images(spec: Spec | TrainSpec, run: Run) -> Images | None:
    """The dataset of a training sweep, or of a Monte Carlo sweep whose inputs are images, loaded and
    checked against the spec before any work (SpecError: files missing or unreadable; subsets
    larger than the splits, batches larger than the training set; more input images than test
    images, or input images whose Gram matrix is not positive definite); None for other sweeps."""
    name = spec.dataset if spec.experiment == "train" else spec.images
    if name is None:
        return None
    sizes = (spec.train_size, spec.test_size) if spec.experiment == "train" else (None, None)
    try:
        data = _dataset(name, run.data, *sizes)
    except MissingDataError as err:
        raise SpecError(str(err)) from None
    except (ValueError, EOFError) as err:  # a malformed or truncated file
        raise SpecError(f"{_where(name, run)}: {err}") from None
    except OSError as err:
        raise SpecError(f"{_where(name, run)}: cannot read it ({err.strerror or err})") from None
    except ImportError:  # scikit-learn
        raise SpecError(TRAIN_EXTRA) from None
    images = Images.of(data)
    if spec.experiment == "init":
        _check_input_images(spec, data)
        return images
    for field, asked, have, split in (
        ("train_size", spec.train_size, images.n_train, "training"),
        ("test_size", spec.test_size, images.n_test, "test"),
    ):
        if asked is not None and asked > have:
            raise SpecError(
                f"{field}={asked}: must be <= {have}, the {split} images of {data.name}"
            )
    if spec.batch_size > images.n_train:
        raise SpecError(
            f"batch_size={spec.batch_size}: must be <= the number of training images "
            f"({images.n_train})"
        )
    return images


def _check_input_images(spec: Spec, data: Dataset) -> None:
    """The first B test images X (d pixels) as inputs: B <= the test images, and a positive definite
    X X^T / d (then K0 = sigma_w^2 X X^T / d + sigma_b^2 1 1^T is too, at every cell)."""
    have = data.x_test.shape[0]
    if spec.inputs > have:
        raise SpecError(
            f"inputs={spec.inputs}: must be <= {have}, the test images of {data.name} "
            f"(input_corr={spec.input_corr})"
        )
    x = data.x_test[: spec.inputs].astype(float)
    smallest = float(np.linalg.eigvalsh(x @ x.T / x.shape[1])[0])
    scale = float(np.mean(x * x))
    if smallest <= engines.run.SEMIDEFINITE_TOL * scale:
        raise SpecError(
            f"inputs={spec.inputs}: the initial Gram matrix X X^T / d of the first {spec.inputs} "
            f"test images of {data.name} is not positive definite (smallest eigenvalue "
            f"{smallest:.3g}; d = {x.shape[1]} pixels)"
        )


def _where(name: str, run: Run) -> str:
    """Where the images of the dataset ``name`` come from, as a field of the spec."""
    if name == "fashion-mnist":
        return f"data={run.data or FASHION_DIR}"
    return f"dataset={name}"


def _cap_xla_threads() -> None:
    """:func:`simulate.train.limit_cpu_threads` (one XLA thread per process), unless JAX is already
    running in this process: then it was started by the caller (a test, a notebook), with the
    thread pool it has."""
    if "jax" not in sys.modules:
        limit_cpu_threads()


def _cell_engine(spec: Spec, act, width: int) -> engines.Engine:
    """The engine that runs a Monte Carlo cell: the spec's, or for "auto" the cheapest registered
    one that supports the activation, the inputs and the escape observable (ValueError if none)."""
    return engines.select_engine(spec.engine, act, spec.inputs, width, spec.escape_on)


TRAIN_FLOPS_PER_NS = 1.0
"""Training throughput the scheduler assumes (1 GFLOP/s on one core; only batching depends on it)."""


def _weights(width: int, depth: int, images: Images) -> int:
    """Weights of a training network on ``images`` (:func:`simulate.resources.network_weights`)."""
    return resources.network_weights(images.input_dim, width, depth, images.n_classes)


def _cost(spec: Spec | TrainSpec, cell: SweepCell, images: Images | None) -> float:
    """Estimated time of a cell (ns on one core).

    Monte Carlo: nets x layers x its engine's cost per network-layer. Training: its floating-point
    operations at ``TRAIN_FLOPS_PER_NS``, 2 per weight and image for a forward pass, 3 passes for a
    step (forward, and backward for the activations and the weights):

        flops = P (6 E n_steps B + 2 (E + 1)(n_train + n_test)),   n_steps = floor(n_train / B),

    E epochs, the whole training and test sets evaluated at initialisation and after each epoch."""
    if spec.experiment != "train":
        engine = _cell_engine(spec, cell.activation, cell.width)
        return spec.nets * (spec.depth + 1) * engine.cost(cell.width, spec.inputs, cell.activation)
    steps = images.n_train // spec.batch_size
    passes = 6 * spec.epochs * steps * spec.batch_size
    passes += 2 * (spec.epochs + 1) * (images.n_train + images.n_test)
    return _weights(cell.width, cell.depth, images) * passes / TRAIN_FLOPS_PER_NS


def _todo_cost(
    spec: Spec | TrainSpec, params: Params, done: np.ndarray, images: Images | None
) -> float:
    """Total cost of the cells not ``done``."""
    return sum(_cost(spec, cell, images) for cell in cells(spec, params) if not done[cell.index])


def _check_engine(spec: Spec | TrainSpec, params: Params) -> np.ndarray:
    """The engine of every cell (its name, over the cell axes): SpecError unless the spec's engine
    runs every activation of a Monte Carlo sweep at every width; ``train`` for a training run (a
    network runs any piecewise-linear activation)."""
    engine = np.full(spec.cell_shape, "train", dtype=object)
    if spec.experiment != "init":
        return engine
    for index in np.ndindex(spec.param_shape):
        for i, width in enumerate(spec.width):
            try:
                engine[(*index, i)] = _cell_engine(spec, params.acts[index], width).name
            except ValueError as err:
                raise SpecError(str(err)) from None
    return engine


def _batches(
    spec: Spec | TrainSpec,
    todo: Iterable[SweepCell],
    target: float,
    max_batch: int | None,
    images: Images | None,
) -> Iterator[list[SweepCell]]:
    """Consecutive cells grouped while a group costs at most ``target`` (a cell costlier than that
    alone) and holds at most ``max_batch`` cells.

    ``target`` is ``TASK_COST`` or less: small cells share a task so that joblib's per-task overhead
    stays small; with ``target`` at most a quarter of the total per worker, no group exceeding it
    (but single big cells) leaves at least four tasks per worker, for load balance."""
    batch, cost = [], 0.0
    for cell in todo:
        more = _cost(spec, cell, images)
        if batch and (cost + more > target or len(batch) == max_batch):
            yield batch
            batch, cost = [], 0.0
        batch.append(cell)
        cost += more
    if batch:
        yield batch


def _skeleton(spec: Spec | TrainSpec, params: Params, images: Images | None) -> xr.Dataset:
    """The store before any cell: coordinates, theory and activations per parameter cell
    (``schema.param_values``), ``cell_done`` False, attributes with provenance."""
    return schema.skeleton(spec, schema.param_values(spec, params), _provenance(spec, images))


# --------------------------------------------------------------------------------------------------
# Versions of the numerics


def _planned_versions(engine: np.ndarray) -> np.ndarray:
    """``schema.numerics_version`` of every cell (over the cell axes), from its ``engine``."""
    names = {name: schema.numerics_version(name) for name in set(engine.flat)}
    return np.vectorize(names.get, otypes=[object])(engine)


def _check_versions(
    spec: Spec | TrainSpec, run: Run, found: store.Inspection, version: np.ndarray
) -> str | None:
    """Compare the numerics of the store's intact cells (``cell_version``), and of a training
    sweep's checkpoints, with this code's ``version`` of the same cells. Different ones are a
    SpecError naming both and the choices, unless ``--allow-mixed-versions``: then the
    checkpoints of other numerics are removed (their runs start again, each cell of one version)
    and the mix is returned, to be recorded. Cells (or checkpoints) with no record, written
    before there was one, are unknown: said, not refused."""
    stored = store.Writer(run.out).versions()
    recorded = (stored if stored is not None else np.full(version.shape, ""))[found.intact]
    unknown = int(np.count_nonzero(recorded == ""))
    other = (recorded != "") & (recorded != version[found.intact].astype(str))
    mixes = [f"{n} done cells by {old}" for old, n in Counter(recorded[other]).items()]
    folder = checkpoint_folder(run.out)
    in_flight = sorted(folder.glob("cell-*.npz")) if spec.experiment == "train" else []
    marker = folder / CHECKPOINTS_VERSION
    written_by = marker.read_text().strip() if marker.is_file() else ""
    stale = in_flight if written_by not in ("", version.flat[0]) else []
    if stale:
        mixes.append(f"{len(stale)} checkpoints of runs in flight by {written_by}")
    mix = f"{'; '.join(mixes)}; this code: {', '.join(sorted(set(version.flat)))}"
    if mixes and not run.allow_mixed_versions:
        raise SpecError(
            f"out={run.out}: computed by other numerics ({mix}); give --overwrite to start over, "
            "or --allow-mixed-versions to finish it with this code (each cell records its own)"
        )
    if unknown:
        _log(
            f"{run.out}: {unknown} of its done cells have no version record (written before "
            "cells recorded their numerics): unknown"
        )
    if in_flight and not written_by:
        _log(f"{run.out}: {len(in_flight)} checkpoints of runs in flight have no version: unknown")
    if not mixes:
        return None
    for file in stale:
        file.unlink()
    _log(f"{run.out}: mixing numerics ({mix}), as --allow-mixed-versions asks")
    return f"{datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}: {mix}"


# --------------------------------------------------------------------------------------------------
# Resources and provenance


def _check_writable(run: Run) -> None:
    """SpecError unless ``run.out`` can be written: its nearest existing directory is writable
    (and, for an existing store, its parent)."""
    root = next(p for p in (run.out.absolute(), *run.out.absolute().parents) if p.exists())
    writable = root.is_dir() and os.access(root, os.W_OK)
    if not writable or (root == run.out.absolute() and not os.access(root.parent, os.W_OK)):
        raise SpecError(f"out={run.out}: {root} is not a writable directory; choose another --out")


def _check_disk(
    spec: Spec | TrainSpec, run: Run, n_todo: int, creating: bool, images: Images | None
) -> None:
    """SpecError unless the filesystem of ``run.out`` has the blocks and inodes for the new store,
    or for the cells left to write (``store.disk_need``), and a training sweep's checkpoints: two
    files per worker (the state and its next version), each the weights and the optimiser's two
    moments in float32 at the largest network."""
    root = next(p for p in (run.out.absolute(), *run.out.absolute().parents) if p.exists())
    fs = os.statvfs(root)
    need, files = store.disk_need(spec, n_todo, fs.f_frsize, creating)
    if spec.experiment == "train":
        n_workers = joblib.effective_n_jobs(run.n_jobs)
        need += 2 * n_workers * 3 * 4 * _weights(max(spec.width), max(spec.depth), images)
    free = fs.f_bavail * fs.f_frsize
    if need > free or files > fs.f_favail:
        raise SpecError(
            f"out={run.out}: the store needs up to {human_size(need)} in {files:,} files but its "
            f"disk has {human_size(free)} and {fs.f_favail:,} files free (shrink the grid, --nets "
            "or --depth, or choose another --out)"
        )


def _check_memory(
    spec: Spec | TrainSpec,
    run: Run,
    creating: bool,
    images: Images | None,
    engine: np.ndarray,
) -> None:
    """SpecError unless memory (:func:`simulate.resources.available_memory`) can hold the work in
    flight: the per-parameter table (when creating) and three tasks per worker (joblib
    pre-dispatches two, one is being written), each a cell's output and its stored copies and the
    working memory at the largest width: the largest ``Engine.workspace`` of the cells' engines
    there, or ``resources.train_workspace``. A Monte Carlo run's output is
    ``resources.engine_output`` (float64, every layer, whatever the store keeps), held twice (the
    engine's arrays and their dataset)."""
    widest = max(spec.width)
    if spec.experiment == "train":
        workspace = resources.train_workspace(
            images.input_dim, images.n_classes, images.n_train, images.n_test, widest,
            max(spec.depth), spec.batch_size,
        )  # fmt: skip
        output = 4 * store.cell_nbytes(spec)
    else:
        at_widest = engine[..., spec.width.index(widest)]
        workspace = max(
            engines.ENGINES[name].workspace(widest, spec.inputs) for name in set(at_widest.flat)
        )
        output = 2 * resources.engine_output(spec.nets, spec.depth, spec.inputs)
        output += store.cell_nbytes(spec)
    need = 3 * joblib.effective_n_jobs(run.n_jobs) * (output + workspace)
    need += store.param_nbytes(spec) if creating else 0
    refused = resources.refusal(
        need, f"width={widest}: the work in flight", "--n-jobs, --nets, --depth or --width"
    )
    if refused:
        raise SpecError(refused)


def _provenance(spec: Spec | TrainSpec, images: Images | None) -> dict:
    """Dataset attributes: ``schema.attributes`` (the spec as TOML, the run constants), versions,
    git commit, time; for training, the sizes of the splits and the images' checksum
    (:class:`Images`), and the versions of JAX, optax and scikit-learn."""
    attrs = schema.attributes(spec) | {
        "package_version": _version("sparse-eoc"),
        "numpy_version": np.__version__,
        "numba_version": numba.__version__,
        "xarray_version": xr.__version__,
        "wall_time_s": 0.0,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    if images is not None:
        attrs |= {"n_train": images.n_train, "n_test": images.n_test, "data_sha256": images.sha256}
    if spec.experiment == "train":
        attrs |= {f"{name.replace('-', '_')}_version": _version(name) for name in TRAIN_PACKAGES}
    commit = _git_commit()
    return attrs | ({"git_commit": commit} if commit else {})


TRAIN_PACKAGES = ("jax", "jaxlib", "optax", "scikit-learn")
"""The packages whose versions a training store records."""


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _git_commit() -> str | None:
    """HEAD of the repository this package lives in, with ``+dirty`` for uncommitted changes."""
    here = Path(__file__).parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if status.strip() else "")


# --------------------------------------------------------------------------------------------------
# Backends


@contextmanager
def _parallel(run: Run) -> Iterator[int]:
    """joblib configured for ``run.backend``; yields the number of workers.

    ``loky``: workers that end when this process does, even by kill -9
    (:func:`simulate.workers.loky_config`). ``dask``: joblib's dask backend on a dask.distributed
    client, connected to ``run.scheduler`` or to a LocalCluster started here (loopback, one thread
    per worker). dask is an optional extra."""
    if run.backend != "dask":
        config = workers.loky_config() if run.backend == "loky" else {"backend": run.backend}
        with joblib.parallel_config(n_jobs=run.n_jobs, **config):
            yield joblib.effective_n_jobs(run.n_jobs)
        return
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise SpecError(
            "backend=dask: needs dask.distributed, the optional extra: pip install 'sparse-eoc[dask]'"
        ) from None
    with ExitStack() as stack:
        if run.scheduler is None:
            cluster = LocalCluster(
                n_workers=joblib.effective_n_jobs(run.n_jobs),
                threads_per_worker=1,
                host="127.0.0.1",
                dashboard_address=None,
            )
            address = stack.enter_context(cluster)
        else:
            address = run.scheduler
        try:
            client = stack.enter_context(Client(address, timeout="10s"))
        except (OSError, TimeoutError) as err:
            raise SpecError(f"scheduler={run.scheduler}: cannot connect ({err})") from None
        stack.enter_context(joblib.parallel_config(backend="dask"))
        yield max(1, len(client.scheduler_info()["workers"]))


if __name__ == "__main__":
    # run as the module simulate.grid (not __main__) so that workers unpickle run_batch by reference
    from simulate.grid import main as _main

    sys.exit(_main())
