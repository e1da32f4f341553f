"""Beyond the paper: chaos, the linear scaling rule, study variants, one-particle theory.

Four questions the paper leaves open, answered from stores and studies:

- **Chaos.** Is the hot phase the chaotic one? The finite-time Lyapunov
  exponent λ (recorded with ``record.lyapunov: true``, see
  :mod:`phasearray.lyapunov`) gives an order parameter whose onset in T is
  compared with the DBM boundary: :func:`lyapunov_map`,
  :func:`chaos_boundary`, :func:`chaos_labels`, :func:`chaos_vs_dbm`.
- **Linear scaling rule.** Do runs at the same T = ε/|B| but different |B|
  end alike? :func:`matched_checkpoints`, :func:`collapse_spread`,
  :func:`scaling_collapse` on a batch-size study.
- **Activations and widths.** How do the boundaries move with φ and with the
  size of the network? :func:`open_variants`, :func:`variant_boundaries`,
  :func:`variant_maps` on any study.
- **One-particle theory.** Does eq. (4.8) of Park et al. 2025 for the mean
  level spacing, with its coefficients measured along the run, reproduce the
  measured S(t)? :func:`integrate_level_spacing`, :func:`one_particle`.

Analyses that read a whole grid stay lazy; the ones that pick indices from
the data (:func:`matched_checkpoints`) or integrate paths
(:func:`one_particle`) compute what they need.

References
----------
C. Park, B. Lucini, G. Aarts, Mach. Learn.: Sci. Technol. 6 (2025) 045048.
G. Benettin, L. Galgani, A. Giorgilli, J.-M. Strelcyn, Meccanica 15 (1980) 9.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import xarray as xr

from ..errors import ConfigError, PhasearrayWarning, StoreError
from ..store import open_sweep
from ..study import read_study
from ._common import attr, axis, bare, checkpoint, compute, variable, whole
from .phases import JAMMING_THEORY, LEVELS
from .stats import ensemble_stats

__all__ = [
    "GROWTH",
    "MATCHES",
    "chaos_boundary",
    "chaos_labels",
    "chaos_threshold",
    "chaos_vs_dbm",
    "collapse_spread",
    "corner_cells",
    "integrate_level_spacing",
    "lyapunov_map",
    "matched_checkpoints",
    "one_particle",
    "open_variants",
    "scaling_collapse",
    "variant_boundaries",
    "variant_maps",
    "without_runaways",
]

logger = logging.getLogger(__name__)

GROWTH = 1e3
"""Amplification of a separation, beyond the transient, that counts as chaos.

λ(t) = G(t)/t with G the summed log-growth of the twin's separation. A regular
run keeps G = O(1) (a transient amplification, then contraction), so its λ is
biased by O(1)/t and λ = 0 is not a sharp test at finite t. A cell counts as
chaotic when the median λ(t) exceeds ln(GROWTH)/t, i.e. when a separation has
grown by more than GROWTH over the run. Measured with ``pipelines/chaos.yaml``
(10⁴ shuffled steps, 3 seeds): the median G(t_f) is ≤ 6.7 at T ≤ 0.5 and
≥ 104 at T ≥ 1 at every σ_W, so ln 10³ ≈ 6.9 separates them; the threshold
→ 0 as t_f grows, so the onset tends to the λ = 0 crossing of long runs.
"""

MATCHES = ("epochs", "steps")

RUNAWAY = 1e30
"""|W2| entries above which a model counts as diverged in the DBM analyses here.

