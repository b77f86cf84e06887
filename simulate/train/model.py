"""The JAX network: phi from the activation description, the forward pass, the loss, the optimiser
and one jit-compiled training epoch (float32, CPU).

Network (widths d, N x L, C; parameters from :meth:`simulate.train.init.Initialisation.pytree`):

    h^1 = W^1 x + b^1,   h^{l+1} = W^{l+1} phi(h^l) + b^{l+1}  (l = 1..L-1, one ``lax.scan``),
    logits = W^{L+1} phi(h^L) + b^{L+1},   loss = mean over the batch of -log softmax(logits)_y.

phi is evaluated from the arrays of ``act.pieces`` (see :mod:`simulate.activations`): on piece p,
i.e. breaks[p-1] <= x < breaks[p], phi(x) = anchor_y[p] + slope[p] (x - anchor_x[p]), and on a flat
piece (slope 0) exactly anchor_y[p], so zeros are exact zeros. It is a chain of ``jnp.where`` over
the breaks, so autodiff gives phi'(x) = slope[p], the kernels' convention (the right slope at a
break). The arrays are arguments of the jitted functions, not constants in them: runs with the same
shapes and optimiser settings reuse one compiled program, whatever the activation.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from simulate.activations import Activation
from simulate.train.options import OPTIMIZERS, SCHEDULES


def pieces_of(act: Activation) -> tuple[jax.Array, ...]:
    """(breaks, anchor_x, anchor_y, slope) of ``act.pieces`` as float32 arrays."""
    p = act.pieces
    return tuple(jnp.asarray(v, jnp.float32) for v in (p.breaks, p.anchor_x, p.anchor_y, p.slope))


def phi(x, pieces):
    """phi(x) elementwise from the piece arrays (module docstring)."""
    breaks, anchor_x, anchor_y, slope = pieces

    def piece(i):
        return jnp.where(slope[i] == 0.0, anchor_y[i], anchor_y[i] + slope[i] * (x - anchor_x[i]))

    out = piece(0)
    for i in range(breaks.shape[0]):
        out = jnp.where(x >= breaks[i], piece(i + 1), out)
    return out


def make_phi(act: Activation):
    """phi of ``act`` as a one-argument jnp function."""
    pieces = pieces_of(act)
    return lambda x: phi(x, pieces)


def dense(a, w, b):
    """a @ w.T + b for w in the (fan_out, fan_in) layout, as a dot_general contracting the last axes
    (no transpose is materialised: twice as fast through the scan's backward pass as ``a @ w.T``)."""
    return lax.dot_general(a, w, (((a.ndim - 1,), (1,)), ((), ()))) + b


def forward(params, x, pieces, *, collect: bool = False):
    """Logits of the batch ``x`` (B, d); with ``collect``, also the per-layer statistics of the
    hidden pre-activations h^1..h^L over the batch: q^l = mean_{b,i} (h^l_bi)^2 and the fraction
    of exact zeros in phi(h^l), each an array (L,)."""

    def stats(h, a):
        return jnp.mean(jnp.square(h)), jnp.mean(a == 0.0)

    def layer(h, wb):
        w, b = wb
        a = phi(h, pieces)
        return dense(a, w, b), stats(h, a) if collect else None

    h = dense(x, params["w_in"], params["b_in"])
    h, inner = lax.scan(layer, h, (params["w_hidden"], params["b_hidden"]))
    a = phi(h, pieces)
    logits = dense(a, params["w_out"], params["b_out"])
    if not collect:
        return logits
    q_last, zero_last = stats(h, a)
    q = jnp.concatenate([inner[0], q_last[None]])
    zeros = jnp.concatenate([inner[1], zero_last[None]])
    return logits, q, zeros


def loss_fn(params, x, y, pieces):
    """Mean softmax cross-entropy of the batch."""
    logits = forward(params, x, pieces)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


class OptimizerConfig(NamedTuple):
    """The static part of the optimiser (hashable: one compiled epoch per value); the learning rate
    is a traced argument."""

    name: str
    schedule: str
    total_steps: int
    warmup_steps: int = 0
    momentum: float = 0.9


def make_optimizer(config: OptimizerConfig, lr):
    """An optax optimiser (:data:`OPTIMIZERS`) with the learning-rate schedule (:data:`SCHEDULES`):

    lr_t = lr t / T_w                                     for t < T_w (warm-up; T_w = warmup_steps)
    lr_t = lr, or lr (1 + cos(pi (t - T_w) / (T - T_w))) / 2   after (constant, cosine; T = total)

    ValueError for a name outside those tuples.
    """
    if config.name not in OPTIMIZERS or config.schedule not in SCHEDULES:
        raise ValueError(
            f"config={config}: the optimizer must be one of {', '.join(OPTIMIZERS)} and the "
            f"schedule one of {', '.join(SCHEDULES)}"
        )
    warmup = config.warmup_steps
    if config.schedule == "constant":
        rate = optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup]
        )
    else:
        rate = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, config.total_steps, 0.0)
    if config.name == "adam":
        return optax.adam(rate)
    return optax.sgd(rate, momentum=config.momentum)


@partial(jax.jit, static_argnames="config")
def train_epoch(params, state, x, y, batches, lr, pieces, config: OptimizerConfig):
    """One optimiser step per row of ``batches`` (n_batches, B) of indices into the training set
    (x, y), as a ``lax.scan``. Returns (params, state, losses): the batch losses before each step."""
    optimizer = make_optimizer(config, lr)

    def step(carry, idx):
        params, state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, x[idx], y[idx], pieces)
        updates, state = optimizer.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), loss

    (params, state), losses = lax.scan(step, (params, state), batches)
    return params, state, losses


@jax.jit
def evaluate(params, x, y, pieces):
    """(mean loss, accuracy) over the whole set (x, y)."""
    logits = forward(params, x, pieces)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, jnp.mean(jnp.argmax(logits, axis=-1) == y)


@jax.jit
def probe(params, x, pieces):
    """(q, zero fraction) per hidden layer on the batch ``x`` (``forward`` with collect)."""
    return forward(params, x, pieces, collect=True)[1:]
