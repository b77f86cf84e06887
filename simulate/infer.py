"""Sparse inference: the forward pass of a fully connected network that skips the zero activations.

Network (widths n_0 = d, n_1, ..., n_L, n_{L+1} = C; the initialiser's layout, float32: weights
W^l of shape (n_l, n_{l-1}), biases b^l of shape (n_l,), :mod:`simulate.train.init`):

    h^1 = W^1 x + b^1,   h^{l+1} = W^{l+1} phi(h^l) + b^{l+1}  (l = 1..L),   logits = h^{L+1}.

A layer's input a enters only through its non-zero entries:

    h = b + W a = b + sum_{j : a_j != 0} a_j W[:, j],                                         (1)

so an input with a fraction s of exact zeros needs (1 - s) of the multiply-adds and of the weight
reads, a speed-up of at most 1 / (1 - s). The terms left out are exact zeros (0 w = 0 for finite w),
so (1) is the dense sum itself; only the order of the float32 additions differs.

Layout. The columns W[:, j] of (1) are the rows of W^T, so :func:`prepare` lays the weights out once,
transposed, in one contiguous float32 buffer: W^T[j, :] is a contiguous row, read at full memory
bandwidth. The dense pass reads the same buffer (a @ W^T), a layout as fast as W a or faster for
numpy's BLAS (OpenBLAS 0.3.31: 1.0 to 1.15x for one input, 1.05 to 1.35x for a batch of 64).

Sparse pass (:func:`sparse_forward`), two regimes:

- One input (latency): per layer, the list of the k non-zero inputs (j_t, a_{j_t}), then
  h = b + sum_t a_{j_t} W^T[j_t, :], eight rows at a time (one read and write of h per eight rows,
  eight streams from memory). With several threads, each computes its own slice of h from the same
  list. All layers run in one Numba call.
- A batch (throughput), inputs a_r (r = 1..B): the union U = {j : a_rj != 0 for some r}. Deep in an
  Edge-of-Chaos network the inputs' activity patterns converge (their correlation tends to 1), so
  |U| is close to one input's count, and

      h_r = b + (a[:, U] @ W^T[U, :])_r                                                        (2)

  is one BLAS product (sgemm) on the gathered rows: |U| / n of the dense work, at BLAS speed. When
  the inputs are less alike, |U| grows towards n while each input's own count k_r does not, and it
  is cheaper to apply (1) to each input (the one-input kernel, row by row: sum_r k_r n
  multiply-adds, each 2 to 3 times slower than BLAS's): ``method="auto"`` takes (2) for a layer
  when B |U| <= UNION_RATIO sum_r k_r, and (1) otherwise. The layers are a Python loop over
  Numba kernels and numpy's matmul (the BLAS of the dense pass). With several threads the batch is
  cut into parts, one per thread, each passed through the whole network with its own union and
  one BLAS thread: no synchronisation between layers, where a multi-threaded BLAS product on the
  small operands of (2) gains little.

Rounding: the sparse and dense passes compute the same sums in different orders, so they agree to
float32 rounding (about sqrt(n) unit roundoffs per layer, relative to the pre-activation's scale);
with integer-valued weights, inputs and activation breakpoints every sum is exact and they agree bit
for bit. phi is evaluated by the kernels of :mod:`simulate.activations` (in float64, rounded to
float32), the same function in both passes; it is continuous, so a rounding difference that moves a
pre-activation across a break changes phi by no more than the difference.
"""

from __future__ import annotations

import functools
import itertools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np
from numba import njit, prange
from threadpoolctl import ThreadpoolController

from simulate.activations import Activation, phi

UNION_RATIO = 4.0
"""``method="auto"``: the batch path (2) is taken for a layer when B |U| <= UNION_RATIO sum_r k_r
(module docstring). Measured on the development machine (AMD EPYC, OpenBLAS 0.3.31): per layer,
with the weights in cache, (2) and (1) break even near B |U| = 2.7 sum_r k_r at widths 300 and
1024 (2 to 2.6 at 4096); in a whole pass, where each layer's weights come from memory, (2) gains
further and auto with 4 matches union at every sparsity (``benchmarks/sparse_inference.py``, the
batch methods table)."""

