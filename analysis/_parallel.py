"""Per-cell work of a table in worker processes: ``start_cells(results, fn, read, n_jobs)()`` is
``[fn(cell) for cell in results.cells(read)]``, in store order, with the blocks of cells that
:meth:`analysis._store.Results.cells` reads at a time handed to ``n_jobs`` processes (-1: one per
core; never more than the cores), which start at once and compute while the caller goes on.

Workers are joblib's (loky): fresh processes, never forks of this one (a fork of a process that
runs zarr's event-loop thread can deadlock), which end when this process does, even when it is
killed -9 (:func:`simulate.workers.end_with_parent`). Each worker opens the store itself, once,
without the damage check the main process already ran, and maps ``fn`` over the cells of its
blocks. So ``fn`` must be picklable (a module-level function, or a ``functools.partial`` of one)
and must depend on the cell alone: the rows are the same whatever ``n_jobs``
(tests/test_analysis_parallel.py). A table that needs the cells' theory takes it as ``fn``'s
``prepared`` keyword (``start_cells``' ``theory``): a worker computes the theory of its blocks'
parameter cells in one batched call (:func:`analysis.theory.prepare`) before mapping ``fn``.

A store held in memory (no path to reopen), ``n_jobs = 1``, or fewer finished cells than
:data:`PARALLEL_MIN_CELLS` are mapped in this process: starting a worker (imports, opening the
store) costs seconds, more than a small store's whole table.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, lru_cache, partial
from pathlib import Path

import joblib
import numpy as np

from simulate.workers import loky_config

from ._store import Results, open_dataset
from .theory import Prepared, prepare

PARALLEL_MIN_CELLS = 256
"""Finished cells from which a table's cells are mapped in worker processes (``n_jobs > 1``)."""

TASKS_PER_WORKER = 2
"""The blocks are handed out in this many runs of neighbouring blocks per worker: few enough that
each worker's batched theory (:func:`analysis.theory.prepare`: 0.6 s for one block of the moonshot
store, 21 parameter points, but 6 s for all 840) is paid for many blocks at once, enough that a
worker on a busier core does not leave the other idle at the end."""


def start_cells(
    results: Results,
    fn: Callable[..., object],
    read: tuple[str, ...],
    n_jobs: int = 1,
    theory: Callable[[], Prepared | None] | None = None,
) -> Callable[[], list]:
    """Start ``[fn(cell) for cell in results.cells(read)]`` (module docstring); the function
    returned waits for the rows and returns them. Workers start at once and compute while the
    caller goes on (a report computes its tables of the theory meanwhile); in this process the
    rows are computed when asked for.

    ``theory``: for an ``fn`` that takes the theory of the cells too, ``fn(cell, prepared=...)``:
    in this process ``prepared = theory()``, called when the rows are computed (so the caller may
    prepare it after starting; None: each cell's theory computed alone), in a worker
    :func:`analysis.theory.prepare` of its blocks."""
    workers = min(joblib.effective_n_jobs(n_jobs), joblib.cpu_count())  # each holds a block
    on_disk = (results.path / "zarr.json").is_file() or results.path.is_file()
    if workers == 1 or not on_disk or results.n_done < PARALLEL_MIN_CELLS:

        def rows() -> list:
            each = fn if theory is None else partial(fn, prepared=theory())
            return [each(cell) for cell in results.cells(read)]

        return rows
    tasks = TASKS_PER_WORKER * workers
    runs = [list(run) for run in np.array_split(results.blocks(read, tasks), tasks) if len(run)]
    store = (str(results.path), _version(results.path))
    with joblib.parallel_config(**loky_config()):  # workers that end with this process
        parts = joblib.Parallel(n_jobs=workers, return_as="generator")(
            joblib.delayed(_map_blocks)(store, fn, read, run, theory is not None) for run in runs
        )
    return cache(lambda: [row for part in parts for row in part])


def _version(path: Path) -> int:
    """When the store's done flags last changed (a zarr store's ``cell_done`` folder, where each
    write renames a file in, or a netCDF file): a worker kept from an earlier call reopens a store
    written since."""
    return (path / "cell_done" if path.is_dir() else path).stat().st_mtime_ns


@lru_cache(maxsize=2)
def _reopened(path: str, version: int) -> Results:
    """The store at ``path`` as of ``version``, opened once per worker, unchecked (the caller
    checked it)."""
    return Results(open_dataset(Path(path)), path, check=False)


def _map_blocks(
    store: tuple[str, int],
    fn: Callable[..., object],
    read: tuple[str, ...],
    blocks: list[dict],
    theory: bool,
) -> list:
    """``fn`` over the finished cells of ``blocks`` of the store (path, version), in order; with
    ``theory``, given the theory of their parameter cells as ``prepared``."""
    results = _reopened(*store)
    each = partial(fn, prepared=prepare(results, blocks)) if theory else fn
    return [each(cell) for block in blocks for cell in results.cells(read, **block)]
