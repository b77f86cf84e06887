"""The sparse forward pass (simulate.infer) computes the dense pass: bit for bit where every sum is
exact, to float32 rounding on Edge-of-Chaos networks at several sparsities and on a trained one.

Tolerance of the float32 comparisons, RTOL = 1e-5 of the output's norm: the sparse and dense passes
add the same products (the skipped ones are exact zeros) in different orders, and each layer's sum
of n float32 terms carries a relative rounding error of order sqrt(n) u (unit roundoff u = 6e-8;
7e-7 at n = 128), which at the Edge of Chaos neither grows nor shrinks on average through the layers.
Measured on these networks: 2e-7 to 2e-6, also against a float64 evaluation of the same float32
weights. One wrong or missing column changes the output by about 1 / sqrt(k) of its size (k ~ 20 to
60 non-zero inputs per layer here), four orders above RTOL.
"""

import itertools

import numpy as np
import pytest

from simulate import infer
from simulate.activations import Activation
from simulate.train.data import load_dataset
from simulate.train.init import initialise

RTOL = 1e-5
SETTINGS = [(1, "auto"), (2, "auto"), (1, "union"), (2, "union"), (1, "rows"), (2, "rows")]
"""(threads, method) of the batch path; the one-input path is run with 1 and 2 threads."""


def reference(act, weights, biases, x):
    """The network in float64 numpy (the float32 weights upcast): logits, and each hidden layer's
    fraction of exact zeros over the inputs and fraction of units non-zero for some input."""
    a, zeros, union = np.atleast_2d(np.asarray(x, float)), [], []
    for l, (w, b) in enumerate(zip(weights, biases, strict=True)):
        h = a @ np.asarray(w, float).T + np.asarray(b, float)
        if l == len(weights) - 1:
            return h, np.array(zeros), np.array(union)
        a = act(h)
        zeros.append(np.mean(a == 0.0))
        union.append(np.mean(np.any(a != 0.0, axis=0)))


def rel(a, b):
    return np.linalg.norm(np.asarray(a, float) - b) / np.linalg.norm(b)


@pytest.mark.slow
@pytest.mark.parametrize("act", [Activation.crelu(2.0, 3.0), Activation.cst(4.0, 2.0)])
def test_integer_network_is_computed_exactly_by_every_path(act):
    """Integer weights in {-1, 0, 1}, integer biases and inputs, and breakpoints at integers: every
    pre-activation is an integer below 2^24, so float32 sums are exact in any order and the sparse
    passes (one input; batch by union, by rows, auto; 1 and 2 threads), the dense pass and a float64
    reference agree bit for bit, and so do the zero and union fractions. Widths 50 and 70 (not multiples of the
    16-float slices) and 10 outputs (narrower than two slices)."""
    rng = np.random.default_rng(0)
    widths = [40, 50, 70, 70, 50, 10]
    weights = [
        rng.integers(-1, 2, (o, i)).astype(np.float32) for i, o in itertools.pairwise(widths)
    ]
    biases = [rng.integers(-2, 3, o).astype(np.float32) for o in widths[1:]]
    x = rng.integers(-2, 3, (5, widths[0])).astype(np.float32)
    net = infer.prepare(act, weights, biases)
    expected, zeros, union = reference(act, weights, biases, x)
    assert 0.3 < zeros.mean() < 0.9 and np.any(union < 1.0)  # (2) gathers, in some layer
    np.testing.assert_array_equal(infer.dense_forward(net, x), expected)
    for threads, method in SETTINGS:
        got = infer.sparse_forward(net, x, threads=threads, method=method)
        np.testing.assert_array_equal(got, expected, err_msg=f"{threads} threads, {method}")
        activity = infer.layer_activity(net, x, threads=threads, method=method)
        np.testing.assert_array_equal(activity, (zeros, union))
    _, zeros_2, union_2 = reference(act, weights, biases, x[2])
    for threads in (1, 2):
        np.testing.assert_array_equal(infer.sparse_forward(net, x[2], threads=threads), expected[2])
        activity = infer.layer_activity(net, x[2], threads=threads)
        np.testing.assert_array_equal(activity, (zeros_2, union_2))


@pytest.mark.parametrize(
    ("family", "sparsity"),
    [("crelu", 0.5), ("crelu", 0.85), ("crelu", 0.95), ("cst", 0.7), ("cst", 0.9)],
)
def test_edge_of_chaos_network_sparse_equals_dense_to_rounding(family, sparsity):
    """initialise's float32 network (clip m = 1, q* = 1, 12 hidden layers of width 128) on 16
    Gaussian inputs: every sparse path within RTOL (module docstring) of the dense pass and of the
    float64 reference, one input alone too; the zero and union fractions the sparse pass counts
    equal the reference's, up to one unit per layer that rounding can move across a break."""
    act = Activation.from_sparsity(family, sparsity, 1.0, m=1.0)
    width = 128
    init = initialise(act, 1.0, [32, *[width] * 12, 10], seed=1)
    net = infer.prepare(act, init.weights, init.biases)
    x = np.random.default_rng(2).standard_normal((16, 32))
    expected, zeros, union = reference(act, init.weights, init.biases, x)
    dense = infer.dense_forward(net, x)
    assert rel(dense, expected) < RTOL
    for threads, method in SETTINGS:
        got = infer.sparse_forward(net, x, threads=threads, method=method)
        assert rel(got, dense) < RTOL and rel(got, expected) < RTOL, (threads, method)
        counted, counted_union = infer.layer_activity(net, x, threads=threads, method=method)
        assert np.all(np.abs(counted - zeros) <= 1 / (16 * width)), (counted, zeros)
        assert np.all(np.abs(counted_union - union) <= 1 / width), (counted_union, union)
    assert abs(zeros.mean() - sparsity) < 0.1  # the network is as sparse as asked
    for threads in (1, 2):
        assert rel(infer.sparse_forward(net, x[5], threads=threads), expected[5]) < RTOL


