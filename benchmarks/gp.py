"""Speed of the GP theory's closed forms, side by side with the generic quadrature path.

    python benchmarks/gp.py

1. Edge of Chaos + V'(q*) on a 200 x 200 grid of (sparsity, clip m), vectorised closed forms,
   against the same quantities by adaptive quadrature (``gp.gaussian_expectation``) on a random
   subsample of the grid, scaled to the whole grid.
2. ``gp.max_stable_clip`` for 50 sparsities.

The last line is machine-readable:
``eoc_grid_s=X quad_grid_s_est=Y closed_form_speedup=Z max_stable_clip_50_s=W``.
"""

from __future__ import annotations

import math
import time
from functools import partial

import numpy as np

from simulate import gp
from simulate.activations import Activation

SPARSITIES = np.linspace(0.5, 0.95, 200)
CLIPS = np.geomspace(0.1, 10.0, 200)


def closed_form_grid() -> np.ndarray:
    act = Activation.from_sparsity("crelu", SPARSITIES[:, None], 1.0, CLIPS[None, :])
    eoc = gp.edge_of_chaos(act, 1.0)
    return gp.variance_slope(act, 1.0, eoc.sigma_w2)


def quadrature_cell(sparsity: float, m: float) -> float:
    """V'(q*) on the EoC from quadrature: sigma_w^2 = 1 / E[phi'^2], V' = sigma_w^2 E[phi^2 (x^2 - 1)] / 2."""
    act = Activation.from_sparsity("crelu", sparsity, 1.0, m)
    sigma_w2 = 1.0 / gp.gaussian_expectation(act.derivative, 1.0, act.kinks)
    return (
        sigma_w2 * gp.gaussian_expectation(lambda x: act(x) ** 2 * (x * x - 1), 1.0, act.kinks) / 2
    )


def best_of(f, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    closed = best_of(closed_form_grid)
    rng = np.random.default_rng(0)
    sample = [(rng.integers(200), rng.integers(200)) for _ in range(40)]
    slopes = closed_form_grid()

    def quadrature_sample():
        for i, j in sample:
            value = quadrature_cell(SPARSITIES[i], CLIPS[j])
            assert math.isclose(value, slopes[i, j], rel_tol=1e-7, abs_tol=1e-9)

    quad = best_of(quadrature_sample, repeats=2) * SPARSITIES.size * CLIPS.size / len(sample)
    clip_time = best_of(
        lambda: [
            gp.max_stable_clip(partial(Activation.from_sparsity, "crelu", s, 1.0), 1.0)
            for s in np.linspace(0.55, 0.95, 50)
        ],
        repeats=2,
    )
    print(f"{'task':<52}{'seconds':>10}")
    print(f"{'EoC + V-prime, 200 x 200 grid, closed forms':<52}{closed:>10.4f}")
    print(f"{'same by adaptive quadrature (40 cells, scaled)':<52}{quad:>10.1f}")
    print(f"{'max_stable_clip, 50 sparsities':<52}{clip_time:>10.3f}")
    print(
        f"eoc_grid_s={closed:.4f} quad_grid_s_est={quad:.1f} "
        f"closed_form_speedup={quad / closed:.0f} max_stable_clip_50_s={clip_time:.3f}"
    )


if __name__ == "__main__":
    main()
