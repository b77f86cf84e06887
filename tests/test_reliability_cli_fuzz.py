"""Property tests of the command lines beside ``simulate.grid`` (issue 21, item 8; the sweep's
and the analysis commands' are tests/test_sweep_fuzz.py and tests/test_analysis_cli.py):
``python -m simulate.recommend`` and ``python -m simulate.train.run`` either succeed or exit 2 with
exactly one line on stderr, never a traceback nor a warning; the benchmarks' argument parsing
either accepts the arguments or exits 2 with argparse's error, never a traceback.

Values are drawn as in tests/test_sweep_fuzz.py: per flag, from tiny valid values (a valid run
takes well under a second once compiled) and from everything else. Sizes whose product no machine
holds are given too (``HUGE_*``): each command plans its memory (``simulate.resources``) and
refuses them in one line.
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import sys
import warnings
from contextlib import redirect_stderr, redirect_stdout
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from test_sweep_fuzz import argv_of, tokens

from simulate import recommend
from simulate.train import run as train_run

REPO = Path(__file__).resolve().parents[1]

SETTINGS = settings(
    max_examples=60,
    deadline=timedelta(seconds=60),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def one_line_or_runs(main, argv: list[str], quiet_refusal: bool = True) -> None:
    """``main(argv)`` returns 0 with output, or exits 2 (returned or raised) with one line on
    stderr (and, if ``quiet_refusal``, none on stdout); no other exception, no warning."""
    out, err = io.StringIO(), io.StringIO()
    with warnings.catch_warnings(record=True) as caught, redirect_stdout(out), redirect_stderr(err):
        warnings.simplefilter("always")
        try:
            status = main(argv)
        except SystemExit as stop:
            status = stop.code
    assert not caught, (argv, [str(w.message) for w in caught])
    if currently_in_test_context():  # (the fixed cases below run outside hypothesis)
        event(f"exit {status}")
    assert status in (0, 2), (argv, err.getvalue())
    if status == 2:
        assert len(err.getvalue().splitlines()) == 1, (argv, err.getvalue())
        assert out.getvalue() == "" or not quiet_refusal, (argv, out.getvalue())
    else:
        assert out.getvalue(), argv


def drawn(flags: dict, base: dict, booleans: tuple[str, ...] = ()):
    """A command line: ``base`` with up to four of ``flags`` drawn, and each of ``booleans``
    present or not."""

    @st.composite
    def command_lines(draw) -> list[str]:
        names = draw(st.dictionaries(st.sampled_from(sorted(flags)), st.just(None), max_size=4))
        argv = argv_of(base | {name: draw(flags[name]) for name in names})
        return argv + [flag for flag in booleans if draw(st.booleans())]

    return command_lines()


# --------------------------------------------------------------------------------------------------
# python -m simulate.recommend

RECOMMEND = {
    "sparsity": tokens("0.8", "0.6", "0.99"),
    "depth": tokens("3", "10"),
    "width": tokens("20", "50"),
    "family": tokens("crelu", "cst", "relu"),
    "q_star": tokens("1", "2", "1e-30"),
    "nets": tokens("4", "8"),
    "seed": tokens("0", "7"),
}
RECOMMEND_BASE = {"sparsity": "0.8", "depth": "3", "width": "20", "nets": "4"}

HUGE_RECOMMEND = [
    {"depth": "1000000000"},
    {"width": "1000000000"},
    {"nets": "100000000"},
]
"""Sizes whose memory no machine holds (found hanging, or ending in a MemoryError, on 2026-12-07).
(The plan is of memory, not time: 100,000 networks of width 100,000 fit, and take hours.)"""


@SETTINGS
@given(drawn(RECOMMEND, RECOMMEND_BASE, ("--json",)))
def test_recommend_either_runs_or_is_one_line(argv):
    one_line_or_runs(recommend.main, argv)


@pytest.mark.parametrize("sizes", HUGE_RECOMMEND, ids=str)
def test_recommend_refuses_sizes_no_machine_runs(sizes):
    one_line_or_runs(recommend.main, argv_of(RECOMMEND_BASE | sizes))


# --------------------------------------------------------------------------------------------------
# python -m simulate.train.run

TRAIN_RUN = {
    "family": tokens("crelu", "relu"),
    "sparsity": tokens("0.5", "0.8"),
    "clip": tokens("inf", "1"),
    "q_star": tokens("1", "2"),
    "depth": tokens("1"),
    "width": tokens("4"),
    "dataset": tokens("digits", "fashion-mnist", "mnist"),
    "data": st.sampled_from(["/nonexistent", "/tmp"]),
    "train_size": tokens("64", "100000"),
    "test_size": tokens("32", "100000"),
    "epochs": tokens("1"),
    "lr": tokens("0.01", "1e6"),
    "optimizer": tokens("sgd", "adam", "rmsprop"),
    "schedule": tokens("constant", "cosine", "step"),
    "warmup": tokens("0", "0.5", "1"),
    "batch_size": tokens("32", "65"),
    "output_gain": tokens("1", "0", "1e300"),
    "seed": tokens("0", "7"),
    "chi1": tokens("1", "0.9"),
}
TRAIN_RUN_BASE = {"family": "crelu", "sparsity": "0.5", "clip": "inf", "depth": "1",
                  "width": "4", "epochs": "1", "train_size": "64", "test_size": "32",
                  "batch_size": "32", "optimizer": "sgd"}  # fmt: skip
"""One epoch of a ReLU network with one hidden layer of 4 on 64 digits."""


def train_run_main(argv: list[str]) -> int:
    """``python -m simulate.train.run`` in this process, with ``--threads``: without it the command
    caps XLA's threads, which it refuses to do once another test has imported JAX."""
    return train_run.main([*argv, "--threads"])


