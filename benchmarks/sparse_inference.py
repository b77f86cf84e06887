"""Inference speed-up of the sparse forward pass (simulate.infer) over the dense BLAS pass, on CPU.

    python benchmarks/sparse_inference.py [--quick] [--widths 300,1024,4096]
        [--sparsities 0.5,0.7,0.8,0.85,0.9,0.95] [--families crelu,cst] [--depth 100] [--batch 64]
        [--rounds 3] [--blas fastest|auto|NAME] [--figure PNG] [--json FILE] [--replot FILE]
    python benchmarks/sparse_inference.py --weights NET.npz --family crelu --sparsity 0.85
        [--clip M] [--q-star 1] [--data digits|fashion-mnist]

Networks: widths (N, N x depth, 10), CReLU and CST at the Edge of Chaos (q* = 1, the recommended
clip m = sqrt(m_lo m_hi) of ``simulate.recommend`` for each target sparsity), float32 weights of
the initialiser's variances (``simulate.train.init``), N(0, 1) inputs of dimension N. One draw of
standard normals per width serves every (family, sparsity): it is rescaled in place to each cell's
variances (a fresh draw at N = 4096 would take longer than the cell's timings); biases are drawn per
cell. Sparsity is the network's own, measured: the fraction of exact zeros of each hidden layer on
the batch (``infer.layer_activity``), ``s`` in the table its mean over the layers.

Timings, each regime with 1 and 2 threads (``threads`` of ``dense_forward``: BLAS threads; of
``sparse_forward``: one input's outputs shared among Numba threads, a batch cut into one part per
thread), the dense and sparse passes interleaved, the minimum over ``--rounds``
rounds (two for passes over 0.5 s; the first round warms up):

- batch 1 (latency): ``dense_forward`` / ``sparse_forward`` of one input, each of 16 distinct
  inputs (4 at N > 1024, 2 at N > 2048) timed alone, the minimum over rounds, then the median over
  the inputs;
- batch B (throughput, ``--batch``, default 64): one pass of B inputs.

Columns: the dense time per pass and its GFLOP/s (2 B sum_l n_{l-1} n_l multiply-adds), the sparse
time, the speed-up (dense / sparse time) and the ideal speed-up, the ratio of the dense multiply-adds
to those of the non-zero inputs alone, sum_l n_{l-1} n_l / sum_l k_{l-1} n_l (k_l the mean number of
non-zero units of layer l, k_0 = N: the inputs are dense), which is 1 / (1 - s) up to the first
layer. A second table times the batch methods of ``sparse_forward`` (union, rows, auto) at the
width nearest 1024, one thread, with the mean union fraction |U| / N; a last line times the passes
of a width-16 network (the per-layer overhead of the Python loop and of the kernel calls).

BLAS. The dense pass is numpy's matmul. OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE, if set, are
removed from this process's environment (it re-executes itself), and with ``--blas fastest`` (the
default) each OpenBLAS core type that runs here (the auto-detected one, Haswell, SkylakeX, Zen) is
first timed on a 64 x 1024 x 1024 sgemm in a subprocess; the benchmark runs with the fastest, and
prints that probe and the kernel threadpoolctl reports. ``--blas auto`` keeps the auto-detected
kernel, ``--blas NAME`` sets OPENBLAS_CORETYPE=NAME.

A trained network: ``--weights`` reads w0..wL, b0..bL (``infer.load_npz``) and times it the same
way on the test images of ``--data`` (default digits; batch 1 and ``--batch`` first images), with the
activation given by ``--family``, ``--sparsity`` (the target tau was set from), ``--clip`` and
``--q-star``; it prints each hidden layer's measured sparsity beside the activation's GP sparsity at
q* (the initialisation's).

Figure (full runs, or ``--figure``; default results/figures/sparse_inference.png): speed-up against
measured sparsity, one line per width and batch, the ideal 1 / (1 - s) drawn, per family and thread
count. ``--json`` saves the table, ``--replot`` draws the figure from a saved table without timing.

The last line is machine-readable (CReLU, one thread, the width and sparsity nearest 1024 and
0.85): ``speedup_s085_n1024_b1=X speedup_s085_n1024_b64=Y ideal_s085=Z``; with ``--weights``:
``trained_speedup_b1=X trained_speedup_b64=Y ideal=Z sparsity=S``.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BLAS_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
CORETYPES = ("Haswell", "SkylakeX", "Zen")
"""OpenBLAS core types probed besides the auto-detected one (``--blas fastest``)."""
PROBE_MARK = "SPARSE_INFERENCE_BLAS_PROBE"
"""Environment variable carrying the probe's result into the re-executed benchmark."""
PROBE = """
import time, numpy as np
from threadpoolctl import threadpool_info, threadpool_limits
rng = np.random.default_rng(0)
a = rng.standard_normal((64, 1024), dtype=np.float32)
w = rng.standard_normal((1024, 1024), dtype=np.float32)
best = np.inf
with threadpool_limits(1, user_api="blas"):
    for _ in range(40):
        t = time.perf_counter(); a @ w; best = min(best, time.perf_counter() - t)
arch = [i.get("architecture") for i in threadpool_info() if i["user_api"] == "blas"][0]
print(arch, 2 * 64 * 1024 * 1024 / best / 1e9)
"""
FULL = dict(widths="300,1024,4096", sparsities="0.5,0.7,0.8,0.85,0.9,0.95", families="crelu,cst")
QUICK = dict(widths="300,1024", sparsities="0.5,0.85,0.9", families="crelu,cst")
FIGURE = Path("results/figures/sparse_inference.png")
Q_STAR = 1.0
N_CLASSES = 10
LONG_PASS = 0.5
"""Seconds: passes longer than this are timed over two rounds."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="widths 300,1024; s 0.5,0.85,0.9; 2 rounds")
    p.add_argument("--widths", help=f"comma list (default {FULL['widths']})")
    p.add_argument("--sparsities", help=f"comma list (default {FULL['sparsities']})")
    p.add_argument("--families", help="comma list of crelu, cst (default both)")
    p.add_argument("--depth", type=int, default=100, help="hidden layers (default 100)")
    p.add_argument("--batch", type=int, default=64, help="the throughput batch (default 64)")
    p.add_argument("--rounds", type=int, help="timing rounds (default 3, quick 2)")
    p.add_argument("--blas", default="fastest", help="fastest (default), auto or a core type")
    p.add_argument("--figure", type=Path, help=f"write the figure (full runs: {FIGURE})")
    p.add_argument("--json", type=Path, help="save the table")
    p.add_argument("--replot", type=Path, help="draw the figure from a saved table and exit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", type=Path, help="a trained network, .npz with w0..wL, b0..bL")
    p.add_argument("--family", help="its activation family (with --weights)")
    p.add_argument("--sparsity", type=float, help="its target sparsity (with --weights)")
    p.add_argument("--clip", type=float, default=float("inf"), help="its clip level (inf)")
    p.add_argument("--q-star", type=float, default=Q_STAR, help="its q* (1)")
    p.add_argument("--data", default="digits", help="its dataset (digits, fashion-mnist)")
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.widths = [int(v) for v in args.widths.split(",")]
    args.sparsities = [float(v) for v in args.sparsities.split(",")]
    args.families = args.families.split(",")
    args.rounds = args.rounds or (2 if args.quick else 3)
    if args.figure is None and not args.quick and args.weights is None:
        args.figure = FIGURE
    if args.weights is not None and (args.family is None or args.sparsity is None):
        p.error("--weights needs --family and --sparsity")
    return args


def blas_environment(choice: str) -> None:
    """Re-execute this script with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE removed and, for
    ``fastest``, the core type that won the probe (module docstring); returns in the re-executed
    process."""
    if PROBE_MARK in os.environ:
        return
    env = {k: v for k, v in os.environ.items() if k not in BLAS_VARIABLES}
    probe = []
    if choice == "fastest":
        for coretype in (None, *CORETYPES):
            run_env = env if coretype is None else {**env, "OPENBLAS_CORETYPE": coretype}
            out = subprocess.run(
                [sys.executable, "-c", PROBE], env=run_env, capture_output=True, text=True
            )
            if out.returncode == 0:
                arch, gflops = out.stdout.split()
                probe.append((coretype or "auto", arch, float(gflops)))
        best = max(probe, key=lambda p: p[2])[0]
        if best != "auto":
            env["OPENBLAS_CORETYPE"] = best
    elif choice != "auto":
        env["OPENBLAS_CORETYPE"] = choice
    env[PROBE_MARK] = json.dumps(probe)
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def recommended_clip(family: str, sparsity: float) -> float:
    """m = sqrt(m_lo m_hi), the middle of the clip window (``simulate.recommend``)."""
    from simulate import gp

    window = gp.family_clip_window(family, sparsity, Q_STAR)
    return (window.low * window.high) ** 0.5


class EocNetworks:
    """One draw of standard normals for widths (N, N x depth, C), laid out by ``infer.prepare``;
    :meth:`cell` rescales it in place to a cell's Edge-of-Chaos variances (module docstring)."""

    def __init__(self, width: int, depth: int, rng):
        import numpy as np

        from simulate import infer
        from simulate.activations import Activation

        self.widths = [width] * (depth + 1) + [N_CLASSES]
        self.rng = rng
        shapes = list(zip(self.widths[:-1], self.widths[1:], strict=True))
        weights = (rng.standard_normal(shape, dtype=np.float32).T for shape in shapes)
        biases = [np.zeros(n, np.float32) for n in self.widths[1:]]
        self.net = infer.prepare(Activation.relu(), weights, biases)
        self.scales = np.ones(len(shapes))

    def cell(self, family: str, sparsity: float):
        """The network of (family, sparsity) at the EoC for q* = 1, inputs of mean square 1."""
        import dataclasses

        import numpy as np

        from simulate import gp
        from simulate.activations import Activation

        act = Activation.from_sparsity(family, sparsity, Q_STAR, recommended_clip(family, sparsity))
        eoc = gp.edge_of_chaos(act, Q_STAR)
        sigma_w2, sigma_b2 = float(eoc.sigma_w2), float(eoc.sigma_b2)
        net = self.net
        for l, fan_in in enumerate(self.widths[:-1]):
            scale = np.sqrt(((Q_STAR - sigma_b2) if l == 0 else sigma_w2) / fan_in)
            lo, hi = net.w_offsets[l], net.w_offsets[l + 1]
            net.w[lo:hi] *= np.float32(scale / self.scales[l])
            self.scales[l] = scale
        b = (np.sqrt(sigma_b2) * self.rng.standard_normal(net.b.size)).astype(np.float32)
        return dataclasses.replace(net, act=act, b=b)


