"""The public initialiser: its variances put every layer on the Edge of Chaos for the chosen q*.

The EoC conditions are checked with quadrature of the activation itself (gp.gaussian_expectation on
``act`` and ``act.derivative``), not with the closed forms the initialiser calls. Sample variances
of n i.i.d. N(0, s^2) entries have standard error s^2 sqrt(2 / n); tolerances are 4 standard errors.
"""

import math

import numpy as np
import pytest

from simulate import gp
from simulate.activations import Activation
from simulate.train.data import load_dataset
from simulate.train.init import initialise

ACTS = {
    "crelu": Activation.from_sparsity("crelu", 0.85, 1.0, m=1.0),
    "cst": Activation.from_sparsity("cst", 0.8, 2.0, m=1.5),
    "relu": Activation.relu(),
}
Q_STARS = {"crelu": 1.0, "cst": 2.0, "relu": 1.0}


def gauss(f, act, q):
    return gp.gaussian_expectation(f, q, act.kinks)


def sample_variance(a):
    """(mean of a^2, its standard error), for zero-mean i.i.d. entries."""
    a = np.asarray(a, dtype=float).ravel()
    v = np.mean(a**2)
    return v, v * math.sqrt(2.0 / a.size)


@pytest.mark.parametrize("name", list(ACTS))
def test_hidden_layers_satisfy_the_edge_of_chaos(name):
    """sigma_w^2 E[phi'(sqrt(q*) z)^2] = 1 and sigma_w^2 E[phi^2] + sigma_b^2 = q*, with sigma_w^2 and
    sigma_b^2 measured on the drawn hidden layers (fan_in x weight variance; bias variance)."""
    act, q_star = ACTS[name], Q_STARS[name]
    width, depth = 200, 6
    init = initialise(act, q_star, [30, *([width] * depth), 10], seed=1)
    chi_weight = gauss(lambda x: act.derivative(x) ** 2, act, q_star)
    phi2 = gauss(lambda x: act(x) ** 2, act, q_star)
    for l in range(1, depth):
        w2, w2_se = sample_variance(init.weights[l] * math.sqrt(width))
        b2, b2_se = sample_variance(init.biases[l])
        chi = w2 * chi_weight
        assert abs(chi - 1.0) < 4 * w2_se * chi_weight, (l, chi)
        v = w2 * phi2 + b2
        assert abs(v - q_star) < 4 * math.hypot(w2_se * phi2, b2_se), (l, v)


def test_first_layer_puts_the_normalised_inputs_at_q_star():
    """q^1 = mean over units and images of (W^1 x + b^1)_i^2 equals q* on the normalised digits;
    the standard error is that of a mean over the N i.i.d. units."""
    data = load_dataset("digits")
    act, q_star, width = ACTS["crelu"], 1.7, 4000
    init = initialise(act, q_star, [data.input_dim, width, 10], seed=2)
    h = data.x_train @ init.weights[0].T.astype(float) + init.biases[0]
    per_unit = np.mean(h**2, axis=0)
    se = per_unit.std(ddof=1) / math.sqrt(width)
    assert abs(per_unit.mean() - q_star) < 4 * se


def test_output_gain_scales_the_output_layer():
    act = ACTS["crelu"]
    widths = [20, 300, 300, 50]
    base = initialise(act, 1.0, widths, seed=3)
    zero = initialise(act, 1.0, widths, seed=3, output_gain=0.0)
    assert not np.any(zero.weights[-1]) and not np.any(zero.biases[-1])
    quarter = initialise(act, 1.0, widths, seed=3, output_gain=0.25)
    np.testing.assert_allclose(quarter.weights[-1], 0.5 * base.weights[-1], rtol=1e-6)
    w2, se = sample_variance(base.weights[-1] * math.sqrt(300))
    assert abs(w2 - base.sigma_w2) < 4 * se


def test_deterministic_for_a_seed_and_pytree_matches_arrays():
    act = ACTS["cst"]
    widths = [8, 16, 16, 16, 3]
    a = initialise(act, 2.0, widths, seed=7)
    b = initialise(act, 2.0, widths, seed=7)
    c = initialise(act, 2.0, widths, seed=8)
    for x, y, z in zip(
        a.weights + a.biases, b.weights + b.biases, c.weights + c.biases, strict=True
    ):
        assert x.dtype == np.float32
        np.testing.assert_array_equal(x, y)
        assert not np.array_equal(x, z)
    tree = a.pytree()
    np.testing.assert_array_equal(tree["w_in"], a.weights[0])
    np.testing.assert_array_equal(tree["w_hidden"][1], a.weights[2])
    np.testing.assert_array_equal(tree["b_hidden"][0], a.biases[1])
    np.testing.assert_array_equal(tree["w_out"], a.weights[-1])
    assert tree["w_hidden"].shape == (2, 16, 16)
    assert a.widths == tuple(widths)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"widths": [4, 4]}, "widths"),
        ({"widths": [4, 0, 4]}, "widths"),
        ({"q_star": -1.0}, "q_star"),
        ({"output_gain": -0.5}, "output_gain"),
        ({"input_ms": 0.0}, "input_ms"),
    ],
)
def test_bad_arguments_name_the_field(kwargs, field):
    args = {"act": ACTS["relu"], "q_star": 1.0, "widths": [4, 4, 4]} | kwargs
    with pytest.raises(ValueError, match=f"^{field}="):
        initialise(**args)


@pytest.mark.parametrize(
    ("q_star", "kwargs", "field"),
    [
        (1e37, {}, "q_star"),  # q* fits float32 (3.4e38) but 10-sd pre-activations squared do not
        (1e39, {}, "q_star"),  # q* itself beyond float32
        (1e30, {"output_gain": 1e7}, "output_gain"),
        (1.0, {"input_ms": 1e-80}, "input_ms"),  # first-layer weights of sd ~ 1e39
    ],
)
def test_float32_overflow_is_refused_in_one_line(q_star, kwargs, field):
    """ReLU is on the EoC at every q* (sigma_w^2 = 2, sigma_b^2 = 0), so only the float32 range
    refuses these; the largest accepted case trains finitely (test_train_model)."""
    with pytest.raises(ValueError, match=f"^{field}=") as err:
        initialise(ACTS["relu"], q_star, [4, 4, 4], **kwargs)
    message = str(err.value)
    assert "\n" not in message and "float32" in message


def test_pytree_needs_equal_hidden_widths():
    init = initialise(ACTS["relu"], 1.0, [4, 5, 6, 2])
    assert [w.shape for w in init.weights] == [(5, 4), (6, 5), (2, 6)]
    with pytest.raises(ValueError, match=r"^widths="):
        init.pytree()
