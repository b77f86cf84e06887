"""The analysis commands' shared command line: one-line errors with exit status 2, outputs checked
before any work.

Every anticipated failure of a command (a bad argument, a missing, incomplete or damaged store, an
output it cannot write, a theory function refusing a parameter with ``ValueError``) ends as one line
on stderr naming what was wrong, and exit status 2, with nothing written.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from ._store import StoreError


class CommandError(Exception):
    """A bad command-line argument or output path (one line)."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a :class:`CommandError` (one line), not usage + exit."""

    def error(self, message: str):
        raise CommandError(message)


def probability(text: str) -> float:
    """argparse type: a number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a number strictly between 0 and 1")
    return value


def add_n_jobs(parser: Parser) -> None:
    """The ``--n-jobs`` option of the commands that read a store cell by cell."""

    def jobs(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1 and value != -1:
            raise argparse.ArgumentTypeError(f"{text!r}: must be a whole number >= 1, or -1")
        return value

    parser.add_argument(
        "--n-jobs",
        type=jobs,
        default=-1,
        help="processes reading the cells (-1, the default: one per core; at most one per core; "
        "a store of fewer than 256 finished cells is read in one)",
    )


def _first_existing(path: Path) -> Path:
    return next(p for p in (path, *path.parents) if p.exists())


def _can_create_in(directory: Path) -> bool:
    """True when a file can be created in ``directory``. Probed with an unnamed temporary file
    (O_TMPFILE on Linux: no directory entry is ever made; elsewhere one is made and removed at
    once), since permission bits do not tell (root, /proc, read-only mounts)."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False


def writable_dir(path: Path, field: str = "out") -> Path:
    """``path`` (absolute) if it is, or can be made, a writable directory; else CommandError."""
    path = Path(path).absolute()
    root = _first_existing(path)
    if not root.is_dir():
        raise CommandError(f"{field}={path}: {root} is not a directory; choose another --{field}")
    if not _can_create_in(root):
        raise CommandError(f"{field}={path}: {root} is not writable; choose another --{field}")
    return path


def writable_file(path: Path, field: str = "out") -> Path:
    """``path`` (absolute) if it is, or can be made, a writable file; else CommandError."""
    path = Path(path).absolute()
    if path.is_dir():
        raise CommandError(f"{field}={path}: is a directory; give a file name")
    writable_dir(path.parent, field)
    return path


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> None:
    """Run a command's ``main`` and exit with its status; the anticipated errors (module docstring)
    become ``error: <one line>`` on stderr and status 2."""
    try:
        code = main(argv)
    except (CommandError, StoreError, ValueError, OSError) as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        code = 2
    sys.exit(code)
