"""``python -m simulate.grid``: run a sweep from its spec into a resumable zarr store.

    spec (flags / TOML) -> validated whole: values, EoC per cell, engine, disk and memory
        -> store created empty, or an existing one inspected (every chunk read back against its
           checksum; damaged cells unmarked, unreadable coordinates and theory rewritten)
        -> batches of unfinished cells -> joblib (loky, threading, or dask.distributed)
        -> each finished cell written, then marked done

Determinism: the cell at flat position i of the full grid (C order over ``Spec.cell_dims``) draws its
random numbers from ``SeedSequence(seed).spawn(n_cells)[i]``, built directly as
``SeedSequence(seed, spawn_key=(i,))`` (the same object). A cell's values therefore depend on the spec
alone, never on n_jobs, backend, batching, order or how many times the sweep was resumed.

A store whose root metadata cannot be read (so its spec is lost) is refused, unless ``--repair``:
then its metadata is rebuilt from the given spec and its chunk files kept, and it is inspected as above.

Exit status: 0 done (or nothing left to do), 2 bad spec (one line on stderr, nothing written),
130 interrupted (the store keeps every finished cell; the same command resumes).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import fields
from pathlib import Path

import joblib
import numba
import numpy as np
import xarray as xr
from tqdm import tqdm

from simulate import engines, schema, store
from simulate.spec import Params, Run, Spec, SpecError, SweepCell, cells, parse, resolve

TASK_COST = 5e7
"""Work a parallel task aims for, in the engines' cost unit (ns on one core): small cells are
batched up to it, so that a task takes some tens of milliseconds and joblib's per-task overhead stays
small."""

N_INPUTS = 2
"""Inputs per network in a sweep: the default pair at correlation c0."""


def main(argv: list[str] | None = None) -> int:
    """Run the sweep given by ``argv`` (see ``python -m simulate.grid --help``); the exit status."""
    started = time.perf_counter()
    try:
        spec, run = parse(argv)
        mode, found = _existing(spec, run)
        done = found.intact if found is not None else np.zeros(spec.cell_shape, dtype=bool)
        n_todo = int(done.size - np.count_nonzero(done))
        _check_resources(spec, run, n_todo, mode != "resume")  # before resolve: a huge grid fails
        params = resolve(spec)
        _check_engine(spec, params)
        if mode == "resume" and not n_todo and not found.damaged:
            print(f"simulate.grid: nothing to do: all {done.size} cells of {run.out} are done")
            _next_steps(run.out)
            return 0
        with _parallel(run) as n_workers:
            need = mode != "resume" or found.arrays  # the theory takes a while: only if needed
            skeleton = _skeleton(spec, params) if need else None
            if mode == "create":
                store.create(run.out, skeleton, spec)
            elif mode == "rebuild":
                store.rebuild(run.out, skeleton, spec)
                found = store.Writer(run.out).inspect(schema.array_names(spec))
            if found is not None and found.damaged:
                _log(f"{run.out}: {found.describe()}: repairing (damaged cells are recomputed)")
                store.Writer(run.out).repair(found, skeleton)
            done = store.Writer(run.out).done()
            n_todo = int(done.size - np.count_nonzero(done))
            _execute(spec, run, params, done, n_workers)
    except SpecError as err:
        print(f"simulate.grid: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _log("interrupted: finished cells are kept in the store; the same command resumes")
        return 130
    elapsed = time.perf_counter() - started
    writer = store.Writer(run.out)
    writer.update_attrs({"wall_time_s": writer.attrs["wall_time_s"] + elapsed})
    _log(f"done: {n_todo} cells in {elapsed:.1f} s ({n_todo / max(elapsed, 1e-9):.2f} cells/s)")
    print(f"simulate.grid: wrote {run.out}")
    _next_steps(run.out)
    return 0


def _existing(spec: Spec, run: Run) -> tuple[str, store.Inspection | None]:
    """What to do at ``run.out``: ("create", None) for a new store; ("resume", what
    ``Writer.inspect`` found) when it holds this sweep; ("rebuild", None) when it is a sweep store
    whose metadata cannot be read and ``--repair`` was given. SpecError if it holds something else
    (without ``--overwrite``), is not a sweep store, or is damaged (without ``--repair``)."""
    if not run.out.exists():
        return "create", None
    try:
        text = store.read_spec(run.out)
    except store.DamagedStore as err:
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
        changed = [f.name for f in fields(Spec) if getattr(old, f.name) != getattr(spec, f.name)]
        raise SpecError(
            f"out={run.out}: holds a different sweep (differs in {', '.join(changed)}); "
            "give --overwrite to replace it, or another --out"
        )
    return "resume", store.Writer(run.out).inspect(schema.array_names(spec))


def _execute(spec: Spec, run: Run, params: Params, done: np.ndarray, n_workers: int) -> None:
    """Run the cells not ``done`` in parallel tasks, writing each cell to the store as it arrives.

    Cells, batches and tasks are generated lazily (joblib pre-dispatches two tasks per worker), so
    memory holds a few tasks' cells whatever the size of the grid."""
    writer = store.Writer(run.out)
    n_todo = int(done.size - np.count_nonzero(done))
    _log(
        f"{n_todo} of {done.size} cells to run ({' x '.join(map(str, spec.cell_shape))} over "
        f"{', '.join(spec.cell_dims)}; {spec.nets} nets, depth {spec.depth}, {spec.engine}) "
        f"on {n_workers} {run.backend} workers -> {run.out}"
    )
    todo = (cell for cell in cells(spec, params) if not done[cell.index])
    target = min(TASK_COST, _todo_cost(spec, done) / (4 * n_workers))
    batches = _batches(spec, todo, target, run.max_batch)
    tasks = (joblib.delayed(run_batch)(spec, batch) for batch in batches)
    parallel = joblib.Parallel(n_jobs=run.n_jobs, return_as="generator_unordered", batch_size=1)
    with (
        _Progress(n_todo) as progress,
        warnings.catch_warnings(),
        closing(parallel(tasks)) as results,
    ):
        # on Ctrl-C joblib warns that it cancelled the tasks in flight: that is the point
        warnings.filterwarnings("ignore", "tasks which were still being processed", UserWarning)
        for finished in results:
            for index, values in finished:
                writer.write(index, values)
            progress.update(len(finished))


