"""Damaged stores: a changed chunk is detected on read (CRC-32C), and running the sweep again
recomputes what is damaged, ending with the data of an undamaged run.

Sweeps run in-process (``grid.main``, one worker), the code the command line runs.
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

from analysis._store import StoreError, open_results
from simulate import grid, store

GRID = [
    "--family", "crelu,cst", "--sparsity", "0.7", "--clip", "1,inf", "--q-star", "1",
    "--width", "8,16", "--depth", "6", "--nets", "3", "--seed", "5", "--n-jobs", "1",
]  # fmt: skip
"""8 cells."""


@pytest.fixture(scope="module")
def untouched(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("untouched") / "s.zarr"
    assert grid.main([*GRID, "--out", str(out)]) == 0
    return out


@pytest.fixture
def copy(untouched, tmp_path) -> Path:
    out = tmp_path / "s.zarr"
    shutil.copytree(untouched, out)
    return out


def flip_byte(path: Path) -> None:
    """Change one byte in the middle of a file (the compressed payload of a chunk)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def chunk(out: Path, name: str, index: tuple[int, ...]) -> Path:
    return store.chunk_file(out, name, index)


def nest_chunk_keys(out: Path) -> None:
    """Turn the store into the layout written before ``store.CHUNK_SEPARATOR``: chunk ``c.i.j`` of
    every array moved to ``c/i/j``, and the arrays' metadata (their own and the consolidated copy)
    saying separator "/"."""
    root = json.loads((out / "zarr.json").read_text())
    for name, meta in root["consolidated_metadata"]["metadata"].items():
        meta["chunk_key_encoding"]["configuration"]["separator"] = "/"
        (out / name / "zarr.json").write_text(json.dumps(meta))
        for flat in (out / name).glob("c.*"):
            nested = out / name / Path(*flat.name.split("."))
            nested.parent.mkdir(parents=True, exist_ok=True)
            flat.rename(nested)
    (out / "zarr.json").write_text(json.dumps(root))


def rerun(out: Path, capsys, *extra: str) -> str:
    assert grid.main([*GRID, *extra, "--out", str(out)]) == 0
    return capsys.readouterr().err


def test_a_changed_chunk_fails_to_read(copy):
    """One flipped byte of a q chunk: reading that cell raises (the checksum), the others read."""
    flip_byte(chunk(copy, "q", (0, 0, 1, 0, 1, 0, 0, 0)))
    q = zarr.open_array(copy / "q", mode="r")
    with pytest.raises(Exception, match=r"(?i)checksum|crc"):
        q[0, 0, 1, 0, 1]
    assert np.isfinite(q[0, 0, 1, 0, 0][:, 0]).all()


def test_the_analysis_finds_a_changed_chunk_by_its_checksum(untouched, copy):
    """The checksum scan (no decoding) finds exactly the flipped chunk that zarr fails to decode,
    in the flat and in the nested chunk layout, and the analysis refuses the store in one line."""
    assert all(store.damaged_chunk(untouched, name) is None for name in ("v", "escape_layer"))
    flipped = chunk(copy, "v", (1, 0, 1, 0, 1, 0, 0, 0))
    flip_byte(flipped)
    with pytest.raises(Exception, match=r"(?i)checksum|crc"):
        zarr.open_array(copy / "v", mode="r")[1, 0, 1, 0, 1]
    assert store.damaged_chunk(copy, "v") == flipped
    with pytest.raises(StoreError, match=r"variable v is damaged.*fails its CRC-32C") as err:
        open_results(copy)
    assert "\n" not in str(err.value)
    nest_chunk_keys(copy)
    assert store.damaged_chunk(copy, "v") == chunk(copy, "v", (1, 0, 1, 0, 1, 0, 0, 0))


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage, cells",
    [
        ("flip q", 1),
        ("delete escape_layer", 1),
        ("flip cell_done", 8),  # one flag chunk holds every flag of this sweep
        ("flip q_gp", 0),
        ("flip family", 0),
    ],
)
def test_run_again_repairs_to_the_untouched_data(untouched, copy, capsys, damage, cells):
    action, name = damage.split()
    if name in ("q", "escape_layer"):
        path = chunk(copy, name, (1, 0, 0, 0, 1) + (0,) * (3 if name == "q" else 1))
    else:
        path = next((copy / name).glob("c.*"))
    if action == "flip":
        flip_byte(path)
    else:
        path.unlink()
    err = rerun(copy, capsys)
    assert "repairing" in err
    if cells:
        assert f"{cells} damaged cells" in err and f"{cells} of 8 cells to run" in err
    else:
        assert f"unreadable {name}" in err
    xr.testing.assert_identical(load_data(copy), load_data(untouched))
    assert grid.main([*GRID, "--out", str(copy)]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_a_store_without_activation_descriptions_gets_them(untouched, copy, capsys):
    """A store written before the schema had the activation description (as on main before it):
    running the sweep again adds it, and only it."""
    group = zarr.open_group(copy, mode="r+")
    for name in ("act_knots", "act_values", "act_left_slope", "act_right_slope", "knot"):
        del group[name]
    zarr.consolidate_metadata(copy)
    assert "act_knots" not in xr.open_zarr(copy)
    err = rerun(copy, capsys)
    assert "missing or unreadable act_knots" in err and "0 of 8 cells to run" in err
    xr.testing.assert_identical(load_data(copy), load_data(untouched))


def test_a_finished_undamaged_store_is_left_alone(untouched, copy, capsys):
    before = {p: p.stat().st_mtime_ns for p in copy.rglob("*")}
    assert grid.main([*GRID, "--out", str(copy)]) == 0
    assert "nothing to do: all 8 cells" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in copy.rglob("*")} == before


