"""A sweep: its parameter grid and run options, parsed from flags and/or a TOML file, validated up front.

A sweep is the cartesian product of the listed values of its *grid* fields. Two kinds:

- on the Edge of Chaos (default): axes ``family, sparsity | tau, clip, q_star``; each cell's
  (sigma_w^2, sigma_b^2) comes from ``gp.edge_of_chaos`` and, with ``sparsity``, its threshold from
  ``tau = sqrt(q*) Phi^{-1}(s)`` (CReLU) or ``sqrt(q*) Phi^{-1}((1+s)/2)`` (CST);
- off the Edge of Chaos (``sigma_w2`` and ``sigma_b2`` given, with ``tau``): axes
  ``family, tau, clip, sigma_w2, sigma_b2``, for (sigma_w^2, sigma_b^2) phase diagrams. There is no q*;
  the inputs start at variance ``q0``.

Every parameter cell is crossed with every ``width``; a (parameter cell, width) pair is one *cell* of
the sweep, the unit of work, of storage and of resumption.

Values are written the same way on the command line and in a TOML file: a list ``a,b,c``, a linear
range ``start:stop:count`` (endpoints included), a log range ``log:start:stop:count``, or any comma
list of those; ``inf`` is a number (a valid clip). In TOML a key may also hold a number or an array.
Flags override the file; ``sparsity`` and ``tau`` are alternatives, so giving one drops the other.

Every problem is reported as one :class:`SpecError` line ``field=value: what is allowed``.
"""

from __future__ import annotations

import argparse
import math
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

from simulate import gp
from simulate.activations import FAMILIES, Activation
from simulate.engines import ENGINES

BACKENDS = ("loky", "threading", "dask")


class SpecError(ValueError):
    """A bad sweep: one line naming the field, the value and what is allowed."""


@dataclass(frozen=True)
class _Field:
    """One key of a sweep: how to read a value, when it is valid, and what to say when it is not."""

    name: str
    kind: Callable[[Any], Any]  # one raw token -> typed value, ValueError if unreadable
    ok: Callable[[Any], bool]
    allowed: str
    help: str
    grid: bool = False  # a list of values (an axis of the grid) rather than one value

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _number(token) -> float:
    if isinstance(token, bool):
        raise ValueError(token)
    return float(token)


def _integer(token) -> int:
    """An exact integer (seeds beyond 2**53 must not round through float); "1e3" is accepted."""
    if isinstance(token, bool):
        raise ValueError(token)
    if isinstance(token, int):
        return token
    try:
        return int(str(token).strip())
    except ValueError:
        value = _number(token)
        if not value.is_integer():
            raise
        return int(value)


def _text(token) -> str:
    if not isinstance(token, str):
        raise ValueError(token)
    return token.strip()


def _flag(token) -> bool:
    if isinstance(token, bool):
        return token
    raise ValueError(token)


def _q0(token) -> float | str:
    return "q_star" if token == "q_star" else _number(token)


VARIANCE_RANGE = (1e-30, 1e30)
"""Input and fixed-point variances a store can hold: float32 trajectories, with the escape band."""

