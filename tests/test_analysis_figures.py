"""The figures on synthetic stores: one facet per q* (never an average over q*), partial stores
said to be partial, stores where nothing escapes. Figures are built and inspected, not rendered."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.patches import Rectangle
from synthetic import make_store, plant_jumps

from analysis import figures
from analysis._store import Results
from analysis.instability import stability_table, theory_window
from analysis.tables import Tables


@pytest.fixture
def drawn(monkeypatch, tmp_path):
    """Replace ``figures._save``: keep each figure (by name) instead of rendering it."""
    kept = {}

    def keep(fig, out, name):
        kept[name] = fig
        return [tmp_path / f"{name}.png"]

    monkeypatch.setattr(figures, "_save", keep)
    yield kept
    plt.close("all")


@pytest.fixture(scope="module")
def two_q_stars():
    """crelu s = 0.8, m in {1, 3, inf}, q* in {1, 4}, N = 100. m = 3 is bistable at q* = 1
    (gp.max_stable_clip = 2.12 sqrt(q*)) and 40 of 64 networks are planted at the upper fixed
    point there; at q* = 4 it is inside the window (3 / sqrt(4) = 1.5) and every network stays."""
    return Results(
        make_store(
            clips=(1.0, 3.0, math.inf),
            q_stars=(1.0, 4.0),
            widths=(100,),
            depth=30,
            seed=30,
            perturb=plant_jumps(40, 15),
        )
    )


def _texts(ax) -> dict[tuple[int, int], str]:
    """The numbers written in a heat map's cells, by (row, column)."""
    return {
        (round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts
    }


def test_phase_diagram_has_one_row_per_q_star(two_q_stars, drawn, tmp_path):
    """Row q* = 1 shows 24/64 = .38 staying at m = 3, row q* = 4 shows 1 (an average over q* would
    show .69 in both); each row's theory edges are its own q*'s (they scale with sqrt(q*))."""
    figures.fig_phase(two_q_stars, tmp_path, stability_table(two_q_stars))
    axes = [ax for ax in drawn["phase_diagram"].axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == ["crelu, q* = 1, N = 100", "crelu, q* = 4, N = 100"]
    clip_column = 1  # clips 1, 3, inf
    assert _texts(axes[0])[(0, clip_column)] == ".38"
    assert _texts(axes[1])[(0, clip_column)] == "1"
    for ax, q_star in zip(axes, (1.0, 4.0), strict=True):
        upper = next(line for line in ax.lines if line.get_label() == "theory upper edge")
        m_high = theory_window("crelu", 0.8, q_star).high
        clips = np.array([1.0, 3.0, math.inf])
        assert upper.get_xdata()[0] == pytest.approx(figures._clip_position(clips, m_high))


@pytest.mark.slow
def test_every_figure_of_a_multi_q_star_store_is_faceted_by_q_star(two_q_stars, drawn, tmp_path):
    """Every figure that shows q*-dependent data has a row (or panel, or file) per q*; the
    unclipped cells never escape here, so the survival curves are flat at 1."""
    figures.make_figures(two_q_stars, tmp_path, Tables(two_q_stars))
    assert {"zero_frac_corr_crelu_q1", "zero_frac_corr_crelu_q4"} <= set(drawn)
    for name in ("variance_maps", "trajectories", "correlation_map", "survival"):
        titles = [ax.get_title() for ax in drawn[name].axes if ax.get_visible() and ax.get_title()]
        assert any("q* = 1" in t for t in titles) and any("q* = 4" in t for t in titles), name
    survival = [ax for ax in drawn["survival"].axes if ax.get_title()]
    for ax in survival:
        for line in ax.lines:
            np.testing.assert_array_equal(line.get_ydata(), 1.0)


def test_a_partial_store_says_so_in_its_figures(drawn, tmp_path):
    """The unclipped cell of N = 100 not run: each Monte Carlo figure's title gives 3 of 4 cells
    done, and the phase diagram hatches that cell (and only it)."""
    done = np.ones((1, 1, 2, 1, 2), bool)
    done[0, 0, 1, 0, 0] = False  # clip inf, width 100
    results = Results(make_store(widths=(100, 300), depth=20, seed=31, done=done))
    figures.make_figures(results, tmp_path, Tables(results))
    for name in ("trajectories", "phase_diagram", "survival", "zero_frac_corr_crelu"):
        assert "PARTIAL STORE: 3 of 4 cells done" in drawn[name]._suptitle.get_text(), name
    assert "PARTIAL" not in drawn["variance_maps"]._suptitle.get_text()  # theory only
    axes = [ax for ax in drawn["phase_diagram"].axes if ax.get_title()]
    hatched = [[p for p in ax.patches if isinstance(p, Rectangle) and p.get_hatch()] for ax in axes]
    assert [len(h) for h in hatched] == [1, 0]
    assert hatched[0][0].get_xy() == (0.5, -0.5)  # column 1 (clip inf), row 0
