"""Open and validate a results store written by ``python -m simulate.grid``, and walk its cells.

A store is one xarray Dataset (a ``.zarr`` directory or a ``.nc`` file) in the schema of
:mod:`simulate.schema`: the parameter grid (``family``, ``sparsity`` or ``tau``, ``clip``, and
``q_star`` on the Edge of Chaos or ``sigma_w2``/``sigma_b2`` off it), then ``width``, ``net``,
``layer`` and ``input`` (and ``pair``). A *cell* is one point of the parameter grid at one width;
``cell_done`` marks the cells the sweep has finished. Each parameter point's activation is rebuilt
from its stored description (``schema.activation_at``), so the analysis needs no family's formulas.

Streaming. :class:`Results` reads into memory only what is small: the coordinates, the per-parameter
variables and ``cell_done``. A cell's variables are read when the cell is visited
(:meth:`Results.cells`), only those the caller names (``read``), a block of neighbouring cells at a
time (at most ``CELL_BLOCK`` bytes: one read per variable and block, where one per cell would pay
the store's per-read cost thousands of times), so a table's peak memory is that of one block
whatever the store's size.

What was recorded. ``layer`` holds the recorded layers (every layer, or 0, k, 2k, ..., depth with
``record_every = k``): the analysis uses its values, never positions. A summary store
(``record = "summary"``) has no per-layer variables, only per-network summaries and escape layers;
:attr:`Results.per_layer` tells the two apart, and :data:`PER_LAYER_ONLY` lists what needs layers.

The variance observable. A store records the empirical variance ``q`` = (1/N) sum_i h_i^2 (not
by the sparse engine, which never draws every unit: there q is NaN) and the conditional variance
``v`` = sigma_w^2 (1/N) sum_i phi(h_i)^2 + sigma_b^2 (every engine), each with its correlation and
tangent gain (:data:`OBSERVED`). The analysis works from one of them per store,
:attr:`Results.observable`: **the one the sweep detected escapes on** (the attribute
``escape_on``), so that escapes, network fates and fits refer to the same quantity; a store
without that attribute detected escapes on q, and uses q, unless its q is not recorded (NaN), then
v. The 1/N theory of each is in :mod:`analysis.theory`.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from simulate import schema
from simulate.activations import Activation
from simulate.spec import Shape, SpecError
from simulate.store import damaged_chunk

OBSERVED = {"q": ("q", "corr", "log_gain"), "v": ("v", "v_corr", "v_log_gain")}
"""Variance observable -> the store's (variance, correlation, tangent log-gain) variables."""

FINAL = {"q": "final_q", "v": "final_v", "zero_frac": "final_zero_frac"}
"""Per-layer variable -> its per-network summary at the last layer reached (escape layer, else
depth), when the store has it."""

PER_LAYER_ONLY = {
    "fit": "the fit verdicts (Monte Carlo against the GP and 1/N theory layer by layer)",
    "trajectories": "the trajectories figure (the variance through depth)",
    "zero_frac_corr": "the zero-fraction and correlation figures through depth",
    "correlation_map": "the empirical correlation map c^(l+1) against c^l",
    "sigma_gain": "the measured tangent gain of the off-EoC table (ln mean gain over the second "
    "half of the layers)",
}
"""What needs the per-layer variables (absent from a summary store), in words."""

REQUIRED = {
    "escape_layer": ("width", *schema.CELL_VARIABLES["escape_layer"].dims),
    "cell_done": ("width",),
    **{
        name: var.dims
        for name, var in schema.PARAM_VARIABLES.items()
        if name not in (*schema.AXIS_VARIABLES, "q_gp")
    },
}
"""The variables the analysis reads in every store, with the dimensions the schema gives each
(besides the parameter grid)."""

REQUIRED_PER_LAYER = {"zero_frac": ("width", *schema.CELL_VARIABLES["zero_frac"].dims)}
"""... and in a store with per-layer records (besides q or v)."""

PER_CELL = schema.AXIS_VARIABLES
"""Per-cell parameters: a dimension of the grid or a variable over the parameter dimensions."""