_FIELDS = (
    _Field(
        "family",
        _text,
        lambda f: f in FAMILIES,
        f"one of {', '.join(FAMILIES)}",
        "activation families",
        grid=True,
    ),
    _Field(
        "sparsity",
        _number,
        lambda s: 0 <= s < 1,
        "in [0, 1) ([0.5, 1) for crelu)",
        "target GP sparsity at q*, sets tau (on the EoC)",
        grid=True,
    ),
    _Field(
        "tau",
        _number,
        lambda t: math.isfinite(t) and t >= 0,
        "finite and >= 0",
        "thresholds, instead of sparsity; required off the EoC",
        grid=True,
    ),
    _Field(
        "clip",
        _number,
        lambda m: m > 0,
        "> 0, or inf for no clipping",
        "clip levels m",
        grid=True,
    ),
    _Field(
        "q_star",
        _number,
        lambda q: VARIANCE_RANGE[0] <= q <= VARIANCE_RANGE[1],
        "in [1e-30, 1e30] (trajectories are stored as float32)",
        "fixed-point variances q* of the EoC",
        grid=True,
    ),
    _Field(
        "sigma_w2",
        _number,
        lambda v: math.isfinite(v) and v > 0,
        "finite and > 0",
        "weight variances: off the EoC, with --sigma-b2 and --tau",
        grid=True,
    ),
    _Field(
        "sigma_b2",
        _number,
        lambda v: math.isfinite(v) and v >= 0,
        "finite and >= 0",
        "bias variances: off the EoC, with --sigma-w2 and --tau",
        grid=True,
    ),
    _Field("width", _integer, lambda n: n >= 1, "an integer >= 1", "hidden widths N", grid=True),
    _Field("depth", _integer, lambda n: n >= 1, "an integer >= 1", "number of layers L"),
    _Field("nets", _integer, lambda n: n >= 1, "an integer >= 1", "networks per cell"),
    _Field(
        "q0",
        _q0,
        lambda q: q == "q_star" or VARIANCE_RANGE[0] <= q <= VARIANCE_RANGE[1],
        "in [1e-30, 1e30] (trajectories are stored as float32), or q_star",
        "input variance; default q_star on the EoC, 1 off it",
    ),
    _Field("c0", _number, lambda c: -1 <= c <= 1, "in [-1, 1]", "correlation of the two inputs"),
    _Field(
        "engine",
        _text,
        lambda e: e in ENGINES,
        f"one of {', '.join(ENGINES)}",
        "Monte Carlo engine",
    ),
    _Field(
        "seed",
        _integer,
        lambda s: 0 <= s < 2**63,
        "an integer in [0, 2**63) (a TOML integer)",
        "root seed of the sweep",
    ),
    _Field(
        "escape_factor",
        _number,
        lambda f: math.isfinite(f) and f > 1,
        "finite and > 1",
        "a network escapes when its variance leaves [q_ref / f, q_ref * f]",
    ),
    _Field(
        "out",
        _text,
        lambda p: p != "",
        "a path",
        "the zarr store; default results/default.zarr, or results/NAME.zarr for NAME.toml",
    ),
    _Field(
        "n_jobs",
        _integer,
        lambda n: n != 0,
        "a non-zero integer (-1: all cores)",
        "parallel workers",
    ),
    _Field(
        "backend",
        _text,
        lambda b: b in BACKENDS,
        f"one of {', '.join(BACKENDS)}",
        "joblib backend",
    ),
    _Field(
        "scheduler",
        _text,
        lambda a: a != "",
        "an address tcp://HOST:PORT",
        "dask scheduler, with --backend dask; default a local cluster",
    ),
    _Field(
        "max_batch",
        _integer,
        lambda n: n >= 1,
        "an integer >= 1",
        "most cells per parallel task; default: small cells batched to ~50 ms",
    ),
    _Field(
        "overwrite",
        _flag,
        lambda b: True,
        "true or false",
        "replace an existing store that holds a different sweep",
    ),
)
_BY_NAME = {f.name: f for f in _FIELDS}

DEFAULTS = {
    "family": "crelu,cst",
    "sparsity": "0.6,0.7,0.8,0.85,0.9",
    "clip": "0.5,1,1.5,2,3,inf",
    "q_star": "1",
    "width": "100,300,1000",
    "depth": 200,
    "nets": 64,
    "c0": 0.5,
    "engine": "gram",
    "seed": 0,
    "escape_factor": 10.0,
    "n_jobs": -1,
    "backend": "loky",
    "overwrite": False,
}
"""The built-in sweep (``python -m simulate.grid`` with no arguments) and the run defaults."""


