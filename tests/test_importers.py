"""Import of the authors' release format, and refusal of hostile pickles."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from phasearray import open_sweep
from phasearray.errors import ConfigError, StoreError
from phasearray.importers import (
    PHASE_ML_BATCHES_PER_EPOCH,
    UnsafePickleError,
    import_phase_ml,
    phase_ml_hyperparameters,
    read_phase_ml,
    safe_unpickle,
    snapshot_epochs,
)

CASES = Path(__file__).resolve().parents[2] / "shared" / "cases"
RELEASE = CASES / "phase_ml_release_sample.npz"
TRAJECTORY = CASES / "phase_ml_tanh_T0.125_sigma0.5.npz"
needs_cases = pytest.mark.skipif(
    not (RELEASE.is_file() and TRAJECTORY.is_file()),
    reason="the handed phase_ml cases are not in ../shared/cases",
)

# The release sample and the trajectory case come from the same run of the
# authors' script: learning rate 0.5, batch size 4, sigma_W 0.5, 3 epochs.
SAMPLE_CELL = {"learning_rate": 0.5, "batch_size": 4, "sigma_W": 0.5}
FOLDER = "r2K16_tanh_lr0.5_bs4_eps0.5"


def _release_file(path: Path, arrays: dict) -> Path:
    """A file in the release format: a dict pickled inside ``arr_0``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as stream:
        np.savez(stream, arrays)
    return path


def _fake_arrays(n_seed=2, n_snap=4, widths=(3, 32, 16, 1), seed=0) -> dict:
    rng = np.random.default_rng(seed)
    n0, n1, n2, n3 = widths
    return {
        "W": rng.normal(size=(n_seed, n_snap, n2, n1)),
        "dW": rng.normal(size=(n_seed, n_snap, n2, n1)),
        "loss": rng.uniform(0.01, 1.0, size=(n_seed, n_snap)),
        "Wt": rng.normal(size=(n_seed, n2, n1)),
        "Z": rng.normal(size=(n_seed, n3, n2)),
        "M": rng.normal(size=(n_seed, n1, n0)),
    }


# --- the handed sample ---------------------------------------------------------------


@needs_cases
def test_import_of_sample_equals_the_authors_trajectory(tmp_path):
    store = import_phase_ml(RELEASE, tmp_path / "sample.zarr", **SAMPLE_CELL)
    ds = open_sweep(store).squeeze(["T", "sigma_W", "seed"])
    ref = np.load(TRAJECTORY)

    # Same run, stored twice: the numbers must be identical, not just close.
    np.testing.assert_array_equal(ds["W2"].values, ref["W2_snapshots"])
    np.testing.assert_array_equal(ds["teacher_W1"].values, ref["teacher_W1"])
    np.testing.assert_array_equal(ds["teacher_W2"].values, ref["teacher_W2"])
    np.testing.assert_array_equal(ds["teacher_W3"].values, ref["teacher_W3"])
    np.testing.assert_array_equal(
        ds["train_loss"].values, ref["epoch_mean_minibatch_loss"]
    )
    np.testing.assert_array_equal(
        ds["epoch_grad_W2"].values, ref["epoch_mean_minibatch_grad"]
    )
    np.testing.assert_array_equal(
        ds["t"].values, ref["snapshot_epochs"] * PHASE_ML_BATCHES_PER_EPOCH
    )
    assert float(ds["T"]) == 0.125
    assert float(ds["learning_rate"]) == 0.5
    assert float(ds["sigma_W"]) == 0.5
    assert bool(ds["done"].all()) and not bool(ds["diverged"].any())


@needs_cases
def test_import_arrays_equal_the_file_and_derived_values(tmp_path):
    store = import_phase_ml(RELEASE, tmp_path / "sample.zarr", **SAMPLE_CELL)
    ds = open_sweep(store).isel(T=0, sigma_W=0)
    raw = read_phase_ml(RELEASE)

    np.testing.assert_array_equal(ds["W2"].values, raw["W"])
    np.testing.assert_array_equal(ds["epoch_grad_W2"].values, raw["dW"])
    np.testing.assert_array_equal(ds["train_loss"].values, raw["loss"])
    np.testing.assert_array_equal(ds["teacher_W2"].values, raw["Wt"])

    # Reference: squared singular values and a plain double loop for the norm.
    singular = np.linalg.svd(raw["W"], compute_uv=False)
    np.testing.assert_allclose(
        ds["eigenvalues"].values, np.sort(singular**2, axis=-1), rtol=1e-12, atol=1e-14
    )
    norms = np.array(
        [[np.sqrt(sum(v * v for v in g.ravel())) for g in seed] for seed in raw["dW"]]
    )
    np.testing.assert_allclose(ds["grad_norm"].values, norms, rtol=1e-13)


