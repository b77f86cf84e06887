"""The stored form of a sweep: one zarr (v3) store, created whole and empty, then filled cell by cell.

Schema, for a sweep with parameter axes P (``Spec.param_dims``: ``family, sparsity | tau, clip,
q_star`` on the Edge of Chaos; ``family, tau, clip, sigma_w2, sigma_b2`` off it):

    q(P, width, net, layer, input)          float32   empirical variance (1/N) sum_i (h_i^l)^2
    corr(P, width, net, layer)              float32   empirical correlation of the two inputs
    zero_frac(P, width, net, layer, input)  float32   fraction of units with phi(h) = 0
    log_gain(P, width, net, layer)          float32   per-layer tangent gain ln(|t^l|^2 / |t^(l-1)|^2)
    escape_layer(P, width, net)             int32     first escaped layer, -1 never
    cell_done(P, width)                     bool      the cell's values above are written
    tau, sigma_w2, sigma_b2 (P)             float64   those that are not axes
    q_gp(P, layer)                          float64   GP iterate q^{l+1} = V(q^l) from q0
    v_slope(P), gp_sparsity(P)              float64   V'(q_ref) and GP sparsity at q_ref

with q_ref = q* on the Edge of Chaos and q0 off it. Cells not yet computed hold the fill values (NaN,
and -2 for ``escape_layer``) and ``cell_done = False``: readers select on ``cell_done``.

Crash safety: the store is built under a scratch name and renamed into place, so it exists only
complete; zarr writes every chunk file atomically (write, then rename); each data variable has one
chunk per cell, and a cell's ``cell_done`` flag is set only after all of its chunks are written. So a
kill at any instant leaves every cell either done with its right values or not done.
"""

from __future__ import annotations

import math
import os
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from simulate.spec import Spec


@dataclass(frozen=True)
class Variable:
    """A stored variable: its dimensions after the parameter (and width) axes, dtype, fill, meaning."""

    dims: tuple[str, ...]
    dtype: str
    long_name: str
    units: str = "1"
    fill: float | int = np.nan


CELL_VARIABLES = {
    "q": Variable(
        ("net", "layer", "input"),
        "float32",
        "empirical pre-activation variance (1/N) sum_i (h_i^l)^2",
    ),
    "corr": Variable(
        ("net", "layer"),
        "float32",
        "empirical correlation of the pre-activations of the two inputs",
    ),
    "zero_frac": Variable(
        ("net", "layer", "input"),
        "float32",
        "fraction of units with phi(h_i^l) = 0 (empirical sparsity)",
    ),
    "log_gain": Variable(
        ("net", "layer"),
        "float32",
        "per-layer tangent gain ln(|t^l|^2 / |t^(l-1)|^2) along input 0 (NaN at "
        "layer 0; -inf where the tangent dies)",
    ),
    "escape_layer": Variable(
        ("net",),
        "int32",
        "first layer where some input's q leaves [q_ref / escape_factor, q_ref * "
        "escape_factor] (-1: never; -2: cell not computed)",
        fill=-2,
    ),
}
"""Per cell (after the axes P, width): what the engine measures."""

PARAM_VARIABLES = {
    "tau": Variable((), "float64", "threshold tau of the activation"),
    "sigma_w2": Variable((), "float64", "weight variance sigma_w^2 (W_ij ~ N(0, sigma_w^2 / N))"),
    "sigma_b2": Variable((), "float64", "bias variance sigma_b^2"),
    "q_gp": Variable(("layer",), "float64", "GP variance iterate q^{l+1} = V(q^l), q^0 = q0"),
    "v_slope": Variable((), "float64", "slope V'(q_ref) of the GP variance map"),
    "gp_sparsity": Variable((), "float64", "GP sparsity P(phi(sqrt(q_ref) z) = 0)"),
}
"""Per parameter cell (after the axes P): the network's variances and the GP theory."""

COORDINATES = {
    "family": "activation family (crelu: clipped shifted ReLU; cst: clipped soft thresholding)",
    "sparsity": "target GP sparsity at q*",
    "tau": "threshold tau of the activation",
    "clip": "clip level m (inf: unclipped)",
    "q_star": "fixed-point variance q* of the Edge of Chaos",
    "sigma_w2": "weight variance sigma_w^2 (W_ij ~ N(0, sigma_w^2 / N))",
    "sigma_b2": "bias variance sigma_b^2",
    "width": "hidden width N",
    "net": "network index within a cell",
    "layer": "layer index l (0: the inputs' first pre-activations)",
    "input": "input index (two inputs at correlation c0)",
}

_FLAG_CHUNK = 4096
"""Most ``cell_done`` flags per chunk (a flag is set by rewriting its chunk)."""


def param_variables(spec: Spec) -> tuple[str, ...]:
    """The per-parameter variables of this sweep: tau / sigma_w2 / sigma_b2 unless they are axes."""
    return tuple(v for v in PARAM_VARIABLES if v not in spec.param_dims)


def cell_nbytes(spec: Spec) -> int:
    """Bytes of one cell's engine output, uncompressed."""
    return sum(np.dtype(v.dtype).itemsize * _count(spec, v.dims) for v in CELL_VARIABLES.values())


def param_nbytes(spec: Spec) -> int:
    """Bytes of the per-parameter variables."""
    per_param = sum(
        np.dtype(PARAM_VARIABLES[v].dtype).itemsize * _count(spec, PARAM_VARIABLES[v].dims)
        for v in param_variables(spec)
    )
    return math.prod(spec.param_shape) * per_param