@pytest.mark.slow
def test_trained_network_sparse_equals_dense_and_the_jax_model():
    """A CReLU network (s = 0.85, m = 1, 5 hidden layers of width 64) after 40 Adam steps on
    digits with simulate.train.model (the loss falls: it has trained), taken out of its pytree by
    layers_of_pytree: on the 360 test images, the dense pass equals the JAX model's logits and the
    sparse passes equal the dense one, within RTOL; the sparse pass's zero fractions equal the
    model's probe up to one unit per layer."""
    import jax.numpy as jnp

    from simulate.train import model

    data = load_dataset("digits", None)
    act = Activation.from_sparsity("crelu", 0.85, 1.0, m=1.0)
    width = 64
    params = initialise(act, 1.0, [data.input_dim, *[width] * 5, data.n_classes], seed=0).pytree()
    config = model.OptimizerConfig("adam", "constant", total_steps=40)
    state = model.make_optimizer(config, 3e-3).init(params)
    batches = np.random.default_rng(0).permutation(len(data.x_train))[: 40 * 32].reshape(40, 32)
    pieces = model.pieces_of(act)
    x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    params, _, losses = model.train_epoch(
        params, state, x_train, y_train, jnp.asarray(batches), 3e-3, pieces, config
    )
    losses = np.asarray(losses)
    assert losses[-10:].mean() < 0.7 * losses[:10].mean()

    net = infer.prepare(act, *infer.layers_of_pytree(params))
    x = data.x_test
    logits, _, jax_zeros = model.forward(params, jnp.asarray(x), pieces, collect=True)
    logits = np.asarray(logits, float)
    dense = infer.dense_forward(net, x)
    assert rel(dense, logits) < RTOL
    for threads, method in SETTINGS:
        assert rel(infer.sparse_forward(net, x, threads=threads, method=method), dense) < RTOL
        counted = infer.layer_activity(net, x, threads=threads, method=method)[0]
        assert np.all(np.abs(counted - np.asarray(jax_zeros)) <= 1 / (len(x) * width))
    for i in (0, 123):
        assert rel(infer.sparse_forward(net, x[i]), logits[i]) < RTOL


def test_weights_from_a_generator_and_an_npz_file_give_the_same_network(tmp_path):
    """prepare reads an iterable of weights once (a generator gives the same buffers as a list);
    load_npz reads w0..wL, b0..bL back."""
    act = Activation.from_sparsity("cst", 0.8, 1.0, m=1.0)
    init = initialise(act, 1.0, [8, 16, 16, 3], seed=3)
    net = infer.prepare(act, init.weights, init.biases)
    lazy = infer.prepare(act, (w for w in init.weights), init.biases)
    np.testing.assert_array_equal(lazy.w, net.w)
    path = tmp_path / "net.npz"
    np.savez(path, **{f"w{l}": w for l, w in enumerate(init.weights)},
             **{f"b{l}": b for l, b in enumerate(init.biases)})  # fmt: skip
    weights, biases = infer.load_npz(path)
    loaded = infer.prepare(act, weights, biases)
    np.testing.assert_array_equal(loaded.w, net.w)
    np.testing.assert_array_equal(loaded.b, net.b)
    assert loaded.widths == (8, 16, 16, 3)


def test_bad_arguments_are_refused_with_the_argument_named(tmp_path):
    """ValueError naming the argument (and layer) for shapes that do not chain, non-finite
    values, a missing layer, a wrong input, threads or method, and an npz without w0..wL."""
    act = Activation.crelu(1.0, 1.0)
    w = [np.ones((4, 3)), np.ones((2, 4))]
    b = [np.zeros(4), np.zeros(2)]
    net = infer.prepare(act, w, b)
    cases = [
        (lambda: infer.prepare(act, [np.ones((4, 3)), np.ones((2, 5))], b), r"^weights\[1\]"),
        (
            lambda: infer.prepare(act, [np.ones((4, 3)), np.full((2, 4), np.nan)], b),
            r"^weights\[1\]",
        ),
        (lambda: infer.prepare(act, w[:1], b), r"^weights: 1 layers"),
        (lambda: infer.prepare(act, w, [np.zeros(4), np.full(2, np.inf)]), r"^biases\[1\]"),
        (lambda: infer.prepare("crelu", w, b), r"^act="),
        (lambda: infer.sparse_forward(net, np.ones(4)), r"^x: shape"),
        (lambda: infer.sparse_forward(net, np.full(3, np.nan)), r"^x: must be a finite"),
        (lambda: infer.sparse_forward(net, np.ones(3), threads=0), r"^threads=0"),
        (lambda: infer.sparse_forward(net, np.ones((2, 3)), method="csr"), r"^method='csr'"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    np.savez(tmp_path / "bad.npz", w0=w[0], w1=w[1], b0=b[0])
    with pytest.raises(ValueError, match=r"must hold w0\.\.wL and b0\.\.bL"):
        infer.load_npz(tmp_path / "bad.npz")
