"""User activation shapes in a spec file: the expression language, validation in one line, tau from
a target sparsity, and a sweep of a shape end to end against closed forms and quadrature."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from scipy import integrate, special

from simulate import grid, schema
from simulate.spec import Shape, Spec, SpecError, parse, resolve

REPO = Path(__file__).resolve().parents[1]

CST_BY_POINTS = {
    "name": "cst_pts",
    "knots": ["-tau - m", "-tau", "tau", "tau + m"],
    "values": ["-m", 0, 0, "m"],
}


def shape(**table) -> Shape:
    return Shape.from_table({"name": "s", "knots": [0.0], "values": [0.0]} | table)


# --------------------------------------------------------------------------------------------------
# Expressions


@pytest.mark.parametrize(
    "text, tau, m, value",
    [
        ("-tau - m", 1.5, 2.0, -3.5),
        ("(tau + m) / 2", 1.0, 2.0, 1.5),
        ("-(m)", 0.0, 4.0, -4.0),
        ("+tau * 2 - 1e-3", 0.25, 1.0, 0.499),
        ("3", 9.0, 9.0, 3.0),
        ("1 / tau", 0.0, 1.0, math.inf),
    ],
)
def test_expressions_evaluate_like_arithmetic(text, tau, m, value):
    s = shape(knots=[0.0], values=[text])
    got = s.values[0]
    assert got == text.strip()
    if math.isfinite(value):
        assert s.at(tau, m).values[0] == pytest.approx(value, rel=1e-15)
    else:
        with pytest.raises(ValueError, match="must be finite"):
            s.at(tau, m)


@pytest.mark.parametrize(
    "text, why",
    [
        ("__import__('os').getcwd()", "not allowed"),
        ("tau ** 2", "not allowed"),
        ("abs(tau)", "not allowed"),
        ("m.real", "not allowed"),
        ("tau if m else 0", "not allowed"),
        ("[tau]", "not allowed"),
        ("True", "not allowed"),
        ("'tau'", "not allowed"),
        ("q + tau", "unknown name q"),
        ("1e999", "not allowed"),
        ("9" * 5000, "not an expression"),
        ("tau +", "not an expression"),
        ("", "not an expression"),
        ("lambda: 0", "not allowed"),
    ],
)
def test_anything_but_arithmetic_in_tau_and_m_is_refused(text, why):
    with pytest.raises(SpecError, match=r"^shape\.s\.knots=") as err:
        shape(knots=[text])
    assert why in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------------------------------------------
# Sparsity to tau


@pytest.mark.parametrize("q_star", [1e-4, 1.0, 1e4])
@pytest.mark.parametrize("s", [0.05, 0.5, 0.9, 0.99])
def test_tau_from_sparsity_matches_the_closed_form_for_cst_by_points(q_star, s):
    """CST given by its points: tau from brentq equals sqrt(2 q*) erfinv(s) to 1e-12."""
    m = 1.3 * math.sqrt(q_star)
    tau = Shape.from_table(CST_BY_POINTS).tau_for_sparsity(s, q_star, m)
    assert tau == pytest.approx(math.sqrt(2 * q_star) * special.erfinv(s), rel=1e-12)


def test_tau_from_sparsity_of_an_asymmetric_dead_zone():
    """Dead zone [-tau/2, tau] at q* = 2: Phi(tau / sqrt 2) - Phi(-tau / (2 sqrt 2)) = s."""
    table = {"name": "a", "knots": ["-tau/2 - 1", "-tau/2", "tau", "tau + 1"],
             "values": [-1, 0, 0, 1]}  # fmt: skip
    for s in (0.3, 0.7, 0.95):
        tau = Shape.from_table(table).tau_for_sparsity(s, 2.0, 1.0)
        r = math.sqrt(2.0)
        assert special.ndtr(tau / r) - special.ndtr(-tau / (2 * r)) == pytest.approx(s, abs=1e-13)


def test_unreachable_sparsity_names_the_reachable_range():
    no_tau = Shape.from_table({"name": "flat", "knots": [-1, 1], "values": [0, 0],
                               "left_slope": 1, "right_slope": 1})  # fmt: skip
    with pytest.raises(
        ValueError, match=r"reaches GP sparsity \[0.6827, 0.6827\].*does not depend"
    ):
        no_tau.tau_for_sparsity(0.5, 1.0, 1.0)
    relu = Shape.from_table({"name": "r", "knots": ["tau"], "values": [0], "right_slope": 1})
    with pytest.raises(ValueError, match=r"reaches GP sparsity \[0.5, 1\]"):
        relu.tau_for_sparsity(0.2, 1.0, 1.0)


# --------------------------------------------------------------------------------------------------
# Spec files


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "shape.toml"
    path.write_text(text)
    return path


ASYM = """
family = ["cst", "asym"]
sparsity = [0.75]
clip = [0.8, 2]
q_star = [1, 4]
width = [16]
depth = 8
nets = 4

