"""Eigenvalue spectra: level spacing, its rate, and Marchenko–Pastur (SPEC §4)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from .. import rmt
from ._common import attr, axis, dress, ratio, variable, whole

__all__ = ["level_spacing", "marchenko_pastur"]

_MP_POINTS = 201


def level_spacing(ds: xr.Dataset) -> xr.Dataset:
    """Average level spacing S(t), its rate λ̄(t) and the initial spectra's law.

    Parameters
    ----------
    ds : xarray.Dataset
        A sweep with ``eigenvalues`` (T, sigma_W, seed, t, eigen).

    Returns
    -------
    xarray.Dataset, lazy
        ``level_spacing`` S = (x_N − x_1)/(N − 1), eq. (4.5) of Park et al.
        2025, dims (T, sigma_W, seed, t); ``rate_per_step`` and
        ``rate_per_epoch``, λ̄(t) = (1/t) log(S(t)/S(0)), eq. (4.7), with t in
        steps or epochs (NaN at t = 0); and everything of
        :func:`marchenko_pastur`.

    Examples
    --------
    >>> from phasearray.analysis.synthetic import synthetic_sweep
    >>> out = level_spacing(synthetic_sweep(seeds=2))
    >>> out.rate_per_epoch.dims
    ('T', 'sigma_W', 'seed', 't')
    """
    eigenvalues = whole(variable(ds, "eigenvalues"), "eigen")
    S = xr.apply_ufunc(
        rmt.level_spacing,
        eigenvalues,
        input_core_dims=[["eigen"]],
        dask="parallelized",
        output_dtypes=[np.float64],
    )
    per_step = xr.apply_ufunc(
        rmt.level_spacing_rate,
        S,
        S.isel(t=0, drop=True),
        S["t"].astype(np.float64),
        dask="parallelized",
        output_dtypes=[np.float64],
    )
    out = marchenko_pastur(ds)
    out["level_spacing"] = S.assign_attrs(
        long_name="average level spacing S", units="1"
    )
    out["rate_per_step"] = per_step.assign_attrs(
        long_name="time-averaged rate of S", units="1/step"
    )
    out["rate_per_epoch"] = (
        per_step * float(attr(ds, "steps_per_epoch"))
    ).assign_attrs(long_name="time-averaged rate of S", units="1/epoch")
    return dress(out, ds)


def marchenko_pastur(ds: xr.Dataset) -> xr.Dataset:
    """Marchenko–Pastur law of each σ_W and a fit of the initial spectra.

    Parameters
    ----------
    ds : xarray.Dataset
        A sweep with ``eigenvalues``; r = n2/n1 comes from its unit dims.

    Returns
    -------
    xarray.Dataset, lazy
        ``mp_x_minus``, ``mp_x_plus`` (sigma_W): the edges of eq. (4.2);
        ``mp_density`` (sigma_W, mp_point) on the points ``mp_x`` spanning
        [x₋, x₊]; ``sigma_W_fit`` (sigma_W): σ_W estimated from the eigenvalues
        at t = 0 pooled over T, seeds and levels, by the law's mean σ_W²
        (method of moments); ``initial_mean`` the pooled mean itself.
    """
    r = ratio(ds)
    sigma_W = axis(ds, "sigma_W")
    x_minus, x_plus = rmt.marchenko_pastur_edges(sigma_W.values, r)
    fraction = np.linspace(0.0, 1.0, _MP_POINTS)
    x = x_minus[:, None] + (x_plus - x_minus)[:, None] * fraction
    density = rmt.marchenko_pastur_density(x, sigma_W.values[:, None], r)

    initial = variable(ds, "eigenvalues").isel(t=0, drop=True)
    pooled_mean = initial.mean(dim=[d for d in initial.dims if d != "sigma_W"])
    out = xr.Dataset(
        {
            "mp_x_minus": ("sigma_W", x_minus, {"long_name": "MP lower edge x₋"}),
            "mp_x_plus": ("sigma_W", x_plus, {"long_name": "MP upper edge x₊"}),
            "mp_density": (
                ("sigma_W", "mp_point"),
                density,
                {"long_name": "MP density"},
            ),
            "initial_mean": pooled_mean,
            "sigma_W_fit": (pooled_mean**0.5).assign_attrs(
                long_name="σ_W fitted to the initial spectra (method of moments)"
            ),
        },
        coords={"sigma_W": sigma_W, "mp_x": (("sigma_W", "mp_point"), x)},
        attrs={"r": r},
    )
    return dress(out, ds)
