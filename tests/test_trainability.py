"""``analysis.trainability`` on a planted study: a ReLU store (chi_1 = 0.9 and 1) and a CReLU store
(chi_1 = 1 and 1.25), accuracies set by hand. The reference depth, the predicted stop depths
against values computed independently (normal probabilities, the GP correlation map on a grid),
the report and figures end to end, and bad input as one line with exit status 2."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import trainability
from analysis._store import open_dataset
from analysis.training import StudyTables, TrainingResults
from simulate import schema
from simulate.activations import Activation

REPO = Path(__file__).resolve().parents[1]
DEPTHS = [2, 4, 8]
ACC = {  # (family sparsity, chi1) -> final test accuracy at depths 2, 4, 8
    ("relu", 0.9): (0.80, 0.79, 0.60),
    ("relu", 1.0): (0.81, 0.80, 0.70),
    ("crelu", 1.0): (0.795, 0.50, 0.10),
    ("crelu", 1.25): (0.80, 0.795, 0.30),
}


WIDE = {("crelu", 1.0): (0.80, 0.78, 0.40)}
"""The same at width 64 (the width slice; the maps are at width 16)."""


def _fill(spec, cell) -> dict:
    name = "relu" if cell.activation.tau == 0 else "crelu"
    final = (WIDE if cell.width == 64 else ACC)[(name, cell.chi1)][DEPTHS.index(cell.depth)]
    return {"test_acc": np.array([0.1, final / 2, final], "float32")}


def _store(path: Path, width: int = 16, **values) -> Path:
    ds = schema.synthetic_store(
        _fill, experiment="train", family="crelu", q_star=1.0, width=width, depth=DEPTHS,
        run_seed=0, epochs=2, **values,
    )  # fmt: skip
    ds.to_zarr(path)
    return path


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("study")
    relu = _store(folder / "relu.zarr", sparsity=0.5, clip="inf", chi1=[0.9, 1])
    crelu = _store(folder / "crelu.zarr", sparsity=0.85, clip=1.0, chi1=[1, 1.25])
    return [relu, crelu]


@pytest.fixture(scope="module")
def tables(study):
    return StudyTables([TrainingResults(open_dataset(p), p) for p in study])


@pytest.mark.slow
def test_the_baseline_sets_the_reference_depth_and_each_prediction(tables):
    """ReLU at chi_1 = 1 is best at 0.81; within 0.02 down to depth 4: L_ref = 4. H6 predicts
    4 r_ReLU / r = 4 * 2 p at the CReLU (p = P(tau < z < tau + m), slopes in {0, 1}); H1 the first
    depth where the CReLU's 1 - c^L, iterated on a grid, falls to ReLU's at depth 4."""
    link = trainability.study_table(tables)
    pred = trainability.predictions(tables, link, 0.02, max_depth=40)
    assert pred.attrs["l_ref"] == 4 and pred.attrs["best"] == pytest.approx(0.81, abs=1e-6)
    act = Activation.from_sparsity("crelu", 0.85, 1.0, 1.0)
    p = stats.norm.cdf(act.tau + 1.0) - stats.norm.cdf(act.tau)
    crelu = pred[(pred["activation"] == "CReLU s=0.85 m=1") & (pred["chi1"] == 1.0)].iloc[0]
    assert crelu["H6_depth"] == pytest.approx(4 * 2 * p, rel=1e-9)
    relu_gap = _grid_gaps(Activation.relu(), 2.0, 0.0, 4)[-1]
    crelu_row = link[(link["family"] == "crelu") & (link["sparsity"] == 0.85)].iloc[0]
    sw2, sb2 = _variances(tables, crelu_row)
    gaps = _grid_gaps(act, sw2, sb2, 12)
    expected = next(d for d, g in enumerate(gaps, start=1) if g <= relu_gap)
    assert crelu["H1_depth"] == expected
    assert crelu["deepest_trained"] == 2  # 0.795 >= 0.81 - 0.02 only at depth 2
    chaotic = pred[(pred["activation"] == "CReLU s=0.85 m=1") & (pred["chi1"] == 1.25)].iloc[0]
    assert chaotic["deepest_trained"] == 4 and math.isfinite(chaotic["six_xi_c"])


def _variances(tables, row) -> tuple[float, float]:
    tr = tables.parts[1].tr
    key = {d: row[d] for d in tr.param_dims}
    return tuple(float(tr.ds[v].sel(key)) for v in ("sigma_w2", "sigma_b2"))


def _grid_gaps(act, sigma_w2, sigma_b2, depth, h=0.004, z_max=8.0) -> list[float]:
    """1 - c^l for l = 1..depth from c^0 = 1/2 at q* = 1, each step of the correlation map by the
    trapezoid rule on a grid (independent of gp's closed forms)."""
    z = np.arange(-z_max, z_max + h / 2, h)
    w = np.exp(-(z**2) / 2) / math.sqrt(2 * math.pi) * h
    c, gaps, u = 0.5, [], act(z)
    for _ in range(depth):
        v = act(c * z[:, None] + math.sqrt(1 - c * c) * z[None, :])
        c = sigma_w2 * float(w @ (u[:, None] * v) @ w) + sigma_b2
        gaps.append(1 - c)
    return gaps


def test_rank_correlations_over_all_and_on_the_edge(tables):
    """Over the 12 configurations and the 6 at chi_1 = 1; rho of the Jacobian spread by hand."""
    link = trainability.study_table(tables)
    rho = trainability.rank_correlations(link)
    row = rho[(rho["configurations"] == "EoC") & rho["predictor"].str.startswith("H6")].iloc[0]
    eoc = link[link["chi1"] == 1.0]
    expected = stats.spearmanr(eoc["jacobian_spread"], eoc["test_acc"])[0]
    assert row["n"] == 6 and row["rho"] == pytest.approx(expected, abs=1e-12)
    assert set(rho["configurations"]) == {"all", "EoC"}


@pytest.fixture(scope="module")
def wide(study, tmp_path_factory) -> Path:
    """CReLU at chi_1 = 1 again, at width 64."""
    path = tmp_path_factory.mktemp("wide") / "wide.zarr"
    return _store(path, width=64, sparsity=0.85, clip=1.0, chi1=[1])


def test_the_width_slice(study, wide):
    """The configurations measured at two widths (CReLU at chi_1 = 1), with the planted accuracies
    and the log-gain spread, which at 4 times the width is half (1/sqrt(N)); L r the same. The maps
    stay at the study's main width, 16."""
    link = trainability.study_table(
        StudyTables([TrainingResults(open_dataset(p), p) for p in [*study, wide]])
    )
    table = trainability.width_slice(link)
    assert list(table["depth"]) == DEPTHS and set(table["activation"]) == {"CReLU s=0.85 m=1"}
    for depth, narrow, broad in zip(DEPTHS, ACC[("crelu", 1.0)], WIDE[("crelu", 1.0)], strict=True):
        row = table[table["depth"] == depth].iloc[0]
        (acc16, sd16), (acc64, sd64) = (
            (float(x) for x in row[f"width {w}"].replace("(", "").replace(")", "").split())
            for w in (16, 64)
        )
        assert (acc16, acc64) == (pytest.approx(narrow, abs=5e-4), pytest.approx(broad, abs=5e-4))
        assert sd64 == pytest.approx(sd16 / 2, abs=0.006)  # (two decimals printed)
    assert trainability.main_width(link) == 16


def test_a_learning_rate_search_stays_out_of_the_maps(study, tmp_path):
    """CReLU at chi_1 = 1 also run at lr 0.3 (the study's other runs at 1e-3, the default):
    the map's configurations are those at the main learning rate, and the learning-rate slice
    holds both accuracies (here the same planted ones)."""
    search = _store(tmp_path / "lr.zarr", sparsity=0.85, clip=1.0, chi1=[1], lr=0.3)
    link = trainability.study_table(
        StudyTables([TrainingResults(open_dataset(p), p) for p in [*study, search]])
    )
    lr = trainability.main_lr(link)
    assert lr != 0.3 and (link["lr"] == 0.3).sum() == len(DEPTHS)
    rates = trainability.lr_slice(link)
    assert list(rates["depth"]) == DEPTHS and set(rates["chi1"]) == {1.0}
    planted = [f"{a:.3f}" for a in ACC[("crelu", 1.0)]]
    assert list(rates[f"lr {lr:g}"]) == planted and list(rates["lr 0.3"]) == planted


@pytest.mark.slow
def test_report_end_to_end(study, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "analysis.trainability", *map(str, study), "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = (out / "report.md").read_text()
    assert "L_ref = 4" in text and "| 1.25 | 0.800 | 0.795 | 0.300 |" in text
    for name in ("trainability_map", "trainability_predictors"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 10_000


@pytest.mark.slow
def test_a_study_without_the_baseline_is_one_line(study, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "analysis.trainability", str(study[1]), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "ReLU baseline" in result.stderr
    assert not (tmp_path / "report.md").exists()


def test_the_activation_labels():
    row = {"family": "cst", "sparsity": 0.9, "clip": math.inf, "q_star": 4.0}
    assert trainability.activation_label(row) == "ST_tau s=0.9 q*=4"
    assert trainability.activation_label(pd.Series({**row, "clip": 0.59, "q_star": 1.0})) == (
        "CST s=0.9 m=0.59"
    )