METHODS = ("auto", "union", "rows")
LANE = 16
"""Output slices of the row kernel are multiples of LANE floats (one 64-byte cache line)."""


@dataclass(frozen=True)
class Network:
    """A network laid out for inference (:func:`prepare`): the activation, the widths
    (n_0, ..., n_{L+1}), and every layer's W^T (n_{l-1}, n_l) and b^l in two flat float32 buffers,
    layer l at ``w_offsets[l]`` and ``b_offsets[l]`` (l = 0 .. L, the input layer first)."""

    act: Activation
    widths: tuple[int, ...]
    w: np.ndarray
    w_offsets: np.ndarray
    b: np.ndarray
    b_offsets: np.ndarray

    @property
    def n_layers(self) -> int:
        """L + 1: the hidden layers and the output layer."""
        return len(self.widths) - 1

    def layer(self, l: int) -> tuple[np.ndarray, np.ndarray]:
        """(W^T, b) of layer l = 0 .. L (views into the buffers): shapes (n_l, n_{l+1}), (n_{l+1},)."""
        n_in, n_out = self.widths[l], self.widths[l + 1]
        wt = self.w[self.w_offsets[l] : self.w_offsets[l + 1]].reshape(n_in, n_out)
        return wt, self.b[self.b_offsets[l] : self.b_offsets[l + 1]]


def prepare(act: Activation, weights, biases) -> Network:
    """Lay out a network for :func:`sparse_forward` and :func:`dense_forward`.

    ``weights``: an iterable of L + 1 >= 1 real arrays in the initialiser's layout (fan_out, fan_in),
    each layer's fan_in equal to the previous layer's fan_out; it is read once, layer by layer, so a
    generator keeps only one layer besides the buffer in memory. ``biases``: L + 1 arrays (fan_out,).
    All finite. They are copied, transposed, into float32 buffers (:class:`Network`); the arrays of
    :func:`simulate.train.init.initialise` and those of a trained network (:func:`layers_of_pytree`)
    work the same. ValueError naming the first bad argument.
    """
    if not isinstance(act, Activation) or act.batch_shape:
        raise ValueError(f"act={act!r}: must be a single Activation")
    biases = [np.asarray(b) for b in biases]
    widths, w_offsets, b_offsets = [], [0], [0]
    for l, b in enumerate(biases):
        if b.ndim != 1 or b.size < 1 or not _real(b):
            raise ValueError(f"biases[{l}]: shape {b.shape}, must be a non-empty 1-D real array")
        b_offsets.append(b_offsets[-1] + b.size)
    if not biases:
        raise ValueError("biases: must hold at least one layer")
    w = None
    n_weights = 0
    for l, wl in enumerate(weights):
        wl = np.asarray(wl)
        n_out = biases[l].size if l < len(biases) else None
        expected = (n_out, widths[-1] if widths else "fan_in")
        if (
            n_out is None
            or wl.ndim != 2
            or wl.shape[0] != n_out
            or (widths and wl.shape[1] != widths[-1])
            or wl.shape[1] < 1
        ):
            raise ValueError(
                f"weights[{l}]: shape {wl.shape}, must be {expected} (fan_out = the size of "
                f"biases[{l}], fan_in = the previous layer's fan_out; {len(biases)} layers)"
            )
        if not _real(wl) or not np.all(np.isfinite(wl)):
            raise ValueError(f"weights[{l}]: must be a finite real array")
        if not widths:
            widths.append(wl.shape[1])
            sizes = [biases[0].size * wl.shape[1]]
            sizes += [a.size * b.size for a, b in itertools.pairwise(biases)]
            w_offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
            w = np.empty(w_offsets[-1], np.float32)
        w[w_offsets[l] : w_offsets[l + 1]].reshape(wl.shape[1], n_out)[...] = wl.T
        widths.append(n_out)
        n_weights += 1
    if n_weights != len(biases):
        raise ValueError(f"weights: {n_weights} layers, must be {len(biases)} (one per bias)")
    for l, b in enumerate(biases):
        if not np.all(np.isfinite(b)):
            raise ValueError(f"biases[{l}]: must be finite")
    b = np.concatenate(biases).astype(np.float32)
    return Network(act, tuple(widths), w, w_offsets, b, np.asarray(b_offsets, np.int64))


