"""One training run: ``train_network(...)`` -> per-epoch numpy arrays; and a one-run CLI.

    python -m simulate.train.run [--family crelu|cst] [--sparsity 0.85] [--clip 1|inf] [--q-star 1]
        [--depth 100] [--width 300] [--dataset digits|fashion-mnist] [--data DIR] [--train-size N]
        [--test-size N] [--epochs 10] [--lr 1e-3] [--optimizer adam|sgd] [--schedule constant|cosine]
        [--warmup 0] [--batch-size 128] [--output-gain 1] [--seed 0] [--chi1 1]
        [--checkpoint FILE] [--save PARAMS.npz] [--threads]

prints one line per epoch as it finishes (epoch 0 is the initialisation) and a summary. With
``--checkpoint FILE`` the run's state is saved after every epoch, and the same command, after a
kill, resumes from it and prints the same numbers (the file is removed when the run ends). Bad
input: one line naming the field, the value and what is allowed; exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import numbers
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from simulate import resources
from simulate.activations import FAMILIES, Activation
from simulate.train import checkpoint as _checkpoint
from simulate.train.data import DATASETS, Dataset, load_dataset
from simulate.train.init import FLOAT32_MAX, initialise

RESULT_DIMS = {
    "train_loss": ("epoch",),
    "test_loss": ("epoch",),
    "train_acc": ("epoch",),
    "test_acc": ("epoch",),
    "q": ("epoch", "probe", "layer"),
    "act_sparsity": ("epoch", "probe", "layer"),
    "diverged": (),
    "diverged_epoch": (),
}
"""The arrays of :func:`train_network` and their dimensions: ``epoch`` 0..epochs (0 = at
initialisation), ``probe`` ("train", "test"), ``layer`` 1..depth (hidden layers)."""

PROBES = ("train", "test")


def train_network(
    act: Activation,
    q_star: float,
    depth: int,
    width: int,
    data: Dataset,
    *,
    epochs: int,
    lr: float,
    optimizer: str = "adam",
    schedule: str = "constant",
    warmup: float = 0.0,
    batch_size: int = 128,
    seed: int | np.random.SeedSequence = 0,
    output_gain: float = 1.0,
    probe_size: int = 256,
    chi_1: float = 1.0,
    checkpoint: Path | None = None,
    on_epoch: Callable[[int, dict[str, np.ndarray]], None] | None = None,
    save_params: Path | None = None,
) -> dict[str, np.ndarray]:
    """Train a depth x width network of ``act`` initialised at the Edge of Chaos for ``q_star``
    (:func:`simulate.train.init.initialise`; with ``chi_1`` != 1, off it at the same q*) on
    ``data``; a deterministic function of its arguments.

    Training: ``epochs`` passes over the training set in shuffled mini-batches of ``batch_size`` (the
    last incomplete batch of each pass is dropped), ``optimizer`` and ``schedule`` from
    :mod:`simulate.train.model` with peak learning rate ``lr`` and a linear warm-up over ``warmup``
    epochs. ``seed`` is split into the initialisation's stream and the shuffling's.

    Measured at initialisation (epoch 0) and after every epoch (see :data:`RESULT_DIMS`): loss and
    accuracy on the whole training and test sets; the per-layer q and fraction of exact zeros of the
    hidden pre-activations on fixed probe batches, the first ``probe_size`` images of each set.
    ``on_epoch(epoch, results)`` is called after each epoch's measurements (results filled up to it).

    ``checkpoint``: a file where the run's state is saved after every epoch
    (:mod:`simulate.train.checkpoint`); if it exists, the run resumes after its last saved epoch and
    returns exactly what an uninterrupted run returns. The file is left in place at the end (the
    caller removes it once the results are safe). ``save_params``: a ``.npz`` file for the trained
    network, in the initialiser's layout (``w0`` .. ``wL`` (fan_out, fan_in) and ``b0`` .. ``bL``,
    float32; ``simulate.infer.load_npz`` reads it back).

    Float32 range: besides the initialiser's bounds (:mod:`simulate.train.init`), the probe's q^l
    is a float32 mean over ``probe_size`` x ``width`` squares of variance q*, summed first, so
    q* probe_size width must be below the float32 maximum (ValueError naming ``q_star``).

    Divergence: an epoch whose batch losses or measured losses are not all finite ends the run;
    ``diverged`` is set, ``diverged_epoch`` is that epoch (-1: none), its measurements are kept as they
    came out, and later epochs are NaN.
    """
    _check_run_args(act, q_star, depth, width, epochs, lr, optimizer, schedule, warmup, batch_size)
    if batch_size > data.x_train.shape[0]:
        raise ValueError(
            f"batch_size={batch_size}: must be <= the number of training images "
            f"({data.x_train.shape[0]})"
        )
    summed = probe_size * width
    if not q_star * summed < FLOAT32_MAX:
        raise ValueError(
            f"q_star={q_star!r}: overflows float32 in the probe's per-layer q, a sum of probe_size "
            f"x width = {summed} squares of variance q*; q_star must be < {FLOAT32_MAX / summed:.3g}"
        )
    import jax

    from simulate.train import model

    seq = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    init_seq, shuffle_seq = seq.spawn(2)
    widths = [data.input_dim, *([width] * depth), data.n_classes]
    params = initialise(
        act, q_star, widths, seed=init_seq, output_gain=output_gain, chi_1=chi_1
    ).pytree()
    n_batches = data.x_train.shape[0] // batch_size
    config = model.OptimizerConfig(
        optimizer, schedule, epochs * n_batches, round(warmup * n_batches)
    )
    pieces = model.pieces_of(act)
    rng = np.random.Generator(np.random.PCG64(shuffle_seq))
    x_train, y_train = np.asarray(data.x_train, np.float32), np.asarray(data.y_train, np.int32)
    x_test, y_test = np.asarray(data.x_test, np.float32), np.asarray(data.y_test, np.int32)
    probes = (x_train[:probe_size], x_test[:probe_size])

    out = {
        k: np.full((epochs + 1,), np.nan)
        for k in ("train_loss", "test_loss", "train_acc", "test_acc")
    }
    out["q"] = np.full((epochs + 1, 2, depth), np.nan)
    out["act_sparsity"] = np.full((epochs + 1, 2, depth), np.nan)
    out["diverged"] = np.array(False)
    out["diverged_epoch"] = np.array(-1)
    state = model.make_optimizer(config, lr).init(params)
    first = 0
    if checkpoint is not None:
        run = _describe_run(
            act, q_star, chi_1, depth, width, data, epochs, lr, config, batch_size, seq,
            output_gain, probe_size,
        )  # fmt: skip
        saved = _checkpoint.load(checkpoint, run)
        if saved is not None:
            params = {k: jax.numpy.asarray(v) for k, v in saved.params.items()}
            treedef = jax.tree_util.tree_structure(state)
            state = jax.tree_util.tree_unflatten(
                treedef, [jax.numpy.asarray(v) for v in saved.opt_leaves]
            )
            rng.bit_generator.state = saved.rng_state
            out = {k: np.array(v) for k, v in saved.out.items()}
            first = saved.epoch + 1
    for epoch in range(first, epochs + 1):
        finite = True
        if epoch > 0:
            order = rng.permutation(x_train.shape[0])[: n_batches * batch_size]
            batches = order.reshape(n_batches, batch_size)
            params, state, losses = model.train_epoch(
                params, state, x_train, y_train, batches, lr, pieces, config
            )
            finite = bool(np.all(np.isfinite(np.asarray(losses))))
        for name, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
            loss, acc = model.evaluate(params, x, y, pieces)
            out[f"{name}_loss"][epoch], out[f"{name}_acc"][epoch] = float(loss), float(acc)
            finite &= math.isfinite(float(loss))
        for i, x in enumerate(probes):
            q, zeros = model.probe(params, x, pieces)
            out["q"][epoch, i], out["act_sparsity"][epoch, i] = np.asarray(q), np.asarray(zeros)
        if not finite:
            out["diverged"], out["diverged_epoch"] = np.array(True), np.array(epoch)
        if on_epoch is not None:
            on_epoch(epoch, out)
        if not finite:
            break
        if checkpoint is not None and epoch < epochs:
            _checkpoint.save(
                checkpoint,
                run,
                _checkpoint.RunState(
                    epoch,
                    {k: np.asarray(v) for k, v in params.items()},
                    [np.asarray(v) for v in jax.tree_util.tree_leaves(state)],
                    rng.bit_generator.state,
                    out,
                ),
            )
    if save_params is not None:
        weights, biases = _layers(params)
        np.savez(
            save_params,
            **{f"w{i}": w for i, w in enumerate(weights)},
            **{f"b{i}": b for i, b in enumerate(biases)},
        )
    return out


def _layers(params: dict) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The JAX pytree of :mod:`simulate.train.model` as per-layer numpy arrays, input to output."""
    hidden = np.asarray(params["w_hidden"]), np.asarray(params["b_hidden"])
    weights = [np.asarray(params["w_in"]), *hidden[0], np.asarray(params["w_out"])]
    biases = [np.asarray(params["b_in"]), *hidden[1], np.asarray(params["b_out"])]
    return weights, biases