def time_interleaved(fns, items, rounds: int) -> list[float]:
    """Seconds per call of each f(x) in ``fns``: for each item x the minimum over rounds (the
    functions interleaved; two rounds when a call takes over LONG_PASS seconds; the first round
    also warms up, and the minimum leaves it out when it is slower), then the median over the
    items."""
    import numpy as np

    best = np.full((len(fns), len(items)), np.inf)
    for i in range(rounds):
        for k, x in enumerate(items):
            for j, f in enumerate(fns):
                t = time.perf_counter()
                f(x)
                best[j, k] = min(best[j, k], time.perf_counter() - t)
        if i >= 1 and best.max() > LONG_PASS:
            break
    return [float(v) for v in np.median(best, axis=1)]


def measure(net, inputs, batch, threads, rounds) -> list[dict]:
    """The rows of one network with ``threads`` threads: batch 1 over the inputs (K, d), each
    input timed alone, and the batch (B, d)."""
    import numpy as np

    from simulate import infer

    widths = np.asarray(net.widths)
    macs = float(np.sum(widths[:-1] * widths[1:]))
    sparsity, _ = infer.layer_activity(net, batch)
    nonzero = np.concatenate([[widths[0]], (1.0 - sparsity) * widths[1:-1]])
    ideal = macs / float(np.sum(nonzero * widths[1:]))
    rows = []
    for items in (list(inputs), [batch]):
        t_dense, t_sparse = time_interleaved(
            [
                lambda x: infer.dense_forward(net, x, threads=threads),
                lambda x: infer.sparse_forward(net, x, threads=threads),
            ],
            items,
            rounds,
        )
        b = 1 if items[0].ndim == 1 else len(batch)
        rows.append(
            dict(
                sparsity=float(np.mean(sparsity)),
                width=int(widths[1]),
                batch=b,
                threads=threads,
                dense_ms=1e3 * t_dense,
                dense_gflops=2 * b * macs / t_dense / 1e9,
                sparse_ms=1e3 * t_sparse,
                speedup=t_dense / t_sparse,
                ideal=ideal,
            )
        )
    return rows