def layers_of_pytree(params) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(weights, biases) in the initialiser's layout from the JAX pytree of
    :mod:`simulate.train.model` (``w_in``, ``b_in``, ``w_hidden`` stacked (L-1, N, N), ``b_hidden``,
    ``w_out``, ``b_out``): a trained network, ready for :func:`prepare`."""
    weights = [params["w_in"], *params["w_hidden"], params["w_out"]]
    biases = [params["b_in"], *params["b_hidden"], params["b_out"]]
    return [np.asarray(w) for w in weights], [np.asarray(b) for b in biases]


def load_npz(path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(weights, biases) from an ``.npz`` file holding w0..wL and b0..bL (the initialiser's layout,
    any L >= 0, no other ``w``/``b`` keys). ValueError naming the file and what is missing."""
    with np.load(path) as f:
        keys = set(f.files)
        n = sum(1 for k in keys if k.startswith("w") and k[1:].isdigit())
        expected = {f"{p}{l}" for p in "wb" for l in range(n)}
        layered = {k for k in keys if k[:1] in "wb" and k[1:].isdigit()}
        if n == 0 or layered != expected:
            raise ValueError(
                f"{path}: must hold w0..wL and b0..bL for one L (found {sorted(layered)})"
            )
        return [f[f"w{l}"] for l in range(n)], [f[f"b{l}"] for l in range(n)]


def sparse_forward(net: Network, x, *, threads: int = 1, method: str = "auto") -> np.ndarray:
    """The logits of the sparse pass (module docstring, (1) and (2)), float32: (C,) for one input
    x (d,), (B, C) for a batch x (B, d).

    One input (or B = 1) takes the one-input kernel, its outputs shared among ``threads`` Numba
    threads. A batch takes, per layer, (2) (``method="union"``), (1) row by row (``"rows"``), or
    the cheaper by the rule B |U| <= UNION_RATIO sum_r k_r (``"auto"``); with ``threads`` > 1 it is
    cut into ``threads`` parts passed through the network at once, each on its own thread with its
    own union. The BLAS products of (2) run on one BLAS thread each (threadpoolctl), whatever the
    BLAS library's setting."""
    return _sparse(net, x, threads, method)[0]


