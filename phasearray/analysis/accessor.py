"""The ``ds.phase`` accessor: every analysis of a sweep, lazily, in one place."""

from __future__ import annotations

import xarray as xr

from . import phases
from .dbm import dbm
from .spectra import level_spacing
from .stats import ensemble_stats

__all__ = ["PhaseAccessor"]


@xr.register_dataset_accessor("phase")
class PhaseAccessor:
    """Phase analysis of a sweep, reached as ``ds.phase`` once
    :mod:`phasearray.analysis` is imported.

    Every method returns lazy xarray objects: nothing is read or computed until
    ``.compute()``, ``.values`` or a plot. Results of :meth:`dbm`,
    :meth:`boundaries` and :meth:`classify` are kept per argument set, so the
    methods built on them share one task graph.

    Examples
    --------
    >>> import phasearray.analysis
    >>> from phasearray.analysis.synthetic import synthetic_sweep
    >>> ds = synthetic_sweep(seeds=2).chunk({"seed": 1})
    >>> ds.phase.stats("test_loss")["median"].isel(t=-1).dims
    ('T', 'sigma_W')
    """

    def __init__(self, ds: xr.Dataset) -> None:
        self._ds = ds
        self._cache: dict[tuple, xr.Dataset] = {}

    def stats(self, var: str | xr.DataArray, dim: str = "seed") -> xr.Dataset:
        """Ensemble statistics; see :func:`phasearray.analysis.ensemble_stats`."""
        return ensemble_stats(self._ds, var, dim)

    def level_spacing(self) -> xr.Dataset:
        """S(t), λ̄(t), Marchenko–Pastur; see :func:`phasearray.analysis.level_spacing`."""
        return self._cached(("level_spacing",), lambda: level_spacing(self._ds))

    def dbm(self, t: int = -1, convention: str = "paper") -> xr.Dataset:
        """DBM drift, noise and convergence; see :func:`phasearray.analysis.dbm`."""
        return self._cached(
            ("dbm", t, convention), lambda: dbm(self._ds, t=t, convention=convention)
        )

    def feature_variance(self) -> xr.Dataset:
        """σ_z² at t = 0; see :func:`phasearray.analysis.feature_variance`."""
        return self._cached(("sigma_z2",), lambda: phases.feature_variance(self._ds))

    def boundaries(
        self,
        levels: tuple[float, ...] = phases.LEVELS,
        *,
        t: int = -1,
        convention: str = "paper",
    ) -> xr.Dataset:
        """Converged fraction and boundaries; see :func:`phasearray.analysis.boundaries`."""
        levels = tuple(float(v) for v in levels)

        def build() -> xr.Dataset:
            result = self.dbm(t=t, convention=convention)
            return phases.boundaries(self._ds, levels, dbm_result=result)

        return self._cached(("boundaries", levels, t, convention), build)

    def classify(
        self,
        *,
        level: float = phases.LEVELS[0],
        t: int = -1,
        convention: str = "paper",
        **options,
    ) -> xr.Dataset:
        """Labels per cell by two rules; see :func:`phasearray.analysis.classify`."""
        levels = tuple(sorted({*phases.LEVELS, float(level)}))
        found = self.boundaries(levels, t=t, convention=convention)
        return phases.classify(
            self._ds,
            level=level,
            t=t,
            convention=convention,
            boundaries_result=found,
            **options,
        )

    def recommend(
        self, batch_size: int | None = None, *, rule: str = "dbm", **options
    ) -> xr.Dataset:
        """Largest ordered T per σ_W; see :func:`phasearray.analysis.recommend`."""
        return phases.recommend(
            self._ds, batch_size, rule=rule, labels=self.classify(**options)
        )

    def _cached(self, key: tuple, build) -> xr.Dataset:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]
