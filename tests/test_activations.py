"""The activation description: kernels against plain numpy formulas, sparsity by Monte Carlo, errors."""

import math

import numpy as np
import pytest

from simulate.activations import Activation, dphi, phi

X = np.linspace(-4.0, 4.0, 1601)
MEMBERS = [
    Activation("crelu", 0.0),
    Activation("crelu", 0.7),
    Activation("crelu", 0.7, 1.3),
    Activation("crelu", 0.0, 0.5),
    Activation("cst", 0.0),
    Activation("cst", 0.7),
    Activation("cst", 0.7, 1.3),
]


def reference_phi(act, x):
    """The families' definitions (module docstring of simulate.activations), written with numpy."""
    if act.family == "crelu":
        return np.minimum(np.maximum(x - act.tau, 0.0), act.m)
    return np.sign(x) * np.minimum(np.maximum(np.abs(x) - act.tau, 0.0), act.m)


@pytest.mark.parametrize("act", MEMBERS, ids=lambda a: a.label())
def test_kernels_match_definition(act):
    expected = reference_phi(act, X)
    np.testing.assert_array_equal(act(X), expected)
    p = act.pieces
    kernel = [phi(x, p.breaks, p.anchor_x, p.anchor_y, p.slope) for x in X]
    np.testing.assert_array_equal(kernel, expected)  # bit for bit: x - tau on the pass band
    # phi' by central differences away from the kinks (h = 1e-6 << distance to any kink)
    h = 1e-6
    away = np.all(np.abs(X[:, None] - np.asarray(act.kinks)[None, :]) > 1e-3, axis=1)
    slope = (reference_phi(act, X + h) - reference_phi(act, X - h)) / (2 * h)
    np.testing.assert_allclose(act.derivative(X)[away], slope[away], atol=1e-8)
    assert [dphi(x, p.breaks, p.slope) for x in X[away]] == list(act.derivative(X)[away])


def test_special_cases():
    np.testing.assert_array_equal(Activation("crelu", 0.0)(X), np.maximum(X, 0.0))
    np.testing.assert_array_equal(Activation("cst", 0.0)(X), X)
    assert Activation("crelu", 0.5).kinks == (0.5,)
    assert Activation("cst", 0.5, 1.0).kinks == (-1.5, -0.5, 0.5, 1.5)


@pytest.mark.parametrize(("family", "target", "q_star"), [("crelu", 0.85, 1.0), ("cst", 0.6, 2.5)])
def test_from_sparsity_gives_target_zero_fraction(family, target, q_star):
    """Fraction of exact zeros of phi(sqrt(q*) z) over 10^6 draws equals the target within 5 SE."""
    act = Activation.from_sparsity(family, target, q_star, m=1.0)
    z = np.random.default_rng(1).standard_normal(1_000_000)
    zeros = np.mean(act(math.sqrt(q_star) * z) == 0.0)
    se = math.sqrt(target * (1 - target) / z.size)
    assert abs(zeros - target) < 5 * se


def test_array_parameters_broadcast():
    act = Activation.from_sparsity(
        "crelu", np.array([0.6, 0.9])[:, None], 1.0, m=np.array([1, 2, 3])
    )
    assert act.tau.shape == (2, 1) and act.m.shape == (3,)
    assert act.batch_shape == (2, 3) and act.knots.shape == (2, 3, 2)
    with pytest.raises(ValueError, match="all clipped or all unclipped"):
        Activation("crelu", 0.5, np.array([1.0, math.inf]))


def reference_interp(knots, values, left, right, x):
    """Linear interpolation through the points, extended with the outer slopes (numpy only)."""
    inside = np.interp(x, knots, values)
    below = values[0] + left * (x - knots[0])
    above = values[-1] + right * (x - knots[-1])
    return np.where(x < knots[0], below, np.where(x > knots[-1], above, inside))


