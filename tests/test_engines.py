"""Finite-width engines: the Gram sampler against explicit weights, both against the GP theory and
against the exact conditional laws of a layer; the engine registry; Numba's cache.

Statistical tests use fixed seeds; every tolerance is derived from a standard error (the sigma level
is stated where it is used), never tuned.
"""

import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from scipy.special import digamma

import simulate
from simulate import gp
from simulate.activations import Activation
from simulate.engines import (
    ENGINES,
    Engine,
    Outputs,
    Problem,
    engine_names,
    register,
    run_cell,
    select_engine,
)
from simulate.engines.gram import safe_cholesky

CLIPPED = Activation.from_sparsity("crelu", 0.8, 1.0, m=1.0)
UNCLIPPED = Activation.from_sparsity("crelu", 0.8, 1.0)
CST_CLIPPED = Activation.from_sparsity("cst", 0.8, 1.0, m=1.0)
USER = Activation.piecewise_linear([-1.0, 0.5, 2.0], [-0.3, 0.0, 1.5], 0.2, 0.0, name="user")
"""An asymmetric shape given only by points: a sign change inside a piece, no flat zero piece."""
USER_FLAT = Activation.piecewise_linear(
    [-2.0, -0.5, 0.3, 1.2], [-0.4, 0.0, 0.0, 0.9], 0.0, 0.3, name="user-flat"
)
"""An asymmetric shape with a flat zero piece [-0.5, 0.3] (sparsity), clipped on the left only."""


def eoc_cell(act, **kwargs):
    """run_cell at the Edge of Chaos with q* = 1."""
    eoc = gp.edge_of_chaos(act, 1.0)
    return run_cell(act, eoc.sigma_w2, eoc.sigma_b2, **kwargs)


def mean_and_se(x):
    x = np.asarray(x)
    return x.mean(), x.std(ddof=1) / math.sqrt(x.size)


# --------------------------------------------------------------------------------------------------
# Gram sampler == explicit weights, in distribution

COMPARED_LAYERS = (1, 5, 10, 20)
COMPARED = ("q0", "q1", "corr", "v0", "v_corr", "zero_frac", "log_gain")
FAMILY_LEVEL = 1e-3
# Bonferroni over the whole family: 2 activations x (layers x statistics + the escape layer).
N_COMPARISONS = 2 * (len(COMPARED_LAYERS) * len(COMPARED) + 1)


def _statistic(ds, name, layer):
    if name in ("q0", "q1"):
        x = ds.q.isel(layer=layer, input=int(name[1]))
    elif name == "v0":
        x = ds.v.isel(layer=layer, input=0)
    elif name in ("corr", "v_corr"):
        x = ds[name].isel(layer=layer, pair=0)
    elif name == "zero_frac":
        x = ds.zero_frac.isel(layer=layer, input=0)
    else:
        x = ds.log_gain.isel(layer=layer)
    x = x.values
    return x[np.isfinite(x)]  # survivors (same selection rule for both engines); -inf gains aside


@pytest.mark.parametrize("act", [CLIPPED, UNCLIPPED], ids=["clipped", "unclipped"])
def test_gram_matches_dense_in_distribution(act):
    """Two-sample Kolmogorov-Smirnov tests, gram vs dense (N = 64, depth 20, 2000 networks each).

    Family-wise level 1e-3, Bonferroni-corrected over all N_COMPARISONS tests of both activations.
    zero_frac takes values k/N, so its KS p-value is conservative (ties only make it larger).
    """
    kwargs = dict(width=64, depth=20, nets=2000, q0=1.0, q_ref=1.0)
    gram = eoc_cell(act, engine="gram", seed=11, **kwargs)
    dense = eoc_cell(act, engine="dense", seed=12, **kwargs)
    level = FAMILY_LEVEL / N_COMPARISONS
    for layer in COMPARED_LAYERS:
        for name in COMPARED:
            a, b = _statistic(gram, name, layer), _statistic(dense, name, layer)
            p = stats.ks_2samp(a, b).pvalue
            assert p > level, f"{name} at layer {layer}: KS p = {p:.2e} <= {level:.1e}"
    p = stats.ks_2samp(gram.escape_layer.values, dense.escape_layer.values).pvalue
    assert p > level, f"escape_layer: KS p = {p:.2e}"


