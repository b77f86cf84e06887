"""``python -m simulate.grid --experiment train`` end to end on a tiny sweep: the store's schema and
theory columns, divergence recorded (not raised) beside runs that are fine, kill -9 and a resume on
two workers identical to one uninterrupted run on one, the training seeds, and refusals of bad input.

Sweeps that train run as subprocesses through the command line, as a user runs them (XLA capped at
one thread per process). Each compiles the network once (one activation, one depth here); the
subprocesses share a JAX persistent compilation cache, so that later compiles are loads. Refusals
train nothing and call ``main`` in-process, the code the command line runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from stores import load_data

from simulate import grid, schema, store
from simulate.spec import TRAIN_EXTRA, Spec, TrainSpec, cells, parse, resolve
from simulate.train.data import FASHION_APT, FASHION_FILES, load_dataset
from simulate.train.options import OPTIMIZERS, SCHEDULES
from simulate.train.run import RESULT_DIMS, train_network

REPO = Path(__file__).resolve().parents[1]

TINY = [
    "--experiment", "train", "--family", "crelu", "--sparsity", "0.5", "--clip", "inf",
    "--width", "16", "--depth", "3", "--lr", "0.01,1e6", "--optimizer", "sgd", "--epochs", "2",
    "--train-size", "300", "--test-size", "100", "--batch-size", "50", "--probe-size", "64",
    "--run-seed", "0:7:8", "--seed", "3",
]  # fmt: skip
"""16 runs of a ReLU network (CReLU at sparsity 0.5: tau = 0, unclipped), 3 hidden layers of 16, two
epochs of SGD on 300 digits at learning rates 0.01 and 1e6 (which diverges), 8 seeds."""


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("jax_cache")


def sweep(*args, cache: Path, check=True, **popen) -> subprocess.CompletedProcess:
    """``python -m simulate.grid ARGS`` in a fresh process."""
    result = subprocess.run(
        [sys.executable, "-m", "simulate.grid", *map(str, args)],
        env=environment(cache),
        capture_output=True,
        text=True,
        timeout=600,
        **popen,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def environment(cache: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory, jax_cache) -> Path:
    """TINY, uninterrupted, on one worker."""
    out = tmp_path_factory.mktemp("reference") / "ref.zarr"
    sweep(*TINY, "--n-jobs", 1, "--out", out, cache=jax_cache)
    return out


# --------------------------------------------------------------------------------------------------
# The store


@pytest.mark.slow
def test_schema(reference):
    ds = load_data(reference)
    cell = ("family", "sparsity", "clip", "q_star", "width", "depth", "lr", "run_seed")
    assert dict(ds.sizes) == {"family": 1, "sparsity": 1, "clip": 1, "q_star": 1, "width": 1,
                              "depth": 1, "lr": 2, "run_seed": 8, "epoch": 3, "probe": 2,
                              "layer": 3, "knot": 1}  # fmt: skip
    assert list(ds.run_seed.values) == list(range(8)) and list(ds.lr.values) == [0.01, 1e6]
    assert list(ds.epoch.values) == [0, 1, 2] and list(ds.layer.values) == [1, 2, 3]
    assert list(ds.probe.values) == ["train", "test"]
    assert set(ds.data_vars) == {
        *RESULT_DIMS, "cell_done", "tau", "sigma_w2", "sigma_b2", "v_slope", "gp_sparsity",
        "act_knots", "act_values", "act_left_slope", "act_right_slope",
    }  # fmt: skip
    for name, dims in RESULT_DIMS.items():  # the schema is what the training engine returns
        assert ds[name].dims == (*cell, *dims), name
        assert ds[name].dtype == np.dtype(schema.TRAIN_CELL_VARIABLES[name].dtype), name
    assert ds.cell_done.dims == cell and ds.cell_done.all()
    for name in [*ds.data_vars, *ds.coords]:
        assert ds[name].attrs["units"] and ds[name].attrs["long_name"], name
    assert parse(TINY)[0] == Spec.from_toml(ds.attrs["spec"])
    attrs = ds.attrs
    assert attrs["experiment"] == "train" and attrs["dataset"] == "digits"
    assert (attrs["n_train"], attrs["n_test"], attrs["epochs"], attrs["seed"]) == (300, 100, 2, 3)
    assert len(attrs["data_sha256"]) == 64 and attrs["jax_version"]


def test_theory_columns_are_the_relu_edge_of_chaos(reference):
    """ReLU at the EoC, in closed form: V(q) = sigma_w^2 q / 2 + sigma_b^2 and chi_1 = sigma_w^2 / 2,
    so chi_1 = 1 and V(q*) = q* give sigma_w^2 = 2, sigma_b^2 = 0, V'(q*) = 1; half the units are
    zero; the activation is max(0, x): one knot at 0, slopes 0 and 1."""
    point = load_data(reference).squeeze()
    assert float(point.tau) == 0.0
    np.testing.assert_allclose(
        [point.sigma_w2, point.sigma_b2, point.v_slope], [2, 0, 1], atol=1e-12
    )
    np.testing.assert_allclose(point.gp_sparsity, 0.5, rtol=1e-12)
    assert point.act_knots.values.ravel().tolist() == [0.0]
    assert point.act_values.values.ravel().tolist() == [0.0]
    assert (float(point.act_left_slope), float(point.act_right_slope)) == (0.0, 1.0)


def test_divergence_is_recorded_and_the_other_runs_are_fine(reference):
    """At lr 1e6 every run diverges within its two epochs: flagged, its epoch recorded, its loss
    there not finite and every value after it NaN; epoch 0 (before any step) is intact. At lr 0.01
    no run diverges and every value is finite."""
    ds = load_data(reference).squeeze(["family", "sparsity", "clip", "q_star", "width", "depth"])
    per_epoch = [name for name, dims in RESULT_DIMS.items() if dims[:1] == ("epoch",)]
    huge = ds.sel(lr=1e6)
    assert huge.diverged.all()
    for seed in huge.run_seed.values:
        run = huge.sel(run_seed=seed)
        stop = int(run.diverged_epoch)
        assert 1 <= stop <= 2
        assert not np.isfinite(run.train_loss.sel(epoch=stop)) or not np.isfinite(
            run.test_loss.sel(epoch=stop)
        )
        for name in per_epoch:
            assert np.isnan(run[name].sel(epoch=slice(stop + 1, None))).all(), name
            assert np.isfinite(run[name].sel(epoch=0)).all(), name
    fine = ds.sel(lr=0.01)
    assert not fine.diverged.any() and (fine.diverged_epoch == -1).all()
    for name in per_epoch:
        assert np.isfinite(fine[name]).all(), name
    assert (fine.train_loss.sel(epoch=2) < fine.train_loss.sel(epoch=0)).all()


@pytest.mark.slow
def test_values_are_train_network_with_the_cell_stream(reference):
    """One run recomputed in this process: ``train_network`` with the cell's arguments and stream
    ``SeedSequence(3).spawn(...)[p].spawn(...)[run_seed]``, p the position of the cell without its
    run_seed axis. Within float32 rounding (rtol 1e-5): XLA in this process may use more threads
    than the sweep's, which can reorder sums."""
    spec, _ = parse(TINY)
    cell = next(c for c in cells(spec, resolve(spec)) if c.lr == 0.01 and c.run_seed == 5)
    stream = np.random.SeedSequence(3).spawn(1)[cell.flat // 8].spawn(6)[5]
    data = load_dataset("digits", train_size=300, test_size=100)
    want = train_network(
        cell.activation, 1.0, 3, 16, data, epochs=2, lr=0.01, optimizer="sgd",
        batch_size=50, seed=stream, probe_size=64,
    )  # fmt: skip
    got = load_data(reference).isel(dict(zip(spec.cell_dims, cell.index, strict=True)))
    for name in RESULT_DIMS:
        np.testing.assert_allclose(got[name].values, want[name], rtol=1e-5, err_msg=name)


def test_training_stream_is_a_grandchild_of_the_root_seed():
    """Run seed r at position p of the grid without the run_seed axis: child r of child p."""
    spec, _ = parse([*TINY, "--run-seed", "0,2,7", "--lr", "0.1,0.2,0.3"])
    for cell in cells(spec, resolve(spec)):
        position = np.random.SeedSequence(3).spawn(3)[cell.flat // 3]
        want = position.spawn(cell.run_seed + 1)[cell.run_seed]
        np.testing.assert_array_equal(
            grid.cell_seed(spec, cell).generate_state(4), want.generate_state(4)
        )


@pytest.mark.slow
def test_a_run_depends_on_its_seed_not_on_the_other_seeds(reference, jax_cache, tmp_path):
    """``--run-seed 5`` alone reproduces the runs of seed 5 in the sweep of seeds 0 to 7, here on
    two threads of one process (the reference ran on one loky worker)."""
    out = tmp_path / "five.zarr"
    sweep(*TINY, "--run-seed", 5, "--backend", "threading", "--n-jobs", 2, "--out", out,
          cache=jax_cache)  # fmt: skip
    five, ref = load_data(out), load_data(reference)
    for name in schema.TRAIN_CELL_VARIABLES:
        np.testing.assert_array_equal(five[name].values, ref[name].sel(run_seed=[5]).values)


# --------------------------------------------------------------------------------------------------
# kill -9 and resume


def done_count(path: Path) -> int:
    try:
        return int(zarr.open_group(path, mode="r")["cell_done"][...].sum())
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError):
        return 0


@pytest.mark.slow
def test_kill_9_then_resume_on_two_workers_equals_uninterrupted(reference, jax_cache, tmp_path):
    """kill -9 after three runs, then the same command on two loky workers: the dataset of one
    uninterrupted run on one worker. At the kill, every run marked done has its final values."""
    out = tmp_path / "killed.zarr"
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulate.grid", *TINY, "--n-jobs", "1", "--max-batch", "1",
         "--out", str(out)],
        env=environment(jax_cache),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the signal reaches any workers too
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while done_count(out) < 3:
        assert proc.poll() is None, "the sweep ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    partial, ref = load_data(out), load_data(reference)
    done = partial.cell_done.values
    assert 3 <= done.sum() < done.size
    for name in schema.TRAIN_CELL_VARIABLES:
        np.testing.assert_array_equal(partial[name].values[done], ref[name].values[done])
    run = sweep(*TINY, "--n-jobs", 2, "--out", out, cache=jax_cache)
    assert f"{done.size - done.sum()} of {done.size} cells to run" in run.stderr
    assert "on 2 loky workers" in run.stderr
    xr.testing.assert_identical(load_data(out), ref)


