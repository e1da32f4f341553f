"""One function per figure; each draws from computed results and returns a Figure.

The numbering follows the figures of Park et al. 2025; ``fig6b`` (initial
spectra against Marchenko–Pastur) and ``fig10`` (the labels per cell) are
extra.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from .. import rmt
from ..analysis import LABELS, contour_lines
from . import _draw as draw
from ._results import flow_cells


def fig1_feature_distribution(ds: xr.Dataset, r: dict[str, Any]) -> Figure:
    """p(φ) of tanh features: three σ_z², and the measured σ_z² of each σ_W."""
    fig = draw.figure(2, width=5.0)
    left, right = fig.subplots(1, 2)
    phi = np.linspace(-0.999, 0.999, 801)
    for sigma_z2, style in ((2.0, "-"), (rmt.SIGMA_C2, "--"), (0.1, "-.")):
        left.plot(
            phi,
            rmt.feature_density(phi, sigma_z2),
            style,
            color="k",
            label=f"σ_z² = {sigma_z2:g}",
        )
    left.set(
        xlabel="φ", ylabel="p(φ)", ylim=(0, 3), title="φ = tanh(z), z ~ N(0, σ_z²)"
    )
    draw.legend(left)

    measured = r["features"]["sigma_z2_mean"]
    cmap = draw._colormap()
    n = measured.sizes["sigma_W"]
    for i, (sigma, value) in enumerate(
        zip(measured["sigma_W"].values, measured.values, strict=True)
    ):
        color = cmap(0.1 + 0.8 * i / max(n - 1, 1))
        style = "-" if value > rmt.SIGMA_C2 else "-."
        right.plot(
            phi,
            rmt.feature_density(phi, value),
            style,
            color=color,
            label=f"1/σ_W = {1 / sigma:.3g}: σ_z² = {value:.2g}",
        )
    right.set(
        xlabel="φ",
        ylabel="p(φ)",
        ylim=(0, 3),
        title="measured σ_z² at t = 0 (solid: two peaks)",
    )
    draw.legend(
        right, fontsize="x-small", loc="center left", bbox_to_anchor=(1.02, 0.5)
    )
    return fig


def fig2_test_loss_map(ds: xr.Dataset, r: dict[str, Any]) -> Figure:
    """Median test loss at the last checkpoint over the phase plane."""
    fig = draw.figure(1, width=4.8)
    ax = fig.subplots()
    draw.phase_map(
        fig,
        ax,
        r["final"]["test_loss_median"],
        log=True,
        label="median test loss L(t_f)",
    )
    ax.set_title(f"t_f = {int(ds['t'][-1])} steps")
    return fig


def fig3_loss_grad_vs_T(ds: xr.Dataset, r: dict[str, Any]) -> Figure:
    """Median loss and gradient norm at t_f against T, one line per σ_W."""
    fig = draw.figure(2, width=4.6)
    axes = fig.subplots(1, 2)
    final = r["final"]
    cmap = draw._colormap()
    sigma = final["sigma_W"].values
    for ax, name, label in zip(
        axes,
        ("train_loss", "grad_norm"),
        ("median training loss", "median |∇L|"),
        strict=True,
    ):
        for i, s in enumerate(sigma):
            color = cmap(0.1 + 0.8 * i / max(sigma.size - 1, 1))
            values = final[f"{name}_median"].sel(sigma_W=s)
            ax.plot(
                final["T"],
                values,
                "o-",
                mfc="none",
                color=color,
                label=f"1/σ_W = {1 / s:.3g}",
            )
        ax.set(xlabel=draw.LABEL_T, ylabel=f"{label} at t_f", xscale="log")
        draw.positive_log(ax, final[f"{name}_median"])
    draw.legend(
        axes[1], fontsize="x-small", loc="center left", bbox_to_anchor=(1.02, 0.5)
    )
    return fig


def fig4_slices_errorbars(ds: xr.Dataset, r: dict[str, Any]) -> Figure:
    """Slices with 16–84 % bars: loss and gradient against T at the smallest σ_W,
    and the initial gradient against 1/σ_W at the lowest T."""
    fig = draw.figure(3, width=4.0)
    axes = fig.subplots(1, 3)
    final, initial = r["final"], r["grad_initial"]
    s0 = final["sigma_W"].values[0]
    for ax, name in zip(axes[:2], ("train_loss", "grad_norm"), strict=True):
        stats = _prefixed(final, name).sel(sigma_W=s0)
        draw.errorbars(ax, final["T"].values, stats, color="navy")
        ax.set(
            xscale="log",
            xlabel=draw.LABEL_T,
            ylabel=f"{name} at t_f",
            title=f"1/σ_W = {1 / s0:.3g}",
        )
        draw.positive_log(ax, stats["median"])
    first = initial.isel(T=0)
    draw.errorbars(axes[2], 1 / first["sigma_W"].values, first, color="navy")
    axes[2].set(
        xscale="log",
        xlabel=draw.LABEL_INV,
        ylabel="grad_norm at t = 0",
        title=f"T = {float(initial['T'][0]):.3g}",
    )
    draw.positive_log(axes[2], first["median"])
    return fig


def _prefixed(final: xr.Dataset, name: str) -> xr.Dataset:
    return xr.Dataset({k: final[f"{name}_{k}"] for k in ("median", "q16", "q84")})


def fig5_feature_overlap_alignment(ds: xr.Dataset, r: dict[str, Any]) -> Figure:
    """Maps of the median feature overlap G(t_f, 0) and alignment."""
    fig = draw.figure(2, width=4.8)
    left, right = fig.subplots(1, 2)
    draw.phase_map(
        fig, left, r["final"]["feature_overlap_median"], label="median G(t_f, 0)"
    )
    draw.phase_map(
        fig, right, r["final"]["alignment_median"], label="median alignment cos(h, φ2)"
    )
    return fig


def fig6_eigenvalue_flows(ds: xr.Dataset, r: dict[str, Any]) -> Figure:
    """Eigenvalues x(t) in an ordered, a hot and a jammed cell.

    The first seed's flows are drawn strong with its teacher's eigenvalues
    dashed on top (the levels an ordered run approaches); the other seeds
    faint behind them.
    """
    fig = draw.figure(3, width=4.2)
    axes = fig.subplots(1, 3)
    flows, teacher = r["flows"], r["teacher_eigenvalues"]
    for ax, (name, where) in zip(axes, flow_cells(ds).items(), strict=True):
        values = flows[name].transpose("seed", "eigen", "t").values
        t = flows["t"].values.astype(np.float64)
        for rows, style in ((values[1:], _FAINT_FLOW), (values[:1], _FIRST_FLOW)):
            lines = [np.column_stack([t, row]) for row in rows.reshape(-1, t.size)]
            ax.add_collection(LineCollection(lines, **style))
        levels = _first_teacher_levels(flows["teacher_W2"], where)
        ax.hlines(levels, t.min(), t.max(), colors="firebrick", linestyles="--",
                  lw=0.9, alpha=0.9, zorder=3)  # fmt: skip
        _flow_limits(ax, t, values, teacher, name)
        T, sigma = float(ds["T"][where["T"]]), float(ds["sigma_W"][where["sigma_W"]])
        ax.set(
            xlabel="t (steps)",
            ylabel="x(t)",
            title=f"{name}: T = {T:.3g}, 1/σ_W = {1 / sigma:.3g}",
        )
    seed = int(flows["seed"][0])
    axes[0].plot([], [], color="navy", lw=0.9, label=f"student, seed {seed}")
    axes[0].plot([], [], "--", color="firebrick", lw=0.9, label="its teacher")
    draw.legend(axes[0], loc="upper left")
    return fig


_FAINT_FLOW: dict[str, Any] = {
    "colors": "lightsteelblue",
    "lw": 0.5,
    "alpha": 0.5,
    "zorder": 1,
}
_FIRST_FLOW: dict[str, Any] = {"colors": "navy", "lw": 0.9, "alpha": 0.9, "zorder": 2}


def _first_teacher_levels(
    teacher_W2: xr.DataArray, where: dict[str, int]
) -> np.ndarray:
    """Eigenvalues of W̄2 W̄2ᵀ of the first seed's teacher in a cell."""
    cell = {dim: where[dim] for dim in ("T", "sigma_W") if dim in teacher_W2.dims}
    W = np.asarray(teacher_W2.isel(cell).isel(seed=0).values, dtype=np.float64)
    return np.linalg.eigvalsh(W @ W.T)


