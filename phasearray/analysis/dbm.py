"""Dyson-Brownian-motion drift, noise and convergence per model (SPEC §4), lazily."""

from __future__ import annotations

import numpy as np
import xarray as xr

from .. import rmt
from ._common import (
    attr,
    axis,
    checkpoint,
    dress,
    first_layer,
    ratio,
    read_out,
    variable,
    whole,
    widths,
)

__all__ = ["dbm"]

# The paper evaluates K and V over the training set, the authors' notebook
# over its 128 test samples.
_SPLIT = {"paper": "train", "phase_ml": "test"}


def dbm(ds: xr.Dataset, t: int = -1, convention: str = "paper") -> xr.Dataset:
    """K̃, Ṽ, K_S, V_S, D_S and the convergence criterion of every model.

    Recomputed from the stored ``W2`` at checkpoint ``t``, the frozen
    ``teacher_W3`` read-out and the data set, with φ1 = φ(x W̄1ᵀ) and
    y = teacher(x) (see :func:`phasearray.rmt.dbm_coefficients`). Where W1
    and W3 train too, their stored values at ``t`` take the teacher's place:
    K̃ and Ṽ are then those of W2's motion with the other layers held at
    their values at ``t``.

    Parameters
    ----------
    ds : xarray.Dataset
        A sweep; ``W2`` must be recorded at ``t`` (``W2_recorded``), otherwise
        the results there are NaN and no model counts as converged.
    t : int
        Checkpoint position; -1 (the end of training) as in the paper.
    convention : {"paper", "phase_ml"}
        ``paper``: appendix B of Park et al. 2025 over the training set;
        ``phase_ml``: the authors' notebook over the test set (see
        :func:`phasearray.rmt.level_spacing_coefficients` and
        :func:`phasearray.rmt.dbm_criterion` for every difference).

    Returns
    -------
    xarray.Dataset, lazy, dims (T, sigma_W, seed[, eigen_i, eigen_j])
        ``K_tilde``, ``V_tilde`` (…, eigen_i, eigen_j), ``dbm_eigenvalues``
        (…, eigen_i) in the convention's order, ``K_S``, ``V_S``, ``D_S``,
        ``criterion_lhs``, ``criterion_rhs`` and ``converged`` (bool; False for
        diverged models).

    Examples
    --------
    >>> from phasearray.analysis.synthetic import synthetic_sweep
    >>> out = dbm(synthetic_sweep(seeds=2))
    >>> out.converged.dims
    ('T', 'sigma_W', 'seed')
    """
    rmt._check_convention(convention)
    _, n1, n2, _ = widths(ds)
    W2 = whole(checkpoint(ds, variable(ds, "W2"), t), "unit2", "unit1")
    W3 = read_out(ds, t)
    phi1, y = first_layer(ds, _SPLIT[convention], t)

    K_tilde, V_tilde, values = xr.apply_ufunc(
        rmt.dbm_coefficients,
        W2,
        W3,
        phi1,
        y,
        input_core_dims=[
            ["unit2", "unit1"],
            ["unit3", "unit2"],
            ["sample", "unit1"],
            ["sample", "unit3"],
        ],
        output_core_dims=[["eigen_i", "eigen_j"], ["eigen_i", "eigen_j"], ["eigen_i"]],
        kwargs={"activation": attr(ds, "activation"), "convention": convention},
        dask="parallelized",
        output_dtypes=[np.float64] * 3,
        dask_gufunc_kwargs={"output_sizes": {"eigen_i": n2, "eigen_j": n2}},
    )
    # a second pass for K_S, V_S, D_S: it needs only two rows of Ṽ, so what
    # depends on it (the boundaries) does not pay for the whole matrices
    K_S, V_S, D_S = xr.apply_ufunc(
        rmt.dbm_level_spacing,
        W2,
        W3,
        phi1,
        y,
        input_core_dims=[
            ["unit2", "unit1"],
            ["unit3", "unit2"],
            ["sample", "unit1"],
            ["sample", "unit3"],
        ],
        output_core_dims=[[], [], []],
        kwargs={"activation": attr(ds, "activation"), "convention": convention},
        dask="parallelized",
        output_dtypes=[np.float64] * 3,
    )
    converged, lhs, rhs = xr.apply_ufunc(
        rmt.dbm_criterion,
        K_S,
        V_S,
        axis(ds, "T"),
        axis(ds, "sigma_W"),
        kwargs={"r": ratio(ds), "n2": n2, "convention": convention},
        output_core_dims=[[], [], []],
        dask="parallelized",
        output_dtypes=[bool, np.float64, np.float64],
    )
    out = xr.Dataset(
        {
            "K_tilde": K_tilde.assign_attrs(long_name="rotated drift K̃"),
            "V_tilde": V_tilde.assign_attrs(long_name="rotated noise Ṽ"),
            "dbm_eigenvalues": values.assign_attrs(long_name="eigenvalues of W2 W2ᵀ"),
            "K_S": K_S.assign_attrs(long_name="drift of the level spacing K_S"),
            "V_S": V_S.assign_attrs(long_name="Coulomb coefficient V_S"),
            "D_S": D_S.assign_attrs(long_name="diffusion of the level spacing D_S"),
            "criterion_lhs": lhs,
            "criterion_rhs": rhs,
            "converged": converged.assign_attrs(
                long_name="level spacing converges, eq. (4.15)"
            ),
        },
        attrs={
            "convention": convention,
            "t": int(axis(ds, "t")[t]),
            "n1": n1,
            "n2": n2,
        },
    )
    return dress(out, ds)
