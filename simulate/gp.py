"""Infinite-width (Gaussian-process) theory of networks with any continuous piecewise-linear
activation, and its 1/N corrections: the layer variances and zero fraction at width N, the onset of
the instability and the escape depth near a one-sided fixed point. The derivations are in
docs/theory.md; ``analysis.theory`` only maps a store's cells onto these functions.

Notation: z ~ N(0, 1), Phi / n the standard normal CDF / density, x = sqrt(q) z a pre-activation of
variance q. The activation (``simulate.activations.Activation``) is split into pieces [lo, hi) on which

    phi(x) = y + s (x - x_a),     x_a in {lo, hi} the anchor, y = phi(x_a), s the slope,

so that in z units, with alpha = lo / sqrt(q), beta = hi / sqrt(q), zeta = x_a / sqrt(q) and
w = z - zeta, phi = y + s sqrt(q) w. Every Gaussian expectation of the maps is then a sum over pieces
of truncated moments

    E[w^k 1{alpha < z < beta}] = P_k(alpha, beta)               anchored at the lower end,
                               = (-1)^k P_k(-beta, -alpha)       anchored at the upper end,

with P_k(a, b) = int_a^b (z - a)^k n(z) dz (``_truncated_power_moment``), plus, for V' and V'', the
Dirac deltas of phi'' at the knots: phi'' = sum_j (s_j+ - s_j-) delta(x - k_j).

Two numerical conventions keep the closed forms exact to rounding:
- z-bounds are clamped to +-``_Z_INF`` (1e3): n(1e3) = Phi(-1e3) = 0 exactly in float64, so an infinite
  bound and any finite one beyond it give the same, and no inf * 0 arises;
- sums over pieces (and knots) are taken in mirror pairs from the outside in (``_mirror_sum``), so
  that an odd or even activation gives exactly twice its half-line value: the result is then the same
  to the last bit whichever way a symmetric shape is described.

All closed-form functions broadcast over ``q`` and over a batch of activations (array-valued tau or m
of a named family) with numpy rules.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np
import xarray as xr
from scipy import integrate, optimize
from scipy.special import binom, erf, ndtr

from simulate.activations import Activation

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_Z_INF = 1e3
"""Stand-in for an infinite z-bound: n(1e3) == 0 and ndtr(-1e3) == 0 exactly in float64."""


def _npdf(z):
    return _INV_SQRT_2PI * np.exp(-0.5 * np.square(z))


def _mirror_sum(terms):
    """terms[0] + terms[-1], then + (terms[1] + terms[-2]), ..., the middle one (if any) last.

    For a symmetric activation mirror pieces give equal terms, and t + t = 2t exactly, so the sum is
    exactly twice the half-line sum (see the module docstring)."""
    n = len(terms)
    total = 0.0
    for i in range(n // 2):
        total = total + (terms[i] + terms[n - 1 - i])
    return total + terms[n // 2] if n % 2 else total


def _last_axis(values):
    """The last axis (pieces or knots) as a list, for ``_mirror_sum``."""
    return [values[..., i] for i in range(values.shape[-1])]


def _times(coefficient, moment):
    """coefficient * moment, 0 where the moment is 0 (a piece beyond the float64 range of the
    Gaussian, where the coefficient may have overflowed: inf * 0 must count as 0)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.where(moment == 0.0, 0.0, coefficient * moment)


@dataclass(frozen=True)
class _ZPieces:
    """The pieces of ``act`` at variance q in z units (arrays ..., P): bounds alpha, beta, anchor
    zeta, value y and slope s; ``upper`` marks pieces anchored at their upper end."""

    alpha: np.ndarray
    beta: np.ndarray
    upper: np.ndarray
    y: np.ndarray
    s: np.ndarray
    sqrt_q: np.ndarray

    @classmethod
    def of(cls, act: Activation, q):
        """The pieces at variance q. The bounds are clamped to +-``_Z_INF``, and so is the anchor,
        which is one of them: a piece anchored beyond reach (a ray split where it crosses 0 far
        out, |x| > 1e3 sqrt(q)) is re-anchored at its other end, y = y_a + s (x_other - x_a),
        when that end is finite (else the piece has no mass in reach and its anchor is moot)."""
        sqrt_q = np.sqrt(np.asarray(q, dtype=float))[..., None]
        p = act.pieces
        upper = p.anchor_x == p.hi
        other = np.where(upper, p.lo, p.hi)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            alpha = np.clip(p.lo / sqrt_q, -_Z_INF, _Z_INF)
            beta = np.clip(p.hi / sqrt_q, -_Z_INF, _Z_INF)
            refit = (np.abs(p.anchor_x / sqrt_q) > _Z_INF) & np.isfinite(other)
            y = np.where(refit, p.anchor_y + p.slope * (other - p.anchor_x), p.anchor_y)
        return cls(alpha, beta, upper != refit, y, p.slope, sqrt_q)

    def probability(self):
        """P(alpha < z < beta) per piece, from the tail that avoids cancellation."""
        a, b = self.alpha, self.beta
        below_b, above_a = ndtr(b), ndtr(-a)
        return np.select(
            [a <= -_Z_INF, b >= _Z_INF, a >= 0.0, b <= 0.0],
            [below_b, above_a, above_a - ndtr(-b), below_b - ndtr(a)],
            0.5 * (erf(b / math.sqrt(2.0)) - erf(a / math.sqrt(2.0))),
        )

    def take(self, cols) -> _ZPieces:
        """The pieces ``cols`` only."""
        return _ZPieces(
            *(v[..., cols] for v in (self.alpha, self.beta, self.upper, self.y, self.s)),
            self.sqrt_q,
        )

    def anchored_moment(self, k: int):
        """E[w^k 1{piece}], w = z - zeta (module docstring); k = 0 is ``probability``."""
        if k == 0:
            return self.probability()
        lo = np.where(self.upper, -self.beta, self.alpha)
        hi = np.where(self.upper, -self.alpha, self.beta)
        sign = np.where(self.upper, (-1.0) ** k, 1.0)
        return sign * _truncated_power_moment(lo, hi, k)


_SERIES_WIDTH = 2.0
"""Width of the pass band [a, a + 2] on which ``_truncated_power_moment`` uses the Hermite series."""


def _raw_power_moments(a, b, p: int):
    """[P_0, ..., P_p](a, b) from the raw moments M_k = int_a^b z^k n(z) dz:

        M_0 = Phi(b) - Phi(a),  M_1 = n(a) - n(b),  M_k = (k-1) M_{k-2} + a^{k-1} n(a) - b^{k-1} n(b),
        P_j = sum_i binom(j, i) (-a)^{j-i} M_i.

    Exact, but the sum cancels as a grows or as b - a shrinks.
    """
    na, nb = _npdf(a), _npdf(b)
    moments = [ndtr(-a) - ndtr(-b), na - nb]
    for k in range(2, p + 1):
        moments.append((k - 1) * moments[k - 2] + a ** (k - 1) * na - b ** (k - 1) * nb)
    return [
        sum(binom(j, i) * (-a) ** (j - i) * moments[i] for i in range(j + 1)) for j in range(p + 1)
    ]


def _hermite_power_moment(a, w, p: int):
    """P_p(a, a + w) for 0 <= w <= 2 from n(a + t) = n(a) sum_j (-1)^j He_j(a) t^j / j!:

    P_p = n(a) sum_j (-1)^j He_j(a) w^{j+p+1} / (j! (j+p+1))   (80 terms, :func:`_hermite_series`).
    """
    return _npdf(a) * _hermite_series(a, w, p)


_HERMITE_BLOCK = 64
"""Elements advanced together through the recursions of ``_hermite_series_blocks``."""


def _hermite_series(a, w, p: int):
    """sum_{j<80} (-1)^j He_j(a') w^{j+p+1} / (j! (j+p+1)), a' = min(a, 40) (beyond, n(a) = 0 anyway;
    keeps He_j(a') finite), elementwise over a and w broadcast (``_hermite_series_blocks``)."""
    a, w = np.broadcast_arrays(np.asarray(a, dtype=float), np.asarray(w, dtype=float))
    series = np.empty(a.shape)
    _hermite_series_blocks(a.ravel(), w.ravel(), p, series.reshape(-1))
    return series


