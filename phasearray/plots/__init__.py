"""Figures of a sweep, as PNG files (matplotlib, no display needed).

:func:`write_figures` draws the equivalents of figures 1–9 of Park et al.
2025 (and two extra ones) from an opened store. It computes only what the
chosen figures draw, all of it in one pass.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import xarray as xr

from ..errors import ConfigError, StoreError
from . import _results
from .figures import FIGURES

__all__ = ["FIGURES", "write_figures"]

logger = logging.getLogger(__name__)


def write_figures(
    ds: xr.Dataset,
    out_dir: str | Path,
    *,
    figures: Iterable[str] | None = None,
    convention: str = "paper",
    dpi: int = 130,
) -> list[Path]:
    """Write the figures of a sweep as PNG files.

    Parameters
    ----------
    ds : xarray.Dataset
        A sweep opened with :func:`phasearray.open_sweep` (any size; one T,
        one σ_W or one seed is enough).
    out_dir : path
        Folder for the files, created if missing; files are named after the
        figures (``fig2_test_loss_map.png`` …) and overwritten.
    figures : iterable of str, optional
        Names from :data:`FIGURES`; all by default.
    convention : {"paper", "phase_ml"}
        DBM convention of the boundaries (figures 8, 9 and the labels).
    dpi : int
        Resolution of the PNG files.

    Returns
    -------
    list of pathlib.Path
        The files written, in the order of :data:`FIGURES`.

    Examples
    --------
    >>> from phasearray.analysis import synthetic_sweep
    >>> paths = write_figures(synthetic_sweep(seeds=2), "figures")  # doctest: +SKIP
    """
    names = _chosen(figures)
    folder = Path(out_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StoreError(
            f"cannot create figure folder {str(folder)!r}: {error}"
        ) from None

    needs = {need for name in names for need in FIGURES[name][1]}
    results = _results.compute(ds, needs, convention)
    paths = []
    for name in names:
        draw, _ = FIGURES[name]
        path = folder / f"{name}.png"
        draw(ds, results).savefig(path, dpi=dpi)
        logger.debug("wrote %s", path)
        paths.append(path)
    return paths


def _chosen(figures: Iterable[str] | None) -> list[str]:
    if figures is None:
        return list(FIGURES)
    names = list(figures)
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        raise ConfigError(f"figures: got {unknown!r}; choose from {', '.join(FIGURES)}")
    return [n for n in FIGURES if n in names]