ZARR_READ = {"codec_pipeline.batch_size": 1024, "async.concurrency": 64}
"""zarr settings of the arrays the analysis opens: decode up to 1024 chunks of a read as one batch
and read up to 64 files at once (zarr's defaults: 1 and 10). A store has one chunk per cell and
variable, and zarr's cost per chunk dominates its reads: this reads the per-network summaries of
the 3,360-cell moonshot store about 1.5 times as fast."""


class StoreError(Exception):
    """A results store that is missing, unreadable or lacks what the analysis needs (one line)."""


def open_dataset(path: Path) -> xr.Dataset:
    """The store at ``path`` opened lazily (a ``.zarr`` directory or a ``.nc`` file); StoreError
    (one line) when it is missing or unreadable."""
    if not path.exists():
        raise StoreError(f"{path}: no such results store")
    is_zarr = path.suffix == ".zarr" or (
        path.is_dir() and any((path / f).exists() for f in ("zarr.json", ".zgroup"))
    )
    if not is_zarr and path.suffix not in (".nc", ".nc4", ".netcdf"):
        raise StoreError(f"{path}: not a results store (expected a .zarr directory or a .nc file)")
    try:
        if is_zarr:  # lazily indexed: a selection reads its chunks
            with zarr.config.set(ZARR_READ):
                return xr.open_zarr(path, chunks=None)
        return xr.open_dataset(path)
    except Exception as err:  # any reader failure is a bad store, reported in one line
        raise StoreError(f"{path}: cannot be read as a results store ({_reason(err)})") from err


def _reason(err: Exception) -> str:
    """The first line of an exception's message, or its type when it has none."""
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def damaged(name: str, path: Path, reason: str) -> StoreError:
    """The one-line error of a damaged variable, with how to recompute its cells."""
    return StoreError(
        f"{path}: variable {name} is damaged, a chunk cannot be read ({reason}); running its "
        f"sweep again (python -m simulate.grid with the store's spec, --out {path}, and --repair "
        "if it asks) recomputes the damaged cells"
    )


def load_dataset(ds: xr.Dataset, path: Path) -> xr.Dataset:
    """Read every variable of ``ds`` into memory; a chunk that cannot be decoded (a damaged store:
    zarr's checksum, the compressor or the format reader complains) is a StoreError naming the
    variable."""
    for name, variable in ds.variables.items():
        try:
            variable.load()
        except Exception as err:  # whatever the codec raises, the store is damaged
            raise damaged(name, path, f"{type(err).__name__}: {_reason(err)}") from err
    return ds


READ_BLOCK = 2**22
"""Bytes read at a time when checking a variable's chunks by decoding them (:func:`check_readable`)."""


def check_readable(array: xr.DataArray, path: Path) -> None:
    """StoreError (:func:`damaged`) when a chunk of ``array`` cannot be read, before any analysis,
    in memory independent of the store's size. A zarr array with checksums is checked by them
    (``simulate.store.damaged_chunk``, without decoding); any other array by decoding every chunk,
    a block of at most ``READ_BLOCK`` bytes at a time (split along its leading dimensions), nothing
    kept."""
    name = str(array.name)
    if (path / name / "zarr.json").is_file():
        try:
            chunk = damaged_chunk(path, name)
        except ValueError:  # no checksums: decode below
            pass
        else:
            if chunk is not None:
                raise damaged(name, path, f"{chunk.name} fails its CRC-32C checksum")
            return
    lead, block = 0, array.size * array.dtype.itemsize
    while lead < array.ndim - 1 and block > READ_BLOCK:
        block //= max(array.shape[lead], 1)
        lead += 1
    for index in np.ndindex(array.shape[:lead]):
        load_dataset(array[index].to_dataset(name=name), path)


def check_variables(ds: xr.Dataset, path: Path, required: dict, kind: str) -> None:
    """StoreError unless ``ds`` has every variable of ``required`` (name -> dims) with its dims."""
    missing = [name for name in required if name not in ds.variables]
    if missing:
        raise StoreError(f"{path}: not a complete {kind}, missing {', '.join(missing)}")
    for name, dims in required.items():
        lacking = [d for d in dims if d not in ds[name].dims]
        if lacking:
            raise StoreError(f"{path}: variable {name} lacks dimension(s) {', '.join(lacking)}")


