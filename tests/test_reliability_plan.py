"""A sweep too large for the machine is refused before any work (issue 21, item 2): one line naming
the sizes, the limit and the flag to change, exit status 2, nothing written; never killed by the
kernel's out-of-memory killer nor ended by a MemoryError.

The huge sweeps run in a child interpreter whose address space is capped (RLIMIT_AS), so that a
sweep that allocates instead of refusing fails there at once (a traceback), instead of taking
this machine's memory. The limits themselves are checked in-process, with the disk and the memory
the sweep sees replaced by small ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest

from simulate import grid, resources
from simulate.spec import parser

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import contextlib, io, json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))
from simulate import grid, resources
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            status = grid.main(argv)
    except BaseException as caught:  # what the command line would show as a traceback
        status = repr(caught)[:200]
    print(json.dumps([status, err.getvalue()]), flush=True)
"""

HUGE = {
    "1e9 layers": ["--depth", "1e9"],
    "1e5 inputs": ["--inputs", "100000", "--width", "1000"],
    "1e5 inputs, summary": ["--record", "summary", "--inputs", "100000"],
    "1e8 nets": ["--nets", "1e8", "--width", "1e5"],
    "a range of 1e8 clip levels": ["--clip", "1:2:1e8"],
    "1e9 layers, thinned": ["--depth", "1e9", "--record-every", "1000000"],
}
"""Sweeps whose sizes multiply past any machine, each in one flag or two."""


@pytest.mark.slow
def test_huge_sweeps_are_refused_in_one_line(tmp_path):
    argv = [[*args, "--out", str(tmp_path / f"{i}.zarr")] for i, args in enumerate(HUGE.values())]
    child = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(argv)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    outcomes = [json.loads(line) for line in child.stdout.splitlines()]
    assert len(outcomes) == len(HUGE), child.stderr
    for name, (status, err) in zip(HUGE, outcomes, strict=True):
        assert status == 2, (name, status, err)
        (line,) = err.splitlines()
        assert line.startswith("simulate.grid: ") and ("--" in line or "count <=" in line), name
    assert list(tmp_path.iterdir()) == []


Disk = namedtuple("Disk", "f_frsize f_bavail f_favail")

GRID = ["--family", "crelu", "--sparsity", "0.8", "--clip", "1,inf", "--width", "8,16",
        "--depth", "6", "--nets", "3", "--n-jobs", "1"]  # fmt: skip
"""4 small cells."""


@pytest.mark.parametrize(
    "blocks, inodes, needle",
    [(20, 10**6, "space"), (10**6, 60, "inodes")],
    ids=["space", "inodes"],
)
def test_a_full_disk_is_refused_naming_space_and_files(
    tmp_path, capsys, monkeypatch, blocks, inodes, needle
):
    """A disk with too few free blocks, or too few free inodes (a cell is a file per variable, a
    whole block each), for 4 cells: one line with what the store needs and what the disk has."""
    monkeypatch.setattr(grid.os, "statvfs", lambda path: Disk(4096, blocks, inodes))
    out = tmp_path / "x.zarr"
    assert grid.main([*GRID, "--out", str(out)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert f"out={out}: the store needs up to" in line and "files but its disk has" in line
    assert ("81.9 kB" if needle == "space" else f"{inodes} files free") in line
    assert "--nets" in line and "--out" in line
    assert list(tmp_path.iterdir()) == []


def test_memory_beyond_the_limit_is_refused_naming_it(tmp_path, capsys, monkeypatch):
    """The limit is what ``resources.available_memory`` says (MemAvailable, or a cgroup's room): with 10 kB
    left, a sweep whose tasks in flight need more is refused, naming both and the flags."""
    monkeypatch.setattr(resources, "available_memory", lambda: 10**4)
    assert grid.main([*GRID, "--n-jobs", "2", "--out", str(tmp_path / "x.zarr")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "width=16: the work in flight needs about" in line and "10 kB is available" in line
    assert "lower --n-jobs, --nets, --depth or --width" in line
    assert list(tmp_path.iterdir()) == []


def test_the_help_says_how_the_limits_are_found():
    text = " ".join(parser().format_help().split())
    assert "MemAvailable in /proc/meminfo" in text and "cgroup's memory limit" in text
    assert "free space and inodes of --out's filesystem" in text
