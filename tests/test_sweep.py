"""Sweeps into a store: values, block splits, resume, provenance."""

from __future__ import annotations

from pathlib import Path

import dask.array
import numpy as np
import pytest
import xarray as xr
import yaml
from conftest import MODEL_VARS, assert_same_values, interrupt_after, tiny_overrides

import phasearray as pa
from phasearray.config import load_pipeline
from phasearray.store import plan_blocks


def run(tmp_path: Path, name: str, **extra: str) -> xr.Dataset:
    pipeline = load_pipeline("quick", tiny_overrides(**extra))
    path = tmp_path / f"{name}.zarr"
    pa.run_sweep(pipeline, path)
    return pa.open_sweep(path)


def test_store_layout_coordinates_and_attributes(tmp_path: Path) -> None:
    ds = run(tmp_path, "a")
    assert ds.W2.dims == ("T", "sigma_W", "seed", "t", "unit2", "unit1")
    assert ds.W2.shape[-2:] == (16, 32)
    assert ds.eigenvalues.dims == ("T", "sigma_W", "seed", "t", "eigen")
    assert ds.teacher_W1.dims == ("seed", "unit1", "unit0")
    assert ds.x_train.shape == (2, 400, 3)
    np.testing.assert_array_equal(ds.t, [0, 10, 100, 300])
    np.testing.assert_allclose(ds.learning_rate, [0.5, 16.0])
    np.testing.assert_allclose(ds.inv_sigma_W, [4.0, 1 / 64])
    np.testing.assert_allclose(ds.epoch, np.array([0, 10, 100, 300]) / 100)
    for name in [*MODEL_VARS, "teacher_W2", "x_test"]:
        assert {"long_name", "units"} <= set(ds[name].attrs), name
    for key in (
        "pipeline",
        "phasearray_version",
        "git_revision",
        "engine",
        "dtype",
        "created",
        "schema_version",
    ):
        assert key in ds.attrs, key
    assert pa.parse_pipeline(yaml.safe_load(ds.attrs["pipeline"])).train.steps == 300
    assert bool(ds.done.all()) and not bool(ds.diverged.any())
    assert isinstance(ds.W2.data, dask.array.Array)


def test_sweep_equals_simulate_for_each_member(tmp_path: Path) -> None:
    """Same engine, same inputs, same order: bit-identical W2 (SPEC §2)."""
    ds = run(tmp_path, "a").load()
    i_T, i_sigma, seed = 1, 0, 1
    T, sigma_W = float(ds["T"][i_T]), float(ds.sigma_W[i_sigma])
    W2_init = ds.W2.isel(T=i_T, sigma_W=i_sigma, seed=seed, t=0).values
    np.testing.assert_allclose(
        W2_init.std(), sigma_W / np.sqrt(32), rtol=0.15
    )  # σ_W/√n1 scale, 512 entries
    direct = pa.simulate(
        teacher=tuple(ds[f"teacher_W{k}"].isel(seed=seed).values for k in (1, 2, 3)),
        x_train=ds.x_train.isel(seed=seed).values,
        x_test=ds.x_test.isel(seed=seed).values,
        W2_init=W2_init,
        learning_rate=T * 4,
        batch_size=4,
        steps=300,
        checkpoints=[10, 100],
        schedule="shuffle",
        seed=seed,
        engine="numpy",
    )
    stored = ds.isel(T=i_T, sigma_W=i_sigma, seed=seed)
    np.testing.assert_array_equal(direct.W2, stored.W2)
    for name in (
        "train_loss",
        "test_loss",
        "grad_norm",
        "feature_overlap",
        "alignment",
    ):
        np.testing.assert_allclose(direct[name], stored[name], rtol=1e-12, err_msg=name)


def test_common_random_numbers_across_cells(tmp_path: Path) -> None:
    ds = run(tmp_path, "a").load()
    W2_0 = ds.W2.isel(t=0)
    # same G for every cell of a seed, scaled by σ_W
    ratio = W2_0.isel(sigma_W=1) / W2_0.isel(sigma_W=0)
    np.testing.assert_allclose(ratio, 64.0 / 0.25, rtol=1e-12)
    np.testing.assert_array_equal(W2_0.isel(T=0), W2_0.isel(T=1))


def test_fresh_teachers_per_cell(tmp_path: Path) -> None:
    ds = run(tmp_path, "f", **{"grid.fresh_teachers": "true"}).load()
    assert ds.teacher_W2.dims == ("T", "sigma_W", "seed", "unit2", "unit1")
    assert not np.array_equal(
        ds.teacher_W2.isel(T=0, sigma_W=0, seed=0),
        ds.teacher_W2.isel(T=1, sigma_W=0, seed=0),
    )


@pytest.mark.parametrize("engine", ["numpy", "numba"])
def test_any_block_split_gives_identical_stores(tmp_path: Path, engine: str) -> None:
    a = run(tmp_path, "a", **{"engine.block_models": "1", "engine.name": engine})
    b = run(tmp_path, "b", **{"engine.block_models": "8", "engine.name": engine})
    a, b = a.load(), b.load()
    assert (
        len(
            plan_blocks(
                load_pipeline("quick", tiny_overrides(**{"engine.block_models": "1"}))
            )
        )
        == 8
    )
    assert_same_values(a, b)