def _describe_run(
    act, q_star, chi_1, depth, width, data, epochs, lr, config, batch_size, seq, output_gain,
    probe_size,
) -> str:  # fmt: skip
    """The run's arguments as a JSON string (:mod:`simulate.train.checkpoint`): the activation, the
    network, the optimiser, the seed's entropy and spawn key, and the dataset's name and shapes."""
    return json.dumps(
        {
            "activation": [
                act.name,
                *(repr(v) for part in (act.knots, act.values, act.slopes) for v in part.tolist()),
            ],
            "q_star": repr(q_star),
            "chi_1": repr(chi_1),
            "depth": depth,
            "width": width,
            "data": [data.name, list(data.x_train.shape), list(data.x_test.shape)],
            "epochs": epochs,
            "lr": repr(lr),
            "optimizer": list(config),
            "batch_size": batch_size,
            "seed": [str(seq.entropy), list(seq.spawn_key)],
            "output_gain": repr(output_gain),
            "probe_size": probe_size,
        },
        sort_keys=True,
    )


def _check_run_args(act, q_star, depth, width, epochs, lr, optimizer, schedule, warmup, batch_size):
    """One-line ValueError naming the first bad argument."""
    from simulate.train.options import OPTIMIZERS, SCHEDULES

    def positive_int(name, value, low=1):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name}={value!r}: must be an integer >= {low}")

    def number(name, value, ok, allowed):
        if not isinstance(value, numbers.Real) or not math.isfinite(value) or not ok(value):
            raise ValueError(f"{name}={value!r}: must be finite and {allowed}")

    if not isinstance(act, Activation) or act.batch_shape:
        raise ValueError(f"act={act!r}: must be a single Activation")
    number("q_star", q_star, lambda v: v > 0, "> 0")
    positive_int("depth", depth)
    positive_int("width", width)
    positive_int("epochs", epochs)
    number("lr", lr, lambda v: v > 0, "> 0")
    number("warmup", warmup, lambda v: v >= 0, ">= 0 (epochs)")
    positive_int("batch_size", batch_size)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer={optimizer!r}: must be one of {', '.join(OPTIMIZERS)}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r}: must be one of {', '.join(SCHEDULES)}")


