"""Peak memory of ``python -m analysis.report`` against the number of cells of a store.

    python benchmarks/report_memory.py [--scales 10,40] [--dir /tmp/report_memory] [--keep]

For each scale s, a store s times the default sweep's size is written to zarr (``simulate.store``:
the real schema and chunking, one chunk per cell) with planted values, then its report is run under
``/usr/bin/time -v`` and its maximum resident set size read off. The default sweep is 2 families x
5 sparsities x 6 clip levels x 3 widths (100, 300, 1000) = 180 cells of 64 networks, 201 layers and
2 inputs; scale s keeps everything per cell and multiplies the cells by s through finer sparsity and
clip grids (n_s x n_m = 30 s: 10 -> 10 x 30, 40 -> 20 x 60; sparsities evenly spaced in [0.5, 0.95],
clip levels log-spaced in [0.3, 5] plus unclipped), so a report whose memory does not depend on
the number of cells has the same peak at every scale.

Planted values (per network, independent draws): v and q = q^l (1 + sqrt(2/N) z) around the GP
iterate, zero fraction = the GP sparsity + 0.01 z, correlations rising from c0 = 0.5 towards 1,
log-gains N(0, 1/N); unclipped networks escape upwards at a uniform layer in [10, depth + 50)
(never when beyond depth); the per-network summaries are those of the planted trajectories.

The report runs with ``--n-jobs 1``: ``/usr/bin/time`` reports the largest resident set of one
process, and with workers each process (the main one and every worker) reads and keeps at most
one block of cells at a time, so the single process that does all the work bounds each of them.

Prints, per scale, the cells, the store's size on disk, the report's wall time and peak RSS; the
last line is machine-readable: ``peak_rss_mb_<s>=X ... ratio_<largest>_over_<smallest>=R``.
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from simulate import schema, store
from simulate.spec import Spec, cells, resolve

GRIDS = {1: (5, 6), 10: (10, 30), 40: (20, 60)}
"""Scale -> (sparsities, clip levels including inf)."""


def spec_at(scale: int) -> Spec:
    n_s, n_m = GRIDS[scale]
    clips = [*np.geomspace(0.3, 5.0, n_m - 1).round(4).tolist(), "inf"]
    return Spec.from_values(
        {
            "family": ["crelu", "cst"],
            "sparsity": np.linspace(0.5, 0.95, n_s).round(4).tolist(),
            "clip": clips,
            "q_star": [1.0],
            "width": [100, 300, 1000],
            "depth": 200,
            "nets": 64,
        }
    )


def planted(spec: Spec, cell, q_gp: np.ndarray, sparsity: float, rng) -> dict[str, np.ndarray]:
    """One cell's variables (module docstring)."""
    layers = np.asarray(spec.recorded_layers)
    nets, b, pairs, depth = spec.nets, spec.inputs, spec.inputs * (spec.inputs - 1) // 2, spec.depth
    noise = math.sqrt(2.0 / cell.width)
    v = (q_gp[None, :, None] * (1 + noise * rng.standard_normal((nets, layers.size, b)))).astype(
        "float32"
    )
    zf = (sparsity + 0.01 * rng.standard_normal((nets, layers.size, b))).astype("float32")
    corr = 1.0 - 0.5 * np.exp(-layers / 50.0)
    corr = np.minimum(
        corr[None, :, None] + 0.01 * rng.standard_normal((nets, layers.size, pairs)), 1
    )
    gain = (rng.standard_normal((nets, layers.size)) / math.sqrt(cell.width)).astype("float32")
    gain[:, 0] = np.nan
    escape = np.full(nets, -1, dtype="int32")
    if not math.isfinite(cell.clip):
        times = rng.integers(10, depth + 50, nets)
        escape = np.where(times <= depth, times, -1).astype("int32")
    last = np.where(escape >= 0, escape, depth)
    for net, e in enumerate(escape):
        if e >= 0:
            v[net, e] = 30.0 * cell.q0
            for x in (v, zf, corr, gain):
                x[net, e + 1 :] = np.nan
    pick = np.arange(nets)
    finite_gain = np.where(np.isfinite(gain), gain, 0.0)
    counted = np.maximum(np.isfinite(gain).sum(axis=1), 1)
    return {
        "q": v.copy(),
        "v": v,
        "zero_frac": zf,
        "corr": corr.astype("float32"),
        "v_corr": corr.astype("float32"),
        "log_gain": gain,
        "v_log_gain": gain,
        "escape_layer": escape,
        "final_v": v[pick, last],
        "final_q": v[pick, last],
        "final_zero_frac": zf[pick, last],
        "mean_zero_frac": np.nanmean(zf, axis=1),
        "mean_log_gain": (finite_gain.sum(axis=1) / counted).astype("float32"),
        "mean_v_log_gain": (finite_gain.sum(axis=1) / counted).astype("float32"),
    }


def write_store(scale: int, path: Path) -> int:
    """The store of ``scale`` at ``path``; returns its number of cells."""
    spec = spec_at(scale)
    params = resolve(spec)
    values = schema.param_values(spec, params)
    store.create(path, schema.skeleton(spec, values, schema.attributes(spec)), spec)
    writer = store.Writer(path)
    rng = np.random.default_rng(scale)
    n = 0
    for cell in cells(spec, params):
        point = cell.index[:-1]
        wanted = set(schema.cell_variables(spec))
        cell_values = planted(
            spec, cell, values["q_gp"][point], float(values["gp_sparsity"][point]), rng
        )
        writer.write(cell.index, {k: v for k, v in cell_values.items() if k in wanted})
        n += 1
    writer.update_attrs({"wall_time_s": 0.0})
    return n


def disk_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def peak_report(path: Path) -> tuple[float, float]:
    """(peak RSS in MB, wall time in s) of the report of ``path``."""
    start = time.perf_counter()
    done = subprocess.run(
        [
            "/usr/bin/time",
            "-v",
            sys.executable,
            "-m",
            "analysis.report",
            str(path),
            "--n-jobs",
            "1",
        ],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"report of {path} failed:\n{done.stderr[-3000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    return int(rss.group(1)) / 1024, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="10,40", help="comma-separated, of " + str(list(GRIDS)))
    parser.add_argument("--dir", type=Path, default=Path("/tmp/report_memory"))
    parser.add_argument("--keep", action="store_true", help="reuse stores already written")
    args = parser.parse_args()
    scales = [int(s) for s in args.scales.split(",")]
    peaks = {}
    for scale in scales:
        path = args.dir / f"x{scale}" / "store.zarr"
        if not (args.keep and path.exists()):
            shutil.rmtree(path.parent, ignore_errors=True)
            path.parent.mkdir(parents=True)
            start = time.perf_counter()
            n = write_store(scale, path)
            print(f"x{scale}: wrote {n} cells in {time.perf_counter() - start:.0f} s", flush=True)
        peaks[scale], wall = peak_report(path)
        print(
            f"x{scale}: store {disk_mb(path):.0f} MB on disk; report {wall:.0f} s, "
            f"peak RSS {peaks[scale]:.0f} MB",
            flush=True,
        )
    low, high = min(scales), max(scales)
    print(
        " ".join(f"peak_rss_mb_{s}={peaks[s]:.0f}" for s in scales)
        + f" ratio_{high}_over_{low}={peaks[high] / peaks[low]:.3f}"
    )


if __name__ == "__main__":
    main()
