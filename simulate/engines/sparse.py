"""The sparse engine: exact in distribution, drawing only the neurons that are not on a flat piece.

The dynamics (as in :mod:`simulate.engines.gram`). Given layer l, the N rows of layer l+1 (the B
inputs h_b and the tangent t) are i.i.d. N(0, K), with

    K = sigma_b^2 [1_B 1_B^T  0; 0  0] + (sigma_w^2 / N) S,    S = sum_i a_i a_i^T,
    a_i = (phi(h_0i), ..., phi(h_{B-1,i}), phi'(h_0i) t_i),

so K is the Markov state of the network, and all the next layer needs from the N rows of the current
one is the (B+1) x (B+1) sum S (and, for the record, the number of exact zeros per input).

phi is continuous piecewise linear (``Activation.pieces``): on piece p = [lo_p, hi_p),
phi(x) = y_p + s_p (x - x_p). On a flat piece (s_p = 0) a row contributes the constant y_p to
phi, and phi' = 0 kills its tangent term, so only the number of rows on each flat piece matters,
not their values. The engine therefore splits the N i.i.d. rows into classes, draws the class
counts from their multinomial distribution (sequential binomials), and then draws only the rows of
the classes that need values, each from its exact conditional distribution. Rows are i.i.d., so
"counts, then i.i.d. draws within each class" is the same distribution as drawing the N rows.

B = 1 (rows (h, t), h ~ N(0, K_00)). Classes: the pieces, with probabilities
Phi(hi_p / sigma) - Phi(lo_p / sigma), sigma^2 = K_00. A row on a sloped piece draws
h = sigma z, z from the standard normal truncated to [lo_p, hi_p) / sigma; its tangent follows the
Gaussian conditional t = L_10 z + L_11 g (L = chol(K), g ~ N(0, 1)), which enters S only through
sum_i a_i g_i, sum_i z_i g_i and sum_i g_i^2 over the piece's rows: those are drawn at once from two
normals and a chi-square (:func:`tangent_sums`), exactly, instead of one normal per row.

B = 2 (rows (h_0, h_1, t)), with S the set of sloped pieces and F the flat ones. Classes:

- C_j = {h_0 in j}, j in S: probability P(h_0 in j) (one-dimensional). Draw h_0 truncated to j,
  then h_1 | h_0 and t | h_0, h_1 (plain Gaussian draws through chol(K)); h_1 lands on whatever
  piece it lands on.
- D_k = {h_0 in F, h_1 in k}, k in S: probability sum_{f in F} R(f, k), with R(f, k) the
  bivariate normal probability of the rectangle f x k. Rows need h_1 (and which flat piece h_0 is
  on, not its value; t is not needed since phi'(h_0) = 0). They are drawn by rejection
  (:func:`conditional_pairs`): h_1 from its marginal truncated to k, h_0 | h_1 Gaussian, kept when
  h_0 lands on a flat piece. This is exact (a sample of (h_0, h_1) | h_1 in k, conditioned on
  h_0 in F), and its expected cost does not depend on the acceptance a = P(h_0 in F | h_1 in k):
  N P(F, k) rows at 1 / a proposals each make N P(h_1 in k) proposals, never more than a full draw
  of piece k. Its tail does: when a < SIDE_SWITCH the n_k rows are split over the flat pieces
  (multinomial with R(f, k)) and each (f, k) is proposed from the less probable of its two pieces
  (h_0 in f, keeping h_1 in k, when P(h_0 in f) <= P(h_1 in k); else h_1 in k, keeping h_0 in f),
  the side of larger acceptance R(f, k) / min(P(h_0 in f), P(h_1 in k)): a rare flat piece no
  longer makes a rare acceptance.
- E_{f,g} = {h_0 in f, h_1 in g}, f, g in F: probability R(f, g); constants only.

The classes partition the plane, so their probabilities sum to one. Rectangle probabilities come
from the bivariate normal CDF on the grid of breakpoints (:func:`simulate.engines._bvn.bvn_cdf_grid`),
the one-dimensional ones from erfc on the tail-appropriate side.

Truncated normal (:func:`fill_truncated`, a piece's draws of a layer at once). A piece drawn often
(STRIP_MIN_DRAWS) uses the strip sampler of :func:`prepare_strips`, an exact rejection sampler
under a piecewise-constant envelope (about two uniforms per draw); otherwise inversion with one
uniform, on the side of zero where each part of the interval lies, so both tails keep full relative
precision: with
w_- = Phi(min(b, 0)) - Phi(a) (the mass below 0) and w_+ = Q(max(a, 0)) - Q(b) (above 0),
Q = 1 - Phi, and U = u (w_- + w_+), u uniform on (0, 1):

    z = Phi^{-1}(Phi(a) + U)                     if U < w_-,
    z = -Phi^{-1}(Q(max(a, 0)) - (U - w_-))      otherwise,

with Phi^{-1} from AS 241 (relative error ~1e-16 down to probabilities of 1e-300; a piece whose
probability underflows to 0 gets no rows).

Degenerate kernels (a zero input variance, or |corr(h_0, h_1)| = 1 to rounding: identical inputs),
where the classes above are not defined, are drawn row by row from chol(K) like the Gram engine:
still exact, just not faster.

What the engine records (it never sees the pre-activations of all rows, so q and corr stay NaN):
v^l_b = K^l_bb, v_corr^l = K^l_01 / sqrt(K^l_00 K^l_11), zero_frac^l, escape on v, and the gain
of the tangent's conditional variance ln(K^l_tt / K^{l-1}_tt) (see :func:`run_sparse`).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit
from scipy.special import ndtr

from simulate.activations import Activation, piece_index
from simulate.engines._bvn import bvn_cdf_grid, ndtri, norm_cdf, norm_sf
from simulate.engines.gram import safe_cholesky
from simulate.engines.registry import Engine, Outputs, Problem, register

MAX_INPUTS = 2
"""The largest B the engine serves (it needs B-variate normal rectangle probabilities)."""

MAX_PROPOSALS = 10**9
MAX_PROPOSALS_PER_ROW = 1000
"""Budget of one rejection step (:func:`conditional_pairs`): MAX_PROPOSALS_PER_ROW * N +
MAX_PROPOSALS proposals. A class is sampled from the side where its acceptance is larger
(SIDE_SWITCH); the acceptance of a genuine class is then at least of the order of
sqrt(1 - rho^2) > 1e-6 (the thinnest class is a sliver along the diagonal as |rho| -> 1, and
``safe_cholesky`` sends 1 - rho^2 <= 1e-12 to the row-by-row path), so that a genuine class runs
through the budget with a probability of order exp(-1e-6 * 1e9) or below. The budget is there for a
class that rounding made non-empty (a rectangle of true probability far below the 1e-16 absolute
error of its inclusion-exclusion): the layer is then redrawn row by row, a departure from
exactness of the size of that rounding."""
SIDE_SWITCH = 0.01
"""Below this acceptance P(h_0 in F | h_1 in k), the rows of D_k are drawn per flat piece f, each
from the side (h_0 in f, or h_1 in k) of smaller probability, i.e. of larger acceptance."""

TINY = 2.0**-54
"""Added to a uniform on [0, 1) (multiples of 2^-53) to make it uniform on (0, 1)."""
ALMOST_ONE = 1.0 - 2.0**-53
"""The largest double below 1."""

STRIPS = 32
"""Equal-width strips of the strip sampler (:func:`prepare_strips`) over the core of a piece."""
CORE_SPAN = 6.0
"""Half-width of the core of a piece (z units) around its point m nearest 0, divided by 1 + |m|
(about the decay length of the density there); beyond it, tails drawn by inversion."""
STRIP_MIN_DRAWS = 64
"""Expected draws from a piece in one layer from which the strip sampler's set-up (the envelope,
the guide table, the tail rows) pays for itself; below, plain inversion."""

# one row of a truncation table: the interval [a, b) in z units, its masses below / above zero, and
# the strip sampler's core start, strip width and flag (0: not prepared)
T_A, T_B, T_CDF_A, T_W_LOW, T_SF_A0, T_W_HIGH, T_CORE, T_STEP, T_STRIPS = range(9)
TABLE_COLUMNS = 9
# one row of a strip table (:func:`prepare_strips`)
S_START, S_INV_PROB, S_INV_MAX, S_SQUEEZE = range(4)
GUIDE = 128
"""Entries of the guide table that starts the search for the strip holding a uniform."""
SQRT_2PI = math.sqrt(2.0 * math.pi)
ENVELOPE_MARGIN = 1e-12
"""Relative margin of the strip envelope above e and of its squeeze below e (their recurrences
round; the margin keeps the envelope an upper and the squeeze a lower bound)."""


# --------------------------------------------------------------------------------------------------
# one-dimensional pieces and the truncated normal


@njit(cache=True, nogil=True)
def interval_values(a, b, cdf_a, sf_a, cdf_b, sf_b, row):
    """Fill ``row`` for the standard normal truncated to [a, b), given Phi and Q = 1 - Phi at both
    ends: a, b, Phi(a), the mass w_- = Phi(min(b, 0)) - Phi(a) below zero, Q(max(a, 0)) and the
    mass w_+ = Q(max(a, 0)) - Q(b) above zero (module docstring); the probability is w_- + w_+."""
    sf_a0 = sf_a if a > 0.0 else 0.5
    row[T_A] = a
    row[T_B] = b
    row[T_CDF_A] = cdf_a
    row[T_W_LOW] = max((cdf_b if b <= 0.0 else 0.5) - cdf_a, 0.0) if a < 0.0 else 0.0
    row[T_SF_A0] = sf_a0
    row[T_W_HIGH] = max(sf_a0 - sf_b, 0.0) if b > 0.0 else 0.0
    row[T_STRIPS] = 0.0


@njit(cache=True, nogil=True)
def interval_row(a, b, row):
    """:func:`interval_values` for [a, b)."""
    interval_values(a, b, norm_cdf(a), norm_sf(a), norm_cdf(b), norm_sf(b), row)


@njit(cache=True, nogil=True)
def truncation_table(breaks, sigma, table):
    """One row (:func:`interval_values`) per piece of N(0, sigma^2), [lo_p, hi_p) / sigma, with Phi
    and Q evaluated once per breakpoint."""
    n = table.shape[0]
    a, cdf_a, sf_a = -math.inf, 0.0, 1.0
    for p in range(n):
        if p < n - 1:
            b = breaks[p] / sigma
            cdf_b, sf_b = norm_cdf(b), norm_sf(b)
        else:
            b, cdf_b, sf_b = math.inf, 1.0, 0.0
        interval_values(a, b, cdf_a, sf_a, cdf_b, sf_b, table[p])
        a, cdf_a, sf_a = b, cdf_b, sf_b


@njit(cache=True, nogil=True)
def piece_mass(row):
    """The probability w_- + w_+ of a row's interval."""
    return row[T_W_LOW] + row[T_W_HIGH]


