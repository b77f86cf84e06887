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
width except through the explicit 1/N factors, so the recursions run once per parameter cell.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import xarray as xr

from simulate import gp
from simulate.activations import Activation

from ._store import Cell


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
    """(s, ds/dq, d^2s/dq^2) of the GP sparsity at variance q.

    s(q) = sum over zero pieces [lo, hi) of Phi(hi / sqrt q) - Phi(lo / sqrt q), so each finite edge
    c of a zero piece, with sign +1 for an upper edge and -1 for a lower one, contributes with
    a = c / sqrt(q) (da/dq = -a / 2q, d(a n(a))/da = (1 - a^2) n(a)):

        s'  += -sign a n(a) / (2q),     s'' += sign a n(a) (3 - a^2) / (4 q^2).

    (CReLU: one edge tau, s = Phi(a); CST: edges -tau and tau, s = 2 Phi(a) - 1.)
    """
    q = np.asarray(q, dtype=float)
    pieces = act.pieces
    zero = (pieces.slope == 0.0) & (pieces.anchor_y == 0.0)  # phi = 0 there
    edges = np.concatenate([pieces.hi[zero], pieces.lo[zero]])
    signs = np.concatenate([np.ones(zero.sum()), -np.ones(zero.sum())])
    finite = np.isfinite(edges)
    edges, signs = edges[finite], signs[finite]
    qq = q[..., None]
    a = edges / np.sqrt(qq)
    density = np.exp(-0.5 * a * a) / math.sqrt(2.0 * math.pi)
    first = np.sum(-signs * a * density / (2.0 * qq), axis=-1)
    second = np.sum(signs * a * density * (3.0 - a * a) / (4.0 * qq * qq), axis=-1)
    return gp.sparsity(act, q), first, second


# -- per-cell predictions -----------------------------------------------------------------------


@activation_cache(maxsize=512)
def layer_theory(
    act: Activation, sigma_w2: float, sigma_b2: float, q0: float, depth: int
) -> xr.Dataset:
    """Width-free coefficients per layer: q, G1, V4, s, s', s'', chi_1(q^{l-1})."""
    with np.errstate(all="ignore"):  # iterates may overflow (unclipped) or vanish (ordered)
        fw = gp.finite_width(act, sigma_w2, sigma_b2, q0, depth, 1)
        q = fw["q_gp"].values
        s, ds, d2s = sparsity_derivatives(act, q)
        chi1 = np.concatenate([[np.nan], gp.chi1(act, q[:-1], sigma_w2)])
    extra = {"s": s, "ds": ds, "d2s": d2s, "chi1": chi1}
    return fw[["q_gp", "g1", "v4"]].assign({k: ("layer", v) for k, v in extra.items()})


@activation_cache(maxsize=512)
def correlation_iterate(
    act: Activation, sigma_w2: float, sigma_b2: float, q_star: float, c0: float, depth: int
) -> np.ndarray:
    """c^0 = c0, c^{l+1} = R(c^l) with R the GP correlation map at variance q* (length depth+1)."""
    out = np.empty(depth + 1)
    out[0] = c0
    for l in range(depth):
        rho = min(max(out[l], -1.0), 1.0)
        out[l + 1] = float(gp.correlation_map(act, rho, q_star, sigma_w2, sigma_b2))
    return out


def correlation_theory(cell: Cell, depth: int, c0: float) -> np.ndarray:
    """The GP correlation c^l of two inputs started at c0, over layers 0..depth
    (:func:`correlation_iterate`); NaN unless the cell is on the EoC with q0 = q* and c0 is known."""
    on_eoc = "q_star" in cell.key and math.isclose(cell.q0, cell.key["q_star"])
    if on_eoc and math.isfinite(c0):
        return correlation_iterate(cell.act, cell.sigma_w2, cell.sigma_b2, cell.q0, c0, depth)
    return np.full(depth + 1, np.nan)


def cell_theory(cell: Cell, depth: int, c0: float = math.nan) -> xr.Dataset:
    """Predictions over ``layer`` = 0..depth for one cell (see the module docstring): q_gp,
    q_mean, q_sd, v_mean, v_sd, g1, v4, zf_mean, zf_sd, corr (:func:`correlation_theory`), chi1 (of
    the layer below). ``<observable>_mean`` and ``<observable>_sd`` are the cell's variance's."""
    act, n = cell.act, cell.width
    base = layer_theory(act, cell.sigma_w2, cell.sigma_b2, cell.q0, depth)
    q, g1, v4 = base["q_gp"], base["g1"], base["v4"]
    s, ds, d2s = base["s"], base["ds"], base["d2s"]
    return xr.Dataset(
        {
            "q_gp": q,
            "q_mean": q + g1 / n,
            "q_sd": np.sqrt((2.0 * q**2 + v4) / n),
            "v_mean": q + g1 / n,
            "v_sd": np.sqrt(v4 / n),
            "g1": g1,
            "v4": v4,
            "zf_mean": s + (ds * g1 + 0.5 * d2s * v4) / n,
            "zf_sd": np.sqrt((s * (1.0 - s) + ds**2 * v4) / n),
            "corr": ("layer", correlation_theory(cell, depth, c0)),
            "chi1": base["chi1"],
        }
    )