def _validate(ds: xr.Dataset, path: Path) -> None:
    per_layer = "layer" in ds.dims
    check_variables(ds, path, REQUIRED | (REQUIRED_PER_LAYER if per_layer else {}), "results store")
    if per_layer and not any(OBSERVED[obs][0] in ds.variables for obs in OBSERVED):
        raise StoreError(
            f"{path}: not a complete results store, missing q and v (neither recorded)"
        )
    if not per_layer and not any(FINAL[obs] in ds.variables for obs in OBSERVED):
        raise StoreError(
            f"{path}: not a complete results store, no layer records and no final_q or final_v"
        )
    absent = [p for p in (*PER_CELL, "family", "clip") if p not in ds.variables]
    if absent:
        raise StoreError(f"{path}: parameter(s) {', '.join(absent)} neither dimension nor variable")
    if "depth" not in ds.attrs and not per_layer:
        raise StoreError(f"{path}: no depth attribute")


@dataclass(frozen=True)
class Cell:
    """One finished cell: its parameters, the activation and initialisation, and its data.

    ``q_ref`` is the reference variance of the escape band (q* on the Edge of Chaos, q0 off it);
    ``data`` holds the cell's variables that were read (:meth:`Results.cells`), in memory, over
    ``net``, ``layer`` (the recorded layers), ``input`` and ``pair``, and its parameters;
    ``observable`` ("q" or "v", module docstring) names the variables :attr:`variance`,
    :attr:`correlation` and :attr:`log_gain` read.
    """

    key: dict
    act: Activation
    sigma_w2: float
    sigma_b2: float
    q0: float
    q_ref: float
    width: int
    target_sparsity: float
    data: xr.Dataset
    observable: str = "q"

    @property
    def variance(self) -> xr.DataArray:
        """The variance observable per (net, layer, input): q or v."""
        return self.data[OBSERVED[self.observable][0]]

    @property
    def correlation(self) -> xr.DataArray:
        """The inputs' correlation per (net, layer[, pair]): corr (of q) or v_corr (of v); NaN
        for a store of one input per network."""
        name = OBSERVED[self.observable][1]
        if name in self.data:
            return self.data[name]
        return xr.full_like(self.log_gain, np.nan)

    @property
    def log_gain(self) -> xr.DataArray:
        """The tangent's log-gain per (net, layer): log_gain (of q) or v_log_gain (of v)."""
        return self.data[OBSERVED[self.observable][2]]

    @property
    def layers(self) -> np.ndarray:
        """The recorded layers (their numbers)."""
        return self.data["layer"].values

    def final(self, name: str) -> np.ndarray:
        """Per (net, input): the variable ``name`` ("q", "v" or "zero_frac") at the last layer
        each network reached, r = its escape layer, else the depth: the per-network summary
        (``FINAL``) when it was read, else the trajectory at layer r (NaN where r was not
        recorded). (The summary is the trajectory's value at r, taken before any thinning: NaN
        only where the trajectory is.)"""
        summary = FINAL[name]
        if summary in self.data:
            return self.data[summary].transpose("net", "input").values.astype(float)
        values = self.data[name].transpose("net", "layer", "input").values.astype(float)
        escape = self.data["escape_layer"].values
        last = np.where(escape >= 0, escape, self.layers[-1])
        index = np.searchsorted(self.layers, last)
        recorded = self.layers[np.minimum(index, self.layers.size - 1)] == last
        picked = values[np.arange(values.shape[0]), np.minimum(index, self.layers.size - 1)]
        return np.where(recorded[:, None], picked, np.nan)

    @property
    def params(self) -> dict:
        """The key without the width: identifies the cell's theory."""
        return {k: v for k, v in self.key.items() if k != "width"}


def _scalar(value):
    value = value.item() if hasattr(value, "item") else value
    return str(value) if isinstance(value, str | np.str_) else value


