"""Training that survives interruptions, and initialisation off the Edge of Chaos at a fixed q*.

- A run stopped after any epoch and started again from its checkpoint returns exactly what an
  uninterrupted run returns (in-process: an exception after an epoch; end to end: kill -9 of the
  one-run command line and of a training sweep, then the same command).
- A checkpoint of another run is refused in one line naming what differs.
- ``chi1``: the variances have V(q*) = q* and chi_1(q*) = chi1 by independent quadrature, a
  training sweep stores them per cell, and an infeasible chi1 (ReLU above 1) is one line, exit 2.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from stores import load_data

from simulate import gp
from simulate.activations import Activation
from simulate.infer import load_npz
from simulate.train import checkpoint
from simulate.train.data import load_dataset
from simulate.train.run import train_network

REPO = Path(__file__).resolve().parents[1]
ACT = Activation.from_sparsity("crelu", 0.85, 1.0, 1.0)
RUN = dict(epochs=4, lr=3e-3, batch_size=64, seed=5, probe_size=32)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", train_size=320, test_size=96)


@pytest.fixture(scope="module")
def uninterrupted(digits):
    return train_network(ACT, 1.0, 3, 16, digits, **RUN)


class _Stop(Exception):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("stop_after", [0, 2, 3])
def test_a_run_resumed_from_its_checkpoint_equals_an_uninterrupted_run(
    digits, uninterrupted, tmp_path, stop_after
):
    """Stopped right after epoch ``stop_after`` was measured (before its checkpoint was written, the
    worst moment), then run again: bit-identical results; the file holds the last saved epoch."""
    path = tmp_path / "run.npz"

    def stop(epoch, _):
        if epoch == stop_after:
            raise _Stop

    with pytest.raises(_Stop):
        train_network(ACT, 1.0, 3, 16, digits, **RUN, checkpoint=path, on_epoch=stop)
    assert checkpoint.epoch_of(path) == (stop_after - 1 if stop_after else None)
    seen = []
    resumed = train_network(
        ACT, 1.0, 3, 16, digits, **RUN, checkpoint=path, on_epoch=lambda e, _: seen.append(e)
    )
    assert seen == list(range(stop_after, RUN["epochs"] + 1))
    assert resumed.keys() == uninterrupted.keys()
    for name, value in uninterrupted.items():
        np.testing.assert_array_equal(resumed[name], value, err_msg=name)


def test_a_checkpoint_of_another_run_is_refused_naming_the_difference(digits, tmp_path):
    path = tmp_path / "run.npz"

    def stop(epoch, _):
        if epoch == 1:
            raise _Stop

    with pytest.raises(_Stop):
        train_network(ACT, 1.0, 3, 16, digits, **RUN, checkpoint=path, on_epoch=stop)
    with pytest.raises(checkpoint.CheckpointMismatch) as err:
        train_network(ACT, 1.0, 3, 16, digits, **{**RUN, "lr": 1e-3}, checkpoint=path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "lr: '0.003' != '0.001'" in message
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointMismatch, match="cannot be read"):
        train_network(ACT, 1.0, 3, 16, digits, **RUN, checkpoint=path)


@pytest.mark.parametrize(
    "family, sparsity, m, chi_1",
    [("crelu", 0.85, 0.86, 0.9), ("crelu", 0.85, 0.86, 1.25), ("cst", 0.9, 1.0, 1.5)],
)
def test_off_the_edge_the_fixed_point_stays_and_chi1_is_as_asked(family, sparsity, m, chi_1):
    """sigma_w^2 E[phi'(sqrt(q*) z)^2] = chi_1 and sigma_w^2 E[phi^2] + sigma_b^2 = q*, the
    expectations by adaptive quadrature split at the knots (not the closed forms), to 1e-10."""
    q_star = 1.0
    act = Activation.from_sparsity(family, sparsity, q_star, m)
    v = gp.edge_of_chaos(act, q_star, chi_1)
    kinks = tuple(act.knots)
    slope2 = gp.gaussian_expectation(
        lambda x: float(act.derivative(np.array([x]))[0]) ** 2, 1.0, kinks
    )
    phi2 = gp.gaussian_expectation(lambda x: float(act(np.array([x]))[0]) ** 2, 1.0, kinks)
    assert math.isclose(v.sigma_w2 * slope2, chi_1, rel_tol=1e-10)
    assert math.isclose(v.sigma_w2 * phi2 + v.sigma_b2, q_star, rel_tol=1e-10)
    assert math.isclose(gp.sparsity(act, q_star), sparsity, rel_tol=1e-9)  # unchanged by chi_1


def test_relu_cannot_be_chaotic_at_a_fixed_point():
    """ReLU (sigma_b^2 = 0 on the EoC) has sigma_b^2 = q* (1 - chi_1): refused above 1."""
    relu = Activation.relu()
    assert gp.edge_of_chaos(relu, 2.0, 0.75).sigma_b2 == pytest.approx(0.5, rel=1e-12)
    with pytest.raises(ValueError, match=r"chi_1=1.1 at this q\* needs a negative bias"):
        gp.edge_of_chaos(relu, 1.0, 1.1)


# --------------------------------------------------------------------------------------------------
# End to end, through the command lines


def _kill_mid_run(proc: subprocess.Popen, path: Path) -> int:
    """As soon as the run has saved a checkpoint at ``path``: stop its process group (SIGSTOP),
    read the last saved epoch, then kill -9 it. Returns that epoch (the run may have gone on
    measuring later epochs before the stop; it is killed before it can finish)."""
    deadline = time.monotonic() + 300
    while checkpoint.epoch_of(path) is None:
        assert proc.poll() is None, "the run ended before it saved a checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGSTOP)
    saved = checkpoint.epoch_of(path)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    return saved


def _python(*args) -> list[str]:
    return [sys.executable, "-m", *map(str, args)]


ENV = {**os.environ, "PYTHONPATH": str(REPO)}
ONE_RUN = ["--depth", 3, "--width", 16, "--epochs", 40, "--lr", 3e-3, "--batch-size", 64,
           "--test-size", 96, "--seed", 2]  # fmt: skip


def _epoch_lines(text: str) -> list[str]:
    """The per-epoch lines without their elapsed-time field."""
    return [line.rsplit("  ", 1)[0] for line in text.splitlines() if line.startswith("epoch")]


@pytest.mark.slow
def test_the_one_run_command_killed_mid_run_resumes_with_the_same_numbers(tmp_path):
    """``python -m simulate.train.run ... --checkpoint F`` (40 epochs): kill -9 once it has saved an
    epoch e, then the same command prints epochs e + 1.. and every line equals an uninterrupted
    run's; F is gone at the end."""
    cmd = _python("simulate.train.run", *ONE_RUN)
    whole = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300, check=True)
    path, log = tmp_path / "run.npz", tmp_path / "first.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [*cmd, "--checkpoint", str(path)], env=ENV, stdout=out, start_new_session=True
        )
        saved = _kill_mid_run(proc, path)
    second = subprocess.run(
        [*cmd, "--checkpoint", str(path)], env=ENV, capture_output=True, text=True, timeout=300
    )
    assert second.returncode == 0, second.stderr
    expected = _epoch_lines(whole.stdout)
    assert len(expected) == 41 and saved < 40
    assert _epoch_lines(log.read_text())[: saved + 1] == expected[: saved + 1]
    assert _epoch_lines(second.stdout) == expected[saved + 1 :]
    assert not path.exists()