@njit(cache=True, nogil=True)
def truncated_quantile(row, u):
    """The u-quantile (0 < u < 1) of the standard normal truncated to the row's [a, b): inversion
    on the side of zero where it falls, so that both tails keep full relative precision (module
    docstring)."""
    w_low = row[T_W_LOW]
    mass = u * (w_low + row[T_W_HIGH])
    if mass < w_low:
        z = ndtri(row[T_CDF_A] + mass)
    else:
        z = -ndtri(row[T_SF_A0] - (mass - w_low))
    return min(max(z, row[T_A]), row[T_B])


@njit(cache=True, nogil=True)
def prepare_strips(row, strip, guide, tails):
    """Set up the strip sampler of the row's truncated normal: an exact rejection sampler for
    pieces drawn many times in a layer, about two uniforms per draw.

    With e(x) = exp(-x^2 / 2), m the point of [a, b) nearest 0 and the core
    [c_0, c_1] = [a, b) cap [m - s, m + s], s = CORE_SPAN / (1 + |m|), cut into STRIPS strips of
    width w, the sampler picks one of STRIPS + 2 entries with probability proportional to its area:
    entry 0 the tail [a, c_0) and entry STRIPS + 1 the tail [c_1, b) (exact areas
    sqrt(2 pi) P(tail), zero when empty), entry i the strip [c_0 + (i-1) w, c_0 + i w) under the
    envelope M_i = max e on it (area M_i w). A tail is drawn exactly by inversion; a point x
    uniform in a strip is accepted with probability e(x) / M_i (at once when the uniform falls below
    the squeeze min e / M_i), else the draw starts over. The accepted density is proportional to e
    everywhere: exact. Acceptance is about 1 - |x| w / 2 per strip.

    Layout: strip[i] = (start of entry i in [0, 1) of the cumulative areas, 1 / its probability,
    1 / M_i, squeeze), strip[STRIPS + 2, 0] = 1; guide[g] = the entry holding g / GUIDE (the search
    from there rarely moves). Returns False (nothing prepared) if e vanishes on the core.
    """
    a, b = row[T_A], row[T_B]
    m = min(max(0.0, a), b)
    span = CORE_SPAN / (1.0 + abs(m))
    c0 = max(a, m - span)
    c1 = min(b, m + span)
    step = (c1 - c0) / STRIPS
    # e at the strip ends x_i = c0 + i w by e_{i+1} = e_i r_i, r_i = exp(-w x_i - w^2 / 2),
    # r_{i+1} = r_i exp(-w^2); envelope and squeeze get a margin against the rounding
    e = math.exp(-0.5 * c0 * c0)
    ratio = math.exp(-step * c0 - 0.5 * step * step)
    shrink = math.exp(-step * step)
    for i in range(1, STRIPS + 1):
        e_next = e * ratio
        if not (e > 0.0 and e_next > 0.0 and math.isfinite(e_next)):
            return False
        lo = c0 + (i - 1) * step
        peak = 1.0 if lo <= 0.0 <= lo + step else max(e, e_next)
        envelope = peak * (1.0 + ENVELOPE_MARGIN)
        strip[i, S_INV_MAX] = 1.0 / envelope
        strip[i, S_SQUEEZE] = min(e, e_next) / envelope * (1.0 - ENVELOPE_MARGIN)
        strip[i, S_START] = envelope * step  # area, turned into the cumulative start below
        e = e_next
        ratio *= shrink
    strip[0, S_START] = 0.0
    strip[STRIPS + 1, S_START] = 0.0
    if c0 > a:
        interval_row(a, c0, tails[0])
        strip[0, S_START] = SQRT_2PI * piece_mass(tails[0])
    if c1 < b:
        interval_row(c1, b, tails[1])
        strip[STRIPS + 1, S_START] = SQRT_2PI * piece_mass(tails[1])
    total = 0.0
    for i in range(STRIPS + 2):
        total += strip[i, S_START]
    start = 0.0
    for i in range(STRIPS + 2):
        area = strip[i, S_START] / total
        strip[i, S_START] = start
        strip[i, S_INV_PROB] = 1.0 / area if area > 0.0 else 0.0
        start += area
    strip[STRIPS + 2, S_START] = 1.0
    i = 0
    for g in range(GUIDE):
        while strip[i + 1, S_START] <= g / GUIDE:
            i += 1
        guide[g] = i
    row[T_CORE] = c0
    row[T_STEP] = step
    row[T_STRIPS] = 1.0
    return True


