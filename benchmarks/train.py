"""Training throughput of the JAX engine, in GFLOP/s, beside a plain jnp matmul of the same shape;
and the machine's throughput three ways: one process, two concurrent processes, one process training
two runs together (``jax.vmap`` over their parameters).

    python benchmarks/train.py [--depth 100] [--width 300] [--batch 128] [--steps 20] [--repeats 5]
        [--threads] [--vmap K] [--compare]      (with the package and the [train] extra installed)

``--vmap K`` times K runs of equal shape trained together by one vmapped epoch (steps/s count the
steps of all K). ``--compare`` runs this script three times in fresh processes (one run; two
concurrent copies of one run; ``--vmap 2``) and prints their total steps/s side by side, with the
runs per hour of the trainability study's configuration (``STUDY_STEPS`` step-equivalents per run at
depth 100, width 300, batch 128).

Setting: the training engine's jitted epoch (``simulate.train.model.train_epoch``: a ``lax.scan``
of Adam steps, each a forward and backward pass through the ``lax.scan`` over the hidden layers)
for CReLU at s = 0.85, m = 1, q* = 1, on random inputs of digits' shape (d = 64, 10 classes).
FLOPs per step are counted as 3 x the forward matmuls (forward, then the gradients with respect to
the activations and to the weights):

    flops = 3 * 2 B (d N + (L - 1) N^2 + N C)

The reference is one jitted ``x @ w`` with x (B, N) and w (N, N), the shape of every hidden layer's
matmul, called in a loop (2 B N^2 flops each). Both are timed in the same process with the same XLA
thread setting (one thread unless ``--threads``), each the minimum over ``--repeats`` interleaved
repeats. The last line is machine-readable: ``train_gflops=X matmul_gflops=Y ratio=Z``.
"""

import argparse
import re
import subprocess
import sys
import time

from simulate.train import limit_cpu_threads


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=100)
    p.add_argument("--width", type=int, default=300)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="optimiser steps per timed epoch")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", action="store_true", help="let XLA use every core")
    p.add_argument("--vmap", type=int, default=1, help="runs trained together in one program")
    p.add_argument("--compare", action="store_true", help="one, two processes, vmap 2 (above)")
    args = p.parse_args()
    if args.steps < 1 or args.repeats < 1 or args.vmap < 1:
        p.error("--steps, --repeats and --vmap must be >= 1")
    if args.compare:
        compare(args)
        return
    if not args.threads:
        limit_cpu_threads()

    import jax
    import jax.numpy as jnp
    import numpy as np

    from simulate.activations import Activation
    from simulate.train import model
    from simulate.train.init import initialise

    d, n_classes = 64, 10
    depth, width, batch, steps = args.depth, args.width, args.batch, args.steps
    act = Activation.from_sparsity("crelu", 0.85, 1.0, m=1.0)
    widths = [d, *([width] * depth), n_classes]
    runs = [initialise(act, 1.0, widths, seed=s).pytree() for s in range(args.vmap)]
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch * steps, d)), jnp.float32)
    y = jnp.asarray(rng.integers(0, n_classes, batch * steps), jnp.int32)
    batches = jnp.arange(batch * steps, dtype=jnp.int32).reshape(steps, batch)
    config = model.OptimizerConfig("adam", "constant", steps)
    optimizer = model.make_optimizer(config, 1e-5)
    pieces = model.pieces_of(act)

    def epoch(params, state):
        return model.train_epoch(params, state, x, y, batches, 1e-5, pieces, config)

    if args.vmap == 1:
        params, state, step = runs[0], optimizer.init(runs[0]), epoch
    else:
        params = jax.tree.map(lambda *a: jnp.stack(a), *runs)
        state, step = jax.vmap(optimizer.init)(params), jax.jit(jax.vmap(epoch))

    def train():
        jax.block_until_ready(step(params, state))

    a = jnp.asarray(rng.standard_normal((batch, width)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((width, width)), jnp.float32)
    matmul = jax.jit(lambda a, w: a @ w)
    calls = max(1, steps * depth)

    def plain():
        for _ in range(calls):
            out = matmul(a, w)
        out.block_until_ready()

    train(), plain()  # compile
    best = {"train": np.inf, "matmul": np.inf}
    for _ in range(args.repeats):
        for name, fn in (("train", train), ("matmul", plain)):
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    train_flops = (
        args.vmap * steps * 3 * 2 * batch * (d * width + (depth - 1) * width**2 + width * n_classes)
    )
    matmul_flops = calls * 2 * batch * width**2
    train_gflops = train_flops / best["train"] / 1e9
    matmul_gflops = matmul_flops / best["matmul"] / 1e9
    threads = "all cores" if args.threads else "1 XLA thread"
    print(
        f"depth {depth}, width {width}, batch {batch}, {steps} Adam steps per epoch, {threads}, "
        f"{args.vmap} run(s) together"
    )
    print(
        f"training epoch : {best['train'] * 1e3 / steps:8.2f} ms/step  {train_gflops:7.2f} GFLOP/s"
        f"  steps_per_s={args.vmap * steps / best['train']:.3f}"
    )
    print(
        f"plain matmul   : {best['matmul'] * 1e6 / calls:8.2f} us/call  {matmul_gflops:7.2f} GFLOP/s"
        f"  ({batch} x {width} @ {width} x {width})"
    )
    ratio = train_gflops / matmul_gflops
    print(f"train_gflops={train_gflops:.3f} matmul_gflops={matmul_gflops:.3f} ratio={ratio:.3f}")


STUDY_STEPS = 1560 + 21 * (10_000 + 2_000 + 512) / 128 / 3
"""Step-equivalents of one trainability-study run (specs/trainability_relu.toml): 20 epochs of 78
Adam steps, and 21 evaluations of 12,512 images (training and test sets, two probe batches), a
forward pass costing about a third of a step."""


def compare(args) -> None:
    """The three ways (module docstring), each in fresh processes, one after another."""
    base = [sys.executable, __file__, "--depth", str(args.depth), "--width", str(args.width),
            "--batch", str(args.batch), "--steps", str(args.steps), "--repeats", str(args.repeats)]  # fmt: skip

    def rate(outputs: list[str]) -> float:
        return sum(float(re.search(r"steps_per_s=([0-9.]+)", o).group(1)) for o in outputs)

    def run(*commands) -> list[str]:
        procs = [subprocess.Popen(c, stdout=subprocess.PIPE, text=True) for c in commands]
        return [p.communicate()[0] for p in procs]

    rates = {
        "one process, one run": rate(run(base)),
        "two processes at once": rate(run(base, base)),
        "one process, vmap 2 runs": rate(run([*base, "--vmap", "2"])),
    }
    scale = (args.depth * args.width**2) / (100 * 300**2) * args.batch / 128
    print(f"depth {args.depth}, width {args.width}, batch {args.batch}: total Adam steps/s")
    for name, r in rates.items():
        per_hour = 3600 * r / (STUDY_STEPS * scale)
        print(f"  {name:26s} {r:8.2f} steps/s   {per_hour:6.1f} study runs/hour at this shape")
    best = max(rates, key=rates.get)
    print(" ".join(f"{k.replace(' ', '_').replace(',', '')}={v:.3f}" for k, v in rates.items()))
    print(f"fastest: {best}")


if __name__ == "__main__":
    main()
