"""Infinite-width (Gaussian-process) theory of CReLU / CST networks, and its 1/N corrections.

Notation (SCIENCE.md sections 2-5): z ~ N(0, 1), Phi / n the standard normal CDF / density,
a = tau / sqrt(q), b = (tau + m) / sqrt(q), kappa = 1 for CReLU and 2 for CST (CST is an odd copy of
CReLU, so every even moment and every phi' moment doubles).

All closed-form functions broadcast over ``q`` and over array-valued ``act.tau`` / ``act.m`` /
``sigma_w2`` / ``sigma_b2`` with numpy rules. ``m = inf`` is handled exactly (b = inf), never as a big
number in a formula that multiplies it by zero.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import xarray as xr
from scipy import integrate, optimize
from scipy.special import binom, erf, ndtr

from simulate.activations import Activation

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_B_INF = 1e3
"""Stand-in for b = +inf: n(1e3) == 0 and ndtr(-1e3) == 0 exactly in float64, and 1e3**k * 0 == 0."""


def _npdf(z):
    return _INV_SQRT_2PI * np.exp(-0.5 * np.square(z))


def _kappa(act: Activation) -> float:
    return 1.0 if act.family == "crelu" else 2.0


def _edges(act: Activation, q):
    """(a, b, m_finite, sqrt_q) with b = _B_INF and m_finite = 0 where m = inf."""
    q = np.asarray(q, dtype=float)
    sqrt_q = np.sqrt(q)
    m = np.asarray(act.m, dtype=float)
    finite = np.isfinite(m)
    m_finite = np.where(finite, m, 0.0)
    a = act.tau / sqrt_q
    b = np.where(finite, (act.tau + m_finite) / sqrt_q, _B_INF)
    return a, b, m_finite, sqrt_q


def _pass_probability(a, b):
    """P(a < z < b) = Phi(b) - Phi(a), written with upper tails (a >= 0) to avoid cancellation."""
    return ndtr(-a) - ndtr(-b)


_SERIES_WIDTH = 2.0
"""Width of the pass band [a, a + 2] on which ``_truncated_power_moment`` uses the Hermite series."""


def _raw_power_moments(a, b, p: int):
    """[P_0, ..., P_p](a, b) from the raw moments M_k = int_a^b z^k n(z) dz:

        M_0 = Phi(b) - Phi(a),  M_1 = n(a) - n(b),  M_k = (k-1) M_{k-2} + a^{k-1} n(a) - b^{k-1} n(b),
        P_j = sum_i binom(j, i) (-a)^{j-i} M_i.

    Exact, but the sum cancels as a grows or as b - a shrinks.
    """
    na, nb = _npdf(a), _npdf(b)
    moments = [_pass_probability(a, b), na - nb]
    for k in range(2, p + 1):
        moments.append((k - 1) * moments[k - 2] + a ** (k - 1) * na - b ** (k - 1) * nb)
    return [
        sum(binom(j, i) * (-a) ** (j - i) * moments[i] for i in range(j + 1)) for j in range(p + 1)
    ]


def _hermite_power_moment(a, w, p: int):
    """P_p(a, a + w) for 0 <= w <= 2 from n(a + t) = n(a) sum_j (-1)^j He_j(a) t^j / j!:

    P_p = n(a) sum_j (-1)^j He_j(a) w^{j+p+1} / (j! (j+p+1))   (80 terms).
    """
    a_series = np.minimum(a, 40.0)  # beyond, n(a) = 0 anyway; keeps He_j(a) finite
    hermite_prev, hermite = np.zeros_like(a_series), np.ones_like(a_series)  # He_{-1}, He_0
    power = w ** (p + 1)  # w^{j+p+1} / j!
    series = np.zeros_like(a_series * w)
    for j in range(80):
        series = series + (-1) ** j * hermite * power / (j + p + 1)
        hermite_prev, hermite = hermite, a_series * hermite - j * hermite_prev
        power = power * w / (j + 1)
    return _npdf(a) * series


def _truncated_power_moment(a, b, p: int):
    """P_p(a, b) = int_a^b (z - a)^p n(z) dz, split at c = a + 2 where b > c:

        P_p(a, b) = P_p(a, min(b, c)) + sum_j binom(p, j) 2^{p-j} P_j(c, b),

    the head by the Hermite series (no cancellation however narrow the band), the tail by the raw
    moments, whose cancellation is harmless there: the tail weighs at most ~e^{-2a-2} of the whole.
    Against quadrature, for a in [0, 4] and any band: relative error below 3e-13 (p = 2) and
    2e-12 (p = 4).
    """
    a = np.asarray(a, dtype=float)
    head = _hermite_power_moment(a, np.minimum(b - a, _SERIES_WIDTH), p)
    c = a + _SERIES_WIDTH
    tail_moments = _raw_power_moments(c, np.maximum(b, c), p)  # all exactly 0 when b <= c
    tail = sum(binom(p, j) * _SERIES_WIDTH ** (p - j) * tail_moments[j] for j in range(p + 1))
    return head + tail


def activation_moment(act: Activation, q, p: int = 2):
    """E[phi(sqrt(q) z)^p] for even p, in closed form:

        CReLU:  q^{p/2} int_a^b (z - a)^p n(z) dz + m^p (1 - Phi(b));   CST: twice that.

    For p = 2 this is q [(1 + a^2)(Phi(b) - Phi(a)) - a n(a) + (2a - b) n(b)] + m^2 (1 - Phi(b)).
    """
    if p % 2:
        raise ValueError(f"p={p!r}: must be an even integer (odd moments of CST vanish)")
    a, b, m_finite, sqrt_q = _edges(act, q)
    inner = sqrt_q**p * _truncated_power_moment(a, b, p) + m_finite**p * ndtr(-b)
    return _kappa(act) * inner


def variance_map(act: Activation, q, sigma_w2, sigma_b2):
    """V(q) = sigma_w^2 E[phi(sqrt(q) z)^2] + sigma_b^2."""
    return sigma_w2 * activation_moment(act, q, 2) + sigma_b2


def chi1(act: Activation, q, sigma_w2):
    """chi_1(q) = sigma_w^2 E[phi'(sqrt(q) z)^2] = kappa sigma_w^2 (Phi(b) - Phi(a))."""
    a, b, _, _ = _edges(act, q)
    return sigma_w2 * _kappa(act) * _pass_probability(a, b)


def variance_slope(act: Activation, q, sigma_w2, sigma_b2=0.0):
    """V'(q) = chi_1(q) + sigma_w^2 E[phi phi''] = kappa sigma_w^2 [Phi(b) - Phi(a) - (m / sqrt(q)) n(b)].

    Gaussian integration by parts; phi'' has a Dirac delta of weight -1 at the clip kink x = tau + m
    where phi = m (the kink at tau has phi = 0 and does not count). ``sigma_b2`` does not enter.
    """
    a, b, m_finite, sqrt_q = _edges(act, q)
    return sigma_w2 * _kappa(act) * (_pass_probability(a, b) - m_finite / sqrt_q * _npdf(b))


def variance_curvature(act: Activation, q, sigma_w2, sigma_b2=0.0):
    """V''(q) = kappa sigma_w^2 [ (a n(a) - b n(b)) / (2q) - m n(b) (b^2 - 1) / (2 q^{3/2}) ].

    The q-derivative of ``variance_slope`` (da/dq = -a / 2q, db/dq = -b / 2q, n'(b) = -b n(b)).
    For m = inf it is kappa sigma_w^2 a n(a) / 2q > 0 whenever tau > 0.
    """
    a, b, m_finite, sqrt_q = _edges(act, q)
    q = sqrt_q**2
    nb = _npdf(b)
    pass_part = (a * _npdf(a) - b * nb) / (2.0 * q)
    clip_part = m_finite * nb * (b**2 - 1.0) / (2.0 * q * sqrt_q)
    return sigma_w2 * _kappa(act) * (pass_part - clip_part)


def sparsity(act: Activation, q):
    """GP fraction of exact zeros at variance q: Phi(a) (CReLU), 2 Phi(a) - 1 = erf(a / sqrt 2) (CST)."""
    a, _, _, _ = _edges(act, q)
    return ndtr(a) if act.family == "crelu" else erf(a / math.sqrt(2.0))


# --------------------------------------------------------------------------------------------------
# Edge of Chaos and fixed points of the variance map


@dataclass(frozen=True)
class EdgeOfChaos:
    """Initialisation on the Edge of Chaos at fixed point q*: chi_1(q*) = 1 and V(q*) = q*."""

    sigma_w2: float | np.ndarray
    sigma_b2: float | np.ndarray


def edge_of_chaos(act: Activation, q_star) -> EdgeOfChaos:
    """sigma_w^2 = 1 / E[phi'(sqrt(q*) z)^2],  sigma_b^2 = q* - sigma_w^2 E[phi(sqrt(q*) z)^2].

    Raises ValueError when no unit passes gradient at q* (tau too large) or when sigma_b^2 < 0.
    (For CReLU / CST, sigma_b^2 >= 0 always: with tau = 0 it reduces to the Mills-ratio inequality
    b (1 - Phi(b)) <= n(b); the check guards the general path.)
    """
    q_star = np.asarray(q_star, dtype=float)
    if np.any(~np.isfinite(q_star) | (q_star <= 0)):
        raise ValueError(f"q_star={float(np.min(q_star))!r}: must be finite and > 0")
    passing = chi1(act, q_star, 1.0)
    if np.any(passing <= 0):
        raise ValueError(
            f"{act.family}: no unit passes gradient at q*={q_star} (tau/sqrt(q*) too large), "
            "so chi_1 = 1 cannot be reached"
        )
    sigma_w2 = 1.0 / passing
    sigma_b2 = q_star - sigma_w2 * activation_moment(act, q_star, 2)
    sigma_b2 = np.where(np.abs(sigma_b2) <= 1e-12 * q_star, 0.0, sigma_b2)
    if np.any(sigma_b2 < 0):
        raise ValueError(
            f"sigma_b2={float(np.min(sigma_b2))!r}: the Edge of Chaos at this q* needs a negative "
            "bias variance, which is impossible"
        )
    if sigma_b2.ndim == 0:
        return EdgeOfChaos(float(sigma_w2), float(sigma_b2))
    return EdgeOfChaos(sigma_w2, sigma_b2)


@dataclass(frozen=True)
class FixedPoint:
    """A fixed point q = V(q), its slope V'(q) and its kind: stable |V'| < 1, unstable |V'| > 1,
    or marginal (|V'| = 1 within tolerance: one-sided, like ReLU_tau at the Edge of Chaos)."""

    q: float
    slope: float
    kind: str


def _default_q_max(act: Activation, sigma_w2, sigma_b2) -> float:
    """V <= sigma_w^2 m^2 + sigma_b^2 when clipped; unclipped, look up to 1e4 times the bias scale."""
    if act.clipped:
        return 1.01 * (sigma_w2 * act.m**2 + sigma_b2)
    return 1e4 * max(sigma_b2, 1.0)


def _sign_change_roots(f, grid, values):
    """brentq on every interval of ``grid`` where ``values`` changes sign (or hits 0 exactly)."""
    roots = [float(x) for x, v in zip(grid, values, strict=True) if v == 0.0]
    flips = np.nonzero(np.sign(values[:-1]) * np.sign(values[1:]) < 0)[0]
    roots += [optimize.brentq(f, grid[i], grid[i + 1], xtol=1e-15, rtol=1e-13) for i in flips]
    return roots


def fixed_points(
    act: Activation,
    sigma_w2: float,
    sigma_b2: float,
    q_max: float | None = None,
    *,
    slope_tol: float = 1e-6,
) -> list[FixedPoint]:
    """Every fixed point of V in (0, q_max], sorted, with slope and kind.

    F(q) = V(q) - q is split into monotone pieces at its extrema (the roots of V'(q) = 1, bracketed
    on a fine geometric grid and polished by brentq), so two roots can never share a bracket however
    close they are (as just past a saddle-node). Each piece with a sign change holds one transversal
    root (brentq); an extremum with |F| <= 1e-9 q is a tangent root (F touches 0 without crossing,
    as for ReLU_tau at the EoC). Roots closer than a relative 1e-6 are merged.
    Default q_max: ``_default_q_max``.
    """
    if q_max is None:
        q_max = _default_q_max(act, sigma_w2, sigma_b2)
    grid = np.geomspace(q_max * 1e-8, q_max, 4001)
    if np.all(np.abs(variance_map(act, grid, sigma_w2, sigma_b2) - grid) <= 1e-10 * grid):
        raise ValueError(
            f"{act.label()} with sigma_w2={sigma_w2}, sigma_b2={sigma_b2}: V(q) = q on the whole "
            "range, every q is a fixed point"
        )

    def gap(q):
        return float(variance_map(act, q, sigma_w2, sigma_b2)) - q

    def slope_gap(q):
        return float(variance_slope(act, q, sigma_w2)) - 1.0

    extrema = _sign_change_roots(slope_gap, grid, variance_slope(act, grid, sigma_w2) - 1.0)
    knots = np.union1d(grid, extrema)
    roots = _sign_change_roots(gap, knots, variance_map(act, knots, sigma_w2, sigma_b2) - knots)
    roots += [q for q in extrema if abs(gap(q)) <= 1e-9 * q]
    merged: list[float] = []
    for q in sorted(roots):
        if not merged or q > merged[-1] * (1 + 1e-6):
            merged.append(q)
    points = []
    for q in merged:
        slope = float(variance_slope(act, q, sigma_w2))
        if abs(abs(slope) - 1.0) <= slope_tol:
            kind = "marginal"
        else:
            kind = "stable" if abs(slope) < 1.0 else "unstable"
        points.append(FixedPoint(q, slope, kind))
    return points


def iterate_variance(act: Activation, q0, sigma_w2, sigma_b2, depth: int) -> np.ndarray:
    """q^0 = q0, q^{l+1} = V(q^l) for l < depth; array with a leading axis of length depth + 1.

    An iterate that overflows stays at +inf (the runaway of an unclipped map), without warnings.
    """
    out = [np.asarray(q0, dtype=float)]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for _ in range(depth):
            q = out[-1]
            out.append(np.where(np.isfinite(q), variance_map(act, q, sigma_w2, sigma_b2), np.inf))
    return np.stack(np.broadcast_arrays(*out))


def _secant_excess(act: Activation, q_star: float, m: float) -> float:
    """max over q != q* of (V(q) - q) / (q - q*) for the EoC network of the activation with clip m.

    Negative iff q* is the only fixed point: any other fixed point gives 0, and as q -> q* the ratio
    tends to V'(q*) - 1 < 0. The maximum is located on a geometric grid up to the bound
    sigma_w^2 m^2 + sigma_b^2 on V, then refined by a bounded scalar search.
    """
    clipped = Activation(act.family, act.tau, m)
    eoc = edge_of_chaos(clipped, q_star)

    def ratio(q):
        return (variance_map(clipped, q, eoc.sigma_w2, eoc.sigma_b2) - q) / (q - q_star)

    q_hi = 1.01 * (eoc.sigma_w2 * m**2 + eoc.sigma_b2) + 2 * q_star
    grid = np.geomspace(1e-4 * q_star, q_hi, 801)
    grid = grid[np.abs(grid / q_star - 1.0) > 1e-4]
    values = ratio(grid)
    i = int(np.argmax(values))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
    best = optimize.minimize_scalar(
        lambda q: -ratio(q), bounds=(lo, hi), method="bounded", options={"xatol": 1e-10 * hi}
    )
    return max(float(values[i]), float(-best.fun))


def max_stable_clip(family: str, sparsity: float, q_star: float = 1.0, *, xtol: float = 1e-8):
    """The largest clip level m for which q* is the only fixed point of the EoC variance map.

    Above it, V grows a pair of extra fixed points above q* (saddle-node bifurcation; SCIENCE.md
    section 4). Found by a geometric scan in m for a sign change of ``_secant_excess`` and brentq on
    it to ``xtol`` (absolute, in units of sqrt(q*)). By scale invariance the result is
    sqrt(q*) times its value at q* = 1.
    """
    base = Activation.from_sparsity(family, sparsity, q_star)
    root_q = math.sqrt(q_star)

    def excess(m):
        return _secant_excess(base, q_star, m * root_q)

    lo = 0.25
    if excess(lo) >= 0:
        raise ValueError(f"sparsity={sparsity!r}: extra fixed points exist even at m={lo} sqrt(q*)")
    hi = lo * 1.25
    while excess(hi) < 0:
        lo, hi = hi, hi * 1.25
        if hi > 1e3:
            raise ValueError(
                f"sparsity={sparsity!r}: no bistability found for m up to 1e3 sqrt(q*)"
            )
    return root_q * optimize.brentq(excess, lo, hi, xtol=xtol, rtol=1e-12)


# --------------------------------------------------------------------------------------------------
# Correlation map


def _upper_partial_mean(mu, s, c):
    """E[(X - c)^+] for X ~ N(mu, s^2), s > 0: (mu - c) Phi(d) + s n(d), d = (mu - c) / s."""
    d = (mu - c) / s
    return (mu - c) * ndtr(d) + s * _npdf(d)


def _inner_expectation(code: int, tau: float, m: float, mu, s, derivative: bool):
    """E[phi(X)] (or E[phi'(X)]) for X ~ N(mu, s^2) in closed form; s = 0 gives phi(mu) (phi'(mu)).

    CReLU: E[phi] = E[(X - tau)^+] - E[(X - tau - m)^+],  E[phi'] = Phi((mu-tau)/s) - Phi((mu-tau-m)/s).
    CST: phi(x) = CReLU(x) - CReLU(-x), phi'(x) = CReLU'(x) + CReLU'(-x).
    """
    if s == 0.0:
        act = Activation(("crelu", "cst")[code], tau, m)
        return act.derivative(mu) if derivative else act(mu)

    def half(mu):
        if derivative:
            upper = ndtr((mu - tau - m) / s) if math.isfinite(m) else 0.0
            return ndtr((mu - tau) / s) - upper
        upper = _upper_partial_mean(mu, s, tau + m) if math.isfinite(m) else 0.0
        return _upper_partial_mean(mu, s, tau) - upper

    if code == 0:
        return half(mu)
    return half(mu) + half(-mu) if derivative else half(mu) - half(-mu)


@lru_cache(maxsize=4)
def _gauss_legendre(order: int):
    return np.polynomial.legendre.leggauss(order)


_Z_MAX = 10.0
"""Outer integrals run over |z1| <= 10 (n(10) ~ 8e-23)."""


def _panel_breaks(kinks_z: np.ndarray, rho: float) -> np.ndarray:
    """Breakpoints in z1 for E_{z1}[f(z1) g(rho z1 + ...)]: the outer kinks, the inner ones at k/rho
    with a geometric grading of width sqrt(1 - rho^2)/|rho| * 4^j around them (where g is smooth but
    varies on that scale), and a unit grid."""
    breaks = [np.arange(-_Z_MAX, _Z_MAX + 0.5, 1.0), kinks_z]
    if rho != 0.0:
        inner = kinks_z / rho
        width = math.sqrt(max(1.0 - rho * rho, 0.0)) / abs(rho)
        breaks.append(inner)
        if width > 0:
            offsets = width * 4.0 ** np.arange(-2, 7)
            breaks += [inner[:, None] + offsets, inner[:, None] - offsets]
    flat = np.concatenate([np.ravel(b) for b in breaks])
    return np.unique(np.clip(flat, -_Z_MAX, _Z_MAX))


def _cross_expectation(act: Activation, q: float, rho: float, derivative: bool, order: int = 20):
    """E[f(u1) f(u2)], f = phi or phi', u1 = sqrt(q) z1, u2 = sqrt(q)(rho z1 + sqrt(1 - rho^2) z2):

        = int n(z1) f(sqrt(q) z1) E_{z2}[f(sqrt(q) rho z1 + sqrt(q (1 - rho^2)) z2)] dz1,

    the inner expectation in closed form (``_inner_expectation``) and the outer one by composite
    Gauss-Legendre on panels split at every kink (``_panel_breaks``).
    """
    sqrt_q = math.sqrt(q)
    kinks_z = np.asarray(act.kinks) / sqrt_q
    breaks = _panel_breaks(kinks_z, rho)
    nodes, weights = _gauss_legendre(order)
    lo, hi = breaks[:-1, None], breaks[1:, None]
    z1 = (0.5 * (hi - lo) * nodes + 0.5 * (hi + lo)).ravel()
    w = (0.5 * (hi - lo) * weights).ravel()
    x1 = sqrt_q * z1
    outer = act.derivative(x1) if derivative else act(x1)
    s = sqrt_q * math.sqrt(max(1.0 - rho * rho, 0.0))
    inner = _inner_expectation(act.code, act.tau, act.m, sqrt_q * rho * z1, s, derivative)
    return float(np.sum(w * _npdf(z1) * outer * inner))


def _scalar_act_check(act: Activation):
    if np.ndim(act.tau) or np.ndim(act.m):
        raise ValueError("act: correlation functions take a scalar activation (loop over a grid)")


def _check_rho(rho):
    rho = np.asarray(rho, dtype=float)
    if np.any(~(np.abs(rho) <= 1.0)):
        raise ValueError(f"rho={float(rho[~(np.abs(rho) <= 1)].flat[0])!r}: must be in [-1, 1]")
    return rho


def correlation_map(act: Activation, rho, q_star, sigma_w2, sigma_b2):
    """R(rho) = (sigma_w^2 E[phi(u1) phi(u2)] + sigma_b^2) / q*, both inputs at variance q*."""
    _scalar_act_check(act)
    rho = _check_rho(rho)
    cross = np.vectorize(lambda r: _cross_expectation(act, float(q_star), float(r), False))
    return (sigma_w2 * cross(rho) + sigma_b2) / q_star


def correlation_slope(act: Activation, rho, q_star, sigma_w2, sigma_b2=0.0):
    """R'(rho) = sigma_w^2 E[phi'(u1) phi'(u2)] (a bivariate-normal rectangle probability);
    R'(1) = chi_1(q*). ``sigma_b2`` does not enter."""
    _scalar_act_check(act)
    rho = _check_rho(rho)
    cross = np.vectorize(lambda r: _cross_expectation(act, float(q_star), float(r), True))
    return sigma_w2 * cross(rho)


def correlation_fixed_point(act: Activation, q_star, sigma_w2, sigma_b2) -> float:
    """The attracting fixed point c* of R in [-1, 1]: the largest root of R(c) = c below 1 with
    |R'(c)| < 1 if there is one (chaotic phase), else 1 (ordered phase and the Edge of Chaos)."""
    grid = np.linspace(-1.0, 1.0 - 1e-6, 401)
    gap = correlation_map(act, grid, q_star, sigma_w2, sigma_b2) - grid

    def f(c):
        return float(correlation_map(act, c, q_star, sigma_w2, sigma_b2)) - c

    for c in sorted(_sign_change_roots(f, grid, gap), reverse=True):
        if abs(float(correlation_slope(act, c, q_star, sigma_w2))) < 1.0:
            return c
    return 1.0


def _depth_scale(slope):
    """-1 / ln(slope): the number of layers over which a perturbation decays by e; inf for a
    marginal or unstable slope (>= 1 - 1e-12, the resolution of slopes computed by quadrature)."""
    slope = np.asarray(slope, dtype=float)
    decaying = slope < 1.0 - 1e-12
    with np.errstate(divide="ignore"):
        return np.where(decaying, -1.0 / np.log(np.where(decaying, slope, 0.5)), np.inf)


def xi_q(act: Activation, q_star, sigma_w2, sigma_b2=0.0):
    """Variance depth scale xi_q = -1 / ln V'(q*) (inf when V'(q*) >= 1)."""
    return _depth_scale(variance_slope(act, q_star, sigma_w2))


def xi_c(act: Activation, q_star, sigma_w2, sigma_b2):
    """Correlation depth scale xi_c = -1 / ln R'(c*) (inf when R'(c*) >= 1, e.g. c* = 1 on the EoC)."""
    c_star = correlation_fixed_point(act, q_star, sigma_w2, sigma_b2)
    return float(_depth_scale(correlation_slope(act, c_star, q_star, sigma_w2)))


# --------------------------------------------------------------------------------------------------
# Finite width


def finite_width(act: Activation, sigma_w2, sigma_b2, q0, depth: int, width: int) -> xr.Dataset:
    """First-order 1/N theory of the layer variances of one input (SCIENCE.md section 5).

    With G^l the conditional variance of layer l given layer l-1, and layer 0 exactly N(0, q0):

        q^{l+1}  = V(q^l),                                   q^0 = q0
        G1^{l+1} = V'(q^l) G1^l + (1/2) V''(q^l) V4^l,        G1^0 = 0      (E[G^l]   = q^l + G1^l / N)
        V4^{l+1} = V'(q^l)^2 V4^l + sigma_w^4 Var[phi(x)^2],  V4^0 = 0      (Var[G^l] = V4^l / N)

    with x ~ N(0, q^l). The empirical q_hat = (1/N) sum_i h_i^2 then has mean q^l + G1^l / N and
    standard deviation sqrt((2 (q^l)^2 + V4^l) / N).
    """
    if int(depth) != depth or depth < 0:
        raise ValueError(f"depth={depth!r}: must be an integer >= 0")
    if int(width) != width or width < 1:
        raise ValueError(f"width={width!r}: must be an integer >= 1")
    q = np.empty(depth + 1)
    g1 = np.zeros(depth + 1)
    v4 = np.zeros(depth + 1)
    q[0] = q0
    with np.errstate(over="ignore", invalid="ignore"):
        for l in range(depth):
            slope = variance_slope(act, q[l], sigma_w2)
            curvature = variance_curvature(act, q[l], sigma_w2)
            phi2, phi4 = activation_moment(act, q[l], 2), activation_moment(act, q[l], 4)
            q[l + 1] = variance_map(act, q[l], sigma_w2, sigma_b2)
            g1[l + 1] = slope * g1[l] + 0.5 * curvature * v4[l]
            v4[l + 1] = slope**2 * v4[l] + sigma_w2**2 * (phi4 - phi2**2)
        sd = np.sqrt((2.0 * q**2 + v4) / width)
    layer = np.arange(depth + 1)
    attrs = {"units": "pre-activation variance"}
    return xr.Dataset(
        {
            "q_gp": ("layer", q, {**attrs, "long_name": "GP variance iterate q^l"}),
            "q_mean": (
                "layer",
                q + g1 / width,
                {**attrs, "long_name": "1/N-corrected mean of q_hat"},
            ),
            "q_sd": ("layer", sd, {**attrs, "long_name": "predicted std of q_hat over networks"}),
            "g1": ("layer", g1, {"long_name": "O(1/N) mean shift coefficient G1"}),
            "v4": ("layer", v4, {"long_name": "O(1/N) variance coefficient V4"}),
        },
        coords={"layer": layer},
        attrs={"activation": act.label(), "width": int(width)},
    )


# --------------------------------------------------------------------------------------------------
# Generic quadrature path (any elementwise phi; for cross-checks and other activations)


def gaussian_expectation(f, q: float, kinks=()) -> float:
    """E[f(sqrt(q) z)] by adaptive quadrature over |z| <= 12 (n(12) ~ 2e-32), split at the kinks
    of f (given in x units)."""
    sqrt_q = math.sqrt(q)
    cuts = sorted({k / sqrt_q for k in kinks if abs(k / sqrt_q) < 12.0})
    edges = [-12.0, *cuts, 12.0]
    return sum(
        integrate.quad(
            lambda z: f(sqrt_q * z) * _INV_SQRT_2PI * math.exp(-0.5 * z * z),
            lo,
            hi,
            epsabs=0.0,
            epsrel=1e-13,
            limit=200,
        )[0]
        for lo, hi in itertools.pairwise(edges)
    )


def gaussian_pair_expectation(f, g, q: float, rho: float, kinks=()) -> float:
    """E[f(u1) g(u2)], u1 = sqrt(q) z1, u2 = sqrt(q)(rho z1 + sqrt(1-rho^2) z2), by nested adaptive
    quadrature, each level split at the kinks (x units) of f and g; the outer level also at k / rho,
    where the inner expectation changes fast when rho is close to +-1."""
    sqrt_q = math.sqrt(q)
    s = math.sqrt(max(1.0 - rho * rho, 0.0)) * sqrt_q

    def inner(z1):
        mean = rho * sqrt_q * z1
        if s == 0.0:
            return g(mean)
        return gaussian_expectation(lambda x: g(mean + x), s * s, [k - mean for k in kinks])

    outer_kinks = [*kinks, *([k / rho for k in kinks] if rho else [])]
    return gaussian_expectation(lambda x: f(x) * inner(x / sqrt_q), q, outer_kinks)