The DBM noise is a variance of products of four weights; past ~1e77 those
overflow float64, and past ~1e154 so does X = W2 W2ᵀ itself. Runs that get
there (an identity network above its gradient-descent stability limit, say)
have run away long before: their W2 is masked (NaN) before the DBM, so they
count as not converged, as the NaN weights of a diverged run do.
"""


# --- chaos ----------------------------------------------------------------------


def chaos_threshold(ds: xr.Dataset, t: int = -1, growth: float = GROWTH) -> float:
    """λ_c = ln(growth) / t, the exponent above which a cell counts as chaotic.

    Parameters
    ----------
    ds : xarray.Dataset
        A sweep.
    t : int
        Checkpoint position (-1: the last); must not be step 0.
    growth : float
        Amplification that counts as chaos, > 1 (see :data:`GROWTH`).

    Returns
    -------
    float
        Per SGD step.

    Examples
    --------
    >>> from phasearray.analysis.synthetic import synthetic_sweep
    >>> round(chaos_threshold(synthetic_sweep(seeds=1, steps=1000)), 5)
    0.00691
    """
    if not growth > 1:
        raise ConfigError(f"growth: got {growth!r}; must be a number > 1")
    steps = float(checkpoint(ds, axis(ds, "t"), t))
    if steps <= 0:
        raise ConfigError(
            f"t: got {t!r}, which is step 0; λ(t) = G(t)/t needs a checkpoint t > 0"
        )
    return float(np.log(growth) / steps)


def lyapunov_map(ds: xr.Dataset, *, t: int = -1, growth: float = GROWTH) -> xr.Dataset:
    """The Lyapunov exponent over the phase plane: median over seeds at checkpoint t.

    Parameters
    ----------
    ds : xarray.Dataset
        A sweep recorded with ``record.lyapunov: true``.
    t : int
        Checkpoint position.
    growth : float
        Sets the threshold of :func:`chaos_threshold`.

    Returns
    -------
    xarray.Dataset, lazy, dims (T, sigma_W)
        ``lyapunov_median``, ``lyapunov_q16``, ``lyapunov_q84`` (1/step),
        ``lyapunov_count`` (finite members), ``chaotic_fraction`` (members
        with λ above the threshold or not finite: a diverged run counts as
        chaotic), and the scalar ``threshold``.

    Examples
    --------
    >>> from phasearray.analysis.synthetic import synthetic_sweep
    >>> ds = synthetic_sweep(T=(0.5, 1.0), sigma_W=(0.25, 4.0), seeds=2, steps=1000)
    >>> ds["lyapunov"] = xr.zeros_like(ds.train_loss) + (ds.T > 0.75) * 0.011 - 0.001
    >>> lyapunov_map(ds).lyapunov_median.dims
    ('T', 'sigma_W')
    """
    lam = checkpoint(ds, _lyapunov(ds), t)
    threshold = chaos_threshold(ds, t, growth)
    stats = ensemble_stats(ds, lam)
    above = (lam > threshold) | ~np.isfinite(lam)
    out = xr.Dataset(
        {
            "lyapunov_median": stats["median"],
            "lyapunov_q16": stats["q16"],
            "lyapunov_q84": stats["q84"],
            "lyapunov_count": stats["count"],
            "chaotic_fraction": above.astype(np.float64).mean("seed"),
            "threshold": threshold,
        },
        attrs={"t": int(checkpoint(ds, axis(ds, "t"), t)), "growth": float(growth)},
    )
    out["lyapunov_median"].attrs = {
        "long_name": "median Lyapunov exponent λ(t)",
        "units": "1/step",
    }
    return out


def chaos_labels(
    ds: xr.Dataset, *, t: int = -1, growth: float = GROWTH
) -> xr.DataArray:
    """Chaotic (True) or regular (False) per cell, from the median λ at checkpoint t.

    A cell is chaotic when the median over seeds of λ(t) exceeds
    ``ln(growth)/t`` (see :data:`GROWTH` for why not λ > 0), or when no member
    is finite (every run diverged).

    Parameters
    ----------
    ds : xarray.Dataset
        A sweep recorded with ``record.lyapunov: true``.
    t : int
        Checkpoint position (-1: the end of training).
    growth : float
        Amplification that counts as chaos, > 1.

    Returns
    -------
    xarray.DataArray of bool, lazy, dims (T, sigma_W), named ``chaotic``

    Raises
    ------
    StoreError
        The store has no ``lyapunov`` variable.

    Examples
    --------
    >>> from phasearray.analysis.synthetic import synthetic_sweep
    >>> ds = synthetic_sweep(T=(0.5, 1.0), sigma_W=(0.25, 4.0), seeds=2, steps=1000)
    >>> ds["lyapunov"] = xr.zeros_like(ds.train_loss) + (ds.T > 0.75) * 0.011 - 0.001
    >>> chaos_labels(ds).values.tolist()
    [[False, False], [True, True]]
    """
    found = lyapunov_map(ds, t=t, growth=growth)
    chaotic = (found["lyapunov_median"] > found["threshold"]) | (
        found["lyapunov_count"] == 0
    )
    return (
        chaotic.transpose("T", "sigma_W")
        .rename("chaotic")
        .assign_attrs(
            long_name="median λ above ln(growth)/t",
            threshold=float(found["threshold"]),
            growth=float(growth),
        )
    )


def chaos_boundary(
    ds: xr.Dataset, *, t: int = -1, growth: float = GROWTH
) -> xr.DataArray:
    """Per σ_W, the T above which every cell on the grid is chaotic.

    The crossing lies between the largest T whose median λ is at or below
    the threshold ``ln(growth)/t`` and the next T up, interpolated linearly
    in log T (at the geometric midpoint when the upper cell has no finite
    member). Isolated chaotic cells below a regular one do not move it, as
    for the DBM boundary of :func:`phasearray.analysis.boundaries`.

    Returns
    -------
    xarray.DataArray, lazy, dims (sigma_W), named ``T_chaos``
        inf when even the largest T is regular (the onset lies above the
        grid), NaN when the smallest T is already chaotic (below the grid) —
        the same conventions as ``T_boundary``.

    Examples
    --------
    >>> from phasearray.analysis.synthetic import synthetic_sweep
    >>> ds = synthetic_sweep(T=(0.5, 1.0), sigma_W=(0.25, 4.0), seeds=2, steps=1000)
    >>> ds["lyapunov"] = xr.zeros_like(ds.train_loss) + (ds.T > 0.75) * 0.011 - 0.001
    >>> chaos_boundary(ds).values.round(3).tolist()  # 0.5 · 2^((0.0069 + 0.001)/0.011)
    [0.823, 0.823]
    """
    found = lyapunov_map(ds, t=t, growth=growth)
    onset = xr.apply_ufunc(
        _onset,
        whole(found["lyapunov_median"], "T"),
        input_core_dims=[["T"]],
        kwargs={"T": axis(ds, "T").values, "threshold": float(found["threshold"])},
        dask="parallelized",
        output_dtypes=[np.float64],
    )
    return onset.rename("T_chaos").assign_attrs(
        long_name="onset of chaos: median λ crosses ln(growth)/t", units="1"
    )


def _onset(median: np.ndarray, T: np.ndarray, threshold: float) -> np.ndarray:
    """T where ``median`` (…, T) last rises above ``threshold``, log-T interpolated."""
    n = median.shape[-1]
    regular = median <= threshold
    last = n - 1 - np.argmax(regular[..., ::-1], axis=-1)
    above = np.minimum(last + 1, n - 1)
    low = np.take_along_axis(median, last[..., None], -1)[..., 0]
    high = np.take_along_axis(median, above[..., None], -1)[..., 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        weight = (threshold - low) / (high - low)
    weight = np.where(np.isfinite(weight), np.clip(weight, 0, 1), 0.5)

    log_T = np.log(T)
    value = np.exp(log_T[last] + weight * (log_T[above] - log_T[last]))
    value = np.where(last == n - 1, np.inf, value)
    return np.where(regular.any(-1), value, np.nan)


def chaos_vs_dbm(
    ds: xr.Dataset,
    *,
    t: int = -1,
    growth: float = GROWTH,
    level: float = LEVELS[0],
    convention: str = "paper",
) -> xr.Dataset:
    """The chaos onset against the DBM hot boundary, per σ_W and per cell.

    The DBM side comes from the accessor, ``ds.phase.boundaries`` at the same
    checkpoint (after :func:`without_runaways`): its ``T_boundary`` at
    ``level`` (1σ by default) and its ``converged_fraction``.

    Parameters
    ----------
    ds : xarray.Dataset
        A sweep with ``lyapunov`` and ``W2`` recorded at checkpoint ``t``.
    t, growth
        As for :func:`chaos_labels`.
    level : float
        Converged fraction of the DBM boundary.
    convention : {"paper", "phase_ml"}
        DBM convention.

    Returns
    -------
    xarray.Dataset, lazy
        ``T_chaos`` and ``T_dbm`` (sigma_W); ``log2_ratio`` = log2(T_chaos /
        T_dbm) (sigma_W); ``chaotic`` and ``noise_dominated`` (T, sigma_W),
        the latter where the converged fraction is below ``level``;
        ``agree`` (T, sigma_W) and ``agreement``, the fraction of cells where
        the two labels agree; ``lyapunov_median``, ``converged_fraction`` and
        ``threshold`` for figures.

    Examples
    --------
    >>> from phasearray.analysis.synthetic import synthetic_sweep
    >>> ds = synthetic_sweep(T=(0.5, 1.0), sigma_W=(0.25, 4.0), seeds=2, steps=1000)
    >>> ds["lyapunov"] = xr.zeros_like(ds.train_loss) + (ds.T > 0.75) * 0.011 - 0.001
    >>> out = chaos_vs_dbm(ds)
    >>> out.T_chaos.dims, out.agree.dims
    (('sigma_W',), ('T', 'sigma_W'))
    """
    levels = tuple(sorted({*LEVELS, float(level)}))
    found = without_runaways(ds).phase.boundaries(levels, t=t, convention=convention)
    fraction = bare(found["converged_fraction"])
    lam = lyapunov_map(ds, t=t, growth=growth)
    T_chaos = chaos_boundary(ds, t=t, growth=growth)
    T_dbm = bare(found["T_boundary"]).sel(level=float(level), drop=True)
    chaotic = chaos_labels(ds, t=t, growth=growth)
    noisy = (fraction < level).transpose("T", "sigma_W")
    agree = chaotic == noisy
    with np.errstate(divide="ignore", invalid="ignore"):
        log2_ratio = cast(xr.DataArray, np.log2(T_chaos / T_dbm))
    return xr.Dataset(
        {
            "T_chaos": T_chaos,
            "T_dbm": T_dbm.assign_attrs(long_name=f"DBM boundary at {level:g}"),
            "log2_ratio": log2_ratio.assign_attrs(long_name="log2(T_chaos / T_dbm)"),
            "chaotic": chaotic,
            "noise_dominated": noisy,
            "agree": agree,
            "agreement": agree.astype(np.float64).mean(),
            "lyapunov_median": lam["lyapunov_median"],
            "converged_fraction": fraction,
            "threshold": lam["threshold"],
        },
        attrs={"level": float(level), "convention": convention, **lam.attrs},
    )


def without_runaways(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with W2 masked (NaN) for models whose weights exceed :data:`RUNAWAY`.

    Lazy; a store without W2 comes back unchanged.
    """
    if "W2" not in ds.data_vars:
        return ds
    W2 = ds["W2"]
    runaway = abs(W2).max(["unit2", "unit1"], skipna=False) > RUNAWAY
    return ds.assign(W2=W2.where(~runaway))