@needs_cases
def test_import_records_pipeline_and_provenance(tmp_path):
    store = import_phase_ml(RELEASE, tmp_path / "sample.zarr", **SAMPLE_CELL)
    attrs = open_sweep(store).attrs

    assert attrs["schedule"] == "sequential"
    assert attrs["batch_size"] == 4
    assert attrs["n_train"] == 4 * PHASE_ML_BATCHES_PER_EPOCH
    assert attrs["steps"] == 3 * PHASE_ML_BATCHES_PER_EPOCH
    assert attrs["fresh_teachers"] == 1
    assert attrs["widths"] == [3, 32, 16, 1]
    assert attrs["source_format"] == "phase_ml"
    (source,) = attrs["source_files"]
    assert source["file"] == "cases/phase_ml_release_sample.npz"
    assert source["T"] == 0.125
    import hashlib

    assert source["sha256"] == hashlib.sha256(RELEASE.read_bytes()).hexdigest()


@needs_cases
def test_imported_store_gets_the_figures_it_can_give(tmp_path):
    # The release holds no data sets: the eigenvalue figures are drawn, the
    # ones needing inputs or the test loss are left out with a warning.
    from phasearray.errors import PhasearrayWarning
    from phasearray.plots import write_figures

    store = import_phase_ml(RELEASE, tmp_path / "sample.zarr", **SAMPLE_CELL)
    with pytest.warns(PhasearrayWarning, match=r"it has no x_train, x_test, test_loss"):
        paths = write_figures(open_sweep(store), tmp_path / "figures")
    assert [p.name for p in paths] == [
        "fig6_eigenvalue_flows.png",
        "fig6b_initial_spectra.png",
        "fig7_level_spacing_rate.png",
    ]
    with pytest.raises(StoreError, match="no variable 'test_loss'"):
        write_figures(
            open_sweep(store), tmp_path / "f2", figures=["fig2_test_loss_map"]
        )


# --- hyperparameters from folder names -------------------------------------------------


def test_hyperparameters_from_folder_name():
    found = phase_ml_hyperparameters("x/r2K16_relu_lr0.125_bs4_eps256/data.npz")
    assert found == {
        "learning_rate": 0.125,
        "batch_size": 4,
        "sigma_W": 256.0,
        "activation": "relu",
    }
    assert phase_ml_hyperparameters("cases/phase_ml_release_sample.npz") == {}
    # any prefix: the activation only where the name spells one
    assert phase_ml_hyperparameters("x_lr0.5_bs4_eps2e-1/data.npz") == {
        "learning_rate": 0.5,
        "batch_size": 4,
        "sigma_W": 0.2,
    }
    assert phase_ml_hyperparameters("run_identity_lr1_bs8_eps4")["activation"] == (
        "identity"
    )


def test_several_folders_make_one_grid_with_missing_cells(tmp_path):
    arrays = _fake_arrays()
    files = [
        _release_file(tmp_path / "r2K16_tanh_lr0.5_bs4_eps0.5" / "data.npz", arrays),
        _release_file(tmp_path / "r2K16_tanh_lr4_bs4_eps64" / "data.npz", arrays),
    ]
    ds = open_sweep(import_phase_ml(files, tmp_path / "grid.zarr"))

    np.testing.assert_array_equal(ds["T"].values, [0.125, 1.0])
    np.testing.assert_array_equal(ds["sigma_W"].values, [0.5, 64.0])
    done = ds["done"].values.all(axis=(-2, -1))
    np.testing.assert_array_equal(done, [[True, False], [False, True]])
    np.testing.assert_array_equal(ds["W2"].isel(T=1, sigma_W=1).values, arrays["W"])
    assert np.isnan(ds["W2"].isel(T=0, sigma_W=1).values).all()


