"""The report on synthetic stores: a partial store's report says what is missing and how to finish
it, every table is computed once, a store with no finished cell still gets a report."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic import make_store

from analysis import figures, fit, instability, phase, report, tables
from analysis._store import Results


@pytest.fixture
def no_figures(monkeypatch):
    """The report without drawing (the figures have their own tests)."""
    monkeypatch.setattr(report, "make_figures", lambda results, out, tables=None: [])


def test_a_partial_report_opens_with_what_is_missing(no_figures, tmp_path):
    """Unclipped cells at N = 100 and 300 not run: the report says 2 of 4 done before anything
    else, lists the missing parameter point with both widths, gives the two commands that finish
    the sweep (the spec out of the store, the sweep on it) and does not claim a wall time."""
    done = np.ones((1, 1, 2, 1, 2), bool)
    done[0, 0, 1] = False  # clip inf, both widths
    results = Results(make_store(widths=(100, 300), depth=10, nets=8, seed=40, done=done))
    store = str(tmp_path / "s.zarr")
    lines = report.build_report(results, store, tmp_path / "report.md").splitlines()
    assert lines[2].startswith("**Partial store: 2 of 4 cells done.**")
    assert "- family=crelu sparsity=0.8 clip=inf q_star=1: width 100, 300" in lines
    spec_file = str(tmp_path / "s.spec.toml")
    assert f"    python -m simulate.grid {spec_file} --out {store}" in lines
    extract = next(line for line in lines if "attrs['spec']" in line)
    assert extract.strip().endswith(f"> {spec_file}") and store in extract
    assert "simulation wall time not recorded" in "\n".join(lines)


def test_a_complete_report_has_no_partial_note(no_figures, tmp_path):
    results = Results(make_store(widths=(100,), depth=10, nets=8, seed=41))
    text = report.build_report(results, "s.zarr", tmp_path / "report.md")
    assert "Partial" not in text and "simulate.grid" not in text.split("## Summary")[0]


def test_a_store_with_no_finished_cell_gets_a_report(no_figures, tmp_path):
    results = Results(make_store(widths=(100,), depth=10, nets=8, seed=42, done=False))
    text = report.build_report(results, "s.zarr", tmp_path / "report.md")
    assert "**Partial store: 0 of 2 cells done.**" in text
    assert "_(no finished cell to summarise)_" in text


def test_every_table_is_computed_once(monkeypatch, tmp_path):
    """Building the report (figures included) runs each table function once, though the width law
    feeds a table, the summary and a figure, the network table (escapes and fates: one read of
    the cells) three tables, and the stability table three tables and a figure."""
    calls = {}
    names = (
        "start_fit_table",
        "start_network_table",
        "escape_table",
        "width_law",
        "stability_table",
        "clip_window",
    )
    for name in names:
        original = getattr(tables, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            calls[_name] = calls.get(_name, 0) + 1
            return _original(*args, **kwargs)

        for module in (tables, fit, instability, phase, figures):  # wherever it may be called
            if hasattr(module, name):
                monkeypatch.setattr(module, name, counted)
    monkeypatch.setattr("analysis.figures._save", lambda fig, out, name: [out / f"{name}.png"])
    results = Results(make_store(widths=(100, 300), depth=10, nets=8, seed=43))
    report.build_report(results, "s.zarr", tmp_path / "report.md")
    assert calls == dict.fromkeys(names, 1)