@dataclass(frozen=True)
class Spec:
    """The scientific content of a sweep: what the stored numbers depend on, and nothing else.

    Grid fields are sorted tuples (families in ``FAMILIES`` order) or None when not part of this kind
    of sweep; the order fixes each cell's position in the grid and so its random stream.
    """

    family: tuple[str, ...]
    sparsity: tuple[float, ...] | None
    tau: tuple[float, ...] | None
    clip: tuple[float, ...]
    q_star: tuple[float, ...] | None
    sigma_w2: tuple[float, ...] | None
    sigma_b2: tuple[float, ...] | None
    width: tuple[int, ...]
    depth: int
    nets: int
    q0: float | str
    c0: float
    engine: str
    seed: int
    escape_factor: float

    @property
    def eoc(self) -> bool:
        """True on the Edge of Chaos (sigma_w^2, sigma_b^2 solved per cell), False off it."""
        return self.sigma_w2 is None

    @property
    def param_dims(self) -> tuple[str, ...]:
        """The axes of the parameter grid, in storage order."""
        threshold = "sparsity" if self.sparsity is not None else "tau"
        if self.eoc:
            return ("family", threshold, "clip", "q_star")
        return ("family", "tau", "clip", "sigma_w2", "sigma_b2")

    @property
    def cell_dims(self) -> tuple[str, ...]:
        """The axes of the grid of cells: the parameter axes, then width."""
        return (*self.param_dims, "width")

    def coords(self) -> dict[str, tuple]:
        """Values along each cell axis."""
        return {dim: getattr(self, dim) for dim in self.cell_dims}

    @property
    def param_shape(self) -> tuple[int, ...]:
        return tuple(len(getattr(self, dim)) for dim in self.param_dims)

    @property
    def cell_shape(self) -> tuple[int, ...]:
        return (*self.param_shape, len(self.width))

    def to_toml(self) -> str:
        """The spec as a TOML file that ``python -m simulate.grid FILE`` runs again."""
        body = {
            f.name: list(value) if isinstance(value, tuple) else value
            for f in fields(self)
            if (value := getattr(self, f.name)) is not None
        }
        return "# python -m simulate.grid THIS.toml reproduces this sweep\n" + tomli_w.dumps(body)

    @classmethod
    def from_toml(cls, text: str) -> Spec:
        """Inverse of :meth:`to_toml` (validated like any spec file)."""
        return _spec(_merge(_read_toml(text, "spec"), {}))


@dataclass(frozen=True)
class Run:
    """How to run a sweep; none of it changes the numbers."""

    out: Path
    n_jobs: int
    backend: str
    scheduler: str | None
    max_batch: int | None
    overwrite: bool


@dataclass(frozen=True)
class Cell:
    """One (parameter cell, width) pair: where it sits in the grid and what to simulate.

    ``flat`` is its C-order position in the full grid of cells; it names the cell's random stream.
    """

    flat: int
    index: tuple[int, ...]
    family: str
    tau: float
    clip: float
    sigma_w2: float
    sigma_b2: float
    q_star: float | None
    q0: float
    width: int

    @property
    def activation(self) -> Activation:
        return Activation(self.family, self.tau, self.clip)


@dataclass(frozen=True)
class Params:
    """Per parameter cell (arrays of ``spec.param_shape``): threshold, clip and variances."""

    tau: np.ndarray
    clip: np.ndarray
    sigma_w2: np.ndarray
    sigma_b2: np.ndarray
    q_star: np.ndarray | None  # None off the Edge of Chaos
    q0: np.ndarray


def resolve(spec: Spec) -> Params:
    """(tau, sigma_w^2, sigma_b^2) of every parameter cell; SpecError naming the first infeasible one.

    On the Edge of Chaos, per cell: tau from the sparsity (``Activation.from_sparsity``) if the grid has
    one, then (sigma_w^2, sigma_b^2) from ``gp.edge_of_chaos(act, q*)``. Off it they are coordinates.
    """
    shape = spec.param_shape
    tau, sigma_w2, sigma_b2 = np.empty(shape), np.empty(shape), np.empty(shape)
    for index in np.ndindex(shape):
        point = {dim: getattr(spec, dim)[i] for dim, i in zip(spec.param_dims, index, strict=True)}
        try:
            if "sparsity" in point:
                act = Activation.from_sparsity(
                    point["family"], point["sparsity"], point["q_star"], point["clip"]
                )
            else:
                act = Activation(point["family"], point["tau"], point["clip"])
            eoc = gp.edge_of_chaos(act, point["q_star"]) if spec.eoc else None
        except ValueError as err:
            where = ", ".join(f"{k}={_show(v)}" for k, v in point.items())
            raise SpecError(f"{err} (at {where})") from None
        tau[index] = act.tau
        sigma_w2[index] = eoc.sigma_w2 if eoc else point["sigma_w2"]
        sigma_b2[index] = eoc.sigma_b2 if eoc else point["sigma_b2"]
    q_star = _along(spec, "q_star") if spec.eoc else None
    q0 = q_star if spec.q0 == "q_star" else np.full(shape, float(spec.q0))
    return Params(tau, _along(spec, "clip"), sigma_w2, sigma_b2, q_star, q0)


def _along(spec: Spec, dim: str) -> np.ndarray:
    """The coordinate ``dim`` at every parameter cell."""
    shape = [1] * len(spec.param_dims)
    shape[spec.param_dims.index(dim)] = -1
    return np.broadcast_to(np.reshape(getattr(spec, dim), shape), spec.param_shape)


