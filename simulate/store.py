"""The stored form of a sweep: one zarr (v3) store, created whole and empty, then filled cell by cell.

The schema (dimensions, variables, dtypes, fills, units, attributes) is :mod:`simulate.schema`; this
module writes and checks it on disk.

Crash safety: the store is built under a scratch name and renamed into place, so it exists only
complete; zarr writes every chunk file atomically (write, then rename); each cell variable has one
chunk per cell, written even when it holds only fill values, and a cell's ``cell_done`` flag is set
only after all of its chunks are written and flushed to disk (fsync of the files and of their
directories). So a kill, or a power loss, at any instant leaves every cell either done with its
right values or not done. What a killed write leaves behind (zarr's ``*.partial`` files, a scratch
or replaced copy beside the store) is never read, and :func:`clean` removes it.

One writer at a time: a sweep holds :func:`lock` while it writes (the store, its scratch copies and
a training sweep's checkpoints); a second is refused, naming the first.

Provenance: ``cell_version`` (:data:`simulate.schema.CELL_VERSION`), a coordinate with one chunk
per cell, is written with each cell's values: the numerics that computed it.

Damage: every chunk of every array carries a CRC-32C checksum of its compressed bytes (zarr's
``crc32c`` codec after ``zstd``), so a chunk changed on disk fails to decode instead of reading
as other numbers. :meth:`Writer.inspect` reads every chunk a store should have and reports what
cannot be read: cells (a done cell with a missing or unreadable chunk), ``cell_done`` chunks, and
whole coordinate or parameter arrays; :meth:`Writer.repair` makes the store consistent again
(rewriting the arrays from the spec, unmarking the damaged cells) so that the sweep recomputes
them. A store whose root metadata is unreadable is :class:`DamagedStore`; :func:`rebuild` remakes
its metadata from the spec and keeps its chunk files, for the same inspection.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import math
import os
import shutil
import socket
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import google_crc32c
import numpy as np
import xarray as xr
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from simulate.schema import (
    CELL_VERSION,
    PARAM_VARIABLES,
    array_names,
    cell_shape,
    cell_variables,
    dim_lengths,
    param_variables,
    stored_variables,
)
from simulate.spec import Spec, TrainSpec

COMPRESSORS = (ZstdCodec(level=0), Crc32cCodec())
"""Codecs after the bytes serialiser, for every array: zstd (zarr's default), then a checksum."""

CHUNK_SEPARATOR = "."
"""Separator of the chunk keys of every array: chunk files ``c.0.3.1`` beside its ``zarr.json``.
zarr's default "/" makes a directory per index level (``c/0/3/1``): about 3.5 directories per chunk
at one chunk per cell, which at the moonshot sweep's 3,360 cells and 16 cell variables was more of
the store on disk than the data itself."""

_FLAG_CHUNK = 4096
"""Most ``cell_done`` flags per chunk (a flag is set by rewriting its chunk)."""

_WRITE_ALL = {"write_empty_chunks": True}
"""Array configuration of the writer: a chunk of fill values is written too, so that a done cell
without a chunk file is known to be damaged."""

VERSION = "cell_version"
"""The coordinate that records the numerics of each cell."""

CHUNK_OVERHEAD = 64
"""Bytes a chunk file may hold beyond its uncompressed values: zstd's frame and block headers
(incompressible data is stored raw, a few bytes longer) and the 4-byte checksum."""


def cell_nbytes(spec: Spec | TrainSpec) -> int:
    """Bytes of one cell's output, uncompressed."""
    return sum(
        np.dtype(var.dtype).itemsize * math.prod(cell_shape(spec, name)[len(spec.cell_dims) :])
        for name, var in cell_variables(spec).items()
    )


def param_nbytes(spec: Spec | TrainSpec) -> int:
    """Bytes of the per-parameter variables."""
    knots = max([4, *(len(shape.knots) for shape in spec.shape or ())])  # 4: CST, the most named
    lengths = dim_lengths(spec) | {"knot": knots}
    per_param = sum(
        np.dtype(PARAM_VARIABLES[v].dtype).itemsize
        * math.prod(lengths[d] for d in PARAM_VARIABLES[v].dims)
        for v in param_variables(spec)
    )
    return math.prod(spec.param_shape) * per_param


def disk_need(spec: Spec | TrainSpec, n_cells: int, block: int, creating: bool) -> tuple[int, int]:
    """(bytes, files) that writing ``n_cells`` cells takes on a filesystem of ``block``-byte blocks,
    and with ``creating`` the rest of a new store: each chunk file at its uncompressed size plus
    :data:`CHUNK_OVERHEAD`, rounded up to whole blocks (one chunk per cell makes small files, whose
    blocks fill a disk more than their bytes), and two blocks of metadata per array. An upper
    bound on what the store takes."""

    def on_disk(nbytes: int) -> int:
        return -(-(nbytes + CHUNK_OVERHEAD) // block) * block

    n = len(spec.cell_dims)
    per_cell = [
        np.dtype(var.dtype).itemsize * math.prod(cell_shape(spec, name)[n:])
        for name, var in cell_variables(spec).items()
    ]
    files = [size for size in per_cell if size] + [np.dtype(CELL_VERSION.dtype).itemsize]
    need, count = n_cells * sum(map(on_disk, files)), n_cells * len(files)
    if creating:
        flags = math.prod(spec.cell_shape) // math.prod(_flag_chunks(spec.cell_shape))
        arrays = len(array_names(spec)) + 1
        need += on_disk(param_nbytes(spec)) + (flags + 2 * arrays) * on_disk(_FLAG_CHUNK)
        count += flags + 2 * arrays
    return need, count


def create(
    path: Path, skeleton: xr.Dataset, spec: Spec | TrainSpec, separator: str = CHUNK_SEPARATOR
) -> None:
    """Write the empty store at ``path`` (replacing what is there): ``skeleton`` (from
    :func:`simulate.schema.skeleton`: coordinates, parameter variables, ``cell_done`` False,
    attributes), then the cell variables of ``spec``, fill-valued, one chunk per cell, and the
    ``cell_version`` coordinate. Chunk keys use ``separator`` (:data:`CHUNK_SEPARATOR`; "/" only to
    rebuild a store with nested keys). A failure (a full disk) removes the scratch copy."""
    scratch = path.with_name(path.name + ".creating")
    shutil.rmtree(scratch, ignore_errors=True)
    encoding = {name: _encoding(separator) for name in skeleton.variables}
    encoding["cell_done"]["chunks"] = _flag_chunks(spec.cell_shape)
    try:
        with _quiet():
            skeleton.to_zarr(
                scratch, mode="w", zarr_format=3, consolidated=False, encoding=encoding
            )
            group = zarr.open_group(scratch, mode="r+")
            n = len(spec.cell_dims)
            for name, var in cell_variables(spec).items():
                shape = cell_shape(spec, name)
                group.create_array(
                    name,
                    shape=shape,
                    chunks=(1,) * n + tuple(max(k, 1) for k in shape[n:]),  # one chunk per cell
                    dtype=var.dtype,
                    fill_value=var.fill,
                    **_encoding(separator),
                    dimension_names=(*spec.cell_dims, *var.dims),
                    attributes=var.attrs,
                )
            _create_versions(group, spec.cell_dims, spec.cell_shape, separator)
            zarr.consolidate_metadata(scratch)
        _flush([p for p in scratch.rglob("*") if p.is_file()])
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    if path.exists():  # swap, then delete: a kill at any point never leaves the old store half gone
        replaced = path.with_name(f".{path.name}.replaced-{os.getpid()}")
        path.rename(replaced)
        scratch.rename(path)
        shutil.rmtree(replaced)
    else:
        scratch.rename(path)
    _fsync(path.parent)  # the store's name, on disk before any of its cells is marked done


def _create_versions(
    group: zarr.Group, dims: tuple[str, ...], shape: tuple[int, ...], separator: str
) -> zarr.Array:
    """Add the ``cell_version`` array to ``group`` ("" everywhere: not recorded), one chunk per
    cell, and make it a coordinate (the root's ``coordinates`` attribute, which xarray reads)."""
    array = group.create_array(
        VERSION,
        shape=shape,
        chunks=(1,) * len(shape),
        dtype=CELL_VERSION.dtype,
        fill_value=CELL_VERSION.fill,
        **_encoding(separator),
        dimension_names=dims,
        attributes=CELL_VERSION.attrs,
    )
    coordinates = group.attrs.get("coordinates", "").split()
    group.attrs["coordinates"] = " ".join([*coordinates, VERSION])
    return array


def _encoding(separator: str = CHUNK_SEPARATOR) -> dict:
    """Codecs and chunk keys of an array (xarray's ``encoding`` or zarr's ``create_array``)."""
    return {
        "compressors": COMPRESSORS,
        "chunk_key_encoding": {"name": "default", "separator": separator},
    }


def chunk_file(path: Path, name: str, index: tuple[int, ...]) -> Path:
    """The file holding chunk ``index`` (chunk coordinates) of array ``name`` of the store at
    ``path``, by the array's own chunk key encoding (stores written before
    :data:`CHUNK_SEPARATOR` nest them in directories)."""
    with _quiet():
        array = zarr.open_array(path / name, mode="r")
    return path / name / array.metadata.encode_chunk_key(index)


def _flag_chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Chunks of ``cell_done``: whole trailing axes while at most ``_FLAG_CHUNK`` flags, then 1."""
    chunks, size = [], 1
    for n in reversed(shape):
        take = n if size * n <= _FLAG_CHUNK else 1
        chunks.append(take)
        size *= take
    return tuple(reversed(chunks))


class DamagedStore(Exception):
    """A sweep store whose root metadata (and so its spec) cannot be read."""


def read_spec(path: Path) -> str | None:
    """The spec TOML of the sweep store at ``path``; None if ``path`` is not one. DamagedStore if
    it has the layout of one (a ``cell_done`` array) but its root metadata cannot be read or a cell
    variable is missing."""
    try:
        with _quiet():
            group = zarr.open_group(path, mode="r")
            spec = group.attrs.get("spec")
            ok = isinstance(spec, str) and "cell_done" in group
            missing = [name for name in _variables_of(group) if name not in group]
    except Exception as err:  # any failure to read the root metadata
        if (path / "cell_done" / "zarr.json").is_file():
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise DamagedStore(f"cannot read {path / 'zarr.json'}: {reason}") from None
        return None
    if ok and missing:
        raise DamagedStore(f"no array {', '.join(missing)}")
    return spec if ok else None


def _variables_of(group: zarr.Group) -> dict:
    """The cell variables of the store (``attrs["experiment"]``, init if absent, and
    ``attrs["record"]``)."""
    attrs = group.attrs
    return stored_variables(attrs.get("experiment", "init"), attrs.get("record", "layers"))


def rebuild(path: Path, skeleton: xr.Dataset, spec: Spec | TrainSpec) -> None:
    """Remake the store at ``path`` from ``spec``, keeping the chunk files of its cell variables and
    of ``cell_done`` (whatever of them is intact; :meth:`Writer.inspect` tells)."""
    names = (*cell_variables(spec), "cell_done", VERSION)
    nested = any((path / name / "c").is_dir() for name in names)  # written before CHUNK_SEPARATOR
    fresh = path.with_name(path.name + ".rebuilt")
    shutil.rmtree(fresh, ignore_errors=True)
    create(fresh, skeleton, spec, separator="/" if nested else CHUNK_SEPARATOR)
    for name in names:
        for chunks in _chunk_entries(fresh / name):
            if chunks.is_dir():
                shutil.rmtree(chunks)
            else:
                chunks.unlink()
        for chunks in _chunk_entries(path / name):
            chunks.rename(fresh / name / chunks.name)
    _flush([fresh / name for name in names])  # the moves (directory entries)
    replaced = path.with_name(f".{path.name}.replaced-{os.getpid()}")
    path.rename(replaced)
    fresh.rename(path)
    shutil.rmtree(replaced)
    _fsync(path.parent)


def checksum_intact(chunk: Path) -> bool:
    """The chunk file's last 4 bytes are the CRC-32C of the bytes before them (what zarr's
    ``crc32c`` codec appends and checks on decode), so its compressed bytes are as written."""
    data = chunk.read_bytes()
    return len(data) >= 4 and google_crc32c.value(data[:-4]).to_bytes(4, "little") == data[-4:]


def checksummed(array: zarr.Array) -> bool:
    """True when the array's last codec is the CRC-32C checksum (every array this module writes;
    an array written by other means may have none, and is checked by decoding)."""
    return isinstance(array.metadata.codecs[-1], Crc32cCodec)


def damaged_chunk(path: Path, name: str) -> Path | None:
    """The first chunk file of array ``name`` of the zarr store at ``path`` that fails its
    checksum (:func:`checksum_intact`), else None. Reading the files directly is about 30 times
    faster than decoding them through zarr (0.13 s against 4.9 s for the 3,360 chunks of one
    variable of the moonshot store), and finds the same damage: a chunk whose compressed bytes
    match their checksum decodes. ValueError when the array has no checksum (:func:`checksummed`)."""
    with _quiet():
        array = zarr.open_array(path / name, mode="r")
    if not checksummed(array):
        raise ValueError(f"{path / name}: no CRC-32C codec, decode its chunks to check them")
    for entry in _chunk_entries(path / name):
        for chunk in [entry] if entry.is_file() else sorted(entry.rglob("*")):
            if chunk.is_file() and not checksum_intact(chunk):
                return chunk
    return None


def _chunk_entries(array: Path) -> list[Path]:
    """The chunk files of an array directory (or its ``c`` directory of nested keys), without
    the ``*.partial`` files a killed write leaves."""
    if not array.is_dir():
        return []
    return [
        entry
        for entry in array.iterdir()
        if (entry.name == "c" or entry.name.startswith("c.")) and not entry.name.endswith(PARTIAL)
    ]


PARTIAL = ".partial"
"""Suffix of the temporary file zarr writes a chunk to before renaming it into place."""


def clean(path: Path) -> None:
    """Remove what killed writes left in and beside the store at ``path`` (never read, but taking
    space): zarr's ``*.partial`` chunk files, and a replaced copy whose deletion was cut short
    (:func:`create`, :func:`rebuild`). Only under :func:`lock`: a running writer has such files."""
    for debris in path.glob(f"*/*{PARTIAL}"):
        debris.unlink(missing_ok=True)
    for replaced in path.parent.glob(f".{path.name}.replaced-*"):
        shutil.rmtree(replaced, ignore_errors=True)


@dataclass(frozen=True)
class Inspection:
    """What :meth:`Writer.inspect` read: ``done`` (the ``cell_done`` flags, False where unreadable),
    and the damage: ``cells`` (done cells with a missing or unreadable chunk), ``flags`` (cells
    whose ``cell_done`` chunk is unreadable), ``arrays`` (coordinates or parameter variables that
    cannot be read whole)."""

    done: np.ndarray
    cells: np.ndarray
    flags: np.ndarray
    arrays: tuple[str, ...]

    @property
    def intact(self) -> np.ndarray:
        """The cells that are done and whose every chunk reads back."""
        return self.done & ~self.cells

    @property
    def damaged(self) -> bool:
        return bool(self.arrays or self.cells.any() or self.flags.any())

    def describe(self) -> str:
        parts = []
        if self.cells.any() or self.flags.any():
            parts.append(f"{int((self.cells | self.flags).sum())} damaged cells")
        if self.arrays:
            parts.append(f"missing or unreadable {', '.join(self.arrays)}")
        return "; ".join(parts)


class Writer:
    """An existing store, open for filling in cells."""

    def __init__(self, path: Path):
        self.path = path
        with _quiet():
            self._group = zarr.open_group(path, mode="r+")
        self._variables = tuple(_variables_of(self._group))
        self._arrays = {
            name: self._group[name].with_config(_WRITE_ALL)
            for name in (*self._variables, "cell_done", VERSION)
            if name in self._group
        }

    def done(self) -> np.ndarray:
        """The ``cell_done`` mask over the cell axes."""
        return self._arrays["cell_done"][...]

    def versions(self) -> np.ndarray | None:
        """``cell_version`` over the cell axes ("" where not recorded or unreadable); None for a
        store written before it was recorded."""
        array = self._arrays.get(VERSION)
        if array is None:
            return None
        try:
            return array[...]
        except Exception:  # a damaged chunk: read the others cell by cell
            out = np.full(array.shape, CELL_VERSION.fill, dtype=CELL_VERSION.dtype)
            for index in np.ndindex(array.shape):
                try:
                    out[index] = array[index]
                except Exception:
                    pass
            return out

    def record_versions(self) -> None:
        """Give a store written before ``cell_version`` the coordinate, "" (not recorded) in the
        cells it has."""
        if VERSION in self._arrays:
            return
        flags = self._arrays["cell_done"]
        separator = flags.metadata.chunk_key_encoding.separator
        with _quiet():
            array = _create_versions(
                self._group, flags.metadata.dimension_names, flags.shape, separator
            )
            zarr.consolidate_metadata(self.path)
            self._group = zarr.open_group(self.path, mode="r+")
        self._arrays[VERSION] = array.with_config(_WRITE_ALL)

    def write(
        self, index: tuple[int, ...], values: dict[str, np.ndarray], version: str = ""
    ) -> None:
        """:meth:`write_cells` of one cell ("": its numerics not recorded)."""
        self.write_cells([(index, values, version)])

    def write_cells(self, cells: list[tuple[tuple[int, ...], dict[str, np.ndarray], str]]) -> None:
        """Store the output of ``cells``, each (index, ``values[name]`` over the cell variable's
        own dims, its ``cell_version``), flush their chunk files to disk, then mark them done."""
        written = []
        for index, values, version in cells:
            for name in (*self._variables, VERSION):
                array = self._arrays.get(name)
                if array is not None and array.size:
                    array[index] = version if name == VERSION else values[name]
                    written.append(self._chunk(name, index))
        _flush(written)
        for index, _, _ in cells:
            self._arrays["cell_done"][index] = True

    def _chunk(self, name: str, index: tuple[int, ...]) -> Path:
        """The chunk file of cell ``index`` of the cell variable (or ``cell_version``) ``name``."""
        array = self._arrays[name]
        return (
            self.path
            / name
            / array.metadata.encode_chunk_key((*index, *(0,) * (array.ndim - len(index))))
        )

    def inspect(self, expected: Iterable[str] = ()) -> Inspection:
        """Read every chunk the store should hold (see the module docstring); an ``expected``
        coordinate or parameter variable that is absent (a store older than the schema) counts
        as unreadable."""
        flags = self._arrays["cell_done"]
        done = np.zeros(flags.shape, dtype=bool)
        unreadable = np.zeros(flags.shape, dtype=bool)
        for region in _chunk_regions(flags.shape, flags.chunks):
            try:
                done[region] = flags[region]
            except Exception:  # a damaged chunk: any decoding error
                unreadable[region] = True
        checks = [(name, False) for name in self._variables]
        checks += [(VERSION, True)] if VERSION in self._arrays else []  # "" if not recorded
        cells = np.zeros(flags.shape, dtype=bool)
        for index in zip(*np.nonzero(done), strict=True):
            cells[index] = not all(self._intact(name, index, ok) for name, ok in checks)
        arrays = [name for name in expected if name not in self._group]
        for name, array in self._group.arrays():
            if name not in self._arrays:
                try:
                    array[...]
                except Exception:
                    arrays.append(name)
        return Inspection(done, cells, unreadable, tuple(sorted(arrays)))

    def _intact(self, name: str, index: tuple[int, ...], missing_ok: bool = False) -> bool:
        """The chunk of cell ``index`` of the cell variable ``name`` exists (or is ``missing_ok``:
        a ``cell_version`` not recorded) and decodes, or passes its checksum when it has one (an
        empty variable, corr with one input, has no chunks)."""
        array = self._arrays[name]
        if array.size == 0:
            return True
        chunk = self._chunk(name, index)
        if not chunk.is_file():
            return missing_ok
        if checksummed(array):
            return checksum_intact(chunk)
        try:
            array[tuple(int(i) for i in index)]
        except Exception:  # any decoding error
            return False
        return True

    def repair(self, found: Inspection, skeleton: xr.Dataset | None) -> None:
        """Rewrite the unreadable arrays and add the absent ones from ``skeleton`` (the store's
        coordinates and parameter variables, from the spec; needed only when ``found.arrays``), and
        unmark the damaged cells. ``cell_done`` is rewritten a whole chunk at a time: a damaged
        chunk cannot be updated in place."""
        absent = [name for name in found.arrays if name not in self._group]
        for name in found.arrays:
            if name not in absent:
                self._group[name].with_config(_WRITE_ALL)[...] = skeleton[name].values
        if absent:
            added = skeleton[absent]
            added = added.drop_vars([c for c in added.coords if c not in absent])
            kept = dict(self._group.attrs)  # xarray rewrites them (the list of coordinates)
            with _quiet():
                added.to_zarr(
                    self.path,
                    mode="a",
                    zarr_format=3,
                    consolidated=False,
                    encoding={name: _encoding() for name in added.variables},
                )
                zarr.open_group(self.path, mode="r+").attrs.update(kept)
                zarr.consolidate_metadata(self.path)
        flags = self._arrays["cell_done"]
        for region in _chunk_regions(flags.shape, flags.chunks):
            if (found.cells[region] | found.flags[region]).any():
                flags[region] = found.intact[region]

    def update_attrs(self, attrs: dict) -> None:
        """Set dataset attributes (and refresh the consolidated metadata that readers use)."""
        with _quiet():
            self._group.attrs.update(attrs)
            zarr.consolidate_metadata(self.path)

    @property
    def attrs(self) -> dict:
        return dict(self._group.attrs)


def _flush(files: list[Path]) -> None:
    """fsync ``files`` and the directories that hold them (which makes their renames durable), in
    parallel: a disk serves concurrent fsyncs in a few journal commits (a cell's 17 files in
    about 10 ms on the development machine, where one after the other they take 8 ms each)."""
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(_fsync, [*files, *{f.parent for f in files}]))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Busy(Exception):
    """Another process holds the store's lock; the message names it."""