@pytest.mark.parametrize("engine", ["numpy", "numba"])
def test_interrupted_run_resumes_bit_identically(tmp_path: Path, engine: str) -> None:
    whole = run(tmp_path, "whole", **{"engine.name": engine}).load()
    pipeline = load_pipeline("quick", tiny_overrides(**{"engine.name": engine}))
    path = tmp_path / "cut.zarr"

    with pytest.raises(KeyboardInterrupt):
        pa.run_sweep(pipeline, path, progress=interrupt_after(5))
    partial = pa.open_sweep(path)
    assert 0 < int(partial.done.sum()) < partial.done.size

    result = pa.run_sweep(pipeline, path)
    assert result.blocks_run < result.blocks_total
    resumed = pa.open_sweep(path).load()
    assert_same_values(resumed, whole)

    again = pa.run_sweep(pipeline, path)
    assert again.blocks_run == 0 and again.model_steps == 0


def test_float32_store(tmp_path: Path) -> None:
    ds = run(tmp_path, "s", **{"train.dtype": "float32"})
    assert ds.W2.dtype == np.float32 and ds.train_loss.dtype == np.float32
    assert ds.x_train.dtype == np.float64  # inputs are kept as drawn


def test_W2_kept_only_where_asked(tmp_path: Path) -> None:
    ds = run(tmp_path, "e", **{"record.W2": "ends"}).load()
    np.testing.assert_array_equal(ds.W2_recorded, [True, False, False, True])
    assert np.isnan(ds.W2.isel(t=1)).all() and np.isfinite(ds.W2.isel(t=-1)).all()
    full = run(tmp_path, "full").load()
    np.testing.assert_array_equal(ds.W2.isel(t=-1), full.W2.isel(t=-1))


def test_a_region_that_splits_chunks_is_refused(tmp_path: Path) -> None:
    from test_cli import tree_digest

    from phasearray.errors import StoreError
    from phasearray.store import Block, BlockWriter, read_attrs

    pipeline = load_pipeline("quick", tiny_overrides())
    store = tmp_path / "s.zarr"
    pa.run_sweep(pipeline, store)
    assert tuple(read_attrs(store)["block_shape"]) == (1, 2, 2)  # 4 models a block
    before = tree_digest(store)

    half = Block(0, {"T": slice(0, 1), "sigma_W": slice(0, 1), "seed": slice(0, 2)})
    with pytest.raises(StoreError, match=r"covers 0:1 of 'W2' along sigma_W"):
        BlockWriter(store, half).write_checkpoint(
            1, {"W2": np.zeros((1, 1, 2, 16, 32))}, keep_W2=True
        )
    assert tree_digest(store) == before


def test_git_revision_only_of_a_checkout_that_tracks_the_package(tmp_path: Path):
    import subprocess

    from phasearray.store import _git_revision

    def git(*args: str) -> str:
        run = subprocess.run(["git", *args], cwd=tmp_path, check=True, text=True,
                             capture_output=True)  # fmt: skip
        return run.stdout.strip()

    git("init", "-q")
    (tmp_path / "tracked.py").write_text("")
    git("add", "tracked.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    (tmp_path / "venv").mkdir()
    (tmp_path / "venv" / "store.py").write_text("")  # an install inside a checkout

    assert _git_revision(tmp_path / "tracked.py") == git("rev-parse", "HEAD")
    assert _git_revision(tmp_path / "venv" / "store.py") == "unknown"


def test_stored_initial_spectra_follow_the_wishart_moments(tmp_path: Path) -> None:
    """t = 0 eigenvalues of a real store against exact finite-size moments.

    X = W2 W2ᵀ with W2 (N × M) of i.i.d. N(0, σ_W²/M) entries: per eigenvalue
    E[x] = σ_W² and E[x²] = σ_W⁴ (N + M + 1)/M, 49/32 σ_W⁴ for N = 16, M = 32
    (the Marchenko–Pastur moments 1 and 1 + r plus the 1/M correction). With
    common random numbers every σ_W cell holds the same spectra times σ_W².
    """
    sets = {"grid.seeds": "64", "train.steps": "10", "record.checkpoints": "[0, 10]"}
    store = tmp_path / "s.zarr"
    pa.run_sweep(load_pipeline("quick", tiny_overrides(**sets)), store)
    ds = pa.open_sweep(store)
    x = ds.eigenvalues.isel(t=0, T=0).values  # (sigma_W, seed, eigen)
    sigma_W = ds.sigma_W.values[:, None, None]

    scaled = x / sigma_W**2
    np.testing.assert_allclose(scaled[1], scaled[0], rtol=1e-12)  # same draws
    # 64 seeds × 16 levels: the standard errors are ~0.008 and ~0.03
    np.testing.assert_allclose(scaled[0].mean(), 1.0, atol=0.03)
    np.testing.assert_allclose((scaled[0] ** 2).mean(), 49 / 32, atol=0.12)
    fit = ds.phase.level_spacing()["sigma_W_fit"].values
    np.testing.assert_allclose(fit, ds.sigma_W.values, rtol=0.02)
    W2 = ds.W2.isel(t=0, T=0).values
    np.testing.assert_allclose(
        x, np.linalg.eigvalsh(W2 @ np.swapaxes(W2, -1, -2)), rtol=1e-10, atol=1e-14
    )


def test_a_sweep_too_large_for_memory_is_refused_before_writing(
    tmp_path: Path, monkeypatch
) -> None:
    import phasearray.sweep
    from phasearray.errors import ConfigError
    from phasearray.sweep import memory_needed

    pipeline = load_pipeline("quick", tiny_overrides())
    # 2 seeds × 432 inputs × 3, 2 × 2 × 400 × 32 features, 8 models' W2 and rows
    expected = 8 * (2 * 432 * 3 + 2 * 2 * 400 * 32 + 8 * (4 * 32 * 16 + 16 * 4))
    assert memory_needed(pipeline) == expected
    monkeypatch.setattr(phasearray.sweep, "_physical_memory", lambda: expected)
    with pytest.raises(ConfigError, match=r"needs about .* GiB .* lower grid.seeds"):
        pa.run_sweep(pipeline, tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()
