"""The layer loop both engines share: layer statistics, the tangent, and escape.

Per network, with H^l the (B+1) x N pre-activations at layer l (rows: the B inputs, then the
tangent t^l) and S = H^l (H^l)^T:

    q_b        = S_bb / N                                  (empirical mean square of input b)
    corr_ab    = S_ab / sqrt(S_aa S_bb),  a < b            (empirical correlation; NaN if S_aa S_bb = 0)
    zero_frac_b = #{i : phi(h_bi) = 0} / N
    log_gain   = ln(|t^l|^2 / |t^{l-1}|^2)                 (layers l >= 1; its mean estimates ln chi_1)

The post-activations A^l are phi(h_b) for the inputs and phi'(h_0) * t for the tangent (the
Jacobian-vector product of input 0); the engine's step maps A^l to H^{l+1}.

Tangent death: if every unit with t_i != 0 has phi' = 0, then t^{l+1} = 0 exactly and its gain is
exactly zero, recorded as log_gain = -inf at that layer (the true value, not a failure). The
tangent is then redrawn i.i.d. N(0, 1) at that layer, so later layers measure the gain again.

Escape: network stops at the first layer l where some q_b leaves [q_lo_b, q_hi_b] (NaN counts as
leaving); escape_layer = l, layer l is recorded, later layers keep the NaN they were filled with.
Inside the band q <= escape_factor q_ref <= 1e100 (checked by run_cell), so no sum of squares
comes near the float64 range, and Numba never warns: nothing overflows.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from simulate.activations import dphi, phi
from simulate.engines.dense import dense_step
from simulate.engines.gram import gram_matrix, gram_step, sample_rows

GRAM, DENSE = 0, 1
ENGINE_CODES = {"gram": GRAM, "dense": DENSE}


@njit(cache=True, nogil=True)
def layer_statistics(H, S, q, corr):
    """Fill q (B) and corr (B(B-1)/2, pairs a < b in row-major order) from S = H H^T; return |t|^2."""
    gram_matrix(H, S)
    n_inputs = q.size
    width = H.shape[1]
    for b in range(n_inputs):
        q[b] = S[b, b] / width
    p = 0
    for a in range(n_inputs):
        for b in range(a + 1, n_inputs):
            norm2 = S[a, a] * S[b, b]
            corr[p] = S[a, b] / np.sqrt(norm2) if norm2 > 0.0 else np.nan
            p += 1
    return S[n_inputs, n_inputs]


@njit(cache=True, nogil=True)
def post_activations(H, A, code, tau, m, zero_frac):
    """A_b = phi(h_b) for the inputs (counting exact zeros into zero_frac), A_B = phi'(h_0) * t."""
    n_inputs = zero_frac.size
    width = H.shape[1]
    for b in range(n_inputs):
        zeros = 0
        for i in range(width):
            a = phi(H[b, i], code, tau, m)
            A[b, i] = a
            zeros += a == 0.0
        zero_frac[b] = zeros / width
    for i in range(width):
        A[n_inputs, i] = dphi(H[0, i], code, tau, m) * H[n_inputs, i]


@njit(cache=True, nogil=True)
def redraw_tangent(t, rng):
    """Refill a dead tangent with i.i.d. N(0, 1) coordinates; return its squared norm."""
    t2 = 0.0
    for i in range(t.size):
        t[i] = rng.standard_normal()
        t2 += t[i] * t[i]
    return t2


@njit(cache=True, nogil=True)
def inside_band(q, q_lo, q_hi):
    """True when q_lo_b <= q_b <= q_hi_b for every input (False for NaN)."""
    for b in range(q.size):
        if not (q_lo[b] <= q[b] <= q_hi[b]):
            return False
    return True


@njit(cache=True, nogil=True)
def run_networks(
    engine,
    L0,
    width,
    code,
    tau,
    m,
    sigma_w2,
    sigma_b2,
    q_lo,
    q_hi,
    rng,
    q,
    corr,
    zero_frac,
    log_gain,
    escape_layer,
):
    """Propagate nets = q.shape[0] independent networks through depth = q.shape[1] - 1 layers.

    Layer 0 is H^0 = L0 G (columns i.i.d. N(0, L0 L0^T)); layer l >= 1 is the engine's step
    (GRAM or DENSE) applied to A^{l-1}. Outputs (pre-filled with NaN / -1) are written in place:
    q, zero_frac (nets, depth+1, B), corr (nets, depth+1, B(B-1)/2), log_gain (nets, depth+1),
    escape_layer (nets).
    """
    nets, n_layers, n_inputs = q.shape
    nv = n_inputs + 1
    H = np.empty((nv, width))
    A = np.empty((nv, width))
    G = np.empty((nv, width))
    S = np.empty((nv, nv))
    K = np.empty((nv, nv))
    L = np.empty((nv, nv))
    W = np.empty((width, width) if engine == DENSE else (0, 0))
    bias = np.empty(width)
    for net in range(nets):
        sample_rows(L0, rng, G, H)
        t2_prev = 0.0
        for l in range(n_layers):
            if l > 0:
                if engine == DENSE:
                    dense_step(A, n_inputs, sigma_w2, sigma_b2, rng, H, W, bias)
                else:
                    gram_step(A, n_inputs, sigma_w2, sigma_b2, rng, H, K, L, G)
            t2 = layer_statistics(H, S, q[net, l], corr[net, l])
            if l > 0:
                log_gain[net, l] = np.log(t2 / t2_prev) if t2 > 0.0 else -np.inf
            if t2 == 0.0:
                t2 = redraw_tangent(H[n_inputs], rng)
            post_activations(H, A, code, tau, m, zero_frac[net, l])
            if not inside_band(q[net, l], q_lo, q_hi):
                escape_layer[net] = l
                break
            t2_prev = t2
