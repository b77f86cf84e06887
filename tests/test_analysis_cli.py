"""The analysis commands on bad input: every anticipated failure is one line on stderr, exit status 2
and nothing written; never a traceback. Run in-process (``run_cli``), as ``python -m`` runs them."""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from synthetic import make_store

from analysis import figures, fit, instability, phase, report
from analysis._cli import run_cli
from analysis._store import StoreError, open_results

COMMANDS = {
    "fit": fit.main,
    "instability": instability.main,
    "phase": phase.main,
    "figures": figures.main,
    "report": report.main,
}


def run(command: str, argv: list[str]) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``python -m analysis.<command> *argv``, in-process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_cli(COMMANDS[command], argv)
        except SystemExit as done:
            code = done.code
    return code, out.getvalue(), err.getvalue()


def _corrupt_one_chunk(store: Path, variable: str = "q") -> Path:
    """Truncate one chunk file of ``variable`` to 100 bytes (a damaged disk or an aborted copy)."""
    chunk = next(
        p
        for p in sorted((store / variable).rglob("*"))
        if p.is_file() and p.stat().st_size > 100 and p.name != "zarr.json"
    )
    chunk.write_bytes(chunk.read_bytes()[:100])
    return chunk


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    """A tiny valid store, a partial one (its unclipped cells not run), the valid one with one
    corrupted chunk, and things that are not stores."""
    root = tmp_path_factory.mktemp("cli")
    valid = root / "valid.zarr"
    make_store(widths=(32,), depth=6, nets=8, seed=20).to_zarr(valid)
    partial = root / "partial.zarr"
    unclipped_not_run = np.array([True, False]).reshape(1, 1, 2, 1, 1)  # clip 1 done, inf not
    make_store(widths=(32,), depth=6, nets=8, seed=21, done=unclipped_not_run).to_zarr(partial)
    damaged = root / "damaged.zarr"
    shutil.copytree(valid, damaged)
    _corrupt_one_chunk(damaged)
    (root / "text.txt").write_text("not a store")
    (root / "garbage.nc").write_bytes(b"\x00" * 64)
    (root / "empty.zarr").mkdir()
    (root / "a_file").write_text("x")
    return {
        "valid": valid,
        "partial": partial,
        "damaged": damaged,
        "text": root / "text.txt",
        "garbage": root / "garbage.nc",
        "empty": root / "empty.zarr",
        "missing": root / "missing.zarr",
        "file": root / "a_file",
    }


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_a_damaged_chunk_is_a_one_line_store_error(stores, tmp_path):
    """One truncated chunk of q: reading the store fails as a StoreError naming the variable, and
    every command exits 2 with one line (not the compressor's traceback), writing nothing."""
    with pytest.raises(StoreError, match="variable q is damaged") as err:
        open_results(stores["damaged"])
    assert "\n" not in str(err.value)
    for command in COMMANDS:
        outputs = ["--out", str(tmp_path / "out")] if command in ("figures", "report") else []
        code, _, stderr = run(command, [str(stores["damaged"]), *outputs])
        assert code == 2 and stderr.count("\n") == 1 and "variable q is damaged" in stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("command", ["figures", "report"])
@pytest.mark.parametrize("out", ["/proc/nope.md", "/proc/nope/deeper/report.md", "FILE/sub"])
def test_an_output_that_cannot_be_written_is_refused_up_front(stores, command, out):
    """``--out`` under /proc (no files can be made there, whatever the permission bits say) or
    under a regular file: one line naming --out, exit 2, nothing written anywhere."""
    out = out.replace("FILE", str(stores["file"]))
    before = _snapshot(stores["valid"].parent)
    code, stdout, stderr = run(command, [str(stores["valid"]), "--out", out])
    assert code == 2 and stdout == ""
    assert stderr.count("\n") == 1 and stderr.startswith("error: out=")
    assert _snapshot(stores["valid"].parent) == before
    assert not Path(out).exists()


def test_report_refuses_a_directory_as_its_output_file(stores):
    code, _, stderr = run("report", [str(stores["valid"]), "--out", str(stores["empty"])])
    assert code == 2 and "is a directory" in stderr


OPTIONS = {
    "fit": {"--alpha": ["0.01", "0.5"], "--n-jobs": ["1", "2", "-1"]},
    "instability": {"--table": sorted(instability.TABLES), "--n-jobs": ["1", "2", "-1"]},
    "phase": {"--source": ["theory", "mc"]},
    "figures": {"--out": ["OUT"], "--n-jobs": ["1", "2", "-1"]},
    "report": {"--out": ["OUT/report.md"], "--n-jobs": ["1", "2", "-1"]},
}
"""Each command's options with valid values (OUT: a folder in the run's working directory)."""

ODD_VALUES = [
    "nan",
    "inf",
    "-inf",
    "0",
    "1",
    "-1",
    "1e308",
    "-1e308",
    "1e-320",
    "",
    "/proc/nope.md",
]
"""Numbers at and beyond float limits, an empty value, an unwritable path."""


@st.composite
def invocations(draw, stores):
    """A command, a store (valid or partial half of the time; else damaged, not a store, missing
    or an arbitrary name), and its options, each valid or not, sometimes an unknown argument."""
    command = draw(st.sampled_from(sorted(COMMANDS)))
    kinds = ["valid", "partial"] * 3 + sorted(set(stores) - {"valid", "partial"}) + ["name"]
    kind = draw(st.sampled_from(kinds))
    name = stores["missing"].parent / draw(st.text(min_size=1, max_size=6))
    argv = [str(name if kind == "name" else stores[kind])]
    for option, valid in OPTIONS[command].items():
        if draw(st.booleans()):
            value = draw(
                st.one_of(st.sampled_from(valid), st.sampled_from(ODD_VALUES), st.text(max_size=6))
            )
            argv += [option, value]
    if draw(st.integers(0, 7)) == 0:
        argv.append(draw(st.sampled_from(["--bogus", "extra", "-x", "--help"])))
    return command, argv


def _no_figures(results, out, tables=None) -> list[Path]:
    """Stands in for ``make_figures`` in the property test: drawing takes seconds, and the figures
    have tests of their own (test_analysis_figures.py, the end-to-end tests)."""
    return []


@pytest.mark.slow
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_every_command_exits_0_or_2_with_one_line(stores, tmp_path_factory, data):
    """Drawn command lines: each ends with status 0, or status 2 with exactly one line on stderr and
    nothing written; never a traceback (an unexpected exception fails the test). Run from an empty
    working directory, where relative outputs land."""
    command, argv = data.draw(invocations(stores))
    work = tmp_path_factory.mktemp("work")
    argv = [a.replace("OUT", str(work / "out")) for a in argv]
    root = stores["valid"].parent
    before = _snapshot(root)
    with (
        contextlib.chdir(work),
        mock.patch.object(figures, "make_figures", _no_figures),
        mock.patch.object(report, "make_figures", _no_figures),
    ):
        code, _, stderr = run(command, argv)
    assert code in (0, 2), (command, argv, code, stderr)
    if code == 2:
        assert stderr.count("\n") == 1 and stderr.startswith("error: "), (argv, stderr)
        assert _snapshot(root) == before, argv
        assert not any(work.iterdir()), argv
