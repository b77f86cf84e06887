"""``python -m simulate.grid`` end to end on tiny grids: schema, values, determinism across n_jobs and
backends, kill -9 and resume, refusals of bad input, TOML specs.

Sweeps run as subprocesses through the command line. Each start costs a few seconds of imports
(numba), so one reference sweep (module fixture) serves most tests; the refusals that need no work
call ``main`` in-process, which is the code the command line runs, and one of them also runs as a
subprocess to check the exit status and the single line on stderr.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from scipy import special
from stores import load_data

from simulate import engines, gp, grid, schema
from simulate.activations import Activation
from simulate.spec import Spec, SpecError, cells, parse, resolve

REPO = Path(__file__).resolve().parents[1]

GRID = [
    "--family", "crelu,cst", "--sparsity", "0.6,0.8", "--clip", "1,2,inf", "--q-star", "1,2",
    "--width", "16,64", "--depth", "40", "--nets", "6", "--seed", "7",
]  # fmt: skip
"""48 cells of ~10 ms: fast to run, slow enough (one cell per task) to be killed half-way."""

OFF_EOC = [
    "--family", "crelu,cst", "--tau", "0.5,1", "--clip", "2,inf", "--sigma-w2", "1.5,3",
    "--sigma-b2", "0,0.2", "--q0", "0.8", "--width", "16", "--depth", "12", "--nets", "4",
    "--n-jobs", "1",
]  # fmt: skip


def sweep(*args, check=True, **popen) -> subprocess.CompletedProcess:
    """``python -m simulate.grid ARGS``, from anywhere, with this checkout importable."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "simulate.grid", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        **popen,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """GRID, uninterrupted, on one worker."""
    out = tmp_path_factory.mktemp("reference") / "ref.zarr"
    sweep(*GRID, "--n-jobs", 1, "--out", out)
    return out


# --------------------------------------------------------------------------------------------------
# The store


@pytest.mark.slow
def test_schema(reference):
    ds = load_data(reference)
    spec, _ = parse(GRID)
    cell = ("family", "sparsity", "clip", "q_star", "width")
    assert dict(ds.sizes) == {"family": 2, "sparsity": 2, "clip": 3, "q_star": 2, "width": 2,
                              "net": 6, "layer": 41, "input": 2, "pair": 1, "knot": 4}  # fmt: skip
    assert ds.input_a.values.tolist() == [0] and ds.input_b.values.tolist() == [1]
    assert list(ds.family.values) == ["crelu", "cst"]
    assert np.isinf(ds["clip"].values[-1])  # ds.clip is the method
    expect = {
        "q": ((*cell, "net", "layer", "input"), np.float32),
        "corr": ((*cell, "net", "layer", "pair"), np.float32),
        "zero_frac": ((*cell, "net", "layer", "input"), np.float32),
        "log_gain": ((*cell, "net", "layer"), np.float32),
        "v": ((*cell, "net", "layer", "input"), np.float32),
        "v_corr": ((*cell, "net", "layer", "pair"), np.float32),
        "v_log_gain": ((*cell, "net", "layer"), np.float32),
        "escape_layer": ((*cell, "net"), np.int32),
        **{
            name: ((*cell, "net", "input"), np.float32)
            for name in ("final_v", "final_q", "final_zero_frac", "mean_zero_frac")
        },
        "mean_log_gain": ((*cell, "net"), np.float32),
        "mean_v_log_gain": ((*cell, "net"), np.float32),
        "cell_done": (cell, np.bool_),
        "tau": (cell[:-1], np.float64),
        "sigma_w2": (cell[:-1], np.float64),
        "sigma_b2": (cell[:-1], np.float64),
        "q_gp": ((*cell[:-1], "layer"), np.float64),
        "v_slope": (cell[:-1], np.float64),
        "gp_sparsity": (cell[:-1], np.float64),
        "act_knots": ((*cell[:-1], "knot"), np.float64),
        "act_values": ((*cell[:-1], "knot"), np.float64),
        "act_left_slope": (cell[:-1], np.float64),
        "act_right_slope": (cell[:-1], np.float64),
    }
    assert set(ds.data_vars) == set(expect)
    for name, (dims, dtype) in expect.items():
        assert ds[name].dims == dims, name
        assert ds[name].dtype == dtype, name
    for name in [*ds.data_vars, *ds.coords]:
        assert ds[name].attrs["units"] and ds[name].attrs["long_name"], name
    assert ds.cell_done.all()
    assert (ds.escape_layer >= -1).all()
    assert Spec.from_toml(ds.attrs["spec"]) == spec
    assert ds.attrs["seed"] == 7 and ds.attrs["depth"] == 40 and ds.attrs["q0"] == "q_star"
    assert ds.attrs["engine"] == "auto" and ds.attrs["c0"] == 0.5 and ds.attrs["inputs"] == 2
    assert ds.attrs["escape_on"] == "v" and ds.attrs["record"] == "layers"
    for key in ("escape_factor", "package_version", "numpy_version", "numba_version",
                "xarray_version"):  # fmt: skip
        assert key in ds.attrs
    attrs = xr.open_zarr(reference).attrs
    assert attrs["wall_time_s"] > 0 and attrs["created"]


def test_theory_columns(reference):
    """tau, sigma's and the GP columns are those of simulate.gp at each parameter cell."""
    ds = load_data(reference)
    point = ds.isel(family=1, sparsity=1, clip=0, q_star=1)
    act = Activation.from_sparsity("cst", 0.8, 2.0, 1.0)
    eoc = gp.edge_of_chaos(act, 2.0)
    assert float(point.tau) == act.tau
    assert (float(point.sigma_w2), float(point.sigma_b2)) == (eoc.sigma_w2, eoc.sigma_b2)
    q_gp = gp.iterate_variance(act, 2.0, eoc.sigma_w2, eoc.sigma_b2, 40)
    np.testing.assert_allclose(point.q_gp, q_gp, rtol=1e-12)
    np.testing.assert_allclose(point.v_slope, gp.variance_slope(act, 2.0, eoc.sigma_w2), rtol=1e-12)
    np.testing.assert_allclose(point.gp_sparsity, 0.8, rtol=1e-12)


