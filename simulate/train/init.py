"""The public initialiser: a fully connected network at the Edge of Chaos for a chosen q*.

For widths (d, N_1, ..., N_L, C): L hidden layers h^l = W^l a^{l-1} + b^l, a^l = phi(h^l),
a^0 = x, and the output logits W^{L+1} a^L + b^{L+1}. With (sigma_w^2, sigma_b^2) =
``gp.edge_of_chaos(act, q*)`` (chi_1(q*) = 1 and V(q*) = q*), every entry is independent Gaussian:

    first layer   W^1_ij ~ N(0, sigma_1^2 / d),  sigma_1^2 = (q* - sigma_b^2) / mean(x^2),  b^1_i ~ N(0, sigma_b^2)
    hidden        W^l_ij ~ N(0, sigma_w^2 / N_{l-1}),                                      b^l_i ~ N(0, sigma_b^2)
    output        W_ij   ~ N(0, g sigma_w^2 / N_L),                                        b_i   ~ N(0, g sigma_b^2)

so that E[(h^1_i)^2] = sigma_1^2 |x|^2 / d + sigma_b^2 = q* for an input of mean square
mean(x^2) (``input_ms``; 1 for the normalised datasets of :mod:`simulate.train.data`), and every
later layer starts at the variance fixed point q^l = V(q^{l-1}) = q*. ``output_gain`` g scales the
output layer (g = 1: one more EoC layer, logits of variance q*; g = 0: zero logits at the start).

Weights are stored as (fan_out, fan_in), the layout of ``torch.nn.Linear.weight``, in float32.

Float32 range. Training squares the hidden pre-activations (q^l = mean h^2; variance q* in every
layer), and Adam squares the gradients, whose largest are those of the output layer's error sent back
through the hidden layers: of order g sigma_w^2 E[phi(h)^2] <= g q* (sigma_w^2 E[phi^2] = q* -
sigma_b^2 at the fixed point). With ``TAIL_SD`` = 10 standard deviations as the largest draw, a
network is refused unless

    TAIL_SD^2 max(1, g) q* < float32 max   and   TAIL_SD sqrt(var) < float32 max

for every weight and bias variance var above (one-line ValueError naming ``q_star``, ``output_gain``
or ``input_ms``).
"""

from __future__ import annotations

import itertools
import math
import numbers
from dataclasses import dataclass

import numpy as np

from simulate import gp
from simulate.activations import Activation

FLOAT32_MAX = float(np.finfo(np.float32).max)
TAIL_SD = 10.0
"""The largest draw, in standard deviations, that must stay inside float32 (module docstring)."""


@dataclass(frozen=True)
class Initialisation:
    """Weights (fan_out, fan_in) and biases (fan_out,) of layers 1..L+1, float32, and the variances
    they were drawn with (module docstring)."""

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    q_star: float
    sigma_w2: float
    sigma_b2: float
    sigma_in2: float
    output_gain: float

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.weights[0].shape[1], *(w.shape[0] for w in self.weights))

    def pytree(self) -> dict:
        """The same arrays as a JAX pytree for :mod:`simulate.train.model`, the L - 1 square hidden
        layers stacked for ``lax.scan``: ``w_in`` (N, d), ``b_in`` (N,), ``w_hidden`` (L-1, N, N),
        ``b_hidden`` (L-1, N), ``w_out`` (C, N), ``b_out`` (C,). Needs equal hidden widths."""
        import jax.numpy as jnp

        hidden = self.widths[1:-1]
        if len(set(hidden)) != 1:
            raise ValueError(f"widths={list(self.widths)}: the hidden widths must all be equal")
        n = hidden[0]
        w_hidden = np.stack(self.weights[1:-1]) if len(hidden) > 1 else np.zeros((0, n, n))
        b_hidden = np.stack(self.biases[1:-1]) if len(hidden) > 1 else np.zeros((0, n))
        arrays = {
            "w_in": self.weights[0],
            "b_in": self.biases[0],
            "w_hidden": w_hidden,
            "b_hidden": b_hidden,
            "w_out": self.weights[-1],
            "b_out": self.biases[-1],
        }
        return {k: jnp.asarray(v, dtype=jnp.float32) for k, v in arrays.items()}