@njit(cache=True, nogil=True)
def fill_truncated(row, strip, guide, tails, rng, out):
    """Fill ``out`` with i.i.d. standard normals truncated to the row's [a, b): by the strip sampler
    if it is prepared (:func:`prepare_strips`), else by inversion with one uniform each
    (:func:`truncated_quantile`). (A whole batch per call: the draws of a piece in a layer.)"""
    n = out.size
    if row[T_STRIPS] == 0.0:
        for k in range(n):
            out[k] = truncated_quantile(row, rng.random() + TINY)
        return
    k = 0
    while k < n:
        u = rng.random()
        i = guide[int(u * GUIDE)]
        while u >= strip[i + 1, S_START]:
            i += 1
        f = (u - strip[i, S_START]) * strip[i, S_INV_PROB]  # uniform on [0, 1) within entry i
        if i == 0 or i == STRIPS + 1:
            out[k] = truncated_quantile(tails[min(i, 1)], min(max(f, TINY), ALMOST_ONE))
            k += 1
            continue
        x = row[T_CORE] + (i - 1 + f) * row[T_STEP]
        v = rng.random()
        if v < strip[i, S_SQUEEZE] or v < math.exp(-0.5 * x * x) * strip[i, S_INV_MAX]:
            out[k] = x
            k += 1