# --------------------------------------------------------------------------------------------------
# Each layer against the exact law given the previous one


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["gram", "dense"])
@pytest.mark.parametrize("act", [CLIPPED, USER], ids=["crelu", "user"])
def test_layer_given_conditional_kernel(engine, act):
    """Given layer l-1, the rows of layer l are i.i.d. N(0, K^l), K^l recorded through v, v_corr.

    N = 64, 12 layers, 400 networks, sigma_w^2 = 1.6, sigma_b^2 = 0.1, q0 = 1.3 (a wide escape band:
    no escapes).
    Each identity below holds conditionally on the past with a fresh-noise residual, so the
    residuals of all layers and networks are martingale differences and their pooled mean has the
    usual standard error (5 SE):

    - q^l / v^l = chi^2_N / N: z = (q / v - 1) sqrt(N / 2) has mean 0 and variance 1 exactly;
    - corr^l is the (uncentred) sample correlation of N pairs with correlation rho = v_corr^l:
      E[corr] = rho - rho (1 - rho^2) / (2N) + O(N^-2) (bias of the sample correlation, Fisher);
      1 / N^2 is added for the O(N^-2) remainder;
    - E[v^l | v^{l-1}] = V(v^{l-1}), the GP variance map, exactly.
    """
    n, depth, nets, sw2, sb2 = 64, 12, 400, 1.6, 0.1
    ds = run_cell(
        act, sw2, sb2, width=n, depth=depth, nets=nets, q0=1.3, engine=engine, seed=21,
        escape_factor=1e6,
    )  # fmt: skip
    assert (ds.escape_layer == -1).all()
    q, v = ds.q.values[:, 1:, 0], ds.v.values[:, 1:, 0]
    z = ((q / v - 1) * math.sqrt(n / 2)).ravel()
    mean, se = mean_and_se(z)
    assert abs(mean) < 5 * se, (mean, se)
    m4 = np.mean((z - z.mean()) ** 4)
    var = z.var(ddof=1)
    assert abs(var - 1) < 5 * math.sqrt((m4 - var**2) / z.size), var

    rho = ds.v_corr.values[:, 1:, 0]
    residual = (ds.corr.values[:, 1:, 0] - rho + rho * (1 - rho**2) / (2 * n)).ravel()
    mean, se = mean_and_se(residual)
    assert abs(mean) < 5 * se + 1 / n**2, (mean, se)

    v_all = ds.v.values[..., 0]
    residual = (v_all[:, 1:] - gp.variance_map(act, v_all[:, :-1], sw2, sb2)).ravel()
    mean, se = mean_and_se(residual)
    assert abs(mean) < 5 * se, (mean, se)


# --------------------------------------------------------------------------------------------------
# One layer against the GP maps