def initialise(
    act: Activation,
    q_star: float,
    widths,
    *,
    seed: int | np.random.SeedSequence = 0,
    input_ms: float = 1.0,
    output_gain: float = 1.0,
    chi_1: float = 1.0,
) -> Initialisation:
    """Draw a network of the given widths (d, N_1, ..., N_L, C), L >= 1, at the Edge of Chaos of
    ``act`` for the variance fixed point ``q_star`` (module docstring for the variances).

    ``chi_1`` != 1 leaves the Edge of Chaos at the same fixed point q* (and so the same sparsity):
    (sigma_w^2, sigma_b^2) = ``gp.edge_of_chaos(act, q_star, chi_1)``, ordered for chi_1 < 1,
    chaotic for chi_1 > 1 (ValueError when that needs sigma_b^2 < 0, e.g. ReLU above 1).

    ``seed`` (int >= 0 or SeedSequence) fixes every entry: one ``numpy.random.Generator(PCG64)``,
    layer by layer, weights then biases, drawn in float64 and rounded to float32.

    In PyTorch, with the activation applied between the layers (e.g. ``torch.clamp(h - tau, 0, m)``
    for CReLU), the arrays load into ``nn.Linear`` layers as they are::

        init = initialise(act, q_star, widths)
        layers = [torch.nn.Linear(i, o) for i, o in itertools.pairwise(init.widths)]
        for lin, w, b in zip(layers, init.weights, init.biases): lin.weight.data, lin.bias.data = torch.from_numpy(w), torch.from_numpy(b)
    """
    if not isinstance(act, Activation) or act.batch_shape:
        raise ValueError(f"act={act!r}: must be a single Activation")
    widths = list(widths)
    if len(widths) < 3 or not all(
        isinstance(w, numbers.Integral) and not isinstance(w, bool) and w >= 1 for w in widths
    ):
        raise ValueError(
            f"widths={widths!r}: must be at least 3 integers >= 1 (input, hidden..., output)"
        )
    for name, value, ok in (
        ("q_star", q_star, lambda v: v > 0),
        ("input_ms", input_ms, lambda v: v > 0),
        ("output_gain", output_gain, lambda v: v >= 0),
    ):
        if not isinstance(value, numbers.Real) or not math.isfinite(value) or not ok(value):
            bound = ">= 0" if name == "output_gain" else "> 0"
            raise ValueError(f"{name}={value!r}: must be finite and {bound}")
    eoc = gp.edge_of_chaos(act, q_star, chi_1)
    sigma_w2, sigma_b2 = float(eoc.sigma_w2), float(eoc.sigma_b2)
    sigma_in2 = (q_star - sigma_b2) / input_ms
    variances = _layer_variances(widths, sigma_in2, sigma_w2, sigma_b2, output_gain)
    _check_float32({"q_star": q_star, "output_gain": output_gain, "input_ms": input_ms}, variances)
    seq = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    rng = np.random.Generator(np.random.PCG64(seq))

    weights, biases = [], []
    for (fan_in, fan_out), (w_var, b_var, _) in zip(
        itertools.pairwise(widths), variances, strict=True
    ):
        weights.append(
            (math.sqrt(w_var) * rng.standard_normal((fan_out, fan_in))).astype(np.float32)
        )
        biases.append((math.sqrt(b_var) * rng.standard_normal(fan_out)).astype(np.float32))
    return Initialisation(
        tuple(weights), tuple(biases), float(q_star), sigma_w2, sigma_b2, sigma_in2, output_gain
    )


def _layer_variances(widths, sigma_in2, sigma_w2, sigma_b2, output_gain):
    """Per layer 1..L+1: (weight variance, bias variance, the argument that sets its scale)."""
    n_layers = len(widths) - 1
    out = []
    for l, fan_in in enumerate(widths[:-1]):
        if l == 0:
            out.append((sigma_in2 / fan_in, sigma_b2, "input_ms"))
        elif l < n_layers - 1:
            out.append((sigma_w2 / fan_in, sigma_b2, "q_star"))
        else:
            out.append((output_gain * sigma_w2 / fan_in, output_gain * sigma_b2, "output_gain"))
    return out


def _check_float32(values: dict, variances) -> None:
    """One-line ValueError, naming the argument in ``values`` to blame, for a network that would
    overflow float32 in training (module docstring)."""
    limit = FLOAT32_MAX / TAIL_SD**2
    q_star, gain = values["q_star"], values["output_gain"]
    for name, scale in (("q_star", q_star), ("output_gain", max(1.0, gain) * q_star)):
        if not scale < limit:
            raise ValueError(
                f"{name}={values[name]!r}: overflows float32 in training ({TAIL_SD:g}^2 max(1, "
                f"output_gain) q_star = {TAIL_SD**2 * scale:.3g}); max(1, output_gain) q_star "
                f"must be < {limit:.3g}"
            )
    for l, (w_var, b_var, name) in enumerate(variances, start=1):
        sd = math.sqrt(max(w_var, b_var))
        if not TAIL_SD * sd < FLOAT32_MAX:
            raise ValueError(
                f"{name}={values[name]!r}: overflows float32 in layer {l}'s weights or biases "
                f"(standard deviation {sd:.3g}; must be < {FLOAT32_MAX / TAIL_SD:.3g})"
            )