def _lyapunov(ds: xr.Dataset) -> xr.DataArray:
    if "lyapunov" not in ds.data_vars:
        raise StoreError(
            "the store has no 'lyapunov' variable; run the pipeline with "
            "record.lyapunov: true (see phasearray/pipelines/chaos.yaml)"
        )
    return variable(ds, "lyapunov")


# --- studies: variants ----------------------------------------------------------


def open_variants(root: str | Path) -> tuple[str, dict[Any, xr.Dataset]]:
    """Each store of a study, opened on its own with all its variables and attributes.

    :func:`phasearray.open_study` joins the per-model observables of the
    variants; analyses that need the weights, the data or the root attributes
    (the DBM boundaries) take the variants one by one from here.

    Parameters
    ----------
    root : path
        A study folder written by ``phasearray run`` (it holds ``study.yaml``).

    Returns
    -------
    dim : str
        The study's variant dim (``batch_size``, ``activation``, ``width`` …).
    variants : dict
        label → Dataset, in the order of the pipeline's ``variants.values``.
    """
    pipeline, stores = read_study(root)
    dim = pipeline.variants.dim if pipeline.variants is not None else ""
    return dim, {label: open_sweep(path) for label, _, path in stores}


def variant_boundaries(
    variants: Mapping[Any, xr.Dataset],
    dim: str,
    *,
    level: float = LEVELS[0],
    steps: Mapping[Any, int] | None = None,
    convention: str = "paper",
) -> xr.Dataset:
    """DBM boundaries and jamming lines of every variant, joined along ``dim``.

    Calls ``ds.phase.boundaries`` on each variant (after
    :func:`without_runaways`).

    Parameters
    ----------
    variants : mapping
        label → sweep (e.g. from :func:`open_variants`).
    dim : str
        Name of the new dim.
    level : float
        Converged fraction of the boundary (1σ by default).
    steps : mapping, optional
        label → checkpoint step to evaluate at; the last checkpoint by default.
    convention : {"paper", "phase_ml"}

    Returns
    -------
    xarray.Dataset, lazy
        ``T_boundary`` (dim, sigma_W), ``converged_fraction`` (dim, T,
        sigma_W), ``jamming_inv_sigma_W`` (dim), ``jamming_inv_sigma_W_theory``.
    """
    levels = tuple(sorted({*LEVELS, float(level)}))
    parts = []
    for label, ds in variants.items():
        position = -1 if steps is None else _position(ds, steps[label])
        found = without_runaways(ds).phase.boundaries(
            levels, t=position, convention=convention
        )
        part = found[["converged_fraction", "jamming_inv_sigma_W"]].reset_coords(
            drop=True
        )
        part["T_boundary"] = bare(found["T_boundary"]).sel(
            level=float(level), drop=True
        )
        parts.append(part)
    out = _join(parts, list(variants), dim)
    out["jamming_inv_sigma_W_theory"] = JAMMING_THEORY
    out.attrs = {"level": float(level), "convention": convention}
    return out


