"""A disk that fills up during a sweep (issue 21, item 5): the sweep stops in one line (exit status
1), the cells it finished are intact, the one it was writing is not marked done, nothing is left
half-written beside the store, and the same command, once there is space, ends with the data of
an uninterrupted run.

The full disk is a writer that fails after k bytes: every file opened for writing under the test's
folder (zarr writes each chunk and metadata file through ``Path.open``) raises ENOSPC once the
bytes written reach k, after writing what fits.
"""

from __future__ import annotations

import errno
import os
import pathlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from stores import load_data

from simulate import grid, schema

GRID = ["--family", "crelu,cst", "--sparsity", "0.8", "--clip", "1,inf", "--width", "8,16",
        "--depth", "6", "--nets", "3", "--seed", "6", "--n-jobs", "1", "--max-batch", "1"]  # fmt: skip
"""8 small cells, written one at a time."""


class _Disk:
    """Bytes written under ``root`` so far, how many fit (None: no limit), and how many had been
    written when each cell's ``cell_done`` chunk was (``flags``)."""

    def __init__(self, root: Path, capacity: int | None):
        self.root, self.capacity, self.used, self.flags = root, capacity, 0, []

    def take(self, n: int) -> int:
        """How many of ``n`` more bytes fit; ENOSPC after writing those, if not all."""
        room = n if self.capacity is None else max(0, min(n, self.capacity - self.used))
        self.used += room
        return room


class _Limited:
    """A file opened for writing on a :class:`_Disk`."""

    def __init__(self, file, disk: _Disk):
        self._file, self._disk = file, disk

    def write(self, data):
        n = len(data) if isinstance(data, str) else memoryview(data).nbytes
        room = self._disk.take(n)
        if room < n:
            self._file.write(
                data[:room] if isinstance(data, str) else memoryview(data).cast("B")[:room]
            )
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._file.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()

    def __getattr__(self, name):
        return getattr(self._file, name)


@contextmanager
def disk(monkeypatch, root: Path, capacity: int | None = None):
    """Files written under ``root`` count against ``capacity`` bytes; yields the :class:`_Disk`."""
    used = _Disk(root, capacity)
    original = pathlib.Path.open

    def opened(path, mode="r", *args, **kwargs):
        file = original(path, mode, *args, **kwargs)
        writing = any(c in mode for c in "wax+") and Path(path).absolute().is_relative_to(root)
        if writing and Path(path).parent.name == "cell_done" and Path(path).name[:2] == "c.":
            used.flags.append(used.used)
        return _Limited(file, used) if writing else file

    with monkeypatch.context() as patch:
        patch.setattr(pathlib.Path, "open", opened)
        yield used


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, list[int]]:
    """The uninterrupted sweep, and the bytes it had written at each ``cell_done`` write."""
    out = tmp_path_factory.mktemp("reference") / "s.zarr"
    with pytest.MonkeyPatch.context() as monkeypatch, disk(monkeypatch, out.parent) as used:
        assert grid.main([*GRID, "--out", str(out)]) == 0
    assert len(used.flags) == 8
    return out, used.flags


MOMENTS = {
    "creating the store": (lambda flags: flags[0] // 2, None),  # its metadata: most of the bytes
    "writing the 4th cell": (lambda flags: (flags[2] + flags[3]) // 2, 3),
    "marking the 6th cell done": (lambda flags: flags[5] + 1, 5),
    "after the last cell": (lambda flags: flags[7] + 1000, 8),
}
"""When the disk fills (k, from the bytes the sweep had written at each cell's ``cell_done``
write), and how many cells are done then (None: no store yet)."""


@pytest.mark.slow
@pytest.mark.parametrize("moment, n_done", MOMENTS.values(), ids=MOMENTS.keys())
def test_a_full_disk_stops_cleanly_and_the_same_command_finishes(
    reference, tmp_path, monkeypatch, capsys, moment, n_done
):
    ref_path, flags = reference
    out = tmp_path / "s.zarr"
    with disk(monkeypatch, tmp_path, moment(flags)):
        assert grid.main([*GRID, "--out", str(out)]) == 1
    (line,) = capsys.readouterr().err.splitlines()[-1:]
    assert line == (
        f"simulate.grid: out={out}: the disk is full ({os.strerror(errno.ENOSPC)}); the finished "
        "cells are kept: free some space, then run the same command to finish"
    )
    assert [p.name for p in tmp_path.iterdir()] == ([] if n_done is None else ["s.zarr"])
    ref = load_data(ref_path)
    if n_done is not None:
        partial = load_data(out)
        done = partial.cell_done.values
        assert done.sum() == n_done
        for name in schema.CELL_VARIABLES:
            np.testing.assert_array_equal(partial[name].values[done], ref[name].values[done])
    assert grid.main([*GRID, "--out", str(out)]) == 0
    xr.testing.assert_identical(load_data(out), ref)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == sorted(
        p.relative_to(ref_path) for p in ref_path.rglob("*")
    )
