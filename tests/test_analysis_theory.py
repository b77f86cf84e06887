"""analysis.theory: the store-wide batched theory (``prepare``) against the plain per-cell recursions."""

import math

import numpy as np
from synthetic import make_store

from analysis import theory
from analysis._store import Results
from simulate import gp


def scalar_theory(cell, depth: int, c0: float) -> dict[str, np.ndarray]:
    """The cell's theory the plain way, one scalar call at a time: ``gp.finite_width``, the
    sparsity derivatives and chi_1 along q^l, and c^{l+1} = R(c^l) with ``gp.correlation_map``."""
    fw = gp.finite_width(cell.act, cell.sigma_w2, cell.sigma_b2, cell.q0, depth, 1)
    q = fw["q_gp"].values
    s, ds, d2s = (np.array([gp.sparsity_derivatives(cell.act, x)[i] for x in q]) for i in range(3))
    corr = [c0]
    for _ in range(depth):
        rho = min(max(corr[-1], -1.0), 1.0)
        corr.append(float(gp.correlation_map(cell.act, rho, cell.q0, cell.sigma_w2, cell.sigma_b2)))
    chi1 = [math.nan] + [float(gp.chi1(cell.act, x, cell.sigma_w2)) for x in q[:-1]]
    return {"q_gp": q, "g1": fw["g1"].values, "v4": fw["v4"].values, "s": s, "ds": ds,
            "d2s": d2s, "chi1": np.array(chi1), "corr": np.array(corr)}  # fmt: skip


def test_prepared_theory_equals_the_per_cell_recursions(monkeypatch):
    """``prepare`` (CReLU and CST cells, clipped and not: four piece structures of three cells,
    batched two at a time) gives every cell the theory of the scalar recursions: 1e-13 relative
    for the 1/N coefficients, 1e-10 relative for 1 - c^l (the scalar iterate forms 1 - c from c,
    losing ~1e-16 / (1 - c) a layer). A cell of another store, not prepared, gets the same from
    the per-cell path."""
    depth, c0 = 40, 0.3
    store = make_store(
        families=("crelu", "cst"),
        sparsities=(0.7, 0.8, 0.9),
        clips=(1.0, math.inf),
        widths=(100,),
        nets=4,
        depth=depth,
    )
    other = make_store(sparsities=(0.7,), clips=(2.0,), widths=(100,), depth=depth)
    store.attrs["c0"] = other.attrs["c0"] = c0
    monkeypatch.setattr(theory, "PREPARE_BATCH", 2)
    prepared = theory.prepare(Results(store))
    cells = [*Results(store).cells(read=()), *Results(other).cells(read=())]
    for cell in cells:
        layers = theory.layer_theory(
            cell.act, cell.sigma_w2, cell.sigma_b2, cell.q0, depth, prepared
        )
        corr = theory.cell_theory(cell, depth, c0, prepared)["corr"].values
        expected = scalar_theory(cell, depth, c0)
        for name in theory.LAYER_VARIABLES:
            np.testing.assert_allclose(layers[name].values, expected[name], rtol=1e-13, atol=0)
        np.testing.assert_allclose(1 - corr, 1 - expected["corr"], rtol=1e-10)