def _flow_limits(ax, t, values, teacher, name) -> None:
    finite = values[np.isfinite(values)]
    top = max(finite.max() if finite.size else 1.0, 1e-12)
    if name == "ordered" and teacher.size:
        top = max(top, teacher.max())
    ax.set_xlim(t.min(), max(t.max(), t.min() + 1))
    ax.set_ylim(0, 1.05 * top)


def fig6b_initial_spectra(ds: xr.Dataset, r: dict[str, Any]) -> Figure:
    """Eigenvalues at t = 0 pooled over seeds against Marchenko–Pastur."""
    initial = r["initial"]
    n = initial.sizes["sigma_W"]
    picks = np.unique(np.linspace(0, n - 1, min(n, 4)).round().astype(int))
    fig = draw.figure(len(picks), width=3.6)
    axes = np.atleast_1d(fig.subplots(1, len(picks)))
    for ax, i in zip(axes, picks, strict=True):
        cell = initial.isel(sigma_W=i)
        values = cell["initial"].values.ravel()
        values = values[np.isfinite(values)]
        low, high = float(cell["mp_x_minus"]), float(cell["mp_x_plus"])
        if values.size:
            ax.hist(
                values,
                bins=30,
                range=(0, 1.3 * high),
                density=True,
                color="0.7",
                label="x at t = 0",
            )
        ax.plot(cell["mp_x"], cell["mp_density"], "k-", label="Marchenko–Pastur")
        ax.axvline(low, color="k", ls=":", lw=0.8)
        ax.axvline(high, color="k", ls=":", lw=0.8)
        sigma = float(cell["sigma_W"])
        ax.set(
            xlabel="x",
            ylabel="p(x)",
            title=f"σ_W = {sigma:.3g} (fit {float(cell['sigma_W_fit']):.3g})",
        )
    draw.legend(axes[0], fontsize="small")
    return fig


