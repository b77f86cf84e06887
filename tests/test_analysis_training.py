"""The analysis of training stores (``analysis.training``, the report's training section, the
training figures): tables against values computed by hand on a planted store, diverged runs,
the link to a planted Monte Carlo store, the report command end to end, bad input as one line and
exit status 2; and one tiny real training sweep through ``python -m simulate.grid --experiment
train`` and the report (slow).

The planted training store: CReLU at sparsity 0.8, clip 1 and unclipped, q* = 1, width 16, depth 2
and 3, three seeds, two epochs. Accuracies and hidden sparsities are set by hand (``ACC``,
``BASE``); the unclipped depth-2 run of seed 2 diverges at epoch 1.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from analysis import figures, report, training
from analysis._cli import run_cli
from analysis._store import Results, StoreError
from analysis.tables import Tables
from analysis.training import TrainingResults, TrainingTables
from simulate import schema

INF = math.inf
SEEDS = (0, 1, 2)

ACC = {  # (clip, depth) -> final test accuracy of seeds 0, 1, 2 (after epoch 2)
    (1.0, 2): (0.5, 0.6, 0.7),
    (1.0, 3): (0.7, 0.8, 0.9),
    (INF, 2): (0.3, 0.5, None),  # seed 2 diverges at epoch 1, where its test accuracy is 0.1
    (INF, 3): (0.2, 0.2, 0.2),
}
DIVERGED = (INF, 2, 2)  # (clip, depth, seed)

BASE = {2: (0.77, 0.79), 3: (0.76, 0.80, 0.84)}
"""Hidden sparsity per layer at epoch 0, test probe, for seed 1 (depth -> layers); seed s adds
0.01 (s - 1), each epoch adds 0.015, the train probe 0.05. The diverged run: 0 everywhere."""


def _fill(spec, cell) -> dict:
    """The planted arrays of one run (module docstring)."""
    epochs, layers = spec.epochs + 1, max(spec.depth)
    final = ACC[(cell.clip, cell.depth)][cell.run_seed]
    diverged = (cell.clip, cell.depth, cell.run_seed) == DIVERGED
    test_acc = np.array([0.1, 0.1, np.nan]) if diverged else np.array([0.1, final / 2, final])
    base = np.full(layers, np.nan)
    base[: cell.depth] = BASE[cell.depth]
    grow = 0.01 * (cell.run_seed - 1) + 0.015 * np.arange(epochs)[:, None]
    test = base[None, :] + grow  # (epoch, layer)
    sparsity = np.stack([test + 0.05, test], axis=1)  # (epoch, probe = train, test, layer)
    loss = np.array([2.3, 1.5, 1.0])
    if diverged:
        sparsity = np.where(np.isnan(sparsity), np.nan, 0.0)
        sparsity[2] = np.nan
        loss = np.array([2.3, np.inf, np.nan])
    return {
        "test_acc": test_acc.astype("float32"),
        "train_acc": (test_acc + 0.05).astype("float32"),
        "test_loss": loss.astype("float32"),
        "train_loss": loss.astype("float32"),
        "act_sparsity": sparsity.astype("float32"),
        "q": np.where(np.isnan(sparsity), np.nan, 1.0).astype("float32"),
        "diverged": np.array(diverged),
        "diverged_epoch": np.array(1 if diverged else -1, "int32"),
    }


def planted(done=True, clip=(1.0, "inf")) -> xr.Dataset:
    return schema.synthetic_store(
        _fill,
        done=done,
        experiment="train",
        family="crelu",
        sparsity=0.8,
        clip=list(clip),
        q_star=1.0,
        width=16,
        depth=[2, 3],
        run_seed=list(SEEDS),
        epochs=2,
    )


ESCAPES = (0, 1, 2, 5, -1, -1, -1, -1)
"""Escape layers of the 8 unclipped networks of the planted Monte Carlo store (the clipped never
escape)."""


def planted_init() -> xr.Dataset:
    """A Monte Carlo store of the same activations at width 16, depth 10: q = q* throughout, the
    unclipped networks escaping at ``ESCAPES``."""

    def fill(spec, cell):
        escape = np.array(ESCAPES if math.isinf(cell.clip) else (-1,) * spec.nets, "int32")
        q = np.full((spec.nets, spec.depth + 1, 2), cell.q0, "float32")
        return {"q": q, "escape_layer": escape}

    return schema.synthetic_store(
        fill, family="crelu", sparsity=0.8, clip=[1.0, "inf"], width=16, depth=10, nets=8
    )


@pytest.fixture(scope="module")
def tables() -> TrainingTables:
    return TrainingTables(TrainingResults(planted()))


def _row(table, **where) -> dict:
    sel = table[np.logical_and.reduce([(table[k] == v).to_numpy() for k, v in where.items()])]
    assert len(sel) == 1, where
    return sel.iloc[0].to_dict()


# -- tables -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("clip", "depth", "mean", "sd", "best", "n_div"),
    [
        (1.0, 2, 0.6, 0.1, 0.6, 0),
        (1.0, 3, 0.8, 0.1, 0.8, 0),
        # the diverged run counts with its accuracy at epoch 1: (0.3 + 0.5 + 0.1) / 3
        (INF, 2, 0.3, 0.2, 0.3, 1),
        (INF, 3, 0.2, 0.0, 0.2, 0),
    ],
)
def test_accuracy_table(tables, clip, depth, mean, sd, best, n_div):
    row = _row(tables.accuracy, clip=clip, depth=depth)
    assert row["n_runs"] == 3 and row["n_diverged"] == n_div
    assert row["test_acc"] == pytest.approx(mean, abs=1e-6)
    assert row["test_acc_sd"] == pytest.approx(sd, abs=1e-6)
    assert row["train_acc"] == pytest.approx(mean + 0.05, abs=1e-6)
    assert row["best_test_acc"] == pytest.approx(best, abs=1e-6)
    assert len(tables.accuracy) == 4


def test_diverged_runs_are_listed(tables):
    listed = tables.diverged
    assert len(listed) == 1
    row = listed.iloc[0]
    assert (row["clip"], row["depth"], row["run_seed"], row["diverged_epoch"]) == (INF, 2, 2, 1)


def test_pairs_clipped_against_unclipped(tables):
    """diff = a_clipped - a_unclipped and se = sqrt(sd_c^2 / 3 + sd_u^2 / 3); m = 1 is inside the
    CReLU window at s = 0.8 (about [0.4, 2.1])."""
    pairs = tables.pairs
    assert len(pairs) == 2 and set(pairs["window"]) == {"inside"}
    d2 = _row(pairs, depth=2)
    assert d2["diff"] == pytest.approx(0.6 - 0.3, abs=1e-6)
    assert d2["diff_se"] == pytest.approx(math.sqrt(0.01 / 3 + 0.04 / 3), abs=1e-6)
    d3 = _row(pairs, depth=3)
    assert d3["diff"] == pytest.approx(0.6, abs=1e-6)
    assert d3["diff_se"] == pytest.approx(math.sqrt(0.01 / 3), abs=1e-6)


@pytest.mark.parametrize(
    ("clip", "depth", "expected"),
    [
        # layers 0.76, 0.80, 0.84 (+ 0.03 after two epochs); seeds average to seed 1
        (1.0, 3, dict(n_runs=3, init=0.80, final_test=0.83, final_train=0.88, layer_min=0.79,
                      layer_max=0.87, max_drift=0.03, stays=False)),
        # 0.77, 0.79 -> mean 0.78, after two epochs 0.81: within 0.02 of 0.8
        (1.0, 2, dict(n_runs=3, init=0.78, final_test=0.81, final_train=0.86, layer_min=0.80,
                      layer_max=0.82, max_drift=0.02, stays=True)),
        # the diverged seed 2 left out: seeds 0 and 1 average to seed 1 minus 0.005
        (INF, 2, dict(n_runs=2, init=0.775, final_test=0.805, final_train=0.855,
                      layer_min=0.795, layer_max=0.815, max_drift=0.025, stays=True)),
    ],
)  # fmt: skip
def test_sparsity_table(tables, clip, depth, expected):
    row = _row(tables.sparsity, clip=clip, depth=depth)
    assert row["target"] == pytest.approx(0.8, abs=1e-9)  # the GP sparsity at q*: the target
    for key, value in expected.items():
        if isinstance(value, bool):
            assert bool(row[key]) is value, key
        else:
            assert row[key] == pytest.approx(value, abs=1e-6), key


def test_epoch_curves_leave_out_what_diverged(tables):
    """Epoch 2 of the diverged run is NaN: the mean over the others; its infinite loss at epoch 1
    is not averaged in; its zero sparsity never is."""
    c = tables.curves.sel(family="crelu", clip=INF, depth=2).squeeze()
    np.testing.assert_allclose(c["test_acc"], [0.1, (0.15 + 0.25 + 0.1) / 3, 0.4], atol=1e-6)
    np.testing.assert_allclose(c["test_acc_min"], [0.1, 0.1, 0.3], atol=1e-6)
    np.testing.assert_allclose(c["test_loss"], [2.3, 1.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(c["sparsity_mean"], 0.775 + 0.015 * np.arange(3), atol=1e-6)


def test_link_and_correlations_without_init(tables):
    """V'(q*) = 1 unclipped (the EoC is tangent), < 1 clipped. Spearman over the 4
    configurations (m=1 L=2, m=1 L=3, inf L=2, inf L=3): V' ranks (1.5, 1.5, 3.5, 3.5), accuracy
    (0.6, 0.8, 0.3, 0.2) ranks (3, 4, 2, 1); Pearson on the centred ranks, (-1, -1, 1, 1) .
    (0.5, 1.5, -0.5, -1.5) = -4 over sqrt(4 * 5): rho = -2 / sqrt(5)."""
    link = tables.link
    unclipped = link[~np.isfinite(link["clip"])]
    np.testing.assert_allclose(unclipped["v_slope"], 1.0, atol=1e-9)
    assert (link.loc[np.isfinite(link["clip"]), "v_slope"] < 1).all()
    assert not any(c.startswith("mc_") for c in link.columns)
    rho = tables.correlations
    every = _row(rho, width="all", predictor="V'(q*)")
    assert every["n"] == 4
    assert every["rho"] == pytest.approx(-2 / math.sqrt(5), abs=1e-12)
    per_depth = rho[rho["width"].astype(str) != "all"]
    n_predictors = len([c for c in training.PREDICTORS if not c.startswith("mc_")])
    assert len(per_depth) == 2 * n_predictors and per_depth["rho"].isna().all()  # 2 configurations


def correlation_step(act, c, q_star, sigma_w2, sigma_b2, h=0.004, z_max=8.0) -> float:
    """One step of the GP correlation map on a grid: c' = (sigma_w^2 E[phi(u) phi(v)] +
    sigma_b^2) / q* for (u, v) ~ N(0, q* [[1, c], [c, 1]]) (V(q*) = q* on the EoC), by the
    trapezoid rule over z1, z2 in [-8, 8] with u = sqrt(q*) z1, v = sqrt(q*) (c z1 + sqrt(1-c^2) z2)."""
    z = np.arange(-z_max, z_max + h / 2, h)
    w = np.exp(-(z**2) / 2) / math.sqrt(2 * math.pi) * h
    u = act(math.sqrt(q_star) * z)
    v = act(math.sqrt(q_star) * (c * z[:, None] + math.sqrt(1 - c * c) * z[None, :]))
    return (sigma_w2 * float(w @ (u[:, None] * v) @ w) + sigma_b2) / q_star


def test_gp_input_signal_against_a_grid_integral(tables):
    """1 - c^L in the link table, from c^0 = 1/2, against the correlation map integrated on a grid
    (independent of gp.correlation_map's closed forms): within 1e-4 relative."""
    tr = tables.tr
    for row in tables.link.to_dict("records"):
        key = {d: row[d] for d in tr.param_dims}
        act = tr.activation(key)
        sw2, sb2 = (float(tr.ds[v].sel(key)) for v in ("sigma_w2", "sigma_b2"))
        c = 0.5
        for _ in range(int(row["depth"])):
            c = correlation_step(act, c, row["q_star"], sw2, sb2)
        assert row["gp_corr_gap"] == pytest.approx(1 - c, rel=1e-4), row


def test_link_with_an_init_store(tables):
    """The unclipped Monte Carlo networks escape at layers 0, 1, 2, 5 (4 of 8 never): within a
    depth-L training network means at layer <= L - 1, so 2 of 8 for L = 2 and 3 of 8 for L = 3;
    4 of 8 stay at q*; the KM median escape depth is 5 (the survival reaches 1/2 there)."""
    tr = tables.tr
    link = training.link_table(tr, tables.accuracy, tables.theory, Tables(Results(planted_init())))
    for depth, escaped in ((2, 2 / 8), (3, 3 / 8)):
        row = _row(link, clip=INF, depth=depth)
        assert row["mc_frac_escaped"] == escaped
        assert row["mc_frac_stay"] == 0.5 and row["mc_median_escape"] == 5
        clipped = _row(link, clip=1.0, depth=depth)
        assert clipped["mc_frac_escaped"] == 0 and clipped["mc_frac_stay"] == 1
        assert math.isinf(clipped["mc_median_escape"])


def test_link_refuses_an_init_store_of_other_activations(tables):
    init = planted_init()
    init["act_values"] = init["act_values"] + 0.1
    with pytest.raises(StoreError, match="differs from the training store"):
        training.link_table(tables.tr, tables.accuracy, tables.theory, Tables(Results(init)))


def test_a_partial_training_store():
    """The clipped runs of seed 2 not done: their configurations have 2 runs, the missing runs are
    named with their (width, depth, lr, run_seed)."""
    done = np.ones((1, 1, 2, 1, 1, 2, 1, 3), bool)
    done[:, :, 0, :, :, :, :, 2] = False
    tr = TrainingResults(planted(done))
    accuracy = training.accuracy_table(tr)
    assert _row(accuracy, clip=1.0, depth=2)["n_runs"] == 2
    assert _row(accuracy, clip=1.0, depth=2)["test_acc"] == pytest.approx(0.55, abs=1e-6)
    assert tr.partial and tr.n_done == 10
    lines = report._missing_lines(tr)
    assert lines == [
        "- family=crelu sparsity=0.8 clip=1 q_star=1: width, depth, lr, run_seed "
        "(16, 2, 0.001, 2), (16, 3, 0.001, 2)"
    ]


# -- one study in several stores --------------------------------------------------------------------


def split_study() -> list[TrainingResults]:
    """The planted store as a study of two stores: the clipped runs, then the unclipped."""
    return [TrainingResults(planted(clip=[c]), f"{c}.zarr") for c in (1.0, "inf")]


def test_a_study_in_two_stores_reads_as_the_one_store(tables):
    """Split by clip level, the stacked tables hold the one store's rows; the pairs (clipped
    against unclipped) and the rank correlations cross the two stores and equal the one store's."""
    study = training.StudyTables(split_study(), Results(planted_init()))
    one = TrainingTables(tables.tr, Results(planted_init()))
    dims = list(tables.tr.config_dims)
    for name in ("accuracy", "sparsity", "link", "pairs"):
        mine = getattr(study, name).sort_values(dims).reset_index(drop=True)
        theirs = getattr(one, name).sort_values(dims).reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, theirs, check_dtype=False)
    assert len(study.pairs) == 2
    pd.testing.assert_frame_equal(study.correlations, one.correlations)