@njit(cache=True, nogil=True)
def multinomial(rng, n, probs, suffix, counts):
    """counts ~ Multinomial(n, probs / sum(probs)) as sequential binomials: class c gets
    Bin(n - sum_{i<c} counts_i, probs_c / suffix_c), suffix_c = sum_{i>=c} probs_i summed from the
    small end (tiny probabilities keep their relative precision). ``suffix`` is a work array."""
    m = probs.size
    total = 0.0
    for c in range(m - 1, -1, -1):
        total += probs[c]
        suffix[c] = total
        counts[c] = 0
    remaining = n
    for c in range(m - 1):
        if remaining == 0:
            return
        frac = min(probs[c] / suffix[c], 1.0) if suffix[c] > 0.0 else 0.0
        if frac > 0.0:
            counts[c] = rng.binomial(remaining, frac)
            remaining -= counts[c]
    counts[m - 1] = remaining


# --------------------------------------------------------------------------------------------------
# one layer: the sum S = sum_i a_i a_i^T and the zero counts of its N rows, given K


@njit(cache=True, nogil=True)
def full_layer(K, width, pieces, rng, L, S, zeros):
    """Every row drawn from chol(K) (the degenerate-kernel path): S and the zero counts."""
    breaks, anchor_x, anchor_y, slope = pieces
    nv = K.shape[0]
    n_inputs = nv - 1
    safe_cholesky(K, L)
    g = np.empty(nv)
    a = np.empty(nv)
    d0 = 0.0
    for _ in range(width):
        for r in range(nv):
            g[r] = rng.standard_normal()
        for b in range(n_inputs):
            h = 0.0
            for c in range(b + 1):
                h += L[b, c] * g[c]
            p = piece_index(h, breaks)
            a[b] = anchor_y[p] if slope[p] == 0.0 else anchor_y[p] + slope[p] * (h - anchor_x[p])
            zeros[b] += a[b] == 0.0
            if b == 0:
                d0 = slope[p]
        t = 0.0
        for c in range(nv):
            t += L[n_inputs, c] * g[c]
        a[n_inputs] = d0 * t
        for r in range(nv):
            for c in range(r + 1):
                S[r, c] += a[r] * a[c]
    for r in range(nv):
        for c in range(r):
            S[c, r] = S[r, c]


@njit(cache=True, nogil=True)
def tangent_sums(n, sum_a, slope, sum_z, spread, rng):
    """(sum_i a_i g_i, sum_i z_i g_i, sum_i g_i^2) for g i.i.d. N(0, 1) (n of them), given the rows'
    z_i and a_i = alpha + slope z_i on one piece, with sum_a, sum_z and spread = |z - mean(z)|,
    drawn exactly from three variates instead of n.

    With the orthonormal e_1 = 1 / sqrt(n) and e_2 = (z - mean(z)) / spread, G_k = e_k . g are
    i.i.d. N(0, 1) and |g|^2 - G_1^2 - G_2^2 is chi^2 with n - 2 degrees of freedom, independent of
    them (n - 1 and no G_2 when spread = 0, e.g. n = 1). Then z . g = sum_z / sqrt(n) G_1 +
    spread G_2 and a . g = sum_a / sqrt(n) G_1 + slope spread G_2 (a is affine in z)."""
    root = math.sqrt(n)
    g1 = rng.standard_normal()
    g2 = rng.standard_normal() if spread > 0.0 else 0.0
    rest = n - (2 if spread > 0.0 else 1)
    gg = g1 * g1 + g2 * g2 + (2.0 * rng.standard_gamma(0.5 * rest) if rest > 0 else 0.0)
    return sum_a / root * g1 + slope * spread * g2, sum_z / root * g1 + spread * g2, gg