def layer_activity(
    net: Network, x, *, threads: int = 1, method: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """Each hidden layer's activity on the inputs x ((d,) or (B, d)), counted by the sparse pass:
    (sparsity, union), arrays (L,) for l = 1..L, the fraction of exact zeros in phi(h^l) over the
    inputs and units, and the fraction |U| / n_l of units non-zero for at least one input (for one
    input, 1 - sparsity)."""
    a = _as_batch(net, x)
    _, zeros, union = _sparse(net, a, threads, method)
    widths = np.asarray(net.widths[1:-1])
    return zeros / (a.shape[0] * widths), union / widths


def dense_forward(net: Network, x, *, threads: int | None = None) -> np.ndarray:
    """The logits of the dense pass, float32, (C,) or (B, C) as :func:`sparse_forward`: per layer
    one numpy matmul (BLAS sgemv for one input, sgemm for a batch) on the same W^T buffer, then
    phi(h + b) in place (one Numba call). ``threads``: BLAS threads (threadpoolctl); None keeps the
    BLAS library's setting."""
    a = _as_batch(net, x)
    if threads is not None:
        _check_threads(threads)
        with _blas().limit(limits=threads, user_api="blas"):
            return dense_forward(net, x)
    pieces = net.act.pieces.kernel
    batch = a.shape[0]
    buffers = np.empty((2, batch * max(net.widths)), np.float32)  # the layers' outputs, alternately
    for l in range(net.n_layers):
        wt, b = net.layer(l)
        h = buffers[l % 2, : batch * wt.shape[1]].reshape(batch, wt.shape[1])
        if batch == 1:
            np.matmul(a[0], wt, out=h[0])
        else:
            np.matmul(a, wt, out=h)
        if l < net.n_layers - 1:
            _activate(h, b, *pieces)
        else:
            h += b
        a = h
    return a[0].copy() if np.ndim(x) == 1 else a.copy()


@functools.cache
def _blas() -> ThreadpoolController:
    """The BLAS libraries loaded (numpy's among them), found once."""
    return ThreadpoolController()


def _check_threads(threads) -> None:
    limit = numba.config.NUMBA_NUM_THREADS
    if not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= limit:
        raise ValueError(f"threads={threads!r}: must be an integer in [1, {limit}]")


def _real(arr: np.ndarray) -> bool:
    """Integer or floating-point entries."""
    return arr.dtype.kind in "iuf"


def _as_batch(net: Network, x) -> np.ndarray:
    """x as a C-contiguous float32 (B, d) array, or ValueError."""
    if not isinstance(net, Network):
        raise ValueError(f"net={type(net).__name__}: must be a Network (from prepare)")
    arr = np.asarray(x)
    d = net.widths[0]
    if arr.ndim not in (1, 2) or arr.shape[-1] != d or arr.size == 0:
        raise ValueError(f"x: shape {arr.shape}, must be ({d},) or (B, {d}) with B >= 1")
    if not _real(arr) or not np.all(np.isfinite(arr)):
        raise ValueError("x: must be a finite real array")
    return np.ascontiguousarray(arr.reshape(-1, d), dtype=np.float32)


def _sparse(net: Network, x, threads, method) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits, zeros and union size per hidden layer) of the sparse pass, after validation."""
    a = _as_batch(net, x)
    if method not in METHODS:
        raise ValueError(f"method={method!r}: must be one of {', '.join(METHODS)}")
    _check_threads(threads)
    if a.shape[0] == 1:
        out, zeros = _one_input(net, a, threads)
        union = np.asarray(net.widths[1:-1]) - zeros
    else:
        out = np.empty((a.shape[0], net.widths[-1]), np.float32)
        bounds = np.linspace(0, a.shape[0], min(threads, a.shape[0]) + 1).astype(int)
        parts = [(a[i:j], out[i:j]) for i, j in itertools.pairwise(bounds)]
        with _blas().limit(limits=1, user_api="blas"):
            if len(parts) == 1:
                done = [_batch(net, *parts[0], method)]
            else:
                with ThreadPoolExecutor(len(parts)) as pool:
                    done = list(pool.map(lambda part: _batch(net, *part, method), parts))
        zeros = sum(d[0] for d in done)
        union = np.logical_or.reduce([d[1] for d in done]).sum(axis=1)
    return (out[0] if np.ndim(x) == 1 else out), zeros, union


def _one_input(net: Network, a, threads):
    """The one-input kernel on a (1, d), with ``threads`` Numba threads."""
    widths = np.asarray(net.widths, np.int64)
    h = np.empty(max(net.widths), np.float32)
    zeros = np.zeros(net.n_layers - 1, np.int64)
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        _one_input_kernel(
            a, net.w, net.w_offsets, net.b, net.b_offsets, widths, net.act.pieces.kernel,
            threads, h, zeros,
        )  # fmt: skip
    finally:
        numba.set_num_threads(previous)
    return h[None, : net.widths[-1]].copy(), zeros


def _batch(net: Network, a, out, method):
    """The batch a (B, d) through the network on this thread, the logits into out (B, C):
    returns the zeros per hidden layer and the (L, max width) masks of the hidden layers' unions."""
    batch, n_max = a.shape[0], max(net.widths)
    pieces = net.act.pieces.kernel
    union = np.empty(n_max, np.int64)
    seen = np.zeros((net.n_layers, n_max), np.bool_)
    idx = np.empty((batch, n_max), np.int64)
    val = np.empty((batch, n_max), np.float32)
    count = np.empty(batch, np.int64)
    zeros = np.zeros(net.n_layers - 1, np.int64)
    buffers = np.empty((2, batch * n_max), np.float32)  # the layers' outputs, alternately
    a_u = np.empty(batch * n_max, np.float32)  # the gathered operands of (2)
    wt_u = np.empty(n_max * n_max, np.float32)
    for l in range(net.n_layers):
        wt, b = net.layer(l)
        n_in, n_out = wt.shape
        h = buffers[l % 2, : batch * n_out].reshape(batch, n_out)
        k, nnz = _union(a, union, seen[l])
        if method == "rows" or (method == "auto" and batch * k > UNION_RATIO * nnz):
            _compress(a, idx, val, count)
            _rows_serial(wt, idx, val, count, h)
        elif k == n_in:
            np.matmul(a, wt, out=h)
        else:
            a_k = a_u[: batch * k].reshape(batch, k)
            wt_k = wt_u[: k * n_out].reshape(k, n_out)
            _gather(a, wt, union[:k], a_k, wt_k)
            np.matmul(a_k, wt_k, out=h)
        if l < net.n_layers - 1:
            zeros[l] = _activate(h, b, *pieces)
        else:
            np.add(h, b, out=out)
        a = h
    return zeros, seen[1:]


