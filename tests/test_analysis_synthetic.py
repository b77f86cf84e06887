"""The synthetic store builder (tests/synthetic.py) checked against itself on disk."""

from __future__ import annotations

import math

import numpy as np
from synthetic import PARAM_DIMS, make_store, plant_escapes


def test_synthetic_store_round_trips_through_zarr_and_netcdf(tmp_path):
    """The synthetic store is a valid results store on disk in both formats, with the same data."""
    from analysis._store import open_results

    ds = make_store(depth=10, nets=8, widths=(50,))
    ds.to_zarr(tmp_path / "s.zarr")
    ds.to_netcdf(tmp_path / "s.nc")
    for name in ("s.zarr", "s.nc"):
        results = open_results(tmp_path / name)
        assert results.eoc and results.depth == 10
        assert results.param_dims == PARAM_DIMS
        assert len(list(results.cells())) == 2
        np.testing.assert_array_equal(results.ds["q"].values, ds["q"].values)


def test_planted_escapes_leave_nan_after_the_escape_layer():
    ds = make_store(
        depth=20, nets=8, widths=(50,), perturb=plant_escapes(lambda c, r: np.full(8, 5))
    )
    unclipped = ds.sel(clip=math.inf).squeeze()
    assert (unclipped["escape_layer"].values == 5).all()
    assert np.isnan(unclipped["q"].isel(layer=slice(6, None)).values).all()
    assert np.isfinite(unclipped["q"].isel(layer=slice(0, 6)).values).all()
    assert (ds.sel(clip=1.0)["escape_layer"].values == -1).all()