@pytest.mark.parametrize(
    "act",
    [CLIPPED, UNCLIPPED, CST_CLIPPED, USER, USER_FLAT],
    ids=["clipped", "unclipped", "cst-clipped", "user", "user-flat"],
)
def test_one_layer_against_gp(act):
    """One layer from q0 = 1.7 (off the fixed point), c0 = 0.5, N = 2048, 1000 networks, at
    sigma_w^2 = 1.8, sigma_b^2 = 0.1 (the user shapes have no Edge of Chaos to speak of).

    Exact identities (tolerance 5 standard errors):
      E[q^1] = E[v^1] = V(q0);  E[zero_frac^0] = s(q0);  E[exp(v_log_gain^1)] = chi_1(q0)
      (K^1_tt = sigma_w^2 (1/N) sum_i phi'(h_0i)^2 t_i^2, t independent of h at layer 0).
    First order in 1/N (5 SE):
      E[zero_frac^1] = E[s(G^1)] = s(V) + s''(V) Var(G^1) / 2,  Var(G^1) = sigma_w^4 Var[phi^2] / N
      (s'' by central differences; the shapes without a flat zero piece have s = 0).
    To first order: E[corr^1] = R_{q0}(c0) q0 / V(q0) + O(1/N) (R at variance q0), tolerance
      5 SE + 1/N for the O(1/N) bias of a ratio of sample moments (1/N is about one SE here).
    """
    sw2, sb2 = 1.8, 0.1
    n, q0, c0 = 2048, 1.7, 0.5
    ds = run_cell(act, sw2, sb2, width=n, depth=1, nets=1000, q0=q0, c0=c0, seed=5)
    v = float(gp.variance_map(act, q0, sw2, sb2))

    for name in ("q", "v"):
        mean, se = mean_and_se(ds[name].isel(layer=1).values.ravel())
        assert abs(mean - v) < 5 * se, (name, mean, v, se)

    mean, se = mean_and_se(np.exp(ds.v_log_gain.isel(layer=1).values))
    assert abs(mean - float(gp.chi1(act, q0, sw2))) < 5 * se

    mean, se = mean_and_se(ds.zero_frac.isel(layer=0).values.ravel())
    assert abs(mean - gp.sparsity(act, q0)) < 5 * se + 1e-12

    var_phi2 = gp.activation_moment(act, q0, 4) - gp.activation_moment(act, q0, 2) ** 2
    var_g = sw2**2 * var_phi2 / n
    h = 1e-3 * v
    s2 = (gp.sparsity(act, v + h) - 2 * gp.sparsity(act, v) + gp.sparsity(act, v - h)) / h**2
    mean, se = mean_and_se(ds.zero_frac.isel(layer=1).values.ravel())
    assert abs(mean - (gp.sparsity(act, v) + 0.5 * s2 * var_g)) < 5 * se + 1e-12

    r = float(gp.correlation_map(act, c0, q0, sw2, sb2)) * q0 / v
    mean, se = mean_and_se(ds.corr.isel(layer=1, pair=0).values)
    assert abs(mean - r) < 5 * se + 1 / n, (mean, r, se)


@pytest.mark.parametrize(
    "act", [CLIPPED, UNCLIPPED, CST_CLIPPED], ids=["clipped", "unclipped", "cst-clipped"]
)
def test_one_layer_log_gain_against_chi1(act):
    """Mean log_gain at layer 1 against ln chi_1(q0) with its 1/N correction (N = 256, 4000 nets).

    Given layer 0, |t^1|^2 / |t^0|^2 = sigma_w^2 R chi2_N / N with R = sum_i d_i t_i^2 / |t|^2,
    d_i = phi'(h_0i) ~ Bernoulli(p) independent of t (p = chi_1 / sigma_w^2): E R = p and
    Var R = 3 p (1 - p) / (N + 2) (Dirichlet(1/2) weights). Hence
        E[log_gain^1] = ln chi_1 + [psi(N/2) - ln(N/2)] - 3 (1 - p) / (2 p (N + 2)) + O(N^-2),
    the correction being ~0.03 here, over 5 standard errors. Tolerance: 5 SE plus the size of the
    next terms of E ln R = ln p - v/2 + E[x^3]/3 - E[x^4]/4 ..., x = R/p - 1, v = Var R / p^2, which
    are O(v^2); v^2 <= (3 (1 - p) / (p N))^2 is added (~0.003, a sixth of 5 SE).
    """
    eoc = gp.edge_of_chaos(act, 1.0)
    n, q0 = 256, 1.7
    ds = run_cell(act, eoc.sigma_w2, eoc.sigma_b2, width=n, depth=1, nets=4000, q0=q0, seed=6)
    chi = float(gp.chi1(act, q0, eoc.sigma_w2))
    p = chi / eoc.sigma_w2  # fraction of units with phi' = 1 (both halves for CST)
    predicted = math.log(chi) + digamma(n / 2) - math.log(n / 2) - 3 * (1 - p) / (2 * p * (n + 2))
    remainder = (3 * (1 - p) / (p * n)) ** 2
    mean, se = mean_and_se(ds.log_gain.isel(layer=1).values)
    assert abs(mean - predicted) < 5 * se + remainder, (mean, predicted, se)


# --------------------------------------------------------------------------------------------------
# Through depth against the 1/N theory


