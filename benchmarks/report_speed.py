"""Time and peak memory of ``python -m analysis.report`` against a baseline commit, in one run.

    python benchmarks/report_speed.py STORE [--baseline HEAD] [--repeat 1]

The baseline's ``analysis`` and ``simulate`` packages are exported from git (``git archive``, the
working tree untouched) into a scratch directory; then the report of STORE is written by the
baseline and by the working tree, one after the other (``--repeat`` times each, alternating), each
into its own scratch directory. Per run: wall time, and the CPU time (user + sys) and peak resident
set size of the report's process, read from ``os.wait4``. On a machine shared with other work
compare the CPU times: the wall times depend on what else runs. The last line says whether the two
report.md files are byte-identical.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def export(ref: str, into: Path) -> Path:
    """The packages at git ``ref``, extracted under ``into``; returns the directory to import from."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "analysis", "simulate"],
        check=True,
        capture_output=True,
    ).stdout
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def run_report(code: Path, store: Path, out: Path) -> dict[str, float]:
    """Wall seconds, CPU seconds and peak RSS (MB) of the report of ``store`` by the packages under
    ``code``, written to ``out``."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    command = [sys.executable, "-m", "analysis.report", str(store), "--out", str(out)]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=code, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the report of {code} failed")
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "rss_mb": usage.ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", type=Path)
    parser.add_argument("--baseline", default="HEAD", help="git ref of the baseline (HEAD)")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    store = args.store.resolve()
    scratch = Path(tempfile.mkdtemp(prefix="report_speed_"))
    codes = {"baseline": export(args.baseline, scratch / "baseline"), "working tree": ROOT}
    reports = {}
    print(f"{'code':>14} {'run':>4} {'wall s':>8} {'CPU s':>8} {'peak RSS MB':>12}")
    for i in range(args.repeat):
        for name, code in codes.items():
            reports[name] = scratch / name.replace(" ", "_") / f"run{i}" / "report.md"
            m = run_report(code, store, reports[name])
            print(f"{name:>14} {i:>4} {m['wall_s']:8.1f} {m['cpu_s']:8.1f} {m['rss_mb']:12.0f}")
    same = reports["baseline"].read_bytes() == reports["working tree"].read_bytes()
    print(f"report.md byte-identical: {same} ({scratch})")


if __name__ == "__main__":
    main()
