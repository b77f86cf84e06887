"""The layer loop of the Numba engines ``gram`` and ``dense``, and their registration.

Per network, with H^l the (B+1) x N pre-activations at layer l (rows: the B inputs, then the
tangent t^l), S = H^l (H^l)^T, and K^l the (B+1) x (B+1) conditional covariance of the rows of H^l
given layer l - 1 (layer 0: the input kernel k0, and 1 for the tangent):

    q_b         = S_bb / N                                (empirical mean square of input b)
    corr_ab     = S_ab / sqrt(S_aa S_bb),  a < b          (empirical correlation; NaN if S_aa S_bb = 0)
    v_b         = K_bb                                    (conditional variance)
    v_corr_ab   = K_ab / sqrt(K_aa K_bb),  a < b          (conditional correlation; NaN if 0 / 0)
    zero_frac_b = #{i : phi(h_bi) = 0} / N
    log_gain    = ln(|t^l|^2 / |t^{l-1}|^2)               (layers l >= 1; its mean estimates ln chi_1)
    v_log_gain  = ln(K^l_tt / K^{l-1}_tt)                 (layers l >= 1; the tangent's conditional
                                                           variance, K^0_tt = 1)

The post-activations A^l are phi(h_b) for the inputs and phi'(h_0) * t for the tangent (the
Jacobian-vector product of input 0), both evaluated from the activation's pieces by
``simulate.activations.phi`` / ``dphi``. Given A^l,

    K^{l+1} = (sigma_w^2 / N) A^l (A^l)^T  +  sigma_b^2 on the B x B input block

(the tangent gets no bias), and the engine's step maps A^l to H^{l+1}: ``gram`` samples
H^{l+1} = chol(K^{l+1}) G exactly in distribution, ``dense`` applies explicit weights.

Tangent death: if every unit with t^{l-1}_i != 0 has phi' = 0, then K^l_tt = 0 and t^l = 0 exactly,
recorded as log_gain^l = v_log_gain^l = -inf (the true values, not failures). The tangent is then
redrawn i.i.d. N(0, 1) at layer l (its conditional variance restarts at 1), so later layers measure
the gain again.

Escape: a network stops at the first layer l where some q_b (or v_b, by ``escape_on_v``) leaves
[band_lo_b, band_hi_b] (NaN counts as leaving); escape_layer = l, layer l is recorded, later layers
keep the NaN they were filled with. Inside the band the variances are <= 1e100 (checked by
run_cell), so no sum of squares comes near the float64 range: nothing overflows.

Random numbers: the Generator is consumed in a fixed order (per network: layer 0, then per layer the
step's draws, and the redraw of a dead tangent), so the output is a deterministic function of it.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from simulate.activations import Activation, dphi, phi
from simulate.engines.dense import dense_step
from simulate.engines.gram import (
    conditional_kernel,
    gram_matrix,
    gram_step,
    safe_cholesky,
    sample_rows,
)
from simulate.engines.registry import Engine, Outputs, Problem, register

GRAM, DENSE = 0, 1
"""Step codes of :func:`run_networks`."""


@njit(cache=True, nogil=True)
def layer_statistics(H, S, q, corr):
    """Fill q (B) and corr (B(B-1)/2, pairs a < b in row-major order) from S = H H^T; return |t|^2."""
    gram_matrix(H, S)
    n_inputs = q.size
    width = H.shape[1]
    for b in range(n_inputs):
        q[b] = S[b, b] / width
    pair_correlations(S, corr)
    return S[n_inputs, n_inputs]


@njit(cache=True, nogil=True)
def pair_correlations(S, corr):
    """corr_p = S_ab / sqrt(S_aa S_bb) over pairs a < b (row-major p), NaN where S_aa S_bb = 0."""
    n_inputs = S.shape[0] - 1
    p = 0
    for a in range(n_inputs):
        for b in range(a + 1, n_inputs):
            norm2 = S[a, a] * S[b, b]
            corr[p] = S[a, b] / np.sqrt(norm2) if norm2 > 0.0 else np.nan
            p += 1


@njit(cache=True, nogil=True)
def kernel_statistics(K, v, v_corr):
    """v_b = K_bb and v_corr (pairs a < b, row-major) = K_ab / sqrt(K_aa K_bb)."""
    for b in range(v.size):
        v[b] = K[b, b]
    pair_correlations(K, v_corr)


@njit(cache=True, nogil=True)
def post_activations(H, A, pieces, zero_frac):
    """A_b = phi(h_b) for the inputs (counting exact zeros into zero_frac), A_B = phi'(h_0) * t.

    ``pieces`` = ``Activation.pieces.kernel``: (breaks, anchor_x, anchor_y, slope) as tuples, so
    Numba compiles this loop once per piece count with the piece scan unrolled (vectorised)."""
    breaks, anchor_x, anchor_y, slope = pieces
    n_inputs = zero_frac.size
    width = H.shape[1]
    for b in range(n_inputs):
        zeros = 0
        for i in range(width):
            a = phi(H[b, i], breaks, anchor_x, anchor_y, slope)
            A[b, i] = a
            zeros += a == 0.0
        zero_frac[b] = zeros / width
    for i in range(width):
        A[n_inputs, i] = dphi(H[0, i], breaks, slope) * H[n_inputs, i]


@njit(cache=True, nogil=True)
def redraw_tangent(t, rng):
    """Refill a dead tangent with i.i.d. N(0, 1) coordinates; return its squared norm."""
    t2 = 0.0
    for i in range(t.size):
        t[i] = rng.standard_normal()
        t2 += t[i] * t[i]
    return t2


@njit(cache=True, nogil=True)
def inside_band(x, lo, hi):
    """True when lo_b <= x_b <= hi_b for every input (False for NaN)."""
    for b in range(x.size):
        if not (lo[b] <= x[b] <= hi[b]):
            return False
    return True


@njit(cache=True, nogil=True)
def run_networks(
    step,
    K0,
    width,
    pieces,
    sigma_w2,
    sigma_b2,
    band_lo,
    band_hi,
    escape_on_v,
    rng,
    q,
    corr,
    v,
    v_corr,
    zero_frac,
    log_gain,
    v_log_gain,
    escape_layer,
):
    """Propagate nets = q.shape[0] independent networks through depth = q.shape[1] - 1 layers.

    K0 is the (B+1) x (B+1) layer-0 kernel (inputs and tangent); layer 0 is H^0 = chol(K0) G.
    Layer l >= 1 is the ``step`` (GRAM or DENSE) applied to A^{l-1}. Outputs (pre-filled with
    NaN / -1) are written in place, with the shapes of :class:`~simulate.engines.registry.Outputs`.
    """
    nets, n_layers, n_inputs = q.shape
    nv = n_inputs + 1
    H = np.empty((nv, width))
    A = np.empty((nv, width))
    G = np.empty((nv, width))
    S = np.empty((nv, nv))
    K = np.empty((nv, nv))
    L = np.empty((nv, nv))
    L0 = np.empty((nv, nv))
    safe_cholesky(K0, L0)
    W = np.empty((width, width) if step == DENSE else (0, 0))
    bias = np.empty(width)
    for net in range(nets):
        sample_rows(L0, rng, G, H)
        kernel_statistics(K0, v[net, 0], v_corr[net, 0])
        t2_prev = 0.0
        ktt_prev = 0.0
        ktt = K0[n_inputs, n_inputs]
        for l in range(n_layers):
            if l > 0:
                conditional_kernel(A, n_inputs, sigma_w2, sigma_b2, K)
                kernel_statistics(K, v[net, l], v_corr[net, l])
                ktt = K[n_inputs, n_inputs]
                v_log_gain[net, l] = np.log(ktt / ktt_prev) if ktt > 0.0 else -np.inf
                if step == DENSE:
                    dense_step(A, n_inputs, sigma_w2, sigma_b2, rng, H, W, bias)
                else:
                    gram_step(K, rng, H, L, G)
            t2 = layer_statistics(H, S, q[net, l], corr[net, l])
            if l > 0:
                log_gain[net, l] = np.log(t2 / t2_prev) if t2 > 0.0 else -np.inf
            if t2 == 0.0:
                t2 = redraw_tangent(H[n_inputs], rng)
                ktt = 1.0
            post_activations(H, A, pieces, zero_frac[net, l])
            watched = v[net, l] if escape_on_v else q[net, l]
            if not inside_band(watched, band_lo, band_hi):
                escape_layer[net] = l
                break
            t2_prev = t2
            ktt_prev = ktt


def _runner(step: int):
    """``Engine.run`` of the Numba engine with step code ``step``."""

    def run(problem: Problem, rng: np.random.Generator, out: Outputs) -> None:
        b = problem.n_inputs
        k0 = np.zeros((b + 1, b + 1))
        k0[:b, :b] = problem.k0
        k0[b, b] = 1.0
        p = problem.act.pieces
        run_networks(
            step,
            k0,
            problem.width,
            p.kernel,
            problem.sigma_w2,
            problem.sigma_b2,
            problem.band_lo,
            problem.band_hi,
            problem.escape_on == "v",
            rng,
            out.q,
            out.corr,
            out.v,
            out.v_corr,
            out.zero_frac,
            out.log_gain,
            out.v_log_gain,
            out.escape_layer,
        )

    return run


# Cost models of the two engines (registry.Engine.cost), in ns on one core of the development
# machine (single-threaded BLAS), where one standard normal drawn in Numba from Generator(SFC64)
# takes about 7 ns. gram: relative least-squares fit of its N-terms to the CPU time per
# network-layer at N = 100..3000, B = 1..16 (median error 6%, 39% at worst), its B-only terms from
# an earlier fit at N = 8..4000, B = 1..150; dense: that earlier fit (within 20% on most points,
# 2.2x at worst, B >> N).


def gram_cost(width: int, n_inputs: int, act: Activation | None = None) -> float:
    """N n draws and activations (n = B + 1 vectors), about N n^2 multiply-adds for the Gram
    matrices and the triangular sample, n^2 pair statistics, n^3 / 3 for the Cholesky factor (any
    activation): 435 + 9.2 N n + 0.2 N n^2 + 11 n^2 + 0.2 n^3 ns."""
    n = n_inputs + 1
    return 435.0 + 9.2 * width * n + 0.2 * width * n**2 + 11.0 * n**2 + 0.2 * n**3


def dense_cost(width: int, n_inputs: int, act: Activation | None = None) -> float:
    """N^2 weights drawn, N^2 n multiply-adds (BLAS) for W A, the Gram matrices and pair
    statistics (any activation): 700 + 8.7 N^2 + 0.07 N^2 n + 0.17 N n^2 + 10.5 n^2 ns."""
    n = n_inputs + 1
    return 700.0 + 8.7 * width**2 + 0.07 * width**2 * n + 0.17 * width * n**2 + 10.5 * n**2


GRAM_ENGINE = register(
    Engine(
        name="gram",
        run=_runner(GRAM),
        cost=gram_cost,
        workspace=lambda width, n_inputs: 8 * 4 * (n_inputs + 1) * width,
        summary="exact conditional-Gaussian sampler, O(N (B+1)^2 + (B+1)^3) per layer",
    )
)
DENSE_ENGINE = register(
    Engine(
        name="dense",
        run=_runner(DENSE),
        cost=dense_cost,
        workspace=lambda width, n_inputs: 8 * (width**2 + (4 * (n_inputs + 1) + 1) * width),
        summary="explicit N x N Gaussian weights (the ground truth), O(N^2 (B+1)) per layer",
    )
)