class CellProgress:
    """How far a sweep got, for a store ``self.ds`` with a ``cell_done`` flag per cell, and the
    sweep's own activations (:attr:`shapes`)."""

    @cached_property
    def shapes(self) -> dict[str, Shape]:
        """The sweep's user shapes by name, the ``[shape]`` tables of its spec (``attrs["spec"]``).
        A stored cell holds its activation at its own clip level only; the shape's expressions in
        tau and m give it at any m (the theory window varies m). Empty for a store without a spec
        or whose spec does not read."""
        try:
            tables = tomllib.loads(str(self.ds.attrs.get("spec", ""))).get("shape", [])
            tables = tables if isinstance(tables, list) else [tables]
            return {shape.name: shape for shape in map(Shape.from_table, tables)}
        except (tomllib.TOMLDecodeError, SpecError):
            return {}

    @cached_property
    def done(self) -> xr.DataArray:
        return self.ds["cell_done"].astype(bool)

    @property
    def n_cells(self) -> int:
        """Cells of the sweep's grid (parameter points x widths)."""
        return int(self.done.size)

    @property
    def n_done(self) -> int:
        return int(self.done.sum())

    @property
    def partial(self) -> bool:
        """True when the sweep has not finished every cell (interrupted, or damaged and reset)."""
        return self.n_done < self.n_cells

    @staticmethod
    def _keys(mask: xr.DataArray) -> list[dict]:
        labels = [mask[d].values for d in mask.dims]
        return [
            {d: _scalar(label[i]) for d, label, i in zip(mask.dims, labels, index, strict=True)}
            for index in zip(*np.nonzero(mask.values), strict=True)
        ]

    def missing(self) -> list[dict]:
        """The keys (every cell axis) of the cells the sweep has not finished."""
        return self._keys(~self.done)