@pytest.mark.parametrize("act", [CLIPPED, CST_CLIPPED], ids=["crelu", "cst"])
def test_clipped_depth_profile_matches_finite_width_theory(act):
    """Clipped at the Edge of Chaos, q0 = q* = 1, N = 128, 3000 networks, 40 layers.

    Mean of q^l against q_mean = q^l + G1^l / N, spread against q_sd, both within 5 standard errors:
    SE(mean) = sd / sqrt(M); SE(sd) = SE(var) / (2 sd) with SE(var) = sqrt((m4 - var^2) / M) from the
    sample fourth central moment (no normality assumed). Second-order (1/N^2) terms of the theory are
    below 0.1 SE here.
    """
    eoc = gp.edge_of_chaos(act, 1.0)
    n, depth, nets = 128, 40, 3000
    ds = run_cell(act, eoc.sigma_w2, eoc.sigma_b2, width=n, depth=depth, nets=nets, q0=1.0, seed=7)
    theory = gp.finite_width(act, eoc.sigma_w2, eoc.sigma_b2, 1.0, depth, n)
    assert (ds.escape_layer == -1).all()
    for layer in (1, 5, 10, 20, 40):
        q = ds.q.isel(layer=layer, input=0).values
        mean, se = mean_and_se(q)
        assert abs(mean - theory.q_mean[layer]) < 5 * se, (layer, mean, float(theory.q_mean[layer]))
        var = q.var(ddof=1)
        m4 = np.mean((q - q.mean()) ** 4)
        se_sd = math.sqrt((m4 - var**2) / nets) / (2 * math.sqrt(var))
        sd = math.sqrt(var)
        assert abs(sd - theory.q_sd[layer]) < 5 * se_sd, (layer, sd, float(theory.q_sd[layer]))


# --------------------------------------------------------------------------------------------------
# The instability and its cure


def test_unclipped_escapes_upward_clipped_twin_does_not():
    """s = 0.85 CReLU at the Edge of Chaos, N = 300, depth 200, 200 networks each."""
    kwargs = dict(width=300, depth=200, nets=200, q0=1.0, q_ref=1.0, seed=3)
    free = eoc_cell(Activation.from_sparsity("crelu", 0.85, 1.0), **kwargs)
    clipped = eoc_cell(Activation.from_sparsity("crelu", 0.85, 1.0, m=1.0), **kwargs)
    layer = free.escape_layer.values
    escaped = np.flatnonzero(layer >= 0)
    upward = [free.q.values[i, layer[i]].max() > 10.0 for i in escaped]
    assert np.sum(upward) > 0.5 * len(layer)
    assert np.sum(clipped.escape_layer.values >= 0) <= 1


# --------------------------------------------------------------------------------------------------
# The registry: any engine behind run_cell


def numpy_reference(problem: Problem, rng: np.random.Generator, out: Outputs) -> None:
    """Explicit weights in plain numpy, one network at a time, computing v, v_corr and zero_frac
    only (as an engine that never sees q would): slow, for the registry test."""
    act, n, sw2, sb2 = problem.act, problem.width, problem.sigma_w2, problem.sigma_b2
    pairs = np.triu_indices(problem.n_inputs, k=1)
    chol = np.linalg.cholesky(problem.k0)
    nets, layers, _ = out.v.shape
    for net in range(nets):
        k = problem.k0
        h = chol @ rng.standard_normal((problem.n_inputs, n))
        for layer in range(layers):
            a = act(h)
            sd = np.sqrt(np.diag(k))
            out.v[net, layer] = np.diag(k)
            out.v_corr[net, layer] = (k / np.outer(sd, sd))[pairs]
            out.zero_frac[net, layer] = np.mean(a == 0.0, axis=1)
            v = out.v[net, layer]
            if not np.all((problem.band_lo <= v) & (v <= problem.band_hi)):
                out.escape_layer[net] = layer
                break
            k = sw2 / n * a @ a.T + sb2
            w = rng.standard_normal((n, n)) * math.sqrt(sw2 / n)
            h = a @ w.T + rng.standard_normal(n) * math.sqrt(sb2)


@pytest.fixture
def numpy_engine():
    """A registered toy engine (cheapest of all by its declared cost), removed afterwards."""
    engine = register(
        Engine(
            name="numpy_reference",
            run=numpy_reference,
            cost=lambda width, n_inputs, act=None: 0.0,
            workspace=lambda width, n_inputs: 8 * width**2,
            supports=lambda act, n_inputs: None if n_inputs <= 2 else "B > 2: not in this test",
            observables=frozenset({"v", "v_corr", "zero_frac"}),
        )
    )
    yield engine
    del ENGINES[engine.name]


