"""Helpers the tests share for reading stores (a plain module, imported by the test modules)."""

from __future__ import annotations

import warnings
from pathlib import Path

import xarray as xr

PROVENANCE = ("wall_time_s", "created", "git_commit")
"""The attributes that say when, how fast and from which commit a store was made: two runs of the
same spec differ only in these."""


def load_data(path: Path) -> xr.Dataset:
    """The store at ``path``, loaded, without :data:`PROVENANCE`; it must open without warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(path).load()
    for key in PROVENANCE:
        ds.attrs.pop(key, None)
    return ds