@pytest.mark.slow
def test_a_damaged_run_is_recomputed(reference, jax_cache, tmp_path):
    """One byte of one run's chunk changed on disk: the checksum catches it, the same command
    retrains that run alone, and the store ends as the uninterrupted one."""
    out = tmp_path / "damaged.zarr"
    shutil.copytree(reference, out)
    chunk = store.chunk_file(out, "test_acc", (0, 0, 0, 0, 0, 0, 1, 4, 0))
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    run = sweep(*TINY, "--n-jobs", 1, "--out", out, cache=jax_cache)
    assert "1 damaged cells: repairing" in run.stderr and "1 of 16 cells to run" in run.stderr
    xr.testing.assert_identical(load_data(out), load_data(reference))


@pytest.mark.slow
def test_the_stored_spec_is_the_same_sweep(reference, jax_cache, tmp_path):
    """The store's TOML run again against it has nothing to do; a hand-written TOML with ranges
    describes the same sweep."""
    stored = tmp_path / "stored.toml"
    stored.write_text(xr.open_zarr(reference).attrs["spec"])
    run = sweep(stored, "--out", reference, cache=jax_cache)
    assert "nothing to do: all 16 cells" in run.stdout
    hand = tmp_path / "hand.toml"
    hand.write_text(
        'experiment = "train"\nfamily = "crelu"\nsparsity = 0.5\nclip = "inf"\nwidth = 16\n'
        'depth = [3]\nlr = [1e6, 0.01]\noptimizer = "sgd"\nepochs = 2\ntrain_size = 300\n'
        'test_size = 100\nbatch_size = 50\nprobe_size = 64\nrun_seed = "0:7:8"\nseed = 3\n'
    )
    assert parse([str(hand)])[0] == parse(TINY)[0]


