"""The explicit-weights engine: the ground truth the Gram sampler must agree with.

Every layer draws a fresh N x N weight matrix and bias vector,

    W_ij = sqrt(sigma_w^2 / N) g_ij,   b_i = sqrt(sigma_b^2) g'_i,   g, g' i.i.d. N(0, 1),

and applies them to the B inputs' post-activations phi(h_b) (with the bias) and to the tangent
phi'(h_0) * t (without it): h_b^{l+1} = W phi(h_b^l) + b, t^{l+1} = W (phi'(h_0^l) * t^l).
The product is one BLAS call on the (B+1) x N block of post-activations. Cost O(N^2 (B+1)) per
layer, dominated by drawing the N^2 normals.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def dense_step(A, n_inputs, sigma_w2, sigma_b2, rng, H, W, bias):
    """Next pre-activations H ((B+1) x N, one row per vector) from post-activations A (same shape).

    H = A W^T (each row: W applied to one vector), then + b on the B input rows.
    W (N x N) and bias (N) are work arrays, refilled here with fresh Gaussian draws.
    """
    scale = np.sqrt(sigma_w2 / W.shape[1])
    flat = W.ravel()
    for i in range(flat.size):
        flat[i] = scale * rng.standard_normal()
    bias_scale = np.sqrt(sigma_b2)
    for i in range(bias.size):
        bias[i] = bias_scale * rng.standard_normal()
    np.dot(A, W.T, H)
    for b in range(n_inputs):
        H[b] += bias