def nbytes(spec: Spec) -> int:
    """Bytes of the whole store, uncompressed (an upper bound on its size on disk)."""
    return param_nbytes(spec) + math.prod(spec.cell_shape) * (cell_nbytes(spec) + 1)


def _count(spec: Spec, dims: tuple[str, ...]) -> int:
    """Number of values along the trailing dimensions ``dims`` of a variable."""
    lengths = {"net": spec.nets, "layer": spec.depth + 1, "input": 2}
    return math.prod(lengths[d] for d in dims)


def create(path: Path, spec: Spec, params: dict[str, np.ndarray], attrs: dict) -> None:
    """Write the empty store for ``spec`` at ``path`` (replacing what is there): coordinates, the
    per-parameter variables ``params`` (arrays over the parameter axes, ``q_gp`` with a trailing layer
    axis), fill-valued cell variables, ``cell_done = False`` and the dataset attributes."""
    scratch = path.with_name(path.name + ".creating")
    shutil.rmtree(scratch, ignore_errors=True)
    cell_dims = spec.cell_dims
    coords = {
        **{dim: np.asarray(values) for dim, values in spec.coords().items()},
        "net": np.arange(spec.nets),
        "layer": np.arange(spec.depth + 1),
        "input": np.arange(2),
    }
    ds = xr.Dataset(
        {
            name: ((*spec.param_dims, *PARAM_VARIABLES[name].dims), params[name], _attrs(name))
            for name in param_variables(spec)
        },
        coords={
            dim: (dim, values, {"long_name": COORDINATES[dim], "units": "1"})
            for dim, values in coords.items()
        },
        attrs=attrs,
    )
    ds["cell_done"] = (
        cell_dims,
        np.zeros(spec.cell_shape, dtype=bool),
        {"long_name": "the cell's values are written (readers select on this)", "units": "1"},
    )
    flag_chunks = _flag_chunks(spec.cell_shape)
    with _quiet():
        ds.to_zarr(
            scratch,
            mode="w",
            zarr_format=3,
            consolidated=False,
            encoding={"cell_done": {"chunks": flag_chunks}},
        )
        group = zarr.open_group(scratch, mode="r+")
        for name, var in CELL_VARIABLES.items():
            dims = (*cell_dims, *var.dims)
            shape = (*spec.cell_shape, *(len(coords[d]) for d in var.dims))
            group.create_array(
                name,
                shape=shape,
                chunks=(1,) * len(cell_dims) + shape[len(cell_dims) :],
                dtype=var.dtype,
                fill_value=var.fill,
                dimension_names=dims,
                attributes=_attrs(name),
            )
        zarr.consolidate_metadata(scratch)
    if path.exists():  # swap, then delete: a kill at any point never leaves the old store half gone
        replaced = path.with_name(f".{path.name}.replaced-{os.getpid()}")
        path.rename(replaced)
        scratch.rename(path)
        shutil.rmtree(replaced)
    else:
        scratch.rename(path)


def _attrs(name: str) -> dict[str, str]:
    var = CELL_VARIABLES.get(name) or PARAM_VARIABLES[name]
    return {"long_name": var.long_name, "units": var.units}


def _flag_chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Chunks of ``cell_done``: whole trailing axes while at most ``_FLAG_CHUNK`` flags, then 1."""
    chunks, size = [], 1
    for n in reversed(shape):
        take = n if size * n <= _FLAG_CHUNK else 1
        chunks.append(take)
        size *= take
    return tuple(reversed(chunks))


def read_spec(path: Path) -> str | None:
    """The spec TOML of the sweep store at ``path``; None if ``path`` is not one."""
    try:
        group = zarr.open_group(path, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError):
        return None
    spec = group.attrs.get("spec")
    return spec if isinstance(spec, str) and "cell_done" in group else None


class Writer:
    """An existing store, open for filling in cells."""

    def __init__(self, path: Path):
        self.path = path
        with _quiet():
            self._group = zarr.open_group(path, mode="r+")
        self._arrays = {name: self._group[name] for name in (*CELL_VARIABLES, "cell_done")}

    def done(self) -> np.ndarray:
        """The ``cell_done`` mask over the cell axes."""
        return self._arrays["cell_done"][...]

    def write(self, index: tuple[int, ...], values: dict[str, np.ndarray]) -> None:
        """Store one cell's engine output (``values[name]`` over ``CELL_VARIABLES[name].dims``), then
        mark it done."""
        for name in CELL_VARIABLES:
            self._arrays[name][index] = values[name]
        self._arrays["cell_done"][index] = True

    def update_attrs(self, attrs: dict) -> None:
        """Set dataset attributes (and refresh the consolidated metadata that readers use)."""
        with _quiet():
            self._group.attrs.update(attrs)
            zarr.consolidate_metadata(self.path)

    @property
    def attrs(self) -> dict:
        return dict(self._group.attrs)


@contextmanager
def _quiet():
    """Silence zarr's notes that fixed-width strings and consolidated metadata are not in the v3 spec
    yet (xarray reads both, and the store opens without warnings)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", zarr.errors.UnstableSpecificationWarning)
        warnings.simplefilter("ignore", zarr.errors.ZarrUserWarning)
        yield
