"""``python -m simulate.recommend``: tau, clip level and EoC initialisation for a target sparsity.

    python -m simulate.recommend --sparsity 0.85 --depth 100 --width 300 [--family crelu|cst]
        [--q-star 1] [--nets 32] [--seed 0] [--json]

For the named family at GP sparsity s and variance fixed point q* it reports:

- tau, from ``Activation.from_sparsity`` (CReLU: s = Phi(tau / sqrt(q*)); CST: s = 2 Phi(tau / sqrt(q*)) - 1);
- the clip window [m_lo, m_hi] in which the clipped network is both trainable and stable at q*:
  m_lo = ``gp.min_gradient_clip`` (half of the active units pass gradient: P(phi' != 0) / P(phi != 0)
  = 1/2 at q*; below it most active units sit on a flat clipped piece) and m_hi = ``gp.max_stable_clip``
  (above it the EoC variance map grows a second, upper fixed point and networks can jump to it);
- the recommended clip m = sqrt(m_lo m_hi), the geometric middle of the window: the window is a
  ratio of scales (both edges scale with sqrt(q*)), and the middle keeps the largest relative margin
  from both failure modes, so that the finite-width spread of q (below) moves neither the gradient
  fraction nor the bistability edge across;
- sigma_w^2, sigma_b^2 = ``gp.edge_of_chaos`` and V'(q*) (< 1: q* attracts, with depth scale
  xi_q = -1 / ln V'(q*));
- the predicted spread of the layer variance at that width and depth, from the 1/N theory
  ``gp.finite_width``: sd(q^L) / q* and the mean shift (E[q^L] - q*) / q*;
- the input signal left at the last layer: 1 - c^L, the GP correlation of two inputs after L layers
  started at c^0 = 1/2 (``gp.correlation_gaps`` at q*), beside ReLU's at the same depth. On
  the EoC c -> 1 polynomially, faster for sparse activations (most of q* is the input-independent
  bias variance); in the runs of docs/training.md only networks starting with 1 - c^L of about
  4e-3 or more trained well within 20 epochs;
- the spread of the gradients: the normalised variance L r of the squared singular values of the
  input-output Jacobian at infinite width (``gp.jacobian_spread``; ReLU: 2 L), and the sd of the
  log gain of a forward tangent through the L layers at that width (``gp.log_gain_spread``);
- whether such a network is expected to train (:func:`trainability`): its two spreads, the
  Jacobian spread L r (width-independent) and the log-gain spread (falls like 1 / sqrt(width)),
  against those at which the trainability study's networks trained or failed (``TRAINS_SPREAD``,
  ``FAILS_SPREAD``, ``TRAINS_LOG_GAIN``, ``FAILS_LOG_GAIN``), and what would bring it inside: the
  deepest network of this activation at this width, the narrowest width that would do at this
  depth, and the highest sparsity (at its own recommended m) that trains at this depth and width;
- the unclipped twin (same tau, m = inf: ReLU_tau or ST_tau) in a quick Monte Carlo of that exact
  architecture (``simulate.engines.run_cell``, ``--nets`` networks, default pair of inputs at q*): the
  fraction whose q leaves [q*/10, 10 q*] by the last layer and the median escape layer (networks that
  never escape count as beyond the last layer, so the median is "> depth" when fewer than half do);
- the initialiser call that builds such a network (:func:`simulate.train.init.initialise`).

``--json`` prints one JSON object instead (keys listed in :func:`recommend`). Bad input: one line
naming the field, the value and what is allowed; exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np

from simulate import gp, resources
from simulate.activations import FAMILIES, Activation
from simulate.engines import ENGINES, run_cell

TWIN_ENGINE, TWIN_INPUTS = "gram", 2
"""The unclipped twin's Monte Carlo: the exact conditional-Gaussian engine, a pair of inputs."""


