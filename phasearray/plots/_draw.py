"""Drawing helpers shared by the figures: phase maps, norms, lines, axes."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from matplotlib import colors
from matplotlib.axes import Axes
from matplotlib.figure import Figure

CMAP = "inferno"
LABEL_T = "T = ε/|B|"
LABEL_INV = "1/σ_W"
BOUNDARY_STYLES = {0.68: "-.", 0.95: "--", 0.997: ":"}


def figure(
    n_cols: int, n_rows: int = 1, width: float = 4.2, height: float = 3.4
) -> Figure:
    """A Figure without pyplot, so no global state and no display is touched."""
    return Figure(figsize=(width * n_cols, height * n_rows), layout="constrained")


def edges(values: np.ndarray) -> np.ndarray:
    """Cell edges of log-spaced centres: geometric midpoints, ends mirrored."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 1:
        return values * np.array([2**-0.5, 2**0.5])
    logs = np.log(values)
    middle = (logs[1:] + logs[:-1]) / 2
    first = logs[0] - (middle[0] - logs[0])
    last = logs[-1] + (logs[-1] - middle[-1])
    return np.exp(np.concatenate([[first], middle, [last]]))


def log_norm(values: np.ndarray) -> colors.Normalize:
    """LogNorm over the positive finite values; a plain norm when there are none."""
    positive = values[np.isfinite(values) & (values > 0)]
    if positive.size == 0:
        return colors.Normalize(0, 1)
    low, high = positive.min(), positive.max()
    if low == high:
        low, high = low / 10**0.5, high * 10**0.5
    return colors.LogNorm(low, high)


def linear_norm(values: np.ndarray, low: float | None = None) -> colors.Normalize:
    """Linear norm over the finite values (from ``low`` when given)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return colors.Normalize(0, 1)
    bottom = finite.min() if low is None else low
    top = max(finite.max(), bottom + 1e-12)
    return colors.Normalize(bottom, top)


def phase_map(
    fig: Figure, ax: Axes, data: xr.DataArray, *, log: bool = False, label: str = ""
) -> None:
    """Colour map of ``data`` (T, sigma_W) in the (1/σ_W, T) plane, log axes.

    NaN cells (and non-positive ones on a log scale) are drawn grey.
    """
    grid = data.transpose("T", "sigma_W").sortby("sigma_W", ascending=False)
    values = np.asarray(grid.values, dtype=np.float64)
    norm = log_norm(values) if log else linear_norm(values)
    bad = ~np.isfinite(values) | ((values <= 0) if log else False)
    cmap = _colormap()
    mesh = ax.pcolormesh(
        edges(1 / grid["sigma_W"].values),
        edges(grid["T"].values),
        np.ma.masked_array(values, bad),
        norm=norm,
        cmap=cmap,
        shading="flat",
    )
    plane(ax)
    fig.colorbar(mesh, ax=ax, label=label)


def _colormap() -> colors.Colormap:
    from matplotlib import colormaps

    return colormaps[CMAP].with_extremes(bad="0.8")


def plane(ax: Axes) -> None:
    """Log axes labelled 1/σ_W and T."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(LABEL_INV)
    ax.set_ylabel(LABEL_T)


def boundary_lines(
    ax: Axes, lines: dict[float, list[np.ndarray]], color: str = "white"
) -> None:
    """Contour lines of the converged fraction, one line style per level."""
    for level, paths in lines.items():
        style = BOUNDARY_STYLES.get(level, "-")
        for i, path in enumerate(paths):
            label = f"{level:g} converged" if i == 0 else None
            ax.plot(path[:, 0], path[:, 1], style, color=color, lw=2, label=label)


def jamming_lines(ax: Axes, theory: float, data: float | None) -> None:
    """Vertical jamming lines: 1/σ_W = √2 and the measured one."""
    ax.axvline(theory, color="white", ls="--", lw=2, label="σ_W² = 1/2")
    if data is not None and np.isfinite(data):
        ax.axvline(data, color="cyan", ls=":", lw=2, label="σ_z² = 1/2 (measured)")


def errorbars(ax: Axes, x: np.ndarray, stats: xr.Dataset, **style) -> None:
    """Median with a bar from the 16th to the 84th percentile."""
    median = np.asarray(stats["median"].values, dtype=np.float64)
    low = np.clip(median - stats["q16"].values, 0, None)
    high = np.clip(stats["q84"].values - median, 0, None)
    ax.errorbar(x, median, yerr=[low, high], fmt="o", mfc="none", capsize=3, **style)


def positive_log(ax: Axes, *values: Any) -> None:
    """Log y scale when the drawn ``values`` hold a positive number, else linear."""
    data = np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in values])
    if np.any(np.isfinite(data) & (data > 0)):
        ax.set_yscale("log")


def legend(ax: Axes, *, dark: bool = False, **options: Any) -> None:
    """A legend, only when something labelled was drawn; ``dark`` for the
    white lines drawn on maps."""
    if not ax.get_legend_handles_labels()[0]:
        return
    if dark:
        options |= {"facecolor": "0.25", "labelcolor": "white", "framealpha": 0.8}
    # long enough handles that dash-dot and dotted lines read as such
    ax.legend(**{"handlelength": 3.5, **options})


def note(ax: Axes, text: str) -> None:
    """A message in the middle of an empty panel."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