@pytest.mark.parametrize(
    ("knots", "values", "left", "right"),
    [([-1.0, 0.5, 2.0], [-0.3, 0.0, 1.5], 0.2, 0.0),
     ([-1.0, 0.0, 1.0], [1.0, -0.5, 2.0], -0.3, 0.4),  # two sign changes inside pieces
     ([0.3], [0.0], 0.0, 1.0),
     ([-1.0, 0.5, 2.0], [0.3, -0.6, 1.0], 0.25, -0.5)],  # both outer rays cross 0
)  # fmt: skip
def test_piecewise_linear_interpolates_its_points(knots, values, left, right):
    act = Activation.piecewise_linear(knots, values, left, right)
    ref = reference_interp(np.array(knots), np.array(values), left, right, X)
    np.testing.assert_allclose(act(X), ref, rtol=1e-14, atol=1e-14)
    np.testing.assert_array_equal(act(np.array(knots)), values)
    roots = act.pieces.anchor_x[act.pieces.anchor_y == 0.0]
    np.testing.assert_array_equal(act(roots), 0.0)  # exact zeros where phi changes sign
    h = 1e-6
    away = np.all(np.abs(X[:, None] - np.array(knots)[None, :]) > 1e-3, axis=1)
    slope = (reference_interp(np.array(knots), np.array(values), left, right, X + h)
             - reference_interp(np.array(knots), np.array(values), left, right, X - h)) / (2 * h)  # fmt: skip
    np.testing.assert_allclose(act.derivative(X)[away], slope[away], atol=1e-8)


def test_named_constructors():
    np.testing.assert_array_equal(Activation.relu()(X), np.maximum(X, 0.0))
    np.testing.assert_array_equal(Activation.hard_tanh(1.0)(X), np.clip(X, -1.0, 1.0))
    np.testing.assert_array_equal(Activation.hard_tanh(0.5)(X), np.clip(X, -0.5, 0.5))
    np.testing.assert_array_equal(Activation.relu_tau(0.5)(X), np.maximum(X - 0.5, 0.0))
    np.testing.assert_array_equal(
        Activation.st_tau(0.5)(X), np.sign(X) * np.maximum(np.abs(X) - 0.5, 0.0)
    )
    assert Activation.crelu(0.5, 1.0) == Activation("crelu", 0.5, 1.0)
    assert Activation.cst(0.5, 1.0).clipped and not Activation.st_tau(0.5).clipped


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (([], []), "knots=.*at least one"),
        (([0.0, 0.0], [0.0, 1.0]), "strictly increasing"),
        (([1.0, 0.0], [0.0, 1.0]), "strictly increasing"),
        (([0.0, math.inf], [0.0, 1.0]), "finite"),
        (([0.0, 1.0], [0.0]), "values=.*one value per knot"),
        (([0.0, 1.0], [0.0, math.nan]), "values=.*finite"),
        (([0.0], [0.0], math.inf), "left_slope=inf"),
        (([0.0], [0.0], 0.0, math.nan), "right_slope=nan"),
    ],
)
def test_piecewise_linear_errors(args, message):
    with pytest.raises(ValueError, match=message):
        Activation.piecewise_linear(*args)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"family": "relu", "tau": 0.0}, "family='relu'"),
        ({"family": "crelu", "tau": -1.0}, "tau=-1.0"),
        ({"family": "crelu", "tau": math.nan}, "tau=nan"),
        ({"family": "crelu", "tau": math.inf}, "tau=inf"),
        ({"family": "crelu", "tau": 0.5, "m": 0.0}, "m=0.0"),
        ({"family": "cst", "tau": 0.5, "m": -2.0}, "m=-2.0"),
        ({"family": "cst", "tau": 0.5, "m": math.nan}, "m=nan"),
    ],
)
def test_constructor_errors(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        Activation(**kwargs)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("crelu", 0.4, 1.0), r"sparsity=0.4: must be in \[0.5, 1\)"),
        (("crelu", 1.0, 1.0), r"sparsity=1.0"),
        (("cst", -0.1, 1.0), r"sparsity=-0.1: must be in \[0.0, 1\)"),
        (("cst", 0.5, 0.0), "q_star=0.0"),
        (("cst", 0.5, math.inf), "q_star=inf"),
        (("tanh", 0.5, 1.0), "family='tanh'"),
    ],
)
def test_from_sparsity_errors(args, message):
    with pytest.raises(ValueError, match=message):
        Activation.from_sparsity(*args)
