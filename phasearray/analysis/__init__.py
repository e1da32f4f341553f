"""Lazy analysis of a sweep: ensemble statistics, spectra, DBM, phases.

Importing this package registers the ``ds.phase`` accessor on
:class:`xarray.Dataset`. Every function takes an opened sweep (see
``docs/store.md``) and returns lazy xarray objects; nothing is computed until
``.compute()`` or a plot asks for numbers. The array kernels behind them live
in :mod:`phasearray.rmt`.

Examples
--------
>>> import phasearray.analysis
>>> from phasearray.analysis.synthetic import synthetic_sweep
>>> ds = synthetic_sweep(seeds=2).chunk({"seed": 1})
>>> labels = ds.phase.classify()
>>> labels.label_dbm.dims
('T', 'sigma_W')
"""

from __future__ import annotations

from ._common import compute
from .accessor import PhaseAccessor
from .dbm import dbm
from .phases import (
    HOT,
    JAMMED,
    LABELS,
    LEVELS,
    ORDERED,
    boundaries,
    classify,
    contour_lines,
    feature_variance,
    recommend,
)
from .spectra import level_spacing, marchenko_pastur
from .stats import ensemble_stats
from .synthetic import synthetic_sweep

__all__ = [
    "HOT",
    "JAMMED",
    "LABELS",
    "LEVELS",
    "ORDERED",
    "PhaseAccessor",
    "boundaries",
    "classify",
    "compute",
    "contour_lines",
    "dbm",
    "ensemble_stats",
    "feature_variance",
    "level_spacing",
    "marchenko_pastur",
    "recommend",
    "synthetic_sweep",
]