# --- kernels -------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _activate(h, b, breaks, anchor_x, anchor_y, slope):
    """h <- phi(h + b) in place, for the rows of h (B, n); returns the number of exact zeros."""
    zeros = 0
    for r in range(h.shape[0]):
        for o in range(h.shape[1]):
            y = phi(h[r, o] + b[o], breaks, anchor_x, anchor_y, slope)
            h[r, o] = y
            zeros += y == 0.0
    return zeros


@njit(cache=True, nogil=True)
def _compress(a, idx, val, count):
    """Each row r of a (B, n) as its non-zero entries: a[r, idx[r, t]] = val[r, t], t < count[r]."""
    for r in range(a.shape[0]):
        k = 0
        for j in range(a.shape[1]):
            if a[r, j] != 0.0:
                idx[r, k] = j
                val[r, k] = a[r, j]
                k += 1
        count[r] = k


@njit(cache=True, nogil=True)
def _union(a, union, seen):
    """U = {j : a[r, j] != 0 for some row r} of a (B, n), ascending into union[:|U|] and as the
    mask seen[:n] (all False on entry); returns |U| and the total count of non-zero entries."""
    n = a.shape[1]
    nnz = 0
    for r in range(a.shape[0]):
        for j in range(n):
            nz = a[r, j] != 0.0
            seen[j] |= nz
            nnz += nz
    k = 0
    for j in range(n):
        if seen[j]:
            union[k] = j
            k += 1
    return k, nnz


@njit(cache=True, nogil=True)
def _gather(a, wt, union, a_u, wt_u):
    """a_u = a[:, union] and wt_u = wt[union, :], the operands of (2)."""
    k, n = union.size, wt.shape[1]
    t = 0
    while t + 4 <= k:
        s0, s1, s2, s3 = wt[union[t]], wt[union[t + 1]], wt[union[t + 2]], wt[union[t + 3]]
        d0, d1, d2, d3 = wt_u[t], wt_u[t + 1], wt_u[t + 2], wt_u[t + 3]
        for o in range(n):
            d0[o], d1[o], d2[o], d3[o] = s0[o], s1[o], s2[o], s3[o]
        t += 4
    while t < k:
        s0, d0 = wt[union[t]], wt_u[t]
        for o in range(n):
            d0[o] = s0[o]
        t += 1
    for r in range(a.shape[0]):
        for t in range(union.size):
            a_u[r, t] = a[r, union[t]]