def cells(spec: Spec, params: Params) -> Iterator[Cell]:
    """Every cell of the sweep, in C order over ``spec.cell_dims``."""
    for flat, index in enumerate(product(*(range(n) for n in spec.cell_shape))):
        p = index[:-1]
        yield Cell(
            flat=flat,
            index=index,
            family=spec.family[p[0]],
            tau=float(params.tau[p]),
            clip=float(params.clip[p]),
            sigma_w2=float(params.sigma_w2[p]),
            sigma_b2=float(params.sigma_b2[p]),
            q_star=None if params.q_star is None else float(params.q_star[p]),
            q0=float(params.q0[p]),
            width=spec.width[index[-1]],
        )


# --------------------------------------------------------------------------------------------------
# Parsing


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m simulate.grid``: a spec file and one flag per field."""
    p = _OneLineParser(
        prog="python -m simulate.grid",
        description="Monte Carlo sweep of deep random CReLU/CST networks into a resumable zarr "
        "store. Lists: a,b,c; ranges: start:stop:count or log:start:stop:count; inf is a valid "
        "clip. With no arguments: the built-in default sweep into results/default.zarr.",
    )
    p.add_argument("spec", nargs="?", help="TOML file with the same keys as the flags")
    for f in _FIELDS:
        if f.kind is _flag:
            p.add_argument(f.flag, action="store_true", default=None, help=f.help)
            continue
        default = f"; default {DEFAULTS[f.name]}" if f.name in DEFAULTS else ""
        p.add_argument(
            f.flag,
            dest=f.name,
            metavar="LIST" if f.grid else f.name.upper(),
            help=f"{f.help} [{f.allowed}{default}]",
        )
    return p


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        raise SpecError(message)


def parse(argv: list[str] | None = None) -> tuple[Spec, Run]:
    """(Spec, Run) from a command line; SpecError on the first bad value."""
    args = vars(parser().parse_args(argv))
    path = args.pop("spec")
    flags = {k: v for k, v in args.items() if v is not None}
    if path is None:
        values = _merge({}, flags)
        return _spec(values), _run(values, Path("results/default.zarr"))
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise SpecError(f"spec={path}: cannot read it ({err.strerror})") from None
    values = _merge(_read_toml(text, path), flags)
    return _spec(values), _run(values, Path("results") / (Path(path).stem + ".zarr"))


def _read_toml(text: str, name: str) -> dict[str, Any]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"spec={name}: not valid TOML ({err})") from None
    for key in data:
        if key not in _BY_NAME:
            raise SpecError(
                f"{key}={_show(data[key])}: unknown key; allowed: {', '.join(_BY_NAME)}"
            )
    return data


def _merge(file: dict, flags: dict) -> dict[str, Any]:
    """Defaults < file < flags, every value typed and checked, the kind of sweep settled."""
    for given, other in (("sparsity", "tau"), ("tau", "sparsity")):
        if given in flags:
            file = {k: v for k, v in file.items() if k != other}
    values = {name: _value(_BY_NAME[name], token) for name, token in {**file, **flags}.items()}
    eoc = "sigma_w2" not in values and "sigma_b2" not in values
    _check_kind(values, eoc)
    skip = set(values) | ({"sparsity"} if "tau" in values else set())
    if not eoc:
        skip |= {"sparsity", "q_star"}
    values |= {k: _value(_BY_NAME[k], token) for k, token in DEFAULTS.items() if k not in skip}
    values.setdefault("q0", "q_star" if eoc else 1.0)
    _check_band(values, eoc)
    return values


def _check_band(values: dict, eoc: bool) -> None:
    """The escape band [q_ref / f, f q_ref] must hold the inputs (q0, else every network escapes at
    layer 0) and stay far from overflow (f q_ref <= 1e100, the engines' limit)."""
    f, q0 = values["escape_factor"], values["q0"]
    refs = values["q_star"] if eoc else [q0]
    if f * max(refs) > 1e100:
        raise SpecError(
            f"escape_factor={_show(f)}: escape_factor * q_ref must be <= 1e100 "
            f"(q_ref up to {_show(max(refs))})"
        )
    if eoc and q0 != "q_star":
        outside = [q for q in refs if not q / f <= q0 <= q * f]
        if outside:
            raise SpecError(
                f"q0={_show(q0)}: must lie inside the escape band [q*/{_show(f)}, {_show(f)} q*] "
                f"of every q* (not of q*={_show(outside[0])})"
            )


def _spec(values: dict) -> Spec:
    return Spec(**{f.name: values.get(f.name) for f in fields(Spec)})


def _run(values: dict, default_out: Path) -> Run:
    if "scheduler" in values and values["backend"] != "dask":
        raise SpecError(
            f"scheduler={values['scheduler']}: only with backend=dask (not {values['backend']})"
        )
    return Run(
        out=Path(values.get("out", default_out)),
        n_jobs=values["n_jobs"],
        backend=values["backend"],
        scheduler=values.get("scheduler"),
        max_batch=values.get("max_batch"),
        overwrite=values["overwrite"],
    )


def _check_kind(values: dict, eoc: bool) -> None:
    """The fields that may appear together: sparsity xor tau; off the EoC tau and both sigmas."""
    if "sparsity" in values and "tau" in values:
        raise SpecError(f"tau={_show(values['tau'])}: give sparsity or tau, not both")
    if eoc:
        return
    for need in ("sigma_w2", "sigma_b2", "tau"):
        if need not in values:
            raise SpecError(f"{need}=(missing): required off the Edge of Chaos (with sigma_w2/b2)")
    for banned in ("sparsity", "q_star"):
        if banned in values:
            raise SpecError(
                f"{banned}={_show(values[banned])}: only on the Edge of Chaos; off it "
                "(sigma_w2/sigma_b2 given) the grid takes tau and the inputs start at q0"
            )
    if values.get("q0") == "q_star":
        raise SpecError("q0=q_star: off the Edge of Chaos there is no q*; give a number")


def _value(field: _Field, token):
    """A checked value of ``field``: a sorted tuple of distinct values for a grid, else one value."""
    items = _items(field, token)
    for item in items:
        if not field.ok(item):
            raise SpecError(f"{field.name}={_show(item)}: must be {field.allowed}")
    if not field.grid:
        if len(items) != 1:
            raise SpecError(f"{field.name}={_show(token)}: must be one value, {field.allowed}")
        return items[0]
    if not items:
        raise SpecError(f"{field.name}=(empty): needs at least one value, {field.allowed}")
    for i, item in enumerate(items):
        if item in items[:i]:
            raise SpecError(f"{field.name}={_show(item)}: listed twice; give each value once")
    return tuple(sorted(items, key=FAMILIES.index if field.name == "family" else None))


_NUMERIC = (_number, _integer, _q0)


def _items(field: _Field, token) -> list:
    """Typed values of one raw token: a TOML scalar or array, or a flag-style string (a comma list
    for grids and numbers; ranges for numbers)."""
    if isinstance(token, list):
        return [v for t in token for v in _items(field, t)]
    if not isinstance(token, str) or not (field.grid or field.kind in _NUMERIC):
        return [_typed(field, token)]
    return [v for part in token.split(",") for v in _expand(field, part.strip())]


def _expand(field: _Field, part: str) -> list:
    """``a``, ``start:stop:count`` (linear, endpoints included) or ``log:start:stop:count``;
    ranges of an integer field are rounded to the nearest integer."""
    if ":" not in part or field.kind not in _NUMERIC:
        return [_typed(field, part)]
    pieces = part.split(":")
    log = pieces[0] == "log"
    bounds = pieces[1:] if log else pieces
    try:
        if len(bounds) != 3:
            raise ValueError(part)
        start, stop, count = float(bounds[0]), float(bounds[1]), _integer(bounds[2])
        if count < 1 or not (math.isfinite(start) and math.isfinite(stop)):
            raise ValueError(part)
        if log and (start <= 0 or stop <= 0):
            raise ValueError(part)
    except ValueError:
        raise SpecError(
            f"{field.name}={part}: a range is start:stop:count or log:start:stop:count "
            "(finite ends, count >= 1, log ends > 0)"
        ) from None
    points = (np.geomspace if log else np.linspace)(start, stop, count)
    if field.kind is _integer:
        points = np.rint(points)
    return [field.kind(float(p)) for p in points]


def _typed(field: _Field, token):
    try:
        return field.kind(token)
    except (ValueError, TypeError):
        raise SpecError(f"{field.name}={_show(token)}: must be {field.allowed}") from None


def _show(value) -> str:
    """A value as a user would write it: 0.5, inf, crelu, [1, 2]."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, float):  # the shortest text that reads back as the same float
        return str(int(value)) if value.is_integer() and abs(value) < 1e16 else repr(value)
    if isinstance(value, (list, tuple)):
        return ",".join(_show(v) for v in value)
    return str(value)