def test_registered_engine_runs_through_run_cell(numpy_engine):
    """One registration call: run_cell dispatches to it, auto picks it where it can serve, its
    missing observables are NaN, and its v, v_corr, zero_frac match gram's in distribution
    (KS at layers 1-3, 9 tests, Bonferroni at family-wise level 1e-3). N = 32, 1000 networks."""
    assert "numpy_reference" in engine_names()
    kwargs = dict(width=32, depth=3, nets=1000, q0=1.0, escape_on="v")
    toy = eoc_cell(CLIPPED, engine="numpy_reference", seed=31, **kwargs)
    gram = eoc_cell(CLIPPED, engine="gram", seed=32, **kwargs)
    assert toy.attrs["engine"] == "numpy_reference"
    assert toy.attrs["observables"] == ["v", "v_corr", "zero_frac"]
    assert np.isnan(toy.q).all() and np.isnan(toy.corr).all() and np.isnan(toy.log_gain).all()
    for layer in (1, 2, 3):
        for name in ("v0", "v_corr", "zero_frac"):
            p = stats.ks_2samp(_statistic(toy, name, layer), _statistic(gram, name, layer)).pvalue
            assert p > FAMILY_LEVEL / 9, (name, layer, p)

    assert select_engine("auto", CLIPPED, 2, 32, escape_on="v") is numpy_engine
    assert select_engine("auto", CLIPPED, 2, 32, escape_on="q").name == "gram"  # no q here
    assert select_engine("auto", CLIPPED, 3, 32, escape_on="v").name == "gram"  # B = 3
    with pytest.raises(ValueError, match="does not compute q, the escape observable"):
        eoc_cell(CLIPPED, engine="numpy_reference", width=8, depth=1, nets=1, q0=1.0)
    with pytest.raises(ValueError, match="B=3: B > 2: not in this test"):
        run_cell(CLIPPED, 1.5, 0.1, width=8, depth=1, nets=1, inputs=np.eye(3),
                 engine="numpy_reference", escape_on="v")  # fmt: skip


def test_register_refuses_bad_engines():
    base = ENGINES["gram"]
    for name in ("gram", "auto", "not a name"):
        with pytest.raises(ValueError, match="must be a new identifier"):
            register(Engine(name=name, run=base.run, cost=base.cost, workspace=base.workspace))
    for observables in ({"q"}, {"v", "mean"}):
        with pytest.raises(ValueError, match="must include v"):
            register(
                Engine(
                    name="toy",
                    run=base.run,
                    cost=base.cost,
                    workspace=base.workspace,
                    observables=frozenset(observables),
                )
            )
    assert "toy" not in ENGINES


def test_auto_engine():
    """auto: gram for a few inputs (cost ~N (B+1), 25x cheaper than dense at N = 256, B = 5);
    explicit weights when B >> N, where the Gram matrices (N B^2), the pair statistics (B^2) and
    the Cholesky factor (B^3) outweigh N^2 weights (dense 1.3x cheaper at N = 8, B = 40: CPU time
    on the development machine, single-threaded BLAS)."""
    x = np.random.default_rng(0).standard_normal((40, 12))
    eoc = gp.edge_of_chaos(CLIPPED, 1.0)
    ds = run_cell(CLIPPED, eoc.sigma_w2, eoc.sigma_b2, width=8, depth=1, nets=2, inputs=x,
                  engine="auto")  # fmt: skip
    assert ds.attrs["engine"] == "dense"
    ds = run_cell(CLIPPED, eoc.sigma_w2, eoc.sigma_b2, width=256, depth=1, nets=2, inputs=x[:5],
                  engine="auto")  # fmt: skip
    assert ds.attrs["engine"] == "gram"


# --------------------------------------------------------------------------------------------------
# Mechanics: determinism, layouts, escape bookkeeping, errors


@pytest.mark.parametrize("engine", ["gram", "dense"])
def test_seed_determines_output(engine):
    kwargs = dict(width=16, depth=5, nets=4, q0=1.0, engine=engine)
    a = eoc_cell(CLIPPED, seed=1, **kwargs)
    b = eoc_cell(CLIPPED, seed=1, **kwargs)
    c = eoc_cell(CLIPPED, seed=2, **kwargs)
    child = np.random.SeedSequence(9).spawn(2)[1]
    d = eoc_cell(CLIPPED, seed=child, **kwargs)
    e = eoc_cell(CLIPPED, seed=np.random.SeedSequence(9).spawn(2)[1], **kwargs)
    assert a.identical(b)
    assert d.identical(e)
    assert not np.array_equal(a.q.values, c.q.values)
    assert not np.array_equal(a.q.values, d.q.values)


