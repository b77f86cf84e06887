"""Timing of the finite-width engines on one core, against the random-number floor and naive numpy.

    python benchmarks/engines.py [--quick] [--width N]   (with the package installed, or PYTHONPATH=.)

Part 1, the Gram and dense engines. Setting: N = 1000, depth 100, the default pair of inputs plus the
tangent (3 vectors), clipped CReLU at the Edge of Chaos (s = 0.8, m = 1, q* = 1). Measured in CPU
time, each the minimum over interleaved repeats (gram and the floors in chunks of 10 networks, dense
and naive one network at a time):

- gram: ``run_cell(engine="gram")``, in ns per sampled pre-activation, i.e. per neuron, per layer
  (layers 0..depth) and per vector (the 2 inputs and the tangent);
- rng floor: drawing the same number of standard normals one by one in a Numba loop from the same
  ``numpy.random.Generator`` (SFC64) the engines use; also PCG64 for reference;
- dense: ``run_cell(engine="dense")``;
- naive: a numpy loop ``W = rng.standard_normal((N, N)) * sqrt(sigma_w2 / N); h = W @ phi(h) + b``
  computing the same statistics (q, corr, zero_frac, log_gain).

The dense engine draws the same N^2 normals per layer as the naive loop, so its speedup is bounded
by the ratio of the two draw rates (numpy's C fill vs the Numba Generator loop, about 2x on the
development machine) whatever the rest costs.

Part 2, the sparse engine against gram. Setting: CReLU with m = 1 at the EoC with q* = 1, target
sparsity 0.5, 0.7, 0.85 and 0.9; B = 1 (one raw input with layer-0 variance q*) and B = 2 (the
default pair, q0 = q*, c0 = 0.5), each with the tangent; width ``--width`` (default 3000: the
widest width of specs/phase_large.toml, where that sweep spends most of its time, the cost being
about linear in N), depth 100, escape on v. In ns per neuron-layer, i.e. per network, per layer
(0..depth) and per neuron, whatever B (gram draws B + 1 normals per neuron), beside the RNG floor
per standard normal. Every timing of both parts is measured in the same interleaved rounds.

The last two lines are machine-readable:
``gram_ns_per_preact=X rng_floor_ns=Y speedup_vs_naive=Z dense_speedup_vs_naive=W`` and
``sparse_speedup_vs_gram_b1=X sparse_speedup_vs_gram_b2=Y`` (CReLU, s = 0.85, m = 1, at --width).
"""

import os

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from numba import njit  # noqa: E402

from simulate import gp  # noqa: E402
from simulate.activations import Activation  # noqa: E402
from simulate.engines import run_cell  # noqa: E402
from simulate.engines.sparse import sloped_mass  # noqa: E402

WIDTH, DEPTH, VECTORS = 1000, 100, 3
ACT = Activation.from_sparsity("crelu", 0.8, 1.0, m=1.0)
EOC = gp.edge_of_chaos(ACT, 1.0)
FLOOR_GENERATORS = (("SFC64", np.random.SFC64), ("PCG64", np.random.PCG64))
SPARSITIES = (0.5, 0.7, 0.85, 0.9)
HEADLINE = 0.85
CHUNK = 10
"""Networks per timed call of the fast candidates."""
SPARSE_WIDTH = 3000
"""Default N of part 2 (module docstring)."""


@njit(cache=True, nogil=True)
def draw_normals(rng, n):
    """The floor: n standard normals from ``rng``, one call each (summed so nothing is optimised out)."""
    total = 0.0
    for _ in range(n):
        total += rng.standard_normal()
    return total


def naive_network(rng, depth=DEPTH, width=WIDTH):
    """One network in plain numpy, recording the same per-layer statistics as the engines."""
    sw, sb = math.sqrt(EOC.sigma_w2 / width), math.sqrt(EOC.sigma_b2)
    z = rng.standard_normal((width, 2))
    h = np.column_stack([z[:, 0], 0.5 * z[:, 0] + math.sqrt(0.75) * z[:, 1]])
    t = rng.standard_normal(width)
    a, t2 = ACT(h), t @ t
    rows = [_naive_statistics(h, a, math.nan)]
    for _ in range(depth):
        w = rng.standard_normal((width, width)) * sw
        b = rng.standard_normal(width) * sb
        t = w @ (ACT.derivative(h[:, 0]) * t)
        h = w @ a + b[:, None]
        a, t2_prev, t2 = ACT(h), t2, t @ t
        rows.append(_naive_statistics(h, a, math.log(t2 / t2_prev)))
    return rows


def _naive_statistics(h, a, log_gain):
    """q, corr, zero_frac, log_gain of one layer, as the engines record them."""
    s = h.T @ h
    return (
        np.diag(s) / h.shape[0],
        s[0, 1] / math.sqrt(s[0, 0] * s[1, 1]),
        np.mean(a == 0, 0),
        log_gain,
    )


