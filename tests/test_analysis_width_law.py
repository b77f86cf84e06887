"""The asymptotic width law: the passage constant against a simulation of its SDE, the finite-N
diffusion theory against the asymptotic law (``simulate.gp``), and the exponents on planted data
(analysis.width_law)."""

from __future__ import annotations

import math

import numpy as np
from synthetic import make_store, plant_escapes

from analysis import width_law
from analysis._store import Results
from simulate import gp
from simulate.activations import Activation


def test_passage_constant_matches_a_simulation_of_its_sde():
    """dy = y^2 dt + dW from 0, Euler with dt = 1e-3 (4000 paths, seed 0), stopped at y = 40 plus
    the deterministic rest 1/40: the mean within 4 standard errors plus 2% (Euler bias) of C."""
    rng = np.random.default_rng(0)
    dt, top, n = 1e-3, 40.0, 4000
    y, t, alive = np.zeros(n), np.zeros(n), np.ones(n, bool)
    while alive.any():
        k = alive.sum()
        y[alive] += y[alive] ** 2 * dt + math.sqrt(dt) * rng.standard_normal(k)
        t[alive] += dt
        alive &= y < top
    times = t + 1.0 / top
    c = gp.passage_constant()
    assert abs(c - 4.1660) < 1e-3
    assert abs(times.mean() - c) < 4 * times.std() / math.sqrt(n) + 0.02 * c


def test_diffusion_theory_tends_to_the_asymptotic_law():
    """The full first-passage integral (whole drift and noise, band [q*/10, 10 q*]) over C b: the
    gap closes as N grows, below 2% at N = 1e8 (CReLU s = 0.7 and CST s = 0.85)."""
    for family, s in (("crelu", 0.7), ("cst", 0.85)):
        act = Activation.from_sparsity(family, s, q_star=1.0, m=math.inf)
        eoc = gp.edge_of_chaos(act, 1.0)
        gaps = [
            gp.diffusion_depth(act, eoc.sigma_w2, eoc.sigma_b2, 1.0, 10.0, n)
            / float(gp.asymptotic_depth(act, eoc.sigma_w2, 1.0, n))
            - 1.0
            for n in (1e4, 1e6, 1e8)
        ]
        assert gaps[0] > gaps[1] > gaps[2] > 0 and gaps[2] < 0.02, gaps


def test_no_saddle_node_no_asymptotic_law():
    """ReLU on the EoC (the s = 0.5 end of CReLU): V is linear, V''(q*) = 0, so there is no saddle
    node and the asymptotic depth is infinite (a sweep's report must not fail on it)."""
    relu = Activation.from_sparsity("crelu", 0.5, q_star=1.0, m=math.inf)
    eoc = gp.edge_of_chaos(relu, 1.0)
    assert gp.saddle_node(relu, eoc.sigma_w2, 1.0)[0] == 0.0
    assert np.all(np.isinf(gp.asymptotic_depth(relu, eoc.sigma_w2, 1.0, [100, 1000])))


def test_exponents_recover_a_planted_cube_root_law():
    """Escapes planted at 3 N^{1/3} e^{0.3 z} on v (q NaN): the pooled exponent is within 3 of its
    standard errors of 1/3, every local exponent within 4 of its own."""

    def times(cell, rng):
        return np.round(3.0 * cell.width ** (1 / 3) * np.exp(0.3 * rng.standard_normal(64)))

    ds = make_store(
        sparsities=(0.7, 0.85),
        clips=(math.inf,),
        widths=(100, 300, 1000, 3000),
        depth=200,
        seed=13,
        perturb=plant_escapes(lambda c, r: times(c, r).astype(int)),
        observable="v",
    )
    results = Results(ds)
    assert width_law.applies(results)
    cells = width_law.mean_escape(results)
    assert (cells["frac_escaped"] == 1).all()
    local = width_law.local_exponents(cells)
    assert len(local) == 6 and (np.abs(local["beta_local"] - 1 / 3) < 4 * local["beta_se"]).all()
    pooled = width_law.width_law_table(results).set_index("group").loc["pooled"]
    assert abs(pooled["beta_all"] - 1 / 3) < 3 * pooled["beta_all_se"]
