"""GP and 1/N predictions for one stored cell, on the store's own layers.

For a cell with activation phi, (sigma_w^2, sigma_b^2), initial variance q0 and width N
(SCIENCE.md sections 3-5; G^l is the conditional variance of layer l, E[G] = q + G1/N,
Var[G] = V4/N, both from ``simulate.gp.finite_width``):

    q_hat^l      mean q^l + G1^l / N,   sd sqrt((2 (q^l)^2 + V4^l) / N)
    zero_frac^l  mean s(q^l) + [s'(q^l) G1^l + s''(q^l) V4^l / 2] / N,
                 sd sqrt([s (1 - s) + s'(q^l)^2 V4^l] / N)
    corr^l       c^0 = c0, c^{l+1} = R(c^l)  (R at variance q*; only when q0 = q*)
    gain^l       chi_1(q^{l-1})              (mean of the tangent gain |t^l|^2 / |t^{l-1}|^2 = e^log_gain;
                                             undefined at l = 0)

The zero fraction is the fraction of N units with h_i in the dead set, so given G it is a binomial
proportion with mean s(G); averaging over G to first order gives the two lines above (s', s'' are
q-derivatives of the GP sparsity, written below in closed form). Everything is independent of
the width except through the explicit 1/N factors, so the recursions run once per parameter cell.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import xarray as xr

from simulate import gp
from simulate.activations import Activation

from ._store import Cell


def sparsity_derivatives(act: Activation, q):
    """(s, ds/dq, d^2s/dq^2) of the GP sparsity at variance q. With a = tau/sqrt(q), kappa = 1
    (CReLU: s = Phi(a)) or 2 (CST: s = 2 Phi(a) - 1):

        s'  = -kappa a n(a) / (2q),     s'' = kappa a n(a) (3 - a^2) / (4 q^2).
    """
    q = np.asarray(q, dtype=float)
    kappa = 1.0 if act.family == "crelu" else 2.0
    a = act.tau / np.sqrt(q)
    density = np.exp(-0.5 * a * a) / math.sqrt(2.0 * math.pi)
    s = gp.sparsity(act, q)
    first = -kappa * a * density / (2.0 * q)
    second = kappa * a * density * (3.0 - a * a) / (4.0 * q * q)
    return s, first, second


@lru_cache(maxsize=512)
def layer_theory(
    family: str, tau: float, m: float, sigma_w2: float, sigma_b2: float, q0: float, depth: int
) -> xr.Dataset:
    """Width-free coefficients per layer: q, G1, V4, s, s', s'', chi_1(q^{l-1})."""
    act = Activation(family, tau, m)
    with np.errstate(all="ignore"):  # iterates may overflow (unclipped) or vanish (ordered)
        fw = gp.finite_width(act, sigma_w2, sigma_b2, q0, depth, 1)
        q = fw["q_gp"].values
        s, ds, d2s = sparsity_derivatives(act, q)
        chi1 = np.concatenate([[np.nan], gp.chi1(act, q[:-1], sigma_w2)])
    extra = {"s": s, "ds": ds, "d2s": d2s, "chi1": chi1}
    return fw[["q_gp", "g1", "v4"]].assign({k: ("layer", v) for k, v in extra.items()})


@lru_cache(maxsize=512)
def correlation_iterate(
    family: str,
    tau: float,
    m: float,
    sigma_w2: float,
    sigma_b2: float,
    q_star: float,
    c0: float,
    depth: int,
) -> np.ndarray:
    """c^0 = c0, c^{l+1} = R(c^l) with R the GP correlation map at variance q* (length depth+1)."""
    act = Activation(family, tau, m)
    out = np.empty(depth + 1)
    out[0] = c0
    for l in range(depth):
        rho = min(max(out[l], -1.0), 1.0)
        out[l + 1] = float(gp.correlation_map(act, rho, q_star, sigma_w2, sigma_b2))
    return out


def cell_theory(cell: Cell, depth: int, c0: float = math.nan) -> xr.Dataset:
    """Predictions over ``layer`` for one cell (see the module docstring): q_gp, q_mean, q_sd,
    g1, v4, zf_mean, zf_sd, corr (NaN unless on the EoC with q0 = q*), chi1 (of the layer below)."""
    act, n = cell.act, cell.width
    base = layer_theory(act.family, act.tau, act.m, cell.sigma_w2, cell.sigma_b2, cell.q0, depth)
    q, g1, v4 = base["q_gp"], base["g1"], base["v4"]
    s, ds, d2s = base["s"], base["ds"], base["d2s"]
    on_eoc = "q_star" in cell.key and math.isclose(cell.q0, cell.key["q_star"])
    corr = (
        correlation_iterate(
            act.family, act.tau, act.m, cell.sigma_w2, cell.sigma_b2, cell.q0, c0, depth
        )
        if on_eoc and math.isfinite(c0)
        else np.full(depth + 1, np.nan)
    )
    return xr.Dataset(
        {
            "q_gp": q,
            "q_mean": q + g1 / n,
            "q_sd": np.sqrt((2.0 * q**2 + v4) / n),
            "g1": g1,
            "v4": v4,
            "zf_mean": s + (ds * g1 + 0.5 * d2s * v4) / n,
            "zf_sd": np.sqrt((s * (1.0 - s) + ds**2 * v4) / n),
            "corr": ("layer", corr),
            "chi1": base["chi1"],
        }
    )