def test_unreadable_root_metadata_needs_repair(untouched, copy, capsys):
    """The root zarr.json (the spec, the consolidated metadata) garbled: refused in one line
    without --repair; with it, rebuilt from the spec, keeping the cells, equal to the untouched."""
    (copy / "zarr.json").write_text("{ not json")
    assert grid.main([*GRID, "--out", str(copy)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "a damaged sweep store" in err[0] and "--repair" in err[0]
    rerun(copy, capsys, "--repair")
    xr.testing.assert_identical(load_data(copy), load_data(untouched))
    assert [p.name for p in copy.parent.iterdir()] == ["s.zarr"]


def test_a_store_missing_an_array_is_replaced_with_overwrite(untouched, copy, capsys):
    """A store of an older layout (here: an array gone) is refused as damaged, in one line that
    offers --repair and --overwrite; --overwrite starts again and ends equal to the untouched."""
    shutil.rmtree(copy / "final_v")
    root = json.loads((copy / "zarr.json").read_text())
    del root["consolidated_metadata"]["metadata"]["final_v"]
    (copy / "zarr.json").write_text(json.dumps(root))
    assert grid.main([*GRID, "--out", str(copy)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "a damaged sweep store" in err[0] and "--overwrite" in err[0]
    rerun(copy, capsys, "--overwrite")
    xr.testing.assert_identical(load_data(copy), load_data(untouched))


def test_chunks_are_files_beside_their_metadata(untouched):
    """No directory below an array's (zarr's default nests one per index level, which at one
    chunk per cell took more space on disk than the data)."""
    arrays = [p for p in untouched.iterdir() if p.is_dir()]
    assert len(arrays) > 20
    assert not [p for array in arrays for p in array.iterdir() if p.is_dir()]


@pytest.mark.slow
def test_a_store_with_nested_chunk_keys_is_repaired_and_rebuilt(untouched, copy, capsys):
    """A store written with directory chunk keys: a damaged cell is found and recomputed, and a
    garbled root is rebuilt keeping its chunks (still nested), both ending as the untouched."""
    nest_chunk_keys(copy)
    xr.testing.assert_identical(load_data(copy), load_data(untouched))
    flip_byte(chunk(copy, "q", (1, 0, 0, 0, 1, 0, 0, 0)))
    assert "1 damaged cells" in rerun(copy, capsys)
    xr.testing.assert_identical(load_data(copy), load_data(untouched))
    (copy / "zarr.json").write_text("{ not json")
    rerun(copy, capsys, "--repair")
    assert (copy / "q" / "c").is_dir() and not list((copy / "q").glob("c.*"))
    xr.testing.assert_identical(load_data(copy), load_data(untouched))
