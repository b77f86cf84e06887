"""The sparsity-inducing activation families and their Numba kernels.

Two families, each with a threshold ``tau >= 0`` and a clip level ``m > 0`` (``m = inf``: unclipped):

    CReLU_{tau,m}(x) = min(max(x - tau, 0), m)
    CST_{tau,m}(x)   = sign(x) * min(max(|x| - tau, 0), m)

``m = inf`` gives shifted ReLU / soft thresholding, ``tau = 0, m = inf`` gives ReLU (CReLU) and the
identity (CST). Both are piecewise linear with slope 1 on the "pass" set {tau < x < tau + m}
(and its mirror image for CST) and 0 elsewhere; they are exactly zero on the "dead" set
{x <= tau} (CReLU) or {|x| <= tau} (CST).

One immutable :class:`Activation` serves the Gaussian-process theory (``simulate.gp``), the Numba
kernels below (through :attr:`Activation.code`) and the stored coordinates of a sweep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit
from scipy.special import erfinv, ndtri

FAMILIES = ("crelu", "cst")
"""Family names, in the order of their integer kernel codes."""

CRELU, CST = 0, 1


@njit(cache=True, nogil=True)
def phi(x, code, tau, m):
    """phi(x) for family ``code`` (0 = CReLU, 1 = CST); ``m`` may be ``inf``."""
    if code == CRELU:
        return min(max(x - tau, 0.0), m)
    mag = min(max(abs(x) - tau, 0.0), m)
    return mag if x >= 0.0 else -mag


@njit(cache=True, nogil=True)
def dphi(x, code, tau, m):
    """phi'(x): 1 on the pass set tau < x < tau + m (CReLU; |x| for CST), else 0."""
    y = x if code == CRELU else abs(x)
    return 1.0 if tau < y < tau + m else 0.0


def _as_param(name: str, value, ok, allowed: str):
    """``value`` as a float (scalar) or float array, or ValueError naming the first bad entry."""
    arr = np.asarray(value, dtype=float)
    with np.errstate(invalid="ignore"):
        bad = ~ok(arr)
    if np.any(bad):
        raise ValueError(f"{name}={float(arr[bad].flat[0])!r}: {allowed}")
    return float(arr) if arr.ndim == 0 else arr


@dataclass(frozen=True)
class Activation:
    """A member of the CReLU / CST families.

    Parameters
    ----------
    family : "crelu" or "cst"
    tau : threshold, finite and >= 0
    m : clip level, > 0, or ``math.inf`` for the unclipped activation

    ``tau`` and ``m`` may be numpy arrays (a parameter grid, broadcast by ``simulate.gp``); the Numba
    kernels and the engines take scalar members only.
    """

    family: str
    tau: float
    m: float = math.inf

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family={self.family!r}: must be one of {', '.join(FAMILIES)}")
        tau = _as_param(
            "tau", self.tau, lambda t: np.isfinite(t) & (t >= 0), "must be finite, >= 0"
        )
        m = _as_param("m", self.m, lambda m: m > 0, "must be > 0 (or inf for no clipping)")
        object.__setattr__(self, "tau", tau)
        object.__setattr__(self, "m", m)

    @classmethod
    def from_sparsity(
        cls, family: str, sparsity: float, q_star: float, m: float = math.inf
    ) -> Activation:
        """The member whose GP sparsity at variance ``q_star`` equals ``sparsity``.

        Sparsity is P(phi(sqrt(q*) z) = 0), z ~ N(0, 1), so (SCIENCE.md section 3)

            CReLU: s = Phi(tau / sqrt(q*))          ->  tau = sqrt(q*) Phi^{-1}(s),        s in [1/2, 1)
            CST:   s = 2 Phi(tau / sqrt(q*)) - 1    ->  tau = sqrt(q*) Phi^{-1}((1+s)/2),  s in [0, 1)

        (the CST inverse is computed as sqrt(2 q*) erfinv(s), exact also for s near 0).

        Clipping does not change the zero set, so ``m`` plays no part.
        """
        if family not in FAMILIES:
            raise ValueError(f"family={family!r}: must be one of {', '.join(FAMILIES)}")
        q_star = _as_param(
            "q_star", q_star, lambda q: np.isfinite(q) & (q > 0), "must be finite, > 0"
        )
        low = 0.5 if family == "crelu" else 0.0
        s = _as_param(
            "sparsity",
            sparsity,
            lambda s: (s >= low) & (s < 1),
            f"must be in [{low}, 1) for {family}",
        )
        a = ndtri(s) if family == "crelu" else math.sqrt(2.0) * erfinv(s)
        tau = np.maximum(a, 0.0) * np.sqrt(q_star)
        return cls(family, tau, m)

    @property
    def code(self) -> int:
        """Integer family code understood by the Numba kernels :func:`phi` and :func:`dphi`."""
        return FAMILIES.index(self.family)

    @property
    def clipped(self) -> bool:
        """True when m is finite (for a scalar member)."""
        return math.isfinite(self.m)

    @property
    def kinks(self) -> tuple[float, ...]:
        """Points where phi is not differentiable, sorted (scalar member; for splitting quadratures)."""
        right = (self.tau, self.tau + self.m) if self.clipped else (self.tau,)
        if self.family == "crelu":
            return right
        return tuple(sorted({-k for k in right} | set(right)))

    def __call__(self, x):
        """phi(x), elementwise over numpy arrays (scalar member)."""
        return _elementwise(x, self, derivative=False)

    def derivative(self, x):
        """phi'(x), elementwise over numpy arrays (scalar member; 0 at the kinks themselves)."""
        return _elementwise(x, self, derivative=True)

    def label(self) -> str:
        """Human-readable name, e.g. ``CReLU(tau=1.04, m=1)`` or ``ST(tau=1.44)``."""
        base = {"crelu": "ReLU", "cst": "ST"}[self.family]
        name = ("C" + base) if self.clipped else base
        params = [f"tau={self.tau:.3g}"] + ([f"m={self.m:.3g}"] if self.clipped else [])
        return f"{name}({', '.join(params)})"


@njit(cache=True)
def _apply(x, code, tau, m, derivative):
    """phi (or phi') of every entry of a 1-D float array."""
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = dphi(x[i], code, tau, m) if derivative else phi(x[i], code, tau, m)
    return out


def _elementwise(x, act: Activation, derivative: bool):
    x = np.asarray(x, dtype=float)
    flat = _apply(np.ascontiguousarray(x).ravel(), act.code, act.tau, act.m, derivative)
    return flat.reshape(x.shape)