@njit(cache=True, nogil=True)
def sparse_layer_1(K, width, pieces, rng, work, S, zeros):
    """B = 1: add to S (2 x 2) and zeros (1) the sums over N rows (h, t) ~ N(0, K) (module
    docstring). Returns False, having drawn nothing, if K is degenerate (K_00 = 0)."""
    breaks, anchor_x, anchor_y, slope = pieces
    L, tables, strips, guides, tails, _, _, probs, suffix, counts, zbuf = work[:11]
    safe_cholesky(K, L)
    sigma = L[0, 0]
    if sigma == 0.0:
        return False
    n_pieces = anchor_y.size
    table = tables[0]
    truncation_table(breaks, sigma, table)
    for p in range(n_pieces):
        probs[p] = piece_mass(table[p])
    multinomial(rng, width, probs[:n_pieces], suffix, counts)
    l10, l11 = L[1, 0], L[1, 1]
    s00 = s0t = stt = 0.0
    z0 = 0
    for p in range(n_pieces):
        n = counts[p]
        y = anchor_y[p]
        s = slope[p]
        if s == 0.0:
            s00 += n * y * y
            z0 += n if y == 0.0 else 0
            continue
        if n == 0:
            continue
        x0 = anchor_x[p]
        row, strip, guide, tail = table[p], strips[0, p], guides[0, p], tails[0, p]
        if n >= STRIP_MIN_DRAWS:
            prepare_strips(row, strip, guide, tail)
        fill_truncated(row, strip, guide, tail, rng, zbuf[:n])
        sum_a = sum_z = sum_az = 0.0
        for i in range(n):
            z = zbuf[i]
            a = y + s * (sigma * z - x0)
            s00 += a * a
            sum_a += a
            sum_z += z
            sum_az += a * z
            z0 += a == 0.0
        # the tangent terms d_i = s (l10 z_i + l11 g_i) through the projections of g (tangent_sums)
        mean_z = sum_z / n
        spread = 0.0
        for i in range(n):
            spread += (zbuf[i] - mean_z) ** 2
        sum_zz = spread + n * mean_z * mean_z
        ag, zg, gg = tangent_sums(n, sum_a, s * sigma, sum_z, math.sqrt(spread), rng)
        s0t += s * (l10 * sum_az + l11 * ag)
        stt += s * s * (l10 * l10 * sum_zz + 2.0 * l10 * l11 * zg + l11 * l11 * gg)
    S[0, 0] += s00
    S[0, 1] += s0t
    S[1, 0] += s0t
    S[1, 1] += stt
    zeros[0] += z0
    return True


@njit(cache=True, nogil=True)
def rectangle_probabilities(table0, table1, rho, grid, rect):
    """R[i, j] = P(h_0 in piece i, h_1 in piece j) for (h_0, h_1) with correlation rho, by
    inclusion-exclusion on F(x, y) = P(h_0 <= x, h_1 <= y) at the breakpoints (z units, from the
    truncation tables; F on the edges is one-dimensional), clamped at 0 against rounding."""
    n = rect.shape[0]
    xs = table0[1:, T_A]
    ys = table1[1:, T_A]
    grid[0, :] = 0.0
    grid[:, 0] = 0.0
    bvn_cdf_grid(xs, ys, rho, grid[1:n, 1:n])
    for i in range(1, n):
        grid[i, n] = table0[i, T_CDF_A]
        grid[n, i] = table1[i, T_CDF_A]
    grid[n, n] = 1.0
    for i in range(n):
        for j in range(n):
            r = grid[i + 1, j + 1] - grid[i, j + 1] - grid[i + 1, j] + grid[i, j]
            rect[i, j] = max(r, 0.0)


@njit(cache=True, nogil=True)
def conditional_pairs(
    n, row, strip, guide, tails, sigma, slope, sd, breaks, accept, per_row, rng, zbuf, xs, ys, width
):
    """n pairs (x, y) from (x, y) | x in the row's piece, y in an accepted piece, for x ~ N(0,
    sigma^2) and y | x ~ N(slope x, sd^2), by rejection: x = sigma z with z truncated to the piece,
    y drawn given x, kept when accept[piece of y]. Written to xs[:n], ys[:n]. ``per_row`` is the
    expected number of proposals per kept pair (1 / acceptance), for the batch sizes and the choice
    of the strip sampler. Returns False if the proposals exceed the budget (see MAX_PROPOSALS)."""
    if n * per_row >= STRIP_MIN_DRAWS:
        prepare_strips(row, strip, guide, tails)
    kept = 0
    budget = MAX_PROPOSALS_PER_ROW * width + MAX_PROPOSALS
    while kept < n:
        batch = min(zbuf.size, int(min((n - kept) * per_row * 1.1, 1e9)) + 8)
        budget -= batch
        if budget < 0:
            return False
        fill_truncated(row, strip, guide, tails, rng, zbuf[:batch])
        for i in range(batch):
            x = sigma * zbuf[i]
            y = slope * x + sd * rng.standard_normal()
            if not accept[piece_index(y, breaks)]:
                continue
            xs[kept] = x
            ys[kept] = y
            kept += 1
            if kept == n:
                break
    return True