def test_layout_and_attrs():
    ds = eoc_cell(CLIPPED, width=8, depth=3, nets=2, q0=1.3, c0=0.3, q_ref=1.0, escape_factor=5.0)
    assert dict(ds.sizes) == {"net": 2, "layer": 4, "input": 2, "pair": 1}
    for name in ("q", "v", "zero_frac"):
        assert ds[name].dims == ("net", "layer", "input")
    for name in ("corr", "v_corr"):
        assert ds[name].dims == ("net", "layer", "pair")
    for name in ("log_gain", "v_log_gain"):
        assert ds[name].dims == ("net", "layer")
        assert np.isnan(ds[name].isel(layer=0)).all()
    assert ds.escape_layer.dims == ("net",)
    assert ds.escape_layer.dtype.kind == "i"
    assert ds.input_a.values.tolist() == [0] and ds.input_b.values.tolist() == [1]
    # layer 0 is drawn from K0 = q0 [[1, c0], [c0, 1]]: its conditional variance and correlation
    assert np.all(ds.v.isel(layer=0) == 1.3) and np.allclose(ds.v_corr.isel(layer=0), 0.3)
    for name in ("q", "corr", "v", "v_corr", "zero_frac", "log_gain", "v_log_gain"):
        assert {"units", "long_name"} <= set(ds[name].attrs)
    for key, value in dict(
        engine="gram", width=8, depth=3, q0=1.3, c0=0.3, escape_factor=5.0, q_ref=1.0
    ).items():
        assert ds.attrs[key] == value
    assert ds.attrs["escape_on"] == "q"
    assert set(ds.attrs["observables"]) == {
        "q", "corr", "v", "v_corr", "zero_frac", "log_gain", "v_log_gain"
    }  # fmt: skip


