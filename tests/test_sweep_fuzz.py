"""Property: whatever values the sweep's flags get, ``python -m simulate.grid`` either succeeds or
exits 2 with exactly one line on stderr and nothing written, never a traceback (nor a warning).

Values are drawn per flag from the tiny valid ones (so that a run that passes finishes in well under
a second) and from everything else: numbers at and beyond the float limits, nan, inf, negatives,
huge integers, empty lists and malformed ranges, and sizes whose product no machine holds (1e9
layers, 1e5 inputs: the sweep plans its memory and disk and refuses them). Valid but costly values
(a depth of 1e5, say) are left out on purpose: they are valid, and only slow. The command runs in-process (``grid.main``, the
code the command line runs), with hypothesis's example order fixed (``derandomize``).

Training sweeps (``--experiment train``) are drawn the same way, from their own flags; their valid
values are few, so that most valid runs reuse the network JAX compiled first.
"""

from __future__ import annotations

import tempfile
import warnings
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from simulate import grid

BEYOND = [
    "nan", "NaN", "inf", "-inf", "+inf", "1e308", "1.7976931348623157e308", "1.8e308", "-1e308",
    "5e-324", "-5e-324", "1e-320", "0", "-0", "-1", "-0.5", "1e155", "-1e155", "1e400",
    "123456789012345678901234567890", "9223372036854775808", "-9223372036854775809",
]  # fmt: skip
"""Numbers at and beyond the limits of float64 and of the fields."""

MALFORMED = [
    "", " ", ",", "1,,2", ",1", "1:2", ":::", "1:2:0", "1:2:-3", "1:2:2.5", "log:-1:1:2",
    "log:0:1:2", "log:1:2", "a:b:c", "1:2:nan", "inf:1:2", "1:nan:2", "1:2:1e400", "abc", "1;2",
    "0x10", "1e", "--", "log", "[1, 2]", "1 2", "tru", "None",
]  # fmt: skip
"""Tokens that are not numbers, lists or ranges."""


def tokens(*valid: str) -> st.SearchStrategy[str]:
    """A flag's value: one of its tiny valid values, a number beyond the limits, a malformed token,
    or a comma list of up to three of those."""
    single = st.sampled_from([*valid, *BEYOND, *MALFORMED])
    return st.one_of(single, st.lists(single, min_size=1, max_size=3).map(",".join))


FLAGS = {
    "family": tokens("crelu", "cst", "crelu,cst", "relu"),
    "sparsity": tokens("0.5", "0.8", "0.99", "0.999999", "0.6:0.8:2"),
    "tau": tokens("0", "0.5", "1", "6", "40", "0:1:2"),
    "clip": tokens("0.5", "1", "1e-300", "1e300", "log:1e-3:1e3:2"),
    "q_star": tokens("1", "1e-30", "1e30", "1e-31", "log:1e-6:1e6:2"),
    "sigma_w2": tokens("1", "2", "1e-300", "1e300"),
    "sigma_b2": tokens("0", "0.5", "1e300"),
    "width": tokens("1", "2", "4", "2147483647", "2147483648", "log:1:4:2"),
    "depth": tokens("1", "3", "2147483647", "2.0", "1e9"),
    "nets": tokens("1", "2", "2147483647", "1e8"),
    "inputs": tokens("1", "3", "100000"),
    "record": tokens("layers", "summary"),
    "record_every": tokens("2", "1000000"),
    "q0": tokens("q_star", "1", "0.05", "1e30"),
    "c0": tokens("0.5", "1", "-1", "1.0000001"),
    "engine": tokens("gram", "dense", "sparse", "auto", "fast"),
    "seed": tokens("0", "7", "9223372036854775807", "1e3"),
    "escape_factor": tokens("10", "1", "1.0000001", "1e100", "1e99"),
    "n_jobs": tokens("1", "0"),
    "backend": tokens("loky", "threading", "spark"),
    "scheduler": tokens("tcp://127.0.0.1:1"),
    "max_batch": tokens("1", "3", "0"),
    "out": st.sampled_from(["", "/dev/null/x.zarr", "/proc/nope.zarr"]),
}
"""Every flag that takes a value; ``--overwrite``, ``--repair`` and ``--allow-mixed-versions`` are
drawn as present or not."""

BASE = {"family": "crelu", "sparsity": "0.8", "clip": "1", "width": "4", "depth": "3", "nets": "1",
        "n_jobs": "1"}  # fmt: skip
"""A tiny valid sweep that the drawn flags modify."""


def argv_of(values: dict[str, str]) -> list[str]:
    return [arg for k, v in values.items() for arg in ("--" + k.replace("_", "-"), v)]


@st.composite
def command_lines(draw) -> tuple[list[str], bool]:
    """(argv without --out, whether --out was drawn)."""
    drawn = draw(st.dictionaries(st.sampled_from(sorted(FLAGS)), st.just(None), max_size=4))
    values = {name: draw(FLAGS[name]) for name in drawn}
    base = dict(BASE)
    if {"tau", "sigma_w2", "sigma_b2"} & set(values):
        base.pop("sparsity")  # tau replaces sparsity; off the EoC needs tau
    if {"sigma_w2", "sigma_b2"} & set(values) and "tau" not in values:
        base["tau"] = "0.5"
    argv = argv_of(base | values)
    for flag in ("--overwrite", "--repair", "--allow-mixed-versions"):
        if draw(st.booleans()):
            argv.append(flag)
    return argv, "out" in values