def _next_steps(out: Path) -> None:
    print(f"next: python -m analysis.report {out}   (figures and report)")


def _log(message: str) -> None:
    print(f"simulate.grid: {message}", file=sys.stderr, flush=True)


class _Progress:
    """A tqdm bar (cells, rate, ETA) on a terminal; otherwise a log line per tenth of the cells."""

    def __init__(self, total: int):
        self.total, self.n, self._start = total, 0, time.perf_counter()
        self._bar = tqdm(total=total, unit="cell", disable=not sys.stderr.isatty(), file=sys.stderr)

    def update(self, k: int) -> None:
        before, self.n = self.n, self.n + k
        self._bar.update(k)
        if self._bar.disable and 10 * self.n // self.total > 10 * before // self.total:
            rate = self.n / (time.perf_counter() - self._start)
            _log(f"{self.n}/{self.total} cells ({rate:.2f} cells/s)")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._bar.close()


# --------------------------------------------------------------------------------------------------
# The work


def cell_seed(spec: Spec, cell: SweepCell) -> np.random.SeedSequence:
    """The random stream of ``cell``: child ``cell.flat`` of ``SeedSequence(spec.seed)``."""
    return np.random.SeedSequence(spec.seed, spawn_key=(cell.flat,))


def simulate_cell(spec: Spec, cell: SweepCell) -> dict[str, np.ndarray]:
    """One cell through the engine, as the stored arrays (``schema.CELL_VARIABLES``)."""
    ds = engines.run_cell(
        cell.activation,
        cell.sigma_w2,
        cell.sigma_b2,
        width=cell.width,
        depth=spec.depth,
        nets=spec.nets,
        q0=cell.q0,
        c0=spec.c0,
        q_ref=cell.q_star,
        engine=spec.engine,
        seed=cell_seed(spec, cell),
        escape_factor=spec.escape_factor,
    )
    ds = ds.isel(pair=0)  # the default input pair has one pair
    return {
        name: ds[name].transpose(*var.dims).values.astype(var.dtype)
        for name, var in schema.CELL_VARIABLES.items()
    }


def run_batch(spec: Spec, batch: list[SweepCell]) -> list[tuple[tuple[int, ...], dict]]:
    """A parallel task: (cell index, stored arrays) of each cell of ``batch``."""
    return [(cell.index, simulate_cell(spec, cell)) for cell in batch]


def _engine(spec: Spec, width: int) -> engines.Engine:
    """The engine whose cost and memory model the scheduler uses at ``width``: the spec's, or for
    "auto" the cheapest registered (``_check_engine`` has checked the activations)."""
    if spec.engine != engines.AUTO:
        return engines.ENGINES[spec.engine]
    return min(engines.ENGINES.values(), key=lambda e: e.cost(width, N_INPUTS))


def _cost(spec: Spec, width: int) -> float:
    """Estimated time of a cell (ns): nets x layers x the engine's cost per network-layer."""
    return spec.nets * (spec.depth + 1) * _engine(spec, width).cost(width, N_INPUTS)


