"""Finite-width Monte Carlo: push inputs and a tangent through random networks, layer by layer.

One entry point, :func:`run_cell` (:mod:`simulate.engines.run`), over the registered engines
(:mod:`simulate.engines.registry`: the interface, and how to add one):

- ``"gram"`` (:mod:`simulate.engines.gram`): the exact conditional-Gaussian sampler,
  O(N (B+1)^2 + (B+1)^3) per layer;
- ``"dense"`` (:mod:`simulate.engines.dense`): explicit N x N Gaussian weights, O(N^2 (B+1));
- ``"sparse"`` (:mod:`simulate.engines.sparse`): draws only the units on sloped pieces, B <= 2;
- ``"auto"``: the cheapest engine that supports the cell, by each engine's cost model.

gram and dense share the Numba layer loop of :mod:`simulate.engines.propagate`, which registers
them; every other engine module registers itself. Importing this package registers every engine
shipped with it (the imports below); an engine from elsewhere calls ``register`` itself.
"""

from simulate.engines import propagate, sparse  # noqa: F401  (register their engines)
from simulate.engines.registry import (
    AUTO,
    ENGINES,
    OBSERVABLES,
    Engine,
    Outputs,
    Problem,
    engine_names,
    register,
    select_engine,
)
from simulate.engines.run import ESCAPE_OBSERVABLES, MAX_BAND, run_cell

__all__ = [
    "AUTO",
    "ENGINES",
    "ESCAPE_OBSERVABLES",
    "MAX_BAND",
    "OBSERVABLES",
    "Engine",
    "Outputs",
    "Problem",
    "engine_names",
    "register",
    "run_cell",
    "select_engine",
]