def test_raw_inputs_pairs():
    """B raw vectors: layer 0 has rows N(0, K0), K0 = (sigma_w^2 / d) X X^T + sigma_b^2."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 12))
    eoc = gp.edge_of_chaos(CLIPPED, 1.0)
    k0 = eoc.sigma_w2 / 12 * x @ x.T + eoc.sigma_b2
    ds = run_cell(CLIPPED, eoc.sigma_w2, eoc.sigma_b2, width=256, depth=2, nets=400, inputs=x)
    assert dict(ds.sizes) == {"net": 400, "layer": 3, "input": 5, "pair": 10}
    a, b = ds.input_a.values, ds.input_b.values
    assert np.all(a < b) and len({*zip(a, b, strict=True)}) == 10
    # layer 0: mean q_b = K0_bb (exact), mean corr = K0_ab / sqrt(K0_aa K0_bb) + O(1/N); 5 SE + 1/N
    q = ds.q.isel(layer=0).values
    assert np.all(np.abs(q.mean(0) - np.diag(k0)) < 5 * q.std(0, ddof=1) / math.sqrt(400))
    corr = ds.corr.isel(layer=0).values
    target = k0[a, b] / np.sqrt(k0[a, a] * k0[b, b])
    assert np.all(
        np.abs(corr.mean(0) - target) < 5 * corr.std(0, ddof=1) / math.sqrt(400) + 1 / 256
    )
    # the same layer-2 means from explicit weights (two-sample z, 5 sigma; 30 comparisons)
    dense = run_cell(
        CLIPPED, eoc.sigma_w2, eoc.sigma_b2, width=256, depth=2, nets=400, inputs=x, engine="dense"
    )
    for name in ("q", "corr", "v", "v_corr"):
        g, d = ds[name].isel(layer=2).values, dense[name].isel(layer=2).values
        se = np.sqrt((g.var(0, ddof=1) + d.var(0, ddof=1)) / 400)
        assert np.all(np.abs(g.mean(0) - d.mean(0)) < 5 * se), name


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("engine", ["gram", "dense"])
def test_duplicate_inputs_singular_kernel(engine):
    """Identical inputs: K is singular at every layer; safe Cholesky keeps corr = 1, no NaN."""
    x = np.ones((3, 4))
    x[2] = -1.0
    eoc = gp.edge_of_chaos(UNCLIPPED, 1.0)
    ds = run_cell(
        UNCLIPPED, eoc.sigma_w2, eoc.sigma_b2, width=32, depth=10, nets=5, inputs=x, engine=engine
    )
    alive = ds.escape_layer.values == -1
    for name in ("corr", "v_corr"):  # pairs (0, 1), (0, 2), (1, 2)
        assert np.allclose(ds[name].values[alive][..., 0], 1.0, atol=1e-12)
    for name in ("q", "v"):
        np.testing.assert_allclose(ds[name].values[..., 0], ds[name].values[..., 1], rtol=1e-12)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("escape_on", ["q", "v"])
@pytest.mark.parametrize("engine", ["gram", "dense"])
def test_escape_fills_nan_without_warnings(engine, escape_on):
    """Unclipped ReLU_tau far above its fixed point: the variance explodes geometrically. The escape
    layer is the first whose ``escape_on`` leaves [q_ref / 10, 10 q_ref]; later layers are NaN."""
    eoc = gp.edge_of_chaos(UNCLIPPED, 1.0)
    ds = run_cell(
        UNCLIPPED,
        eoc.sigma_w2,
        eoc.sigma_b2,
        width=64,
        depth=100,
        nets=20,
        q0=5.0,
        q_ref=1.0,
        engine=engine,
        escape_on=escape_on,
    )
    watched = ds[escape_on].values
    layer = ds.escape_layer.values
    assert np.all(layer >= 0)
    for i, l in enumerate(layer):
        assert np.all((watched[i, :l] >= 0.1) & (watched[i, :l] <= 10.0))
        assert np.any(watched[i, l] > 10.0)
        assert np.all(np.isfinite(ds.q.values[i, : l + 1]))
        for name in ("q", "corr", "v", "v_corr", "zero_frac", "log_gain", "v_log_gain"):
            assert np.all(np.isnan(ds[name].values[i, l + 1 :]))


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("engine", ["gram", "dense"])
def test_dead_tangent_gain_is_minus_inf_then_restarts(engine):
    """tau = 3 sigma at width 4: all phi' = 0 with probability ~0.99, the tangent dies. Its
    conditional variance K_tt dies at the same layers (t^l = 0 exactly iff K^l_tt = 0)."""
    act = Activation("crelu", 3.0, 1.0)
    ds = run_cell(act, 1.0, 1.0, width=4, depth=30, nets=10, q0=1.0, engine=engine)
    gain = ds.log_gain.values[:, 1:]
    assert np.any(np.isneginf(gain))
    np.testing.assert_array_equal(np.isneginf(gain), np.isneginf(ds.v_log_gain.values[:, 1:]))
    assert not np.any(np.isnan(gain[ds.escape_layer.values == -1]))
    assert np.all(gain[np.isfinite(gain)] < 50)


def test_safe_cholesky():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 6))
    k = x @ x.T
    lower = np.empty_like(k)
    safe_cholesky(k, lower)
    np.testing.assert_allclose(lower, np.linalg.cholesky(k), rtol=1e-10)
    singular = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    out = np.empty((3, 3))
    safe_cholesky(singular, out)
    np.testing.assert_allclose(out @ out.T, singular, atol=1e-15)
    assert np.all(np.isfinite(out))


BAD_ARGUMENTS = [
    (dict(engine="fast"), "engine='fast': must be one of gram, dense"),
    (dict(escape_on="h"), "escape_on='h': must be one of q, v"),
    (dict(width=0), "width=0: must be an integer >= 1"),
    (dict(width=8.5), "width=8.5: must be an integer >= 1"),
    (dict(depth=-1), "depth=-1: must be an integer >= 0"),
    (dict(nets=0), "nets=0: must be an integer >= 1"),
    (dict(q0=None), "q0=None: must be finite and > 0"),
    (dict(q0=-1.0), "q0=-1.0: must be finite and > 0"),
    (dict(c0=1.5), "c0=1.5: must be in [-1, 1]"),
    (dict(c0=[0.1, 0.2], n_inputs=3), "must be one correlation or B(B-1)/2 = 3"),
    (dict(c0=[0.9, 0.9, -0.9], n_inputs=3), "is not positive semidefinite (smallest eigenvalue"),
    (dict(c0=[0.1, 2.0, 0.0], n_inputs=3), "every correlation must be in [-1, 1]"),
    (dict(q_ref=0.0), "q_ref=0.0: must be finite and > 0"),
    (dict(escape_factor=1.0), "escape_factor=1.0: must be finite and > 1"),
    (dict(escape_factor=1e300), "escape_factor=1e+300: escape_factor * q_ref = 1e+300 must be"),
    (dict(seed=-3), "seed=-3: must be an integer >= 0 or a numpy.random.SeedSequence"),
    (dict(seed="x"), "seed='x': must be an integer >= 0"),
    (dict(sigma_w2=-1.0), "sigma_w2=-1.0: must be finite and > 0"),
    (dict(sigma_b2=math.nan), "sigma_b2=nan: must be finite and >= 0"),
    (dict(inputs=np.ones((2, 3)), q0=1.0), "q0=1.0: must be None when inputs= is given"),
    (dict(inputs=np.ones(3), q0=None), "inputs with shape (3,): must be a finite (B, d) array"),
    (dict(act=Activation("crelu", np.array([0.1, 0.2]))), "must be a single Activation"),
]


@pytest.mark.parametrize(("override", "message"), BAD_ARGUMENTS)
def test_bad_arguments_raise_one_clear_error(override, message):
    kwargs = dict(act=CLIPPED, sigma_w2=2.0, sigma_b2=0.1, width=8, depth=2, nets=1, q0=1.0)
    kwargs.update(override)
    with pytest.raises(ValueError, match=re.escape(message)):
        run_cell(kwargs.pop("act"), kwargs.pop("sigma_w2"), kwargs.pop("sigma_b2"), **kwargs)


# --------------------------------------------------------------------------------------------------
# Numba's on-disk cache follows every kernel source

CACHE_PROBE = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import simulate
    from simulate.activations import Activation
    from simulate.engines import propagate

    assert simulate.__file__.startswith(sys.argv[1]), simulate.__file__
    act = Activation("crelu", 0.3, 1.0)
    H = np.linspace(-2.0, 2.0, 24).reshape(3, 8)  # two inputs and the tangent, width 8
    A, zero_frac = np.empty_like(H), np.empty(2)
    propagate.post_activations(H, A, act.pieces.kernel, zero_frac)  # calls phi across files
    hits = sum(propagate.post_activations.stats.cache_hits.values())
    print(json.dumps({"q": A.tolist(), "cache_hits": hits}))
    """
)