[shape]
name = "asym"
knots = ["-tau/2 - m/2", "-tau/2", "tau", "tau + m"]
values = ["-m/2", 0, 0, "m"]
"""


def test_a_shape_sweep_end_to_end(tmp_path):
    """The stored description is the shape at each cell's tau and m; tau gives the target sparsity
    (closed form), the cell is on the Edge of Chaos (chi_1 = 1 in closed form, V(q*) = q* by
    quadrature of phi^2), and a resume of the stored spec finds nothing to do."""
    path = write(tmp_path, ASYM)
    out = tmp_path / "asym.zarr"
    assert grid.main([str(path), "--n-jobs", "1", "--out", str(out)]) == 0
    ds = xr.open_zarr(out).load()
    assert list(ds.family.values) == ["cst", "asym"] and ds.cell_done.all()
    for m in (0.8, 2.0):
        for q_star in (1.0, 4.0):
            point = ds.sel(family="asym", sparsity=0.75, clip=m, q_star=q_star)
            tau, r = float(point.tau), math.sqrt(q_star)
            np.testing.assert_allclose(
                point.act_knots, [-tau / 2 - m / 2, -tau / 2, tau, tau + m], rtol=1e-15
            )
            np.testing.assert_array_equal(point.act_values, [-m / 2, 0, 0, m])
            dead = special.ndtr(tau / r) - special.ndtr(-tau / (2 * r))
            assert dead == pytest.approx(0.75, abs=1e-12)
            passing = (
                special.ndtr(-tau / (2 * r))
                - special.ndtr((-tau / 2 - m / 2) / r)
                + special.ndtr((tau + m) / r)
                - special.ndtr(tau / r)
            )
            assert float(point.sigma_w2) * passing == pytest.approx(1.0, rel=1e-12)
            act = schema.activation_at(point)
            second, _ = integrate.quad(
                lambda x, act=act, r=r: act(np.array([r * x]))[0] ** 2 * math.exp(-x * x / 2),
                -12, 12, points=[k / r for k in act.knots], limit=200, epsabs=1e-14,
            )  # fmt: skip
            v = float(point.sigma_w2) * second / math.sqrt(2 * math.pi) + float(point.sigma_b2)
            assert v == pytest.approx(q_star, rel=1e-9)
            assert np.isfinite(point.q).all()
    stored = write(tmp_path, ds.attrs["spec"])
    assert grid.main([str(stored), "--out", str(out)]) == 0


def test_the_example_spec_reads_and_resolves():
    spec, run = parse([str(REPO / "specs" / "custom_shape.toml")])
    assert spec.family == ("cst", "asym_cst") and spec.shape[0].name == "asym_cst"
    assert run.out == Path("results/custom_shape.zarr")
    resolve(spec)


def test_shapes_round_trip_and_defaults():
    """A shape without family: the family is the shape; unused shapes are dropped; [[shape]]."""
    spec = Spec.from_values({"shape": CST_BY_POINTS, "tau": [0.5], "clip": [1.0]})
    assert spec.family == ("cst_pts",)
    assert Spec.from_toml(spec.to_toml()) == spec
    two = [CST_BY_POINTS, {"name": "b", "knots": [0], "values": [0], "right_slope": 1}]
    spec = Spec.from_values({"shape": two, "family": ["b", "crelu"], "tau": [0.5]})
    assert spec.family == ("crelu", "b") and [s.name for s in spec.shape] == ["b"]
    assert Spec.from_toml(spec.to_toml()) == spec


BAD_SHAPES = {
    "not increasing": (
        'family = ["st"]\ntau = [0, 1]\nclip = [1]\n[shape]\nname = "st"\nknots = ["-tau", "tau"]\n'
        "values = [0, 0]\nleft_slope = 1\nright_slope = 1\n",
        "shape.st.knots=-tau,tau: must be strictly increasing; at tau=0, m=1 they are 0,0 "
        "(at family=st, tau=0, clip=1, q_star=1)",
    ),
    "unclipped": (
        'tau = [1]\nclip = [1, inf]\n[shape]\nname = "c"\nknots = ["tau", "tau + m"]\n'
        'values = [0, "m"]\n',
        "shape.c.knots=tau,tau + m: must be finite; at tau=1, m=inf it is 1,inf (a shape that "
        "uses m needs finite clip levels)",
    ),
    "unknown name": (
        '[shape]\nname = "c"\nknots = ["tau + x"]\nvalues = [0]\n',
        "shape.c.knots=tau + x: unknown name x; allowed: numbers, tau, m",
    ),
    "lengths": (
        '[shape]\nname = "c"\nknots = [0, 1]\nvalues = [0]\n',
        "shape.c.values=0: must have one value per knot (2)",
    ),
    "slope": (
        'tau = [0]\n[shape]\nname = "c"\nknots = [0]\nvalues = [0]\nright_slope = "1/tau"\n',
        "shape.c.right_slope=1/tau: must be finite; at tau=0",
    ),
    "named family": (
        '[shape]\nname = "crelu"\nknots = [0]\nvalues = [0]\n',
        "shape.name=crelu: must be a text without commas, other than crelu, cst",
    ),
    "two names": (
        '[[shape]]\nname = "a"\nknots = [0]\nvalues = [0]\n'
        '[[shape]]\nname = "a"\nknots = [1]\nvalues = [0]\n',
        "shape.name=a: two shapes have this name",
    ),
    "unknown key": (
        '[shape]\nname = "a"\nknots = [0]\nvalues = [0]\nslope = 1\n',
        "shape.a.slope=1: unknown key; allowed: name, knots, values, left_slope, right_slope",
    ),
    "not a table": ("shape = 3\n", "shape=3: must be a table"),
    "empty knots": ('[shape]\nname = "a"\nknots = []\nvalues = []\n', "shape.a.knots=: must be"),
    "undefined family": ('family = ["mine"]\n', "family=mine: must be one of crelu, cst"),
    "no Edge of Chaos": (
        '[shape]\nname = "dead"\nknots = [0]\nvalues = [0]\n',
        "(at family=dead, sparsity=",
    ),
    "sparsity out of reach": (
        'sparsity = [0.3]\n[shape]\nname = "r"\nknots = ["tau"]\nvalues = [0]\nright_slope = 1\n',
        "sparsity=0.3: shape r reaches GP sparsity [0.5, 1]",
    ),
}


@pytest.mark.parametrize("text, message", BAD_SHAPES.values(), ids=BAD_SHAPES.keys())
def test_each_bad_shape_is_one_line_and_writes_nothing(text, message, tmp_path, capsys):
    path = write(tmp_path, text)
    assert grid.main([str(path), "--width", "8", "--out", str(tmp_path / "x.zarr")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("simulate.grid: "), err
    assert message in err
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("engine", ["gram", "dense"])
def test_cst_by_points_simulates_like_cst(engine):
    """The same seed through CST given by points (tau by brentq) and through the named CST (tau in
    closed form): the same networks, so the same trajectories up to the rounding of tau and of the
    slopes (difference quotients of the knots): 1e-9 relative after 6 layers."""
    common = {"sparsity": [0.8], "clip": [1.0], "width": [16], "depth": 6, "nets": 3,
              "engine": engine}  # fmt: skip
    mine = schema.synthetic_store(grid.simulate_cell, shape=CST_BY_POINTS, **common)
    named = schema.synthetic_store(grid.simulate_cell, family="cst", **common)
    for name in ("q", "corr", "zero_frac", "log_gain"):
        np.testing.assert_allclose(mine[name].values, named[name].values, rtol=1e-9, err_msg=name)
    np.testing.assert_array_equal(mine.escape_layer.values, named.escape_layer.values)
