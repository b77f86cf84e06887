"""The JAX network: phi and phi' from the description, and the forward pass at initialisation against
the Monte Carlo engines (same activation, width and inputs), within standard errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from simulate.activations import Activation
from simulate.engines import run_cell
from simulate.train.data import load_dataset
from simulate.train.init import FLOAT32_MAX, TAIL_SD, initialise
from simulate.train.model import (
    OptimizerConfig,
    make_optimizer,
    make_phi,
    pieces_of,
    probe,
    train_epoch,
)
from simulate.train.options import OPTIMIZERS, SCHEDULES

SHAPES = {
    "crelu": Activation.crelu(0.7, 1.2),
    "cst": Activation.cst(0.5, 0.8),
    "relu_tau": Activation.relu_tau(1.1),
    "custom": Activation.piecewise_linear([-1.0, 0.5, 2.0], [0.3, -0.6, 1.0], -0.25, 0.0),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SHAPES))
def test_jnp_phi_and_its_derivative_match_the_kernels(name):
    """phi in float32 within float32 rounding of the Numba phi (float64); autodiff phi' equal to the
    piece slope; away from the piece breaks (kinks and roots, a set of measure zero), where float32
    and float64 rounding can put a point on different sides."""
    act = SHAPES[name]
    phi = make_phi(act)
    x = np.linspace(-4.0, 4.0, 2001).astype(np.float32)
    x = x[np.min(np.abs(x[:, None] - act.pieces.breaks[None, :]), axis=1) > 1e-3]
    expected = act(x.astype(float))
    got = np.asarray(phi(jnp.asarray(x)), dtype=float)
    np.testing.assert_allclose(got, expected, rtol=2e-7, atol=1e-6)
    np.testing.assert_array_equal(got == 0.0, expected == 0.0)  # exact zeros stay exact
    slope = np.asarray(jax.vmap(jax.grad(phi))(jnp.asarray(x)), dtype=float)
    np.testing.assert_allclose(slope, act.derivative(x.astype(float)), rtol=1e-6, atol=0)


FORWARD_ACTS = {
    "crelu_clipped": Activation.from_sparsity("crelu", 0.7, 1.0, m=1.0),
    "cst_unclipped": Activation.from_sparsity("cst", 0.6, 1.0),
}
FAMILY_LEVEL = 1e-3


@pytest.mark.parametrize("name", list(FORWARD_ACTS))
def test_forward_at_initialisation_matches_the_monte_carlo_engine(name):
    """Per layer, the mean over networks of q^l (averaged over 4 digits images) and of the fraction
    of exact zeros, from JAX networks drawn by the initialiser and from ``run_cell`` on the same
    images. The initialiser's first layer has weight variance sigma_1^2 / d, the engine's layer 0 has
    sigma_w^2 / d: the images are scaled by sqrt(sigma_1^2 / sigma_w^2) for the engine, so both
    layer-0 kernels are (sigma_1^2 / d) X X^T + sigma_b^2, and engine layer k is JAX layer k + 1.
    Two-sample z-tests, Bonferroni over layers x statistics at family level 1e-3."""
    act, q_star, width, depth, nets = FORWARD_ACTS[name], 1.0, 64, 8, 200
    x = load_dataset("digits").x_test[:4]
    pieces = pieces_of(act)
    widths = [x.shape[1], *([width] * depth), 10]
    q_jax, zero_jax = [], []
    for net in range(nets):
        init = initialise(act, q_star, widths, seed=1000 + net)
        q, z = probe(init.pytree(), jnp.asarray(x), pieces)
        q_jax.append(np.asarray(q, float))
        zero_jax.append(np.asarray(z, float))
    scale = math.sqrt(init.sigma_in2 / init.sigma_w2)
    mc = run_cell(
        act, init.sigma_w2, init.sigma_b2, width=width, depth=depth - 1, nets=nets,
        inputs=x.astype(float) * scale, seed=7, escape_factor=1e6,
    )  # fmt: skip
    assert int(mc.escape_layer.max()) == -1
    q_mc = mc.q.mean("input").values
    zero_mc = mc.zero_frac.mean("input").values
    z_crit = stats.norm.isf(FAMILY_LEVEL / (2 * 2 * depth))
    for label, a, b in (("q", np.array(q_jax), q_mc), ("zero", np.array(zero_jax), zero_mc)):
        diff = a.mean(0) - b.mean(0)
        se = np.sqrt(a.var(0, ddof=1) / nets + b.var(0, ddof=1) / nets)
        assert np.all(np.abs(diff) < z_crit * se), (label, diff / se)


def test_largest_accepted_q_star_trains_finitely_in_float32():
    """ReLU (sigma_w^2 = 2, sigma_b^2 = 0 at every q*) just inside the initialiser's float32 bound,
    q* = 0.99 float32max / TAIL_SD^2 ~ 3.4e36: the per-layer q, the loss, two Adam steps of one
    image each and the optimiser state (its second moments are squared gradients) stay finite.
    The per-layer q of one image sums 8 squares (largest q^l / q* over 50 seeds: 3.2, so the sum
    stays ~4x inside float32; train_network refuses probes whose sum would not)."""
    act, q_star = Activation.relu(), 0.99 * FLOAT32_MAX / TAIL_SD**2
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 4)), jnp.float32)
    y = jnp.asarray([0, 2], jnp.int32)
    params = initialise(act, q_star, [4, 8, 8, 3], seed=0).pytree()
    pieces = pieces_of(act)
    q, _ = probe(params, x[:1], pieces)
    assert np.all(np.isfinite(np.asarray(q))) and float(np.max(q)) > 1e35
    config = OptimizerConfig("adam", "constant", total_steps=2)
    state = make_optimizer(config, 1e-3).init(params)
    batches = jnp.arange(2).reshape(2, 1)
    params, state, losses = train_epoch(params, state, x, y, batches, 1e-3, pieces, config)
    leaves = jax.tree_util.tree_leaves((params, state, losses))
    assert all(np.all(np.isfinite(np.asarray(v))) for v in leaves)


def test_every_named_optimizer_and_schedule_is_built_and_others_refused():
    """The names a spec may use (simulate.train.options) are the ones the engine builds: each pair
    takes one finite step on a quadratic; any other name is a ValueError naming the config."""
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.full(3, 0.5)}
    for name in OPTIMIZERS:
        for schedule in SCHEDULES:
            opt = make_optimizer(OptimizerConfig(name, schedule, 10, 2), 1e-2)
            updates, _ = opt.update(grads, opt.init(params), params)
            assert np.all(np.isfinite(np.asarray(updates["w"])))
    for config in (OptimizerConfig("adamw", "constant", 10), OptimizerConfig("adam", "linear", 10)):
        with pytest.raises(ValueError, match=r"^config="):
            make_optimizer(config, 1e-2)
