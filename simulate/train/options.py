"""What a training spec may ask of the engine, answered without starting JAX: the names of its
optimisers and learning-rate schedules, and whether its extra is installed.

:mod:`simulate.spec` checks a spec's ``optimizer`` and ``schedule`` fields against these tuples and
refuses a training spec when :func:`missing_modules` is not empty; :mod:`simulate.train.model`
implements the names. Nothing here imports JAX, so that parsing a spec does not start it.
"""

import importlib.util

OPTIMIZERS = ("adam", "sgd")
"""``adam``: optax.adam (b1 0.9, b2 0.999, eps 1e-8); ``sgd``: SGD with heavy-ball momentum."""
SCHEDULES = ("constant", "cosine")
"""Learning rate after a linear warm-up from 0: constant, or cosine decay to 0 at the last step."""

EXTRA_MODULES = ("jax", "optax")
"""The modules of the optional extra ``[train]`` that training needs beyond the base install."""


def missing_modules() -> list[str]:
    """The modules of :data:`EXTRA_MODULES` that are not installed, found without importing them
    (``importlib.util.find_spec`` is None)."""
    return [name for name in EXTRA_MODULES if importlib.util.find_spec(name) is None]