@numba.njit(cache=True)
def _hermite_series_blocks(a, w, p, series):
    """``_hermite_series`` of the 1-d arrays a, w into ``series``, with He_{j+1} = a' He_j - j He_{j-1}.

    Each element is the same sequence of float operations as a scalar loop over j would do, but
    ``_HERMITE_BLOCK`` elements advance through j together: their recursions (with a division in
    the loop-carried one) are independent, so the CPU overlaps them, ~7 times faster than one
    element after another on a 4,001-point grid, bit for bit the same."""
    clamped = np.empty(_HERMITE_BLOCK)
    width = np.empty(_HERMITE_BLOCK)
    hermite_prev = np.empty(_HERMITE_BLOCK)  # He_{j-1}
    hermite = np.empty(_HERMITE_BLOCK)  # He_j
    power = np.empty(_HERMITE_BLOCK)  # w^{j+p+1} / j!
    total = np.empty(_HERMITE_BLOCK)
    for start in range(0, a.size, _HERMITE_BLOCK):
        count = min(_HERMITE_BLOCK, a.size - start)
        for i in range(count):
            clamped[i] = 40.0 if a[start + i] > 40.0 else a[start + i]
            width[i] = w[start + i]
            hermite_prev[i], hermite[i] = 0.0, 1.0
            # computed as numpy's w ** k is (a product for k = 2, else libm pow), so the result is
            # bit for bit the array expression's
            power[i] = width[i] * width[i] if p == 1 else math.pow(width[i], float(p + 1))
            total[i] = 0.0
        sign = 1.0  # (-1)^j
        for j in range(80):
            for i in range(count):
                total[i] = total[i] + sign * hermite[i] * power[i] / (j + p + 1)
                hermite_prev[i], hermite[i] = (
                    hermite[i],
                    clamped[i] * hermite[i] - j * hermite_prev[i],
                )
                power[i] = power[i] * width[i] / (j + 1)
            sign = -sign
        series[start : start + count] = total[:count]