def variant_maps(
    variants: Mapping[Any, xr.Dataset], dim: str, var: str = "test_loss", t: int = -1
) -> xr.DataArray:
    """Median over seeds of ``var`` at checkpoint ``t`` of every variant.

    Returns
    -------
    xarray.DataArray, lazy, dims (dim, T, sigma_W)
    """
    parts = [
        ensemble_stats(ds, checkpoint(ds, variable(ds, var), t))["median"]
        for ds in variants.values()
    ]
    joined = xr.concat(
        [bare(p) for p in parts], dim=pd.Index(list(variants), name=dim), join="outer"
    )
    return joined.rename(f"{var}_median")


def _position(ds: xr.Dataset, step: int) -> int:
    t = axis(ds, "t").values
    hits = np.flatnonzero(t == step)
    if hits.size == 0:
        raise ConfigError(
            f"step: got {step!r}; not a checkpoint of this store (checkpoints "
            f"{t.tolist()})"
        )
    return int(hits[0])


def _join(parts: list[xr.Dataset], labels: list[Any], dim: str) -> xr.Dataset:
    return xr.concat(
        parts,
        dim=pd.Index(labels, name=dim),
        join="outer",
        coords="minimal",
        compat="override",
        combine_attrs="drop",
    )


# --- the linear scaling rule --------------------------------------------------------


def matched_checkpoints(
    study: xr.Dataset,
    *,
    match: str = "epochs",
    dim: str = "batch_size",
    t: int = -1,
) -> xr.Dataset:
    """The checkpoint of each variant of a batch-size study where they are compared.

    At matched T = ε/|B|, the continuous time of the Langevin equation (2.30)
    of Park et al. 2025 advances by ε per step, τ = ε t = T |B| t, so runs
    that differ only in |B| are the same process at equal |B| t: equal
    samples seen, equal epochs. ``match="epochs"`` compares them there (the
    linear scaling rule as the SDE limit states it); ``match="steps"``
    compares them after the same number of updates, where |B| = 16 has
    seen 4× the samples of |B| = 4.

    Parameters
    ----------
    study : xarray.Dataset
        From :func:`phasearray.open_study`; |B| of each variant is read from
        its ``learning_rate`` / ``T``.
    match : {"epochs", "steps"}
    dim : str
        The study's variant dim.
    t : int
        Position in ``study.t`` of the latest step to consider (-1: all).

    Returns
    -------
    xarray.Dataset, dims (dim)
        ``samples_per_step`` (|B|), ``step`` (the checkpoint used), ``position`` (its
        index in ``study.t``) and ``samples`` = step · |B|. ``epochs`` mode
        takes the most samples every variant reached; where a variant has no
        checkpoint at exactly that many samples the nearest one (in log t) is
        used and a :class:`~phasearray.errors.PhasearrayWarning` says by how
        much they differ.

    Examples
    --------
    >>> import pandas as pd
    >>> from phasearray.analysis.synthetic import synthetic_sweep
    >>> parts = [synthetic_sweep(seeds=1, steps=4096 // b, batch_size=b) for b in (1, 4)]
    >>> study = xr.concat(
    ...     [p[["test_loss", "feature_overlap", "done"]] for p in parts],
    ...     dim=pd.Index([1, 4], name="batch_size"),
    ...     join="outer",
    ...     coords="different",
    ...     compat="equals",
    ... )
    >>> matched_checkpoints(study).step.values.tolist()
    [4096, 1024]
    """
    if match not in MATCHES:
        raise ConfigError(f"match: got {match!r}; choose 'epochs' or 'steps'")
    sizes = _batch_sizes(study, dim)
    steps = axis(study, "t").values
    limit = checkpoint(study, axis(study, "t"), t).item()
    recorded = [
        steps[(steps <= limit) & done] for done in _completed(study, dim).values
    ]
    if any(r.size == 0 for r in recorded):
        raise StoreError(
            f"a variant of the study has no completed checkpoint ≤ {limit}"
        )

    if match == "steps":
        common = set.intersection(*(set(r.tolist()) for r in recorded))
        chosen = np.full(sizes.size, max(common))
    else:
        samples = min(int(r[-1]) * int(b) for r, b in zip(recorded, sizes, strict=True))
        chosen = np.array(
            [_nearest(r, samples / b) for r, b in zip(recorded, sizes, strict=True)]
        )
        _warn_mismatch(chosen * sizes, samples, study[dim].values)
    position = np.searchsorted(steps, chosen)
    return xr.Dataset(
        {
            "samples_per_step": (dim, sizes),
            "step": (dim, chosen.astype(np.int64)),
            "position": (dim, position.astype(np.int64)),
            "samples": (dim, (chosen * sizes).astype(np.int64)),
        },
        coords={dim: study[dim].values},
        attrs={"match": match},
    )