class Results(CellProgress):
    """A validated results store, read cell by cell (see the module docstring)."""

    def param_keys(self) -> list[dict]:
        """Every point of the parameter grid (without width), finished or not."""
        return self._keys(xr.ones_like(self.done.any("width")))

    def activation(self, key: dict) -> Activation:
        """The activation of the parameter point ``key`` (a width in it is ignored), rebuilt from
        its stored description once per point."""
        point = tuple(key[d] for d in self.param_dims)
        if point not in self._activations:
            self._activations[point] = schema.activation_at(self.ds, key)
        return self._activations[point]

    @cached_property
    def _activations(self) -> dict[tuple, Activation]:
        """The activations rebuilt so far, by parameter point (coordinate values in
        :attr:`param_dims` order)."""
        return {}

    def __init__(self, ds: xr.Dataset, path: Path | str = "<memory>", check: bool = True):
        self.path = Path(path)
        if "pair" in ds.dims and ds.sizes["pair"] == 1:
            ds = ds.squeeze("pair", drop=True)
        elif "pair" in ds.dims and ds.sizes["pair"] == 0:  # one input per network: no correlation
            paired = [n for n in ds.data_vars if "pair" in ds[n].dims]
            ds = ds.drop_vars([*paired, "pair", "input_a", "input_b"], errors="ignore")
        _validate(ds, self.path)
        cell_dims = set(ds["cell_done"].dims)
        self.cell_variables = tuple(
            name for name in ds.data_vars if cell_dims <= set(ds[name].dims) and name != "cell_done"
        )
        """The variables with a value per cell: read cell by cell, never whole."""
        small = ds.drop_vars(self.cell_variables)
        load_dataset(small, self.path)
        self.ds = ds.assign({name: small[name] for name in small.data_vars})
        for name in self.cell_variables if check else ():
            check_readable(self.ds[name], self.path)

    @property
    def per_layer(self) -> bool:
        """True when the store has per-layer records (False: a summary store)."""
        return "layer" in self.ds.dims

    @property
    def layers(self) -> np.ndarray:
        """The recorded layers (empty in a summary store)."""
        return self.ds["layer"].values if self.per_layer else np.array([], dtype=int)

    @property
    def pairs(self) -> int:
        """Number of input pairs with a stored correlation (0: one input per network)."""
        if OBSERVED[self.observable][1] not in self.ds.variables:
            return 0
        return self.ds.sizes.get("pair", 1)

    def skipped(self) -> list[str]:
        """One line per analysis the store's records do not allow (empty when nothing is
        skipped)."""
        if self.per_layer:
            return []
        relevant = {
            "trajectories": self.eoc,
            "zero_frac_corr": self.eoc,
            "correlation_map": self.eoc and self.ds.sizes.get("pair", 1) > 0,
            "sigma_gain": not self.eoc,
        }
        return [
            f"- Not computed: {what}; it needs per-layer records."
            for key, what in PER_LAYER_ONLY.items()
            if relevant.get(key, True)
        ]

    @cached_property
    def observable(self) -> str:
        """ "q" or "v": the variance the analysis works from (the module docstring's rule)."""
        declared = self.ds.attrs.get("escape_on")
        if declared in OBSERVED:
            return declared
        name = "q" if self.per_layer else FINAL["q"]
        if name not in self.ds.variables:
            return "v"
        done = self.done.values
        if not done.any():
            return "q"
        first = dict(
            zip(self.done.dims, np.unravel_index(np.argmax(done), done.shape), strict=True)
        )
        return (
            "q" if np.isfinite(self._read(self.ds[[name]].isel(first))[name].values).any() else "v"
        )

    @property
    def param_dims(self) -> tuple[str, ...]:
        """The parameter-grid dimensions, in store order."""
        return schema.param_dims(self.ds)

    @property
    def eoc(self) -> bool:
        """True for an Edge-of-Chaos sweep (q* a dimension), False for an off-EoC sweep."""
        return "q_star" in self.ds.dims

    @property
    def depth(self) -> int:
        """The sweep's depth (its last layer)."""
        return int(self.ds.attrs.get("depth", self.layers[-1] if self.per_layer else 0))

    @property
    def escape_factor(self) -> float:
        return float(self.ds.attrs.get("escape_factor", math.nan))

    @property
    def c0(self) -> float:
        """The inputs' initial correlation when every pair shares it (``attrs["c0"]``), else NaN."""
        return float(self.ds.attrs.get("c0", math.nan))

    @property
    def pair_c0(self) -> np.ndarray:
        """The initial correlation of each pair (one entry when the store has one pair): c0, or
        the listed ``input_corr``; NaN for image inputs (their correlations are data)."""
        n = max(self.ds.sizes.get("pair", 1), 1)
        raw = self.ds.attrs.get("input_corr", self.c0)
        try:
            values = np.asarray(raw, dtype=float).ravel()
        except ValueError:  # "images:NAME"
            values = np.array([math.nan])
        return np.broadcast_to(values if values.size in (1, n) else math.nan, (n,)).copy()

    def q0(self, q_star: float | None) -> float:
        """The initial variance: the attribute ``q0``, or q* when it says ``"q_star"``."""
        raw = self.ds.attrs.get("q0", "q_star")
        if isinstance(raw, str) and raw == "q_star":
            if q_star is None:
                raise StoreError(
                    f"{self.path}: q0 = 'q_star' but the store has no q_star dimension"
                )
            return float(q_star)
        return float(raw)

    def cells(self, read: tuple[str, ...] | None = None, **where) -> Iterator[Cell]:
        """Every finished cell, optionally restricted by coordinate values (``clip=math.inf``),
        one at a time, each with its variables ``read`` (names; the observable's are spelled
        "variance", "correlation", "log_gain"; None: every cell variable) read into memory.

        The cells are read a block at a time (:func:`read_blocks`: neighbouring cells, at most
        ``CELL_BLOCK`` bytes), one read per variable and block, and yielded in store order."""
        done, data = self._where(read, where)
        for outer, block_done in read_blocks(done, data[self._names(read)], CELL_BLOCK):
            block = self._read(data.sel(outer))
            for inner in self._keys(block_done) if block_done.ndim else [{}]:
                yield self._cell({**outer, **inner}, block.sel(inner))

    def blocks(self, read: tuple[str, ...] | None = None, at_least: int = 1) -> list[dict]:
        """The blocks :meth:`cells` reads, split further into ``at_least`` blocks where the store's
        cells allow it, as the coordinate values that select them: ``cells(read, **block)`` yields
        the cells of one block."""
        done, data = self._where(read, {})
        names = self._names(read)
        return [outer for outer, _ in read_blocks(done, data[names], CELL_BLOCK, at_least)]

    def _where(self, read: tuple[str, ...] | None, where: dict) -> tuple[xr.DataArray, xr.Dataset]:
        """``cell_done`` and the variables ``read`` (and the per-point ones), at ``where``."""
        done, data = self.done, self.ds
        if where:
            chosen = {k: [v] for k, v in where.items() if k in done.dims}
            done, data = done.sel(chosen), data.sel(chosen)
        return done, data[[*self._names(read), *self._small]]

    def _names(self, read: tuple[str, ...] | None) -> list[str]:
        """The store's variables among ``read`` (module docstring of :meth:`cells`)."""
        if read is None:
            return list(self.cell_variables)
        alias = dict(
            zip(("variance", "correlation", "log_gain"), OBSERVED[self.observable], strict=True)
        )
        wanted = {alias.get(name, name) for name in read}
        return [name for name in self.cell_variables if name in wanted]

    def _read(self, data: xr.Dataset) -> xr.Dataset:
        """``data`` read into memory; a damaged chunk is a StoreError naming its variable."""
        return load_dataset(data, self.path)

    @cached_property
    def _small(self) -> list[str]:
        """The variables held in memory (per parameter point): read along with every cell."""
        return [n for n in self.ds.data_vars if n not in self.cell_variables]

    def cell(self, key: dict, read: tuple[str, ...] | None = None) -> Cell:
        """The cell at ``key`` (every parameter dimension and ``width``), its variables ``read``
        (:meth:`cells`) in memory."""
        return self._cell(key, self._read(self.ds[[*self._names(read), *self._small]].sel(key)))

    def _cell(self, key: dict, data: xr.Dataset) -> Cell:
        """The cell at ``key`` from its ``data`` (in memory, selected at ``key``)."""
        par = {p: float(data[p]) for p in PER_CELL}
        q_star = float(data["q_star"]) if "q_star" in data.variables else None
        return Cell(
            key=key,
            act=self.activation(key),
            sigma_w2=par["sigma_w2"],
            sigma_b2=par["sigma_b2"],
            q0=self.q0(q_star),
            q_ref=q_star if q_star is not None else self.q0(q_star),
            width=int(key["width"]),
            target_sparsity=float(data["gp_sparsity"]) if "gp_sparsity" in data else math.nan,
            data=data,
            observable=self.observable,
        )


