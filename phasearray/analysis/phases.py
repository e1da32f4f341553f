"""Phase boundaries, labels per cell and the recommended temperature (SPEC §5)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from .. import rmt
from ..errors import ConfigError
from ._common import axis, bare, dress, first_layer, variable, whole
from .dbm import dbm
from .stats import ensemble_stats

__all__ = [
    "HOT",
    "JAMMED",
    "LABELS",
    "LEVELS",
    "ORDERED",
    "boundaries",
    "classify",
    "contour_lines",
    "feature_variance",
    "recommend",
]

LABELS = ("ordered", "hot", "jammed")
ORDERED, HOT, JAMMED = range(3)
LEVELS = (0.68, 0.95, 0.997)
"""Fractions of converged members drawn as boundaries: 1σ, 2σ and 3σ."""

JAMMING_THEORY = float(1 / np.sqrt(rmt.SIGMA_C2))
"""1/σ_W of the jamming line from σ_z² ≲ σ_W² and σ_c² = 1/2: √2."""


def feature_variance(ds: xr.Dataset) -> xr.Dataset:
    """σ_z² of the students' pre-activations at t = 0 and the jamming line it gives.

    z = W2(0) φ1(x) over the test inputs. With the initial W2 ∝ σ_W, σ_z² =
    c σ_W², and p(φ) turns bimodal at σ_z² = σ_c² = 1/2 (eq. (2.22) of Park et
    al. 2025), i.e. at 1/σ_W = √(2c): a data-driven version of the line
    1/σ_W = √2 that assumes σ_z² = σ_W².

    Parameters
    ----------
    ds : xarray.Dataset
        A sweep. The initial W2 of the first T is used: with common random
        numbers it is the same at every T.

    Returns
    -------
    xarray.Dataset, lazy
        ``sigma_z2`` (sigma_W, seed); ``sigma_z2_mean`` (sigma_W), the mean over
        seeds; ``jamming_inv_sigma_W`` (scalar), √(2c) with c the mean of
        σ_z²/σ_W² over the grid; ``jamming_inv_sigma_W_theory`` = √2.
    """
    W2 = variable(ds, "W2").isel(t=0, T=0, drop=True)
    phi1, _ = first_layer(ds, "test")
    if "T" in phi1.dims:
        phi1 = phi1.isel(T=0, drop=True)
    sigma_z2 = xr.apply_ufunc(
        rmt.preactivation_variance,
        whole(W2, "unit2", "unit1"),
        phi1,
        input_core_dims=[["unit2", "unit1"], ["sample", "unit1"]],
        dask="parallelized",
        output_dtypes=[np.float64],
    )
    mean = sigma_z2.mean("seed")
    c = (mean / axis(ds, "sigma_W") ** 2).mean("sigma_W")
    out = xr.Dataset(
        {
            "sigma_z2": sigma_z2.assign_attrs(
                long_name="variance of pre-activations σ_z²"
            ),
            "sigma_z2_mean": mean,
            "jamming_inv_sigma_W": np.sqrt(2 * c).assign_attrs(
                long_name="1/σ_W where the measured σ_z² = 1/2"
            ),
            "jamming_inv_sigma_W_theory": JAMMING_THEORY,
        }
    )
    return dress(out, ds)


def boundaries(
    ds: xr.Dataset,
    levels: tuple[float, ...] = LEVELS,
    *,
    t: int = -1,
    convention: str = "paper",
    dbm_result: xr.Dataset | None = None,
) -> xr.Dataset:
    """Hot-phase boundary from the DBM criterion and jamming lines, as data.

    Parameters
    ----------
    ds : xarray.Dataset
        A sweep.
    levels : tuple of float
        Fractions of converged members to draw (1σ, 2σ, 3σ by default).
    t, convention
        Passed to :func:`phasearray.analysis.dbm.dbm`.
    dbm_result : xarray.Dataset, optional
        An already built :func:`~phasearray.analysis.dbm.dbm` result to reuse.

    Returns
    -------
    xarray.Dataset, lazy
        ``converged_fraction`` (T, sigma_W): the fraction of all members, NaN
        ones included as not converged, meeting eq. (4.15) of Park et al.
        2025; ``T_boundary`` (level, sigma_W): per σ_W, the T where the
        fraction last falls below the level, interpolated in log T (inf when
        even the largest T reaches the level, NaN when no T does); and
        everything of :func:`feature_variance`. Contour lines of
        ``converged_fraction`` are drawn by :func:`contour_lines`.
    """
    levels = _check_levels(levels)
    result = dbm(ds, t=t, convention=convention) if dbm_result is None else dbm_result
    fraction = bare(result["converged"]).astype(np.float64).mean("seed")
    crossing = xr.apply_ufunc(
        _upper_crossing,
        whole(fraction, "T"),
        input_core_dims=[["T"]],
        output_core_dims=[["level"]],
        kwargs={"T": axis(ds, "T").values, "levels": levels},
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"level": len(levels)}},
    )
    out = feature_variance(ds)
    out["converged_fraction"] = fraction.assign_attrs(
        long_name="fraction of members converged (eq. (4.15))"
    )
    out["T_boundary"] = crossing.assign_coords(level=list(levels)).assign_attrs(
        long_name="largest T at which the converged fraction reaches the level"
    )
    out.attrs = {"convention": result.attrs.get("convention", convention)}
    return dress(out, ds)


def _check_levels(levels: tuple[float, ...]) -> tuple[float, ...]:
    levels = tuple(float(v) for v in np.atleast_1d(levels))
    if not levels or not all(0 < v <= 1 for v in levels):
        raise ConfigError(f"levels: got {levels!r}; must be fractions in (0, 1]")
    return levels


def _upper_crossing(
    fraction: np.ndarray, T: np.ndarray, levels: tuple[float, ...]
) -> np.ndarray:
    """Per row of ``fraction`` (…, T), the interpolated T of the top crossing.

    The crossing lies between the largest T whose fraction reaches the level
    and the next T up, linear in log T.
    """
    n = fraction.shape[-1]
    log_T = np.log(T)
    out = np.empty((*fraction.shape[:-1], len(levels)))
    for j, level in enumerate(levels):
        reached = fraction >= level
        last = n - 1 - np.argmax(reached[..., ::-1], axis=-1)
        above = np.minimum(last + 1, n - 1)
        f_low = np.take_along_axis(fraction, last[..., None], -1)[..., 0]
        f_high = np.take_along_axis(fraction, above[..., None], -1)[..., 0]
        with np.errstate(divide="ignore", invalid="ignore"):
            weight = np.clip(np.nan_to_num((f_low - level) / (f_low - f_high)), 0, 1)
        log_b = log_T[last] + weight * (log_T[above] - log_T[last])
        value = np.where(last == n - 1, np.inf, np.exp(log_b))
        out[..., j] = np.where(reached.any(-1), value, np.nan)
    return out


def contour_lines(
    fraction: xr.DataArray, levels: tuple[float, ...] = LEVELS
) -> dict[float, list[np.ndarray]]:
    """Contour lines of a map over (T, sigma_W), computed now (not lazy).

    The map is interpolated linearly in (log 1/σ_W, log T), the axes of the
    phase diagram.

    Parameters
    ----------
    fraction : DataArray, dims (T, sigma_W)
        E.g. ``converged_fraction`` from :func:`boundaries`.
    levels : tuple of float

    Returns
    -------
    dict
        level → list of arrays (k, 2) of points (1/σ_W, T) along each line.
    """
    import contourpy

    grid = fraction.transpose("T", "sigma_W").sortby("sigma_W", ascending=False)
    x = np.log(1 / grid["sigma_W"].values)
    y = np.log(grid["T"].values)
    values = np.asarray(grid.values, dtype=np.float64)
    if values.shape[0] < 2 or values.shape[1] < 2:
        return {float(level): [] for level in levels}
    generator = contourpy.contour_generator(
        x, y, np.ma.masked_invalid(values), line_type=contourpy.LineType.Separate
    )
    return {
        float(level): [np.exp(np.asarray(line)) for line in generator.lines(level)]
        for level in levels
    }


def classify(
    ds: xr.Dataset,
    *,
    level: float = LEVELS[0],
    jamming: str = "data",
    loss: str = "test_loss",
    loss_threshold: float | None = None,
    alignment_threshold: float | None = None,
    memory_threshold: float | None = None,
    t: int = -1,
    convention: str = "paper",
    boundaries_result: xr.Dataset | None = None,
    growth: float = 1e3,
) -> xr.Dataset:
    """Label each (T, σ_W) cell ordered, hot or jammed, by two rules.

    DBM rule: a cell above the hot boundary (T > ``T_boundary`` at ``level``)
    is hot; below it, a cell left of the jamming line (1/σ_W smaller than it)
    is jammed and the others ordered. In a column where no T reaches the
    level, every cell is hot right of the jamming line and jammed left of it.
    This is the reading of the paper's figure 9.

    Observable rule (medians over seeds at checkpoint ``t``): ordered when the
    loss is low and the features aligned (loss ≤ ``loss_threshold`` and
    alignment ≥ ``alignment_threshold``); otherwise jammed when the memory of
    the initial features is kept (G(t, 0) ≥ ``memory_threshold``) and hot
    when it is lost. Thresholds left as None are the midpoints of each map
    (geometric for the loss), which adapts them to the training time.

    Parameters
    ----------
    ds : xarray.Dataset
    level : float
        Converged fraction that marks the hot boundary (0.68: 1σ).
    jamming : {"data", "theory"}
        Jamming line from the measured σ_z² or at 1/σ_W = √2.
    loss : {"test_loss", "train_loss"}
    loss_threshold, alignment_threshold, memory_threshold : float, optional
    t, convention
        Checkpoint and DBM convention.
    boundaries_result : xarray.Dataset, optional
        An already built :func:`boundaries` result (must contain ``level``).
    growth : float
        Only for stores with a Lyapunov exponent: a cell is chaotic when the
        median separation grew by more than this factor (see
        :func:`phasearray.analysis.beyond.chaos_labels`).

    Returns
    -------
    xarray.Dataset, lazy, dims (T, sigma_W)
        ``label_dbm``, ``label_observables`` (int8 codes of :data:`LABELS`,
        with CF ``flag_values``/``flag_meanings``) and ``disagree``. With a
        ``lyapunov`` variable also ``chaotic`` (the chaos order parameter) and
        ``disagree_chaos`` (chaotic but not hot by the DBM rule, or hot but
        not chaotic).
    """
    if jamming not in ("data", "theory"):
        raise ConfigError(f"jamming: got {jamming!r}; choose 'data' or 'theory'")
    if loss not in ("test_loss", "train_loss"):
        raise ConfigError(f"loss: got {loss!r}; choose 'test_loss' or 'train_loss'")
    b = boundaries_result
    if b is None:
        b = boundaries(ds, (level,), t=t, convention=convention)
    name = "jamming_inv_sigma_W" if jamming == "data" else "jamming_inv_sigma_W_theory"
    line = bare(b[name])

    inv_sigma = 1 / axis(ds, "sigma_W")
    T_boundary = bare(b["T_boundary"]).sel(level=level, drop=True)
    label_dbm = _dbm_rule(axis(ds, "T"), inv_sigma, T_boundary, line)
    label_obs = _observable_rule(
        ds, loss, t, loss_threshold, alignment_threshold, memory_threshold
    )
    flags = {"flag_values": list(range(len(LABELS))), "flag_meanings": " ".join(LABELS)}
    out = xr.Dataset(
        {
            "label_dbm": label_dbm.astype(np.int8).assign_attrs(flags),
            "label_observables": label_obs.astype(np.int8).assign_attrs(flags),
            "disagree": label_dbm != label_obs,
        },
        attrs={"level": level, "jamming": jamming, "loss": loss},
    )
    if "lyapunov" in ds.data_vars:
        from .beyond import chaos_labels  # beyond builds on this module

        out["chaotic"] = chaos_labels(ds, t=t, growth=growth)
        out["disagree_chaos"] = out["chaotic"] != (label_dbm == HOT)
    return dress(out, ds)


def _dbm_rule(T, inv_sigma, T_boundary, line):
    left = inv_sigma < line
    above = xr.where(np.isnan(T_boundary), ~left, T > T_boundary)
    return xr.where(above, HOT, xr.where(left, JAMMED, ORDERED)).transpose(
        "T", "sigma_W"
    )


def _observable_rule(
    ds, loss, t, loss_threshold, alignment_threshold, memory_threshold
):
    def median(name):
        data = variable(ds, name).isel(t=t, drop=True)
        return ensemble_stats(ds, data)["median"]

    loss_map, aligned, memory = (
        median(loss),
        median("alignment"),
        median("feature_overlap"),
    )
    if loss_threshold is None:
        positive = loss_map.where(loss_map > 0)
        loss_threshold = np.sqrt(positive.min() * positive.max())
    if alignment_threshold is None:
        alignment_threshold = (aligned.min() + aligned.max()) / 2
    if memory_threshold is None:
        memory_threshold = (memory.min() + memory.max()) / 2

    ordered = (loss_map <= loss_threshold) & (aligned >= alignment_threshold)
    jammed = ~ordered & (memory >= memory_threshold)
    label = xr.where(ordered, ORDERED, xr.where(jammed, JAMMED, HOT))
    return label.transpose("T", "sigma_W")


def recommend(
    ds: xr.Dataset,
    batch_size: int | None = None,
    *,
    rule: str = "dbm",
    labels: xr.Dataset | None = None,
    **classify_options,
) -> xr.Dataset:
    """Per σ_W, the largest T still ordered and the learning rate it means.

    Parameters
    ----------
    ds : xarray.Dataset
    batch_size : int, optional
        |B| the learning rate is given for (ε = T |B|); the sweep's by default.
    rule : {"dbm", "observables"}
        Which label of :func:`classify` to use.
    labels : xarray.Dataset, optional
        An already built :func:`classify` result.
    **classify_options
        Passed to :func:`classify`.

    Returns
    -------
    xarray.Dataset, lazy, dims (sigma_W)
        ``T_max`` (NaN where no T is ordered) and ``learning_rate`` =
        ``T_max`` · ``batch_size``.
    """
    if rule not in ("dbm", "observables"):
        raise ConfigError(f"rule: got {rule!r}; choose 'dbm' or 'observables'")
    if batch_size is None:
        batch_size = int(ds.attrs.get("batch_size", 0)) or None
        if batch_size is None:
            raise ConfigError(
                "batch_size: the store has no batch_size attribute; give one"
            )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
        raise ConfigError(f"batch_size: got {batch_size!r}; must be a positive integer")
    if batch_size < 1:
        raise ConfigError(f"batch_size: got {batch_size}; must be a positive integer")
    labels = classify(ds, **classify_options) if labels is None else labels
    ordered = bare(labels[f"label_{rule}"]) == ORDERED
    T_max = axis(ds, "T").where(ordered).max("T")
    out = xr.Dataset(
        {
            "T_max": T_max.assign_attrs(long_name="largest ordered temperature"),
            "learning_rate": (T_max * batch_size).assign_attrs(
                long_name=f"learning rate for batch size {batch_size}"
            ),
        },
        attrs={"batch_size": batch_size, "rule": rule},
    )
    return dress(out, ds)