def _batch_sizes(study: xr.Dataset, dim: str) -> np.ndarray:
    if dim not in study.dims or "learning_rate" not in study.coords:
        raise ConfigError(
            f"dim: got {dim!r}; need a study joined along it with a learning_rate "
            f"coordinate (dims here: {list(study.dims)})"
        )
    ratio = np.asarray(study["learning_rate"] / study["T"], dtype=np.float64)
    ratio = np.broadcast_to(ratio, (study.sizes[dim], study.sizes["T"]))
    return np.rint(ratio[:, 0]).astype(np.int64)


def _completed(study: xr.Dataset, dim: str) -> xr.DataArray:
    """(dim, t): whether every model of a variant finished that checkpoint."""
    done = variable(study, "done") == 1
    return done.all([d for d in done.dims if d not in (dim, "t")]).compute()


def _nearest(recorded: np.ndarray, target: float) -> int:
    positive = recorded[recorded > 0]
    if positive.size == 0 or target <= 0:
        return int(recorded[np.argmin(np.abs(recorded - target))])
    return int(positive[np.argmin(np.abs(np.log(positive / target)))])


def _warn_mismatch(samples: np.ndarray, target: int, labels: np.ndarray) -> None:
    off = np.abs(samples / target - 1)
    if np.any(off > 1e-9):
        worst = int(np.argmax(off))
        label = np.asarray(labels[worst]).item()
        warnings.warn(
            f"matched epochs: variant {label!r} has no checkpoint at "
            f"{target} samples; its nearest is {int(samples[worst])} "
            f"({off[worst]:.0%} off); add checkpoints at steps samples/|B|",
            PhasearrayWarning,
            stacklevel=3,
        )


def collapse_spread(
    values: xr.DataArray, dim: str, *, log: bool = True
) -> xr.DataArray:
    """How far curves over ``dim`` are from collapsing: max over cells of their std.

    spread = max over the other dims of std over ``dim`` of log10(values)
    (of the values themselves with ``log=False``). 0 for an exact collapse;
    for a dependence log10 v = base + δ k_b it is δ · std_b(k_b). Cells with
    a NaN (or, with ``log``, a non-positive value) in any variant are left out.

    Parameters
    ----------
    values : xarray.DataArray
        E.g. median losses, dims (dim, T, sigma_W).
    dim : str
    log : bool

    Returns
    -------
    xarray.DataArray, lazy, scalar (NaN when no cell is complete)

    Examples
    --------
    >>> v = xr.DataArray([[1.0, 10.0], [10.0, 100.0]], dims=("b", "T"))
    >>> float(collapse_spread(v, "b"))
    0.5
    """
    return _nanmax_all(spread_map(values, dim, log=log))


def spread_map(values: xr.DataArray, dim: str, *, log: bool = True) -> xr.DataArray:
    """std over ``dim`` of log10(values) (or values) per cell; see :func:`collapse_spread`."""
    data = bare(values)
    if log:
        data = cast(xr.DataArray, np.log10(data.where(data > 0)))
    return xr.apply_ufunc(
        _complete_std,
        whole(data, dim),
        input_core_dims=[[dim]],
        dask="parallelized",
        output_dtypes=[np.float64],
    )


def _complete_std(values: np.ndarray) -> np.ndarray:
    complete = np.all(np.isfinite(values), axis=-1)
    filled = np.where(np.isfinite(values), values, 0.0)
    return np.where(complete, np.std(filled, axis=-1), np.nan)


def _nanmax_all(data: xr.DataArray) -> xr.DataArray:
    """The largest finite value over every dim (NaN when there is none), lazily."""
    return _over_all_dims(data, _nanmax)


def _nanmedian_all(data: xr.DataArray) -> xr.DataArray:
    """The median of the finite values over every dim (NaN when there is none)."""
    return _over_all_dims(data, _nanmedian)


def _over_all_dims(data: xr.DataArray, kernel: Any) -> xr.DataArray:
    dims = [str(d) for d in data.dims]
    return xr.apply_ufunc(
        kernel,
        whole(data, *dims),
        input_core_dims=[dims],
        kwargs={"n_dims": len(dims)},
        dask="parallelized",
        output_dtypes=[np.float64],
    )


