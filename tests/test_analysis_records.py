"""The analysis of what a sweep recorded: thinned stores (every k-th layer), summary-only stores,
stores of many inputs, and the empirical correlation map; and that a store is read cell by cell.

The stores are real Monte Carlo (``schema.synthetic_store`` with ``grid.simulate_cell``): the engine
runs every layer whatever it records, with the same random stream, so a thinned or summary store
holds exactly the full store's values at what it kept."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis import _store, figures, fit, instability, report
from analysis._store import PER_LAYER_ONLY, Results
from analysis.tables import Tables
from simulate import gp, grid, schema

SWEEP = {"depth": 30, "width": [48], "clip": [1, 3, "inf"], "nets": 8}
"""CReLU s = 0.8: m = 1 inside the window, m = 3 bistable, unclipped escaping (two networks escape,
at layers 13 and 11, which a store of every 4th layer does not record)."""


@pytest.fixture(scope="module")
def stores() -> dict[str, Results]:
    return {
        "full": Results(schema.synthetic_store(grid.simulate_cell, **SWEEP)),
        "thin": Results(schema.synthetic_store(grid.simulate_cell, record_every=4, **SWEEP)),
        "summary": Results(schema.synthetic_store(grid.simulate_cell, record="summary", **SWEEP)),
    }


@pytest.fixture
def no_saving(monkeypatch):
    """Figures drawn but not written (the names they would have)."""

    def save(fig, out, name):
        figures.plt.close(fig)
        return [out / f"{name}.png"]

    monkeypatch.setattr(figures, "_save", save)


def test_escape_and_fate_tables_are_those_of_the_full_store(stores):
    """Escape layers are per-network scalars and the fates read the per-network summaries: the
    thinned and the summary store give the full store's escape, stability and jump tables, though
    the escapes (layers 13, 11) fall between recorded layers."""
    full = Tables(stores["full"])
    assert (stores["full"].ds["escape_layer"] >= 0).sum() == 2
    for name in ("thin", "summary"):
        other = Tables(stores[name])
        for table in ("escape", "stability", "jumps", "phase_mc"):
            got, want = getattr(other, table), getattr(full, table)
            assert len(want) and got.equals(want), (name, table)


def test_a_thinned_store_is_tested_at_its_recorded_layers(stores):
    """The per-layer comparison of a store of layers 0, 4, ..., 28, 30 is the full store's at
    those layers (by layer number, not position), statistic by statistic."""
    thin = stores["thin"]
    assert list(thin.layers) == [0, 4, 8, 12, 16, 20, 24, 28, 30]
    for key in (c.key for c in thin.cells(("escape_layer",))):
        got = fit.compare_cell(thin.cell(key), thin.depth, thin.pair_c0)
        full = stores["full"]
        want = fit.compare_cell(full.cell(key), full.depth, full.pair_c0).sel(layer=thin.layers)
        for name in ("v_mc_mean", "v_mc_sd", "zf_mc_mean", "z_v_mean", "z_zero_frac", "z_gain"):
            np.testing.assert_allclose(got[name], want[name], rtol=1e-12, err_msg=name)
    assert stores["thin"].depth == 30 and fit.fit_table(thin)["agrees"].iloc[0]


def test_a_summary_store_reports_what_it_cannot_compute(stores, no_saving, tmp_path):
    """No per-layer records: no fit table; the report says so in one line per skipped item, draws
    only the figures that need no layers, and has the escape and phase tables."""
    summary = stores["summary"]
    assert not summary.per_layer and fit.fit_table(summary).empty
    text = report.build_report(summary, "s.zarr", tmp_path / "report.md")
    skipped = [line for line in text.splitlines() if line.startswith("- Not computed:")]
    assert len(skipped) == len(PER_LAYER_ONLY) - 1  # the off-EoC gain does not apply
    assert all(line.endswith("it needs per-layer records.") for line in skipped)
    drawn = {line[2 : line.index("]")] for line in text.splitlines() if line.startswith("![")}
    assert drawn == {"variance_maps", "phase_diagram", "escape_width", "survival"}
    assert "### Escape statistics" in text and "### Fit verdicts" not in text


@pytest.fixture(scope="module")
def many_inputs() -> Results:
    """B = 3 inputs with pair correlations 0.1, 0.5, 0.9 at N = 256, clipped CReLU (m = 1)."""
    ds = schema.synthetic_store(
        grid.simulate_cell,
        depth=12,
        width=[256],
        clip=[1],
        nets=16,
        inputs=3,
        input_corr=[0.1, 0.5, 0.9],
    )
    return Results(ds)


def test_each_pair_follows_its_own_gp_iterate(many_inputs):
    """Three pairs started at 0.1, 0.5 and 0.9: the per-pair test compares each with the GP
    iterate from its own c0, and the mean correlation stays within 0.02 of it at every layer
    (against 0.4 for a shared c0)."""
    cell = next(many_inputs.cells())
    assert list(many_inputs.pair_c0) == [0.1, 0.5, 0.9]
    comparison = fit.compare_cell(cell, many_inputs.depth, many_inputs.pair_c0)
    assert comparison["z_corr"].dims == ("layer", "pair") and comparison.sizes["pair"] == 3
    np.testing.assert_allclose(comparison["corr"].isel(layer=0), [0.1, 0.5, 0.9])
    deviation = np.abs(comparison["corr_mc_mean"] - comparison["corr"])
    assert float(deviation.max()) < 0.02
    assert fit.fit_table(many_inputs)["corr_max_dev"].iloc[0] < 0.02


def test_the_empirical_correlation_map_lies_on_the_gp_map():
    """B = 8 equicorrelated inputs (c0 = 0.5, 28 pairs), clipped CReLU at N = 400: in every bin of
    1 - c^l holding 50 points or more, the binned mean of 1 - c^(l+1) is within 5% of the GP's
    1 - R(c^l) averaged over the bin's points (R by quadrature, interpolated in ln(1 - c); the naive
    standard error of a bin's mean is 1-2%, the points being correlated across pairs and layers
    it is larger), and that average lies inside the bin's 10-90% band."""
    ds = schema.synthetic_store(
        grid.simulate_cell, depth=15, width=[400], clip=[1], nets=8, inputs=8, input_corr=0.5
    )
    results = Results(ds)
    assert results.pairs == 28
    cell = next(results.cells())
    before, after, step = figures.correlation_steps(cell)
    assert step == 1 and before.size == 28 * 8 * 15
    edges = np.geomspace((1 - before).min(), (1 - before).max() * 1.001, 8)
    gaps = np.geomspace(edges[0], edges[-1], 300)
    r_gap = gp.correlation_gap(cell.act, gaps, cell.q_ref, cell.sigma_w2, cell.sigma_b2)
    predicted = 1 - np.interp(np.log(1 - before), np.log(gaps), r_gap)  # R(c^l), point by point
    mean, lo, hi, n = figures.binned_map(before, after, edges)
    theory = figures.binned_map(before, predicted, edges)[0]
    full = n >= 50
    assert full.sum() >= 5
    np.testing.assert_allclose(mean[full], theory[full], rtol=0.05)
    assert np.all((lo[full] <= theory[full]) & (theory[full] <= hi[full]))