def fig7_level_spacing_rate(ds: xr.Dataset, r: dict[str, Any]) -> Figure:
    """Map of the median time-averaged level-spacing rate λ̄(t_f) per epoch."""
    fig = draw.figure(1, width=4.8)
    ax = fig.subplots()
    draw.phase_map(fig, ax, r["rate"]["median"], label="median λ̄(t_f) per epoch")
    return fig


def fig8_dbm_boundaries(ds: xr.Dataset, r: dict[str, Any]) -> Figure:
    """DBM criterion: gradient slice with the 1σ temperature, and boundary
    contours on the G(t_f, 0) and alignment maps."""
    fig = draw.figure(3, width=4.4)
    axes = fig.subplots(1, 3)
    final, found = r["final"], r["boundaries"]
    s0 = final["sigma_W"].values[0]
    draw.errorbars(
        axes[0],
        final["T"].values,
        _prefixed(final, "grad_norm").sel(sigma_W=s0),
        color="navy",
    )
    crossing = float(found["T_boundary"].sel(level=found["level"][0], sigma_W=s0))
    if np.isfinite(crossing):
        axes[0].axvline(
            crossing,
            color="brown",
            ls="-.",
            label=f"{float(found['level'][0]):g} converged",
        )
        draw.legend(axes[0])
    axes[0].set(
        xscale="log",
        xlabel=draw.LABEL_T,
        ylabel="grad_norm at t_f",
        title=f"1/σ_W = {1 / s0:.3g}",
    )
    draw.positive_log(axes[0], final["grad_norm_median"].sel(sigma_W=s0))

    lines = contour_lines(found["converged_fraction"], tuple(found["level"].values))
    for ax, name, label in (
        (axes[1], "feature_overlap_median", "median G(t_f, 0)"),
        (axes[2], "alignment_median", "median alignment"),
    ):
        draw.phase_map(fig, ax, final[name], label=label)
        draw.boundary_lines(ax, lines, color="white")
    draw.legend(axes[1], fontsize="x-small", loc="lower left", dark=True)
    fig.suptitle(
        f"DBM criterion, eq. (4.15), convention {found.attrs.get('convention')}"
    )
    return fig


