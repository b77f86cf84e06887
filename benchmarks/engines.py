"""Timing of the finite-width engines on one core, against the random-number floor and naive numpy.

    python benchmarks/engines.py [--quick]      (with the package installed, or PYTHONPATH=.)

Setting: N = 1000, depth 100, the default pair of inputs plus the tangent (3 vectors), clipped
CReLU at the Edge of Chaos (s = 0.8, m = 1, q* = 1). Measured in CPU time, each the minimum over
interleaved repeats (gram and the floors in chunks of 10 networks, dense and naive one network at a
time):

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

The last line is machine-readable:
``gram_ns_per_preact=X rng_floor_ns=Y speedup_vs_naive=Z dense_speedup_vs_naive=W``.
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

WIDTH, DEPTH, VECTORS = 1000, 100, 3
ACT = Activation.from_sparsity("crelu", 0.8, 1.0, m=1.0)
EOC = gp.edge_of_chaos(ACT, 1.0)
FLOOR_GENERATORS = (("SFC64", np.random.SFC64), ("PCG64", np.random.PCG64))


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


def engine_run(engine, nets):
    return lambda: run_cell(
        ACT,
        EOC.sigma_w2,
        EOC.sigma_b2,
        width=WIDTH,
        depth=DEPTH,
        nets=nets,
        q0=1.0,
        q_ref=1.0,
        engine=engine,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (< 1 min)")
    quick = parser.parse_args().quick
    chunk_nets, fast_rounds, slow_rounds = 10, (10 if quick else 40), (1 if quick else 3)

    run_cell(ACT, EOC.sigma_w2, EOC.sigma_b2, width=64, depth=2, nets=1, q0=1.0)  # compile
    run_cell(ACT, EOC.sigma_w2, EOC.sigma_b2, width=64, depth=2, nets=1, q0=1.0, engine="dense")
    per_net = (DEPTH + 1) * WIDTH * VECTORS  # sampled pre-activations per network
    samples = chunk_nets * per_net
    generators = {name: np.random.Generator(bits(0)) for name, bits in FLOOR_GENERATORS}
    for rng in generators.values():
        draw_normals(rng, 10)
    fast = interleaved_best(
        {
            "gram": engine_run("gram", chunk_nets),
            **{
                name: (lambda rng=rng: draw_normals(rng, samples))
                for name, rng in generators.items()
            },
        },
        fast_rounds,
    )
    naive_rng = np.random.default_rng(0)
    slow = interleaved_best(
        {"dense": engine_run("dense", 1), "naive": lambda: naive_network(naive_rng)}, slow_rounds
    )

    seconds = {name: t / chunk_nets for name, t in fast.items()} | slow  # per network
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
    print(
        f"gram_ns_per_preact={gram_ns:.3g} rng_floor_ns={floor_ns:.3g} "
        f"speedup_vs_naive={naive / seconds['gram']:.3g} "
        f"dense_speedup_vs_naive={naive / seconds['dense']:.3g}"
    )


if __name__ == "__main__":
    main()
