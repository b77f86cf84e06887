"""Tables read cell by cell in worker processes (``analysis._parallel.start_cells``) are the tables
read in this process, row for row and bit for bit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from synthetic import make_store, plant_escapes

from analysis import _parallel, _store
from analysis._cli import run_cli
from analysis.report import main as report_main
from analysis.tables import Tables

CLIPS = (0.5, 1.0, 2.0, 3.0, float("inf"))


@pytest.fixture(scope="module")
def on_disk(tmp_path_factory):
    """A store on disk: 2 families x 2 sparsities x 5 clips x 2 widths (40 cells), escapes planted
    in the unclipped cells."""
    path = tmp_path_factory.mktemp("parallel") / "s.zarr"
    make_store(
        families=("crelu", "cst"),
        sparsities=(0.7, 0.85),
        clips=CLIPS,
        widths=(50, 200),
        nets=16,
        depth=12,
        seed=3,
        perturb=plant_escapes(lambda cell, rng: rng.integers(2, 10, 16)),
    ).to_zarr(path)
    return path


@pytest.mark.slow
def test_worker_tables_equal_the_tables_of_one_process(on_disk, monkeypatch):
    """fit and the network table (escapes, fates) with 2 workers, the 40 cells read one per block
    and shared out as 4 runs of blocks, against 1 process."""
    monkeypatch.setattr(_parallel, "PARALLEL_MIN_CELLS", 0)
    results = _store.open_results(on_disk)
    monkeypatch.setattr(_store, "CELL_BLOCK", 1)  # one cell per block
    assert len(results.blocks(("escape_layer",))) == 40
    serial, workers = Tables(results, n_jobs=1), Tables(results, n_jobs=2)
    for name in ("fit", "networks"):
        pd.testing.assert_frame_equal(getattr(workers, name), getattr(serial, name))
    assert len(serial.fit) == 40 and serial.networks["frac_escaped"].gt(0).sum() == 8


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_a_bad_n_jobs_is_refused_in_one_line(on_disk, value, capsys, tmp_path):
    with pytest.raises(SystemExit) as done:
        run_cli(report_main, [str(on_disk), "--out", str(tmp_path / "r.md"), "--n-jobs", value])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1 and "--n-jobs" in err
    assert not any(tmp_path.iterdir())


def store_read_in_workers(path: Path) -> Path:
    """A store of :data:`~analysis._parallel.PARALLEL_MIN_CELLS` small cells (256: the commands
    read its tables in workers), written at ``path``."""
    make_store(
        families=("crelu", "cst"),
        sparsities=tuple(np.linspace(0.6, 0.9, 8)),
        clips=(0.5, 0.8, 1.0, 1.5, 2.0, 3.0, 4.0, float("inf")),
        widths=(50, 100),
        nets=4,
        depth=4,
    ).to_zarr(path)
    return path


@pytest.mark.slow
def test_the_commands_run_their_tables_in_workers(tmp_path):
    """``python -m analysis.fit`` and ``analysis.instability`` on a store of 256 cells (the
    threshold for workers), through a real interpreter: the workers must be able to unpickle the
    commands' per-cell functions (a ``python -m`` module is ``__main__``); each table equals the
    one read in one process."""
    path = store_read_in_workers(tmp_path / "s.zarr")
    assert _store.open_results(path).n_done == _parallel.PARALLEL_MIN_CELLS
    for command in (["analysis.fit"], ["analysis.instability", "--table", "stability"]):
        tables = [
            subprocess.run(
                [sys.executable, "-m", *command, str(path), "--n-jobs", jobs],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            for jobs in ("2", "1")
        ]
        assert tables[0] == tables[1] and tables[0].count("\n") == 258, command
