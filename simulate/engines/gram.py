"""The exact conditional-Gaussian (Gram-matrix) sampler.

Push B inputs and one forward-mode tangent through a layer h^{l+1} = W phi(h^l) + b with
W_ij ~ N(0, sigma_w^2 / N) and b_i ~ N(0, sigma_b^2) fresh. Collect the post-activations as the
columns of A (N x (B+1)): phi(h_b) for the inputs and phi'(h_0) * t for the tangent (which gets no
bias). Conditionally on A, the rows of the next pre-activations are i.i.d. N(0, K),

    K = sigma_b^2 [1_B 1_B^T  0]  +  (sigma_w^2 / N) A^T A,
                  [0          0]

so h^{l+1} = G chol(K)^T with G i.i.d. N(0, 1) (N x (B+1)) is exact in distribution, for
O(N B^2 + B^3) work per layer instead of the O(N^2 B) of explicit weights.

Storage convention of the engines: one row per vector, so "A" and "H" are (B+1) x N C-contiguous
arrays (the transposes of the matrices above) and the sample is H = L G with L = chol(K).
"""

from __future__ import annotations

import numpy as np
from numba import njit

SMALL_GRAM = 32
"""Up to this many vectors, :func:`gram_matrix` and :func:`sample_rows` use their own vectorised
loops; beyond, BLAS. (For a handful of rows BLAS spends more time on call overhead and packing than
on arithmetic.)"""

PIVOT_RTOL = 1e-12
"""Relative pivot tolerance of :func:`safe_cholesky`: a Schur-complement pivot below
PIVOT_RTOL * K_jj is rounding noise of an exactly singular direction and is set to zero."""


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def gram_matrix(X, out):
    """out = X X^T for X with one vector per row (n x N): out_ab = sum_i X_ai X_bi.

    ``reassoc`` lets LLVM vectorise the sums (it changes only the order of additions, not the NaN
    or infinity semantics).
    """
    n, width = X.shape
    if n > SMALL_GRAM:
        np.dot(X, X.T, out)
        return
    for a in range(n):
        for b in range(a, n):
            s = 0.0
            for i in range(width):
                s += X[a, i] * X[b, i]
            out[a, b] = s
            out[b, a] = s


@njit(cache=True, nogil=True)
def safe_cholesky(K, L):
    """Write into L a lower-triangular factor with L L^T = K, for a symmetric positive semidefinite K.

    Column j of L has the Schur-complement pivot d_j = K_jj - sum_{k<j} L_jk^2 and
    L_jj = sqrt(d_j), L_ij = (K_ij - sum_{k<j} L_ik L_jk) / L_jj for i > j.
    When d_j <= PIVOT_RTOL * K_jj (exactly singular K: two identical inputs, correlation -> 1, or a
    dead tangent with K_jj = 0), column j is set to zero. For a PSD K the whole Schur-complement
    column vanishes with its pivot, so this is the exact factor of the singular K; the only error is
    the dropped rounding noise, at most PIVOT_RTOL relative.
    """
    n = K.shape[0]
    L[:, :] = 0.0
    for j in range(n):
        d = K[j, j]
        for k in range(j):
            d -= L[j, k] * L[j, k]
        if d <= PIVOT_RTOL * K[j, j] or d <= 0.0:
            continue
        root = np.sqrt(d)
        L[j, j] = root
        for i in range(j + 1, n):
            s = K[i, j]
            for k in range(j):
                s -= L[i, k] * L[j, k]
            L[i, j] = s / root


@njit(cache=True, nogil=True)
def sample_rows(L, rng, G, H):
    """H = L G with G i.i.d. N(0, 1): the N columns of H are i.i.d. N(0, L L^T).

    L is lower triangular, so row a of H is sum_{b <= a} L_ab G_b (row updates, vectorised).
    """
    flat = G.ravel()
    for i in range(flat.size):
        flat[i] = rng.standard_normal()
    n = L.shape[0]
    if n > SMALL_GRAM:
        np.dot(L, G, H)
        return
    H[:, :] = 0.0
    for a in range(n):
        for b in range(a + 1):
            for i in range(G.shape[1]):
                H[a, i] += L[a, b] * G[b, i]


@njit(cache=True, nogil=True)
def conditional_kernel(A, n_inputs, sigma_w2, sigma_b2, K):
    """K = (sigma_w^2 / N) A A^T, plus sigma_b^2 on the B x B input block (not on the tangent):
    the covariance of a row of the next pre-activations given the post-activations A ((B+1) x N)."""
    gram_matrix(A, K)
    K *= sigma_w2 / A.shape[1]
    K[:n_inputs, :n_inputs] += sigma_b2


@njit(cache=True, nogil=True)
def gram_step(K, rng, H, L, G):
    """Next pre-activations H ((B+1) x N) in distribution, given their conditional covariance K:
    H = chol(K) G. L ((B+1) x (B+1)) and G ((B+1) x N) are work arrays."""
    safe_cholesky(K, L)
    sample_rows(L, rng, G, H)
