"""One sweep writes a store at a time (issue 21, item 4): a second sweep on the same store, while
the first holds it, is refused in one line naming the first (exit 2, nothing written); two
started together end with the data of one; a lock left by a process that died is taken over.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import xarray as xr
import zarr
from stores import load_data

from simulate import grid

REPO = Path(__file__).resolve().parents[1]

GRID = ["--family", "crelu,cst", "--sparsity", "0.8", "--clip", "1,inf", "--width", "8,16",
        "--depth", "6", "--nets", "3", "--seed", "4", "--n-jobs", "1"]  # fmt: skip
"""8 small cells."""


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "s.zarr"
    assert grid.main([*GRID, "--out", str(out)]) == 0
    return out


HOLDER = """
import os, sys
from pathlib import Path
from simulate import store
held = store.lock(Path(sys.argv[1]))
held.__enter__()
print("held", flush=True)
sys.stdin.read()
os._exit(0)  # dies holding it, as a sweep killed -9 does
"""
"""A process that takes a store's lock, as a sweep does, and dies holding it."""


@pytest.mark.slow
@pytest.mark.parametrize("exists", [False, True], ids=["new store", "half-done store"])
def test_a_second_sweep_is_refused_naming_the_first(reference, tmp_path, capsys, exists):
    """While another process holds the store, a sweep is refused in one line naming it and
    writes nothing; once that process has died (its lock file left behind, as after a kill -9),
    the sweep runs, and removes the file."""
    out = tmp_path / "s.zarr"
    if exists:
        shutil.copytree(reference, out)
        zarr.open_array(out / "cell_done", mode="r+")[..., 1] = False  # the wider cells not done
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        assert grid.main([*GRID, "--out", str(out)]) == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert f"out={out}: another sweep is writing this store (pid {holder.pid} on " in line
        assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.suffix != ".lock"} == (
            before
        )
    finally:
        holder.communicate()
    assert out.with_name("s.zarr.lock").exists()
    assert grid.main([*GRID, "--out", str(out)]) == 0
    xr.testing.assert_identical(load_data(out), load_data(reference))
    assert [p.name for p in tmp_path.iterdir()] == ["s.zarr"]


@pytest.mark.slow
def test_two_sweeps_started_together_end_with_the_data_of_one(reference, tmp_path):
    """The issue's race, on a new store: each command either runs (or finds nothing to do) or
    is refused in one line naming the other; the store is the one sweep's, with nothing beside
    it."""
    out = tmp_path / "s.zarr"
    command = [sys.executable, "-m", "simulate.grid", *GRID, "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    ended = [(p.pid, *p.communicate(timeout=300)[1:], p.returncode) for p in procs]
    for (_, err, status), (other, _, _) in zip(ended, ended[::-1], strict=True):
        assert status in (0, 2), err
        if status == 2:
            (line,) = err.splitlines()
            assert f"another sweep is writing this store (pid {other} on " in line
    assert 0 in [status for _, _, status in ended]
    xr.testing.assert_identical(load_data(out), load_data(reference))
    assert [p.name for p in tmp_path.iterdir()] == ["s.zarr"]
