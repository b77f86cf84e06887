"""GP and 1/N predictions for one stored cell, on the store's own layers, from its activation alone:
the adapter from a store's cells to :mod:`simulate.gp`, where every formula lives.

A layer of width N, given the layer below, has i.i.d. pre-activations h_i ~ N(0, G^l) where G^l is
the conditional variance; over random networks G^l fluctuates around the GP iterate q^l with
E[G] = q + G1/N and Var[G] = V4/N (``gp.finite_width_terms``). For a cell with activation phi,
(sigma_w^2, sigma_b^2), initial variance q0 and width N this gives:

    v^l          G^l itself (the stored conditional variance), and
    q_hat^l      (1/N) sum_i h_i^2 = G chi^2_N / N: their means and spreads (``gp.width_moments``)
    zero_frac^l  the fraction of the N units on a zero piece of phi, Binomial(N, s(G)) / N given G:
                 its mean and spread (``gp.zero_fraction_moments``) from the GP sparsity s and its
                 q-derivatives at q^l (``gp.sparsity_derivatives``)
    corr^l       c^0 = c0, c^{l+1} = R(c^l)  (R at variance q*; only when q0 = q*; for the empirical
                                             correlation and the conditional one v_corr alike;
                                             ``gp.correlation_gaps``)
    gain^l       chi_1(q^{l-1})              (mean of the tangent gain |t^l|^2 / |t^{l-1}|^2 = e^log_gain,
                                             and of its conditional counterpart K_tt^l / K_tt^{l-1} =
                                             e^v_log_gain, to O(1); undefined at l = 0)

Everything is independent of the width except through the explicit 1/N factors, so the recursions
run once per parameter cell: :func:`prepare` runs them for all parameter cells of a store at once
(batched over cells of one piece structure) and returns them (:class:`Prepared`); the per-cell
functions serve from what they are given of it, and compute (and cache) a cell that is not in it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import xarray as xr

from simulate import gp
from simulate.activations import Activation

from ._store import PER_CELL, Cell, Results

# -- the theory of a batch of parameter cells ---------------------------------------------------

LAYER_VARIABLES = ("q_gp", "g1", "v4", "s", "ds", "d2s", "chi1")
"""The width-free per-layer coefficients of :func:`layer_theory`."""


def layer_arrays(act: Activation, sigma_w2, sigma_b2, q0, depth: int) -> dict[str, np.ndarray]:
    """:data:`LAYER_VARIABLES` for a single or stacked activation (parameters broadcast against
    its batch), each (depth + 1, *batch): q, G1, V4 (``gp.finite_width_terms``), s, s', s'' at
    q^l (``gp.sparsity_derivatives``) and chi_1(q^{l-1}) (NaN at l = 0)."""
    with np.errstate(all="ignore"):  # iterates may overflow (unclipped) or vanish (ordered)
        q, g1, v4 = gp.finite_width_terms(act, sigma_w2, sigma_b2, q0, depth)
        s, ds, d2s = gp.sparsity_derivatives(act, q)
        chi1 = gp.chi1(act, q[:-1], sigma_w2)
    chi1 = np.concatenate([np.full((1, *q.shape[1:]), np.nan), np.broadcast_to(chi1, q[:-1].shape)])
    return dict(zip(LAYER_VARIABLES, (q, g1, v4, s, ds, d2s, chi1), strict=True))


def correlation_arrays(act: Activation, sigma_w2, sigma_b2, q_star, c0, depth: int) -> np.ndarray:
    """c^l, l = 0..depth (leading axis), for a single or stacked activation and c0 broadcast against
    the batch, from the precise gap iterate ``gp.correlation_gaps``."""
    return 1.0 - gp.correlation_gaps(act, q_star, sigma_w2, sigma_b2, c0, depth)


@dataclass(frozen=True)
class Prepared:
    """Precomputed theory of many parameter cells (what :func:`prepare` returns): per cell key
    (``gp.ActivationKey``, sigma_w2, sigma_b2, q0, depth) a column of the (depth + 1, n) arrays of
    its group, and per (cell key, c0) a column of the correlation arrays."""

    layers: dict[tuple, tuple[dict[str, np.ndarray], int]]
    correlations: dict[tuple, tuple[np.ndarray, int]]


PREPARE_BATCH = 256
"""Parameter cells evaluated together by :func:`prepare`: bounds its temporaries (arrays of
(depth + 1) x cells x pieces) whatever the store's size; the table it returns is a few arrays of
(depth + 1) x cells."""


def _prepare_batch(table: Prepared, members: list, c0s: np.ndarray, depth: int) -> None:
    """The theory of ``members`` ((activation, cell key, on the EoC) of one piece structure) in
    batched calls, into the ``table`` :func:`prepare` is filling."""
    act = Activation.stack(m[0] for m in members)
    sw2, sb2, q0 = (np.array([m[1][i] for m in members]) for i in (1, 2, 3))
    arrays = layer_arrays(act, sw2, sb2, q0, depth)
    for column, (_, cell, _) in enumerate(members):
        table.layers[cell] = (arrays, column)
    eoc = [i for i, m in enumerate(members) if m[2]]
    if eoc and c0s.size:
        sub = Activation.stack(members[i][0] for i in eoc)
        corr = correlation_arrays(sub, sw2[eoc], sb2[eoc], q0[eoc], c0s[:, None], depth)
        for column, i in enumerate(eoc):
            for row, c0 in enumerate(c0s):
                table.correlations[(*members[i][1], float(c0))] = (corr[:, row], column)


def prepare(results: Results, blocks: list[dict] | None = None) -> Prepared:
    """The theory of every parameter cell of ``results`` with a finished cell (in one of
    ``blocks``, coordinate values as :meth:`Results.blocks` gives them; None: anywhere), computed
    at once, for :func:`layer_theory`, :func:`correlation_iterate` (hence :func:`cell_theory`) to
    serve when given it. Cells are grouped by piece structure (as ``simulate.schema.param_values``
    does) and each group, in batches of :data:`PREPARE_BATCH`, is one stacked activation: the
    variance iterate, 1/N recursions, sparsity derivatives and chi_1 in one batched call, and the
    correlation iterate (for every finite initial correlation of the store's pairs and ``c0``, on
    the Edge of Chaos with q0 = q*) with one batched ``gp.correlation_gap_map`` call per layer."""
    table = Prepared(layers={}, correlations={})
    depth = results.depth
    dims = results.param_dims
    finished = results.done.any("width").transpose(*dims)
    if blocks is not None:
        finished = finished & _within(finished, blocks)

    def per_cell(name):  # a parameter variable (or axis) over the grid, positions as ``finished``
        return results.ds[name].broadcast_like(finished).transpose(*dims).values

    point = {p: per_cell(p) for p in PER_CELL}
    q_star = per_cell("q_star") if results.eoc else None
    c0s = np.unique([c for c in (*results.pair_c0, results.c0) if math.isfinite(c)])
    groups: dict[tuple[int, int], list] = {}
    labels = [finished[d].values for d in dims]
    for index in zip(*np.nonzero(finished.values), strict=True):
        act = results.activation(
            {d: label[i] for d, label, i in zip(dims, labels, index, strict=True)}
        )
        q0 = results.q0(None if q_star is None else float(q_star[index]))
        cell = (
            gp.ActivationKey(act),
            float(point["sigma_w2"][index]),
            float(point["sigma_b2"][index]),
            q0,
            depth,
        )
        on_eoc = q_star is not None and math.isclose(q0, float(q_star[index]))
        groups.setdefault((act.knots.size, act.pieces.slope.size), []).append((act, cell, on_eoc))
    for members in groups.values():
        for start in range(0, len(members), PREPARE_BATCH):
            _prepare_batch(table, members[start : start + PREPARE_BATCH], c0s, depth)
    return table


def _within(grid: xr.DataArray, blocks: list[dict]) -> xr.DataArray:
    """True on the points of ``grid`` that match every coordinate value of some block."""
    inside = xr.zeros_like(grid, dtype=bool)
    for block in blocks:
        match = xr.ones_like(grid, dtype=bool)
        for dim, value in block.items():
            if dim in grid.dims:
                match = match & (grid[dim] == value)
        inside = inside | match
    return inside


# -- per-cell predictions -----------------------------------------------------------------------


@gp.activation_cache(maxsize=512)
def _layer_theory_of(act: Activation, sigma_w2, sigma_b2, q0, depth) -> dict[str, np.ndarray]:
    return layer_arrays(act, sigma_w2, sigma_b2, q0, depth)


def _layer_values(
    act: Activation, sigma_w2, sigma_b2, q0, depth, prepared: Prepared | None
) -> dict[str, np.ndarray]:
    """:func:`layer_arrays` of one cell: from ``prepared`` when the cell is in it."""
    key = (gp.ActivationKey(act), sigma_w2, sigma_b2, q0, depth)
    hit = None if prepared is None else prepared.layers.get(key)
    if hit is None:
        return _layer_theory_of(act, sigma_w2, sigma_b2, q0, depth)
    arrays, column = hit
    return {name: arrays[name][:, column] for name in LAYER_VARIABLES}


def layer_theory(
    act: Activation,
    sigma_w2: float,
    sigma_b2: float,
    q0: float,
    depth: int,
    prepared: Prepared | None = None,
) -> xr.Dataset:
    """Width-free coefficients per layer (:func:`layer_arrays`): q_gp, g1, v4, s, ds, d2s,
    chi1 (of the layer below); from ``prepared`` (:func:`prepare`) when the cell is in it."""
    values = _layer_values(act, sigma_w2, sigma_b2, q0, depth, prepared)
    layer = np.arange(depth + 1)
    return xr.Dataset({k: ("layer", v) for k, v in values.items()}, coords={"layer": layer})


@gp.activation_cache(maxsize=512)
def _correlation_iterate_of(act: Activation, sigma_w2, sigma_b2, q_star, c0, depth) -> np.ndarray:
    return correlation_arrays(act, sigma_w2, sigma_b2, q_star, c0, depth)


def correlation_iterate(
    act: Activation,
    sigma_w2: float,
    sigma_b2: float,
    q_star: float,
    c0: float,
    depth: int,
    prepared: Prepared | None = None,
) -> np.ndarray:
    """c^0 = c0, c^{l+1} = R(c^l) with R the GP correlation map at variance q* (length depth+1;
    :func:`correlation_arrays`); from ``prepared`` (:func:`prepare`) when the cell is in it."""
    key = (gp.ActivationKey(act), sigma_w2, sigma_b2, q_star, depth, c0)
    hit = None if prepared is None else prepared.correlations.get(key)
    if hit is None:
        return _correlation_iterate_of(act, sigma_w2, sigma_b2, q_star, c0, depth)
    arrays, column = hit
    return arrays[:, column]


def correlation_theory(
    cell: Cell, depth: int, c0: float, prepared: Prepared | None = None
) -> np.ndarray:
    """The GP correlation c^l of two inputs started at c0, over layers 0..depth
    (:func:`correlation_iterate`); NaN unless the cell is on the EoC with q0 = q* and c0 is known."""
    on_eoc = "q_star" in cell.key and math.isclose(cell.q0, cell.key["q_star"])
    if on_eoc and math.isfinite(c0):
        return correlation_iterate(
            cell.act, cell.sigma_w2, cell.sigma_b2, cell.q0, c0, depth, prepared
        )
    return np.full(depth + 1, np.nan)


def theory_columns(
    cell: Cell, depth: int, c0: float = math.nan, prepared: Prepared | None = None
) -> dict[str, np.ndarray]:
    """:func:`cell_theory` as plain arrays over layers 0..depth, by variable name (no Dataset to
    build: the fit table asks for one per cell)."""
    n = cell.width
    base = _layer_values(cell.act, cell.sigma_w2, cell.sigma_b2, cell.q0, depth, prepared)
    q, g1, v4 = base["q_gp"], base["g1"], base["v4"]
    return {
        "q_gp": q,
        **gp.width_moments(q, g1, v4, n),
        "g1": g1,
        "v4": v4,
        **gp.zero_fraction_moments(base["s"], base["ds"], base["d2s"], g1, v4, n),
        "corr": correlation_theory(cell, depth, c0, prepared),
        "chi1": base["chi1"],
    }


def cell_theory(
    cell: Cell, depth: int, c0: float = math.nan, prepared: Prepared | None = None
) -> xr.Dataset:
    """Predictions over ``layer`` = 0..depth for one cell (see the module docstring): q_gp,
    q_mean, q_sd, v_mean, v_sd, g1, v4, zf_mean, zf_sd, corr (:func:`correlation_theory`), chi1 (of
    the layer below); from ``prepared`` (:func:`prepare`) when the cell is in it.
    ``<observable>_mean`` and ``<observable>_sd`` are the cell's variance's."""
    columns = theory_columns(cell, depth, c0, prepared)
    return xr.Dataset(
        {k: ("layer", v) for k, v in columns.items()}, coords={"layer": np.arange(depth + 1)}
    )
