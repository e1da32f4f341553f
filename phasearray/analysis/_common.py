"""Helpers shared by the analysis modules: store attributes and derived inputs."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from ..activations import activate
from ..ensemble import teacher_outputs
from ..errors import ConfigError, MissingVariableError, StoreError

MODEL_DIMS = ("T", "sigma_W", "seed")
SPLITS = {"train": ("x_train", "sample"), "test": ("x_test", "test_sample")}


def attr(ds: xr.Dataset, name: str) -> Any:
    """A root attribute of the store, or an error naming it."""
    if name not in ds.attrs:
        raise StoreError(
            f"the dataset lacks the root attribute {name!r} of docs/store.md; "
            "open it with phasearray.open_sweep"
        )
    return ds.attrs[name]


def variable(ds: xr.Dataset, name: str) -> xr.DataArray:
    """A data variable of the store, or an error naming it and what exists."""
    if name not in ds.data_vars:
        raise MissingVariableError(
            f"the dataset has no variable {name!r}; it holds "
            f"{', '.join(sorted(map(str, ds.data_vars)))}",
            name,
        )
    return bare(ds[name])


def axis(ds: xr.Dataset, name: str) -> xr.DataArray:
    """The index coordinate ``name`` (T, sigma_W, seed, t) alone, in memory."""
    return bare(ds[name])


def widths(ds: xr.Dataset) -> tuple[int, int, int, int]:
    """(n0, n1, n2, n3), from the unit dims."""
    return tuple(int(ds.sizes[f"unit{i}"]) for i in range(4))  # type: ignore[return-value]


def ratio(ds: xr.Dataset) -> float:
    """r = n2 / n1 of the Marchenko–Pastur law."""
    _, n1, n2, _ = widths(ds)
    return n2 / n1


def checkpoint(ds: xr.Dataset, data: xr.DataArray, t: int) -> xr.DataArray:
    """``data`` at checkpoint position ``t`` (negative counts from the end)."""
    n = ds.sizes["t"]
    if not isinstance(t, int | np.integer) or not -n <= t < n:
        raise ConfigError(
            f"t: got {t!r}; must be a checkpoint position in [-{n}, {n - 1}] "
            "(-1 is the last checkpoint)"
        )
    return data.isel(t=int(t))


def read_out(ds: xr.Dataset, t: int) -> xr.DataArray:
    """The student's W3 at checkpoint position ``t``, dims (…, unit3, unit2).

    The teacher's W̄3 while W3 is frozen; the stored ``W3`` where it trains.
    """
    if "W3" in ds.data_vars:
        return whole(checkpoint(ds, variable(ds, "W3"), t), "unit3", "unit2")
    return whole(variable(ds, "teacher_W3"), "unit3", "unit2")


def whole(data: xr.DataArray, *dims: str) -> xr.DataArray:
    """Make ``dims`` one chunk each, as core dims of apply_ufunc must be."""
    if data.chunks is None:
        return data
    return data.chunk({d: -1 for d in dims})


def first_layer(
    ds: xr.Dataset, split: str, t: int | None = None
) -> tuple[xr.DataArray, xr.DataArray]:
    """Features φ1 = φ(x W1ᵀ) and targets y of the training or test set.

    W1 is the teacher's W̄1, which the student shares while W1 is frozen;
    where W1 trains (the store holds ``W1``), the student's W1 at checkpoint
    position ``t`` when one is given.

    Returns
    -------
    phi1 : DataArray, dims (seed, sample, unit1)
        (T, sigma_W, seed, … with fresh teachers or a trained W1); the sample
        dim is renamed to ``sample`` for both splits.
    y : DataArray, dims (seed, sample, unit3)
    """
    if split not in SPLITS:
        raise ConfigError(f"split: got {split!r}; choose 'train' or 'test'")
    name, sample = SPLITS[split]
    x = whole(variable(ds, name), sample, "unit0").rename({sample: "sample"})
    W1 = whole(variable(ds, "teacher_W1"), "unit1", "unit0")
    W2 = whole(variable(ds, "teacher_W2"), "unit2", "unit1")
    W3 = whole(variable(ds, "teacher_W3"), "unit3", "unit2")
    activation = attr(ds, "activation")
    W1_student = W1
    if t is not None and "W1" in ds.data_vars:
        W1_student = whole(checkpoint(ds, variable(ds, "W1"), t), "unit1", "unit0")

    phi1 = xr.apply_ufunc(
        _features_kernel,
        x,
        W1_student,
        input_core_dims=[["sample", "unit0"], ["unit1", "unit0"]],
        output_core_dims=[["sample", "unit1"]],
        kwargs={"activation": activation},
        dask="parallelized",
        output_dtypes=[np.float64],
    )
    y = xr.apply_ufunc(
        teacher_outputs,
        x,
        W1,
        W2,
        W3,
        input_core_dims=[
            ["sample", "unit0"],
            ["unit1", "unit0"],
            ["unit2", "unit1"],
            ["unit3", "unit2"],
        ],
        output_core_dims=[["sample", "unit3"]],
        kwargs={"activation": activation},
        dask="parallelized",
        output_dtypes=[np.float64],
    )
    return phi1, y


def _features_kernel(x: np.ndarray, W1: np.ndarray, activation: str) -> np.ndarray:
    return activate(activation, x @ np.swapaxes(W1, -1, -2), np)


def bare(data: xr.DataArray) -> xr.DataArray:
    """``data`` without its non-index coordinates.

    Those of a store (``learning_rate``, ``epoch``, ``W2_recorded``, …) are
    Dask arrays; xarray compares them, computing, whenever two inputs that
    both carry them meet. Results get them back from :func:`dress`.
    """
    return data.reset_coords(drop=True)


def dress(result: xr.Dataset, ds: xr.Dataset) -> xr.Dataset:
    """Give ``result`` the non-index coordinates of ``ds`` that fit its dims."""
    extra = {
        name: coord.variable
        for name, coord in ds.coords.items()
        if name not in ds.indexes and coord.dims and set(coord.dims) <= set(result.dims)
    }
    return result.assign_coords(extra)


def compute(*datasets: xr.Dataset) -> tuple[xr.Dataset, ...]:
    """Compute several lazy results in one pass, sharing their common inputs.

    The variables go to ``dask.compute`` as DataArrays: handing it Datasets
    whose variables share graph layers (even a single one, e.g. σ_z² and its
    mean over seeds) failed with "Missing dependency" (dask 2026.8, xarray
    2026.9), while the same variables as DataArrays compute.
    """
    import dask

    arrays = [
        (i, name, ds[name]) for i, ds in enumerate(datasets) for name in ds.data_vars
    ]
    values = dask.compute(*(a for _, _, a in arrays))
    out = [xr.Dataset(attrs=ds.attrs) for ds in datasets]
    for (i, name, _), value in zip(arrays, values, strict=True):
        out[i][name] = value
    return tuple(out)