@njit(cache=True, nogil=True)
def sparse_layer_2(K, width, pieces, rng, work, S, zeros):
    """B = 2: add to S (3 x 3) and zeros (2) the sums over N rows (h_0, h_1, t) ~ N(0, K) (module
    docstring). Returns False if K is degenerate (then nothing is drawn), or if the rejection step
    of a class D_k exceeds MAX_PROPOSALS (then S and zeros are partial: see MAX_PROPOSALS)."""
    breaks, anchor_x, anchor_y, slope = pieces
    L, tables, strips, guides, tails, grid, rect, probs, suffix, counts, zbuf = work[:11]
    pair_buf, accept, sub_counts = work[11:]
    safe_cholesky(K, L)
    if L[0, 0] == 0.0 or L[1, 1] == 0.0:
        return False
    n_pieces = anchor_y.size
    sigma0 = L[0, 0]
    sigma1 = math.sqrt(K[1, 1])
    rho = min(max(K[0, 1] / (sigma0 * sigma1), -1.0), 1.0)
    table0, table1 = tables[0], tables[1]
    truncation_table(breaks, sigma0, table0)
    truncation_table(breaks, sigma1, table1)
    rectangle_probabilities(table0, table1, rho, grid, rect)
    # classes, in this order: C_j (j sloped), D_k (k sloped), E_{f,g} (f, g flat)
    c = 0
    for j in range(n_pieces):
        if slope[j] != 0.0:
            probs[c] = piece_mass(table0[j])
            c += 1
    for k in range(n_pieces):
        if slope[k] != 0.0:
            total = 0.0
            for f in range(n_pieces):
                if slope[f] == 0.0:
                    total += rect[f, k]
            probs[c] = total
            c += 1
    for f in range(n_pieces):
        if slope[f] == 0.0:
            for g in range(n_pieces):
                if slope[g] == 0.0:
                    probs[c] = rect[f, g]
                    c += 1
    multinomial(rng, width, probs[:c], suffix, counts)

    l10, l11 = L[1, 0], L[1, 1]
    l20, l21, l22 = L[2, 0], L[2, 1], L[2, 2]
    # h_0 | h_1 = m01 h_1 + e0 g and h_1 | h_0 = m10 h_0 + e1 g
    m01 = K[0, 1] / K[1, 1]
    m10 = K[0, 1] / K[0, 0]
    e0 = sigma0 * math.sqrt((1.0 - rho) * (1.0 + rho))
    e1 = sigma1 * math.sqrt((1.0 - rho) * (1.0 + rho))
    s00 = s01 = s11 = s0t = s1t = stt = 0.0
    z0 = z1 = 0
    c = 0
    for j in range(n_pieces):  # C_j
        if slope[j] == 0.0:
            continue
        n = counts[c]
        c += 1
        y, s, x0 = anchor_y[j], slope[j], anchor_x[j]
        row, strip, guide, tail = table0[j], strips[0, j], guides[0, j], tails[0, j]
        if n >= STRIP_MIN_DRAWS:
            prepare_strips(row, strip, guide, tail)
        fill_truncated(row, strip, guide, tail, rng, zbuf[:n])
        for i in range(n):
            z = zbuf[i]
            a0 = y + s * (sigma0 * z - x0)
            g1 = rng.standard_normal()
            h1 = l10 * z + l11 * g1
            p1 = piece_index(h1, breaks)
            a1 = anchor_y[p1]
            if slope[p1] != 0.0:
                a1 += slope[p1] * (h1 - anchor_x[p1])
            d = s * (l20 * z + l21 * g1 + l22 * rng.standard_normal())
            s00 += a0 * a0
            s01 += a0 * a1
            s11 += a1 * a1
            s0t += a0 * d
            s1t += a1 * d
            stt += d * d
            z0 += a0 == 0.0
            z1 += a1 == 0.0
    for k in range(n_pieces):  # D_k
        if slope[k] == 0.0:
            continue
        n = counts[c]
        p_fk = probs[c]
        c += 1
        if n == 0:
            continue
        # rows (h_0, h_1) of D_k, in pair_buf: by flat piece f, from whichever side accepts more
        # often when D_k as a whole is a thin part of h_1's piece (SIDE_SWITCH), else at once
        p1k = piece_mass(table1[k])
        if p_fk >= SIDE_SWITCH * p1k:
            accept[:] = slope == 0.0
            done = conditional_pairs(
                n, table1[k], strips[1, k], guides[1, k], tails[1, k], sigma1, m01, e0, breaks,
                accept, p1k / p_fk, rng, zbuf, pair_buf[1], pair_buf[0], width,
            )  # fmt: skip
            if not done:
                return False
        else:
            multinomial(rng, n, rect[:, k] * (slope == 0.0), suffix, sub_counts)
            start = 0
            for f in range(n_pieces):
                m = sub_counts[f]
                if m == 0:
                    continue
                accept[:] = False
                r = pair_buf[:, start : start + m]
                if piece_mass(table0[f]) <= p1k:  # propose h_0 in f
                    accept[k] = True
                    done = conditional_pairs(
                        m, table0[f], strips[0, f], guides[0, f], tails[0, f], sigma0, m10, e1,
                        breaks, accept, piece_mass(table0[f]) / rect[f, k], rng, zbuf, r[0], r[1],
                        width,
                    )  # fmt: skip
                else:  # propose h_1 in k
                    accept[f] = True
                    done = conditional_pairs(
                        m, table1[k], strips[1, k], guides[1, k], tails[1, k], sigma1, m01, e0,
                        breaks, accept, p1k / rect[f, k], rng, zbuf, r[1], r[0], width,
                    )  # fmt: skip
                if not done:
                    return False
                start += m
        y, s, x1 = anchor_y[k], slope[k], anchor_x[k]
        for i in range(n):
            a0 = anchor_y[piece_index(pair_buf[0, i], breaks)]
            a1 = y + s * (pair_buf[1, i] - x1)
            s00 += a0 * a0
            s01 += a0 * a1
            s11 += a1 * a1
            z0 += a0 == 0.0
            z1 += a1 == 0.0
    for f in range(n_pieces):  # E_{f,g}
        if slope[f] != 0.0:
            continue
        for g in range(n_pieces):
            if slope[g] != 0.0:
                continue
            n = counts[c]
            c += 1
            y0, y1 = anchor_y[f], anchor_y[g]
            s00 += n * y0 * y0
            s01 += n * y0 * y1
            s11 += n * y1 * y1
            z0 += n if y0 == 0.0 else 0
            z1 += n if y1 == 0.0 else 0
    S[0, 0] += s00
    S[0, 1] += s01
    S[1, 0] += s01
    S[1, 1] += s11
    S[0, 2] += s0t
    S[2, 0] += s0t
    S[1, 2] += s1t
    S[2, 1] += s1t
    S[2, 2] += stt
    zeros[0] += z0
    zeros[1] += z1
    return True