def _finite_cells(values: np.ndarray, n_dims: int) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values, dtype=np.float64)
    flat = values.reshape(*values.shape[: values.ndim - n_dims], -1)
    return flat, np.isfinite(flat)


def _nanmax(values: np.ndarray, n_dims: int) -> np.ndarray:
    flat, finite = _finite_cells(values, n_dims)
    largest = np.max(np.where(finite, flat, -np.inf), axis=-1)
    return np.where(finite.any(-1), largest, np.nan)


def _nanmedian(values: np.ndarray, n_dims: int) -> np.ndarray:
    flat, finite = _finite_cells(values, n_dims)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no finite cell: NaN
        return np.nanmedian(np.where(finite, flat, np.nan), axis=-1)


def scaling_collapse(
    study: xr.Dataset,
    *,
    match: str = "epochs",
    dim: str = "batch_size",
    t: int = -1,
    loss: str = "test_loss",
    variants: Mapping[Any, xr.Dataset] | None = None,
    level: float = LEVELS[0],
    convention: str = "paper",
) -> xr.Dataset:
    """Test of the linear scaling rule on a batch-size study at matched T.

    If only T = ε/|B| matters, the median loss, the feature overlap G(t, 0)
    and the hot boundary are the same for every |B| (compared as
    :func:`matched_checkpoints` says). The spreads measure how far they are
    from that.

    Parameters
    ----------
    study : xarray.Dataset
        From :func:`phasearray.open_study`.
    match : {"epochs", "steps"}
        See :func:`matched_checkpoints`.
    dim : str
        The variant dim.
    t : int
        Latest checkpoint position to consider.
    loss : {"test_loss", "train_loss"}
    variants : mapping, optional
        label → sweep (from :func:`open_variants`); adds the DBM boundaries.
    level, convention
        Of the boundaries.

    Returns
    -------
    xarray.Dataset, lazy (the matched checkpoints are computed)
        ``loss_median`` and ``feature_overlap_median`` (dim, T, sigma_W);
        ``loss_spread_map`` (T, sigma_W), std over |B| of log10 of the median
        loss, ``loss_spread`` and ``loss_spread_median``, its max and median
        over cells; ``feature_overlap_spread`` and
        ``feature_overlap_spread_median`` (the same without the log); everything of :func:`matched_checkpoints`;
        with ``variants`` also ``T_boundary`` (dim, sigma_W),
        ``boundary_spread`` (sigma_W), the std over |B| of log2 T_boundary
        where every variant has a boundary inside the grid, and
        ``boundary_spread_max``.
    """
    if loss not in ("test_loss", "train_loss"):
        raise ConfigError(f"loss: got {loss!r}; choose 'test_loss' or 'train_loss'")
    matched = matched_checkpoints(study, match=match, dim=dim, t=t)
    at = _at_matched(study, matched, dim, (loss, "feature_overlap"))
    loss_median = ensemble_stats(at, at[loss])["median"]
    overlap = ensemble_stats(at, at["feature_overlap"])["median"]

    out = matched.copy()
    out["loss_median"] = loss_median.assign_attrs(long_name=f"median {loss}")
    out["feature_overlap_median"] = overlap.assign_attrs(long_name="median G(t, 0)")
    out["loss_spread_map"] = spread_map(loss_median, dim)
    out["loss_spread"] = _nanmax_all(out["loss_spread_map"])
    out["loss_spread_median"] = _nanmedian_all(out["loss_spread_map"])
    overlap_map = spread_map(overlap, dim, log=False)
    out["feature_overlap_spread"] = _nanmax_all(overlap_map)
    out["feature_overlap_spread_median"] = _nanmedian_all(overlap_map)
    if variants is not None:
        steps = dict(
            zip(
                study[dim].values.tolist(), matched["step"].values.tolist(), strict=True
            )
        )
        found = variant_boundaries(
            variants, dim, level=level, steps=steps, convention=convention
        )
        out["T_boundary"] = found["T_boundary"]
        out["converged_fraction"] = found["converged_fraction"]
        out["boundary_spread"] = _boundary_spread(found["T_boundary"], dim)
        out["boundary_spread_max"] = _nanmax_all(out["boundary_spread"])
    out.attrs = {"match": match, "loss": loss, "level": float(level)}
    return out


def _at_matched(
    study: xr.Dataset, matched: xr.Dataset, dim: str, names: tuple[str, ...]
) -> xr.Dataset:
    parts = [
        xr.Dataset({n: variable(study, n) for n in names})
        .sel({dim: label}, drop=True)
        .isel(t=int(position), drop=True)
        for label, position in zip(
            matched[dim].values, matched["position"].values, strict=True
        )
    ]
    return xr.concat(parts, dim=pd.Index(matched[dim].values, name=dim))


def _boundary_spread(T_boundary: xr.DataArray, dim: str) -> xr.DataArray:
    logs = cast(xr.DataArray, np.log2(T_boundary.where(np.isfinite(T_boundary))))
    return spread_map(logs, dim, log=False).assign_attrs(
        long_name="std over variants of log2 T_boundary"
    )


# --- one-particle theory of the mean level spacing ------------------------------


