"""Figures beyond the paper: chaos, linear scaling, variants, finite size, S(t) theory.

:func:`write_beyond_figures` takes a store or a study folder and draws what
applies to it (see its docstring); the numbers come from
:mod:`phasearray.analysis.beyond`, computed together once per figure.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import yaml
from matplotlib import colormaps, colors
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..analysis import beyond, compute, contour_lines
from ..errors import StoreError
from ..store import open_sweep
from ..study import STUDY_FILE, open_study
from . import _draw as draw

__all__ = [
    "chaos_figure",
    "finite_size_figure",
    "has_beyond_figures",
    "one_particle_figure",
    "scaling_figure",
    "variants_figure",
    "write_beyond_figures",
]

logger = logging.getLogger(__name__)


def write_beyond_figures(
    study_or_store: str | Path | xr.Dataset,
    out_dir: str | Path,
    *,
    convention: str = "paper",
    dpi: int = 130,
) -> list[Path]:
    """Write the figures beyond the paper that apply to a store or a study.

    A store (a path or an opened sweep): ``beyond_one_particle.png``
    (measured S(t) against eq. (4.8)) and, when it was recorded with
    ``record.lyapunov: true``, ``beyond_chaos.png``.

    A study folder: ``beyond_variants.png`` (a phase map and the boundaries
    per variant); for a batch-size study also ``beyond_scaling.png`` (the
    linear scaling rule); for a width study ``beyond_finite_size.png``.

    Parameters
    ----------
    study_or_store : path or xarray.Dataset
    out_dir : path
        Created if missing; files are overwritten.
    convention : {"paper", "phase_ml"}
        DBM convention of the boundaries.
    dpi : int

    Returns
    -------
    list of pathlib.Path
        The files written.

    Examples
    --------
    >>> write_beyond_figures("runs/scaling", "runs/scaling-beyond")  # doctest: +SKIP
    """
    folder = Path(out_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StoreError(
            f"cannot create figure folder {str(folder)!r}: {error}"
        ) from None

    if _is_study(study_or_store):
        figures = _study_figures(Path(study_or_store), convention)
    else:
        ds = study_or_store
        if not isinstance(ds, xr.Dataset):
            ds = open_sweep(ds)
        figures = _store_figures(ds, convention)

    paths = []
    for name, fig in figures:
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=dpi)
        logger.debug("wrote %s", path)
        paths.append(path)
    return paths


def has_beyond_figures(ds: xr.Dataset) -> bool:
    """Whether a store gives figures beyond the paper's.

    The one-particle figure needs the training inputs (for the DBM
    coefficients), the chaos figure a recorded Lyapunov exponent.
    """
    return "lyapunov" in ds.data_vars or {"W2", "x_train"} <= set(ds.data_vars)


def _is_study(target: Any) -> bool:
    return not isinstance(target, xr.Dataset) and (Path(target) / STUDY_FILE).is_file()


def _store_figures(ds: xr.Dataset, convention: str) -> list[tuple[str, Figure]]:
    out = [("beyond_one_particle", one_particle_figure(ds, convention=convention))]
    if "lyapunov" in ds.data_vars:
        out.insert(0, ("beyond_chaos", chaos_figure(ds, convention=convention)))
    return out


def _study_figures(root: Path, convention: str) -> list[tuple[str, Figure]]:
    field = yaml.safe_load((root / STUDY_FILE).read_text())["variants"]["field"]
    dim, variants = beyond.open_variants(root)
    out = [("beyond_variants", variants_figure(variants, dim, convention=convention))]
    if field == "train.batch_size":
        study = open_study(root)
        fig = scaling_figure(study, variants, dim, convention=convention)
        out.append(("beyond_scaling", fig))
    if field == "model.widths":
        fig = finite_size_figure(variants, dim, convention=convention)
        out.append(("beyond_finite_size", fig))
    return out


# --- chaos ---------------------------------------------------------------------------


def chaos_figure(ds: xr.Dataset, *, convention: str = "paper") -> Figure:
    """Median λ(t_f) over the plane with the chaos onset and the DBM 1σ contour
    (left), and λ against T per σ_W with the threshold (right)."""
    (found,) = compute(beyond.chaos_vs_dbm(ds, convention=convention))
    threshold = float(found["threshold"])
    fig = draw.figure(2, width=5.0, height=3.8)
    left, right = fig.subplots(1, 2)

    _lyapunov_map(fig, left, found["lyapunov_median"], threshold)
    _chaos_lines(left, found)
    draw.legend(left, fontsize="x-small", loc="lower left", dark=True)
    left.set_title(
        f"t_f = {found.attrs['t']} steps; cells agreeing: "
        f"{float(found['agreement']):.0%}",
        fontsize="small",
    )
    _lyapunov_curves(right, found["lyapunov_median"], threshold)
    return fig


def _lyapunov_map(fig: Figure, ax: Axes, lam: xr.DataArray, threshold: float) -> None:
    grid = lam.transpose("T", "sigma_W").sortby("sigma_W", ascending=False)
    values = np.asarray(grid.values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    top = max(np.abs(finite).max() if finite.size else 1.0, 10 * threshold)
    norm = colors.SymLogNorm(linthresh=threshold, vmin=-top, vmax=top)
    mesh = ax.pcolormesh(
        draw.edges(1 / grid["sigma_W"].values),
        draw.edges(grid["T"].values),
        np.ma.masked_invalid(values),
        norm=norm,
        cmap=colormaps["RdBu_r"].with_extremes(bad="0.8"),
        shading="flat",
    )
    draw.plane(ax)
    ticks = [-top, -threshold, 0.0, threshold, top]
    bar = fig.colorbar(mesh, ax=ax, ticks=ticks, label="median λ(t_f)")
    bar.ax.set_yticklabels([f"{v:.2g}" for v in ticks])


def _chaos_lines(ax: Axes, found: xr.Dataset) -> None:
    inv = 1 / found["sigma_W"].values
    onset = found["T_chaos"].values
    shown = np.isfinite(onset)
    ax.plot(inv[shown], onset[shown], "o-", color="k", lw=2, label="λ = ln 10³ / t_f")
    lines = contour_lines(found["converged_fraction"], (found.attrs["level"],))
    draw.boundary_lines(ax, lines, color="gold")


def _lyapunov_curves(ax: Axes, lam: xr.DataArray, threshold: float) -> None:
    sigma = lam["sigma_W"].values
    cmap = colormaps["viridis"]
    for i, s in enumerate(sigma):
        color = cmap(i / max(sigma.size - 1, 1))
        ax.plot(
            lam["T"],
            lam.sel(sigma_W=s),
            "o-",
            mfc="none",
            color=color,
            label=f"1/σ_W = {1 / s:.3g}",
        )
    ax.axhline(threshold, color="k", ls="--", lw=1, label="threshold ln 10³ / t_f")
    ax.axhline(0, color="0.5", lw=0.6)
    ax.set(xscale="log", xlabel=draw.LABEL_T, ylabel="median λ(t_f) per step")
    # a wide linear part keeps the ticks at 0 and ±threshold apart
    ax.set_yscale("symlog", linthresh=threshold, linscale=2.0)
    lowest = float(np.nanmin(lam.values)) if np.isfinite(lam.values).any() else 0.0
    ax.set_ylim(bottom=min(-threshold, 1.2 * lowest))  # no empty negative decades
    _grid_ticks(ax.xaxis, lam["T"].values)
    draw.legend(ax, fontsize="x-small", loc="center left", bbox_to_anchor=(1.02, 0.5))


# --- one-particle theory ---------------------------------------------------------


def one_particle_figure(
    ds: xr.Dataset, *, convention: str = "paper", n_paths: int = 64
) -> Figure:
    """Measured S(t) of every seed and its median against the median and
    16–84 % band of paths of eq. (4.8), in an ordered, a hot and a jammed cell."""
    found = beyond.one_particle(ds, n_paths=n_paths, convention=convention)
    cells = list(found["cell"].values)
    fig = draw.figure(len(cells), width=4.2)
    axes = np.atleast_1d(fig.subplots(1, len(cells)))
    for ax, cell in zip(axes, cells, strict=True):
        _one_cell(ax, found.sel(cell=cell), str(cell))
    draw.legend(axes[0], fontsize="x-small", loc="best")
    fig.suptitle(
        "mean level spacing: measured vs dS = (K_S + V_S T/S) dτ + √(2TD_S) dW"
    )
    return fig


def _one_cell(ax: Axes, cell: xr.Dataset, name: str) -> None:
    t = cell["t"].values.astype(np.float64)
    later = t > 0
    x = t[later]
    for i, row in enumerate(cell["measured"].values):
        label = "measured (seeds)" if i == 0 else None
        ax.plot(x, row[later], color="0.6", lw=0.6, label=label)
    ax.plot(
        x, cell["measured_median"].values[later], "k-", lw=2, label="measured median"
    )
    ax.fill_between(
        x,
        cell["theory_q16"].values[later],
        cell["theory_q84"].values[later],
        color="tab:orange",
        alpha=0.3,
        label="eq. (4.8) 16–84 %",
    )
    ax.plot(
        x,
        cell["theory_median"].values[later],
        "--",
        color="tab:orange",
        lw=2,
        label="eq. (4.8) median",
    )
    ax.axhline(float(cell["measured_median"][0]), color="k", ls=":", lw=0.8)
    ax.set(
        xscale="log",
        xlabel="t (steps)",
        ylabel="S(t)",
        title=f"{name}: T = {float(cell['T']):.3g}, 1/σ_W = {1 / float(cell['sigma_W']):.3g}",
    )
    draw.positive_log(ax, cell["measured"].values, cell["theory_median"].values)


# --- studies -------------------------------------------------------------------------


def variants_figure(
    variants: Mapping[Any, xr.Dataset], dim: str, *, convention: str = "paper"
) -> Figure:
    """Median test loss per variant on one colour scale, with each variant's
    DBM 1σ contour and jamming lines, and every variant's boundary T against
    1/σ_W in the last panel."""
    maps = beyond.variant_maps(variants, dim).to_dataset(name="loss")
    found, maps = compute(
        beyond.variant_boundaries(variants, dim, convention=convention), maps
    )
    labels = list(variants)
    axes, fig = _panels(len(labels) + 1)
    norm = _capped_log_norm(np.asarray(maps["loss"].values, dtype=np.float64))
    for ax, label in zip(axes, labels, strict=False):
        part = found.sel({dim: label})
        mesh = _loss_map(ax, maps["loss"].sel({dim: label}), norm)
        lines = contour_lines(part["converged_fraction"], (found.attrs["level"],))
        draw.boundary_lines(ax, lines)
        if variants[label].attrs.get("activation") == "tanh":
            # the σ_c² = 1/2 argument is about tanh features only
            draw.jamming_lines(
                ax,
                float(found["jamming_inv_sigma_W_theory"]),
                float(part["jamming_inv_sigma_W"]),
            )
        ax.set_title(f"{dim} = {label}")
    fig.colorbar(
        mesh,
        ax=axes[: len(labels)],
        extend="both",
        label="median test loss L(t_f) (white: above the scale)",
    )
    draw.legend(axes[0], fontsize="x-small", loc="lower left", dark=True)
    _boundary_panel(axes[len(labels)], found, dim)
    for ax in axes[len(labels) + 1 :]:
        ax.set_axis_off()
    return fig


def _panels(n: int) -> tuple[np.ndarray, Figure]:
    """n axes in rows of at most three (two when n = 4)."""
    n_cols = 2 if n == 4 else min(3, n)
    n_rows = -(-n // n_cols)
    fig = draw.figure(n_cols, n_rows, width=4.2, height=3.4)
    return np.atleast_1d(fig.subplots(n_rows, n_cols)).ravel(), fig


def _loss_map(ax: Axes, data: xr.DataArray, norm: colors.Normalize) -> Any:
    grid = data.transpose("T", "sigma_W").sortby("sigma_W", ascending=False)
    values = np.asarray(grid.values, dtype=np.float64)
    mesh = ax.pcolormesh(
        draw.edges(1 / grid["sigma_W"].values),
        draw.edges(grid["T"].values),
        np.ma.masked_array(values, ~np.isfinite(values) | (values <= 0)),
        norm=norm,
        cmap=colormaps[draw.CMAP].with_extremes(
            bad="0.8", over="white", under=colormaps[draw.CMAP](0)
        ),
        shading="flat",
    )
    draw.plane(ax)
    return mesh


def _capped_log_norm(values: np.ndarray) -> colors.Normalize:
    """Log scale over the positive finite values, from 1/100 of their 16th to
    100× their 84th percentile, so that a runaway variant (losses ~1e100) or
    an exactly solvable one (~1e-30) does not squash the others; values above
    are drawn white, values below in the lowest colour."""
    positive = values[np.isfinite(values) & (values > 0)]
    if positive.size == 0:
        return colors.Normalize(0, 1)
    q16, q84 = np.quantile(positive, [0.16, 0.84])
    high = min(positive.max(), 100 * q84)
    low = max(positive.min(), q16 / 100)
    return colors.LogNorm(min(low, high / 10), high)


def _grid_ticks(axis: Any, values: np.ndarray) -> None:
    """Major ticks at (at most six of) the grid values in view, labelled plainly.

    Call after drawing, so that the view limits are known.
    """
    from matplotlib.ticker import FixedLocator, NullLocator

    low, high = sorted(axis.get_view_interval())
    values = np.unique(np.asarray(values, dtype=np.float64))
    values = values[np.isfinite(values) & (values > 0)]
    inside = values[(values >= low * (1 - 1e-9)) & (values <= high * (1 + 1e-9))]
    values = inside if inside.size >= 2 else values
    if values.size == 0:
        return
    step = -(-values.size // 6)
    chosen = values[::step]
    axis.set_major_locator(FixedLocator(chosen.tolist()))
    axis.set_ticklabels([f"{v:.3g}" for v in chosen])
    axis.set_minor_locator(NullLocator())


def _boundary_panel(ax: Axes, found: xr.Dataset, dim: str) -> None:
    labels = found[dim].values
    cmap = colormaps["viridis"]
    for i, label in enumerate(labels):
        color = cmap(i / max(labels.size - 1, 1))
        boundary = found["T_boundary"].sel({dim: label})
        inv = 1 / boundary["sigma_W"].values
        values = boundary.values
        shown = np.isfinite(values)
        ax.plot(inv[shown], values[shown], "o-", color=color, label=f"{dim} = {label}")
    draw.plane(ax)
    _grid_ticks(ax.xaxis, 1 / found["sigma_W"].values)
    _grid_ticks(ax.yaxis, found["T"].values)
    ax.set_title(
        f"DBM boundary at {found.attrs['level']:g} converged", fontsize="small"
    )
    if not ax.get_lines():
        draw.note(ax, "no boundary inside the grid")
    draw.legend(ax, fontsize="x-small")


def scaling_figure(
    study: xr.Dataset,
    variants: Mapping[Any, xr.Dataset],
    dim: str = "batch_size",
    *,
    convention: str = "paper",
) -> Figure:
    """Linear scaling rule: loss, G(t, 0) and boundary for every |B|, and the
    spread of log10 loss over |B| per cell, at matched epochs (top row) and at
    matched steps (bottom row)."""
    results = compute(
        *(
            beyond.scaling_collapse(
                study, match=match, dim=dim, variants=variants, convention=convention
            )
            for match in beyond.MATCHES
        )
    )
    fig = draw.figure(4, 2, width=4.3, height=3.4)
    axes = fig.subplots(2, 4)
    for row, found in zip(axes, results, strict=True):
        _scaling_row(row[:3], found, dim)
        draw.phase_map(
            fig, row[3], found["loss_spread_map"], label="std over |B| of log10 loss"
        )
        row[3].set_title(f"matched {found.attrs['match']}", fontsize="small")
    draw.legend(axes[0, 0], fontsize="x-small")
    return fig


def _scaling_row(row: Any, found: xr.Dataset, dim: str) -> None:
    sigma = found["sigma_W"].values
    picks = sorted({0, sigma.size - 1})
    styles = ("-", "--")
    cmap = colormaps["viridis"]
    labels = found[dim].values
    for i, label in enumerate(labels):
        color = cmap(i / max(labels.size - 1, 1))
        step = int(found["step"].sel({dim: label}))
        for j, style in zip(picks, styles, strict=False):
            name = f"|B| = {label} (t = {step})" if j == picks[0] else None
            for ax, var in zip(
                row[:2], ("loss_median", "feature_overlap_median"), strict=True
            ):
                ax.plot(
                    found["T"],
                    found[var].sel({dim: label}).isel(sigma_W=j),
                    style,
                    marker="o",
                    mfc="none",
                    color=color,
                    label=name,
                )
        boundary = found["T_boundary"].sel({dim: label})
        shown = np.isfinite(boundary.values)
        row[2].plot(1 / sigma[shown], boundary.values[shown], "o-", color=color)

    match = found.attrs["match"]
    row[0].set(
        xscale="log",
        yscale="log",
        xlabel=draw.LABEL_T,
        ylabel="median test loss",
        title=f"matched {match}: spread {_spreads(found, 'loss')} dex",
    )
    row[1].set(
        xscale="log",
        xlabel=draw.LABEL_T,
        ylabel="median G(t, 0)",
        title=f"spread {_spreads(found, 'feature_overlap')}",
    )
    row[2].set(
        xscale="log",
        yscale="log",
        xlabel=draw.LABEL_INV,
        ylabel="T_boundary (1σ)",
        title=_boundary_title(float(found["boundary_spread_max"])),
    )
    for ax in row:
        ax.title.set_fontsize("small")
        _grid_ticks(ax.xaxis, found["T"].values)
    _grid_ticks(row[2].xaxis, 1 / sigma)
    _grid_ticks(row[2].yaxis, found["T"].values)
    row[0].text(
        0.02,
        0.02,
        f"solid: 1/σ_W = {1 / sigma[picks[0]]:.3g}; dashed: {1 / sigma[picks[-1]]:.3g}",
        transform=row[0].transAxes,
        fontsize="x-small",
    )


def _boundary_title(spread: float) -> str:
    if not np.isfinite(spread):
        return "spread: n/a (a |B| lacks a boundary)"
    return f"max spread {spread:.2f} (log2 T)"


def _spreads(found: xr.Dataset, name: str) -> str:
    """ "max / median" of a spread over cells."""
    return (
        f"{float(found[f'{name}_spread']):.2f} max / "
        f"{float(found[f'{name}_spread_median']):.2f} median"
    )


def finite_size_figure(
    variants: Mapping[Any, xr.Dataset], dim: str = "width", *, convention: str = "paper"
) -> Figure:
    """How the boundaries move with the width: T_boundary against 1/σ_W per
    width, T_boundary against the width factor with the 1/(n2 − 1) the
    criterion's left side alone would give, and the loss at the smallest σ_W."""
    maps = beyond.variant_maps(variants, dim).to_dataset(name="loss")
    found, maps = compute(
        beyond.variant_boundaries(variants, dim, convention=convention), maps
    )
    n2 = {label: int(ds.sizes["unit2"]) for label, ds in variants.items()}
    fig = draw.figure(3, width=4.4)
    axes = fig.subplots(1, 3)
    _boundary_panel(axes[0], found, dim)
    _boundary_vs_width(axes[1], found, dim, n2)
    _loss_vs_T(axes[2], maps["loss"], dim)
    first = next(iter(variants.values()))
    layers = [name for name in ("W1", "W2", "W3") if name in first.data_vars]
    fig.suptitle(f"finite size; trained: {', '.join(layers)}", fontsize="medium")
    return fig


