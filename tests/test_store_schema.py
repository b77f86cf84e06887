"""simulate.schema: the synthetic store is the written store, and the stored activation description
rebuilds each cell's activation.

Sweeps run in-process (``grid.main``, one worker), the code the command line runs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr

from simulate import grid, schema
from simulate.activations import Activation

TINY = {
    "family": ["crelu", "cst"],
    "sparsity": [0.6, 0.8],
    "clip": [1.0, math.inf],
    "q_star": [1.0, 3.0],
    "width": [8, 16],
    "depth": 6,
    "nets": 3,
    "seed": 11,
}

PROVENANCE = ("wall_time_s", "created", "git_commit", "package_version", "numpy_version",
              "numba_version", "xarray_version")  # fmt: skip


def argv(values: dict) -> list[str]:
    out = []
    for key, value in values.items():
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        out += ["--" + key.replace("_", "-"), text]
    return out


def written(tmp_path, values: dict) -> xr.Dataset:
    out = tmp_path / "s.zarr"
    assert grid.main([*argv(values), "--n-jobs", "1", "--out", str(out)]) == 0
    ds = xr.open_zarr(out).load()
    for key in PROVENANCE:
        ds.attrs.pop(key)
    return ds


@pytest.mark.slow
def test_synthetic_store_with_the_engine_is_the_written_store(tmp_path):
    """Same spec, cells filled by the sweep's own cell function: identical datasets (values, dims,
    dtypes, attributes, encodings aside), on and off the Edge of Chaos."""
    off = {"family": ["cst"], "tau": [0.0, 0.5], "clip": [2.0], "sigma_w2": [1.5, 2.5],
           "sigma_b2": [0.1], "q0": 0.7, "width": [8], "depth": 4, "nets": 2}  # fmt: skip
    for values in (TINY, off):
        synthetic = schema.synthetic_store(grid.simulate_cell, **values)
        xr.testing.assert_identical(synthetic, written(tmp_path / str(len(values)), values))


SMALL = {"family": ["crelu"], "sparsity": [0.85], "clip": [1.0, math.inf], "width": [8],
         "depth": 9, "nets": 2}  # fmt: skip


@pytest.mark.parametrize(
    "extra",
    [{"record_every": 4}, {"record": "summary"}, {"inputs": 3, "input_corr": [0.1, 0.2, 0.3]}],
    ids=["thinned", "summary", "three inputs"],
)
def test_synthetic_thinned_summary_and_many_input_stores_are_the_written_store(tmp_path, extra):
    """The same for a thinned store (layers 0, 4, 8, 9), a summary store (no layer dimension) and
    three inputs with pair correlations (pair dimension of 3)."""
    values = SMALL | extra
    synthetic = schema.synthetic_store(grid.simulate_cell, **values)
    xr.testing.assert_identical(synthetic, written(tmp_path, values))


def test_synthetic_store_fill_values_and_done_mask():
    """Without a fill: NaN trajectories, escape_layer -2 (not computed), the given done mask."""
    mask = np.zeros((1, 1, 2, 1, 1), bool)
    mask[0, 0, 1] = True
    ds = schema.synthetic_store(done=mask)
    assert ds.q.isnull().all() and ds.log_gain.isnull().all()
    assert (ds.escape_layer == -2).all()
    np.testing.assert_array_equal(ds.cell_done.values, mask)
    assert ds.cell_done.dims == ("family", "sparsity", "clip", "q_star", "width")


TRAIN_PROVENANCE = ("n_train", "n_test", "data_sha256", "jax_version", "jaxlib_version",
                    "optax_version", "scikit_learn_version")  # fmt: skip


@pytest.mark.slow
def test_synthetic_training_store_is_the_written_store(tmp_path):
    """A training sweep over two depths, and the synthetic store filled by the sweep's own cell
    function: identical (attributes from the dataset aside). The layer axis runs to the deeper
    network; the shallower one's second layer is NaN, its first as measured."""
    values = {"experiment": "train", "family": ["crelu"], "sparsity": [0.5], "clip": [math.inf],
              "width": [4], "depth": [1, 2], "lr": [0.01], "run_seed": [0], "epochs": 1,
              "train_size": 64, "test_size": 32, "batch_size": 32, "seed": 2}  # fmt: skip
    ds = written(tmp_path, values)
    for key in TRAIN_PROVENANCE:
        ds.attrs.pop(key)
    xr.testing.assert_identical(schema.synthetic_store(grid.train_cell, **values), ds)
    for name in ("q", "act_sparsity"):
        assert ds[name].sel(depth=1, layer=2).isnull().all(), name
        assert ds[name].sel(depth=1, layer=1).notnull().all(), name
        assert ds[name].sel(depth=2).notnull().all(), name