# --------------------------------------------------------------------------------------------------
# the layer loop


@njit(cache=True, nogil=True)
def workspace(nv, n_pieces, width):
    """Work arrays of :func:`draw_layer` for nv = B + 1 vectors and P pieces: the Cholesky factor,
    per input and piece the truncation row, strip table, guide table and tail rows, the rectangle
    grid and probabilities, the class probabilities, suffix sums and counts, and a buffer of N
    truncated draws."""
    n_classes = 2 * n_pieces + n_pieces * n_pieces
    return (
        np.empty((nv, nv)),
        np.empty((2, n_pieces, TABLE_COLUMNS)),
        np.empty((2, n_pieces, STRIPS + 3, 4)),
        np.empty((2, n_pieces, GUIDE), dtype=np.int64),
        np.empty((2, n_pieces, 2, TABLE_COLUMNS)),
        np.empty((n_pieces + 1, n_pieces + 1)),
        np.empty((n_pieces, n_pieces)),
        np.empty(n_classes),
        np.empty(n_classes),
        np.empty(n_classes, dtype=np.int64),
        np.empty(width),
        np.empty((2, width)),
        np.empty(n_pieces, dtype=np.bool_),
        np.empty(n_pieces, dtype=np.int64),
    )


@njit(cache=True, nogil=True)
def draw_layer(K, width, pieces, rng, work, S, zeros):
    """S = sum_i a_i a_i^T and the zero counts of N rows ~ N(0, K), by classes when K allows it,
    else row by row (both exact)."""
    S[:, :] = 0.0
    zeros[:] = 0
    n_inputs = zeros.size
    if n_inputs == 1:
        done = sparse_layer_1(K, width, pieces, rng, work, S, zeros)
    else:
        done = sparse_layer_2(K, width, pieces, rng, work, S, zeros)
    if not done:
        S[:, :] = 0.0
        zeros[:] = 0
        full_layer(K, width, pieces, rng, work[0], S, zeros)


@njit(cache=True, nogil=True)
def run_sparse(
    K0, width, pieces, sigma_w2, sigma_b2, band_lo, band_hi, rng, v, v_corr, zero_frac, gain, escape
):
    """Propagate nets = v.shape[0] networks through depth = v.shape[1] - 1 layers, B = v.shape[2].

    K^0 = K0 ((B+1) x (B+1): the inputs' kernel, and 1 for the tangent). At layer l: record
    v^l_b = K^l_bb and v_corr^l (pair (0, 1)); gain^l = ln(K^l_tt / K^{l-1}_tt) for l >= 1 (-inf
    when K^l_tt = 0: the tangent died, and is then restarted as K_tt = 1 uncorrelated with the
    inputs, i.e. redrawn i.i.d. N(0, 1) as in the other engines); draw the layer's N rows (their
    sum S and zero counts, :func:`draw_layer`); stop if some v^l_b leaves [band_lo_b, band_hi_b]
    (escape^l = l); else K^{l+1} = (sigma_w^2 / N) S + sigma_b^2 on the input block.
    Outputs are pre-filled with NaN / -1 and written in place.
    """
    nets, n_layers, n_inputs = v.shape
    nv = n_inputs + 1
    work = workspace(nv, pieces[2].size, width)
    K = np.empty((nv, nv))
    S = np.empty((nv, nv))
    zeros = np.empty(n_inputs, dtype=np.int64)
    for net in range(nets):
        K[:, :] = K0
        ktt_prev = K0[n_inputs, n_inputs]
        for l in range(n_layers):
            if l > 0:
                for r in range(nv):
                    for c in range(nv):
                        K[r, c] = sigma_w2 / width * S[r, c]
                        if r < n_inputs and c < n_inputs:
                            K[r, c] += sigma_b2
            for b in range(n_inputs):
                v[net, l, b] = K[b, b]
            if n_inputs == 2:
                norm2 = K[0, 0] * K[1, 1]
                v_corr[net, l, 0] = K[0, 1] / math.sqrt(norm2) if norm2 > 0.0 else math.nan
            ktt = K[n_inputs, n_inputs]
            if l > 0:
                gain[net, l] = math.log(ktt / ktt_prev) if ktt > 0.0 else -math.inf
            if ktt == 0.0:
                K[n_inputs, :] = 0.0
                K[:, n_inputs] = 0.0
                K[n_inputs, n_inputs] = 1.0
            draw_layer(K, width, pieces, rng, work, S, zeros)
            inside = True
            for b in range(n_inputs):
                zero_frac[net, l, b] = zeros[b] / width
                inside = inside and band_lo[b] <= v[net, l, b] <= band_hi[b]
            if not inside:
                escape[net] = l
                break
            ktt_prev = K[n_inputs, n_inputs]