def test_activation_descriptions(reference):
    """Each parameter cell stores its activation's knots and values (NaN-padded to the four knots of
    clipped CST), with the outer slopes: checked against the families' definitions, with tau from
    the sparsity in closed form (CST: s = erf(tau / sqrt(2 q*)); CReLU: s = Phi(tau / sqrt(q*)))."""
    ds = load_data(reference)
    tau_cst = math.sqrt(2 * 2.0) * special.erfinv(0.8)  # q* = 2
    tau_crelu = math.sqrt(1.0) * special.ndtri(0.6)  # q* = 1
    cases = {
        ("cst", 0.8, 1.0, 2.0): ([-tau_cst - 1, -tau_cst, tau_cst, tau_cst + 1], [-1, 0, 0, 1], 0, 0),
        ("cst", 0.8, math.inf, 2.0): ([-tau_cst, tau_cst, np.nan, np.nan], [0, 0, np.nan, np.nan], 1, 1),
        ("crelu", 0.6, 2.0, 1.0): ([tau_crelu, tau_crelu + 2, np.nan, np.nan], [0, 2, np.nan, np.nan], 0, 0),
        ("crelu", 0.6, math.inf, 1.0): ([tau_crelu, np.nan, np.nan, np.nan], [0, np.nan, np.nan, np.nan], 0, 1),
    }  # fmt: skip
    for (family, s, m, q_star), (knots, values, left, right) in cases.items():
        point = ds.sel(family=family, sparsity=s, clip=m, q_star=q_star)
        np.testing.assert_allclose(point.act_knots, knots, rtol=1e-14, err_msg=family)
        np.testing.assert_array_equal(point.act_values, values)
        assert (float(point.act_left_slope), float(point.act_right_slope)) == (left, right)


