"""One training run: it learns, it is a deterministic function of its seed, a divergence is recorded
(not raised), bad arguments are one-line errors, and the CLI runs end to end."""

import subprocess
import sys

import numpy as np
import pytest

from simulate.activations import Activation
from simulate.train.data import FASHION_APT, load_dataset
from simulate.train.run import RESULT_DIMS, train_network

DIGITS = load_dataset("digits")
RELU = Activation.relu()
CRELU = Activation.from_sparsity("crelu", 0.7, 1.0, m=1.0)


def run(act=RELU, **kwargs):
    args = dict(depth=3, width=32, epochs=4, lr=3e-3, batch_size=64, seed=0) | kwargs
    depth, width = args.pop("depth"), args.pop("width")
    return train_network(act, 1.0, depth, width, DIGITS, **args)


@pytest.mark.slow
def test_shapes_and_learning():
    """A shallow net learns digits far above chance (10%), and the per-layer statistics at
    initialisation sit near the GP values (q ~ q* = 1, zero fraction ~ 0.7 for CReLU at s = 0.7)."""
    res = run(CRELU, epochs=6)
    assert set(res) == set(RESULT_DIMS)
    for key, dims in RESULT_DIMS.items():
        assert res[key].ndim == len(dims), key
    assert res["q"].shape == (7, 2, 3) and res["train_loss"].shape == (7,)
    assert not res["diverged"] and res["diverged_epoch"] == -1
    assert res["test_acc"][-1] > 0.7 and res["train_loss"][-1] < res["train_loss"][0]
    assert np.all(np.abs(res["act_sparsity"][0, 0] - 0.7) < 0.15)
    assert np.all(np.abs(res["q"][0, 0] - 1.0) < 0.5)


@pytest.mark.slow
def test_deterministic_for_a_seed():
    a, b, c = run(seed=3), run(seed=3), run(seed=4)
    for key in RESULT_DIMS:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["train_loss"], c["train_loss"])


def test_divergence_is_recorded_not_raised():
    """SGD at lr 1e6 blows up in the first epoch: the run stops there, keeps epoch 0, and the
    epochs after the divergence are NaN."""
    res = run(optimizer="sgd", lr=1e6, epochs=3)
    assert res["diverged"] and res["diverged_epoch"] == 1
    assert np.all(np.isfinite(res["train_loss"][:1])) and np.all(np.isfinite(res["q"][0]))
    assert not np.isfinite(res["train_loss"][1])
    assert np.all(np.isnan(res["train_loss"][2:])) and np.all(np.isnan(res["q"][2:]))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"lr": 0.0}, "lr"),
        ({"lr": -1e-3}, "lr"),
        ({"epochs": 0}, "epochs"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"schedule": "step"}, "schedule"),
        ({"batch_size": 5000}, "batch_size"),
        ({"depth": 0}, "depth"),
        ({"warmup": -1.0}, "warmup"),
    ],
)
def test_bad_arguments_are_one_line_errors(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}=") as err:
        run(**kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_q_star_beyond_the_probes_float32_sum_is_refused():
    """At q* = 1e34 (inside the initialiser's bound) a probe of 256 images x 300 units sums to
    ~8e38 > float32 max: refused in one line; with a probe of one image (sum ~3e36) the same
    network runs and its per-layer q at initialisation is finite."""
    with pytest.raises(ValueError, match=r"^q_star=") as err:
        train_network(RELU, 1e34, 2, 300, DIGITS, epochs=1, lr=1e-3)
    assert "\n" not in str(err.value) and "float32" in str(err.value)
    res = train_network(RELU, 1e34, 2, 300, DIGITS, epochs=1, lr=1e-3, probe_size=1)
    assert np.all(np.isfinite(res["q"][0])) and np.all(res["q"][0] > 1e33)


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "simulate.train.run", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_cli_end_to_end():
    out = cli("--depth", "2", "--width", "16", "--epochs", "2", "--sparsity", "0.8", "--clip", "1")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("CReLU(tau=0.842, m=1)")
    assert [line.split()[1] for line in lines[1:4]] == ["0", "1", "2"]
    assert lines[-1].startswith("summary: final test acc")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--lr", "0"], "lr=0.0: must be finite and > 0"),
        (["--dataset", "fashion-mnist", "--data", "/nonexistent"], FASHION_APT),
        (["--epochs", "x"], "--epochs: invalid int value"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(args, needle):
    out = cli("--depth", "2", "--width", "8", *args)
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1 and needle in out.stderr