def interleaved_best(fns, rounds):
    """Minimum CPU time of each function over ``rounds`` round-robin calls.

    The machine may be shared: CPU time (of this single-threaded process) does not count the time
    other processes hold the core, interleaving exposes every candidate to the same cache and memory
    contention, and the minimum over many short calls is the cost without interference.
    """
    times = {name: math.inf for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.process_time()
            fn()
            times[name] = min(times[name], time.process_time() - start)
    return times


def timed_cell(act, engine, width, nets, n_inputs=2, escape_on="q"):
    """A call of run_cell for ``act`` at the EoC with q* = 1, depth DEPTH: B = 2 (the default pair,
    q0 = q*, c0 = 0.5) or B = 1 (one raw input x with sigma_w^2 x^2 + sigma_b^2 = q*, when
    sigma_b^2 < q*)."""
    eoc = gp.edge_of_chaos(act, 1.0)
    if n_inputs == 1:
        x = math.sqrt(max(1.0 - eoc.sigma_b2, 1e-3) / eoc.sigma_w2)
        layer0 = dict(inputs=np.array([[x]]))
    else:
        layer0 = dict(q0=1.0, c0=0.5)
    return lambda: run_cell(
        act,
        eoc.sigma_w2,
        eoc.sigma_b2,
        width=width,
        depth=DEPTH,
        nets=nets,
        q_ref=1.0,
        engine=engine,
        escape_on=escape_on,
        **layer0,
    )


def sparse_table_cell(sparsity, n_inputs, engine, width, nets):
    """Part 2's cell: CReLU(s, m = 1), escape on v."""
    act = Activation.from_sparsity("crelu", sparsity, 1.0, m=1.0)
    return timed_cell(act, engine, width, nets, n_inputs, escape_on="v")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (about 1 min)")
    parser.add_argument(
        "--width", type=int, default=SPARSE_WIDTH, help=f"N of part 2 (default {SPARSE_WIDTH})"
    )
    args = parser.parse_args()
    fast_rounds, slow_rounds = (5, 1) if args.quick else (20, 3)

    timed_cell(ACT, "gram", 64, 1)()  # compile
    timed_cell(ACT, "dense", 64, 1)()
    per_net = (DEPTH + 1) * WIDTH * VECTORS  # sampled pre-activations per network
    samples = CHUNK * per_net
    generators = {name: np.random.Generator(bits(0)) for name, bits in FLOOR_GENERATORS}
    for rng in generators.values():
        draw_normals(rng, 10)
    fast = {
        "gram": timed_cell(ACT, "gram", WIDTH, CHUNK),
        **{name: (lambda rng=rng: draw_normals(rng, samples)) for name, rng in generators.items()},
    }
    for s in SPARSITIES:
        for b in (1, 2):
            for engine in ("sparse", "gram"):
                sparse_table_cell(s, b, engine, 64, 1)()  # compile
                fast[(s, b, engine)] = sparse_table_cell(s, b, engine, args.width, CHUNK)
    fast = interleaved_best(fast, fast_rounds)
    naive_rng = np.random.default_rng(0)
    slow = interleaved_best(
        {"dense": timed_cell(ACT, "dense", WIDTH, 1), "naive": lambda: naive_network(naive_rng)},
        slow_rounds,
    )

    seconds = {name: t / CHUNK for name, t in fast.items()} | slow  # per network
    naive = seconds["naive"]
    labels = {
        "gram": "gram engine",
        "SFC64": "rng floor: Generator(SFC64) in numba",
        "PCG64": "rng floor: Generator(PCG64) in numba",
        "dense": "dense engine",
        "naive": "naive numpy loop",
    }
    print(f"N = {WIDTH}, depth = {DEPTH}, 2 inputs + tangent, {ACT.label()}, one core")
    print(f"{'':38s} {'s / network':>12s} {'ns / preact':>12s} {'vs naive':>9s}")
    for name, label in labels.items():
        t = seconds[name]
        print(f"{label:38s} {t:12.4f} {t / per_net * 1e9:12.2f} {naive / t:8.1f}x")
    gram_ns = seconds["gram"] / per_net * 1e9
    floor_ns = seconds["SFC64"] / per_net * 1e9
    print(f"gram / rng floor = {gram_ns / floor_ns:.2f}")

    print()
    why = " (the widest width of specs/phase_large.toml)" if args.width == SPARSE_WIDTH else ""
    print(
        f"sparse engine: CReLU(m = 1) at the EoC, q* = 1, N = {args.width}{why}, depth {DEPTH}, "
        "one core"
    )
    print(
        f"{'sparsity':>8s} {'B':>2s} {'sloped':>7s} {'sparse ns':>10s} {'gram ns':>8s} "
        f"{'speedup':>8s} {'sparse/floor':>12s} {'gram/floor':>10s}"
    )
    per_neuron_layer = (DEPTH + 1) * args.width
    ns = {k: t / per_neuron_layer * 1e9 for k, t in seconds.items() if isinstance(k, tuple)}
    for s in SPARSITIES:
        act = Activation.from_sparsity("crelu", s, 1.0, m=1.0)
        for b in (1, 2):
            sp, gr = ns[(s, b, "sparse")], ns[(s, b, "gram")]
            print(
                f"{s:8.2f} {b:2d} {sloped_mass(act, 1.0):7.3f} {sp:10.2f} {gr:8.2f} "
                f"{gr / sp:7.2f}x {sp / floor_ns:12.2f} {gr / floor_ns:10.2f}"
            )
    print("(ns per neuron-layer; sloped: fraction of neurons on the sloped piece at q*)")
    print(
        f"gram_ns_per_preact={gram_ns:.3g} rng_floor_ns={floor_ns:.3g} "
        f"speedup_vs_naive={naive / seconds['gram']:.3g} "
        f"dense_speedup_vs_naive={naive / seconds['dense']:.3g}"
    )
    print(
        f"sparse_speedup_vs_gram_b1={ns[(HEADLINE, 1, 'gram')] / ns[(HEADLINE, 1, 'sparse')]:.3g} "
        f"sparse_speedup_vs_gram_b2={ns[(HEADLINE, 2, 'gram')] / ns[(HEADLINE, 2, 'sparse')]:.3g}"
    )


if __name__ == "__main__":
    main()