def test_seeds_in_several_stores_pool_to_the_one_store(tables):
    """The planted store's seeds split over two stores (the first seed, then the others): every
    configuration is in both, and the study's accuracy and link tables (means, sds over
    all the runs, counts) equal the one store's, to float32 rounding (the accuracies are stored
    in float32, and one store averages them in float32)."""
    ds = planted()
    parts = [
        TrainingResults(ds.isel(run_seed=slice(0, 1)), "first.zarr"),
        TrainingResults(ds.isel(run_seed=slice(1, None)), "others.zarr"),
    ]
    study = training.StudyTables(parts)
    dims = list(tables.tr.config_dims)
    for name in ("accuracy", "link"):
        mine = getattr(study, name).sort_values(dims).reset_index(drop=True)
        theirs = getattr(tables, name).sort_values(dims).reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, theirs[mine.columns], check_dtype=False, rtol=1e-6)
    assert len(study.sparsity) == 2 * len(tables.sparsity)  # a row per store


def test_a_study_refuses_other_budgets_and_shared_runs():
    clipped, unclipped = split_study()
    unclipped.ds.attrs["batch_size"] = 7
    with pytest.raises(StoreError, match=r"batch_size=7.*share their budget"):
        training.StudyTables([clipped, unclipped])
    with pytest.raises(StoreError, match=r"the run .* run_seed=.* is also in 1\.0\.zarr"):
        training.StudyTables([clipped, clipped])