# --------------------------------------------------------------------------------------------------
# the engine interface


def supports(act: Activation, n_inputs: int) -> str | None:
    """None for B <= 2 (any piecewise-linear activation), else the one-line reason."""
    if n_inputs > MAX_INPUTS:
        return (
            f"B={n_inputs} inputs: the sparse engine serves B <= {MAX_INPUTS} (its piece counts "
            "need B-variate normal rectangle probabilities)"
        )
    return None


LAYER_NS = (0.0, 1200.0, 2970.0)
"""Fixed cost of a layer (ns) for B = 1 and B = 2: the truncation tables, the binomials of the
class counts, the strip set-up of the sloped pieces, the loop."""
PIECE_NS = 58.0
"""Per piece of the activation, B = 1 (ns): its truncation row and count."""
BVN_NS = 284.0
"""One point of the bivariate normal CDF grid (ns); a B = 2 layer needs (P - 1)^2 for P pieces."""
ROW_NS = (0.0, 18.0, 44.0)
"""Per drawn row and input (ns), B = 1 and B = 2: a truncated normal, the tangent (B = 2: and the
other input), the piece lookups and the sums. (B = 1: re-measured with benchmarks/engines.py at
N = 3000 once the tangent's sums were drawn per piece, :func:`tangent_sums`; it was 35.)"""
TYPICAL_SLOPED = 0.15
"""Fraction of rows on sloped pieces assumed when the activation is not known."""


def sloped_mass(act: Activation, q: float) -> float:
    """P(h on a sloped piece) for h ~ N(0, q): the fraction of rows the engine draws per input."""
    p = act.pieces
    lo, hi = p.lo / math.sqrt(q), p.hi / math.sqrt(q)
    return float(np.sum((ndtr(hi) - ndtr(lo))[p.slope != 0.0]))


def sparse_cost(width: int, n_inputs: int, act: Activation | None = None, q: float = 1.0) -> float:
    """Estimated ns per network-layer (the registry's ``cost``), with P pieces and f = P(sloped)
    at variance q (the activation's; P = 3 and f = TYPICAL_SLOPED without it):

        B = 1:  LAYER_NS[1] + PIECE_NS P            + ROW_NS[1] N f
        B = 2:  LAYER_NS[2] + BVN_NS (P - 1)^2      + ROW_NS[2] 2 N f

    A relative least-squares fit of the CPU time per network-layer (one core, escape on v, the
    Generator the engines use) of CReLU and CST at the EoC with q* = 1, sparsity 0.5 to 0.9,
    clipped at m = 1 and 3 and unclipped, N = 100, 300, 1000, 3000: median error 15% (B = 1) and
    13% (B = 2), 50% at worst (ROW_NS[1] since re-measured). Against :func:`~simulate.engines.propagate.gram_cost` (fitted to the
    same runs) it picks the faster engine in 177 of 192 such cells (B = 1 and 2); in the other 15
    the measured speed ratio was within 30% of a tie (one measurement on a shared machine scatters
    by 10 to 20%)."""
    fraction = TYPICAL_SLOPED if act is None else sloped_mass(act, q)
    n_pieces = 3 if act is None else act.pieces.slope.size
    b = min(n_inputs, MAX_INPUTS)
    fixed = LAYER_NS[b] + (BVN_NS * (n_pieces - 1) ** 2 if b == 2 else PIECE_NS * n_pieces)
    return fixed + ROW_NS[b] * n_inputs * width * fraction


def run(problem: Problem, rng: np.random.Generator, out: Outputs) -> None:
    """``Engine.run``: :func:`run_sparse` on the problem, writing v, v_corr, zero_frac, v_log_gain
    and escape_layer (escape on v; q, corr and log_gain stay NaN)."""
    b = problem.n_inputs
    k0 = np.zeros((b + 1, b + 1))
    k0[:b, :b] = problem.k0
    k0[b, b] = 1.0
    p = problem.act.pieces
    run_sparse(
        k0,
        problem.width,
        (p.breaks, p.anchor_x, p.anchor_y, p.slope),
        problem.sigma_w2,
        problem.sigma_b2,
        problem.band_lo,
        problem.band_hi,
        rng,
        out.v,
        out.v_corr,
        out.zero_frac,
        out.v_log_gain,
        out.escape_layer,
    )


SPARSE_ENGINE = register(
    Engine(
        name="sparse",
        run=run,
        cost=sparse_cost,
        workspace=lambda width, n_inputs: 8.0 * width + 16384.0,
        supports=supports,
        observables=frozenset({"v", "v_corr", "zero_frac", "v_log_gain"}),
        summary="exact sampler of the piece counts and of the rows on sloped pieces only; B <= 2",
    )
)