def integrate_level_spacing(
    S0: Any,
    K_S: Any,
    V_S: Any,
    D_S: Any,
    T: Any,
    times: Any,
    *,
    n_paths: int = 256,
    seed: int = 0,
    substeps: int = 20,
) -> np.ndarray:
    """Paths of the one-particle equation for the mean level spacing S.

    Euler–Maruyama for eq. (4.8) of Park et al. 2025,

        dS = (K_S + V_S T / S) dτ + √(2 T D_S) dW_τ,

    in the continuous time τ of the Langevin equation (2.30): one SGD step
    of learning rate ε advances τ by ε, so τ = ε t = T |B| t. The
    coefficients are constant over each interval [times[k], times[k+1]),
    which is split into ``substeps`` equal steps. S is a spacing (≥ 0), and a
    step that would make it negative is reflected at 0 (S → |S|); with
    V_S > 0 the Coulomb term keeps paths away from 0 anyway.

    Parameters
    ----------
    S0 : array_like, dims (...)
        S at times[0].
    K_S, V_S, D_S : array_like, dims (..., k)
        Drift, Coulomb coefficient and diffusion per unit τ, with k =
        len(times) − 1 (one value per interval) or k = 1 (constant); a scalar
        counts as k = 1.
    T : array_like, dims (...)
        Temperature ε/|B|.
    times : array_like, dims (n_times,)
        Ascending τ at which S is returned.
    n_paths : int
        Paths per member.
    seed : int
        Seed of the NumPy generator (PCG64); the same seed gives the same paths.
    substeps : int
        Euler–Maruyama steps per interval.

    Returns
    -------
    numpy.ndarray, dims (..., n_paths, n_times), float64

    Examples
    --------
    >>> S = integrate_level_spacing(1.0, -0.1, 0.0, 0.0, 1.0, [0.0, 5.0], n_paths=2)
    >>> S[..., -1].round(6).tolist()
    [0.5, 0.5]
    """
    times = np.asarray(times, dtype=np.float64)
    _check_integration(times, n_paths, substeps)
    n_intervals = times.size - 1
    lead = np.broadcast_shapes(np.shape(S0), np.shape(T))
    K, V, D = (
        _per_interval(c, n_intervals, name)
        for c, name in ((K_S, "K_S"), (V_S, "V_S"), (D_S, "D_S"))
    )
    lead = np.broadcast_shapes(lead, K.shape[:-1], V.shape[:-1], D.shape[:-1])

    rng = np.random.default_rng(seed)
    S = np.broadcast_to(np.asarray(S0, dtype=np.float64)[..., None], (*lead, n_paths))
    S = S.copy()
    T_ = np.broadcast_to(np.asarray(T, dtype=np.float64), lead)[..., None]
    out = np.empty((*lead, n_paths, times.size))
    out[..., 0] = S
    for k in range(n_intervals):
        dt = (times[k + 1] - times[k]) / substeps
        drift, coulomb, diffusion = (
            np.broadcast_to(c[..., k], lead)[..., None] for c in (K, V, D)
        )
        S = _euler_maruyama(S, drift, coulomb, diffusion, T_, dt, substeps, rng)
        out[..., k + 1] = S
    return out


def _euler_maruyama(S, K, V, D, T, dt, n, rng):
    noise = np.sqrt(np.clip(2 * T * D * dt, 0, None))
    for _ in range(n):
        with np.errstate(divide="ignore", invalid="ignore"):
            drift = K + np.where(V == 0, 0.0, V * T / S)
        S = np.abs(S + drift * dt + noise * rng.standard_normal(S.shape))
    return S


def _per_interval(value: Any, n_intervals: int, name: str) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.ndim == 0:
        array = array[None]
    if array.shape[-1] not in (1, n_intervals):
        raise ConfigError(
            f"{name}: got last dim {array.shape[-1]}; must be 1 (constant) or "
            f"len(times) - 1 = {n_intervals}"
        )
    return np.broadcast_to(array, (*array.shape[:-1], n_intervals))


def _check_integration(times: np.ndarray, n_paths: int, substeps: int) -> None:
    if times.ndim != 1 or times.size < 2 or np.any(np.diff(times) < 0):
        raise ConfigError(
            f"times: got {times.tolist()!r}; need at least two ascending values"
        )
    for name, value in (("n_paths", n_paths), ("substeps", substeps)):
        if not isinstance(value, int | np.integer) or value < 1:
            raise ConfigError(f"{name}: got {value!r}; must be a positive integer")


COEFFICIENTS = ("path", "final")


def corner_cells(ds: xr.Dataset) -> dict[str, dict[str, float]]:
    """Grid corners where the three phases sit: name → {"T": …, "sigma_W": …}.

    Ordered: lowest T, smallest σ_W; hot: highest T, smallest σ_W; jammed:
    lowest T, largest σ_W.
    """
    T, sigma = axis(ds, "T").values, axis(ds, "sigma_W").values
    return {
        "ordered": {"T": float(T[0]), "sigma_W": float(sigma[0])},
        "hot": {"T": float(T[-1]), "sigma_W": float(sigma[0])},
        "jammed": {"T": float(T[0]), "sigma_W": float(sigma[-1])},
    }


