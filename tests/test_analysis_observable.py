"""The analysis from the conditional variance v: stores whose q is not recorded (the sparse engine)
and the rule that picks q or v (``analysis._store.Results.observable``)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from synthetic import make_store, plant_escapes

from analysis import fit, instability, report
from analysis._store import Results, open_results
from simulate import grid


def test_a_store_without_q_is_analysed_from_v():
    """q all NaN, v drawn from its 1/N theory (mean q + G1/N, sd sqrt(V4/N)): every cell agrees
    with the theory, and the verdict's variance tests are named after v."""
    results = Results(make_store(widths=(100, 1000), depth=40, seed=11, observable="v"))
    assert np.isnan(results.ds["q"].values).all() and results.observable == "v"
    table = fit.fit_table(results)
    assert table["agrees"].all()
    assert {"max_abs_z_v_mean", "max_abs_z_v_sd"} <= set(table) and "max_abs_z_q_mean" not in table


def test_the_v_spread_test_flags_a_planted_excess_spread():
    """v's deviations from the mean doubled from layer 10 on in one cell: its spread test fails
    there (with the q spread 2 q^2/N of q_hat the same excess in v would be diluted)."""

    def perturb(cell, values, rng):
        if cell.act.clipped and cell.width == 1000:
            v = values["v"][:, 10:]
            values["v"][:, 10:] = v + (v - v.mean(axis=0))

    ds = make_store(widths=(100, 1000), depth=40, seed=6, perturb=perturb, observable="v")
    table = fit.fit_table(Results(ds)).set_index(["clip", "width"])
    row = table.loc[(1.0, 1000)]
    assert not row["agrees"] and (row["first_fail_stat"], row["first_fail_layer"]) == ("v_sd", 10)
    assert table.loc[(1.0, 100), "agrees"]


def test_escapes_and_fates_read_v():
    """Escapes planted on v at layer 7 (v = 30 q*): the escape table, the width law's medians and
    the network fates ("escaped up") find them with q all NaN."""
    ds = make_store(
        widths=(100, 300),
        depth=30,
        nets=16,
        seed=12,
        perturb=plant_escapes(lambda c, r: np.full(16, 7)),
        observable="v",
    )
    results = Results(ds)
    escape = instability.escape_table(results).set_index("clip")
    assert (escape.loc[math.inf, "median_escape"] == 7).all()
    points, _ = instability.width_law(results, n_boot=50)
    assert (points["median_escape"] == 7).all()
    cell = next(results.cells(clip=math.inf))
    assert (instability.network_fates(cell)["fate"] == "escaped up").all()


def test_the_observable_is_what_escapes_were_detected_on():
    """escape_on decides when the store says; otherwise q when it is recorded, else v."""
    both = make_store(widths=(100,), depth=5, nets=4)
    both["v"][...] = 1.0
    both.attrs.pop("escape_on", None)  # a store written before escape_on existed
    assert Results(both).observable == "q"
    both.attrs["escape_on"] = "q"
    assert Results(both).observable == "q"
    both.attrs["escape_on"] = "v"
    assert Results(both).observable == "v"
    assert Results(make_store(widths=(100,), depth=5, nets=4, observable="v")).observable == "v"


@pytest.fixture(scope="module")
def sparse_store(tmp_path_factory) -> Path:
    """A real sparse-engine sweep (q NaN, escapes on v) by the sweep's command line (in-process):
    CReLU s = 0.85, m = 1 and unclipped, N = 64 and 256."""
    path = tmp_path_factory.mktemp("sparse") / "sparse.zarr"
    args = "--family crelu --sparsity 0.85 --clip 1,inf --width 64,256 --depth 60 --nets 16"
    argv = [*args.split(), "--engine", "sparse", "--escape-on", "v", "--n-jobs", "1"]
    assert grid.main([*argv, "--out", str(path)]) == 0
    return path


@pytest.mark.slow
def test_a_sparse_engine_store_gets_its_report(sparse_store, capsys):
    """The report command (in-process) on a store with q all NaN: it names v as its observable,
    fits from v (the clipped cells agree), finds the unclipped escapes and draws the figures."""
    out = sparse_store.parent / "report.md"
    assert report.main([str(sparse_store), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    text = out.read_text()
    assert "**Variance observable: v** (the sweep detected escapes on it" in text
    assert "max_abs_z_v_mean" in text and "max_abs_z_q_mean" not in text
    results = open_results(sparse_store)
    table = fit.fit_table(results).set_index(["clip", "width"])
    assert table.loc[(1.0, 64), "agrees"] and table.loc[(1.0, 256), "agrees"]
    assert (
        instability.escape_table(results).set_index("clip").loc[math.inf, "frac_escaped"] > 0
    ).all()
    for name in ("trajectories", "phase_diagram", "escape_width", "survival"):
        assert (sparse_store.parent / "figures" / f"{name}.png").exists()