EDITED_PHI = textwrap.dedent(
    """

    @njit(cache=True, nogil=True)
    def phi(x, breaks, anchor_x, anchor_y, slope):  # edited: a kernel that is not the activation
        return 0.5 * x
    """
)


@pytest.mark.slow
def test_numba_cache_is_never_stale(tmp_path):
    """In a copy of the package with its own NUMBA_CACHE_DIR: run propagate.post_activations
    (compiles and caches it with the phi it calls from activations.py), again (loads it from the
    cache, same result), then edit ``phi`` in activations.py and run again with the same cache: the
    result must be the edited kernel's, i.e. equal to a run compiled from scratch, and differ from
    the first. (Numba alone keys the cached post_activations on propagate.py only, and would run the
    old phi.)"""
    package = tmp_path / "package"
    shutil.copytree(
        Path(simulate.__file__).parent,
        package / "simulate",
        ignore=shutil.ignore_patterns("__pycache__"),
    )

    def run(cache):
        env = os.environ | {"NUMBA_CACHE_DIR": str(tmp_path / cache), "PYTHONPATH": str(package)}
        result = subprocess.run(
            [sys.executable, "-c", CACHE_PROBE, str(package)],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(result.stdout.splitlines()[-1])

    first, again = run("cache"), run("cache")
    assert again["cache_hits"] > 0 and again["q"] == first["q"]
    with open(package / "simulate" / "activations.py", "a") as f:
        f.write(EDITED_PHI)
    edited, fresh = run("cache"), run("fresh-cache")
    assert edited["q"] == fresh["q"] != first["q"]
    assert edited["cache_hits"] == 0
