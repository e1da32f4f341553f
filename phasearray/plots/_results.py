"""The numbers the figures draw, built lazily and computed together once.

Each figure names the pieces it needs; :func:`compute` builds only those
pieces from the ``ds.phase`` accessor and computes them in one
``dask.compute``, so shared inputs (the DBM of the final weights, say) are
computed once and nothing a figure does not draw is read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import xarray as xr

from .. import analysis  # also registers ds.phase
from ..analysis._common import variable
from ..errors import StoreError

logger = logging.getLogger(__name__)

FINAL_VARS = ("test_loss", "train_loss", "grad_norm", "feature_overlap", "alignment")


def flow_cells(ds: xr.Dataset) -> dict[str, dict[str, int]]:
    """Grid positions of the ordered, hot and jammed examples of figure 6.

    Ordered: lowest T, smallest σ_W; hot: highest T, smallest σ_W; jammed:
    lowest T, largest σ_W (the corners where the paper shows them).
    """
    last_T, last_sigma = ds.sizes["T"] - 1, ds.sizes["sigma_W"] - 1
    return {
        "ordered": {"T": 0, "sigma_W": 0},
        "hot": {"T": last_T, "sigma_W": 0},
        "jammed": {"T": 0, "sigma_W": last_sigma},
    }


def _final(ds: xr.Dataset, **_: Any) -> xr.Dataset:
    for name in FINAL_VARS:
        variable(ds, name)  # a StoreError naming what the store lacks
    parts = []
    for name in FINAL_VARS:
        stats = ds.phase.stats(ds[name].isel(t=-1, drop=True))
        parts.append(stats.rename({k: f"{name}_{k}" for k in stats.data_vars}))
    return xr.merge(parts, compat="override")


def _grad_initial(ds: xr.Dataset, **_: Any) -> xr.Dataset:
    return ds.phase.stats(ds["grad_norm"].isel(t=0, drop=True))


def _rate(ds: xr.Dataset, **_: Any) -> xr.Dataset:
    rate = ds.phase.level_spacing()["rate_per_epoch"].isel(t=-1, drop=True)
    return ds.phase.stats(rate)


def _boundaries(ds: xr.Dataset, convention: str, **_: Any) -> xr.Dataset:
    return ds.phase.boundaries(convention=convention)


def _labels(ds: xr.Dataset, convention: str, **_: Any) -> xr.Dataset:
    return ds.phase.classify(convention=convention)


def _features(ds: xr.Dataset, **_: Any) -> xr.Dataset:
    return ds.phase.feature_variance()


def _flows(ds: xr.Dataset, **_: Any) -> xr.Dataset:
    cells = {
        name: ds["eigenvalues"].isel(where, drop=True)
        for name, where in flow_cells(ds).items()
    }
    return xr.Dataset(cells | {"teacher_W2": ds["teacher_W2"]})


def _initial(ds: xr.Dataset, **_: Any) -> xr.Dataset:
    spectra = ds.phase.level_spacing()
    keep = ["mp_x_minus", "mp_x_plus", "mp_density", "sigma_W_fit"]
    out = spectra[keep]
    out["initial"] = ds["eigenvalues"].isel(t=0, T=0, drop=True)
    return out


BUILDERS: dict[str, Callable[..., xr.Dataset]] = {
    "final": _final,
    "grad_initial": _grad_initial,
    "rate": _rate,
    "boundaries": _boundaries,
    "labels": _labels,
    "features": _features,
    "flows": _flows,
    "initial": _initial,
}


def compute(ds: xr.Dataset, needs: Iterable[str], convention: str) -> dict[str, Any]:
    """Build and compute the named pieces together; returns name → Dataset."""
    lazy, missing = build(ds, needs, convention)
    if missing:
        raise next(iter(missing.values()))
    return compute_built(lazy)


def build(
    ds: xr.Dataset, needs: Iterable[str], convention: str
) -> tuple[dict[str, xr.Dataset], dict[str, StoreError]]:
    """The named pieces, lazy; and the error of each one the store cannot give.

    A piece fails to build when the store lacks a variable it needs (a store
    imported from the authors' release holds no training inputs, say);
    building reads nothing, so this is cheap.
    """
    lazy, missing = {}, {}
    for name in sorted(set(needs)):
        try:
            lazy[name] = BUILDERS[name](ds, convention=convention)
        except StoreError as error:
            missing[name] = error
    return lazy, missing


def compute_built(lazy: dict[str, xr.Dataset]) -> dict[str, Any]:
    """Compute built pieces in one pass; returns name → Dataset."""
    names = list(lazy)
    logger.debug("computing %s for the figures", ", ".join(names))
    out: dict[str, Any] = dict(
        zip(names, analysis.compute(*lazy.values()), strict=True)
    )
    if "flows" in out:
        out["teacher_eigenvalues"] = _teacher_eigenvalues(out["flows"]["teacher_W2"])
    return out


def _teacher_eigenvalues(teacher_W2: xr.DataArray) -> np.ndarray:
    """Eigenvalues of W̄2 W̄2ᵀ of every teacher, flattened."""
    W = np.asarray(teacher_W2.values, dtype=np.float64)
    return np.linalg.eigvalsh(W @ np.swapaxes(W, -1, -2)).ravel()
