"""The figure and report commands end to end on tiny real sweeps from ``python -m simulate.grid``
(the commands' ``main`` in-process; one test through a real interpreter)."""

from __future__ import annotations

import contextlib
import io
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import zarr

from analysis import figures, fit, instability, report
from analysis._store import open_results
from analysis.report import TABLES
from analysis.width_law import applies
from simulate import grid

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, check=check
    )


@pytest.fixture(scope="module")
def eoc_store(tmp_path_factory) -> Path:
    """crelu at sparsity 0.8: clip 1 (inside the window), 3 (bistable), inf; widths 64, 128."""
    out = tmp_path_factory.mktemp("eoc") / "tiny.zarr"
    assert grid.main([
        "--family", "crelu", "--sparsity", "0.8", "--clip", "1,3,inf",
        "--width", "64,128", "--depth", "40", "--nets", "16", "--n-jobs", "1", "--out", str(out),
    ]) == 0  # fmt: skip
    return out


@pytest.fixture(scope="module")
def drawn(eoc_store) -> tuple[list[Path], str]:
    """The figures command on the tiny store, into ``figures/`` beside it: (files, stdout)."""
    out = eoc_store.parent / "figures"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert figures.main([str(eoc_store), "--out", str(out)]) == 0
    return sorted(out.iterdir()), stdout.getvalue()


@pytest.mark.slow
def test_figures_command_writes_every_figure(drawn):
    files, stdout = drawn
    names = {"variance_maps", "trajectories", "zero_frac_corr_crelu", "correlation_map",
             "phase_diagram", "escape_width", "survival"}  # fmt: skip
    for name in names:
        for suffix in (".png", ".pdf"):
            path = files[0].parent / f"{name}{suffix}"
            assert path.stat().st_size > 1000, path
            assert str(path) in stdout


def test_report_command_names_every_table_and_embeds_the_figures(
    eoc_store, drawn, capsys, monkeypatch
):
    """Every table of an Edge-of-Chaos store (the width law in its asymptotic regime needs more
    widths than the two here: left out, as the report leaves it out), and the figures embedded
    (those the figures command drew into the same place: not drawn twice)."""
    monkeypatch.setattr(report, "make_figures", lambda results, out, tables=None: drawn[0])
    assert report.main([str(eoc_store)]) == 0
    path = eoc_store.parent / "report.md"
    assert capsys.readouterr().out.strip() == str(path)
    text = path.read_text()
    few_widths = not applies(open_results(eoc_store))
    for key, (heading, command) in TABLES.items():
        if key == "sigma" or (few_widths and key in ("asymptotic", "local")):
            continue  # off-EoC stores only; 4 widths or more
        assert f"### {heading}" in text
        assert "python -m " + command.format(store=str(eoc_store)) in text
    embedded = [line for line in text.splitlines() if line.startswith("![")]
    assert len(embedded) == sum(p.suffix == ".png" for p in drawn[0])
    for line in embedded:
        target = line[line.index("(") + 1 : line.index(")")]
        assert (path.parent / target).stat().st_size > 1000


def test_clipped_cell_inside_the_window_agrees_with_theory(eoc_store):
    """The real engine at m = 1 (V'(q*) = 0.56, deep inside the window) passes the fit at both
    widths (family-wise 1%); the unclipped cells do not."""
    table = fit.fit_table(open_results(eoc_store)).set_index(["clip", "width"])
    assert table.loc[1.0, "agrees"].all()
    assert not table.loc[math.inf, "agrees"].any()


def test_off_eoc_sweep_gets_the_sigma_diagram(tmp_path):
    store = tmp_path / "sigma.zarr"
    assert grid.main([
        "--family", "crelu", "--tau", "0.5", "--clip", "2",
        "--sigma-w2", "1:6:3", "--sigma-b2", "0,0.5", "--width", "64", "--depth", "20",
        "--nets", "8", "--n-jobs", "1", "--out", str(store),
    ]) == 0  # fmt: skip
    assert report.main([str(store), "--out", str(tmp_path / "r" / "report.md")]) == 0
    assert "sigma_phase.png" in (tmp_path / "r" / "report.md").read_text()
    assert (tmp_path / "r" / "figures" / "sigma_phase.png").stat().st_size > 1000
    # off the EoC there is no q* to stay at, upper fixed point or instability width law
    results = open_results(store)
    assert instability.stability_table(results).empty and instability.jump_table(results).empty
    assert all(table.empty for table in instability.width_law(results))


@pytest.mark.slow
def test_bad_input_exits_2_with_one_line(tmp_path):
    """Through a real interpreter (the other commands share run_cli, see test_analysis.py)."""
    run = _run("analysis.figures", str(tmp_path / "missing.zarr"), check=False)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "no such results store" in run.stderr


@pytest.mark.slow
def test_an_interrupted_sweep_is_reported_partial_and_its_commands_finish_it(
    eoc_store, tmp_path, monkeypatch
):
    """Two cells of a real store unmarked (as a sweep killed before writing them leaves it): the
    report (its tables; the figures of a partial store have their own test) says 4 of 6 cells
    done, and the two commands it prints finish the sweep."""
    store = tmp_path / "interrupted.zarr"
    shutil.copytree(eoc_store, store)
    flags = zarr.open_array(store / "cell_done", mode="r+")
    flags[0, 0, 2, 0, :] = False  # clip inf at both widths
    out = tmp_path / "report.md"
    monkeypatch.setattr(report, "make_figures", lambda results, out, tables=None: [])
    assert report.main([str(store), "--out", str(out)]) == 0
    text = out.read_text()
    assert "**Partial store: 4 of 6 cells done.**" in text
    lines = [line.strip() for line in text.splitlines()]
    first = next(i for i, line in enumerate(lines) if "attrs['spec']" in line)
    commands = lines[first : first + 2]
    assert commands[1].startswith("python -m simulate.grid")
    for command in commands:
        subprocess.run(
            command.replace("python ", f"{sys.executable} ", 1), shell=True, cwd=ROOT, check=True
        )
    assert open_results(store).n_done == 6