def one_particle(
    ds: xr.Dataset,
    *,
    cells: Mapping[str, Mapping[str, float]] | None = None,
    coefficients: str = "path",
    n_paths: int = 64,
    seed: int = 0,
    substeps: int = 20,
    convention: str = "paper",
) -> xr.Dataset:
    """Measured S(t) against paths of eq. (4.8) with measured coefficients.

    For every cell and seed, K_S, V_S and D_S come from ``ds.phase.dbm`` of
    that seed's stored W2; the paths start at its measured S(0) and run in
    τ = ε t (see :func:`integrate_level_spacing`). This computes now.

    Parameters
    ----------
    ds : xarray.Dataset
        A sweep with ``eigenvalues`` and ``W2``.
    cells : mapping, optional
        name → {"T": value, "sigma_W": value} (nearest grid values); the
        three :func:`corner_cells` by default.
    coefficients : {"path", "final"}
        ``path``: on each interval between checkpoints the values at its
        start (the last checkpoint with W2 recorded); ``final``: the values
        at the last checkpoint throughout, as the boundary criterion uses
        them.
    n_paths : int
        Paths per seed.
    seed : int
        Seed of the paths' generator.
    substeps : int
        Euler–Maruyama steps between checkpoints.
    convention : {"paper", "phase_ml"}
        Of the DBM coefficients.

    Returns
    -------
    xarray.Dataset, dims (cell, seed, t) and (cell, t)
        ``measured`` (cell, seed, t), ``theory_median``, ``theory_q16``,
        ``theory_q84`` over all paths of all seeds (cell, t),
        ``measured_median`` (cell, t), the coefficients ``K_S``, ``V_S``,
        ``D_S`` (cell, seed, t; NaN where W2 is not recorded) and ``tau``
        (cell, t); coordinates ``T`` and ``sigma_W`` per cell.
    """
    if coefficients not in COEFFICIENTS:
        raise ConfigError(
            f"coefficients: got {coefficients!r}; choose 'path' or 'final'"
        )
    cells = corner_cells(ds) if cells is None else cells
    recorded = np.asarray(ds["W2_recorded"].values, dtype=bool)
    positions = (
        np.flatnonzero(recorded) if coefficients == "path" else [ds.sizes["t"] - 1]
    )
    if not recorded[positions[-1]]:
        raise StoreError(
            "W2 is not recorded at the last checkpoint; use coefficients='path'"
        )

    clean = without_runaways(ds)
    lazy = [
        _cell_inputs(clean, where, positions, convention) for where in cells.values()
    ]
    computed = compute(*lazy)
    batch_size = int(attr(ds, "batch_size"))
    parts = [
        _cell_paths(
            part, positions, coefficients, batch_size, n_paths, seed + i, substeps
        )
        for i, part in enumerate(computed)
    ]
    out = xr.concat(parts, dim=pd.Index(list(cells), name="cell"))
    out.attrs = {"coefficients": coefficients, "n_paths": n_paths, "seed": seed}
    return out


def _cell_inputs(
    ds: xr.Dataset, where: Mapping[str, float], positions: Any, convention: str
) -> xr.Dataset:
    sub = ds.sel(T=[where["T"]], sigma_W=[where["sigma_W"]], method="nearest")
    S = sub.phase.level_spacing()["level_spacing"]
    coefficients = xr.concat(
        [
            sub.phase.dbm(t=int(k), convention=convention)[
                ["K_S", "V_S", "D_S"]
            ].reset_coords(drop=True)
            for k in positions
        ],
        dim=pd.Index(axis(sub, "t").values[list(positions)], name="t_coefficient"),
    )
    out = coefficients.isel(T=0, sigma_W=0)
    out["level_spacing"] = bare(S).isel(T=0, sigma_W=0)
    return out.assign_coords(T=float(sub["T"][0]), sigma_W=float(sub["sigma_W"][0]))


def _cell_paths(part, positions, mode, batch_size, n_paths, seed, substeps):
    t = part["t"].values.astype(np.float64)
    T = float(part["T"])
    tau = T * batch_size * t
    measured = part["level_spacing"].transpose("seed", "t").values
    # the coefficient of interval [t_k, t_k+1): the last one measured at or before t_k
    which = np.searchsorted(part["t_coefficient"].values, t[:-1], side="right") - 1
    if mode == "final":
        which = np.zeros_like(which)
    coefficient = {
        name: part[name].transpose("seed", "t_coefficient").values[:, which]
        for name in ("K_S", "V_S", "D_S")
    }
    paths = integrate_level_spacing(
        measured[:, 0],
        coefficient["K_S"],
        coefficient["V_S"],
        coefficient["D_S"],
        T,
        tau,
        n_paths=n_paths,
        seed=seed,
        substeps=substeps,
    )
    pooled = paths.reshape(-1, t.size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # diverged seeds are NaN
        q16, median, q84 = np.nanquantile(pooled, [0.16, 0.5, 0.84], axis=0)
        measured_median = np.nanmedian(measured, axis=0)

    on_t = {
        name: (("seed", "t"), _on_checkpoints(part[name], positions, t))
        for name in ("K_S", "V_S", "D_S")
    }
    return xr.Dataset(
        {
            "measured": (("seed", "t"), measured),
            "measured_median": ("t", measured_median),
            "theory_median": ("t", median),
            "theory_q16": ("t", q16),
            "theory_q84": ("t", q84),
            "tau": ("t", tau),
            **on_t,
        },
        coords={
            "seed": part["seed"].values,
            "t": part["t"].values,
            "T": T,
            "sigma_W": float(part["sigma_W"]),
        },
    )


def _on_checkpoints(values: xr.DataArray, positions: Any, t: np.ndarray) -> np.ndarray:
    out = np.full((values.sizes["seed"], t.size), np.nan)
    out[:, list(positions)] = values.transpose("seed", "t_coefficient").values
    return out
