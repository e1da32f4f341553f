"""A small, store-shaped sweep made without training, for examples and tests.

:func:`synthetic_sweep` returns an in-memory :class:`xarray.Dataset` with the
dims, coordinates, variables and root attributes of ``docs/store.md``. Its
teachers, data and initial weights are drawn exactly as a sweep draws them
(:mod:`phasearray.ensemble`); its trajectories are not SGD but a caricature of
the three phases, so that every analysis and figure has something to show:

    W2(t) = a(t) W2(0) + (1 − a(t)) W̄2 + b(t) N_t

with a(t) = exp(−κ t / steps), κ = 8 / (1 + σ_W²) (slow relaxation from a wide
start: "jammed"), and noise growing as b(t) = √(T t / steps) (large at high T:
"hot"). All observables are then computed from W2 with
:mod:`phasearray.observables`, so they are consistent with the weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr
import yaml

from .. import observables as obs
from ..activations import activate
from ..config import log_checkpoints
from ..ensemble import make_ensemble, stream_key, teacher_outputs
from ..schedule import keyed_generator

__all__ = ["synthetic_sweep"]

_NOISE_TAG = 0x5EED


def synthetic_sweep(
    T: Sequence[float] = (2.0**-5, 1.0, 2.0**6),
    sigma_W: Sequence[float] = (0.125, 1.0, 64.0),
    seeds: int = 4,
    *,
    steps: int = 1000,
    n_checkpoints: int = 6,
    widths: Sequence[int] = (3, 32, 16, 1),
    n_train: int = 200,
    n_test: int = 32,
    batch_size: int = 4,
    activation: str = "tanh",
    diverged: Sequence[tuple[int, int, int]] = (),
) -> xr.Dataset:
    """A sweep-shaped Dataset with made-up trajectories (see module docstring).

    Parameters
    ----------
    T, sigma_W : sequence of float
        Grid values, ascending.
    seeds : int
        Members per cell (seeds 0 … seeds − 1).
    steps : int
        Last checkpoint, in SGD steps.
    n_checkpoints : int
        About this many log-spaced checkpoints after t = 0.
    widths : (n0, n1, n2, n3)
    n_train, n_test : int
        Sizes of the training and test sets.
    batch_size : int
        |B|; sets ``learning_rate`` and ``epoch``.
    activation : {"tanh", "relu", "identity"}
    diverged : sequence of (i_T, i_sigma_W, i_seed)
        Members whose weights turn NaN after t = 0, as a diverged run's do.

    Returns
    -------
    xarray.Dataset
        NumPy-backed; call ``.chunk(...)`` for a Dask-backed one.

    Examples
    --------
    >>> ds = synthetic_sweep(seeds=2)
    >>> dict(ds.W2.sizes)
    {'T': 3, 'sigma_W': 3, 'seed': 2, 't': 7, 'unit2': 16, 'unit1': 32}
    """
    T_values = np.asarray(T, dtype=np.float64)
    sigma_values = np.asarray(sigma_W, dtype=np.float64)
    t = log_checkpoints(steps, n_checkpoints)
    ensemble = make_ensemble(
        [stream_key(s) for s in range(seeds)], widths, n_train, n_test
    )

    W2 = _trajectories(ensemble, T_values, sigma_values, t, steps)
    for i_T, i_sigma, i_seed in diverged:
        W2[i_T, i_sigma, i_seed, 1:] = np.nan
    variables = _observables(ensemble, W2, activation)
    variables["W2"] = W2
    return _dataset(
        variables, ensemble, T_values, sigma_values, t, steps, batch_size, activation
    )


def _trajectories(ensemble, T, sigma_W, t, steps):
    """W2 of dims (T, sigma_W, seed, t, n2, n1) following the module docstring."""
    n1 = ensemble.W2_normal.shape[-1]
    initial = sigma_W[:, None, None, None] / np.sqrt(n1) * ensemble.W2_normal
    teacher = ensemble.teacher_W2
    fraction = t / steps

    decay = np.exp(-8 / (1 + sigma_W[:, None] ** 2) * fraction)  # (sigma_W, t)
    spread = np.sqrt(T[:, None] * fraction)  # (T, t)
    noise = np.stack(
        [
            keyed_generator(key, _NOISE_TAG).standard_normal(
                (t.size, *teacher.shape[1:])
            )
            for key in ensemble.keys
        ]
    )  # (seed, t, n2, n1)
    noise = noise / np.sqrt(n1)

    a = decay[None, :, None, :, None, None]
    drift = a * initial[None, :, :, None] + (1 - a) * teacher[None, None, :, None]
    return drift + spread[:, None, None, :, None, None] * noise[None, None]


def _observables(ensemble, W2, activation):
    """The store's per-checkpoint observables of W2, dims (T, sigma_W, seed, t)."""
    phi1_train = activate(activation, ensemble.x_train @ _T(ensemble.teacher_W1), np)
    phi1_test = activate(activation, ensemble.x_test @ _T(ensemble.teacher_W1), np)
    args = (ensemble.teacher_W1, ensemble.teacher_W2, ensemble.teacher_W3, activation)
    y_train = teacher_outputs(ensemble.x_train, *args)
    y_test = teacher_outputs(ensemble.x_test, *args)

    # members on axis 2 (seed) line up with the per-seed data after moving t ahead
    W = np.moveaxis(W2, 3, 0)  # (t, T, sigma_W, seed, n2, n1)
    W3 = ensemble.teacher_W3
    with np.errstate(invalid="ignore", over="ignore"):
        phi2_train = obs.features(phi1_train, W, activation)
        phi2_test = obs.features(phi1_test, W, activation)
        gradient = obs.gradient(phi1_train, y_train, W, W3, activation)
        values = {
            "eigenvalues": obs.eigenvalues(W),
            "train_loss": obs.loss(phi2_train, y_train, W3),
            "test_loss": obs.loss(phi2_test, y_test, W3),
            "grad_norm": np.sqrt(np.sum(gradient * gradient, axis=(-2, -1))),
            "feature_overlap": obs.feature_overlap(phi2_test, phi2_test[:1]),
            "alignment": obs.alignment(phi2_test, y_test, W3),
        }
    values["diverged"] = ~np.all(np.isfinite(W), axis=(-2, -1))
    values["done"] = np.ones_like(values["diverged"])
    return {k: np.moveaxis(v, 0, 3) for k, v in values.items()}


