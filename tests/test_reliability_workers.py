"""kill -9 of a sweep, or of a report, leaves nothing of it running (issue 21, item 7): its worker
processes notice their parent is gone and end, and loky's resource trackers with them.

Each command runs as a subprocess in a session of its own (so that whatever a failing test
leaves is killed with the session); once its workers are at work, the main process alone is
killed with SIGKILL, and every process it had started must be gone (or a zombie: dead, waiting
to be reaped by init) soon after. Linux: processes are read from /proc.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_analysis_parallel import store_read_in_workers

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc")


def children(pid: int) -> set[int]:
    """The processes ``pid`` started that are still its children."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return set()
    found = set()
    for task in tasks:
        try:
            found |= {int(c) for c in (task / "children").read_text().split()}
        except FileNotFoundError:
            continue
    return found


def descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        new = children(todo.pop()) - found
        found |= new
        todo += new
    return found


def alive(pid: int) -> bool:
    """Running (not ended, nor a zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except FileNotFoundError:
        return ""


def kill_main_and_wait(command: list[str], workers: int) -> set[int]:
    """Start ``command``; once ``workers`` loky workers of it run, SIGKILL its main process; return
    the processes it had started that are still running 60 s later (the session is killed after,
    whatever happened)."""
    proc = subprocess.Popen(
        command,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while len([p for p in descendants(proc.pid) if "loky" in cmdline(p)]) < workers:
            assert proc.poll() is None, "the command ended before its workers were at work"
            assert time.monotonic() < deadline, "its workers never started"
            time.sleep(0.05)
        time.sleep(1.0)  # at work
        started = descendants(proc.pid)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 60
        while any(alive(p) for p in started) and time.monotonic() < deadline:
            time.sleep(0.2)
        return {p for p in started if alive(p)}
    finally:
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_killed_sweep_leaves_no_process(tmp_path):
    """The issue's sweep (cells of some seconds each) on two loky workers."""
    command = [sys.executable, "-m", "simulate.grid", "--width", "1000", "--depth", "1000",
               "--nets", "128", "--n-jobs", "2", "--out", str(tmp_path / "s.zarr")]  # fmt: skip
    assert kill_main_and_wait(command, workers=2) == set()


@pytest.mark.slow
def test_a_killed_report_leaves_no_process(tmp_path):
    """``analysis.fit`` on a store of 256 cells (where tables are read in workers), two workers."""
    path = store_read_in_workers(tmp_path / "s.zarr")
    command = [sys.executable, "-m", "analysis.fit", str(path), "--n-jobs", "2"]
    assert kill_main_and_wait(command, workers=2) == set()
