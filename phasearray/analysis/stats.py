"""Ensemble statistics over seeds (SPEC §5), lazily."""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr

from ._common import bare, dress, variable, whole

__all__ = ["ensemble_stats"]

STATISTICS = ("mean", "median", "q16", "q84", "count")


def ensemble_stats(
    ds: xr.Dataset, var: str | xr.DataArray, dim: str = "seed"
) -> xr.Dataset:
    """Mean, median, 16th/84th percentiles and finite count over ensemble members.

    Members holding NaN or inf (diverged runs) are left out of the mean and
    the percentiles but stay visible: ``count`` is the number of finite
    members and ``n_members`` the size of ``dim``, so ``n_members − count``
    members did not give a finite value. A cell with no finite member has NaN
    statistics and ``count`` 0.

    Parameters
    ----------
    ds : xarray.Dataset
        A sweep, as opened by :func:`phasearray.open_sweep`.
    var : str or DataArray
        A variable of ``ds`` (``test_loss``, ``feature_overlap``, …) or any
        DataArray with the dim ``dim`` (e.g. a level-spacing rate).
    dim : str
        Dim of the members, ``seed`` by default.

    Returns
    -------
    xarray.Dataset
        ``mean``, ``median``, ``q16``, ``q84`` (units of ``var``) and ``count``
        (int64), dims of ``var`` without ``dim``; lazy when ``var`` is.

    Examples
    --------
    >>> from phasearray.analysis.synthetic import synthetic_sweep
    >>> ds = synthetic_sweep(seeds=3, diverged=[(0, 0, 1)])
    >>> s = ensemble_stats(ds, "test_loss").isel(t=-1)
    >>> int(s["count"][0, 0]), int(s["n_members"])
    (2, 3)
    """
    data = variable(ds, var) if isinstance(var, str) else bare(var)
    if data.dtype == bool:
        data = data.astype(np.float64)
    stacked = xr.apply_ufunc(
        _member_statistics,
        whole(data, dim),
        input_core_dims=[[dim]],
        output_core_dims=[["statistic"]],
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"statistic": len(STATISTICS)}},
    )
    result = xr.Dataset(
        {
            name: stacked.isel(statistic=i, drop=True)
            for i, name in enumerate(STATISTICS)
        }
    )
    result["count"] = result["count"].astype(np.int64)
    result["n_members"] = data.sizes[dim]
    result.attrs = {"variable": str(data.name), "dim": dim}
    return dress(result, ds)


def _member_statistics(values: np.ndarray) -> np.ndarray:
    """mean, median, q16, q84, count over the last axis, dims (..., 5)."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    clean = np.where(finite, values, np.nan)
    count = finite.sum(axis=-1)

    # all-NaN cells are expected (diverged or unwritten); they give NaN quietly
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(clean, axis=-1)
        q16, median, q84 = np.nanquantile(clean, [0.16, 0.5, 0.84], axis=-1)
    return np.stack([mean, median, q16, q84, count.astype(np.float64)], axis=-1)