@pytest.fixture(scope="module", autouse=True)
def warm_kernels(tmp_path_factory):
    """One run of each experiment first, so that compiling the Numba kernels and the JAX network
    does not count against the deadline."""
    for base in (BASE, TRAIN_BASE):
        out = tmp_path_factory.mktemp("warm") / "w.zarr"
        argv = [*(f"--{k.replace('_', '-')}={v}" for k, v in base.items()), "--out", str(out)]
        assert grid.main(argv) == 0


TRAIN_FLAGS = {
    "experiment": tokens("train", "init"),
    "family": tokens("crelu", "relu"),
    "sparsity": tokens("0.5", "0.8"),
    "clip": tokens("inf"),
    "q_star": tokens("1", "2"),
    "width": tokens("4"),
    "depth": tokens("1"),
    "lr": tokens("0.01", "1e6", "1e-300", "0.1:1:2"),
    "run_seed": tokens("0", "9223372036854775807", "0:1:2"),
    "dataset": tokens("digits", "fashion-mnist", "mnist"),
    "train_size": tokens("64", "100000"),
    "test_size": tokens("32", "100000"),
    "epochs": tokens("1"),
    "optimizer": tokens("sgd", "adam", "rmsprop"),
    "schedule": tokens("constant", "cosine", "step"),
    "warmup": tokens("0", "0.5", "1"),
    "batch_size": tokens("32", "65"),
    "output_gain": tokens("1", "0", "1e300"),
    "probe_size": tokens("16", "100000"),
    "seed": tokens("0", "7"),
    "nets": tokens("2"),
    "data": st.sampled_from(["", "/nonexistent", "/tmp"]),
}
"""Every flag of a training sweep, with valid values that mostly keep the network's compiled
programs (so that a valid run takes a fraction of a second after the first), and two flags that
belong to the other experiment (``--experiment init``, ``--nets``)."""

TRAIN_BASE = {"experiment": "train", "family": "crelu", "sparsity": "0.5", "clip": "inf",
              "width": "4", "depth": "1", "epochs": "1", "train_size": "64", "test_size": "32",
              "batch_size": "32", "probe_size": "16", "optimizer": "sgd", "n_jobs": "1"}  # fmt: skip
"""A tiny valid training sweep (ReLU, one hidden layer of 4, one epoch on 64 digits)."""


@pytest.mark.slow
@settings(
    max_examples=60,
    deadline=timedelta(seconds=30),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(command_lines())
@example(case=(argv_of(BASE | {"clip": "1e155,1e308,1.7976931348623157e308"}), False))  # issue 12
@example(case=(argv_of(BASE | {"sparsity": "0.999999", "clip": "1e-300"}), False))
@example(case=(argv_of(BASE | {"depth": "1e9"}), False))  # issue 21: killed, not refused
@example(case=(argv_of(BASE | {"inputs": "100000", "width": "1000"}), False))  # MemoryError
@example(case=(argv_of(BASE | {"nets": "1e8", "width": "1e5"}), False))
@example(case=(argv_of(BASE | {"record": "summary", "inputs": "100000"}), False))
@example(case=(argv_of(BASE | {"clip": "1:2:1e8"}), False))  # a range of 1e8 values
def test_every_flag_either_runs_or_is_one_line(capsys, case):
    check_one_line_or_runs(capsys, case)


@st.composite
def train_command_lines(draw) -> tuple[list[str], bool]:
    """(argv of a training sweep without --out, whether --out was drawn)."""
    drawn = draw(st.dictionaries(st.sampled_from(sorted(TRAIN_FLAGS)), st.just(None), max_size=4))
    values = {name: draw(TRAIN_FLAGS[name]) for name in drawn}
    return argv_of(TRAIN_BASE | values), False


@pytest.mark.slow
@settings(
    max_examples=40,
    deadline=timedelta(seconds=60),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(train_command_lines())
@example(case=(argv_of(TRAIN_BASE | {"lr": "1e6", "optimizer": "sgd"}), False))  # diverges
@example(case=(argv_of(TRAIN_BASE | {"output_gain": "1e6"}), False))  # the largest allowed
def test_every_training_flag_either_runs_or_is_one_line(capsys, case):
    check_one_line_or_runs(capsys, case)


def check_one_line_or_runs(capsys, case) -> None:
    argv, own_out = case
    capsys.readouterr()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "x.zarr"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # a warning is a line on a user's stderr too
            status = grid.main([*argv, *([] if own_out else ["--out", str(out)])])
        captured = capsys.readouterr()
        assert not caught, (argv, [str(w.message) for w in caught])
        lines = captured.err.splitlines()
        event(f"exit {status}")
        assert status in (0, 2), (argv, captured.err)
        assert all(line.startswith("simulate.grid: ") for line in lines), (argv, captured.err)
        if status == 2:
            assert len(lines) == 1, (argv, captured.err)
            assert captured.out == ""
            assert list(Path(tmp).iterdir()) == [], argv
        elif not own_out:
            assert np.all(zarr.open_group(out, mode="r")["cell_done"][...]), argv