def fig9_summary(ds: xr.Dataset, r: dict[str, Any]) -> Figure:
    """Loss, G(t_f, 0), alignment and λ̄ maps with the hot and jammed boundaries."""
    fig = draw.figure(2, 2, width=4.8, height=3.8)
    axes = fig.subplots(2, 2).ravel()
    final, found = r["final"], r["boundaries"]
    first = float(found["level"][0])
    lines = contour_lines(found["converged_fraction"], (first,))
    panels = (
        (final["test_loss_median"], True, "median test loss"),
        (final["feature_overlap_median"], False, "median G(t_f, 0)"),
        (final["alignment_median"], False, "median alignment"),
        (r["rate"]["median"], False, "median λ̄(t_f) per epoch"),
    )
    for ax, (data, log, label) in zip(axes, panels, strict=True):
        draw.phase_map(fig, ax, data, log=log, label=label)
        draw.boundary_lines(ax, lines)
        draw.jamming_lines(
            ax,
            float(found["jamming_inv_sigma_W_theory"]),
            float(found["jamming_inv_sigma_W"]),
        )
        ax.set_xlim(*draw.edges(1 / np.sort(final["sigma_W"].values)[::-1])[[0, -1]])
    draw.legend(axes[0], fontsize="x-small", loc="lower left", dark=True)
    return fig


def fig10_phase_labels(ds: xr.Dataset, r: dict[str, Any]) -> Figure:
    """Labels per cell by the DBM/σ_c rule and by the observables; × marks
    cells where they disagree."""
    from matplotlib import colors

    fig = draw.figure(2, width=4.6)
    axes = fig.subplots(1, 2)
    labels = r["labels"]
    cmap = colors.ListedColormap(["#3b7dd8", "#d8553b", "#7a7a7a"])
    norm = colors.BoundaryNorm(np.arange(len(LABELS) + 1) - 0.5, len(LABELS))
    for ax, name, title in (
        (axes[0], "label_dbm", "DBM + σ_c rule"),
        (axes[1], "label_observables", "observable rule"),
    ):
        grid = labels[name].transpose("T", "sigma_W").sortby("sigma_W", ascending=False)
        inv = 1 / grid["sigma_W"].values
        mesh = ax.pcolormesh(
            draw.edges(inv),
            draw.edges(grid["T"].values),
            grid.values,
            cmap=cmap,
            norm=norm,
        )
        disagree = (
            labels["disagree"]
            .transpose("T", "sigma_W")
            .sortby("sigma_W", ascending=False)
            .values
        )
        T_i, s_i = np.nonzero(disagree)
        ax.plot(inv[s_i], grid["T"].values[T_i], "kx", ms=5, label="the rules disagree")
        draw.plane(ax)
        ax.set_title(title)
    draw.legend(axes[1], loc="lower left", fontsize="small")
    bar = fig.colorbar(mesh, ax=axes, ticks=range(len(LABELS)))
    bar.ax.set_yticklabels(LABELS)
    return fig


# name → (function, pieces of data it needs)
FIGURES: dict[str, tuple[Any, tuple[str, ...]]] = {
    "fig1_feature_distribution": (fig1_feature_distribution, ("features",)),
    "fig2_test_loss_map": (fig2_test_loss_map, ("final",)),
    "fig3_loss_grad_vs_T": (fig3_loss_grad_vs_T, ("final",)),
    "fig4_slices_errorbars": (fig4_slices_errorbars, ("final", "grad_initial")),
    "fig5_feature_overlap_alignment": (fig5_feature_overlap_alignment, ("final",)),
    "fig6_eigenvalue_flows": (fig6_eigenvalue_flows, ("flows",)),
    "fig6b_initial_spectra": (fig6b_initial_spectra, ("initial",)),
    "fig7_level_spacing_rate": (fig7_level_spacing_rate, ("rate",)),
    "fig8_dbm_boundaries": (fig8_dbm_boundaries, ("final", "boundaries")),
    "fig9_summary": (fig9_summary, ("final", "boundaries", "rate")),
    "fig10_phase_labels": (fig10_phase_labels, ("labels",)),
}
