"""A cell is on disk before it is marked done (issue 21, item 6).

Power loss cannot be tested here; two things can. Each ``cell_done`` write finds every chunk
written before it flushed to disk: the files, and the directories their renames went into (the
order of the system calls, recorded). And kill -9 at 50 random moments of a small sweep, each
followed by the same command: the stores end identical to an uninterrupted run's, file for file,
with nothing left beside them.

The kills need 50 sweeps started in well under a minute, which a fresh interpreter each (seconds
of imports) would not allow: a zygote process imports ``simulate.grid`` and warms the kernels
once, single-threaded, then forks a sweep per request (``os.fork``: the child runs
``grid.main`` and exits with its status).
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xarray as xr
from stores import load_data

from simulate import grid

REPO = Path(__file__).resolve().parents[1]

GRID = ["--family", "crelu", "--sparsity", "0.8", "--clip", "1,inf", "--width", "8,16",
        "--depth", "6", "--nets", "3", "--seed", "9", "--n-jobs", "1", "--max-batch", "1"]  # fmt: skip
"""4 small cells, written one at a time."""


def files(path: Path) -> list[Path]:
    return sorted(p.relative_to(path) for p in path.rglob("*"))


# --------------------------------------------------------------------------------------------------
# Flushed before marked


def test_every_chunk_is_flushed_before_a_cell_is_marked_done(tmp_path, monkeypatch):
    """Writes (``Path.open``), renames (``Path.replace``, zarr's atomic write) and fsyncs under the
    store are recorded: when a ``cell_done`` chunk is written, no chunk file of a cell variable
    or of ``cell_version`` has unflushed bytes, and no directory holding one has an unflushed
    rename."""
    out = tmp_path / "s.zarr"
    dirty: set[int] = set()  # inodes written or renamed into, not yet fsynced
    flags = []

    def inode(path) -> int:
        return os.stat(path).st_ino

    def chunks() -> list[Path]:
        names = [n for n in ("cell_version", *grid.schema.CELL_VARIABLES) if (out / n).is_dir()]
        return [c for n in names for c in (out / n).glob("c.*") if not c.name.endswith(".partial")]

    real_open, real_replace, real_fsync = pathlib.Path.open, pathlib.Path.replace, os.fsync

    def opened(path, mode="r", *args, **kwargs):
        file = real_open(path, mode, *args, **kwargs)
        if any(c in mode for c in "wax+") and Path(path).is_relative_to(out):
            dirty.add(os.fstat(file.fileno()).st_ino)
            if Path(path).parent.name == "cell_done" and Path(path).name[:2] == "c.":
                flags.append(len(chunks()))
                assert not dirty & {inode(c) for c in chunks()}, "a chunk is not flushed"
                assert not dirty & {inode(c.parent) for c in chunks()}, "a rename is not flushed"
        return file

    def replaced(path, target):
        result = real_replace(path, target)
        if Path(target).is_relative_to(out):
            dirty.add(inode(Path(target).parent))
        return result

    def fsync(fd):
        real_fsync(fd)
        dirty.discard(os.fstat(fd).st_ino)

    monkeypatch.setattr(pathlib.Path, "open", opened)
    monkeypatch.setattr(pathlib.Path, "replace", replaced)
    monkeypatch.setattr(os, "fsync", fsync)
    assert grid.main([*GRID, "--out", str(out)]) == 0
    assert len(flags) == 4 and flags[-1] == 4 * 15  # a flag per cell, after its 15 chunks


# --------------------------------------------------------------------------------------------------
# kill -9


ZYGOTE = """
import json, os, sys, threading
from simulate import grid
from simulate.spec import cells, parse, resolve

spec, _ = parse(json.loads(sys.argv[1]))
for cell in cells(spec, resolve(spec)):  # load the kernels once, for every child
    grid.simulate_cell(spec, cell)
assert threading.active_count() == 1  # a fork of a process with threads may deadlock
print("ready", flush=True)
for line in sys.stdin:
    request = json.loads(line)
    if "run" in request:
        pid = os.fork()
        if pid == 0:
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            os.dup2(1, 2)
            os._exit(grid.main(request["run"]))
        print(pid, flush=True)
    else:
        print(os.waitpid(request["wait"], 0)[1], flush=True)
"""


class Zygote:
    """A process that forks sweeps on request (ZYGOTE)."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE, json.dumps(GRID)],
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout.readline() == "ready\n"

    def ask(self, request: dict) -> int:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def start(self, out: Path) -> int:
        return self.ask({"run": [*GRID, "--out", str(out)]})

    def wait(self, pid: int) -> int:
        """The sweep's exit status (negative: the signal that ended it)."""
        status = self.ask({"wait": pid})
        return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)

    def close(self):
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def zygote():
    z = Zygote()
    yield z
    z.close()


@pytest.mark.slow
def test_kill_9_at_50_random_moments_then_resume_ends_as_uninterrupted(zygote, tmp_path):
    """New stores, each sweep killed at a moment drawn uniformly over an uninterrupted run (its
    start, the planning, the store's creation, any cell, the last metadata), then the same command
    killed at a moment drawn over half of one (a resume has less to do), then run to the end,
    until 50 kills have hit a running sweep. Every store is the uninterrupted one, with the same
    files, and nothing beside it. (The run's length is the shortest of three: on a busy machine
    some draws still find the sweep finished, and do not count.)"""
    reference = tmp_path / "ref" / "s.zarr"
    durations = []
    for _ in range(3):
        started = time.perf_counter()
        assert zygote.wait(zygote.start(reference)) == 0
        durations.append(time.perf_counter() - started)
    rng = random.Random(21)
    kills = 0
    for i in range(60):
        out = tmp_path / str(i) / "s.zarr"
        for longest in (min(durations), min(durations) / 2):
            pid = zygote.start(out)
            time.sleep(rng.uniform(0, longest))
            os.kill(pid, signal.SIGKILL)
            status = zygote.wait(pid)
            assert status in (0, -signal.SIGKILL)
            kills += status == -signal.SIGKILL
        assert zygote.wait(zygote.start(out)) == 0
        xr.testing.assert_identical(load_data(out), load_data(reference))
        assert files(out) == files(reference)
        assert [p.name for p in out.parent.iterdir()] == ["s.zarr"]
        if kills >= 50:
            break
    assert kills >= 50, f"only {kills} of the kills hit a running sweep"
