"""Speed of ``gp.fixed_points`` and ``gp.max_stable_clip``: the working tree against a git ref.

    python benchmarks/fixed_points.py [--ref HEAD] [--stride K]   (PYTHONPATH=. or installed)

``simulate/gp.py`` of the ref (``git show REF:simulate/gp.py``) is imported as a separate module
from a temporary directory (its own Numba cache there; it shares ``simulate.activations`` with the
working tree), and both versions run on the same parameter points, interleaved (old, new, old, ...)
so that a change in machine load hits both alike:

1. ``fixed_points`` on the realistic grid of a large store: families crelu and cst, 20 sparsities
   0.5-0.95 (every K-th with ``--stride K``), 21 clip levels log-spaced 0.3-5 and unclipped, q* = 1,
   each at its Edge of Chaos (``gp.edge_of_chaos``). A ValueError (V(q) = q on the whole range, as
   for ReLU at the EoC) counts as a result and must be raised by both.
2. ``max_stable_clip`` for both families at the same sparsities.

Printed per part: time per call old and new, their ratio, the largest relative difference of the
returned q (fixed points) or clip levels, and the number of points where the number or the kinds of
fixed points differ. The last line is machine-readable:
``fixed_points_old_ms=.. fixed_points_new_ms=.. fixed_points_speedup=.. fixed_points_max_rel_diff=..
kind_mismatches=.. max_stable_clip_old_ms=.. max_stable_clip_new_ms=.. max_stable_clip_speedup=..
max_stable_clip_max_rel_diff=..``.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

from simulate import gp
from simulate.activations import Activation

FAMILIES = ("crelu", "cst")
SPARSITIES = np.linspace(0.5, 0.95, 20)
CLIPS = (*np.geomspace(0.3, 5.0, 21), math.inf)
Q_STAR = 1.0


def load_ref(ref: str, directory: Path):
    """simulate/gp.py at git ``ref``, imported as module ``gp_<ref>`` from ``directory``."""
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(
        ["git", "show", f"{ref}:simulate/gp.py"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    name = "gp_" + "".join(c if c.isalnum() else "_" for c in ref)
    path = directory / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def fixed_point_result(module, act, sigma_w2, sigma_b2):
    """[(q, kind), ...] of ``module.fixed_points``, or the ValueError's message."""
    try:
        return [(p.q, p.kind) for p in module.fixed_points(act, sigma_w2, sigma_b2)]
    except ValueError as error:
        return str(error)


def kinds(result):
    """The kinds of the fixed points in order (their number with them), or the error message."""
    return result if isinstance(result, str) else [kind for _, kind in result]


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def compare_fixed_points(old, sparsities) -> dict:
    seconds = {"old": 0.0, "new": 0.0}
    worst, mismatches, calls = 0.0, 0, 0
    for family in FAMILIES:
        for s in sparsities:
            for m in CLIPS:
                act = Activation.from_sparsity(family, s, Q_STAR, m)
                eoc = gp.edge_of_chaos(act, Q_STAR)
                args = (act, eoc.sigma_w2, eoc.sigma_b2)
                before, t_old = timed(fixed_point_result, old, *args)
                after, t_new = timed(fixed_point_result, gp, *args)
                seconds["old"] += t_old
                seconds["new"] += t_new
                calls += 1
                if kinds(before) != kinds(after):
                    mismatches += 1
                    print(f"  MISMATCH {act.label()}: old {before} new {after}")
                elif isinstance(before, list):
                    for (q_old, _), (q_new, _) in zip(before, after, strict=True):
                        worst = max(worst, abs(q_new - q_old) / abs(q_old))
    return {"calls": calls, **seconds, "worst": worst, "mismatches": mismatches}


def max_stable_clip(module, family: str, sparsity: float) -> float:
    """``module.max_stable_clip`` of the named family at ``sparsity``: of the member as a function
    of m (the form with ``clip_window``), or of the family string (earlier refs)."""
    if hasattr(module, "clip_window"):
        at_clip = partial(Activation.from_sparsity, family, sparsity, Q_STAR)
        return module.max_stable_clip(at_clip, Q_STAR)
    return module.max_stable_clip(family, sparsity, Q_STAR)


def compare_max_stable_clip(old, sparsities) -> dict:
    seconds = {"old": 0.0, "new": 0.0}
    worst, calls = 0.0, 0
    for family in FAMILIES:
        for s in sparsities:
            before, t_old = timed(max_stable_clip, old, family, float(s))
            after, t_new = timed(max_stable_clip, gp, family, float(s))
            seconds["old"] += t_old
            seconds["new"] += t_new
            calls += 1
            worst = max(worst, abs(after - before) / abs(before))
    return {"calls": calls, **seconds, "worst": worst}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="HEAD", help="git ref of the old simulate/gp.py")
    parser.add_argument("--stride", type=int, default=1, help="every K-th sparsity only")
    args = parser.parse_args()
    sparsities = SPARSITIES[:: args.stride]
    with tempfile.TemporaryDirectory() as directory:
        old = load_ref(args.ref, Path(directory))
        # compile both versions' Numba kernels before timing
        warm = Activation.from_sparsity("cst", 0.8, Q_STAR, 2.0)
        eoc = gp.edge_of_chaos(warm, Q_STAR)
        for module in (old, gp):
            module.fixed_points(warm, eoc.sigma_w2, eoc.sigma_b2)
        fixed = compare_fixed_points(old, sparsities)
        clips = compare_max_stable_clip(old, sparsities)
    line = []
    for name, r in (("fixed_points", fixed), ("max_stable_clip", clips)):
        old_ms, new_ms = 1e3 * r["old"] / r["calls"], 1e3 * r["new"] / r["calls"]
        print(
            f"{name}: {r['calls']} calls, old {old_ms:.2f} ms/call, new {new_ms:.2f} ms/call, "
            f"speed-up {old_ms / new_ms:.2f}x, max relative difference {r['worst']:.3g}"
            + (f", number/kind mismatches {r['mismatches']}" if "mismatches" in r else "")
        )
        line += [
            f"{name}_old_ms={old_ms:.3f}",
            f"{name}_new_ms={new_ms:.3f}",
            f"{name}_speedup={old_ms / new_ms:.3f}",
            f"{name}_max_rel_diff={r['worst']:.3g}",
        ]
        if "mismatches" in r:
            line.append(f"kind_mismatches={r['mismatches']}")
    print(" ".join(line))


if __name__ == "__main__":
    main()