CELL_BLOCK = 2**25
"""Bytes of cell variables :meth:`Results.cells` reads at a time (32 MiB): many cells per read,
which amortises the per-read cost of the store, in memory that does not grow with the store."""


def read_blocks(done: xr.DataArray, data: xr.Dataset, budget: int, at_least: int = 1):
    """Split the cell grid ``done`` into blocks of neighbouring cells: the leading cell dimensions
    are looped over, the trailing ones read whole, as few leading ones as keep a block's bytes of
    ``data`` within ``budget`` (at least one cell a block) and make ``at_least`` blocks (or one per
    cell). Yields (the leading dimensions' coordinate values, ``done`` over the block) for the
    blocks with a finished cell."""
    per_cell = sum(
        v.dtype.itemsize * math.prod(n for d, n in v.sizes.items() if d not in done.dims)
        for v in data.data_vars.values()
    )
    dims = list(done.dims)
    lead = 0
    while lead < len(dims) and (
        per_cell * math.prod(done.shape[lead:]) > budget or math.prod(done.shape[:lead]) < at_least
    ):
        lead += 1
    for index in np.ndindex(done.shape[:lead]):
        outer = {d: _scalar(done[d].values[i]) for d, i in zip(dims, index, strict=False)}
        block_done = done.isel(dict(zip(dims, index, strict=False)))
        if block_done.any():
            yield outer, block_done


def open_results(path: Path | str) -> Results:
    """Open a ``.zarr`` or ``.nc`` results store and check it has what the analysis reads.

    Raises :class:`StoreError` (one line) when the path is missing, unreadable or incomplete.
    """
    path = Path(path)
    return Results(open_dataset(path), path)
