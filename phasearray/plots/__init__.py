"""Figures of a sweep, as PNG files (matplotlib, no display needed).

:func:`write_figures` draws the equivalents of figures 1–9 of Park et al.
2025 (and two extra ones) from an opened store. It computes only what the
chosen figures draw, all of it in one pass.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from pathlib import Path

import xarray as xr

from ..errors import ConfigError, MissingVariableError, PhasearrayWarning, StoreError
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
        The files written, in the order of :data:`FIGURES`. With ``figures``
        not given, a figure the store lacks the variables for is left out with
        a :class:`~phasearray.errors.PhasearrayWarning` (a store imported from
        the authors' release has no training inputs for the DBM, say); a
        figure asked for by name raises instead.

    Examples
    --------
    >>> from phasearray.analysis import synthetic_sweep
    >>> paths = write_figures(synthetic_sweep(seeds=2), "figures")  # doctest: +SKIP
    """
    names = _chosen(figures)
    folder = Path(out_dir)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StoreError(
            f"cannot create figure folder {str(folder)!r}: {error}"
        ) from None

    needs = {need for name in names for need in FIGURES[name][1]}
    try:
        lazy, missing = _results.build(ds, needs, convention)
        if missing and figures is not None:
            raise next(iter(missing.values()))
        names = _drop_undrawable(names, missing)
        results = _results.compute_built(lazy)
    except BaseException:
        if created:  # leave no empty folder behind a failed computation
            folder.rmdir()
        raise
    paths = []
    for name in names:
        draw, _ = FIGURES[name]
        path = folder / f"{name}.png"
        draw(ds, results).savefig(path, dpi=dpi)
        logger.debug("wrote %s", path)
        paths.append(path)
    return paths


def _drop_undrawable(names: list[str], missing: dict[str, StoreError]) -> list[str]:
    """The figures whose pieces all built; warn once naming the others and why."""
    if not missing:
        return names
    skipped = [n for n in names if set(FIGURES[n][1]) & set(missing)]
    errors = list(missing.values())
    if all(isinstance(e, MissingVariableError) for e in errors):
        lacking = dict.fromkeys(
            e.name for e in errors if isinstance(e, MissingVariableError)
        )
        reasons = "it has no " + ", ".join(lacking)
    else:
        reasons = "; ".join(dict.fromkeys(str(error) for error in errors))
    warnings.warn(
        f"left out {', '.join(skipped)}, which this store cannot give: {reasons}",
        PhasearrayWarning,
        stacklevel=3,
    )
    return [n for n in names if n not in skipped]


def _chosen(figures: Iterable[str] | None) -> list[str]:
    if figures is None:
        return list(FIGURES)
    names = list(figures)
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        raise ConfigError(f"figures: got {unknown!r}; choose from {', '.join(FIGURES)}")
    return [n for n in FIGURES if n in names]
