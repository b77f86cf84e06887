"""A training run's state at the end of an epoch, on disk, so that a killed run resumes mid-way and
ends with the same numbers as one that was never interrupted.

One ``.npz`` file per run holds everything the next epoch depends on:

- ``epoch``: the last finished epoch (0 = the initialisation was measured);
- ``params/<name>`` and ``opt/<i>``: the network's parameters and the leaves of the optimiser's
  state (Adam's moments and step count) in the order of ``jax.tree_util.tree_leaves``;
- ``rng``: the shuffling generator's state (``bit_generator.state`` as JSON), i.e. its position
  in the stream;
- ``out/<name>``: the per-epoch measurements so far;
- ``run``: a JSON description of the run (activation, q*, chi_1, sizes, optimiser, seed, data
  shapes), so that a file is never resumed into another run.

A file is written whole or not at all: to a temporary name beside it, flushed to disk, then renamed
over the old one (``os.replace`` is atomic on POSIX), so a kill -9 or a power loss at any moment
leaves either the previous epoch's state or this one's.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class CheckpointMismatch(ValueError):
    """The file holds the state of another run."""


@dataclass
class RunState:
    """What :func:`save` writes and :func:`load` returns: numpy arrays, no JAX."""

    epoch: int
    params: dict[str, np.ndarray]
    opt_leaves: list[np.ndarray]
    rng_state: dict
    out: dict[str, np.ndarray]


def save(path: Path, run: str, state: RunState) -> None:
    """Write ``state`` of the run described by ``run`` (a JSON string) to ``path``, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "epoch": np.array(state.epoch),
        "run": np.array(run),
        "rng": np.array(json.dumps(state.rng_state)),
        **{f"params/{k}": np.asarray(v) for k, v in state.params.items()},
        **{f"opt/{i}": np.asarray(v) for i, v in enumerate(state.opt_leaves)},
        **{f"out/{k}": np.asarray(v) for k, v in state.out.items()},
    }
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: Path, run: str) -> RunState | None:
    """The state saved at ``path`` for the run ``run``; None if there is no file.
    CheckpointMismatch (one line) if the file is another run's or cannot be read."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            saved = str(f["run"])
            if saved != run:
                raise CheckpointMismatch(
                    f"checkpoint={path}: holds another training run ({_difference(saved, run)}); "
                    "delete it, or give another path"
                )
            groups = {"params": {}, "opt": {}, "out": {}}
            for key in f.files:
                group, _, name = key.partition("/")
                if group in groups:
                    groups[group][name] = f[key]
            return RunState(
                int(f["epoch"]),
                groups["params"],
                [groups["opt"][str(i)] for i in range(len(groups["opt"]))],
                json.loads(str(f["rng"])),
                groups["out"],
            )
    except (OSError, ValueError, KeyError, EOFError) as err:
        if isinstance(err, CheckpointMismatch):
            raise
        raise CheckpointMismatch(
            f"checkpoint={path}: cannot be read ({err}); delete it to start the run again"
        ) from None


def epoch_of(path: Path) -> int | None:
    """The last finished epoch saved at ``path`` (None: no readable file). Reads one small member."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return int(f["epoch"])
    except (OSError, ValueError, KeyError, EOFError):
        return None


def _difference(saved: str, run: str) -> str:
    """The first key whose value differs between two run descriptions, as ``key: a != b``."""
    a, b = json.loads(saved), json.loads(run)
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            return f"{key}: {a.get(key)!r} != {b.get(key)!r}"
    return "?"