def _todo_cost(spec: Spec, done: np.ndarray) -> float:
    """Total cost of the cells not ``done`` (width is the last cell axis)."""
    undone = np.count_nonzero(~done.reshape(-1, len(spec.width)), axis=0)
    return float(sum(n * _cost(spec, w) for n, w in zip(undone, spec.width, strict=True)))


def _check_engine(spec: Spec, params: Params) -> None:
    """SpecError unless the engine runs every activation of the sweep at every width."""
    for index in np.ndindex(spec.param_shape):
        for width in spec.width:
            try:
                engines.select_engine(spec.engine, params.acts[index], N_INPUTS, width)
            except ValueError as err:
                raise SpecError(str(err)) from None


def _batches(
    spec: Spec, todo: Iterable[SweepCell], target: float, max_batch: int | None
) -> Iterator[list[SweepCell]]:
    """Consecutive cells grouped while a group costs at most ``target`` (a cell costlier than that
    alone) and holds at most ``max_batch`` cells.

    ``target`` is ``TASK_COST`` or less: small cells share a task so that joblib's per-task overhead
    stays small; with ``target`` at most a quarter of the total per worker, no group exceeding it
    (but single big cells) leaves at least four tasks per worker, for load balance."""
    batch, cost = [], 0.0
    for cell in todo:
        more = _cost(spec, cell.width)
        if batch and (cost + more > target or len(batch) == max_batch):
            yield batch
            batch, cost = [], 0.0
        batch.append(cell)
        cost += more
    if batch:
        yield batch


def _skeleton(spec: Spec, params: Params) -> xr.Dataset:
    """The store before any cell: coordinates, theory and activations per parameter cell
    (``schema.param_values``), ``cell_done`` False, attributes with provenance."""
    return schema.skeleton(spec, schema.param_values(spec, params), _provenance(spec))


# --------------------------------------------------------------------------------------------------
# Resources and provenance


def _check_resources(spec: Spec, run: Run, n_todo: int, creating: bool) -> None:
    """SpecError unless the disk can hold the store and memory the work in flight.

    Disk: the uncompressed size of the new store, or of the cells left to write. Memory: the
    per-parameter table (when creating) and three tasks per worker (joblib pre-dispatches two, one is
    being written), each the engine's float64 output and its stored copy (about four times a cell's
    stored bytes) and the engine's working memory (``Engine.workspace``) at the largest width."""
    need_disk = store.nbytes(spec) if creating else store.cell_nbytes(spec) * n_todo
    root = next(p for p in (run.out.absolute(), *run.out.absolute().parents) if p.exists())
    writable = root.is_dir() and os.access(root, os.W_OK)
    if not writable or (root == run.out.absolute() and not os.access(root.parent, os.W_OK)):
        raise SpecError(f"out={run.out}: {root} is not a writable directory; choose another --out")
    free = shutil.disk_usage(root).free
    if need_disk > free:
        raise SpecError(
            f"out={run.out}: the store needs up to {_size(need_disk)} but its disk has "
            f"{_size(free)} free (shrink the grid, nets or depth, or choose another --out)"
        )
    widest = max(spec.width)
    per_task = 4 * store.cell_nbytes(spec) + _engine(spec, widest).workspace(widest, N_INPUTS)
    need_mem = 3 * joblib.effective_n_jobs(run.n_jobs) * per_task
    need_mem += store.param_nbytes(spec) if creating else 0
    available = _available_memory()
    if available is not None and need_mem > available:
        raise SpecError(
            f"width={widest}: the cells in flight need about {_size(need_mem)} of memory, "
            f"{_size(available)} is available (lower --n-jobs, --nets, --depth or --width)"
        )


def _available_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes (None where there is no such file)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _size(n: float) -> str:
    """Bytes for people: 12.3 GB."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"


def _provenance(spec: Spec) -> dict:
    """Dataset attributes: ``schema.attributes`` (the spec as TOML, the run constants), versions,
    git commit, time."""
    attrs = schema.attributes(spec) | {
        "package_version": _package_version(),
        "numpy_version": np.__version__,
        "numba_version": numba.__version__,
        "xarray_version": xr.__version__,
        "wall_time_s": 0.0,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    commit = _git_commit()
    return attrs | ({"git_commit": commit} if commit else {})


def _package_version() -> str:
    try:
        return importlib.metadata.version("sparse-eoc")
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

    ``dask``: joblib's dask backend on a dask.distributed client, connected to ``run.scheduler`` or to
    a LocalCluster started here (loopback, one thread per worker). dask is an optional extra."""
    if run.backend != "dask":
        with joblib.parallel_config(backend=run.backend, n_jobs=run.n_jobs):
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
