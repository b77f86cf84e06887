"""Timing of the sparse engine against the Gram engine and the random-number floor, on one core.

    python benchmarks/sparse.py [--quick] [--width N]      (with the package installed)

Setting: CReLU with m = 1 at the Edge of Chaos with q* = 1 (``gp.edge_of_chaos``), target sparsity
0.5, 0.7, 0.85 and 0.9; B = 1 (one input with layer-0 variance q*) and B = 2 (the default pair,
q0 = q*, c0 = 0.5), each with the tangent; width N (default 1000), depth 100, escape on v.
Measured in one run, each the minimum over interleaved repeats of chunks of 10 networks:

- sparse and gram: ``run_cell(engine=...)``, in ns per neuron-layer, i.e. per network, per layer
  (0..depth) and per neuron (whatever B: the Gram engine draws B + 1 normals per neuron);
- rng floor: ns per standard normal drawn one by one in a Numba loop from the same
  ``numpy.random.Generator(SFC64)`` the engines use.

The last line is machine-readable:
``sparse_speedup_vs_gram_b1=X sparse_speedup_vs_gram_b2=Y`` (CReLU, s = 0.85, m = 1).
"""

import os

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import math  # noqa: E402

import numpy as np  # noqa: E402

# the RNG floor and the timer of the engines benchmark (a sibling script: run from any directory)
from engines import draw_normals, interleaved_best  # noqa: E402

from simulate import gp  # noqa: E402
from simulate.activations import Activation  # noqa: E402
from simulate.engines import run_cell  # noqa: E402
from simulate.engines.sparse import sloped_mass  # noqa: E402

DEPTH, CHUNK = 100, 10
SPARSITIES = (0.5, 0.7, 0.85, 0.9)
HEADLINE = 0.85


def cell(sparsity: float, n_inputs: int, engine: str, width: int, nets: int):
    """A call of run_cell for CReLU(s, m = 1) at the EoC with q* = 1 and B = n_inputs."""
    act = Activation.from_sparsity("crelu", sparsity, 1.0, m=1.0)
    eoc = gp.edge_of_chaos(act, 1.0)
    if n_inputs == 1:  # one raw input x with sigma_w^2 x^2 + sigma_b^2 = q* (when sigma_b^2 < q*)
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
        escape_on="v",
        **layer0,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (about 1 min)")
    parser.add_argument("--width", type=int, default=1000, help="neurons per layer (default 1000)")
    args = parser.parse_args()
    rounds = 3 if args.quick else 10
    width = args.width

    fns = {}
    for s in SPARSITIES:
        for b in (1, 2):
            for engine in ("sparse", "gram"):
                cell(s, b, engine, 64, 1)()  # compile
                fns[(s, b, engine)] = cell(s, b, engine, width, CHUNK)
    rng = np.random.Generator(np.random.SFC64(0))
    draw_normals(rng, 10)
    floor_draws = CHUNK * (DEPTH + 1) * width
    fns["floor"] = lambda: draw_normals(rng, floor_draws)
    seconds = interleaved_best(fns, rounds)

    per_neuron_layer = CHUNK * (DEPTH + 1) * width
    floor_ns = seconds.pop("floor") / floor_draws * 1e9
    ns = {key: t / per_neuron_layer * 1e9 for key, t in seconds.items()}
    print(f"CReLU(m = 1) at the EoC, q* = 1, N = {width}, depth {DEPTH}, one core")
    print(f"rng floor: {floor_ns:.2f} ns per standard normal (Generator(SFC64) in numba)")
    print(
        f"{'sparsity':>8s} {'B':>2s} {'sloped':>7s} {'sparse ns':>10s} {'gram ns':>8s} "
        f"{'speedup':>8s} {'sparse/floor':>12s} {'gram/floor':>10s}"
    )
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
        f"sparse_speedup_vs_gram_b1={ns[(HEADLINE, 1, 'gram')] / ns[(HEADLINE, 1, 'sparse')]:.3g} "
        f"sparse_speedup_vs_gram_b2={ns[(HEADLINE, 2, 'gram')] / ns[(HEADLINE, 2, 'sparse')]:.3g}"
    )


if __name__ == "__main__":
    main()
