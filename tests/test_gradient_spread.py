"""The spread of gradients through depth (``gp.slope_kurtosis``, ``gp.jacobian_spread``,
``gp.log_gain_spread``) against independent computations: quadrature, explicit random matrices, and
the Monte Carlo engine's tangent."""

from __future__ import annotations

import math

import numpy as np
import pytest

from simulate import gp
from simulate.activations import Activation
from simulate.engines import run_cell

ACTS = {
    "relu": Activation.relu(),
    "crelu_085_m086": Activation.from_sparsity("crelu", 0.85, 1.0, 0.86),
    "crelu_085_m18": Activation.from_sparsity("crelu", 0.85, 1.0, 1.8),
    "cst_09_m1": Activation.from_sparsity("cst", 0.9, 1.0, 1.0),
    "custom": Activation.piecewise_linear([-1.0, 0.5, 2.0], [0.3, -0.6, 1.0], -0.25, 0.0),
}


@pytest.mark.parametrize("name", list(ACTS))
def test_slope_kurtosis_against_quadrature(name):
    """E[phi'^4] / E[phi'^2]^2 at q = 1.7 by adaptive quadrature split at the knots, to 1e-10."""
    act, q = ACTS[name], 1.7

    def moment(power):
        return gp.gaussian_expectation(
            lambda x: float(act.derivative(x) ** power), q, tuple(act.knots)
        )

    assert math.isclose(gp.slope_kurtosis(act, q), moment(4) / moment(2) ** 2, rel_tol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["relu", "crelu_085_m086"])
def test_jacobian_spread_against_explicit_random_matrices(name):
    """J = D_L W_L ... D_1 W_1 at width 800, L = 4, W_ij ~ N(0, sigma_w^2 / N) and D = phi'(h) with
    h ~ N(0, q*) i.i.d. (the GP's layers). The normalised variance of the squared singular values
    is the sum over layers of r_l = mean(d^4) / mean(d^2)^2 of each layer's drawn slopes (the law
    ``jacobian_spread`` uses, free multiplicative convolution) within 4%: the finite-N corrections
    are O(1/N) per layer (one square Wishart matrix has normalised variance 1 + 1/N), and the
    spectrum self-averages. The drawn r_l fluctuate about r (binomial counts of units passing
    gradient), so their mean is ``jacobian_spread`` / L within 4 of its standard errors."""
    act, width, depth = ACTS[name], 800, 4
    sigma_w2 = gp.edge_of_chaos(act, 1.0).sigma_w2
    rng = np.random.default_rng(7)
    jac, drawn = np.eye(width), []
    for _ in range(depth):
        w = rng.standard_normal((width, width)) * math.sqrt(sigma_w2 / width)
        d2 = act.derivative(rng.standard_normal(width)) ** 2
        drawn.append(np.mean(d2**2) / np.mean(d2) ** 2)
        jac = (np.sqrt(d2)[:, None] * w) @ jac
    s2 = np.linalg.svd(jac, compute_uv=False) ** 2
    assert s2.var() / s2.mean() ** 2 == pytest.approx(sum(drawn), rel=0.04)
    r = gp.jacobian_spread(act, 1.0, depth) / depth
    p = 1.0 / r  # slopes in {0, 1}: r = 1 / p, and r_l = N / K_l with K_l ~ Bin(N, p)
    se = r * math.sqrt((1 - p) / (width * p) / depth)
    assert abs(np.mean(drawn) - r) < 4 * se


@pytest.mark.slow
@pytest.mark.parametrize("name", ["relu", "crelu_085_m086", "crelu_085_m18", "cst_09_m1"])
def test_log_gain_spread_against_the_monte_carlo_tangent(name):
    """The sd over 400 networks (width 1600, 30 layers, on the EoC at q* = 1, the cheapest exact engine) of the
    summed v_log_gain equals the first-order theory within 3 standard errors of a sample sd,
    sd / sqrt(2 (n - 1)), plus the second-order remainder, taken as 1 / (N p) relative (p the
    fraction of units passing gradient: N p = 140 to 800 here)."""
    act, width, depth, nets = ACTS[name], 1600, 30, 400
    eoc = gp.edge_of_chaos(act, 1.0)
    ds = run_cell(act, eoc.sigma_w2, eoc.sigma_b2, width=width, depth=depth, nets=nets, q0=1.0,
                  q_ref=1.0, engine="auto", escape_on="v", seed=3)  # fmt: skip
    gains = ds["v_log_gain"].values[:, 1:]
    assert np.isfinite(gains).all()  # no tangent died: the sum is over every layer
    measured = gains.sum(axis=1).std(ddof=1)
    theory = gp.log_gain_spread(act, 1.0, eoc.sigma_w2, eoc.sigma_b2, depth, width)[-1]
    passing = 1.0 / gp.slope_kurtosis(act, 1.0)  # p for slopes in {0, 1}
    tolerance = 3.0 / math.sqrt(2 * (nets - 1)) + 1.0 / (width * passing)
    assert abs(measured / theory - 1.0) < tolerance, (measured, theory)