def _T(a):
    return np.swapaxes(a, -1, -2)


_LONG_NAMES = {
    "W2": ("unit2", "unit1"),
    "eigenvalues": ("eigen",),
    "train_loss": (),
    "test_loss": (),
    "grad_norm": (),
    "feature_overlap": (),
    "alignment": (),
    "diverged": (),
    "done": (),
}
_ENSEMBLE = {
    "teacher_W1": ("unit1", "unit0"),
    "teacher_W2": ("unit2", "unit1"),
    "teacher_W3": ("unit3", "unit2"),
    "x_train": ("sample", "unit0"),
    "x_test": ("test_sample", "unit0"),
}


def _dataset(variables, ensemble, T, sigma_W, t, steps, batch_size, activation):
    n_train = ensemble.x_train.shape[1]
    widths = [
        ensemble.x_train.shape[-1],
        *ensemble.teacher_W2.shape[1:][::-1],
        ensemble.teacher_W3.shape[1],
    ]
    steps_per_epoch = n_train // batch_size
    data = {
        name: (
            ("T", "sigma_W", "seed", "t", *extra),
            variables[name],
            {"long_name": name.replace("_", " "), "units": "1"},
        )
        for name, extra in _LONG_NAMES.items()
    }
    data |= {
        name: (
            ("seed", *extra),
            getattr(ensemble, name),
            {"long_name": name.replace("_", " "), "units": "1"},
        )
        for name, extra in _ENSEMBLE.items()
    }
    coords = {
        "T": ("T", T),
        "sigma_W": ("sigma_W", sigma_W),
        "seed": ("seed", np.arange(len(ensemble.keys))),
        "t": ("t", t),
        "learning_rate": ("T", T * batch_size),
        "inv_sigma_W": ("sigma_W", 1 / sigma_W),
        "epoch": ("t", t / steps_per_epoch),
        "W2_recorded": ("t", np.ones(t.size, dtype=bool)),
    }
    pipeline = {
        "name": "synthetic",
        "grid": {
            "T": T.tolist(),
            "sigma_W": sigma_W.tolist(),
            "seeds": len(ensemble.keys),
        },
    }
    attrs = {
        "title": "synthetic phasearray sweep (no training)",
        "schema_version": "1",
        "pipeline": yaml.safe_dump(pipeline),
        "pipeline_fingerprint": "synthetic",
        "phasearray_version": "synthetic",
        "git_revision": "unknown",
        "engine": "synthetic",
        "dtype": "float64",
        "created": "1970-01-01T00:00:00+00:00",
        "activation": activation,
        "schedule": "sequential",
        "batch_size": batch_size,
        "steps": int(steps),
        "steps_per_epoch": steps_per_epoch,
        "n_train": n_train,
        "n_test": ensemble.x_test.shape[1],
        "widths": [int(w) for w in widths],
        "fresh_teachers": 0,
        "block_shape": [T.size, sigma_W.size, len(ensemble.keys)],
    }
    return xr.Dataset(data, coords=coords, attrs=attrs)
