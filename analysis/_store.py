"""Open and validate a results store written by ``python -m simulate.grid``, and walk its cells.

A store is one xarray Dataset (a ``.zarr`` directory or a ``.nc`` file). Its dimensions are the
parameter grid (``family``, ``sparsity`` or ``tau``, ``clip``, and ``q_star`` on the Edge of Chaos or
``sigma_w2``/``sigma_b2`` off it), then ``width``, ``net``, ``layer`` and ``input``. A *cell* is one
point of the parameter grid at one width; ``cell_done`` marks the cells the sweep has finished.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import xarray as xr

from simulate.activations import Activation

REQUIRED = {
    "q": ("width", "net", "layer", "input"),
    "corr": ("width", "net", "layer"),
    "zero_frac": ("width", "net", "layer", "input"),
    "log_gain": ("width", "net", "layer"),
    "escape_layer": ("width", "net"),
    "cell_done": ("width",),
    "q_gp": ("layer",),
}
"""Variables the analysis reads, with the dimensions each must carry (besides the parameter grid)."""

PER_CELL = ("tau", "sigma_w2", "sigma_b2")
"""Per-cell parameters: a dimension of the grid or a variable over the parameter dimensions."""

NON_PARAM_DIMS = ("width", "net", "layer", "input")


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
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise StoreError(f"{path}: cannot be read as a results store ({reason})") from err


def _validate(ds: xr.Dataset, path: Path) -> None:
    missing = [name for name in REQUIRED if name not in ds.variables]
    if missing:
        raise StoreError(f"{path}: not a complete results store, missing {', '.join(missing)}")
    for name, dims in REQUIRED.items():
        lacking = [d for d in dims if d not in ds[name].dims]
        if lacking:
            raise StoreError(f"{path}: variable {name} lacks dimension(s) {', '.join(lacking)}")
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


class Results:
    """A validated, in-memory results store (see the module docstring for the layout)."""

    def __init__(self, ds: xr.Dataset, path: Path | str = "<memory>"):
        self.path = Path(path)
        if "pair" in ds.dims and ds.sizes["pair"] == 1:
            ds = ds.squeeze("pair", drop=True)
        _validate(ds, self.path)
        self.ds = ds.load()

    @property
    def param_dims(self) -> tuple[str, ...]:
        """The parameter-grid dimensions, in store order."""
        return tuple(d for d in self.ds["cell_done"].dims if d not in NON_PARAM_DIMS)

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

    @cached_property
    def done(self) -> xr.DataArray:
        return self.ds["cell_done"].astype(bool)

    def cells(self, **where) -> Iterator[Cell]:
        """Every finished cell, optionally restricted by coordinate values (``clip=math.inf``)."""
        done = self.done
        if where:
            done = done.sel({k: [v] for k, v in where.items() if k in done.dims})
        stacked = done.stack(_cell=done.dims)
        for index in np.flatnonzero(stacked.values):
            key = {d: _scalar(stacked[d].values[index]) for d in done.dims}
            yield self.cell(key)

    def cell(self, key: dict) -> Cell:
        """The cell at ``key`` (every parameter dimension and ``width``)."""
        data = self.ds.sel(key)
        par = {p: float(data[p]) for p in PER_CELL}
        family = str(data["family"].values)
        act = Activation(family, par["tau"], float(data["clip"]))
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


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> None:
    """Run a command-line ``main``; a :class:`StoreError` becomes one line on stderr and exit 2."""
    try:
        code = main(argv)
    except StoreError as err:
        print(f"error: {err}", file=sys.stderr)
        code = 2
    sys.exit(code)
