"""Monte Carlo simulation of deep random networks with sparsity-inducing activations."""

from simulate import numba_cache  # noqa: F401  (first: keeps Numba's cache from going stale)