def compare_methods(net, batch, rounds) -> dict:
    """Seconds per batch pass of each ``sparse_forward`` method (one thread), and the mean union
    fraction |U| / N over the hidden layers."""
    from simulate import infer

    times = time_interleaved(
        [lambda x, m=m: infer.sparse_forward(net, x, method=m) for m in infer.METHODS],
        [batch],
        rounds,
    )
    return dict(
        zip(infer.METHODS, times, strict=True), u=float(infer.layer_activity(net, batch)[1].mean())
    )


def call_overhead(depth: int, rounds: int) -> tuple[float, float]:
    """Microseconds per layer of the dense and sparse passes of one input at width 16."""
    import numpy as np

    from simulate import infer
    from simulate.activations import Activation
    from simulate.train.init import initialise

    act = Activation.from_sparsity("crelu", 0.85, Q_STAR, 1.0)
    init = initialise(act, Q_STAR, [16] * (depth + 1) + [N_CLASSES], seed=0)
    net = infer.prepare(act, init.weights, init.biases)
    inputs = np.random.default_rng(0).standard_normal((16, 16))
    t_dense, t_sparse = time_interleaved(
        [lambda x: infer.dense_forward(net, x), lambda x: infer.sparse_forward(net, x)],
        list(inputs),
        rounds,
    )
    return 1e6 * t_dense / (depth + 1), 1e6 * t_sparse / (depth + 1)