def test_synthetic_training_store_without_runs():
    """Without a fill: NaN curves, diverged False, diverged_epoch -2 (not run), cells not done."""
    ds = schema.synthetic_store(done=False, experiment="train", run_seed=[0, 1], depth=[2, 3])
    assert ds.test_acc.isnull().all() and ds.q.isnull().all()
    assert not ds.diverged.any() and (ds.diverged_epoch == -2).all() and not ds.cell_done.any()
    assert ds.cell_done.dims == (
        "family", "sparsity", "clip", "q_star", "width", "depth", "lr", "run_seed"
    )  # fmt: skip
    assert ds.sizes["layer"] == 3 and ds.sizes["epoch"] == 3 and "q_gp" not in ds


def test_synthetic_store_refuses_a_bad_spec():
    with pytest.raises(ValueError, match="clip=-1: must be > 0"):
        schema.synthetic_store(clip=[-1])


def grid_points(act: Activation) -> np.ndarray:
    """x on [-6, 6] with every knot and its neighbours (where a wrong piece would show)."""
    knots = act.knots
    near = np.concatenate([knots, np.nextafter(knots, -np.inf), np.nextafter(knots, np.inf)])
    return np.sort(np.concatenate([np.linspace(-6, 6, 2001), near]))


def test_activation_at_rebuilds_each_cell():
    """phi and phi' of the rebuilt activation equal the family's at every parameter cell, for
    clipped and unclipped CReLU and CST, tau = 0 (ReLU, hard-tanh, the identity) included, and the
    three ways of naming a cell agree."""
    ds = schema.synthetic_store(
        family=["crelu", "cst"], tau=[0.0, 0.7], clip=[0.5, math.inf], q_star=[1.0]
    )
    for index in np.ndindex(ds.act_left_slope.shape):
        point = ds.isel(dict(zip(schema.param_dims(ds), index, strict=True)))
        family, tau, m = str(point.family.values), float(point.tau), float(point["clip"])
        want = Activation(family, tau, m)
        by_position = schema.activation_at(ds, index)
        by_label = schema.activation_at(
            ds, {"family": family, "tau": tau, "clip": m, "q_star": 1.0}
        )
        assert by_position == by_label == schema.activation_at(point)
        assert by_position.name == family
        x = grid_points(want)
        np.testing.assert_allclose(by_position(x), want(x), rtol=1e-15, atol=1e-15)
        np.testing.assert_array_equal(by_position.derivative(x), want.derivative(x))


def test_activation_at_a_user_shape():
    shape = {
        "name": "leaky",
        "knots": ["-tau", "tau", "tau + m"],
        "values": [0, 0, "m"],
        "left_slope": 0.1,
    }
    ds = schema.synthetic_store(family=["leaky"], tau=[0.5], clip=[2.0], shape=shape)
    act = schema.activation_at(ds, (0, 0, 0, 0))
    want = Activation.piecewise_linear([-0.5, 0.5, 2.5], [0.0, 0.0, 2.0], 0.1, 0.0)
    assert act == want and act.name == "leaky"


def test_activation_at_needs_one_cell():
    ds = schema.synthetic_store()
    with pytest.raises(ValueError, match="must select one parameter cell"):
        schema.activation_at(ds, {"family": "crelu"})