def recommend(
    family: str,
    sparsity: float,
    depth: int,
    width: int,
    q_star: float = 1.0,
    *,
    nets: int = 32,
    seed: int = 0,
) -> dict:
    """The recommendation (module docstring) as a dict of plain numbers and strings, with keys
    family, sparsity, q_star, depth, width, tau, clip_window, m, gradient_fraction, sigma_w2,
    sigma_b2, v_slope, xi_q, q_sd_rel, q_shift_rel, corr_gap, corr_gap_relu, jacobian_spread,
    jacobian_spread_relu, log_gain_sd, trainability (:func:`trainability`), twin (label, nets, escaped_fraction,
    median_escape_layer: None when beyond ``depth``), initialiser."""
    _check(family, sparsity, depth, width, q_star, nets, seed)
    window = gp.family_clip_window(family, sparsity, q_star)
    m = recommended_clip(family, sparsity, q_star)
    act = Activation.from_sparsity(family, sparsity, q_star, m)
    eoc = gp.edge_of_chaos(act, q_star)
    sigma_w2, sigma_b2 = float(eoc.sigma_w2), float(eoc.sigma_b2)
    theory = gp.finite_width(act, sigma_w2, sigma_b2, q0=q_star, depth=depth, width=width)
    last = theory.isel(layer=-1)

    relu = Activation.relu()
    relu_eoc = gp.edge_of_chaos(relu, q_star)

    twin = Activation(family, act.tau)
    twin_eoc = gp.edge_of_chaos(twin, q_star)
    mc = run_cell(
        twin, float(twin_eoc.sigma_w2), float(twin_eoc.sigma_b2), width=width, depth=depth,
        nets=nets, q0=q_star, q_ref=q_star, seed=seed, engine=TWIN_ENGINE, n_inputs=TWIN_INPUTS,
    )  # fmt: skip
    escape = mc.escape_layer.values
    median = float(np.median(np.where(escape >= 0, escape, np.inf)))
    verdict = trainability(family, sparsity, depth, width, q_star)  # its spreads are reported too
    return {
        "family": family,
        "sparsity": float(sparsity),
        "q_star": float(q_star),
        "depth": int(depth),
        "width": int(width),
        "tau": float(act.tau),
        "clip_window": [window.low, window.high],
        "m": m,
        "gradient_fraction": float(gp.gradient_fraction(act, q_star)),
        "sigma_w2": sigma_w2,
        "sigma_b2": sigma_b2,
        "v_slope": float(gp.variance_slope(act, q_star, sigma_w2)),
        "xi_q": float(gp.xi_q(act, q_star, sigma_w2)),
        "q_sd_rel": float(last.q_sd) / q_star,
        "q_shift_rel": float(last.q_mean) / q_star - 1.0,
        "corr_gap": _input_signal(act, q_star, sigma_w2, sigma_b2, depth),
        "corr_gap_relu": _input_signal(
            relu, q_star, float(relu_eoc.sigma_w2), float(relu_eoc.sigma_b2), depth
        ),
        "jacobian_spread": verdict["jacobian_spread"],
        "trainability": verdict,
        "jacobian_spread_relu": float(gp.jacobian_spread(relu, q_star, depth)),
        "log_gain_sd": verdict["log_gain_sd"],
        "twin": {
            "label": twin.label(),
            "nets": int(nets),
            "escaped_fraction": float(np.mean(escape >= 0)),
            "median_escape_layer": int(median) if math.isfinite(median) else None,
        },
        "initialiser": (
            f"initialise(Activation({family!r}, {float(act.tau)!r}, {m!r}), q_star={float(q_star)!r}, "
            f"widths=[d_in] + [{width}] * {depth} + [n_out])"
        ),
    }


TRAINS_SPREAD = 250.0
"""The largest Jacobian spread L r at which a sparse network of the trainability study trained to
within 2 points of the ReLU baseline's best (248, rounded: CReLU s = 0.85, m = 0.86, L = 30,
chi_1 = 0.9: 0.827 against 0.836; results/trainability/report.md: Fashion-MNIST, 10,000 images,
20 epochs, one seed)."""

FAILS_SPREAD = 410.0
"""The smallest spread at which one fell more than 10 points short (413, rounded: the same CReLU
at L = 50, 0.70 at chi_1 = 0.9 and 1, and still about 0.75 at width 1000, where its log-gain spread
is below ReLU's at width 100). Between the two the study has no verdict yet."""

TRAINS_LOG_GAIN = 1.66
"""The largest log-gain spread (sd of ln gain through the L layers, at the network's width) at
which a network of the study trained at the EoC (1.65, rounded: CReLU s = 0.85 at L = 30, width
300, 0.794; ReLU at L = 50, width 100, 1.58, 0.820)."""

FAILS_LOG_GAIN = 2.3
"""The smallest log-gain spread at which a network whose Jacobian spread is within TRAINS_SPREAD
fell more than 10 points short (2.33, rounded: CReLU s = 0.85 at L = 20, width 100, 0.726; 0.816
at width 300, where it is 1.35). The log-gain spread falls like 1 / sqrt(width), the Jacobian
spread not at all: a wider network cures the first, never the second."""

SPARSITIES = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2))
"""The sparsities searched for the highest that trains at the user's depth and width."""