def test_values_are_run_cell_with_the_cell_seed(reference):
    """Each cell is engines.run_cell with child `flat position` of SeedSequence(seed)."""
    ds = load_data(reference)
    spec, _ = parse(GRID)
    everything = list(cells(spec, resolve(spec)))
    children = np.random.SeedSequence(7).spawn(len(everything))
    for cell in (everything[0], everything[29], everything[-1]):
        got = ds.isel(dict(zip(spec.cell_dims, cell.index, strict=True)))
        want = engines.run_cell(
            cell.activation, cell.sigma_w2, cell.sigma_b2, width=cell.width, depth=40, nets=6,
            q0=cell.q_star, c0=0.5, q_ref=cell.q_star, seed=children[cell.flat], engine="auto",
            escape_on="v",
        )  # fmt: skip
        for name, var in schema.CELL_VARIABLES.items():
            expected = want[name].transpose(*var.dims).values.astype(var.dtype)
            np.testing.assert_array_equal(got[name].values, expected, err_msg=name)


def test_cell_seed_is_the_spawned_child():
    spec, _ = parse(GRID)
    everything = list(cells(spec, resolve(spec)))
    children = np.random.SeedSequence(7).spawn(len(everything))
    for cell in everything[::7]:
        np.testing.assert_array_equal(
            grid.cell_seed(spec, cell).generate_state(4), children[cell.flat].generate_state(4)
        )


@pytest.mark.slow
def test_off_eoc_sweep(tmp_path):
    out = tmp_path / "off.zarr"
    sweep(*OFF_EOC, "--out", out)
    ds = load_data(out)
    assert ds.q.dims == ("family", "tau", "clip", "sigma_w2", "sigma_b2", "width", "net",
                         "layer", "input")  # fmt: skip
    assert "q_star" not in ds.dims
    assert not {"tau", "sigma_w2", "sigma_b2"} & set(ds.data_vars)
    assert ds.cell_done.all() and ds.attrs["q0"] == 0.8 and ds.attrs["q_ref"] == "q0"
    assert (ds.q.isel(layer=0) > 0).all()
    point = ds.sel(family="crelu", tau=1.0, clip=2.0, sigma_w2=3.0, sigma_b2=0.2)
    act = Activation("crelu", 1.0, 2.0)
    np.testing.assert_allclose(point.q_gp, gp.iterate_variance(act, 0.8, 3.0, 0.2, 12))
    np.testing.assert_allclose(point.v_slope, gp.variance_slope(act, 0.8, 3.0))
    np.testing.assert_allclose(point.gp_sparsity, gp.sparsity(act, 0.8))


# --------------------------------------------------------------------------------------------------
# Determinism and resumption


@pytest.mark.slow
def test_threads_are_bit_identical(reference, tmp_path):
    """(loky with two workers: see the resume test.)"""
    sweep(*GRID, "--backend", "threading", "--n-jobs", 2, "--out", tmp_path / "thr.zarr")
    xr.testing.assert_identical(load_data(tmp_path / "thr.zarr"), load_data(reference))


@pytest.mark.slow
def test_dask_cluster_is_bit_identical(reference, tmp_path):
    """A dask.distributed LocalCluster on loopback, reached by address like a remote one."""
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1",
        dashboard_address=None,
    ) as cluster:  # fmt: skip
        run = sweep(*GRID, "--backend", "dask", "--scheduler", cluster.scheduler_address,
                    "--out", tmp_path / "dask.zarr")  # fmt: skip
    assert "dask workers" in run.stderr
    xr.testing.assert_identical(load_data(tmp_path / "dask.zarr"), load_data(reference))


def done_count(path: Path) -> int:
    try:
        return int(zarr.open_group(path, mode="r")["cell_done"][...].sum())
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError):
        return 0


