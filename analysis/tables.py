"""Every table of one store, each computed once on first use and shared by the report and the
figures (the width law, the stability table and the escape table feed several of them)."""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property

import pandas as pd

from ._store import Results
from .fit import ALPHA, start_fit_table
from .instability import (
    clip_window,
    escape_table,
    jump_table,
    stability_table,
    start_network_table,
    width_law,
)
from .phase import mc_phase, sigma_mc, theory_phase_of
from .theory import Prepared, prepare
from .width_law import local_exponents, mean_escape, width_law_table


class Tables:
    """The tables of ``results`` as lazily computed attributes (see each function's docstring)."""

    def __init__(self, results: Results, alpha: float = ALPHA, n_jobs: int = 1):
        self.results = results
        self.alpha = alpha
        self.n_jobs = n_jobs
        """Processes for the tables read cell by cell (``analysis._parallel.start_cells``)."""
        self._started: dict[str, Callable[[], pd.DataFrame]] = {}

    def start(self) -> Prepared:
        """Start the tables read cell by cell (fit, networks): with workers (``n_jobs``), they
        compute while this process computes :attr:`prepared`, which it returns, and goes on."""
        self._started = {"fit": self._start_fit(), "networks": self._start_networks()}
        return self.prepared

    @cached_property
    def prepared(self) -> Prepared:
        """The theory of every parameter cell of the store, computed at once
        (:func:`analysis.theory.prepare`): what the fit table (read in this process), the width
        law and the figures take the cells' predictions from."""
        return prepare(self.results)

    def _start_fit(self) -> Callable[[], pd.DataFrame]:
        return start_fit_table(self.results, self.alpha, self.n_jobs, lambda: self.prepared)

    def _start_networks(self) -> Callable[[], pd.DataFrame]:
        return start_network_table(self.results, fates=self.results.eoc, n_jobs=self.n_jobs)

    @cached_property
    def fit(self) -> pd.DataFrame:
        return (self._started.pop("fit", None) or self._start_fit())()

    @cached_property
    def networks(self) -> pd.DataFrame:
        """Escapes and, on the Edge of Chaos, network fates: what the escape, stability and jump
        tables show, from one read of the per-network data."""
        return (self._started.pop("networks", None) or self._start_networks())()

    @cached_property
    def escape(self) -> pd.DataFrame:
        return escape_table(self.results, self.networks)

    @cached_property
    def width_law(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(points, fits) of :func:`analysis.instability.width_law`."""
        return width_law(self.results, prepared=self.prepared)

    @cached_property
    def asymptotic_width_law(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(cells, local exponents) of :mod:`analysis.width_law`: mean escape depths against the
        asymptotic and diffusion theories."""
        cells = mean_escape(self.results)
        return cells, local_exponents(cells) if len(cells) else pd.DataFrame()

    @cached_property
    def width_law_summary(self) -> pd.DataFrame:
        return width_law_table(self.results, *self.asymptotic_width_law)

    @cached_property
    def stability(self) -> pd.DataFrame:
        return stability_table(self.results, self.networks)

    @cached_property
    def window(self) -> pd.DataFrame:
        return clip_window(self.results, self.stability)

    @cached_property
    def jumps(self) -> pd.DataFrame:
        return jump_table(self.results, self.networks)

    @cached_property
    def phase_theory(self) -> pd.DataFrame:
        return theory_phase_of(self.results)

    @cached_property
    def phase_mc(self) -> pd.DataFrame:
        return mc_phase(self.results, self.stability, self.escape)

    @cached_property
    def sigma(self) -> pd.DataFrame:
        return sigma_mc(self.results)