def recommended_clip(family: str, sparsity: float, q_star: float) -> float:
    """The recommended clip m = sqrt(m_lo m_hi), the geometric middle of the clip window
    ``gp.family_clip_window`` (module docstring); ValueError when the window is empty."""
    window = gp.family_clip_window(family, sparsity, q_star)
    if not window.low < window.high:
        raise ValueError(
            f"sparsity={sparsity!r}: the clip window is empty at q*={q_star} "
            f"(gradient edge {window.low:.3g} >= stability edge {window.high:.3g})"
        )
    return math.sqrt(window.low * window.high)


def _spreads(family: str, sparsity: float, q_star: float, width: int, depth: int):
    """(r, the log-gain spread at depths 1..D and ``width``) of the recommended network of
    ``sparsity`` at the EoC (``gp.slope_kurtosis``, ``gp.log_gain_spread``), D the larger of
    ``depth`` and the deepest at which L r <= TRAINS_SPREAD (the deepest that can train)."""
    act = Activation.from_sparsity(
        family, sparsity, q_star, recommended_clip(family, sparsity, q_star)
    )
    r = float(gp.slope_kurtosis(act, q_star))
    deepest = max(depth, math.floor(TRAINS_SPREAD / r), 1)
    eoc = gp.edge_of_chaos(act, q_star)
    gain = gp.log_gain_spread(act, q_star, float(eoc.sigma_w2), float(eoc.sigma_b2), deepest, width)
    return r, gain


def trainability(family: str, sparsity: float, depth: int, width: int, q_star: float) -> dict:
    """The verdict for the recommended network of ``sparsity`` at ``depth`` and ``width``, from its
    two spreads against the trainability study (docs/training.md): "expected to train" when the
    Jacobian spread L r <= TRAINS_SPREAD and the log-gain spread <= TRAINS_LOG_GAIN, "not expected
    to train" when L r >= FAILS_SPREAD or the log-gain spread >= FAILS_LOG_GAIN, else "uncertain".
    And what would bring it inside: ``max_depth``, the deepest network of this activation and width
    expected to train; ``min_width``, the narrowest width at which this depth is (None: no width,
    L r is too large; the log-gain spread falls like 1 / sqrt(width)); ``max_sparsity``, the highest
    of :data:`SPARSITIES` expected to train at this depth and width (None: not even 0.5)."""

    def fits(r: float, gain: float, layers: int) -> bool:
        return layers * r <= TRAINS_SPREAD and gain <= TRAINS_LOG_GAIN

    r, gain = _spreads(family, sparsity, q_star, width, depth)
    spread, at_depth = depth * r, float(gain[depth - 1])
    if fits(r, at_depth, depth):
        verdict = "expected to train"
    elif spread >= FAILS_SPREAD or at_depth >= FAILS_LOG_GAIN:
        verdict = "not expected to train"
    else:
        verdict = "uncertain"
    max_depth = max((n for n, g in enumerate(gain, 1) if fits(r, g, n)), default=0)
    best = None
    for s in SPARSITIES:
        r_s, gain_s = _spreads(family, float(s), q_star, width, depth)
        if fits(r_s, float(gain_s[depth - 1]), depth):
            best = float(s)
    return {
        "verdict": verdict,
        "jacobian_spread": spread,
        "log_gain_sd": at_depth,
        "max_depth": max_depth,
        "min_width": (
            math.ceil(width * (at_depth / TRAINS_LOG_GAIN) ** 2)
            if spread <= TRAINS_SPREAD
            else None
        ),
        "max_sparsity": best,
        "evidence": "results/trainability/report.md (provisional: one seed, a partial map)",
    }


def _input_signal(act, q_star, sigma_w2, sigma_b2, depth) -> float:
    """1 - c^depth from c^0 = 1/2 (``gp.correlation_gaps``)."""
    return float(gp.correlation_gaps(act, q_star, sigma_w2, sigma_b2, 0.5, depth)[-1])


THEORY_BYTES_PER_LAYER = 64 * 8
"""Memory of the theory per layer, an upper bound: the 1/N recursion's dataset, the correlation
and log-gain iterates and their temporaries, a few dozen float64 arrays over the layers."""


