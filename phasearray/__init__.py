"""phasearray: the phase diagram of stochastic gradient descent, as labelled arrays.

Train ensembles of teacher–student networks over a grid of temperature
T = ε/|B|, initial weight scale σ_W and seed; store weights, spectra and
observables in Zarr; analyse the ordered, hot and jammed phases lazily with
xarray and Dask.
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("phasearray")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

from . import analysis as analysis  # registers the ds.phase accessor
from .catalog import open_catalog
from .config import Pipeline, load_pipeline, parse_pipeline
from .errors import (
    ConfigError,
    EngineUnavailableError,
    PhasearrayError,
    StoreError,
    StoreMismatchError,
)
from .simulate import simulate
from .store import open_sweep
from .study import open_study, run_study
from .sweep import run_sweep

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "ConfigError",
    "EngineUnavailableError",
    "PhasearrayError",
    "Pipeline",
    "StoreError",
    "StoreMismatchError",
    "__version__",
    "load_pipeline",
    "open_catalog",
    "open_study",
    "open_sweep",
    "parse_pipeline",
    "run_study",
    "run_sweep",
    "simulate",
]