def _check_memory(data: Dataset, width: int, depth: int, batch_size: int) -> None:
    """One-line ValueError when the run does not fit in memory (``simulate.resources``)."""
    n_train, n_test = data.x_train.shape[0], data.x_test.shape[0]
    need = resources.train_workspace(
        data.input_dim, data.n_classes, n_train, n_test, width, depth, batch_size
    )
    refused = resources.refusal(
        need, f"depth={depth}, width={width}: the run", "--depth or --width"
    )
    if refused:
        raise ValueError(refused)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2)."""

    def error(self, message):
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m simulate.train.run", description="One training run at the Edge of Chaos."
    )
    p.add_argument("--family", default="crelu", help=f"one of {', '.join(FAMILIES)}")
    p.add_argument("--sparsity", type=float, default=0.85, help="target GP sparsity at q*")
    p.add_argument("--clip", type=float, default=1.0, help="clip level m (inf: unclipped)")
    p.add_argument("--q-star", type=float, default=1.0)
    p.add_argument("--depth", type=int, default=100)
    p.add_argument("--width", type=int, default=300)
    p.add_argument("--dataset", default="digits", help=f"one of {', '.join(DATASETS)}")
    p.add_argument("--data", default=None, help="directory of the Fashion-MNIST IDX files")
    p.add_argument("--train-size", type=int, default=None)
    p.add_argument("--test-size", type=int, default=None)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--optimizer", default="adam")
    p.add_argument("--schedule", default="constant")
    p.add_argument("--warmup", type=float, default=0.0, help="linear warm-up, in epochs")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--output-gain", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--chi1", type=float, default=1.0, help="chi_1 at q* (1: the Edge of Chaos; same q*)"
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="file for the run's state after each epoch; the same command resumes from it",
    )
    p.add_argument(
        "--save", type=Path, default=None, help="file (.npz) for the trained weights and biases"
    )
    p.add_argument("--threads", action="store_true", help="let XLA use every core")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if not args.threads:
        from simulate.train import limit_cpu_threads

        limit_cpu_threads()
    kwargs = dict(
        epochs=args.epochs,
        lr=args.lr,
        optimizer=args.optimizer,
        schedule=args.schedule,
        warmup=args.warmup,
        batch_size=args.batch_size,
        seed=args.seed,
        output_gain=args.output_gain,
        chi_1=args.chi1,
    )
    start = time.perf_counter()

    def report(epoch: int, res: dict[str, np.ndarray]) -> None:
        q, s = res["q"][epoch, 0], res["act_sparsity"][epoch, 0]
        print(
            f"epoch {epoch:3d}  train loss {res['train_loss'][epoch]:.4g} "
            f"acc {res['train_acc'][epoch]:.4f}  test loss {res['test_loss'][epoch]:.4g} "
            f"acc {res['test_acc'][epoch]:.4f}  q[1,L/2,L] {q[0]:.3g} {q[len(q) // 2]:.3g} "
            f"{q[-1]:.3g}  sparsity mean {np.mean(s):.3f} last {s[-1]:.3f}  "
            f"{time.perf_counter() - start:.0f} s",
            flush=True,
        )

    try:
        act = Activation.from_sparsity(args.family, args.sparsity, args.q_star, args.clip)
        _check_run_args(
            act, args.q_star, args.depth, args.width, args.epochs, args.lr, args.optimizer,
            args.schedule, args.warmup, args.batch_size,
        )  # fmt: skip
        # a bad chi_1 or output gain, refused up front
        initialise(act, args.q_star, [1, 1, 1], chi_1=args.chi1, output_gain=args.output_gain)
        data = load_dataset(
            args.dataset, args.data, train_size=args.train_size, test_size=args.test_size
        )
        _check_memory(data, args.width, args.depth, args.batch_size)
        print(
            f"{act.label()} q*={args.q_star} depth={args.depth} width={args.width} {data.name} "
            f"n_train={data.x_train.shape[0]} {kwargs}",
            flush=True,
        )
        res = train_network(
            act, args.q_star, args.depth, args.width, data, **kwargs,
            checkpoint=args.checkpoint, on_epoch=report, save_params=args.save,
        )  # fmt: skip
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.checkpoint is not None:
        args.checkpoint.unlink(missing_ok=True)
    print(
        f"summary: final test acc {res['test_acc'][-1]:.4f}, best {np.nanmax(res['test_acc']):.4f}, "
        f"diverged {bool(res['diverged'])} at epoch {int(res['diverged_epoch'])}, "
        f"{time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