def _check(family, sparsity, depth, width, q_star, nets, seed):
    """One-line ValueError naming the first bad argument, or the sizes that do not fit in memory
    (``simulate.resources``): the twin's engine output, held twice, its workspace, the theory."""
    Activation.from_sparsity(family, sparsity, q_star)  # family, sparsity and q* (its own errors)
    for name, value, lowest in (("depth", depth, 1), ("width", width, 1), ("nets", nets, 1)):
        if value < lowest:
            raise ValueError(f"{name}={value!r}: must be an integer >= {lowest}")
    if seed < 0:
        raise ValueError(f"seed={seed!r}: must be an integer >= 0")
    need = 2 * resources.engine_output(nets, depth, TWIN_INPUTS)
    need += ENGINES[TWIN_ENGINE].workspace(width, TWIN_INPUTS) + THEORY_BYTES_PER_LAYER * depth
    refused = resources.refusal(
        need, f"depth={depth}, width={width}, nets={nets}: the recommendation", "--nets, "
        "--depth or --width"
    )  # fmt: skip
    if refused:
        raise ValueError(refused)


def render(r: dict) -> str:
    """The recommendation as text."""
    lo, hi = r["clip_window"]
    twin = r["twin"]
    median = twin["median_escape_layer"]
    median = f"> {r['depth']}" if median is None else str(median)
    t = r["trainability"]
    max_s = "none of 0.5 to 0.95" if t["max_sparsity"] is None else f"{t['max_sparsity']:g}"
    min_width = (
        "no width (L r is too large at any width)"
        if t["min_width"] is None
        else f"width >= {t['min_width']}"
    )
    rows = [
        f"{r['family']} at sparsity {r['sparsity']:g}, q* = {r['q_star']:g}, "
        f"depth {r['depth']}, width {r['width']}",
        f"  tau                {r['tau']:.6g}",
        f"  clip window        m in [{lo:.4g}, {hi:.4g}]   (half the active units pass gradient; "
        "bistability edge)",
        f"  recommended m      {r['m']:.4g}   (geometric middle of the window; "
        f"{r['gradient_fraction']:.0%} of active units pass gradient)",
        f"  sigma_w^2          {r['sigma_w2']:.6g}",
        f"  sigma_b^2          {r['sigma_b2']:.6g}",
        f"  V'(q*)             {r['v_slope']:.4g}   (q* attracts; depth scale xi_q = "
        f"{r['xi_q']:.3g} layers)",
        f"  spread of q^L      sd {r['q_sd_rel']:.3g} q*, mean shift {r['q_shift_rel']:+.3g} q*   "
        f"(1/N theory at layer {r['depth']})",
        f"  input signal       1 - c^L = {r['corr_gap']:.2g} (ReLU: {r['corr_gap_relu']:.2g})   "
        f"(GP correlation of two inputs at layer {r['depth']} from 1/2)",
        f"  gradient spread    Jacobian L r = {r['jacobian_spread']:.3g} (ReLU: "
        f"{r['jacobian_spread_relu']:.3g}); sd of the log gain {r['log_gain_sd']:.2g} at width "
        f"{r['width']}",
        f"  trains?            {t['verdict']}: L r = {t['jacobian_spread']:.3g} against "
        f"{TRAINS_SPREAD:g} (trained) and {FAILS_SPREAD:g} (failed), log-gain sd "
        f"{t['log_gain_sd']:.2f} against {TRAINS_LOG_GAIN:g} and {FAILS_LOG_GAIN:g}, in "
        f"{t['evidence']}",
        f"                     at width {r['width']} this activation is expected to train to "
        f"depth {t['max_depth']}; at depth {r['depth']}: {min_width}, sparsity <= {max_s}",
        f"  unclipped twin     {twin['label']}: {twin['escaped_fraction']:.0%} of {twin['nets']} "
        f"Monte Carlo nets leave [q*/10, 10 q*] by layer {r['depth']}; median escape layer {median}",
        "  initialiser        from simulate.activations import Activation",
        "                     from simulate.train.init import initialise",
        f"                     init = {r['initialiser']}",
    ]
    return "\n".join(rows)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2)."""

    def error(self, message):
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def main(argv=None) -> int:
    p = _Parser(prog="python -m simulate.recommend", description=__doc__.splitlines()[0])
    p.add_argument("--sparsity", type=float, required=True, help="target GP sparsity at q*")
    p.add_argument("--depth", type=int, required=True, help="number of hidden layers")
    p.add_argument("--width", type=int, required=True, help="units per hidden layer")
    p.add_argument("--family", default="crelu", help=f"one of {', '.join(FAMILIES)}")
    p.add_argument("--q-star", type=float, default=1.0, help="variance fixed point (default 1)")
    p.add_argument("--nets", type=int, default=32, help="Monte Carlo networks for the twin")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    try:
        r = recommend(
            args.family, args.sparsity, args.depth, args.width, args.q_star,
            nets=args.nets, seed=args.seed,
        )  # fmt: skip
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(r) if args.json else render(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