# --------------------------------------------------------------------------------------------------
# Refusals: one line, exit status 2, nothing written

BASE = ["--experiment", "train", "--width", "4", "--depth", "1", "--epochs", "1",
        "--batch-size", "32", "--n-jobs", "1"]  # fmt: skip
"""A valid tiny training sweep that the bad values below modify."""

BAD = {
    "unknown dataset": (["--dataset", "mnist"], "dataset=mnist: must be one of digits, fashion-mnist"),
    "lr zero": (["--lr", "0"], "lr=0: must be finite and > 0"),
    "lr negative": (["--lr", "1e-3,-1e-3"], "lr=-0.001: must be finite and > 0"),
    "lr nan": (["--lr", "nan"], "lr=nan: must be finite and > 0"),
    "epochs zero": (["--epochs", "0"], "epochs=0: must be an integer >= 1"),
    "epochs fraction": (["--epochs", "1.5"], "epochs=1.5: must be an integer >= 1"),
    "optimizer": (["--optimizer", "rmsprop"], "optimizer=rmsprop: must be one of adam, sgd"),
    "schedule": (["--schedule", "step"], "schedule=step: must be one of constant, cosine"),
    "warmup": (["--warmup", "1"], "warmup=1: must be < epochs (1)"),
    "output gain": (["--output-gain", "1e300"], "output_gain=1e+300: must be in [0, 1e6]"),
    "run seed": (["--run-seed", "-1"], "run_seed=-1: must be an integer in [0, 2**63)"),
    "duplicate seed": (["--run-seed", "1,1"], "run_seed=1: listed twice"),
    "batch over subset": (["--train-size", "20"], "batch_size=32: must be <= train_size (20)"),
    "subset too large": (["--test-size", "500"],
                         "test_size=500: must be <= 360, the test images of digits"),
    "batch too large": (["--batch-size", "2000"],
                        "batch_size=2000: must be <= the number of training images (1437)"),
    "data for digits": (["--data", "/tmp"], "data=/tmp: only with dataset=fashion-mnist"),
    "Monte Carlo key": (["--nets", "4"], "nets=4: only with experiment=init (this sweep is "
                                         "experiment=train)"),
    "off the EoC": (["--sigma-w2", "2"], "sigma_w2=2: only with experiment=init"),
    "experiment": (["--experiment", "fit"], "experiment=fit: must be one of init, train"),
    "training key in a Monte Carlo sweep": (["--experiment", "init", "--lr", "0.1"],
                                            "lr=0.1: only with experiment=train"),
}  # fmt: skip