def test_given_value_that_contradicts_the_folder_is_refused(tmp_path):
    path = _release_file(tmp_path / FOLDER / "data.npz", _fake_arrays())
    with pytest.raises(ConfigError, match=r"sigma_W is 0\.5 in the folder name"):
        import_phase_ml(path, tmp_path / "s.zarr", sigma_W=2.0)
    assert not (tmp_path / "s.zarr").exists()


def test_missing_hyperparameters_name_the_options(tmp_path):
    path = _release_file(tmp_path / "plain" / "data.npz", _fake_arrays())
    with pytest.raises(ConfigError, match=r"learning_rate, batch_size, sigma_W.*--lr"):
        import_phase_ml(path, tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()


def test_two_files_of_one_cell_are_refused(tmp_path):
    a = _release_file(tmp_path / "a" / FOLDER / "data.npz", _fake_arrays())
    b = _release_file(tmp_path / "b" / FOLDER / "data.npz", _fake_arrays())
    with pytest.raises(ConfigError, match=r"are both the cell T=0\.125, sigma_W=0\.5"):
        import_phase_ml([a, b], tmp_path / "s.zarr")


def test_files_of_different_shapes_are_refused(tmp_path):
    a = _release_file(tmp_path / FOLDER / "data.npz", _fake_arrays(n_seed=2))
    other = "r2K16_tanh_lr1_bs4_eps0.5"
    b = _release_file(tmp_path / other / "data.npz", _fake_arrays(n_seed=3))
    with pytest.raises(StoreError, match=r"holds \(seed, snapshot, n0, n1, n2, n3\)"):
        import_phase_ml([a, b], tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()


# --- snapshot times and divergence ---------------------------------------------------


def _authors_snapshot_epochs(epochs: int) -> list[int]:
    """Epochs completed at each kept snapshot, replaying the authors' loop."""
    save_points = min(20, epochs)
    to_save = np.linspace(0, epochs, save_points + 1)
    interval = epochs // save_points
    kept = {0: 0}
    for e in range(epochs):
        if e in to_save:
            kept[e // interval + 1] = e + 1
    return [kept[k] for k in range(save_points + 1)]


@pytest.mark.parametrize("epochs", [1, 3, 20, 40, 100, 2000])
def test_snapshot_epochs_match_the_authors_loop(epochs):
    n_snapshots = min(20, epochs) + 1
    given = epochs if n_snapshots == 21 else None
    assert snapshot_epochs(n_snapshots, given).tolist() == _authors_snapshot_epochs(
        epochs
    )


def test_twenty_one_snapshots_need_the_epochs():
    with pytest.raises(ConfigError, match="give that number"):
        snapshot_epochs(21, None)
    with pytest.raises(ConfigError, match="a multiple of 20"):
        snapshot_epochs(21, 30)
    with pytest.raises(ConfigError, match="disagrees with the file"):
        snapshot_epochs(4, 5)


def test_stopped_run_is_diverged_from_the_sentinel_on(tmp_path):
    arrays = _fake_arrays(n_seed=2, n_snap=5)
    arrays["loss"][1, 3:] = 100.0  # the authors' sentinel for a stopped run
    path = _release_file(tmp_path / FOLDER / "data.npz", arrays)
    ds = open_sweep(import_phase_ml(path, tmp_path / "s.zarr")).isel(T=0, sigma_W=0)

    expected = np.zeros((2, 5), dtype=bool)
    expected[1, 3:] = True
    np.testing.assert_array_equal(ds["diverged"].values, expected)
    assert np.isnan(ds["W2"].values[1, 3:]).all()
    assert np.isnan(ds["train_loss"].values[1, 3:]).all()
    np.testing.assert_array_equal(ds["W2"].values[1, :3], arrays["W"][1, :3])
    assert bool(ds["done"].all())


# --- safety ----------------------------------------------------------------------------


class _Payload:
    """Unpickling this calls ``function(argument)``."""

    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


def _hostile_payloads(marker: Path) -> dict[str, object]:
    touch = f"touch {marker}"
    return {
        "os.system": _Payload(os.system, touch),
        "eval": _Payload(eval, f"__import__('os').system({touch!r})"),
        "pathlib": _Payload(Path.touch, marker),
    }


@pytest.mark.parametrize("kind", ["os.system", "eval", "pathlib"])
def test_hostile_payloads_are_live(tmp_path, kind):
    # Control: a plain unpickler does run them, so the refusal below is meaningful.
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_hostile_payloads(marker)[kind]))
    assert marker.exists()


@pytest.mark.parametrize("kind", ["os.system", "eval", "pathlib"])
def test_hostile_pickle_is_refused_without_running(tmp_path, kind):
    marker = tmp_path / "ran"
    arrays = _fake_arrays()
    arrays["W"] = _hostile_payloads(marker)[kind]
    good = _release_file(tmp_path / FOLDER / "data.npz", _fake_arrays())
    bad = _release_file(tmp_path / "r2K16_tanh_lr1_bs4_eps0.5" / "data.npz", arrays)
    store = tmp_path / "out" / "s.zarr"

    with pytest.raises(UnsafePickleError, match="refusing to load it") as info:
        import_phase_ml([good, bad], store)

    assert str(bad) in str(info.value)
    assert not marker.exists()
    assert not store.exists()
    assert not store.parent.exists()


def test_cli_refuses_a_hostile_pickle_with_exit_code_2(tmp_path, capsys):
    from phasearray.cli import main

    marker = tmp_path / "ran"
    arrays = _fake_arrays()
    arrays["W"] = _hostile_payloads(marker)["os.system"]
    bad = _release_file(tmp_path / "x_lr0.5_bs4_eps0.5" / "data.npz", arrays)
    store = tmp_path / "s.zarr"

    assert main(["import-phase-ml", str(bad), "--store", str(store)]) == 2

    assert "refusing to load it" in capsys.readouterr().err
    assert not marker.exists()
    assert not store.exists()


def test_member_that_unpacks_too_large_is_refused(tmp_path, monkeypatch):
    import phasearray.importers as importers

    path = _release_file(tmp_path / FOLDER / "data.npz", _fake_arrays())
    monkeypatch.setattr(importers, "MAX_MEMBER_BYTES", 1000)
    with pytest.raises(
        StoreError, match=r"arr_0.npy unpacks to 76158 bytes, more than the 1000"
    ):
        importers.read_phase_ml(path)


def test_safe_unpickle_reads_plain_arrays_of_any_protocol():
    arrays = {"a": np.arange(6.0).reshape(2, 3), "b": [np.float32(1.5), np.int64(3)]}
    # np.save pickles with protocol 3; protocol 2 would need _codecs.encode.
    for protocol in range(3, pickle.HIGHEST_PROTOCOL + 1):
        loaded = safe_unpickle(pickle.dumps(arrays, protocol=protocol))
        np.testing.assert_array_equal(loaded["a"], arrays["a"])
        assert loaded["b"] == [1.5, 3]


def test_release_file_that_is_not_a_dict_is_refused(tmp_path):
    path = tmp_path / FOLDER / "data.npz"
    path.parent.mkdir()
    np.savez(path, np.arange(3.0))
    with pytest.raises(StoreError, match="not the dict of the phase_ml release format"):
        read_phase_ml(path)


def test_copy_of_sample_in_a_named_folder_needs_no_options(tmp_path):
    if not RELEASE.is_file():
        pytest.skip("the handed release sample is not in ../shared/cases")
    path = tmp_path / FOLDER / "data.npz"
    path.parent.mkdir()
    shutil.copyfile(RELEASE, path)
    ds = open_sweep(import_phase_ml(path, tmp_path / "s.zarr"))
    assert ds["T"].values.tolist() == [0.125]
    assert ds.attrs["activation"] == "tanh"


def test_failure_while_writing_leaves_no_store(tmp_path, monkeypatch):
    import phasearray.importers as importers

    files = [
        _release_file(tmp_path / FOLDER / "data.npz", _fake_arrays()),
        _release_file(
            tmp_path / "r2K16_tanh_lr1_bs4_eps0.5" / "data.npz", _fake_arrays()
        ),
    ]
    calls = []

    def failing_write(path, template, cell, arrays):
        calls.append(cell.path)
        if len(calls) == 2:
            raise OSError("disk full")
        real_write(path, template, cell, arrays)

    real_write = importers._write_cell
    monkeypatch.setattr(importers, "_write_cell", failing_write)
    with pytest.raises(OSError, match="disk full"):
        import_phase_ml(files, tmp_path / "out" / "s.zarr")
    assert calls == files
    assert list((tmp_path / "out").iterdir()) == []
