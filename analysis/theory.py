"""GP and 1/N predictions for one stored cell, on the store's own layers, from its activation alone.

A layer of width N, given the layer below, has i.i.d. pre-activations h_i ~ N(0, G^l) where G^l is
the conditional variance; over random networks G^l fluctuates around the GP iterate q^l with
E[G] = q + G1/N and Var[G] = V4/N (``simulate.gp.finite_width``). For a cell with activation phi,
(sigma_w^2, sigma_b^2), initial variance q0 and width N this gives:

    v^l          = G^l itself (the stored conditional variance):
                 mean q^l + G1^l / N,   sd sqrt(V4^l / N)
    q_hat^l      = (1/N) sum_i h_i^2 = G chi^2_N / N:
                 mean q^l + G1^l / N,   sd sqrt((2 (q^l)^2 + V4^l) / N)   (Var[G chi^2_N / N] =
                 E[2 G^2 / N] + Var[G], to first order in 1/N)
    zero_frac^l  the fraction of the N units on a zero piece of phi, Binomial(N, s(G)) / N given G:
                 mean s(q^l) + [s'(q^l) G1^l + s''(q^l) V4^l / 2] / N,
                 sd sqrt([s (1 - s) + s'(q^l)^2 V4^l] / N)
    corr^l       c^0 = c0, c^{l+1} = R(c^l)  (R at variance q*; only when q0 = q*; for the empirical
                                             correlation and the conditional one v_corr alike)
    gain^l       chi_1(q^{l-1})              (mean of the tangent gain |t^l|^2 / |t^{l-1}|^2 = e^log_gain,
                                             and of its conditional counterpart K_tt^l / K_tt^{l-1} =
                                             e^v_log_gain, to O(1); undefined at l = 0)

s(q) = P(phi(sqrt(q) z) on a zero piece) is the GP sparsity and s', s'' its q-derivatives
(:func:`sparsity_derivatives`), from the edges of the zero pieces. Everything is independent of the
width except through the explicit 1/N factors, so the recursions run once per parameter cell:
:func:`prepare` runs them for all parameter cells of a store at once (batched over cells of one piece
structure), and the per-cell functions serve from that table, or compute (and cache) a cell that
was not prepared.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import xarray as xr

from simulate import gp
from simulate.activations import Activation

from ._store import PER_CELL, Cell, Results


class _Keyed:
    """An activation hashed by its description (Activation itself is unhashable): two equal
    descriptions are the same function and share their theory."""

    __slots__ = ("_key", "act")

    def __init__(self, act: Activation):
        self.act = act
        self._key = (act.knots.tobytes(), act.values.tobytes(), act.slopes.tobytes())

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other) -> bool:
        return isinstance(other, _Keyed) and self._key == other._key


def activation_cache(maxsize: int):
    """``functools.lru_cache`` for a function whose first argument is an Activation (keyed by its
    description) and whose other arguments are hashable and positional."""

    def decorate(fn):
        @functools.lru_cache(maxsize=maxsize)
        def cached(key: _Keyed, *args):
            return fn(key.act, *args)

        @functools.wraps(fn)
        def wrapper(act: Activation, *args):
            return cached(_Keyed(act), *args)

        return wrapper

    return decorate


# -- the zero pieces ----------------------------------------------------------------------------


def sparsity_derivatives(act: Activation, q):
    """(s, ds/dq, d^2s/dq^2) of the GP sparsity at variance q (broadcast against the batch of a
    stacked activation, like ``simulate.gp``).

    s(q) = sum over zero pieces [lo, hi) of Phi(hi / sqrt q) - Phi(lo / sqrt q), so each finite edge
    c of a zero piece, with sign +1 for an upper edge and -1 for a lower one, contributes with
    a = c / sqrt(q) (da/dq = -a / 2q, d(a n(a))/da = (1 - a^2) n(a)):

        s'  += -sign a n(a) / (2q),     s'' += sign a n(a) (3 - a^2) / (4 q^2).

    (CReLU: one edge tau, s = Phi(a); CST: edges -tau and tau, s = 2 Phi(a) - 1.)
    """
    q = np.asarray(q, dtype=float)
    pieces = act.pieces
    zero = (pieces.slope == 0.0) & (pieces.anchor_y == 0.0)  # phi = 0 there
    edges = np.concatenate([pieces.hi, pieces.lo], axis=-1)
    signs = np.concatenate([np.ones(zero.shape[-1]), -np.ones(zero.shape[-1])])
    counted = np.concatenate([zero, zero], axis=-1) & np.isfinite(edges)
    qq = q[..., None]
    a = np.where(counted, edges, 0.0) / np.sqrt(qq)
    density = np.exp(-0.5 * a * a) / math.sqrt(2.0 * math.pi)
    first = np.sum(np.where(counted, -signs * a * density / (2.0 * qq), 0.0), axis=-1)
    second = np.sum(
        np.where(counted, signs * a * density * (3.0 - a * a) / (4.0 * qq * qq), 0.0), axis=-1
    )
    return gp.sparsity(act, q), first, second


# -- the theory of a batch of parameter cells ---------------------------------------------------

LAYER_VARIABLES = ("q_gp", "g1", "v4", "s", "ds", "d2s", "chi1")
"""The width-free per-layer coefficients of :func:`layer_theory`."""


def layer_arrays(act: Activation, sigma_w2, sigma_b2, q0, depth: int) -> dict[str, np.ndarray]:
    """:data:`LAYER_VARIABLES` for a single or stacked activation (parameters broadcast against
    its batch), each (depth + 1, *batch): q, G1, V4 (``gp.finite_width_terms``), s, s', s'' at
    q^l (:func:`sparsity_derivatives`) and chi_1(q^{l-1}) (NaN at l = 0)."""
    with np.errstate(all="ignore"):  # iterates may overflow (unclipped) or vanish (ordered)
        q, g1, v4 = gp.finite_width_terms(act, sigma_w2, sigma_b2, q0, depth)
        s, ds, d2s = sparsity_derivatives(act, q)
        chi1 = gp.chi1(act, q[:-1], sigma_w2)
    chi1 = np.concatenate([np.full((1, *q.shape[1:]), np.nan), np.broadcast_to(chi1, q[:-1].shape)])
    return dict(zip(LAYER_VARIABLES, (q, g1, v4, s, ds, d2s, chi1), strict=True))


def correlation_arrays(act: Activation, sigma_w2, sigma_b2, q_star, c0, depth: int) -> np.ndarray:
    """c^l, l = 0..depth (leading axis), for a single or stacked activation and c0 broadcast against
    the batch, from the precise gap iterate ``gp.correlation_gaps``."""
    return 1.0 - gp.correlation_gaps(act, q_star, sigma_w2, sigma_b2, c0, depth)


class _Table:
    """Precomputed theory of many parameter cells (:func:`prepare`): per cell key
    (activation, sigma_w2, sigma_b2, q0, depth) a column of the (depth + 1, n) arrays of its
    group, and per (cell key, c0) a column of the correlation arrays."""

    def __init__(self):
        self.layers: dict[tuple, tuple[dict[str, np.ndarray], int]] = {}
        self.correlations: dict[tuple, tuple[np.ndarray, int]] = {}


_prepared = _Table()


PREPARE_BATCH = 256
"""Parameter cells evaluated together by :func:`prepare`: bounds its temporaries (arrays of
(depth + 1) x cells x pieces) whatever the store's size; the table it keeps is a few arrays of
(depth + 1) x cells."""


def _prepare_batch(table: _Table, members: list, c0s: np.ndarray, depth: int) -> None:
    """The theory of ``members`` ((activation, cell key, on the EoC) of one piece structure) in
    batched calls, into ``table``."""
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


def prepare(results: Results, blocks: list[dict] | None = None) -> None:
    """Compute the theory of every parameter cell of ``results`` with a finished cell (in one of
    ``blocks``, coordinate values as :meth:`Results.blocks` gives them; None: anywhere) at once,
    and keep it for :func:`layer_theory`, :func:`correlation_iterate` (hence :func:`cell_theory`)
    to serve (replacing what an earlier call kept). Cells are grouped by piece structure (as
    ``simulate.schema.param_values`` does) and each group, in batches of :data:`PREPARE_BATCH`, is
    one stacked activation: the variance iterate, 1/N recursions, sparsity derivatives and chi_1
    in one batched call, and the correlation iterate (for every finite initial correlation of the
    store's pairs and ``c0``, on the Edge of Chaos with q0 = q*) with one batched
    ``gp.correlation_gap_map`` call per layer."""
    table = _Table()
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
            _Keyed(act),
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
    global _prepared
    _prepared = table


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


@activation_cache(maxsize=512)
def _layer_theory_of(act: Activation, sigma_w2, sigma_b2, q0, depth) -> dict[str, np.ndarray]:
    return layer_arrays(act, sigma_w2, sigma_b2, q0, depth)


def _layer_values(act: Activation, sigma_w2, sigma_b2, q0, depth) -> dict[str, np.ndarray]:
    """:func:`layer_arrays` of one cell: from the table of :func:`prepare` when the cell is in it."""
    hit = _prepared.layers.get((_Keyed(act), sigma_w2, sigma_b2, q0, depth))
    if hit is None:
        return _layer_theory_of(act, sigma_w2, sigma_b2, q0, depth)
    arrays, column = hit
    return {name: arrays[name][:, column] for name in LAYER_VARIABLES}


def layer_theory(
    act: Activation, sigma_w2: float, sigma_b2: float, q0: float, depth: int
) -> xr.Dataset:
    """Width-free coefficients per layer (:func:`layer_arrays`): q_gp, g1, v4, s, ds, d2s,
    chi1 (of the layer below); from the table of :func:`prepare` when the cell is in it."""
    values = _layer_values(act, sigma_w2, sigma_b2, q0, depth)
    layer = np.arange(depth + 1)
    return xr.Dataset({k: ("layer", v) for k, v in values.items()}, coords={"layer": layer})


@activation_cache(maxsize=512)
def _correlation_iterate_of(act: Activation, sigma_w2, sigma_b2, q_star, c0, depth) -> np.ndarray:
    return correlation_arrays(act, sigma_w2, sigma_b2, q_star, c0, depth)


def correlation_iterate(
    act: Activation, sigma_w2: float, sigma_b2: float, q_star: float, c0: float, depth: int
) -> np.ndarray:
    """c^0 = c0, c^{l+1} = R(c^l) with R the GP correlation map at variance q* (length depth+1;
    :func:`correlation_arrays`); from the table of :func:`prepare` when the cell is in it."""
    hit = _prepared.correlations.get((_Keyed(act), sigma_w2, sigma_b2, q_star, depth, c0))
    if hit is None:
        return _correlation_iterate_of(act, sigma_w2, sigma_b2, q_star, c0, depth)
    arrays, column = hit
    return arrays[:, column]


def correlation_theory(cell: Cell, depth: int, c0: float) -> np.ndarray:
    """The GP correlation c^l of two inputs started at c0, over layers 0..depth
    (:func:`correlation_iterate`); NaN unless the cell is on the EoC with q0 = q* and c0 is known."""
    on_eoc = "q_star" in cell.key and math.isclose(cell.q0, cell.key["q_star"])
    if on_eoc and math.isfinite(c0):
        return correlation_iterate(cell.act, cell.sigma_w2, cell.sigma_b2, cell.q0, c0, depth)
    return np.full(depth + 1, np.nan)


def theory_columns(cell: Cell, depth: int, c0: float = math.nan) -> dict[str, np.ndarray]:
    """:func:`cell_theory` as plain arrays over layers 0..depth, by variable name (no Dataset to
    build: the fit table asks for one per cell)."""
    n = cell.width
    base = _layer_values(cell.act, cell.sigma_w2, cell.sigma_b2, cell.q0, depth)
    q, g1, v4 = base["q_gp"], base["g1"], base["v4"]
    s, ds, d2s = base["s"], base["ds"], base["d2s"]
    return {
        "q_gp": q,
        **gp.width_moments(q, g1, v4, n),
        "g1": g1,
        "v4": v4,
        "zf_mean": s + (ds * g1 + 0.5 * d2s * v4) / n,
        "zf_sd": np.sqrt((s * (1.0 - s) + ds**2 * v4) / n),
        "corr": correlation_theory(cell, depth, c0),
        "chi1": base["chi1"],
    }


def cell_theory(cell: Cell, depth: int, c0: float = math.nan) -> xr.Dataset:
    """Predictions over ``layer`` = 0..depth for one cell (see the module docstring): q_gp,
    q_mean, q_sd, v_mean, v_sd, g1, v4, zf_mean, zf_sd, corr (:func:`correlation_theory`), chi1 (of
    the layer below). ``<observable>_mean`` and ``<observable>_sd`` are the cell's variance's."""
    columns = theory_columns(cell, depth, c0)
    return xr.Dataset(
        {k: ("layer", v) for k, v in columns.items()}, coords={"layer": np.arange(depth + 1)}
    )