def interrupt(out: Path, sig: signal.Signals, after: int) -> int:
    """Start GRID one cell per task, send ``sig`` to its process group once ``after`` cells are
    done, and return its exit status."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulate.grid", *GRID, "--n-jobs", "1", "--max-batch", "1",
         "--out", str(out)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the signal reaches any workers too
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while done_count(out) < after:
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(proc.pid, sig)
    return proc.wait(timeout=60)


@pytest.mark.slow
def test_interrupt_and_kill_9_then_resume_equals_uninterrupted(reference, tmp_path):
    """Ctrl-C, then kill (SIGTERM) of the resumed run, then kill -9 of the next, then a resume on
    two workers: the same dataset as one uninterrupted run on one worker. At each stop every cell
    marked done has its final values."""
    out = tmp_path / "stopped.zarr"
    ref = load_data(reference)
    first = 0
    stops = ((signal.SIGINT, 130), (signal.SIGTERM, 130), (signal.SIGKILL, -signal.SIGKILL))
    for sig, status in stops:
        assert interrupt(out, sig, after=first + 3) == status
        partial = load_data(out)
        done = partial.cell_done.values
        assert first < done.sum() < done.size
        for name in schema.CELL_VARIABLES:
            np.testing.assert_array_equal(partial[name].values[done], ref[name].values[done])
        first = done.sum()
    run = sweep(*GRID, "--n-jobs", 2, "--out", out)
    assert f"{done.size - first} of {done.size} cells to run" in run.stderr
    xr.testing.assert_identical(load_data(out), ref)


@pytest.mark.slow
def test_finished_sweep_run_again_does_nothing(reference):
    before = {p: p.stat().st_mtime_ns for p in reference.rglob("*")}
    run = sweep(*GRID, "--out", reference)
    assert "nothing to do: all 48 cells" in run.stdout
    assert "python -m analysis.report" in run.stdout
    assert {p: p.stat().st_mtime_ns for p in reference.rglob("*")} == before


@pytest.mark.slow
def test_toml_spec_is_the_same_sweep(reference, tmp_path):
    """The stored spec, and a hand-written TOML file with ranges, describe the reference sweep."""
    stored = tmp_path / "stored.toml"
    stored.write_text(xr.open_zarr(reference).attrs["spec"])
    handwritten = tmp_path / "hand.toml"
    handwritten.write_text(
        'family = "cst,crelu"\nsparsity = "0.6:0.8:2"\nclip = [1, 2.0, inf]\nq_star = [2, 1]\n'
        'width = "log:16:64:2"\ndepth = 40\nnets = 99\nseed = 7\n'
    )
    assert parse([str(handwritten), "--nets", "6"])[0] == parse(GRID)[0]
    run = sweep(stored, "--out", reference)
    assert "nothing to do" in run.stdout


@pytest.mark.slow
def test_different_spec_is_refused_unless_overwrite(reference, tmp_path):
    run = sweep(*GRID, "--nets", 5, "--out", reference, check=False)
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        f"simulate.grid: out={reference}: holds a different sweep (differs in nets); "
        "give --overwrite to replace it, or another --out"
    ]
    out = tmp_path / "over.zarr"
    shutil.copytree(reference, out)
    sweep(*OFF_EOC, "--depth", 3, "--out", out, "--overwrite")
    replaced = load_data(out)
    assert (
        replaced.sizes["layer"] == 4 and replaced.cell_done.all() and "q_star" not in replaced.dims
    )
    assert [p.name for p in tmp_path.iterdir()] == ["over.zarr"]  # the old store is gone, whole


# --------------------------------------------------------------------------------------------------
# Refusals: one line, exit status 2, nothing written


@pytest.mark.slow
def test_bad_value_exits_2_with_one_line(tmp_path):
    run = sweep("--clip", "0.5,-1", "--out", tmp_path / "x.zarr", check=False, cwd=tmp_path)
    assert run.returncode == 2
    assert run.stdout == ""
    assert run.stderr.splitlines() == [
        "simulate.grid: clip=-1: must be > 0, or inf for no clipping"
    ]
    assert list(tmp_path.iterdir()) == []


BAD = {
    "type": (["--width", "abc"], "width=abc: must be an integer >= 1 and < 2**31"),
    "integer": (["--nets", "2.5"], "nets=2.5: must be an integer >= 1 and < 2**31"),
    "range value": (["--clip", "0,1"], "clip=0: must be > 0, or inf"),
    "range syntax": (["--sparsity", "0.6:0.9"], "sparsity=0.6:0.9: a range is start:stop:count"),
    "log range": (["--width", "log:0:64:3"], "width=log:0:64:3: a range is"),
    "duplicate": (["--width", "16,16.0"], "width=16: listed twice"),
    "scalar list": (["--depth", "5,6"], "depth=5,6: must be one value"),
    "family": (["--family", "relu"], "family=relu: must be one of crelu, cst"),
    "engine": (["--engine", "fast"], "engine=fast: must be one of gram, dense, "),
    "sparsity of family": (["--sparsity", "0.3"], "sparsity=0.3: must be in [0.5, 1) for crelu"),
    "not on the EoC": (["--tau", "40"], "(at family=crelu, tau=40, clip=0.5, q_star=1)"),
    "sparsity and tau": (["--tau", "1", "--sparsity", "0.6"], "give sparsity or tau, not both"),
    "off-EoC pair": (["--sigma-w2", "2", "--tau", "0"], "sigma_b2=(missing): required off"),
    "off-EoC tau": (["--sigma-w2", "2", "--sigma-b2", "0"], "tau=(missing): required off"),
    "off-EoC q*": (["--sigma-w2", "2", "--sigma-b2", "0", "--tau", "0", "--q-star", "1"],
                   "q_star=1: only on the Edge of Chaos"),
    "off-EoC q0": (["--sigma-w2", "2", "--sigma-b2", "0", "--tau", "0", "--q0", "q_star"],
                   "q0=q_star: off the Edge of Chaos there is no q*"),
    "scheduler": (["--scheduler", "tcp://127.0.0.1:1"], "scheduler=tcp://127.0.0.1:1: only with"),
    "flag": (["--bogus"], "unrecognized arguments: --bogus"),
    "disk": (["--nets", "100000", "--depth", "100000"], ": the store needs up to"),
    "memory": (["--width", "1000000000"], "width=1000000000: the work in flight needs about"),
    "huge grid, at once": (["--sparsity", "0.6:0.9:2000", "--clip", "log:0.1:10:2000"],
                           ": the store needs up to"),
    "q0 outside the band": (["--q0", "0.05"], "q0=0.05: must lie inside the escape band"),
    "band overflow": (["--escape-factor", "1e99", "--q-star", "100"],
                      "escape_factor=1e+99: escape_factor * q_ref must be <= 1e100"),
    "float32 range": (["--q-star", "1e-320"], "q_star=1e-320: must be in [1e-30, 1e30]"),
    "seed range": (["--seed", "9223372036854775808"], "seed=9223372036854775808: must be an"),
    "escape observable": (["--escape-on", "h"], "escape_on=h: must be one of q, v"),
    "q escapes on sparse": (["--engine", "sparse", "--escape-on", "q"],
                            "engine='sparse': cannot run"),
    "record": (["--record", "all"], "record=all: must be one of layers, summary"),
    "thinned summary": (["--record", "summary", "--record-every", "5"],
                        "record_every=5: only with record=layers"),
    "record_every": (["--record-every", "0"], "record_every=0: must be an integer >= 1"),
    # many inputs (tests/test_inputs.py)
    "no inputs": (["--inputs", "0"], "inputs=0: must be an integer >= 1"),
    "correlation 1": (["--input-corr", "1"], "input_corr=1: must be in (-1, 1)"),
    "correlation -1": (["--input-corr", "-1"], "input_corr=-1: must be in (-1, 1)"),
    "in a list": (["--inputs", "3", "--input-corr", "0.1,1.5,0"], "input_corr=1.5: must be in"),
    "list length": (["--inputs", "3", "--input-corr", "0.1,0.2"],
                    "input_corr=0.1,0.2: 2 values, must be one or B(B-1)/2 = 3"),
    "not positive definite": (["--inputs", "3", "--input-corr", "0.9,0.9,-0.9"],
                              "not positive definite (smallest eigenvalue -0.8"),
    "equicorrelated, too negative": (["--inputs", "4", "--input-corr", "-0.5"],
                                     "not positive definite (smallest eigenvalue -0.5"),
    "unknown dataset": (["--input-corr", "images:mnist"], "input_corr=images:mnist: must be"),
    "q0 with images": (["--input-corr", "images:digits", "--q0", "1"],
                       "q0=1: not with input_corr=images:digits"),
    "more images than the test set": (["--inputs", "361", "--input-corr", "images:digits"],
                                      "inputs=361: must be <= 360, the test images of digits"),
    "singular images": (["--inputs", "100", "--input-corr", "images:digits"],
                        "inputs=100: the initial Gram matrix X X^T / d of the first 100 test"),
    "sparse with many inputs": (["--inputs", "3", "--engine", "sparse"],
                                "engine='sparse': cannot run"),
    "data without fashion": (["--data", "/tmp"], "data=/tmp: only with input_corr=images:fashion"),
}  # fmt: skip


@pytest.mark.parametrize("argv, message", BAD.values(), ids=BAD.keys())
def test_each_bad_input_is_one_line_and_writes_nothing(argv, message, tmp_path, capsys):
    out = tmp_path / "x.zarr"
    assert grid.main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("simulate.grid: ")
    assert message in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "text, message",
    [
        ("widht = [16]\n", "widht=16: unknown key; allowed: experiment, family, sparsity"),
        ("width = [16\n", "not valid TOML"),
        ("width = true\n", "width=True: must be an integer >= 1"),
        ('clip = ["1:2:x"]\n', "clip=1:2:x: a range is"),
    ],
)
def test_bad_toml_is_refused(text, message, tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert grid.main([str(path), "--out", str(tmp_path / "x.zarr")]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [path]


def test_unwritable_out_is_refused(capsys):
    assert grid.main([*GRID, "--out", "/dev/null/x.zarr"]) == 2
    assert "out=/dev/null/x.zarr: /dev/null is not a writable directory" in capsys.readouterr().err


def test_large_seeds_stay_exact():
    """Seeds beyond 2**53 must not round through float (two sweeps would look the same)."""
    spec, _ = parse(["--seed", "9007199254740993"])
    assert spec.seed == 9007199254740993
    assert Spec.from_toml(spec.to_toml()).seed == 9007199254740993


def test_a_path_that_is_not_a_store_is_never_replaced(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("precious")
    assert grid.main(["--out", str(tmp_path / "notes"), "--overwrite"]) == 2
    assert "is not a sweep store" in capsys.readouterr().err
    assert (tmp_path / "notes" / "keep.txt").read_text() == "precious"


def test_missing_dask_is_a_clear_refusal(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "dask.distributed", None)  # import fails as if not installed
    assert grid.main([*GRID, "--backend", "dask", "--out", str(tmp_path / "x.zarr")]) == 2
    assert "backend=dask: needs dask.distributed" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------
# Spec parsing


def test_default_sweep():
    spec, run = parse([])
    assert spec.family == ("crelu", "cst")
    assert spec.sparsity == (0.6, 0.7, 0.8, 0.85, 0.9)
    assert spec.clip == (0.5, 1.0, 1.5, 2.0, 3.0, np.inf)
    assert (spec.q_star, spec.width, spec.depth, spec.nets) == ((1.0,), (100, 300, 1000), 200, 64)
    assert (spec.engine, spec.q0, spec.tau, spec.sigma_w2) == ("auto", "q_star", None, None)
    assert (spec.inputs, spec.input_corr, spec.escape_on) == (2, 0.5, "v")
    assert spec.recorded_layers == tuple(range(201))
    assert run.out == Path("results/default.zarr") and run.n_jobs == -1
    assert spec.cell_shape == (2, 5, 6, 1, 3)


def test_lists_and_ranges():
    spec, _ = parse(
        ["--clip", "inf,0.5:1.5:3", "--width", "log:10:1000:3", "--sparsity", "0.9,0.6"]
    )
    assert spec.clip == (0.5, 1.0, 1.5, np.inf)
    assert spec.width == (10, 100, 1000)
    assert spec.sparsity == (0.6, 0.9)


def test_flags_override_the_file(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('sparsity = [0.7]\nwidth = 32\nout = "elsewhere.zarr"\nn_jobs = 1\n')
    spec, run = parse([str(path), "--tau", "0.5", "--width", "8"])
    assert (spec.sparsity, spec.tau, spec.width) == (None, (0.5,), (8,))
    assert run.out == Path("elsewhere.zarr") and run.n_jobs == 1
    assert parse([str(path)])[1].n_jobs == 1
    assert parse([str(path), "--out", "x.zarr"])[1].out == Path("x.zarr")
    path.write_text("depth = 3\n")
    assert parse([str(path)])[1].out == Path("results/s.zarr")


def test_spec_round_trips_through_toml():
    for argv in ([], GRID, OFF_EOC, ["--tau", "0,0.5", "--q0", "2"]):
        spec, _ = parse(argv)
        assert Spec.from_toml(spec.to_toml()) == spec


def test_huge_clip_levels_are_the_unclipped_network(tmp_path):
    """Clip levels up to the largest float: the sweep runs, and the theory is the unclipped one
    (CReLU at sparsity 0.8: sigma_w^2 = 1 / (1 - s) = 5 exactly, V'(q*) = 1)."""
    out = tmp_path / "huge.zarr"
    argv = ["--family", "crelu", "--sparsity", "0.8", "--clip", "1e155,1.7976931348623157e308,inf",
            "--width", "8", "--depth", "4", "--nets", "2", "--n-jobs", "1", "--out", str(out)]  # fmt: skip
    assert grid.main(argv) == 0
    ds = load_data(out)
    assert ds.cell_done.all() and np.isfinite(ds.q).all()
    np.testing.assert_allclose(ds.sigma_w2, 5.0, rtol=1e-12)
    np.testing.assert_allclose(ds.v_slope, 1.0, rtol=1e-12)
    unclipped = ds.sel(clip=np.inf)
    for m in ds["clip"].values[:-1]:
        clipped = ds.sel(clip=m)
        np.testing.assert_allclose(clipped.sigma_b2, unclipped.sigma_b2, rtol=1e-12)
        np.testing.assert_allclose(clipped.q_gp, unclipped.q_gp, rtol=1e-12)


def test_infeasible_cell_is_named():
    spec, _ = parse(["--family", "cst", "--tau", "0.1,45", "--clip", "inf"])
    with pytest.raises(SpecError, match=r"\(at family=cst, tau=45, clip=inf, q_star=1\)$"):
        resolve(spec)


def test_batches_cover_every_cell_once():
    spec, _ = parse(GRID)
    todo = list(cells(spec, resolve(spec)))
    total = grid._todo_cost(spec, resolve(spec), np.zeros(spec.cell_shape, dtype=bool), None)
    assert total == pytest.approx(sum(grid._cost(spec, c, None) for c in todo), rel=1e-12)
    for n_workers, max_batch in ((1, None), (2, None), (2, 1), (4, 5)):
        target = min(grid.TASK_COST, total / (4 * n_workers))
        batches = list(grid._batches(spec, iter(todo), target, max_batch, None))
        assert [c for b in batches for c in b] == todo
        assert max_batch is None or max(map(len, batches)) <= max_batch
        assert len(batches) >= 4 * n_workers


def test_example_specs_are_valid():
    """specs/*.toml parse and pass validation; each writes to its own ``out`` or, without one, to
    results/NAME.zarr for NAME.toml; specs/default.toml is the built-in default."""
    examples = sorted((REPO / "specs").glob("*.toml"))
    assert examples
    for path in examples:
        spec, run = parse([str(path)])
        resolve(spec)
        given = tomllib.loads(path.read_text()).get("out")
        assert run.out == (Path(given) if given else Path("results") / f"{path.stem}.zarr")
    assert parse([str(REPO / "specs" / "default.toml")])[0] == parse([])[0]


# --------------------------------------------------------------------------------------------------
# Thinned and summary stores


THIN = ["--family", "crelu", "--sparsity", "0.85", "--clip", "1,inf", "--width", "16,64",
        "--depth", "23", "--nets", "8", "--seed", "3", "--n-jobs", "1"]  # fmt: skip


@pytest.mark.slow
def test_thinned_and_summary_stores_keep_the_same_summaries(tmp_path):
    """record_every = 5 keeps layers 0, 5, .., 20 and the last, 23, with exactly the values of the
    full record there; record = summary keeps no layer at all. The per-network summaries are the
    same in all three (computed from every layer, whatever is kept), and agree with the full record:
    final_v is v at the escape layer (or the last), mean_zero_frac the mean over the layers
    reached. Every cell variable is one chunk per cell."""
    stores = {}
    for name, extra in (("full", []), ("thin", ["--record-every", "5"]),
                        ("summary", ["--record", "summary"])):  # fmt: skip
        out = tmp_path / f"{name}.zarr"
        assert grid.main([*THIN, *extra, "--out", str(out)]) == 0
        stores[name] = load_data(out)
        group = zarr.open_group(out, mode="r")
        for var in schema.cell_variables(parse([*THIN, *extra])[0]):
            array = group[var]
            assert array.chunks == (1,) * 5 + tuple(max(n, 1) for n in array.shape[5:]), var
    full, thin, summary = stores["full"], stores["thin"], stores["summary"]
    assert thin.layer.values.tolist() == [0, 5, 10, 15, 20, 23]
    assert "layer" not in summary.dims and "q_gp" not in summary and "v" not in summary
    per_layer = [n for n, v in schema.CELL_VARIABLES.items() if "layer" in v.dims]
    for name in per_layer:
        xr.testing.assert_identical(thin[name], full[name].sel(layer=thin.layer))
    xr.testing.assert_identical(thin.q_gp, full.q_gp.sel(layer=thin.layer))
    summaries = [n for n, v in schema.CELL_VARIABLES.items() if "layer" not in v.dims]
    for name in summaries:
        xr.testing.assert_identical(thin[name], full[name])
        xr.testing.assert_identical(summary[name], full[name])
    assert thin.attrs["record_every"] == 5 and summary.attrs["record"] == "summary"
    cells = full.squeeze().stack(c=("clip", "width", "net"))
    for i in range(cells.sizes["c"]):
        one = cells.isel(c=i)
        last = int(one.escape_layer) if int(one.escape_layer) >= 0 else 23
        np.testing.assert_array_equal(one.final_v, one.v.sel(layer=last))
        np.testing.assert_allclose(
            one.mean_zero_frac, one.zero_frac.sel(layer=slice(0, last)).mean("layer"), rtol=1e-6
        )
        for gain in ("log_gain", "v_log_gain"):  # over layers 1..last, dead tangents left out
            values = one[gain].sel(layer=slice(1, last)).values
            finite = values[np.isfinite(values)]
            want = finite.mean() if finite.size else np.nan
            np.testing.assert_allclose(one[f"mean_{gain}"], want, rtol=1e-5, atol=1e-7)
    assert (full.escape_layer >= 0).any() and (full.escape_layer == -1).any()
