"""How fast could a Monte Carlo sweep be? Its cost by the engines' cost model, against the floor of
drawing one standard normal per sloped value, measured here.

    python benchmarks/sweep_floor.py STORE [--nets N]   (package installed, or PYTHONPATH=.)

STORE is a finished (or partial) Monte Carlo store, which gives the sweep and, through its escape
layers, how many layers each network actually ran (an escaped network stops there). ``--nets``
scales the count to another number of networks per cell (default: the store's), e.g. the 64-network
moonshot store to the spec's 256.

For each cell, with L the layers a network ran (escape layer + 1, or depth + 1) summed over its
networks, N the width, B the inputs and f = P(h on a sloped piece) at q* (``sloped_mass``):

- model: L x the cost per network-layer of the engine ``--engine auto`` picks (``Engine.cost``, ns
  on one core of the development machine; what the sweep's scheduler plans with);
- floor: L x N x B x f x t_normal, t_normal the CPU time of one standard normal from the engines'
  Generator (SFC64) in a Numba loop, timed in this run. Any exact sampler of a layer must produce
  the value of every row on a sloped piece (the zero and clipped rows are counts; the sparse engine
  draws only those), each at least one normal's worth of randomness; the engines also need the
  tangent, the other input given the first, rejection proposals and the sums, so this is a floor
  no exact engine reaches, not an estimate.

Prints both per width and in total, in CPU seconds and as wall minutes on 2 cores; the last line is
machine-readable: ``model_cpu_s=X floor_cpu_s=Y t_normal_ns=Z``.
"""

from __future__ import annotations

import argparse
import math
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import xarray as xr
from engines import draw_normals  # benchmarks/engines.py

from simulate.engines import select_engine
from simulate.engines.sparse import sloped_mass
from simulate.spec import Spec, cells, resolve

DRAWS = 20_000_000
"""Normals timed for t_normal (about 0.15 s; the minimum over 5 repeats)."""


def normal_ns() -> float:
    """CPU ns per standard normal from Generator(SFC64) in a Numba loop (the engines' draw)."""
    rng = np.random.Generator(np.random.SFC64(0))
    draw_normals(rng, 10)
    best = math.inf
    for _ in range(5):
        start = time.process_time()
        draw_normals(rng, DRAWS)
        best = min(best, time.process_time() - start)
    return best / DRAWS * 1e9


def sweep_costs(path: Path, nets: int | None, t_normal: float) -> dict[int, tuple[float, float]]:
    """Per width: (model, floor) CPU seconds of the sweep in the store at ``path``."""
    ds = xr.open_zarr(path)
    spec = Spec.from_toml(ds.attrs["spec"])
    scale = (nets or spec.nets) / spec.nets
    escape = ds["escape_layer"].values
    done = ds["cell_done"].values
    totals: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for cell in cells(spec, resolve(spec)):
        if not done[cell.index]:
            continue
        e = escape[cell.index]
        layers = scale * np.where(e >= 0, e + 1, spec.depth + 1).sum()
        engine = select_engine(
            spec.engine, cell.activation, spec.inputs, cell.width, spec.escape_on
        )
        fraction = sloped_mass(cell.activation, cell.q_star)
        totals[cell.width][0] += layers * engine.cost(cell.width, spec.inputs, cell.activation)
        totals[cell.width][1] += layers * cell.width * spec.inputs * fraction * t_normal
    return {width: (model * 1e-9, floor * 1e-9) for width, (model, floor) in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("store", type=Path)
    parser.add_argument("--nets", type=int, help="networks per cell to scale to")
    args = parser.parse_args()
    t_normal = normal_ns()
    costs = sweep_costs(args.store, args.nets, t_normal)
    print(f"t_normal = {t_normal:.2f} ns per standard normal (this machine, one core)")
    print(f"{'width':>6} {'model CPU s':>12} {'floor CPU s':>12} {'model/floor':>12}")
    for width, (model, floor) in sorted(costs.items()):
        print(f"{width:>6} {model:>12.0f} {floor:>12.0f} {model / floor:>12.1f}")
    model = sum(m for m, _ in costs.values())
    floor = sum(f for _, f in costs.values())
    print(f"{'total':>6} {model:>12.0f} {floor:>12.0f} {model / floor:>12.1f}")
    print(f"wall on 2 cores: model {model / 120:.1f} min, floor {floor / 120:.1f} min")
    print(f"model_cpu_s={model:.0f} floor_cpu_s={floor:.0f} t_normal_ns={t_normal:.2f}")


if __name__ == "__main__":
    main()