HEADER = (
    f"{'family':>6} {'target':>6} {'s':>6} {'width':>5} {'batch':>5} {'thr':>3} "
    f"{'dense ms':>9} {'GFLOP/s':>7} {'sparse ms':>9} {'speedup':>7} {'ideal':>6} {'% ideal':>7}"
)


def row_line(r: dict) -> str:
    return (
        f"{r['family']:>6} {r['target']:>6.2f} {r['sparsity']:>6.3f} {r['width']:>5} "
        f"{r['batch']:>5} {r['threads']:>3} {r['dense_ms']:>9.3f} {r['dense_gflops']:>7.1f} "
        f"{r['sparse_ms']:>9.3f} {r['speedup']:>7.2f} {r['ideal']:>6.2f} "
        f"{100 * r['speedup'] / r['ideal']:>7.0f}"
    )


def print_rows(rows: list[dict]) -> None:
    print(HEADER)
    for r in rows:
        print(row_line(r))


def draw(rows: list[dict], path: Path, title: str) -> None:
    """Speed-up against measured sparsity: panels family x threads, one line per width and batch,
    the ideal 1 / (1 - s) and break-even drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    families = sorted({r["family"] for r in rows})
    threads = sorted({r["threads"] for r in rows})
    widths = sorted({r["width"] for r in rows})
    batches = sorted({r["batch"] for r in rows})
    colors = plt.cm.viridis(np.linspace(0.0, 0.85, len(widths)))
    fig, axes = plt.subplots(
        len(threads), len(families), figsize=(5.2 * len(families), 4.0 * len(threads)),
        sharex=True, sharey=True, squeeze=False,
    )  # fmt: skip
    s_all = np.array([r["sparsity"] for r in rows])
    s_grid = np.linspace(min(s_all.min(), 0.5) - 0.02, s_all.max() + 0.01, 200)
    for i, t in enumerate(threads):
        for j, family in enumerate(families):
            ax = axes[i, j]
            ax.plot(s_grid, 1 / (1 - s_grid), color="black", lw=2.5, ls=":", label="ideal 1/(1-s)")
            ax.axhline(1.0, color="grey", lw=1)
            for width, color in zip(widths, colors, strict=True):
                for batch in batches:
                    sel = sorted(
                        (r["sparsity"], r["speedup"])
                        for r in rows
                        if (r["family"], r["threads"], r["width"], r["batch"])
                        == (family, t, width, batch)
                    )
                    if sel:
                        s, v = zip(*sel, strict=True)
                        ax.plot(
                            s, v, color=color, ls="-" if batch == 1 else "--",
                            marker="o" if batch == 1 else "s", ms=4,
                            label=f"N = {width}, batch {batch}",
                        )  # fmt: skip
            ax.set_yscale("log")
            name = {"crelu": "CReLU", "cst": "CST"}.get(family, family)
            ax.set_title(f"{name}, {t} thread{'s' if t > 1 else ''}")
            ax.grid(True, which="both", alpha=0.3)
            if i == len(threads) - 1:
                ax.set_xlabel("measured sparsity s (fraction of exact zeros per layer)")
            if j == 0:
                ax.set_ylabel("speed-up over dense BLAS (x, time ratio)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.8, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def b1_inputs(width: int) -> int:
    """Inputs timed one by one in the batch-1 regime: 16, 4 above width 1024, 2 above 2048."""
    return 16 if width <= 1024 else 4 if width <= 2048 else 2


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds all processes have used, those this process has used), from /proc/stat (user,
    nice, system, irq, softirq) and os.times."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split()[1:8]]
    own = os.times()
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK"), own.user + own.system


def nearest(values, target):
    return min(values, key=lambda v: abs(v - target))


def environment_line() -> str:
    """CPU, core count, numpy and Numba versions, numpy's BLAS (threadpoolctl: library, version,
    kernel) and OPENBLAS_CORETYPE."""
    import numba
    import numpy as np
    from threadpoolctl import threadpool_info

    blas = [
        f"{i['internal_api']} {i['version']} kernel {i['architecture']}"
        for i in threadpool_info()
        if i["user_api"] == "blas" and "numpy" in i["filepath"]
    ]
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line), "")
    return (
        f"CPU {model}, {os.cpu_count()} cores; numpy {np.__version__} ({', '.join(blas)}), numba "
        f"{numba.__version__}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}"
    )


def run_trained(args) -> None:
    import numpy as np

    from simulate import gp, infer
    from simulate.activations import Activation
    from simulate.train.data import load_dataset

    act = Activation.from_sparsity(args.family, args.sparsity, args.q_star, args.clip)
    net = infer.prepare(act, *infer.load_npz(args.weights))
    x = load_dataset(args.data, None).x_test
    if x.shape[1] != net.widths[0]:
        sys.exit(
            f"--data {args.data}: inputs of dimension {x.shape[1]}, the network takes {net.widths[0]}"
        )
    batch = x[: args.batch]
    rows = []
    for threads in (1, 2):
        for r in measure(net, x[:16], batch, threads, args.rounds):
            rows.append(dict(family=args.family, target=args.sparsity, **r))
    print_rows(rows)
    sparsity, union = infer.layer_activity(net, batch)
    print(
        f"GP sparsity at q* = {args.q_star:g} (initialisation): {float(gp.sparsity(act, args.q_star)):.3f}"
    )
    print("measured sparsity per hidden layer:", " ".join(f"{v:.3f}" for v in sparsity))
    print(
        f"union fraction per hidden layer (batch {len(batch)}):",
        " ".join(f"{v:.3f}" for v in union),
    )
    one = {r["batch"]: r for r in rows if r["threads"] == 1}
    print(
        f"trained_speedup_b1={one[1]['speedup']:.2f} "
        f"trained_speedup_b{args.batch}={one[args.batch]['speedup']:.2f} "
        f"ideal={one[1]['ideal']:.2f} sparsity={np.mean(sparsity):.3f}"
    )


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.replot is not None:
        saved = json.loads(args.replot.read_text())
        draw(saved["rows"], args.figure or FIGURE, saved["title"])
        return
    blas_environment(args.blas)
    import numpy as np

    probe = json.loads(os.environ[PROBE_MARK])
    print(environment_line())
    if probe:
        print(
            "BLAS probe, 64x1024x1024 sgemm, 1 thread:",
            "; ".join(f"{c} ({a}) {g:.0f} GFLOP/s" for c, a, g in probe),
        )
    if args.weights is not None:
        run_trained(args)
        return

    rng = np.random.Generator(np.random.SFC64(args.seed))  # the fastest of numpy's generators
    rows, methods = [], {}
    method_width = nearest(args.widths, 1024)
    start, busy = time.perf_counter(), cpu_seconds()
    for width in args.widths:
        nets = EocNetworks(width, args.depth, rng)
        inputs = rng.standard_normal((b1_inputs(width), width)).astype(np.float32)
        batch = rng.standard_normal((args.batch, width)).astype(np.float32)
        for family in args.families:
            for target in args.sparsities:
                net = nets.cell(family, target)
                for threads in (1, 2):
                    for r in measure(net, inputs, batch, threads, args.rounds):
                        rows.append(dict(family=family, target=target, **r))
                        print(row_line(rows[-1]), file=sys.stderr, flush=True)
                if width == method_width and family == "crelu":
                    methods[target] = compare_methods(net, batch, args.rounds)
        del nets
    elapsed, (total, own) = time.perf_counter() - start, np.subtract(cpu_seconds(), busy)
    print(
        f"\ntimed in {elapsed:.0f} s; depth {args.depth}; other processes used "
        f"{(total - own) / elapsed:.0%} of one core meanwhile (of {os.cpu_count()}: the 2-thread "
        "rows need them idle)\n"
    )
    print_rows(rows)
    if methods:
        print(
            f"\nbatch methods, CReLU, width {method_width}, batch {args.batch}, 1 thread (ms per pass):"
        )
        print(f"{'target':>6} {'union':>8} {'rows':>8} {'auto':>8} {'|U|/N':>6}")
        for target, m in methods.items():
            print(
                f"{target:>6.2f} {1e3 * m['union']:>8.2f} {1e3 * m['rows']:>8.2f} {1e3 * m['auto']:>8.2f} {m['u']:>6.3f}"
            )
    dense_us, sparse_us = call_overhead(args.depth, args.rounds)
    print(
        f"\nper-layer cost at width 16 (call overhead), one input: dense {dense_us:.2f} us, sparse {sparse_us:.2f} us"
    )
    title = f"sparse vs dense forward pass, depth {args.depth}, float32\n{environment_line()}"
    if args.json is not None:
        args.json.write_text(json.dumps(dict(title=title, rows=rows)))
    if args.figure is not None:
        draw(rows, args.figure, title)
        print(f"figure: {args.figure}")
    width, target = nearest(args.widths, 1024), nearest(args.sparsities, 0.85)
    head = {
        r["batch"]: r
        for r in rows
        if (r["family"], r["width"], r["target"], r["threads"]) == ("crelu", width, target, 1)
    }
    print(
        f"speedup_s085_n1024_b1={head[1]['speedup']:.2f} "
        f"speedup_s085_n1024_b{args.batch}={head[args.batch]['speedup']:.2f} "
        f"ideal_s085={head[1]['ideal']:.2f}"
    )


if __name__ == "__main__":
    main()