@pytest.mark.parametrize("argv, message", BAD.values(), ids=BAD.keys())
def test_each_bad_input_is_one_line_and_writes_nothing(argv, message, tmp_path, capsys):
    out = tmp_path / "x.zarr"
    assert grid.main([*BASE, *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("simulate.grid: "), err
    assert message in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_missing_fashion_mnist_names_the_apt_command(tmp_path, jax_cache):
    """As a user meets it: exit status 2, one line on stderr naming the apt command, no output,
    nothing written."""
    run = sweep(*BASE, "--dataset", "fashion-mnist", "--data", tmp_path / "nowhere",
                "--out", tmp_path / "x.zarr", cache=jax_cache, check=False, cwd=tmp_path)  # fmt: skip
    assert run.returncode == 2
    assert run.stdout == ""
    (line,) = run.stderr.splitlines()
    assert line.startswith("simulate.grid: data=") and FASHION_APT in line
    assert list(tmp_path.iterdir()) == []


def test_unreadable_fashion_mnist_files_are_one_line(tmp_path, capsys):
    data = tmp_path / "fashion"
    data.mkdir()
    for stem in FASHION_FILES.values():
        (data / stem).write_bytes(b"not an IDX file")
    out = tmp_path / "x.zarr"
    argv = [*BASE, "--dataset", "fashion-mnist", "--data", str(data), "--out", str(out)]
    assert grid.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and f"data={data}: " in err and "not an IDX file" in err
    assert not out.exists()


def test_missing_training_extra_is_a_clear_refusal(tmp_path, capsys, monkeypatch):
    """Without JAX and optax (the [train] extra), a training sweep is one line naming the extra."""
    import simulate.train

    monkeypatch.delattr(simulate.train, "model", raising=False)
    for name in ("simulate.train.model", "jax"):  # import fails as if not installed
        monkeypatch.setitem(sys.modules, name, None)
    assert grid.main([*BASE, "--out", str(tmp_path / "x.zarr")]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"simulate.grid: {TRAIN_EXTRA}"]
    assert list(tmp_path.iterdir()) == []


def test_other_sweeps_and_other_images_are_refused(reference, tmp_path, capsys):
    """Against the reference store: a different training spec, a Monte Carlo spec, and the same
    spec on other images (the stored checksum changed) are each refused; the store is untouched."""
    before = {p: p.stat().st_mtime_ns for p in reference.rglob("*")}
    for argv, message in (
        ([*TINY, "--epochs", "3"], "holds a different sweep (differs in epochs)"),
        (["--depth", "3"], "holds a different sweep (differs in experiment)"),
    ):
        assert grid.main([*argv, "--out", str(reference)]) == 2
        assert message in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in reference.rglob("*")} == before
    copy = tmp_path / "copy.zarr"
    shutil.copytree(reference, copy)
    group = zarr.open_group(copy, mode="r+")
    group.attrs["data_sha256"] = "0" * 64
    zarr.consolidate_metadata(copy)
    assert grid.main([*TINY, "--out", str(copy)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "other images than the store was trained on" in err


# --------------------------------------------------------------------------------------------------
# The spec


def test_default_training_sweep():
    spec, run = parse(["--experiment", "train"])
    assert isinstance(spec, TrainSpec) and run.out == Path("results/train.zarr")
    assert (spec.family, spec.sparsity, spec.clip) == (("crelu", "cst"), (0.5, 0.85), (1.0, np.inf))
    assert (spec.q_star, spec.width, spec.depth, spec.lr) == ((1.0,), (100,), (20,), (1e-3,))
    assert (spec.run_seed, spec.dataset, spec.optimizer) == ((0, 1), "digits", "adam")
    assert (spec.epochs, spec.batch_size) == (10, 32)
    assert spec.cell_shape == (2, 2, 2, 1, 1, 1, 1, 2)
    assert parse([str(REPO / "specs" / "train_default.toml")])[0] == spec


def test_training_spec_round_trips_through_toml():
    by_tau = [*TINY[:4], "--tau", "0,0.5", *TINY[6:], "--schedule", "cosine", "--warmup", "0.5"]
    for argv in (TINY, ["--experiment", "train"], by_tau):
        spec, _ = parse(argv)
        assert Spec.from_toml(spec.to_toml()) == spec


def test_optimizer_and_schedule_names_are_the_engines():
    """The spec accepts every name of simulate.train.options (the names the engine builds:
    test_train_model)."""
    for name in OPTIMIZERS:
        assert parse([*TINY, "--optimizer", name])[0].optimizer == name
    for name in SCHEDULES:
        assert parse([*TINY, "--schedule", name])[0].schedule == name