HUGE_TRAIN_RUN = [
    {"depth": "1000000000"},
    {"width": "1000000000"},
    {"width": "100000", "depth": "1000"},
]


@pytest.mark.slow
@SETTINGS
@given(drawn(TRAIN_RUN, TRAIN_RUN_BASE))
def test_train_run_either_runs_or_is_one_line(argv):
    """(A refusal may follow the run's header on stdout: see the next test.)"""
    one_line_or_runs(train_run_main, argv, quiet_refusal=False)


def test_train_run_refuses_before_any_output():
    """Found by the test above: --output-gain 1e300 is refused after the header is printed."""
    one_line_or_runs(train_run_main, argv_of(TRAIN_RUN_BASE | {"output_gain": "1e300"}))


@pytest.mark.parametrize("sizes", HUGE_TRAIN_RUN, ids=str)
def test_train_run_refuses_sizes_no_machine_runs(sizes):
    one_line_or_runs(train_run_main, argv_of(TRAIN_RUN_BASE | sizes))


# --------------------------------------------------------------------------------------------------
# The benchmarks' argument parsing


class Parsed(Exception):
    """Raised in place of the benchmark's work, once its arguments are parsed."""


NUMBER = tokens("1", "3", "1000000000")
BENCHMARKS = {
    "engines": {"width": NUMBER},
    "fixed_points": {"stride": NUMBER, "ref": st.sampled_from(["HEAD", "nope"])},
    "report_memory": {"scales": tokens("10", "40", "10,40"), "dir": st.sampled_from(["/tmp/x"])},
    "report_speed": {"repeat": NUMBER, "baseline": st.sampled_from(["HEAD"])},
    "sweep_floor": {"nets": NUMBER},
    "train": {name: NUMBER for name in ("depth", "width", "batch", "steps", "repeats", "vmap")},
}
"""Each benchmark's flags that take a value (its positional store, where it has one, is given)."""


@pytest.fixture(scope="module")
def benchmarks() -> dict:
    """The benchmark modules, imported with the environment they set restored after."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    saved = dict(os.environ)
    try:
        return {name: importlib.import_module(name) for name in BENCHMARKS}
    finally:
        os.environ.clear()
        os.environ.update(saved)
        sys.path.remove(str(REPO / "benchmarks"))


@st.composite
def benchmark_lines(draw) -> tuple[str, list[str]]:
    name = draw(st.sampled_from(sorted(BENCHMARKS)))
    flags = BENCHMARKS[name]
    chosen = draw(st.dictionaries(st.sampled_from(sorted(flags)), st.just(None), max_size=3))
    store = ["store.zarr"] if name in ("report_speed", "sweep_floor") else []
    return name, store + argv_of({flag: draw(flags[flag]) for flag in chosen})


@SETTINGS
@given(benchmark_lines())
def test_benchmark_arguments_are_parsed_or_refused(benchmarks, monkeypatch, case):
    """Parsing stops the benchmark (``Parsed``) or exits 2 with argparse's error line last."""
    name, argv = case
    parse = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        raise Parsed(parse(self, args, namespace))

    err = io.StringIO()
    with monkeypatch.context() as patch, redirect_stderr(err):
        patch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
        patch.setattr(sys, "argv", [f"{name}.py", *argv])
        try:
            benchmarks[name].main()
        except Parsed:
            event("parsed")
            return
        except SystemExit as stop:
            assert stop.code == 2, (name, argv)
    assert ": error: " in err.getvalue().splitlines()[-1], (name, argv, err.getvalue())