def _boundary_vs_width(ax: Axes, found: xr.Dataset, dim: str, n2: dict) -> None:
    labels = list(found[dim].values)
    factor = np.array([float(label) for label in labels])
    sigma = found["sigma_W"].values
    cmap = colormaps["magma"]
    for i, s in enumerate(sigma):
        values = found["T_boundary"].sel(sigma_W=s).values
        shown = np.isfinite(values)
        if not shown.any():
            continue
        color = cmap(0.1 + 0.8 * i / max(sigma.size - 1, 1))
        ax.plot(
            factor[shown],
            values[shown],
            "o-",
            color=color,
            label=f"1/σ_W = {1 / s:.3g}",
        )
        first = int(np.flatnonzero(shown)[0])
        scale = (n2[labels[first]] - 1) / np.array([n2[label] - 1 for label in labels])
        ax.plot(factor, values[first] * scale, ":", color=color, lw=1)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel=f"{dim} factor",
        ylabel="T_boundary",
        title="dotted: ∝ 1/(n2 − 1) at fixed K_S/V_S",
    )
    _grid_ticks(ax.xaxis, factor)
    _grid_ticks(ax.yaxis, found["T"].values)
    if not ax.get_lines():
        draw.note(ax, "no boundary inside the grid")
    draw.legend(ax, fontsize="x-small")


def _loss_vs_T(ax: Axes, loss: xr.DataArray, dim: str) -> None:
    labels = loss[dim].values
    cmap = colormaps["viridis"]
    first = loss.isel(sigma_W=0)
    for i, label in enumerate(labels):
        ax.plot(
            first["T"],
            first.sel({dim: label}),
            "o-",
            mfc="none",
            color=cmap(i / max(labels.size - 1, 1)),
            label=f"{dim} = {label}",
        )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel=draw.LABEL_T,
        ylabel="median test loss",
        title=f"1/σ_W = {1 / float(first['sigma_W']):.3g}",
    )
    _grid_ticks(ax.xaxis, first["T"].values)
    draw.legend(ax, fontsize="x-small")
