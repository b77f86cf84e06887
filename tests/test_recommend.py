"""``python -m simulate.recommend`` end to end: its numbers checked against their definitions by
quadrature of the activation itself and by the fixed points of the variance map; bad input."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from simulate import gp
from simulate.activations import Activation
from simulate.recommend import main


def quad(f, act, q):
    return gp.gaussian_expectation(f, q, act.kinks)


@pytest.fixture(scope="module")
def crelu_json():
    out = subprocess.run(
        [sys.executable, "-m", "simulate.recommend", "--sparsity", "0.85", "--depth", "100",
         "--width", "300", "--json"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("\n") == 1
    return json.loads(out.stdout)


@pytest.mark.slow
def test_json_has_the_documented_keys(crelu_json):
    r = crelu_json
    for key in ("tau", "m", "sigma_w2", "sigma_b2", "q_star", "clip_window", "v_slope", "twin"):
        assert key in r
    assert r["family"] == "crelu" and r["q_star"] == 1.0
    assert "initialise(Activation('crelu'" in r["initialiser"]


def test_numbers_meet_their_definitions(crelu_json):
    """tau gives sparsity 0.85; at the window's lower edge half of the active units pass gradient;
    just above its upper edge the EoC variance map has extra fixed points, just below it only q*;
    m lies in the window; sigma_w^2, sigma_b^2 put q* on the EoC. Quadrature to 1e-7."""
    r = crelu_json
    q = r["q_star"]
    act = Activation("crelu", r["tau"], r["m"])
    assert quad(lambda x: float(act(x) == 0.0), act, q) == pytest.approx(0.85, abs=1e-7)
    lo, hi = r["clip_window"]
    assert lo < r["m"] < hi
    edge = Activation("crelu", r["tau"], lo)
    active = quad(lambda x: float(edge(x) != 0.0), edge, q)
    passing = quad(lambda x: float(edge.derivative(x) != 0.0), edge, q)
    assert passing / active == pytest.approx(0.5, abs=1e-7)
    for factor, count in ((0.97, 1), (1.03, 3)):
        clipped = Activation("crelu", r["tau"], factor * hi)
        eoc = gp.edge_of_chaos(clipped, q)
        assert len(gp.fixed_points(clipped, eoc.sigma_w2, eoc.sigma_b2)) == count, factor
    chi = r["sigma_w2"] * quad(lambda x: act.derivative(x) ** 2, act, q)
    v = r["sigma_w2"] * quad(lambda x: act(x) ** 2, act, q) + r["sigma_b2"]
    assert chi == pytest.approx(1.0, abs=1e-7) and v == pytest.approx(q, abs=1e-7)
    assert 0.0 < r["v_slope"] < 1.0 and 0.0 < r["q_sd_rel"] < 1.0


def test_twin_escapes(crelu_json):
    """The unclipped twin ReLU_tau at s = 0.85, width 300 escapes well before depth 100 (the README's
    escape-depth figure: tens of layers at this width)."""
    twin = crelu_json["twin"]
    assert twin["label"].startswith("ReLU(") and twin["nets"] == 32
    assert twin["escaped_fraction"] > 0.5 and twin["median_escape_layer"] < 100


def test_text_output_and_scale_invariance(capsys):
    """Both window edges scale with sqrt(q*): at q* = 4 they are twice those at q* = 1."""
    assert main(["--sparsity", "0.8", "--depth", "10", "--width", "50", "--family", "cst",
                 "--nets", "4"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert main(["--sparsity", "0.8", "--depth", "10", "--width", "50", "--family", "cst",
                 "--nets", "4", "--q-star", "4", "--json"]) == 0  # fmt: skip
    r4 = json.loads(capsys.readouterr().out)
    lo4, hi4 = r4["clip_window"]
    window = [float(v) for v in text.split("m in [")[1].split("]")[0].split(",")]
    np.testing.assert_allclose([lo4 / 2, hi4 / 2], window, rtol=1e-3)
    for label in ("tau", "clip window", "recommended m", "sigma_w^2", "sigma_b^2", "V'(q*)",
                  "spread of q^L", "unclipped twin", "init = initialise("):  # fmt: skip
        assert label in text


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--sparsity", "0.3"], "sparsity=0.3: must be in [0.5, 1) for crelu"),
        (["--sparsity", "0.85", "--family", "relu"], "family='relu': must be one of crelu, cst"),
        (["--sparsity", "0.85", "--depth", "0"], "depth=0: must be an integer >= 1"),
        (["--sparsity", "0.85", "--q-star", "-1"], "q_star=-1.0: must be finite"),
        (["--sparsity", "x"], "argument --sparsity: invalid float value: 'x'"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, needle, capsys):
    argv = [*args, *(["--depth", "10"] if "--depth" not in args else []), "--width", "20"]
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse's own errors
        status = exc.code
    assert status == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.count("\n") == 1 and needle in out.err


def test_input_signal_against_the_arc_cosine_kernel(crelu_json):
    """ReLU's gap from the closed-form arc-cosine kernel at the EoC (sigma_w^2 = 2, sigma_b^2 = 0):
    R(c) = (sqrt(1 - c^2) + (pi - arccos c) c) / pi, iterated 100 times from 1/2; the sparse clipped
    network keeps less input signal than ReLU at the same depth."""
    c = 0.5
    for _ in range(100):
        c = (math.sqrt(1 - c * c) + (math.pi - math.acos(c)) * c) / math.pi
    assert crelu_json["corr_gap_relu"] == pytest.approx(1 - c, rel=1e-6)
    assert 0 < crelu_json["corr_gap"] < crelu_json["corr_gap_relu"]


def test_the_trainability_verdict_follows_both_spreads(crelu_json):
    """CReLU s = 0.85 at the recommended m: r = 1 / p with p = Phi(b) - Phi(a), the fraction of
    units on the sloped piece (normal probabilities, not the gp closed forms). At depth 100,
    L r = 100 / p is above FAILS_SPREAD: not expected to train at any width. At the deepest depth
    expected to train, L r is within TRAINS_SPREAD; one layer deeper, one spread is out. The
    log-gain spread falls like 1 / sqrt(width): at depth 20, width 100 is too narrow (the study's
    CReLU fell 9 points short there) and the narrowest width that would do, ``min_width``, is."""
    from scipy import stats

    from simulate.recommend import (
        FAILS_SPREAD,
        TRAINS_LOG_GAIN,
        TRAINS_SPREAD,
        trainability,
    )

    r = crelu_json
    p = stats.norm.cdf(r["tau"] + r["m"]) - stats.norm.cdf(r["tau"])
    t = r["trainability"]
    assert t["jacobian_spread"] == pytest.approx(100 / p, rel=1e-9)
    assert 100 / p >= FAILS_SPREAD and t["verdict"] == "not expected to train"
    assert t["min_width"] is None
    deepest = t["max_depth"]
    assert 0 < deepest <= math.floor(TRAINS_SPREAD * p)
    at, beyond = (trainability("crelu", 0.85, n, 300, 1.0) for n in (deepest, deepest + 1))
    assert at["verdict"] == "expected to train" and beyond["verdict"] != "expected to train"
    assert at["max_sparsity"] >= 0.85

    narrow, wide = (trainability("crelu", 0.85, 20, n, 1.0) for n in (100, 400))
    assert narrow["log_gain_sd"] == pytest.approx(2 * wide["log_gain_sd"], rel=1e-12)
    assert narrow["verdict"] == "not expected to train" and wide["verdict"] == "expected to train"
    needed = trainability("crelu", 0.85, 20, narrow["min_width"], 1.0)
    assert needed["log_gain_sd"] <= TRAINS_LOG_GAIN < narrow["log_gain_sd"]
    assert needed["verdict"] == "expected to train"