@contextmanager
def lock(path: Path) -> Iterator[None]:
    """Hold the lock of the store at ``path`` while writing it: an advisory lock on the file
    ``NAME.zarr.lock`` beside it, which covers the store, its scratch copies and a training sweep's
    checkpoints (``NAME.zarr.checkpoints``). The file holds the holder's pid, host and start time;
    Busy, with them, when another process holds it.

    The lock is a POSIX record lock (``fcntl.lockf``, also kept over NFS): it belongs to this
    process alone, so a child it forks (to run git, or to become a worker) never holds it, and the
    kernel drops it the moment the process dies (kill -9): a stale file is simply taken over. (An
    ``flock`` would stay held by such a child until it execs, refusing the resume of a sweep killed
    at that moment.) On exit the file is removed, and so are the directories made for it if nothing
    else was put in them."""
    file = path.with_name(path.name + ".lock")
    made = []
    for parent in reversed(file.parents):  # outermost first
        if not parent.exists():
            parent.mkdir(exist_ok=True)
            made.append(parent)
    try:
        fd = _acquire(file)
        try:
            yield
        finally:
            file.unlink(missing_ok=True)  # before unlocking: see _acquire
            os.close(fd)
    finally:
        for parent in reversed(made):
            try:
                parent.rmdir()
            except OSError:  # not empty: the store is in it
                break


def _acquire(file: Path) -> int:
    """An open descriptor of ``file``, locked (exclusive, non-blocking; Busy if held). A holder
    removes the file before it unlocks, so a lock taken on a file that is no longer at ``file``
    is let go and taken again on the new one."""
    while True:
        fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            holder = os.read(fd, 4096).decode(errors="replace").strip()
            os.close(fd)
            raise Busy(holder or "a process starting up") from None
        try:
            if os.stat(file).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    since = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    with suppress(OSError):  # (a full disk: the lock holds without its holder's name)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}".encode())
    return fd


def _chunk_regions(shape: tuple[int, ...], chunks: tuple[int, ...]):
    """The slices of every chunk of an array."""
    starts = (range(0, n, c) for n, c in zip(shape, chunks, strict=True))
    for corner in product(*starts):
        yield tuple(slice(s, s + c) for s, c in zip(corner, chunks, strict=True))


@contextmanager
def _quiet():
    """Silence zarr's notes that fixed-width strings and consolidated metadata are not in the v3 spec
    yet (xarray reads both, and the store opens without warnings)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", zarr.errors.UnstableSpecificationWarning)
        warnings.simplefilter("ignore", zarr.errors.ZarrUserWarning)
        yield