def _truncated_power_moment(a, b, p: int):
    """P_p(a, b) = int_a^b (z - a)^p n(z) dz, split at c = a + 2 where b > c:

        P_p(a, b) = P_p(a, min(b, c)) + sum_j binom(p, j) 2^{p-j} P_j(c, b),

    the head by the Hermite series (no cancellation however narrow the band), the tail by the raw
    moments, whose cancellation is harmless there: the tail weighs at most ~e^{-2a-2} of the whole.
    Against quadrature, for a in [0, 4] and any band: relative error below 3e-13 (p = 2) and
    2e-12 (p = 4).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size == 1 and b.size == 1:  # numpy scalars: the same arithmetic, without array overhead
        shape = np.broadcast_shapes(a.shape, b.shape)
        return np.reshape(_series_and_tail(a.reshape(())[()], b.reshape(())[()], p), shape)
    return _series_and_tail(a, b, p)


def _series_and_tail(a, b, p: int):
    """The body of ``_truncated_power_moment``, for numpy arrays or numpy scalars alike."""
    head = _hermite_power_moment(a, np.minimum(b - a, _SERIES_WIDTH), p)
    c = a + _SERIES_WIDTH
    tail_moments = _raw_power_moments(c, np.maximum(b, c), p)  # all exactly 0 when b <= c
    tail = sum(binom(p, j) * _SERIES_WIDTH ** (p - j) * tail_moments[j] for j in range(p + 1))
    return head + tail


def activation_moment(act: Activation, q, p: int = 2):
    """E[phi(sqrt(q) z)^p], p >= 0 an integer, in closed form: on each piece
    phi^p = sum_k binom(p, k) y^{p-k} (s sqrt(q))^k w^k, so

        E[phi^p] = sum_pieces sum_k binom(p, k) y^{p-k} (s sqrt(q))^k E[w^k 1{piece}].

    For CReLU_{tau,m} and p = 2 this is q P_2(a, b) + m^2 (1 - Phi(b)), a = tau / sqrt(q),
    b = (tau + m) / sqrt(q), i.e. q [(1 + a^2)(Phi(b) - Phi(a)) - a n(a) + (2a - b) n(b)] + m^2 (1 - Phi(b)).
    """
    if not isinstance(p, int) or p < 0:
        raise ValueError(f"p={p!r}: must be an integer >= 0")
    z = _ZPieces.of(act, q)
    rise = z.s * z.sqrt_q
    per_piece = np.zeros_like(z.alpha)
    for k in range(p + 1):
        with np.errstate(over="ignore", invalid="ignore"):  # y^p of a clip beyond reach (moment 0)
            coefficient = binom(p, k) * z.y ** (p - k) * rise**k
        if k > 0:  # exactly 0 on flat pieces, even where y^{p-k} overflowed
            coefficient = np.where(rise == 0.0, 0.0, coefficient)
        # only the pieces where the term can be nonzero (e.g. not k < p where phi's anchor is 0);
        # the coefficient has the shape of the pieces (y has)
        cols = np.flatnonzero(np.any(coefficient != 0.0, axis=tuple(range(coefficient.ndim - 1))))
        if cols.size:
            moment = z.take(cols).anchored_moment(k)
            per_piece[..., cols] += _times(coefficient[..., cols], moment)
    return _mirror_sum(_last_axis(per_piece))


def variance_map(act: Activation, q, sigma_w2, sigma_b2):
    """V(q) = sigma_w^2 E[phi(sqrt(q) z)^2] + sigma_b^2."""
    return sigma_w2 * activation_moment(act, q, 2) + sigma_b2


def slope_moment(act: Activation, q, power: int = 2):
    """E[phi'(sqrt(q) z)^power] = sum_pieces s^power P(piece)."""
    z = _ZPieces.of(act, q)
    return _mirror_sum(_last_axis(z.s**power * z.probability()))


def chi1(act: Activation, q, sigma_w2):
    """chi_1(q) = sigma_w^2 E[phi'(sqrt(q) z)^2] = sigma_w^2 sum_pieces s^2 P(piece)."""
    return sigma_w2 * slope_moment(act, q)


def _knot_terms(act: Activation, q):
    """Per knot k_j (arrays ..., K): the slope jump d_j = s_j+ - s_j-, y_j = phi(k_j), kappa_j =
    k_j / sqrt(q) (clamped like the piece bounds) and sqrt(q)."""
    sqrt_q = np.sqrt(np.asarray(q, dtype=float))[..., None]
    jump = np.diff(act.slopes, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        kappa = np.clip(act.knots / sqrt_q, -_Z_INF, _Z_INF)
    return jump, act.values, kappa, sqrt_q


def variance_slope(act: Activation, q, sigma_w2, sigma_b2=0.0):
    """V'(q) = chi_1(q) + sigma_w^2 E[phi phi''(sqrt(q) z)]
             = sigma_w^2 [ sum_pieces s^2 P(piece) + sum_knots d_j y_j n(k_j / sqrt q) / sqrt q ].

    Gaussian integration by parts (docs/theory.md); phi'' is a sum of Dirac deltas of weight d_j (the
    slope jump) at the knots, and only knots where phi != 0 count. For CReLU_{tau,m}:
    sigma_w^2 [Phi(b) - Phi(a) - (m / sqrt q) n(b)]. ``sigma_b2`` does not enter.
    """
    jump, y, kappa, sqrt_q = _knot_terms(act, q)
    with np.errstate(over="ignore", invalid="ignore"):  # knots beyond reach have n(kappa) = 0
        knots = _times(jump * y / sqrt_q, _npdf(kappa))
    return sigma_w2 * (slope_moment(act, q) + _mirror_sum(_last_axis(knots)))


def variance_curvature(act: Activation, q, sigma_w2, sigma_b2=0.0):
    """V''(q) = sigma_w^2 [ sum_pieces s^2 (alpha n(alpha) - beta n(beta)) / (2q)
                           + sum_knots d_j y_j n(kappa_j) (kappa_j^2 - 1) / (2 q^{3/2}) ],

    the q-derivative of ``variance_slope`` (d alpha / dq = -alpha / 2q, n'(z) = -z n(z)).
    For ReLU_tau and ST_tau it is sigma_w^2 a n(a) / 2q (times 2 for ST) > 0 whenever tau > 0.
    """
    z = _ZPieces.of(act, q)
    q_col = z.sqrt_q**2
    pieces = z.s**2 * (z.alpha * _npdf(z.alpha) - z.beta * _npdf(z.beta)) / (2.0 * q_col)
    jump, y, kappa, sqrt_q = _knot_terms(act, q)
    nk = _npdf(kappa)
    with np.errstate(over="ignore", invalid="ignore"):  # knots beyond reach have n(kappa) = 0
        knots = _times(jump * y * (kappa**2 - 1.0) / (2.0 * q_col * sqrt_q), nk)
    return sigma_w2 * (_mirror_sum(_last_axis(pieces)) + _mirror_sum(_last_axis(knots)))


def sparsity(act: Activation, q):
    """GP fraction of exact zeros at variance q: the probability of the pieces where phi = 0
    (slope 0 and value 0). CReLU: Phi(a); CST: 2 Phi(a) - 1 = erf(a / sqrt 2)."""
    z = _ZPieces.of(act, q)
    zero = (z.s == 0.0) & (z.y == 0.0)
    return _mirror_sum(_last_axis(np.where(zero, z.probability(), 0.0)))


def sparsity_derivatives(act: Activation, q):
    """(s, ds/dq, d^2s/dq^2) of the GP sparsity at variance q (broadcast against the batch of a
    stacked activation).

    s(q) = sum over zero pieces [lo, hi) of Phi(hi / sqrt q) - Phi(lo / sqrt q), so each finite edge
    c of a zero piece, with sign +1 for an upper edge and -1 for a lower one, contributes with
    a = c / sqrt(q) (da/dq = -a / 2q, d(a n(a))/da = (1 - a^2) n(a)):

        s'  += -sign a n(a) / (2q),     s'' += sign a n(a) (3 - a^2) / (4 q^2).

    (CReLU: one edge tau, s = Phi(a); CST: edges -tau and tau, s = 2 Phi(a) - 1.) s itself is
    :func:`sparsity`.
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
    return sparsity(act, q), first, second


def gradient_fraction(act: Activation, q):
    """P(phi' != 0) / P(phi != 0) at variance q: the fraction of active units that pass gradient
    (1 for unclipped shifted ReLU; small when most active units sit on a clipped piece)."""
    z = _ZPieces.of(act, q)
    prob = z.probability()
    sloped = _mirror_sum(_last_axis(np.where(z.s != 0.0, prob, 0.0)))
    return sloped / (1.0 - sparsity(act, q))


# --------------------------------------------------------------------------------------------------
# Edge of Chaos and fixed points of the variance map


@dataclass(frozen=True)
class EdgeOfChaos:
    """Initialisation on the Edge of Chaos at fixed point q*: chi_1(q*) = 1 and V(q*) = q*."""

    sigma_w2: float | np.ndarray
    sigma_b2: float | np.ndarray


def edge_of_chaos(act: Activation, q_star, chi_1=1.0) -> EdgeOfChaos:
    """sigma_w^2 = chi_1 / E[phi'(sqrt(q*) z)^2],  sigma_b^2 = q* - sigma_w^2 E[phi(sqrt(q*) z)^2].

    With the default chi_1 = 1 this is the Edge of Chaos. Another ``chi_1`` > 0 gives the variances
    with the same fixed point V(q*) = q* (so the same GP sparsity at q*) and chi_1(q*) = ``chi_1``:
    ordered below 1, chaotic above; sigma_b^2 = q* - chi_1 (q* - sigma_b^2 of the EoC) falls with it.

    Raises ValueError when no unit passes gradient at q* (tau too large, or phi flat) or when
    sigma_b^2 < 0, which happens for shapes whose E[phi^2] exceeds q* E[phi'^2] (e.g. a constant offset).
    (For CReLU / CST, sigma_b^2 >= 0 always: with tau = 0 it reduces to the Mills-ratio inequality
    b (1 - Phi(b)) <= n(b).)
    """
    q_star = np.asarray(q_star, dtype=float)
    if np.any(~np.isfinite(q_star) | (q_star <= 0)):
        raise ValueError(f"q_star={float(np.min(q_star))!r}: must be finite and > 0")
    passing = chi1(act, q_star, 1.0)
    if np.any(passing <= 0):
        raise ValueError(
            f"{act.name}: no unit passes gradient at q*={q_star} (phi' = 0 almost surely), "
            "so chi_1 = 1 cannot be reached"
        )
    if not (np.isfinite(chi_1) and chi_1 > 0):
        raise ValueError(f"chi_1={chi_1!r}: must be finite and > 0")
    sigma_w2 = chi_1 / passing
    sigma_b2 = q_star - sigma_w2 * activation_moment(act, q_star, 2)
    sigma_b2 = np.where(np.abs(sigma_b2) <= 1e-12 * q_star, 0.0, sigma_b2)
    if np.any(sigma_b2 < 0):
        where = "the Edge of Chaos" if chi_1 == 1.0 else f"chi_1={chi_1!r}"
        raise ValueError(
            f"sigma_b2={float(np.min(sigma_b2))!r}: {where} at this q* needs a negative "
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


def _bound_of_v(act: Activation, sigma_w2, sigma_b2) -> float:
    """sup_q V(q) = sigma_w^2 max_j y_j^2 + sigma_b^2 for a bounded phi (outer slopes 0: |phi| peaks
    at a knot); inf otherwise."""
    if not act.clipped:
        return math.inf
    return float(sigma_w2 * np.max(act.values**2) + sigma_b2)


def _search_range(act: Activation, sigma_w2, sigma_b2) -> tuple[float, float]:
    """(q_min, q_max) for the fixed-point search, from the scales of the problem, so that it works
    at any q* (1e-6 or 1e4 alike): q_max = 1.01 sup V for a bounded phi, else 1e4 times the largest
    of sigma_b^2 and the squared knots; q_min = 1e-4 times the smallest nonzero of sigma_b^2, the
    squared knots and the squared values (and at most 1e-8 q_max)."""
    with np.errstate(over="ignore"):  # a clip level beyond float range is no scale
        squares = np.concatenate([[sigma_b2], act.knots**2, act.values**2])
        bound = _bound_of_v(act, sigma_w2, sigma_b2)
    scales = squares[(squares > 0) & np.isfinite(squares)]
    if math.isfinite(bound):
        q_max = 1.01 * bound
    else:
        q_max = 1e4 * float(np.max(scales, initial=1.0))
    q_min = min(1e-8 * q_max, 1e-4 * float(np.min(scales, initial=q_max)))
    return q_min, q_max


def _sign_change_roots(f, grid, values) -> list[float]:
    """The roots of f (elementwise on arrays) seen on ``grid``, where ``values`` = f(grid): the grid
    points where it is exactly 0, then brentq in every interval where it changes sign."""
    roots = grid[values == 0.0].tolist()
    flips = np.nonzero(np.sign(values[:-1]) * np.sign(values[1:]) < 0)[0]
    roots += [
        optimize.brentq(lambda x: float(f(x)), grid[i], grid[i + 1], xtol=1e-15, rtol=1e-13)
        for i in flips
    ]
    return roots


def _extended(act: Activation, sigma_w2, sigma_b2, grid, on_grid, knots) -> np.ndarray:
    """V(q) - q on ``knots``, a sorted superset of ``grid`` where V is known (``on_grid``): V is
    evaluated at the new points only (elementwise, so the values are those of one call on all)."""
    values = np.empty(knots.size)
    known = np.zeros(knots.size, dtype=bool)
    known[np.searchsorted(knots, grid)] = True
    values[known] = on_grid
    values[~known] = variance_map(act, knots[~known], sigma_w2, sigma_b2)
    return values - knots


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
    The search runs over ``_search_range`` (q_max, if given, replaces its upper end).
    """
    q_min, default_max = _search_range(act, sigma_w2, sigma_b2)
    q_max = default_max if q_max is None else q_max
    grid = np.geomspace(min(q_min, 1e-8 * q_max), q_max, 4001)
    on_grid = variance_map(act, grid, sigma_w2, sigma_b2)
    if np.all(np.abs(on_grid - grid) <= 1e-10 * grid):
        raise ValueError(
            f"{act.label()} with sigma_w2={sigma_w2}, sigma_b2={sigma_b2}: V(q) = q on the whole "
            "range, every q is a fixed point"
        )

    def gap(q):
        return variance_map(act, q, sigma_w2, sigma_b2) - q

    def slope_gap(q):
        return variance_slope(act, q, sigma_w2) - 1.0

    extrema = np.array(_sign_change_roots(slope_gap, grid, slope_gap(grid)))
    knots = np.union1d(grid, extrema)
    roots = _sign_change_roots(gap, knots, _extended(act, sigma_w2, sigma_b2, grid, on_grid, knots))
    if extrema.size:
        roots += extrema[np.abs(gap(extrema)) <= 1e-9 * extrema].tolist()
    merged: list[float] = []
    for q in sorted(roots):
        if not merged or q > merged[-1] * (1 + 1e-6):
            merged.append(q)
    slopes = variance_slope(act, np.array(merged), sigma_w2).tolist() if merged else []
    points = []
    for q, slope in zip(merged, slopes, strict=True):
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


def variance_attractor(act: Activation, sigma_w2, sigma_b2, q0: float, depth: int = 2000) -> dict:
    """The fixed point q_inf = V(q_inf) that q^{l+1} = V(q^l) reaches from q^0 = q0, with
    chi_1(q_inf) (ordered below 1, chaotic above) and V'(q_inf), on a (sigma_w^2, sigma_b^2) grid
    (broadcast): V iterated until it settles to 1e-10 relative, at most ``depth`` times; inf once it
    passes 1e12; stopped below 1e-12 q0 when it collapses to 0 (ordered without bias: q_inf is then
    the last iterate). Keys q_inf, chi1, v_slope."""
    sigma_w2, sigma_b2 = np.broadcast_arrays(
        np.asarray(sigma_w2, float), np.asarray(sigma_b2, float)
    )
    q = np.full(sigma_w2.shape, float(q0))
    moving = np.ones(q.shape, bool)
    with np.errstate(all="ignore"):  # q -> 0 (ordered, no bias) and q -> inf are both limits
        for _ in range(depth):
            old = q[moving]
            new = variance_map(act, old, sigma_w2[moving], sigma_b2[moving])
            new = np.where(np.isnan(new), np.where(old > q0, np.inf, 0.0), new)
            new = np.where(new < 1e12, new, np.inf)
            vanished = new < 1e-12 * q0  # ordered without bias: q -> 0, keep the last iterate
            settled = ~np.isfinite(new) | vanished | (np.abs(new - old) <= 1e-10 * new)
            q[moving] = np.where(vanished, old, new)
            moving[moving] = ~settled
            if not moving.any():
                break
        finite = np.isfinite(q)
        safe = np.where(finite, q, 1.0)
        chi = np.where(finite, chi1(act, safe, sigma_w2), np.nan)
        slope = np.where(finite, variance_slope(act, safe, sigma_w2), np.nan)
    return {"q_inf": q, "chi1": chi, "v_slope": slope}


ClipFamily = Callable[[float], Activation]
"""An activation parametrised by its clip level m, m -> Activation: a named family at a GP sparsity
(``functools.partial(Activation.from_sparsity, family, s, q*)``), or a user's shape whose knots,
values or slopes move with m. Every member is solved on the EoC at q* by the clip-window search."""


def _secant_excess(at_clip: ClipFamily, q_star: float, m: float) -> float:
    """max over q != q* of (V(q) - q) / (q - q*) for the EoC network of the activation
    ``at_clip(m)``.

    Negative iff q* is the only fixed point: any other fixed point gives 0, and as q -> q* the ratio
    tends to V'(q*) - 1 < 0. The maximum is located on a geometric grid up to the bound
    sup V = sigma_w^2 max phi^2 + sigma_b^2 (an unbounded phi: the top of the range
    ``fixed_points`` searches), then refined by a bounded scalar search.
    """
    act = at_clip(m)
    eoc = edge_of_chaos(act, q_star)

    def ratio(q):
        return (variance_map(act, q, eoc.sigma_w2, eoc.sigma_b2) - q) / (q - q_star)

    bound = _bound_of_v(act, eoc.sigma_w2, eoc.sigma_b2)
    if math.isfinite(bound):
        q_hi = 1.01 * bound + 2 * q_star
    else:
        q_hi = _search_range(act, eoc.sigma_w2, eoc.sigma_b2)[1]
    grid = np.geomspace(1e-4 * q_star, q_hi, 801)
    grid = grid[np.abs(grid / q_star - 1.0) > 1e-4]
    values = ratio(grid)
    i = int(np.argmax(values))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
    best = optimize.minimize_scalar(
        lambda q: -ratio(q), bounds=(lo, hi), method="bounded", options={"xatol": 1e-10 * hi}
    )
    return max(float(values[i]), float(-best.fun))


MAX_CLIP_SEARCH = 1e3
"""Both edge searches give up (ValueError) beyond m = MAX_CLIP_SEARCH sqrt(q*)."""


def max_stable_clip(at_clip: ClipFamily, q_star: float = 1.0, *, xtol: float = 1e-8) -> float:
    """Upper edge of the clip window: the largest clip level m for which q* is the only fixed point
    of the EoC variance map of ``at_clip(m)`` (each member on its own EoC at q*).

    For a family of bounded activations indexed by a clip level m, the m at which V first grows a
    second pair of fixed points above q* (a saddle-node bifurcation, docs/theory.md). Below it every
    network started near q* stays there in the GP limit; above it the map is bistable. Found by a
    geometric scan in m (from 0.25 sqrt(q*), steps of 1.25) for a sign change of
    ``_secant_excess`` and brentq on it to ``xtol`` (absolute, in units of sqrt(q*)). ValueError
    when there are extra fixed points already at the start of the scan, or none by
    ``MAX_CLIP_SEARCH`` sqrt(q*).
    """
    root_q = math.sqrt(q_star)

    def excess(m):
        return _secant_excess(at_clip, q_star, m * root_q)

    lo = 0.25
    if excess(lo) >= 0:
        raise ValueError(
            f"{at_clip(lo * root_q).label()}: extra fixed points exist even at m={lo} sqrt(q*) "
            f"(q*={q_star})"
        )
    hi = lo * 1.25
    while excess(hi) < 0:
        lo, hi = hi, hi * 1.25
        if hi > MAX_CLIP_SEARCH:
            raise ValueError(
                f"{at_clip(lo * root_q).label()}: no bistability found for m up to "
                f"{MAX_CLIP_SEARCH:g} sqrt(q*) (q*={q_star})"
            )
    return root_q * optimize.brentq(excess, lo, hi, xtol=xtol, rtol=1e-12)


MIN_GRADIENT_FRACTION = 0.5
"""Lower edge of the clip window: at least this fraction of the active units pass gradient."""

_MIN_CLIP = 1e-9
"""The lower edge search starts at m = _MIN_CLIP sqrt(q*)."""


def min_gradient_clip(at_clip: ClipFamily, q_star: float = 1.0) -> float:
    """Lower edge of the clip window: the smallest clip level m at which the fraction of the active
    units that pass gradient at q*, ``gradient_fraction(at_clip(m), q*)``, reaches
    ``MIN_GRADIENT_FRACTION`` = 1/2. Below it most active units sit on the clipped pieces, where
    phi' = 0, and gradients die out. (For a family whose gradient fraction rises with m; CReLU and
    CST: m_low = sqrt(q*) [Phi^{-1}((1 + Phi(a)) / 2) - a], a = tau / sqrt(q*).)

    brentq in m on [1e-9, hi] to 1e-12 sqrt(q*), hi doubled from sqrt(q*) until the fraction is
    reached (ValueError if not by ``MAX_CLIP_SEARCH`` sqrt(q*)); 0 when the fraction is reached
    already at m = 1e-9 sqrt(q*) (every m passes, as when a leaky piece keeps phi' != 0).
    """
    root_q = math.sqrt(q_star)

    def gap(m):
        return float(gradient_fraction(at_clip(m * root_q), q_star)) - MIN_GRADIENT_FRACTION

    if gap(_MIN_CLIP) >= 0:
        return 0.0
    hi = 1.0
    while gap(hi) < 0:
        hi *= 2.0
        if hi > MAX_CLIP_SEARCH:
            raise ValueError(
                f"{at_clip(root_q).label()}: fewer than {MIN_GRADIENT_FRACTION:g} of the active "
                f"units pass gradient for m up to {MAX_CLIP_SEARCH:g} sqrt(q*) (q*={q_star})"
            )
    return root_q * optimize.brentq(gap, _MIN_CLIP, hi, xtol=1e-12, rtol=1e-12)


@dataclass(frozen=True)
class ClipWindow:
    """The clip levels [low, high] at which a clipped network on the EoC at q* is both trainable
    and stable: low = ``min_gradient_clip`` (half of the active units pass gradient), high =
    ``max_stable_clip`` (q* the only fixed point of V). NaN edges: an activation without a clip
    level to vary, which has no window (nothing is inside)."""

    low: float
    high: float

    def contains(self, m):
        """low <= m <= high (elementwise over an array): False for m = inf (unclipped) and for
        every m when the edges are NaN."""
        return (self.low <= m) & (m <= self.high)

    def place(self, m: float) -> str:
        """Where ``m`` lies: "inside", "below" or "above" the window (m = inf is above), or
        "none" when there is no window (NaN edges)."""
        if not self.defined:
            return "none"
        return "inside" if self.contains(m) else "below" if m < self.low else "above"

    @property
    def defined(self) -> bool:
        """False for the NaN window of an activation without a clip level to vary."""
        return not (math.isnan(self.low) or math.isnan(self.high))


def clip_window(at_clip: ClipFamily, q_star: float = 1.0) -> ClipWindow:
    """The clip window [``min_gradient_clip``, ``max_stable_clip``] of the activation ``at_clip(m)``
    parametrised by its clip level m, each member on its EoC at q* (docs/theory.md, section 4).
    Either search's ValueError passes through. The window may be empty (low >= high: no m is both
    trainable and stable)."""
    return ClipWindow(min_gradient_clip(at_clip, q_star), max_stable_clip(at_clip, q_star))


@functools.lru_cache(maxsize=1024)
def family_clip_window(family: str, sparsity: float, q_star: float = 1.0) -> ClipWindow:
    """The clip window of the named ``family`` at GP sparsity ``sparsity`` and q*: ``clip_window``
    of m -> ``Activation.from_sparsity(family, sparsity, q_star, m)`` (tau fixed by the sparsity,
    which clipping does not change). Cached: the window search is a bifurcation search."""
    return clip_window(
        functools.partial(Activation.from_sparsity, family, sparsity, q_star), q_star
    )


# --------------------------------------------------------------------------------------------------
# Correlation map


_PANEL_NODES, _PANEL_WEIGHTS = np.polynomial.legendre.leggauss(8)
"""Gauss-Legendre rule of order 8 on [-1, 1], applied on every panel of ``_theta_panels``."""

_GRADED_PANELS = 8
"""Geometric panels per graded segment of ``_theta_panels``."""

_SMOOTH_SPAN = 0.5
"""A span of theta (from 0) on which one panel integrates the Price integrand when no knot pair
turns on inside it (``_theta_panels``)."""


def _graded_breaks(lo, floor, hi):
    """Breakpoints lo, f, f r, f r^2, ..., f r^n = hi (n = ``_GRADED_PANELS``), f = floor clipped to
    [lo, hi] and kept > 0, r = (hi / f)^(1/n): a first panel [lo, f], then geometric ones. Arrays
    broadcast; the last axis is the breakpoints."""
    hi = np.maximum(hi, lo)
    f = np.clip(floor, lo, hi)
    f = np.where(f > 0.0, f, np.maximum(hi, 1e-300) * 1e-15)
    steps = np.arange(_GRADED_PANELS + 1) / _GRADED_PANELS
    with np.errstate(divide="ignore", invalid="ignore"):
        geometric = f[..., None] * (hi / f)[..., None] ** steps
    return np.concatenate(
        [
            np.asarray(lo, dtype=float)[..., None] + 0.0 * f[..., None],
            np.minimum(geometric, hi[..., None]),
        ],
        axis=-1,
    )


def _panel_rule(breaks):
    """Nodes and weights of composite Gauss-Legendre on the panels between ``breaks`` (last axis)."""
    lo, hi = breaks[..., :-1, None], breaks[..., 1:, None]
    half = 0.5 * (hi - lo)
    nodes = half * _PANEL_NODES + 0.5 * (hi + lo)
    shape = (*breaks.shape[:-1], -1)
    return nodes.reshape(shape), (half * _PANEL_WEIGHTS).reshape(shape)


def _theta_panels(theta_rho, near_zero, near_pi):
    """Nodes and weights (..., nodes) for integrals over theta in [0, theta_rho].

    The Price integrand (``_price_integrals``) varies on the scale theta near 0 (an off-diagonal knot
    pair turns on at theta ~ |kappa_j - kappa_k|, the smallest such gap given as ``near_zero``) and
    on the scale pi - theta near pi (at pi - theta ~ |kappa_j + kappa_k|, ``near_pi``). So
    low = min(theta_rho, pi/2) and [0, low] is split into [0, f] and ``_GRADED_PANELS`` geometric
    panels from f up, f = min(near_zero / 8, low / 64) (below near_zero / 8 every off-diagonal term
    is below e^-32), or f = min(near_zero / 8, low) when low <= ``_SMOOTH_SPAN`` (no grading needed
    for the smooth diagonal terms: then, with no pair turning on inside, one panel); when
    theta_rho > pi/2, [pi/2, theta_rho] likewise in pi - theta, graded towards pi - theta_rho and
    near_pi / 8. Panels of zero length get zero weights. Order 8 per panel: against 30-digit
    quadrature of the same integrand, J0 and J1 to 1e-12 of M(1) and M(1) (1 - rho) for knot gaps
    >= 0.05 sqrt(q) (CReLU, CST, hard-tanh, a user shape; rho in [-1, 1 - 1e-8]), 1e-11 absolute
    for a gap of 1e-4 sqrt(q).
    """
    half_pi = 0.5 * math.pi
    low = np.minimum(theta_rho, half_pi)
    smooth = np.where(low <= _SMOOTH_SPAN, low, low / 64.0)
    near = _graded_breaks(0.0, np.minimum(near_zero / 8.0, smooth), low)
    nodes, weights = _panel_rule(near)
    if np.any(theta_rho > half_pi):
        y_rho = math.pi - np.maximum(theta_rho, half_pi)  # pi - theta at the upper end
        far = math.pi - _graded_breaks(y_rho, np.minimum(near_pi / 8.0, half_pi / 64.0), half_pi)
        far_nodes, far_weights = _panel_rule(far)
        nodes = np.concatenate(np.broadcast_arrays(nodes, far_nodes), axis=-1)
        weights = np.concatenate(np.broadcast_arrays(weights, -far_weights), axis=-1)
    return nodes, weights


@numba.guvectorize(
    [
        "void(float64[:], float64[:], float64[:], float64[:], float64[:], float64, float64[:], float64[:])"
    ],
    "(n),(n),(p),(p),(p),()->(),()",
    cache=True,
)
def _price_quadrature(theta, weights, x, y, pair_weight, delta, j0, j1):
    """sum_i w_i I(theta_i) and sum_i w_i (delta - 2 sin^2(theta_i / 2)) I(theta_i) with
    I(theta) = sum_p pair_weight_p exp(-E_p(theta)) over the knot pairs p = (x_p, y_p)
    (``_price_integrals``): E = N / (2 sin^2 theta), sin^2 theta = 4 sin^2(theta/2) cos^2(theta/2),
    N = (x - y)^2 + 4 sin^2(theta/2) x y below pi/2 and (x + y)^2 - 4 cos^2(theta/2) x y above (each
    free of cancellation there). Nodes of zero weight (zero-length panels, the only ones that may
    sit at theta = 0 or pi) are skipped. Fused over nodes and pairs: the correlation iterate of
    many cells evaluates millions of terms."""
    total0 = 0.0
    total1 = 0.0
    for i in range(theta.size):
        if weights[i] == 0.0:
            continue
        half_sin2 = math.sin(0.5 * theta[i]) ** 2
        half_cos2 = math.cos(0.5 * theta[i]) ** 2
        denominator = 8.0 * half_sin2 * half_cos2
        integrand = 0.0
        for p in range(x.size):
            if pair_weight[p] == 0.0:
                continue
            if half_sin2 < half_cos2:
                numerator = (x[p] - y[p]) ** 2 + 4.0 * half_sin2 * x[p] * y[p]
            else:
                numerator = (x[p] + y[p]) ** 2 - 4.0 * half_cos2 * x[p] * y[p]
            integrand += pair_weight[p] * math.exp(-numerator / denominator)
        total0 += weights[i] * integrand
        total1 += weights[i] * (delta - 2.0 * half_sin2) * integrand
    j0[0] = total0
    j1[0] = total1


@dataclass(frozen=True)
class _PriceTerms:
    """What the Price integrals of ``act`` at variance q need besides rho (arrays ..., pairs over
    the batch): the knot pairs j <= k (x = kappa_j, y = kappa_k), their weights d_j d_k / (2 pi)
    (doubled off the diagonal), the smallest off-diagonal |x - y| and nonzero |x + y| among
    weighted pairs (``_theta_panels``), and M1 = E[phi'(u)^2]."""

    x: np.ndarray
    y: np.ndarray
    pair_weight: np.ndarray
    near_zero: np.ndarray
    near_pi: np.ndarray
    m1: np.ndarray

    @classmethod
    def of(cls, act: Activation, q) -> _PriceTerms:
        jump, _, kappa, _ = _knot_terms(act, q)
        j, k = np.triu_indices(kappa.shape[-1])
        x, y = kappa[..., j], kappa[..., k]
        pair_weight = np.where(j == k, 1.0, 2.0) * jump[..., j] * jump[..., k] / (2.0 * math.pi)
        counted = pair_weight != 0.0
        near_zero = np.min(np.where(counted & (j != k), np.abs(x - y), np.inf), axis=-1)
        sums = np.abs(x + y)
        near_pi = np.min(np.where(counted & (sums > 0.0), sums, np.inf), axis=-1)
        return cls(x, y, pair_weight, near_zero, near_pi, slope_moment(act, q))


def _price_integrals(terms: _PriceTerms, delta):
    """(J0, J1) for inputs at variance q with correlation rho = 1 - delta:

        J0 = int_rho^1 S(t) dt,   J1 = int_rho^1 (t - rho) S(t) dt,

    S(t) = d/dt E[phi'(u1) phi'(u2)] = sum_{j,k} d_j d_k p2(kappa_j, kappa_k; t) (Price's theorem:
    phi'' = sum_j d_j delta(x - k_j), kappa_j = k_j / sqrt(q), p2 the standard bivariate normal
    density at correlation t). With t = cos(theta), S(t) dt = -I(theta) dtheta,

        I(theta) = sum_{j,k} d_j d_k exp(-E_jk(theta)) / (2 pi),
        E_jk = (kappa_j^2 - 2 cos(theta) kappa_j kappa_k + kappa_k^2) / (2 sin^2 theta)
             = ((kappa_j - kappa_k)^2 + 4 sin^2(theta/2) kappa_j kappa_k) / (2 sin^2 theta)   (theta < pi/2)
             = ((kappa_j + kappa_k)^2 - 4 cos^2(theta/2) kappa_j kappa_k) / (2 sin^2 theta)   (otherwise),

    smooth and bounded on [0, pi] (each form free of cancellation where it is used), and
    J0 = int_0^theta_rho I, J1 = int_0^theta_rho (delta - 2 sin^2(theta/2)) I with
    theta_rho = arccos(rho) = 2 arcsin(sqrt(delta / 2)): both from delta, exact near rho = 1.
    Composite Gauss-Legendre in theta (``_theta_panels``); vectorised over delta and the batch of
    ``terms`` (``_PriceTerms``: kappa_j, the pair weights, M1).
    """
    delta = np.asarray(delta, dtype=float)
    theta_rho = 2.0 * np.arcsin(np.sqrt(0.5 * delta))
    theta_rho, near_zero, near_pi = np.broadcast_arrays(theta_rho, terms.near_zero, terms.near_pi)
    theta, weights = _theta_panels(theta_rho, near_zero, near_pi)
    return _price_quadrature(theta, weights, terms.x, terms.y, terms.pair_weight, delta)


def _check_rho(rho):
    rho = np.asarray(rho, dtype=float)
    if np.any(~(np.abs(rho) <= 1.0)):
        raise ValueError(f"rho={float(rho[~(np.abs(rho) <= 1)].flat[0])!r}: must be in [-1, 1]")
    return rho


def correlation_gap_map(act: Activation, q_star, sigma_w2, sigma_b2):
    """The function delta -> 1 - R(1 - delta): the correlation map as a map of the gap
    delta = 1 - rho in [0, 2],

        1 - R(rho) = (1 - V(q*) / q*) + chi_1(q*) delta - sigma_w^2 int_rho^1 (t - rho) S(t) dt,

    from R(rho) = R(1) - sigma_w^2 [M(1) (1 - rho) - int_rho^1 (t - rho) S(t) dt] (integrate
    R'(rho) = sigma_w^2 M(rho) with M(rho) = M(1) - int_rho^1 S; M(1) = E[phi'^2], R(1) = V(q*)/q*,
    S as in ``_price_integrals``). Taking delta itself, not rho, keeps the relative precision of the
    gap as delta -> 0 (the integral is O(delta^(3/2)) there): R(1) - R(1 - delta) to ~1e-15
    relative at delta = 1e-8 (tests), while 1 - V(q*)/q* carries the rounding of V, a few 1e-16
    absolute (0 when V(q*) == q* in float64). Broadcasts over delta, q*, sigma_w2, sigma_b2 and a
    batch of activations (numpy rules). What does not depend on delta (the knot pairs, M(1), R(1))
    is computed once, for iterating the map.
    """
    terms = _PriceTerms.of(act, q_star)
    offset = 1.0 - variance_map(act, q_star, sigma_w2, sigma_b2) / q_star

    def gap(delta):
        delta = np.asarray(delta, dtype=float)
        inside = (delta >= 0.0) & (delta <= 2.0)
        if np.any(~inside):
            raise ValueError(f"delta={float(delta[~inside].flat[0])!r}: 1 - rho must be in [0, 2]")
        _, j1 = _price_integrals(terms, delta)
        return offset + sigma_w2 * (terms.m1 * delta - j1)

    return gap


def correlation_gap(act: Activation, delta, q_star, sigma_w2, sigma_b2):
    """1 - R(1 - delta) (:func:`correlation_gap_map`)."""
    return correlation_gap_map(act, q_star, sigma_w2, sigma_b2)(delta)


def correlation_gaps(act: Activation, q_star, sigma_w2, sigma_b2, c0, depth: int) -> np.ndarray:
    """1 - c^l for l = 0..depth (leading axis), c^0 = c0 and c^{l+1} = R(c^l) at variance q*, for
    a single or stacked activation with c0 broadcast against the batch. The gap g = 1 - c is
    iterated directly, g^{l+1} = 1 - R(1 - g^l) (:func:`correlation_gap_map`), so that it keeps its
    relative precision (~1e-16 of its size) however close c^l comes to 1."""
    gap_map = correlation_gap_map(act, q_star, sigma_w2, sigma_b2)
    gap = [np.asarray(1.0 - np.asarray(c0, dtype=float))]
    for _ in range(depth):
        gap.append(gap_map(np.clip(gap[-1], 0.0, 2.0)))
    return np.stack(np.broadcast_arrays(*gap))


def correlation_map(act: Activation, rho, q_star, sigma_w2, sigma_b2):
    """R(rho) = (sigma_w^2 E[phi(u1) phi(u2)] + sigma_b^2) / q*, both inputs at variance q*:
    1 - ``correlation_gap`` at delta = 1 - rho. Broadcasts like ``correlation_gap``."""
    rho = _check_rho(rho)
    return 1.0 - correlation_gap(act, 1.0 - rho, q_star, sigma_w2, sigma_b2)


def correlation_slope(act: Activation, rho, q_star, sigma_w2, sigma_b2=0.0):
    """R'(rho) = sigma_w^2 E[phi'(u1) phi'(u2)] = sigma_w^2 [M(1) - int_rho^1 S(t) dt]
    (``_price_integrals``); R'(1) = chi_1(q*). ``sigma_b2`` does not enter. Broadcasts like
    ``correlation_gap``."""
    rho = _check_rho(rho)
    terms = _PriceTerms.of(act, q_star)
    j0, _ = _price_integrals(terms, 1.0 - rho)
    return sigma_w2 * (terms.m1 - j0)


def correlation_fixed_point(act: Activation, q_star, sigma_w2, sigma_b2) -> float:
    """The attracting fixed point c* of R in [-1, 1]: the largest root of R(c) = c below 1 with
    |R'(c)| < 1 if there is one (chaotic phase), else 1 (ordered phase and the Edge of Chaos)."""
    grid = np.linspace(-1.0, 1.0 - 1e-6, 401)
    gap = correlation_map(act, grid, q_star, sigma_w2, sigma_b2) - grid

    def f(c):
        return correlation_map(act, c, q_star, sigma_w2, sigma_b2) - c

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
# Gradients through depth: the spread of the input-output Jacobian


def slope_kurtosis(act: Activation, q):
    """r = E[phi'^4] / E[phi'^2]^2 at variance q (z ~ N(0, 1), phi' at sqrt(q) z): 1 for a linear
    phi, 1/p for slopes in {0, 1} passing gradient with probability p (ReLU: 2)."""
    return slope_moment(act, q, 4) / slope_moment(act, q, 2) ** 2


def log_gain_variance(act: Activation, q_star, width):
    """Per-layer variance of the log gain of a forward tangent at width N, to first order in 1/N:

        Var[ln(K^{l+1}_tt / K^l_tt)] = (3 r - 1) / N,   r = :func:`slope_kurtosis` at q*.

    Given the tangent's conditional variance K^l_tt, its components are i.i.d. N(0, K^l_tt) and
    independent of phi'(h^l) at leading order, so K^{l+1}_tt / K^l_tt = (sigma_w^2 / N) sum_i s_i^2
    z_i^2 with s_i = phi'(h_i), z_i ~ N(0, 1); the delta method on the mean of s^2 z^2 (variance
    (3 E[s^4] - E[s^2]^2) / N) gives the line above (docs/theory.md, "Gradient spread"). Over L
    layers the log gains add almost independently: variance L (3 r - 1) / N. ReLU: 5 / N."""
    return (3.0 * slope_kurtosis(act, q_star) - 1.0) / width


def log_gain_spread(act: Activation, q_star, sigma_w2, sigma_b2, depth: int, width) -> np.ndarray:
    """Standard deviation, over networks of width N, of the summed log gain of a forward tangent
    through L layers, ln(K^L_tt / K^0_tt) = sum_{l <= L} g_l, to first order in 1/N, for
    L = 1..``depth`` (an array; within a few per cent of the Monte Carlo from N p ~ 50 units
    passing gradient on: tests).

    Layer l's gain uses the pre-activations h^{l-1}, drawn given the conditional variance v^{l-1}:
    g_l = w_l + a (v^{l-1} - q*), with w_l the white part of :func:`log_gain_variance` and
    a = d ln E[phi'(sqrt(q) z)^2] / dq at q* (a larger v moves units onto or off the sloped
    pieces). The fluctuations of v follow the 1/N recursion of :func:`finite_width_terms`, started
    exactly at q*: v^l - q* = sum_{j <= l} V'^{l-j} e_j, Var e_j summing to V4^l / N, and the noise
    e_j comes from the same h^{j-1} as w_j, with Cov(w_j, e_j) = c / N,
    c = sigma_w^2 (E[phi'^2 phi^2] - E[phi'^2] E[phi^2]) / E[phi'^2]. So, with V' = V'(q*),

        N Var[sum_{l <= L} g_l] = L (3 r - 1)                                (white)
                                + a^2 sum_{i,j < L} V'^|i-j| V4^min(i,j)      (persistent: S_L)
                                + 2 a c sum_{k <= L-2} (L - 1 - k) V'^k       (their covariance),

    S_L by S_{L+1} = S_L + V4^L + 2 T_L, T_L = sum_{i < L} V'^(L-i) V4^i = V' (T_{L-1} + V4^{L-1}).
    a is a central difference at step 1e-5 q*; E[phi'^2 phi^2] is by adaptive quadrature split at
    the knots. Needs V(q*) = q*."""
    layers = np.arange(1, depth + 1)
    variance = layers * (3.0 * slope_kurtosis(act, q_star) - 1.0)
    step = 1e-5 * q_star
    a = (np.log(slope_moment(act, q_star + step)) - np.log(slope_moment(act, q_star - step))) / (
        2 * step
    )
    if a != 0.0:
        _, _, v4 = finite_width_terms(act, sigma_w2, sigma_b2, q_star, depth)
        slope = float(variance_slope(act, q_star, sigma_w2))
        persistent, s, t = np.empty(depth), 0.0, 0.0
        for l in range(depth):
            t = slope * (t + v4[l - 1]) if l else 0.0
            s += v4[l] + 2.0 * t
            persistent[l] = s
        both = gaussian_expectation(
            lambda x: float(act.derivative(x) ** 2 * act(x) ** 2), q_star, tuple(act.knots)
        )
        mu2 = slope_moment(act, q_star)
        c = sigma_w2 * (both - mu2 * activation_moment(act, q_star, 2)) / mu2
        geometric = np.cumsum(slope ** np.arange(depth))  # sum_{k < L} V'^k
        weighted = np.cumsum(np.arange(depth) * slope ** np.arange(depth))  # sum_{k < L} k V'^k
        lagged = np.concatenate([[0.0], (layers[1:] - 1) * geometric[:-1] - weighted[:-1]])
        variance = variance + a**2 * persistent + 2.0 * a * c * lagged
    return np.sqrt(variance / width)


def jacobian_spread(act: Activation, q_star, depth):
    """Normalised variance of the squared singular values of the input-output Jacobian of ``depth``
    layers at infinite width, var / mean^2 = L r (r = :func:`slope_kurtosis` at q*).

    J^T J is a product of free elements, one pair per layer: W^T W (Gaussian weights, square:
    Marchenko-Pastur, normalised variance 1) and D^2 = diag(phi'(h)^2) (normalised variance r - 1);
    normalised variances add under free multiplication (the S-transform), so each layer adds
    1 + (r - 1) = r, whatever chi_1 (which sets the mean, chi_1^L). ReLU: 2 L."""
    return depth * slope_kurtosis(act, q_star)


# --------------------------------------------------------------------------------------------------
# Finite width


def variance_noise(act: Activation, q, sigma_w2):
    """D(q) = N Var[G^{l+1} | G^l = q] = sigma_w^4 Var[phi(sqrt(q) z)^2]
            = sigma_w^4 (E[phi^4] - E[phi^2]^2),

    as G^{l+1} = sigma_w^2 (1/N) sum_i phi(h_i)^2 + sigma_b^2 is a mean of N i.i.d. terms given
    G^l = q.
    The source term of V4 in :func:`finite_width_terms`, and the noise of the escape diffusion
    (:func:`saddle_node`, :func:`diffusion_depth`)."""
    m2, m4 = activation_moment(act, q, 2), activation_moment(act, q, 4)
    return sigma_w2**2 * (m4 - m2**2)


def finite_width_terms(act: Activation, sigma_w2, sigma_b2, q0, depth: int):
    """(q, G1, V4), each with a leading layer axis of length depth + 1 and then the broadcast shape
    of q0, sigma_w2, sigma_b2 and the activation's batch: the recursions of :func:`finite_width`,

        q^{l+1}  = V(q^l),                                   q^0 = q0
        G1^{l+1} = V'(q^l) G1^l + (1/2) V''(q^l) V4^l,        G1^0 = 0
        V4^{l+1} = V'(q^l)^2 V4^l + sigma_w^4 Var[phi(x)^2],  V4^0 = 0,   x ~ N(0, q^l),

    the coefficients along the whole GP trajectory at once, the recursions serial in l only. The
    source term sigma_w^4 Var[phi(x)^2] is :func:`variance_noise`.
    """
    if int(depth) != depth or depth < 0:
        raise ValueError(f"depth={depth!r}: must be an integer >= 0")
    q = iterate_variance(act, np.asarray(q0, dtype=float), sigma_w2, sigma_b2, depth)
    batch = np.broadcast_shapes(q.shape[1:], np.shape(sigma_w2), np.shape(sigma_b2))
    q = np.broadcast_to(q, (depth + 1, *batch))
    g1 = np.zeros(q.shape)
    v4 = np.zeros(q.shape)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        slope = variance_slope(act, q, sigma_w2)
        curvature = variance_curvature(act, q, sigma_w2)
        noise = variance_noise(act, q, sigma_w2)
        for l in range(depth):
            g1[l + 1] = slope[l] * g1[l] + 0.5 * curvature[l] * v4[l]
            v4[l + 1] = slope[l] ** 2 * v4[l] + noise[l]
    return q, g1, v4


def width_moments(q, g1, v4, width) -> dict[str, np.ndarray]:
    """The 1/N theory's predictions at width N from (q, G1, V4) (:func:`finite_width`):

    v_mean = q_mean = q + G1 / N,   v_sd = sqrt(V4 / N),   q_sd = sqrt((2 q^2 + V4) / N)."""
    with np.errstate(over="ignore", invalid="ignore"):
        mean = q + g1 / width
        return {
            "q_mean": mean,
            "q_sd": np.sqrt((2.0 * q**2 + v4) / width),
            "v_mean": mean,
            "v_sd": np.sqrt(v4 / width),
        }


def zero_fraction_moments(s, ds, d2s, g1, v4, width) -> dict[str, np.ndarray]:
    """The 1/N theory's mean and spread of the zero fraction at width N, from the sparsity and its
    q-derivatives at the GP iterate q (:func:`sparsity_derivatives`) and (G1, V4)
    (:func:`finite_width_terms`).

    Given the conditional variance G of the layer, each of the N units is on a zero piece of phi
    independently with probability s(G), so the zero fraction is Binomial(N, s(G)) / N given G.
    With E[G] = q + G1 / N and Var[G] = V4 / N, expanding s(G) to second order around q:

        zf_mean = s(q) + [s'(q) G1 + s''(q) V4 / 2] / N,
        zf_sd   = sqrt([s (1 - s) + s'(q)^2 V4] / N)."""
    return {
        "zf_mean": s + (ds * g1 + 0.5 * d2s * v4) / width,
        "zf_sd": np.sqrt((s * (1.0 - s) + ds**2 * v4) / width),
    }


def finite_width(act: Activation, sigma_w2, sigma_b2, q0, depth: int, width: int) -> xr.Dataset:
    """First-order 1/N theory of the layer variances of one input (docs/theory.md), for a single
    activation and scalar parameters (:func:`finite_width_terms` takes a batch).

    With G^l the conditional variance of layer l given layer l-1, and layer 0 exactly N(0, q0),
    the recursions of :func:`finite_width_terms` give E[G^l] = q^l + G1^l / N and
    Var[G^l] = V4^l / N. G^l is the stored ``v`` (the Markov state: E[v^{l+1} | v^l] = V(v^l)), so

        v_mean^l = q^l + G1^l / N,     v_sd^l = sqrt(V4^l / N)

    (exact at layer 0: v^0 = q0). The empirical q_hat = (1/N) sum_i h_i^2 is G chi^2_N / N given G,
    so it has the same mean q^l + G1^l / N and standard deviation sqrt((2 (q^l)^2 + V4^l) / N).
    """
    if int(width) != width or width < 1:
        raise ValueError(f"width={width!r}: must be an integer >= 1")
    q, g1, v4 = finite_width_terms(act, sigma_w2, sigma_b2, float(q0), depth)
    moments = width_moments(q, g1, v4, width)
    layer = np.arange(depth + 1)
    attrs = {"units": "pre-activation variance"}
    return xr.Dataset(
        {
            "q_gp": ("layer", q, {**attrs, "long_name": "GP variance iterate q^l"}),
            "q_mean": (
                "layer",
                moments["q_mean"],
                {**attrs, "long_name": "1/N-corrected mean of q_hat"},
            ),
            "q_sd": (
                "layer",
                moments["q_sd"],
                {**attrs, "long_name": "predicted std of q_hat over networks"},
            ),
            "v_mean": (
                "layer",
                moments["v_mean"],
                {**attrs, "long_name": "1/N-corrected mean of the conditional variance v"},
            ),
            "v_sd": (
                "layer",
                moments["v_sd"],
                {**attrs, "long_name": "predicted std of v over networks"},
            ),
            "g1": ("layer", g1, {"long_name": "O(1/N) mean shift coefficient G1"}),
            "v4": ("layer", v4, {"long_name": "O(1/N) variance coefficient V4"}),
        },
        coords={"layer": layer},
        attrs={"activation": act.label(), "width": int(width)},
    )


# --------------------------------------------------------------------------------------------------
# Caches keyed by an activation


class ActivationKey:
    """An activation hashed by its description (Activation itself is unhashable): two equal
    descriptions are the same function and share their theory."""

    __slots__ = ("_key", "act")

    def __init__(self, act: Activation):
        self.act = act
        self._key = (act.knots.tobytes(), act.values.tobytes(), act.slopes.tobytes())

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other) -> bool:
        return isinstance(other, ActivationKey) and self._key == other._key


def activation_cache(maxsize: int):
    """``functools.lru_cache`` for a function whose first argument is an Activation (keyed by its
    description, :class:`ActivationKey`) and whose other arguments are hashable and positional."""

    def decorate(fn):
        @functools.lru_cache(maxsize=maxsize)
        def cached(key: ActivationKey, *args):
            return fn(key.act, *args)

        @functools.wraps(fn)
        def wrapper(act: Activation, *args):
            return cached(ActivationKey(act), *args)

        return wrapper

    return decorate


# --------------------------------------------------------------------------------------------------
# Escape from a one-sided fixed point at finite width (docs/theory.md, section 5: the onset of the
# instability, the width law)


def onset_layer(act: Activation, sigma_w2, q_star, v4, width) -> float:
    """l_pt(N): the first layer l >= 1 at which the 1/N theory's spread of the layer variance,
    sqrt(V4^l / N), reaches the distance to instability d_l = 2 / (V''(q*) l); inf if none, and
    when V''(q*) <= 0 (no one-sided fixed point to leave: ReLU, where V is linear).

    A deviation delta = q - q* obeys delta -> delta + (V''/2) delta^2 + noise, the noise accumulating
    to Var[G^l] = V4^l / N (``v4``: V4^l for l = 0, 1, ..., from :func:`finite_width_terms`).
    delta blows up deterministically within 2 / (V'' delta) layers, so d_l, the deviation whose
    blow-up time is l, is the distance to instability at depth l. At l_pt the first-order mean
    shift G1^l / N equals half the spread: the 1/N expansion has lost its ordering. With
    V4^l ~ v l (ReLU_tau, ST_tau) this gives l_pt = (4 N / (V''^2 v))^{1/3} ~ N^{1/3}."""
    curvature = float(variance_curvature(act, q_star, sigma_w2))
    if not curvature > 0:
        return math.inf
    v4 = np.asarray(v4, dtype=float)
    layers = np.arange(1, v4.size)
    spread = np.sqrt(v4[1:] / width)
    hit = layers[spread >= 2.0 / (curvature * layers)]
    return float(hit[0]) if hit.size else math.inf


@functools.cache
def passage_constant() -> float:
    """C, the mean first-passage time of dy = y^2 dt + dW from y = 0 to +inf, by 2-d quadrature:

        C = 2 int_0^inf dy int_-inf^y dz exp(-(2/3)(y^3 - z^3))
          = 2 int_0^inf dy int_0^inf du exp(-(2/3) u (3 y^2 - 3 y u + u^2))      (z = y - u)

    = 4.1660 (to 1e-9). The second form has an exponent <= 0 everywhere."""
    value, _ = integrate.dblquad(
        lambda u, y: math.exp(-(2.0 / 3.0) * u * (3.0 * y * y - 3.0 * y * u + u * u)),
        0.0,
        math.inf,
        0.0,
        math.inf,
        epsabs=1e-12,
        epsrel=1e-11,
    )
    return 2.0 * value


def saddle_node(act: Activation, sigma_w2: float, q_star: float) -> tuple[float, float]:
    """(kappa, D) = (V''(q*) / 2, sigma_w^4 Var[phi(sqrt(q*) z)^2]) of the noisy saddle node at q*.

    Near q* on the Edge of Chaos of an unclipped activation (V(q*) = q*, V'(q*) = 1, V'' > 0), the
    deviation x = v - q* of the conditional variance v (the Markov state, G^l of
    :func:`finite_width`) follows

        x^{l+1} = x^l + kappa (x^l)^2 + sqrt(D / N) xi^l,   kappa = V''(q*) / 2,

    D = :func:`variance_noise` at q* (the source term of V4), xi^l of mean 0 and variance 1."""
    kappa = 0.5 * float(variance_curvature(act, q_star, sigma_w2))
    return kappa, float(variance_noise(act, q_star, sigma_w2))


def asymptotic_depth(act: Activation, sigma_w2: float, q_star: float, width) -> np.ndarray:
    """T(N) = C kappa^{-2/3} (D / N)^{-1/3}: the mean escape depth as N -> inf; inf where
    kappa <= 0, where there is no saddle node for the law to describe (ReLU: V is linear).

    With x = a y, l = b t, b = (kappa^2 D / N)^{-1/3} and a = 1 / (kappa b), the saddle node
    (:func:`saddle_node`) becomes dy = y^2 dt + dW, so T = C b, C = :func:`passage_constant`."""
    kappa, noise = saddle_node(act, sigma_w2, q_star)
    width = np.asarray(width, dtype=float)
    if not kappa > 0.0:
        return np.full(width.shape, math.inf)
    return passage_constant() * kappa ** (-2.0 / 3.0) * (noise / width) ** (-1.0 / 3.0)


@activation_cache(maxsize=16)
def _diffusion_grid(
    act: Activation, sigma_w2: float, sigma_b2: float, q_star: float, escape_factor: float, points
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The width-free part of :func:`diffusion_depth` (shared by the widths of a parameter cell):
    the grid on [q* / f, f q*], dense near q*, and on it the drift V(v) - v and N times the
    variance, sigma_w^4 Var[phi(sqrt(v) z)^2]."""
    lo, hi = q_star / escape_factor, q_star * escape_factor
    s = np.sinh(np.linspace(np.arcsinh(-80.0), np.arcsinh(80.0), points))
    grid = np.unique(np.clip(q_star + s * (hi - q_star) / 80.0, lo, hi))
    grid = grid[grid >= lo]
    drift = variance_map(act, grid, sigma_w2, sigma_b2) - grid
    return grid, drift, variance_noise(act, grid, sigma_w2)


@activation_cache(maxsize=256)
def diffusion_depth(
    act: Activation,
    sigma_w2: float,
    sigma_b2: float,
    q_star: float,
    escape_factor: float,
    width: float,
    points: int = 20001,
) -> float:
    """Mean first-passage depth of the diffusion with the whole drift mu(v) = V(v) - v and variance
    s^2(v) = sigma_w^4 Var[phi(sqrt(v) z)^2] / N from v = q* to the band edge f q*
    (f = ``escape_factor``), reflecting at q* / f, where networks almost never go:

        T = int_{q*}^{f q*} dy int_{q*/f}^{y} dz 2 / s^2(z) exp(Phi(z) - Phi(y)),  Phi' = 2 mu / s^2.

    It tends to :func:`asymptotic_depth` as N grows and shows the pre-asymptotic local exponents.
    By the trapezoid rule on a grid dense near q*; the inner integral runs as the recursion

        J_{k+1} = J_k e^{-dPhi_k} + w_k h_k (1 - e^{-dPhi_k}) / dPhi_k,

    exact for Phi linear and the weight 2 / s^2 constant (= w_k, its mean) over a step h_k, so
    nothing overflows however steep Phi is at large N."""
    grid, drift, noise = _diffusion_grid(act, sigma_w2, sigma_b2, q_star, escape_factor, points)
    spread = noise / width
    rate = 2.0 * drift / spread  # Phi'
    step = np.diff(grid)
    d_phi = 0.5 * (rate[1:] + rate[:-1]) * step
    weight = 1.0 / spread[1:] + 1.0 / spread[:-1]  # mean of 2 / s^2 over the step
    with np.errstate(invalid="ignore", divide="ignore"):
        gain = np.where(d_phi > 1e-12, -np.expm1(-d_phi) / d_phi, 1.0)
    decay = np.exp(-d_phi)
    fresh = weight * step * gain
    inner = np.zeros(grid.size)  # J(y) = int_lo^y 2 / s^2(z) exp(Phi(z) - Phi(y)) dz
    for k in range(grid.size - 1):
        inner[k + 1] = inner[k] * decay[k] + fresh[k]
    start = int(np.searchsorted(grid, q_star))
    return float(np.sum(0.5 * (inner[start + 1 :] + inner[start:-1]) * step[start:]))


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