@njit(cache=True, nogil=True, fastmath={"contract"})
def _add_rows(wt, idx, val, count, h, lo, hi):
    """h[r, lo:hi] = sum_{t < count[r]} val[r, t] wt[idx[r, t], lo:hi] for every row r of h, eight
    terms per pass over h[r, lo:hi] (the remainder one by one)."""
    m = hi - lo
    if m <= 0:
        return
    for r in range(h.shape[0]):
        out = h[r, lo:hi]
        out[:] = 0.0
        k, t = count[r], 0
        while t + 8 <= k:
            w0, w1 = wt[idx[r, t], lo:hi], wt[idx[r, t + 1], lo:hi]
            w2, w3 = wt[idx[r, t + 2], lo:hi], wt[idx[r, t + 3], lo:hi]
            w4, w5 = wt[idx[r, t + 4], lo:hi], wt[idx[r, t + 5], lo:hi]
            w6, w7 = wt[idx[r, t + 6], lo:hi], wt[idx[r, t + 7], lo:hi]
            v0, v1, v2, v3 = val[r, t], val[r, t + 1], val[r, t + 2], val[r, t + 3]
            v4, v5, v6, v7 = val[r, t + 4], val[r, t + 5], val[r, t + 6], val[r, t + 7]
            for o in range(m):
                out[o] += (v0 * w0[o] + v1 * w1[o] + v2 * w2[o] + v3 * w3[o]) + (
                    v4 * w4[o] + v5 * w5[o] + v6 * w6[o] + v7 * w7[o]
                )
            t += 8
        while t < k:
            w0, v0 = wt[idx[r, t], lo:hi], val[r, t]
            for o in range(m):
                out[o] += v0 * w0[o]
            t += 1


@njit(cache=True, nogil=True)
def _rows_serial(wt, idx, val, count, h):
    """(1) without the bias, for every row of h."""
    _add_rows(wt, idx, val, count, h, 0, h.shape[1])


@njit(cache=True, nogil=True, parallel=True)
def _rows_parallel(wt, idx, val, count, h, threads):
    """(1) without the bias, for every row of h, the outputs cut into ``threads`` slices of
    near-equal length (multiples of LANE; fewer when h is narrow), one per Numba thread."""
    n = h.shape[1]
    for s in prange(threads):
        lo = min(n, -(-n * s // (threads * LANE)) * LANE)
        hi = min(n, -(-n * (s + 1) // (threads * LANE)) * LANE)
        _add_rows(wt, idx, val, count, h, lo, hi)


@njit(cache=True, nogil=True)
def _one_input_kernel(x, w, w_offsets, b, b_offsets, widths, pieces, threads, h, zeros):
    """The sparse pass of one input x (1, d) through every layer, with ``threads`` threads: the
    logits into h[:C], the number of exact zeros of each hidden layer into zeros (L,); h (max
    width,) is scratch."""
    n_max = h.size
    idx = np.empty((1, n_max), np.int64)
    val = np.empty((1, n_max), np.float32)
    count = np.empty(1, np.int64)
    _compress(x, idx, val, count)
    last = widths.size - 2
    for l in range(last + 1):
        n_in, n_out = widths[l], widths[l + 1]
        wt = w[w_offsets[l] : w_offsets[l + 1]].reshape((n_in, n_out))
        bl = b[b_offsets[l] : b_offsets[l + 1]]
        hl = h[:n_out].reshape((1, n_out))  # C-contiguous (a slice h[:, :n_out] is not)
        if threads > 1:
            _rows_parallel(wt, idx, val, count, hl, threads)
        else:
            _rows_serial(wt, idx, val, count, hl)
        if l < last:
            breaks, anchor_x, anchor_y, slope = pieces
            k = 0
            for j in range(n_out):
                y = phi(hl[0, j] + bl[j], breaks, anchor_x, anchor_y, slope)
                if y != 0.0:
                    idx[0, k] = j
                    val[0, k] = y
                    k += 1
            count[0] = k
            zeros[l] = n_out - k
        else:
            hl[0, :] += bl
