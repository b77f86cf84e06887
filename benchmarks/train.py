"""Training throughput of the JAX engine, in GFLOP/s, beside a plain jnp matmul of the same shape.

    python benchmarks/train.py [--depth 100] [--width 300] [--batch 128] [--steps 20] [--repeats 5]
        [--threads]          (with the package and the [train] extra installed)

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
    args = p.parse_args()
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
    params = initialise(act, 1.0, [d, *([width] * depth), n_classes], seed=0).pytree()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch * steps, d)), jnp.float32)
    y = jnp.asarray(rng.integers(0, n_classes, batch * steps), jnp.int32)
    batches = jnp.arange(batch * steps, dtype=jnp.int32).reshape(steps, batch)
    config = model.OptimizerConfig("adam", "constant", steps)
    state = model.make_optimizer(config, 1e-5).init(params)
    pieces = model.pieces_of(act)

    def train():
        out = model.train_epoch(params, state, x, y, batches, 1e-5, pieces, config)
        jax.block_until_ready(out)

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
    train_flops = steps * 3 * 2 * batch * (d * width + (depth - 1) * width**2 + width * n_classes)
    matmul_flops = calls * 2 * batch * width**2
    train_gflops = train_flops / best["train"] / 1e9
    matmul_gflops = matmul_flops / best["matmul"] / 1e9
    threads = "all cores" if args.threads else "1 XLA thread"
    print(f"depth {depth}, width {width}, batch {batch}, {steps} Adam steps per epoch, {threads}")
    print(
        f"training epoch : {best['train'] * 1e3 / steps:8.2f} ms/step  {train_gflops:7.2f} GFLOP/s"
    )
    print(
        f"plain matmul   : {best['matmul'] * 1e6 / calls:8.2f} us/call  {matmul_gflops:7.2f} GFLOP/s"
        f"  ({batch} x {width} @ {width} x {width})"
    )
    ratio = train_gflops / matmul_gflops
    print(f"train_gflops={train_gflops:.3f} matmul_gflops={matmul_gflops:.3f} ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
