"""Many inputs per network (``--inputs B`` with ``--input-corr``), end to end through the command line.

Each form of the initial correlations (one value for all pairs, a list of the B(B-1)/2 pairs, the
first B test images of a dataset) is checked on the store it writes: the ``pair`` dimension, and
layer 0's conditional correlation, which is the correlation of the initial Gram matrix K0 exactly
(computed here from the given values or images). Sweeps run in-process (``grid.main``, the code the
command line runs). The refusals of bad inputs (one line, exit
status 2, nothing written) are with the others in tests/test_grid.py.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from simulate import grid
from simulate.train.data import FASHION_DIR

TINY = ["--family", "crelu", "--sparsity", "0.85", "--clip", "1,inf", "--width", "32",
        "--depth", "4", "--nets", "64", "--n-jobs", "1"]  # fmt: skip


def written(tmp_path: Path, *argv: str) -> xr.Dataset:
    out = tmp_path / "s.zarr"
    assert grid.main([*TINY, *argv, "--out", str(out)]) == 0
    return xr.open_zarr(out).load()


def pairs(b: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(b) for j in range(i + 1, b)]


def test_eight_equicorrelated_inputs(tmp_path, capsys):
    """Issue 11's sweep (--inputs 8 --input-corr 0.5, width 100, depth 50, 16 nets): corr and v_corr over the 28 pairs (input_a < input_b, row-major); auto
    runs gram (the sparse engine serves B <= 2), so the empirical corr is there too. Layer 0:
    v_corr = 0.5 exactly; the mean empirical correlation of each pair within 5 standard errors +
    1/N of 0.5 (E corr = c + O(1/N)); v = q* = 1 for every input."""
    out = tmp_path / "i8.zarr"
    argv = ["--inputs", "8", "--input-corr", "0.5", "--width", "100", "--depth", "50", "--nets",
            "16", "--sparsity", "0.85", "--clip", "1,inf", "--out", str(out)]  # fmt: skip
    assert grid.main(argv) == 0
    err = capsys.readouterr().err
    assert "8 inputs" in err and "gram 4 cells" in err
    ds = xr.open_zarr(out).load()
    assert ds.sizes["pair"] == 28 and ds.sizes["input"] == 8
    assert list(zip(ds.input_a.values, ds.input_b.values, strict=True)) == pairs(8)
    assert ds.corr.dims[-1] == "pair" and ds.v_corr.dims[-1] == "pair" and ds.q.dims[-1] == "input"
    first = ds.isel(layer=0)
    np.testing.assert_allclose(first.v_corr, 0.5, rtol=1e-6)
    np.testing.assert_allclose(first.v, 1.0, rtol=1e-6)
    corr = first.corr.values.reshape(-1, 16, 28)  # (cell, net, pair)
    se = corr.std(axis=1, ddof=1) / 4.0
    assert np.all(np.abs(corr.mean(axis=1) - 0.5) < 5 * se + 1 / 100)
    assert ds.attrs["inputs"] == 8 and ds.attrs["c0"] == 0.5


def test_a_list_of_pair_correlations(tmp_path):
    """Three inputs with correlations (0.1, 0.2, -0.3) for the pairs (0,1), (0,2), (1,2): layer 0's
    conditional correlations are those values, in that order, in every network."""
    ds = written(tmp_path, "--inputs", "3", "--input-corr", "0.1,0.2,-0.3")
    assert ds.sizes["pair"] == 3
    v_corr = ds.v_corr.isel(layer=0).values.reshape(-1, 3)
    np.testing.assert_allclose(v_corr, np.broadcast_to([0.1, 0.2, -0.3], v_corr.shape), rtol=1e-6)
    assert ds.attrs["input_corr"] == [0.1, 0.2, -0.3] and "c0" not in ds.attrs


def test_the_former_name_c0_is_input_corr(tmp_path):
    """``--c0`` and a file's ``c0`` key still set the initial correlation (stores written before
    input_corr read back); a file with both names is refused."""
    from simulate.spec import SpecError, parse

    spec = parse(["--c0", "0.3"])[0]
    assert spec.input_corr == 0.3 and spec == parse(["--input-corr", "0.3"])[0]
    path = tmp_path / "old.toml"
    path.write_text("c0 = 0.3\n")
    assert parse([str(path)])[0] == spec
    path.write_text("c0 = 0.3\ninput_corr = 0.3\n")
    with pytest.raises(SpecError, match=re.escape("c0=0.3: the former name of input_corr")):
        parse([str(path)])


def image_kernel(images: np.ndarray, sigma_w2: float, sigma_b2: float) -> np.ndarray:
    """K0 = (sigma_w^2 / d) X X^T + sigma_b^2 of raw inputs X (B x d)."""
    x = images.astype(float)
    return sigma_w2 / x.shape[1] * x @ x.T + sigma_b2


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["digits", "fashion-mnist"])
def test_images_as_inputs(dataset, tmp_path):
    """The first B = 4 test images, normalised as load_dataset does: layer 0's conditional variances
    and correlations are those of K0 = (sigma_w^2 / d) X X^T + sigma_b^2 at each cell's variances;
    the store records the images' checksum."""
    if dataset == "fashion-mnist" and not FASHION_DIR.is_dir():
        pytest.skip(f"no Fashion-MNIST files in {FASHION_DIR}")
    ds = written(tmp_path, "--inputs", "4", "--input-corr", f"images:{dataset}", "--depth", "2")
    x = grid._dataset(dataset, None, None, None).x_test[:4]  # load_dataset, as the sweep loaded it
    for clip in ds["clip"].values:
        cell = ds.sel(clip=clip).squeeze()
        k0 = image_kernel(x, float(cell.sigma_w2), float(cell.sigma_b2))
        a, b = ds.input_a.values, ds.input_b.values
        np.testing.assert_allclose(cell.v.isel(layer=0), np.broadcast_to(np.diag(k0), (64, 4)),
                                   rtol=1e-5)  # fmt: skip
        want = k0[a, b] / np.sqrt(k0[a, a] * k0[b, b])
        np.testing.assert_allclose(cell.v_corr.isel(layer=0), np.broadcast_to(want, (64, 6)),
                                   rtol=1e-5, atol=1e-6)  # fmt: skip
    assert len(ds.attrs["data_sha256"]) == 64 and ds.attrs["input_corr"] == f"images:{dataset}"


def test_one_input_has_no_pairs(tmp_path):
    """B = 1: an empty pair dimension, a sweep that resumes as finished (no chunk is missing)."""
    ds = written(tmp_path, "--inputs", "1")
    assert ds.sizes["pair"] == 0 and ds.sizes["input"] == 1 and ds.cell_done.all()
    assert np.all(np.isfinite(ds.v.isel(layer=0))) and math.isfinite(float(ds.final_v.max()))
    assert grid.main([*TINY, "--inputs", "1", "--out", str(tmp_path / "s.zarr")]) == 0