def test_the_tables_of_a_study_from_the_command_line(tmp_path):
    paths = [tmp_path / "clipped.zarr", tmp_path / "unclipped.zarr"]
    for path, clip in zip(paths, (1.0, "inf"), strict=True):
        planted(clip=[clip]).to_zarr(path)
    code, stdout, stderr = run(training.main, [*map(str, paths), "--table", "pairs"])
    assert code == 0, stderr
    assert len(stdout.splitlines()) == 2 + 2  # header, rule, one pair per depth
    code, stdout, stderr = run(training.main, [str(paths[0]), str(paths[0])])
    assert code == 2 and stderr.count("\n") == 1 and "is also in" in stderr and not stdout


# -- the commands -----------------------------------------------------------------------------------


def run(main, argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_cli(main, argv)
        except SystemExit as done:
            code = done.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("training_stores")
    paths = {"train": root / "train.zarr", "init": root / "init.zarr"}
    planted().to_zarr(paths["train"])
    planted_init().to_zarr(paths["init"])
    paths["broken"] = root / "broken.zarr"
    planted().drop_vars("test_acc").to_zarr(paths["broken"])
    return paths


@pytest.mark.slow
def test_report_end_to_end(stores, tmp_path):
    """``python -m analysis.report TRAINING_STORE --init INIT_STORE``: the training section with
    the setup from the store's attributes, the diverged run, every table, and the figures drawn
    (PNG files that exist)."""
    out = tmp_path / "report.md"
    code, _, stderr = run(
        report.main, [str(stores["train"]), "--init", str(stores["init"]), "--out", str(out)]
    )
    assert code == 0, stderr
    text = out.read_text()
    assert "## Training" in text
    assert "digits" in text and "optimizer adam" in text and "learning rate 0.001" in text
    assert "- **Diverged runs:** 1 of 12" in text
    assert "crelu s=0.8 unclipped q*=1 N=16 L=2 lr=0.001 seed 2 at epoch 1" in text
    assert "| 0.300 ± 0.200 |" in text  # the unclipped depth-2 configuration
    for key, heading in report.TRAINING_TABLES.items():
        assert f"#### {heading}" in text and f"--table {key} --init" in text
    assert "it has a cell of the same activation and width for 4 of the 4 configurations" in text
    pngs = sorted(p.name for p in (tmp_path / "figures").glob("*.png"))
    assert pngs == [
        "training_curves_L2.png",
        "training_curves_L3.png",
        "training_link.png",
        "training_phase.png",
        "training_sparsity_L2.png",
        "training_sparsity_L3.png",
    ]
    for name in pngs:
        assert f"(figures/{name})" in text


def test_figures_without_an_init_store(stores, tmp_path, monkeypatch):
    """Without ``--init`` the phase diagram has one column (accuracy, theory window outlined: one
    finite clip level) and the link one panel (V'(q*))."""
    drawn = {}

    def keep(fig, out, name):
        drawn[name] = fig
        return []

    monkeypatch.setattr(figures, "_save", keep)
    code, _, stderr = run(figures.main, [str(stores["train"]), "--out", str(tmp_path)])
    assert code == 0, stderr
    phase = [ax for ax in drawn["training_phase"].axes if ax.get_title()]
    assert len(phase) == 2  # depth 2 and 3 of crelu
    outlined = [p for p in phase[0].patches if p.get_label() == "clip inside the theory window"]
    assert len(outlined) == 1  # m = 1 at s = 0.8
    texts = {t.get_text() for t in phase[0].texts}
    assert ".30†" in texts and ".60" in texts  # the dagger: a diverged run
    link = [ax for ax in drawn["training_link"].axes if ax.get_xlabel()]
    assert [ax.get_xlabel() for ax in link] == [  # the two predictors that need no Monte Carlo
        "V'(q*) (slope of V at q*)",
        "GP input signal 1 - c^L (from c^0 = 1/2)",
    ]


@pytest.mark.parametrize(
    ("command", "argv", "message"),
    [
        (training.main, ["{init}"], "a Monte Carlo store, not a training store"),
        (training.main, ["{train}", "--table", "bogus"], "argument --table: invalid choice"),
        (training.main, ["{broken}"], "not a complete training store, missing test_acc"),
        (training.main, ["{train}", "--init", "{train}"], "is a training store"),
        (report.main, ["{init}", "--init", "{init}", "--out", "{out}"], "only for a training"),
        (report.main, ["{train}", "--init", "{missing}", "--out", "{out}"], "no such results"),
        (figures.main, ["{broken}", "--out", "{out}"], "missing test_acc"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(stores, tmp_path, command, argv, message):
    out = tmp_path / "out"
    paths = {**{k: str(v) for k, v in stores.items()}, "missing": str(tmp_path / "no.zarr")}
    argv = [a.format(**paths, out=out / "report.md") for a in argv]
    code, stdout, stderr = run(command, argv)
    assert code == 2 and stderr.count("\n") == 1 and stderr.startswith("error: ")
    assert message in stderr
    assert not out.exists() and not stdout


# -- a real sweep -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_tiny_real_training_sweep_end_to_end(tmp_path):
    """``python -m simulate.grid --experiment train`` (CReLU at s = 0.85, clipped and not, lr
    1e-3 and 1e6 with SGD, which diverges) then ``python -m analysis.report``: the report's tables
    hold every configuration, and the diverged runs are the lr 1e6 ones, as the store says."""
    store = tmp_path / "t.zarr"
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax")}
    args = [
        "--experiment", "train", "--family", "crelu", "--sparsity", "0.85", "--clip", "1,inf",
        "--width", "16", "--depth", "2", "--lr", "1e-3,1e6", "--optimizer", "sgd",
        "--epochs", "1", "--run-seed", "0", "--train-size", "200", "--test-size", "100",
        "--batch-size", "50", "--probe-size", "64", "--n-jobs", "1", "--out", str(store),
    ]  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "simulate.grid", *args], env=env, check=True, capture_output=True
    )
    code, _, stderr = run(report.main, [str(store), "--out", str(tmp_path / "report.md")])
    assert code == 0, stderr
    text = (tmp_path / "report.md").read_text()
    ds = xr.open_zarr(store)
    n_diverged = int(ds["diverged"].sum())
    assert n_diverged == int(ds["diverged"].sel(lr=1e6).sum()) >= 1
    assert f"- **Diverged runs:** {n_diverged} of 4" in text
    tables = TrainingTables(TrainingResults(ds))
    assert len(tables.accuracy) == 4 and tables.accuracy["n_runs"].eq(1).all()
    assert "epochs 1, optimizer sgd" in text


def test_phase_diagram_beside_the_monte_carlo(stores, tmp_path, monkeypatch):
    """With ``--init`` each row has the Monte Carlo panel of the same family, q* and width: 4 of
    the 8 unclipped networks stay at q* (.50), every clipped one does (1); its grid has two finite
    clip levels, so the theory window is drawn as its edges."""
    drawn = {}

    def keep(fig, out, name):
        drawn[name] = fig
        return []

    monkeypatch.setattr(figures, "_save", keep)
    argv = [str(stores["train"]), "--init", str(stores["init"]), "--out", str(tmp_path)]
    code, _, stderr = run(figures.main, argv)
    assert code == 0, stderr
    axes = [ax for ax in drawn["training_phase"].axes if ax.get_title().startswith("Monte Carlo")]
    assert [ax.get_title() for ax in axes] == ["Monte Carlo: crelu, q* = 1, N = 16"] * 2
    texts = {(round(t.get_position()[0]), t.get_text()) for t in axes[0].texts}
    assert texts == {(0, "1"), (1, ".50")}  # clip 1, clip inf
    link = [ax for ax in drawn["training_link"].axes if ax.get_xlabel()]
    assert len(link) == 4  # V'(q*), the two Monte Carlo fractions, the GP input signal


def test_a_sweep_over_tau():
    """A training sweep over tau (not sparsity): the tables key on tau and place m against the
    window at the GP sparsity of the cell; there is no (sparsity, clip) phase diagram."""

    def fill(spec, cell):
        return {"test_acc": np.full(spec.epochs + 1, 0.5, "float32"), "diverged_epoch": -1}

    ds = schema.synthetic_store(fill, experiment="train", tau=[0.8416], q_star=1.0)
    tables = TrainingTables(TrainingResults(ds))
    assert list(tables.accuracy.columns[:2]) == ["family", "tau"]
    np.testing.assert_allclose(tables.accuracy["test_acc"], 0.5)
    assert list(tables.pairs["window"]) == ["inside"]  # m = 1 at sparsity Phi(0.8416) = 0.8
    assert figures.fig_training_phase(tables.tr, Path("unused"), tables) is None
