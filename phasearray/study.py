"""Studies: one pipeline run once per value of a field, joined along a new dim.

A pipeline with a ``variants`` section (see :class:`phasearray.config.Variants`)
is a study. ``phasearray run`` writes each variant to its own store,
``<root>/<dim>=<label>.zarr``, and the resolved study pipeline to
``<root>/study.yaml``; :func:`open_study` joins the stores lazily along
``dim``.

Examples
--------
A batch-size axis at matched temperatures (the linear scaling rule)::

    variants:
      dim: batch_size
      field: train.batch_size
      values: [1, 2, 4, 8, 16]
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import xarray as xr
import yaml

from .config import Pipeline, parse_pipeline, variant_pipelines
from .errors import ConfigError, StoreError, StoreMismatchError
from .store import MODEL_DIMS, open_sweep
from .sweep import SweepResult, run_sweep

__all__ = [
    "claim_study_folder",
    "open_study",
    "read_study",
    "run_study",
    "study_stores",
]

logger = logging.getLogger(__name__)

STUDY_FILE = "study.yaml"


def study_stores(
    pipeline: Pipeline, root: str | Path
) -> list[tuple[Any, Pipeline, Path]]:
    """(label, pipeline, store path) of every variant of a study."""
    if pipeline.variants is None:
        raise ConfigError(f"pipeline {pipeline.name!r} has no variants section")
    dim = pipeline.variants.dim
    root = Path(root)
    return [
        (label, variant, root / f"{dim}={label}.zarr")
        for label, variant in variant_pipelines(pipeline)
    ]


def run_study(pipeline: Pipeline, root: str | Path, **kwargs: Any) -> list[SweepResult]:
    """Run (or resume) every variant of a study under ``root``.

    Keyword arguments go to :func:`phasearray.run_sweep`.

    Raises
    ------
    StoreMismatchError
        ``root`` holds a study made from another pipeline.
    """
    root = Path(root)
    claim_study_folder(root, pipeline)
    results = []
    for _, variant, path in study_stores(pipeline, root):
        logger.info("study %s: variant %s", pipeline.name, path.name)
        results.append(run_sweep(variant, path, **kwargs))
    return results


def claim_study_folder(root: str | Path, pipeline: Pipeline) -> None:
    """Write study.yaml in a new root, or check that an existing one matches."""
    root = Path(root)
    marker = root / STUDY_FILE
    if root.exists() and not root.is_dir():
        raise StoreError(f"study folder {str(root)!r} is a file")
    if marker.is_file():
        stored = parse_pipeline(yaml.safe_load(marker.read_text()))
        if stored.fingerprint() != pipeline.fingerprint():
            raise StoreMismatchError(
                f"study folder {str(root)!r} holds a study made from another pipeline; "
                "choose another --store"
            )
        return
    root.mkdir(parents=True, exist_ok=True)
    marker.write_text(pipeline.to_yaml())


def open_study(root: str | Path, *, all_variables: bool = False) -> xr.Dataset:
    """Join a study's stores along its variant dim, lazily.

    Parameters
    ----------
    root : path
        The folder ``phasearray run`` wrote the study to.
    all_variables : bool
        By default only the per-model observables over (T, sigma_W, seed, t)
        are joined, since variants may differ in widths or data size. ``True``
        keeps every variable (the variants must then share those sizes).

    Returns
    -------
    xarray.Dataset
        Dims ``(dim, T, sigma_W, seed, t)``; coordinates that differ between
        variants (e.g. ``learning_rate`` on a batch-size axis) gain ``dim``.
    """
    pipeline, stores = read_study(root)
    parts = [open_sweep(path) for _, _, path in stores]
    if not all_variables:
        parts = [_per_model(ds) for ds in parts]
    assert pipeline.variants is not None  # study.yaml is written for studies only
    dim = pipeline.variants.dim
    labels = pd.Index([label for label, _, _ in stores], name=dim)
    joined = xr.concat(
        parts,
        dim=labels,
        join="outer",
        coords="different",
        compat="equals",
        combine_attrs="drop_conflicts",
    )
    joined.attrs["study"] = pipeline.to_yaml()
    return joined


def read_study(root: str | Path) -> tuple[Pipeline, list[tuple[Any, Pipeline, Path]]]:
    """The study pipeline of a folder and its variants' stores, all present.

    Raises
    ------
    StoreError
        No ``study.yaml`` there, or a variant's store is missing.
    """
    root = Path(root)
    marker = root / STUDY_FILE
    if not marker.is_file():
        raise StoreError(f"{str(root)!r} is not a study folder (no {STUDY_FILE})")
    pipeline = parse_pipeline(yaml.safe_load(marker.read_text()))
    stores = study_stores(pipeline, root)
    missing = [str(path) for _, _, path in stores if not path.exists()]
    if missing:
        raise StoreError(f"study {str(root)!r} is incomplete; missing {missing}")
    return pipeline, stores


def _per_model(ds: xr.Dataset) -> xr.Dataset:
    keep = set(MODEL_DIMS) | {"t"}
    names = [name for name, var in ds.data_vars.items() if set(var.dims) <= keep]
    return ds[names]