def test_binned_map_of_planted_points():
    """Points on 1 - c' = (1 - c) / 2 exactly: each bin's mean is half the mean gap of its points,
    its quantiles those of the halves; a bin with fewer than MIN_IN_BIN points is blank."""
    before = 1 - np.geomspace(1e-4, 1e-1, 400)
    gap = 1 - before  # as binned_map computes it
    after = 1 - gap / 2
    edges = np.array([1e-4, 1e-3, 1e-2, 0.1 + 1e-9, 1.0])
    mean, lo, hi, n = figures.binned_map(before, after, edges)
    for b in range(3):
        inside = gap[(gap >= edges[b]) & (gap < edges[b + 1])]
        assert n[b] == inside.size
        np.testing.assert_allclose(mean[b], inside.mean() / 2)
        np.testing.assert_allclose([lo[b], hi[b]], np.quantile(inside / 2, [0.1, 0.9]))
    assert n[3] == 0 and math.isnan(mean[3])


def test_a_store_is_read_a_block_of_cells_at_a_time(stores, monkeypatch):
    """Results keeps the cell variables lazy (on a zarr store, opened lazily) and a table reads only
    the variables it names (the escape table: escape_layer alone), a block of neighbouring cells of
    at most CELL_BLOCK bytes per read: the whole small store in one read, and one read per cell when
    the budget is one cell's bytes."""
    results = stores["full"]
    read: list[tuple] = []
    original = results._read

    def spy(data):
        read.append(tuple(sorted(n for n in data.data_vars if n in results.cell_variables)))
        return original(data)

    monkeypatch.setattr(results, "_read", spy)
    instability.escape_table(results)
    assert read == [("escape_layer",)]
    read.clear()
    escape = results.ds["escape_layer"]
    monkeypatch.setattr(_store, "CELL_BLOCK", escape.dtype.itemsize * escape.sizes["net"])
    instability.escape_table(results)
    assert read == [("escape_layer",)] * results.n_done
