"""A resume never mixes versions of the numerics unawares (issue 21, item 3): every cell records
the engine and source hash that computed it (``cell_version``); a store whose cells were
computed by other numerics is refused in one line naming both versions and the choices, or
finished with ``--allow-mixed-versions``, which records the mix; a store written before the
record resumes as before, its cells "unknown"; the report names the versions it read.

Another version of the code is simulated by rewriting the record of a cell (or the version of a
training sweep's checkpoints). Sweeps run in-process (``grid.main``), the code the command line
runs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from stores import load_data

from analysis._store import open_results
from analysis.report import _numerics
from simulate import grid, schema

GRID = ["--family", "crelu", "--sparsity", "0.8", "--clip", "1,inf", "--width", "8,16",
        "--depth", "6", "--nets", "3", "--seed", "2", "--n-jobs", "1"]  # fmt: skip
"""4 cells, all run by the gram engine."""

OLD = "gram 000000000000"
"""The record of a cell computed by another version of the kernels."""


def unmark(path: Path, index: tuple[int, ...]) -> None:
    """Make a cell not done, as a sweep killed before it finished it leaves it."""
    zarr.open_array(path / "cell_done", mode="r+")[index] = False


def record(path: Path, index: tuple[int, ...], version: str) -> None:
    zarr.open_array(path / "cell_version", mode="r+")[index] = version


def forget_versions(path: Path) -> None:
    """Turn the store into one written before cells recorded their numerics: no cell_version."""
    shutil.rmtree(path / "cell_version")
    root = json.loads((path / "zarr.json").read_text())
    del root["consolidated_metadata"]["metadata"]["cell_version"]
    root["attributes"]["coordinates"] = "input_a input_b"
    (path / "zarr.json").write_text(json.dumps(root))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "s.zarr"
    assert grid.main([*GRID, "--out", str(out)]) == 0
    return out


@pytest.fixture
def copy(reference, tmp_path) -> Path:
    out = tmp_path / "s.zarr"
    shutil.copytree(reference, out)
    return out


FIRST, SECOND, LAST = (0, 0, 0, 0, 0), (0, 0, 0, 0, 1), (0, 0, 1, 0, 1)


def test_every_cell_records_its_engine_and_kernel_hash(reference):
    ours = schema.numerics_version("gram")
    assert ours.startswith("gram ") and len(ours) == len(OLD)
    assert (load_data(reference).cell_version == ours).all()
    assert _numerics(open_results(reference)) == f"numerics {ours} (4 cells)"


def test_a_resume_across_versions_is_refused_naming_both(copy, capsys):
    """A store half-written by other numerics (and a cell not recorded): one line naming the
    store's version, this code's, and the two ways on; nothing is written."""
    unmark(copy, LAST)
    record(copy, FIRST, OLD)
    record(copy, SECOND, "")
    before = {p: p.stat().st_mtime_ns for p in copy.rglob("*")}
    assert grid.main([*GRID, "--out", str(copy)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert f"1 done cells by {OLD}" in line and schema.numerics_version("gram") in line
    assert "--overwrite" in line and "--allow-mixed-versions" in line
    assert {p: p.stat().st_mtime_ns for p in copy.rglob("*")} == before
    assert sorted(p.name for p in copy.parent.iterdir()) == ["s.zarr"]


def test_allowing_the_mix_finishes_and_records_it(reference, copy, capsys):
    """With --allow-mixed-versions the missing cell is computed by this code and recorded so; the
    other cells keep their records; the store says the mix was allowed, and the report names
    both versions with their cells."""
    unmark(copy, LAST)
    record(copy, FIRST, OLD)
    assert grid.main([*GRID, "--allow-mixed-versions", "--out", str(copy)]) == 0
    assert "mixing numerics" in capsys.readouterr().err
    ds, ref = load_data(copy), load_data(reference)
    versions = ref.cell_version.values.copy()
    versions[FIRST] = OLD
    np.testing.assert_array_equal(ds.cell_version.values, versions)
    (mix,) = ds.attrs.pop("mixed_versions")
    assert OLD in mix and schema.numerics_version("gram") in mix
    xr.testing.assert_identical(ds.drop_vars("cell_version"), ref.drop_vars("cell_version"))
    line = _numerics(open_results(copy))
    assert f"{OLD} (1 cells)" in line and f"{schema.numerics_version('gram')} (3 cells)" in line
    assert "mixed" in line


def test_a_store_without_records_resumes_with_its_cells_unknown(reference, copy, capsys):
    """A store written before cells recorded their numerics resumes (no refusal): it says its
    done cells are unknown, gets the record, and the cell it computes is recorded. The data is
    the uninterrupted run's; the report says which cells are not recorded."""
    forget_versions(copy)
    assert "not recorded (a store written before" in _numerics(open_results(copy))
    unmark(copy, LAST)
    assert grid.main([*GRID, "--out", str(copy)]) == 0
    assert "3 of its done cells have no version record" in capsys.readouterr().err
    ds, ref = load_data(copy), load_data(reference)
    versions = np.full(ref.cell_version.shape, "", dtype=object)
    versions[LAST] = schema.numerics_version("gram")
    np.testing.assert_array_equal(ds.cell_version.values, versions)
    xr.testing.assert_identical(ds.drop_vars("cell_version"), ref.drop_vars("cell_version"))
    line = _numerics(open_results(copy))
    assert "not recorded (3 cells)" in line and "(1 cells)" in line
    assert grid.main([*GRID, "--out", str(copy)]) == 0  # and again: nothing to do, no refusal
    assert "nothing to do" in capsys.readouterr().out


TRAIN = ["--experiment", "train", "--family", "crelu", "--sparsity", "0.5", "--clip", "inf",
         "--width", "4", "--depth", "1", "--epochs", "1", "--train-size", "64",
         "--test-size", "32", "--batch-size", "32", "--probe-size", "16", "--optimizer", "sgd",
         "--run-seed", "0,1", "--n-jobs", "1"]  # fmt: skip
"""Two tiny training runs."""


@pytest.mark.slow
def test_checkpoints_of_other_numerics_are_refused_or_dropped(tmp_path, capsys):
    """A training run in flight whose checkpoint was written by other numerics: refused, naming
    it; allowed, the checkpoint is dropped and the run trained again from the start by this code
    (a cell of one version), ending as the uninterrupted sweep."""
    reference = tmp_path / "ref.zarr"
    assert grid.main([*TRAIN, "--out", str(reference)]) == 0
    out = tmp_path / "s.zarr"
    shutil.copytree(reference, out)
    last = (0, 0, 0, 0, 0, 0, 0, 1)
    unmark(out, last)
    folder = grid.checkpoint_folder(out)
    folder.mkdir()
    (folder / grid.CHECKPOINTS_VERSION).write_text("train 000000000000")
    grid.checkpoint_file(folder, 1).write_bytes(b"the state of another version")
    capsys.readouterr()
    assert grid.main([*TRAIN, "--out", str(out)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "1 checkpoints of runs in flight by train 000000000000" in line
    assert schema.numerics_version("train") in line
    assert grid.main([*TRAIN, "--allow-mixed-versions", "--out", str(out)]) == 0
    assert not folder.exists()
    ds = load_data(out)
    assert ds.attrs.pop("mixed_versions")
    xr.testing.assert_identical(ds, load_data(reference))