SWEEP = ["--experiment", "train", "--family", "crelu", "--sparsity", "0.85", "--clip", "1",
         "--chi1", "0.9,1.2", "--width", "16", "--depth", "3", "--epochs", "30", "--lr", "3e-3",
         "--test-size", "96", "--batch-size", "64", "--probe-size", "32",
         "--run-seed", "0", "--seed", "4", "--n-jobs", "1"]  # fmt: skip


@pytest.mark.slow
def test_a_training_sweep_killed_mid_run_resumes_to_the_uninterrupted_store(tmp_path):
    """Two runs (chi_1 = 0.9 and 1.2) of 30 epochs: kill -9 of the sweep once the first run has
    saved an epoch, then the same command: the store equals an uninterrupted sweep's, its variances
    are the chi_1 ones, and the checkpoints are gone."""
    ref = tmp_path / "ref.zarr"
    subprocess.run(_python("simulate.grid", *SWEEP, "--out", ref), env=ENV, check=True,
                   capture_output=True, timeout=300)  # fmt: skip
    out = tmp_path / "killed.zarr"
    folder = out.with_name(out.name + ".checkpoints")
    proc = subprocess.Popen(
        _python("simulate.grid", *SWEEP, "--out", out),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    assert _kill_mid_run(proc, folder / "cell-0.npz") < 30
    assert not xr.open_zarr(out).cell_done.values.any()
    subprocess.run(_python("simulate.grid", *SWEEP, "--out", out), env=ENV, check=True,
                   capture_output=True, timeout=300)  # fmt: skip
    xr.testing.assert_identical(load_data(out), load_data(ref))
    assert not folder.exists()
    ds = load_data(ref)
    act = Activation.from_sparsity("crelu", 0.85, 1.0, 1.0)
    for chi_1 in (0.9, 1.2):
        expected = gp.edge_of_chaos(act, 1.0, chi_1)
        cell = ds.sel(chi1=chi_1).squeeze()
        assert float(cell.sigma_w2) == pytest.approx(expected.sigma_w2, rel=1e-12)
        assert float(cell.sigma_b2) == pytest.approx(expected.sigma_b2, rel=1e-12)


@pytest.mark.slow
def test_an_infeasible_chi1_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "s.zarr"
    result = subprocess.run(
        _python("simulate.grid", "--experiment", "train", "--family", "crelu", "--sparsity",
                "0.5", "--clip", "inf", "--chi1", "1.1", "--out", out),
        env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "chi1=1.1" in lines[0] and "negative bias variance" in lines[0]
    assert not out.exists()


def test_saved_parameters_reproduce_the_final_test_accuracy(digits, tmp_path):
    """The trained network saved in the initialiser's layout, run forward in numpy (float64), has
    the run's final test accuracy: its predictions differ from the float32 JAX network's only on
    near-ties, none among these 96 images."""
    path = tmp_path / "net.npz"
    result = train_network(ACT, 1.0, 3, 16, digits, **RUN, save_params=path)
    weights, biases = load_npz(path)
    assert [w.shape for w in weights] == [(16, 64), (16, 16), (16, 16), (10, 16)]
    a = digits.x_test.astype(float)
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        h = a @ w.T.astype(float) + b
        a = ACT(h) if i < len(weights) - 1 else h
    accuracy = np.mean(np.argmax(a, axis=1) == digits.y_test)
    assert accuracy == pytest.approx(float(result["test_acc"][-1]), abs=1e-6)
