"""Training deep sparse networks on real data, initialised at the Edge of Chaos (optional extra
``[train]``: JAX, optax, scikit-learn).

- :mod:`simulate.train.init`: the public initialiser (numpy arrays, a JAX pytree, a PyTorch recipe);
- :mod:`simulate.train.data`: the datasets (scikit-learn's digits, Fashion-MNIST from IDX files);
- :mod:`simulate.train.options`: the optimiser and schedule names a spec may use (no JAX);
- :mod:`simulate.train.model`: the JAX forward pass, loss, optimiser and jitted epoch;
- :mod:`simulate.train.run`: one training run -> per-epoch numpy arrays (``train_network``).

Only :mod:`simulate.train.model` imports JAX at import time (``Initialisation.pytree`` and
``train_network`` import it when called); in a worker process that will train, call
:func:`limit_cpu_threads` before either.
"""

from __future__ import annotations

import os
import sys

XLA_THREAD_FLAGS = ("--xla_cpu_multi_thread_eigen=false", "intra_op_parallelism_threads=1")
"""XLA flags that keep one JAX computation on one CPU thread (so that n joblib workers use n cores)."""


def limit_cpu_threads() -> None:
    """Cap XLA's CPU thread pool at one thread per process, by adding :data:`XLA_THREAD_FLAGS` to the
    ``XLA_FLAGS`` environment variable.

    XLA reads the variable once, when JAX starts, so this must run before ``jax`` is imported in the
    process (a sweep calls it at the top of each worker). Raises RuntimeError if JAX is already
    imported without the flags; calling it again once they are set is a no-op.
    """
    flags = os.environ.get("XLA_FLAGS", "").split()
    missing = [f for f in XLA_THREAD_FLAGS if f not in flags]
    if not missing:
        return
    if "jax" in sys.modules:
        raise RuntimeError(
            "limit_cpu_threads: jax is already imported, so XLA_FLAGS can no longer change; "
            "call it before importing jax or simulate.train.model"
        )
    os.environ["XLA_FLAGS"] = " ".join([*flags, *missing])
