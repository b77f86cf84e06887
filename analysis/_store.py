"""Open and validate a results store written by ``python -m simulate.grid``, and walk its cells.

A store is one xarray Dataset (a ``.zarr`` directory or a ``.nc`` file) in the schema of
:mod:`simulate.schema`: the parameter grid (``family``, ``sparsity`` or ``tau``, ``clip``, and
``q_star`` on the Edge of Chaos or ``sigma_w2``/``sigma_b2`` off it), then ``width``, ``net``,
``layer`` and ``input``. A *cell* is one point of the parameter grid at one width; ``cell_done``
marks the cells the sweep has finished. Each parameter point's activation is rebuilt from its
stored description (``schema.activation_at``), so the analysis needs no family's formulas.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import xarray as xr

from simulate import schema
from simulate.activations import Activation

READ = ("q", "corr", "zero_frac", "log_gain", "escape_layer")
"""The per-cell variables the analysis reads (the schema may hold more)."""

REQUIRED = {
    **{name: ("width", *schema.CELL_VARIABLES[name].dims) for name in READ},
    "cell_done": ("width",),
    **{
        name: var.dims
        for name, var in schema.PARAM_VARIABLES.items()
        if name not in schema.AXIS_VARIABLES
    },
}
"""The variables the analysis reads, with the dimensions the schema gives each (besides the
parameter grid)."""

PER_CELL = schema.AXIS_VARIABLES
"""Per-cell parameters: a dimension of the grid or a variable over the parameter dimensions."""


class StoreError(Exception):
    """A results store that is missing, unreadable or lacks what the analysis needs (one line)."""


def _open(path: Path) -> xr.Dataset:
    if not path.exists():
        raise StoreError(f"{path}: no such results store")
    is_zarr = path.suffix == ".zarr" or (
        path.is_dir() and any((path / f).exists() for f in ("zarr.json", ".zgroup"))
    )
    if not is_zarr and path.suffix not in (".nc", ".nc4", ".netcdf"):
        raise StoreError(f"{path}: not a results store (expected a .zarr directory or a .nc file)")
    try:
        return xr.open_zarr(path) if is_zarr else xr.open_dataset(path)
    except Exception as err:  # any reader failure is a bad store, reported in one line
        raise StoreError(f"{path}: cannot be read as a results store ({_reason(err)})") from err


def _reason(err: Exception) -> str:
    """The first line of an exception's message, or its type when it has none."""
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _load(ds: xr.Dataset, path: Path) -> xr.Dataset:
    """Read every variable into memory; a chunk that cannot be decoded (a damaged store: zarr's
    checksum, the compressor or the format reader complains) is a StoreError naming the variable."""
    for name, variable in ds.variables.items():
        try:
            variable.load()
        except Exception as err:  # whatever the codec raises, the store is damaged
            raise StoreError(
                f"{path}: variable {name} is damaged, a chunk cannot be read "
                f"({type(err).__name__}: {_reason(err)}); running its sweep again "
                f"(python -m simulate.grid with the store's spec, --out {path}, and --repair if "
                "it asks) recomputes the damaged cells"
            ) from err
    return ds


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
    check_variables(ds, path, REQUIRED, "results store")
    absent = [p for p in (*PER_CELL, "family", "clip") if p not in ds.variables]
    if absent:
        raise StoreError(f"{path}: parameter(s) {', '.join(absent)} neither dimension nor variable")
    if "depth" not in ds.attrs and "layer" not in ds.dims:
        raise StoreError(f"{path}: no depth attribute")


@dataclass(frozen=True)
class Cell:
    """One finished cell: its parameters, the activation and initialisation, and its data.

    ``q_ref`` is the reference variance of the escape band (q* on the Edge of Chaos, q0 off it);
    ``data`` holds the cell's trajectories over ``net``, ``layer`` (and ``input``).
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

    @property
    def params(self) -> dict:
        """The key without the width: identifies the cell's theory."""
        return {k: v for k, v in self.key.items() if k != "width"}


def _scalar(value):
    value = value.item() if hasattr(value, "item") else value
    return str(value) if isinstance(value, str | np.str_) else value


class CellProgress:
    """How far a sweep got, for a store ``self.ds`` with a ``cell_done`` flag per cell."""

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
        stacked = mask.stack(_cell=mask.dims)
        return [
            {d: _scalar(stacked[d].values[i]) for d in mask.dims}
            for i in np.flatnonzero(stacked.values)
        ]

    def missing(self) -> list[dict]:
        """The keys (every cell axis) of the cells the sweep has not finished."""
        return self._keys(~self.done)


class Results(CellProgress):
    """A validated, in-memory results store (see the module docstring for the layout)."""

    def param_keys(self) -> list[dict]:
        """Every point of the parameter grid (without width), finished or not."""
        return self._keys(xr.ones_like(self.done.any("width")))

    def activation(self, key: dict) -> Activation:
        """The activation of the parameter point ``key`` (a width in it is ignored), rebuilt from
        its stored description."""
        return schema.activation_at(self.ds, key)

    def __init__(self, ds: xr.Dataset, path: Path | str = "<memory>"):
        self.path = Path(path)
        if "pair" in ds.dims and ds.sizes["pair"] == 1:
            ds = ds.squeeze("pair", drop=True)
        _validate(ds, self.path)
        self.ds = _load(ds, self.path)

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
        return int(self.ds.attrs.get("depth", self.ds.sizes["layer"] - 1))

    @property
    def escape_factor(self) -> float:
        return float(self.ds.attrs.get("escape_factor", math.nan))

    @property
    def c0(self) -> float:
        return float(self.ds.attrs.get("c0", math.nan))

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

    def cells(self, **where) -> Iterator[Cell]:
        """Every finished cell, optionally restricted by coordinate values (``clip=math.inf``)."""
        done = self.done
        if where:
            done = done.sel({k: [v] for k, v in where.items() if k in done.dims})
        for key in self._keys(done):
            yield self.cell(key)

    def cell(self, key: dict) -> Cell:
        """The cell at ``key`` (every parameter dimension and ``width``)."""
        data = self.ds.sel(key)
        par = {p: float(data[p]) for p in PER_CELL}
        act = self.activation(key)
        q_star = float(data["q_star"]) if "q_star" in data.variables else None
        q0 = self.q0(q_star)
        target = float(data["gp_sparsity"]) if "gp_sparsity" in data else math.nan
        return Cell(
            key=key,
            act=act,
            sigma_w2=par["sigma_w2"],
            sigma_b2=par["sigma_b2"],
            q0=q0,
            q_ref=q_star if q_star is not None else q0,
            width=int(key["width"]),
            target_sparsity=target,
            data=data,
        )


def open_results(path: Path | str) -> Results:
    """Open a ``.zarr`` or ``.nc`` results store and check it has what the analysis reads.

    Raises :class:`StoreError` (one line) when the path is missing, unreadable or incomplete.
    """
    path = Path(path)
    return Results(_open(path), path)
