"""Scale-out and resilience: kills, workers, divergence, damaged stores."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import interrupt_after, tiny_overrides
from test_cli import sets, tree_digest

import phasearray as pa
from phasearray.cli import main
from phasearray.config import load_pipeline
from phasearray.store import read_attrs


def assert_same_store(a: Path, b: Path) -> None:
    """Every array of two stores bit-identical: data, ensembles, coordinates and
    the resume slots, read straight from Zarr."""
    first, second = zarr.open_group(a, mode="r"), zarr.open_group(b, mode="r")
    names = sorted(name for name, _ in first.arrays())
    assert names == sorted(name for name, _ in second.arrays())
    for name in names:
        np.testing.assert_array_equal(first[name][...], second[name][...], err_msg=name)


# --- SIGKILL and resume ---------------------------------------------------------------

LONGER = tiny_overrides(
    **{
        "train.steps": "4000",
        "record.checkpoints": "{log: 12}",
        "engine.block_models": "2",
    }
)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("whole") / "whole.zarr"
    pa.run_sweep(load_pipeline("quick", LONGER), path)
    return path


# One model per block: 8 blocks × 13 checkpoints = 104 done chunks, written in
# ~2 s, so a kill can land before, between and inside blocks. Blocks of one
# model hold the same numbers as the reference's blocks of two.
KILLED = [*LONGER, "engine.block_models=1"]


def done_chunks(store: Path) -> int:
    folder = store / "done" / "c"
    return sum(1 for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


@pytest.mark.parametrize("kill_at", [0, 1, 40, 90], ids=lambda n: f"{n}-done-chunks")
def test_sigkill_then_resume_is_bit_identical(
    tmp_path: Path, uninterrupted: Path, kill_at: int
) -> None:
    store = tmp_path / "killed.zarr"
    command = [sys.executable, "-m", "phasearray.cli", "run", "--store", str(store)]
    process = subprocess.Popen(
        [*command, "--no-figures", *sets(KILLED)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if store.exists() and done_chunks(store) >= kill_at:
            break
        time.sleep(0.002)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()

    # killed mid-run: the store, if it was made, is partly done
    if store.exists():
        assert int(pa.open_sweep(store).done.sum()) < 8 * 13
    assert main(["run", "--store", str(store), "--no-figures", *sets(KILLED)]) == 0
    assert_same_store(store, uninterrupted)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert not leftovers or all(".partial-" in n for n in leftovers)


# --- dask.distributed ---------------------------------------------------------------------


def test_local_cluster_with_two_processes_lands_every_region(
    tmp_path: Path, uninterrupted: Path
) -> None:
    from distributed import Client, LocalCluster

    store = tmp_path / "dask.zarr"
    finished = []
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        result = pa.run_sweep(
            load_pipeline("quick", LONGER),
            store,
            client=client,
            progress=finished.append,
        )
    assert result.blocks_run == result.blocks_total == 4
    assert sum(finished) == result.model_steps == 8 * 4000
    ds = pa.open_sweep(store)
    assert bool(ds.done.all())
    assert_same_store(store, uninterrupted)


# --- divergence ------------------------------------------------------------------------------


def test_diverging_models_are_marked_and_do_not_touch_others(tmp_path: Path) -> None:
    wild = tiny_overrides(**{"model.activation": "identity", "grid.T": "[0.125, 64.0]"})
    tame = tiny_overrides(**{"model.activation": "identity", "grid.T": "[0.125]"})
    pa.run_sweep(load_pipeline("quick", wild), tmp_path / "wild.zarr")
    pa.run_sweep(load_pipeline("quick", tame), tmp_path / "tame.zarr")
    wild_ds = pa.open_sweep(tmp_path / "wild.zarr").load()
    tame_ds = pa.open_sweep(tmp_path / "tame.zarr").load()

    hot = wild_ds.sel(T=64.0)
    assert bool(hot.diverged.isel(t=-1).all())
    assert bool(hot.done.all())  # diverged still counts as done
    first = int(np.argmax(hot.diverged.values.reshape(-1, hot.t.size).any(axis=0)))
    assert np.isnan(hot.W2.isel(t=slice(first, None))).all()
    assert np.isnan(hot.train_loss.isel(t=-1)).all()

    calm = wild_ds.sel(T=0.125)
    assert not bool(calm.diverged.any())
    for name in ("W2", "train_loss", "test_loss", "eigenvalues"):
        np.testing.assert_array_equal(
            calm[name], tame_ds[name].sel(T=0.125), err_msg=name
        )


# --- damage ------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "s.zarr"
    assert (
        main(["run", "--store", str(path), "--no-figures", *sets(tiny_overrides())])
        == 0
    )
    return path


@pytest.fixture
def interrupted(tmp_path: Path) -> Path:
    """A tiny sweep stopped after its second progress report: partly done."""
    store = tmp_path / "half.zarr"
    with pytest.raises(KeyboardInterrupt):
        pa.run_sweep(
            load_pipeline("quick", tiny_overrides()), store, progress=interrupt_after(2)
        )
    return store


def rerun(store: Path) -> int:
    return main(["run", "--store", str(store), "--no-figures", *sets(tiny_overrides())])


def test_missing_chunk_is_reported_and_nothing_changes(store: Path, capsys) -> None:
    (store / "train_loss" / "c" / "1" / "0" / "0" / "2").unlink()
    before = tree_digest(store)
    assert rerun(store) == 2
    err = capsys.readouterr().err
    assert "is damaged" in err and "train_loss/c/1/0/0/2" in err
    assert tree_digest(store) == before
    assert main(["info", str(store)]) == 2


def test_gap_in_the_done_mask_is_damage(store: Path, capsys) -> None:
    # Resuming from it would restart block 0 from the wrong slot and overwrite
    # good checkpoints.
    (store / "done" / "c" / "0" / "0" / "0" / "1").unlink()
    before = tree_digest(store)
    assert rerun(store) == 2
    err = capsys.readouterr().err
    assert "block 0 is marked done at a later checkpoint but not at t = 1" in err
    assert tree_digest(store) == before


def test_missing_chunk_of_the_data_set_is_damage(store: Path, capsys) -> None:
    (store / "x_train" / "c" / "0" / "0" / "0").unlink()
    before = tree_digest(store)
    assert main(["info", str(store)]) == 2
    assert "chunk 'x_train/c/0/0/0' of 'x_train'" in capsys.readouterr().err
    assert rerun(store) == 2
    assert tree_digest(store) == before


def test_truncated_resume_slot_is_damage(interrupted: Path, capsys) -> None:
    store = interrupted
    slots = [p for p in sorted((store / "resume_W2" / "c").rglob("*")) if p.is_file()]
    for slot in slots:
        slot.write_bytes(slot.read_bytes()[:20])
    before = tree_digest(store)
    assert rerun(store) == 2
    err = capsys.readouterr().err
    assert "is damaged: chunk 'resume_W2/c/" in err and "cannot be read" in err
    assert tree_digest(store) == before


def test_cut_off_data_chunk_is_named_and_exits_2(store: Path, capsys) -> None:
    # the last checkpoint, which the figures read
    chunk = max((store / "test_loss" / "c" / "0" / "0" / "0").iterdir(), key=_number)
    chunk.write_bytes(chunk.read_bytes()[:10])
    before = tree_digest(store)

    assert main(["plot", str(store), "--out", str(store.parent / "figures")]) == 2
    assert "a chunk of the store cannot be decoded" in capsys.readouterr().err
    assert not (store.parent / "figures").exists()  # no empty folder left
    assert main(["info", "--check", str(store)]) == 2
    out = capsys.readouterr().out
    assert f"damaged      test_loss/c/0/0/0/{chunk.name}: RuntimeError" in out
    assert "chunks       1 damaged" in out
    assert tree_digest(store) == before


def _number(path: Path) -> int:
    return int(path.name)


def test_missing_chunk_stops_analysis_and_publishing(store: Path, capsys) -> None:
    # zarr would read the missing chunk as NaN; nothing may be drawn from it
    (store / "test_loss" / "c" / "1" / "0" / "0" / "2").unlink()
    figures, bundle = store.parent / "figures", store.parent / "bundle"
    assert main(["plot", str(store), "--out", str(figures)]) == 2
    assert main(["phases", str(store)]) == 2
    assert main(["publish", str(store), "--out", str(bundle)]) == 2
    err = capsys.readouterr().err
    assert err.count("chunk 'test_loss/c/1/0/0/2' of a completed checkpoint") == 3
    assert not figures.exists() and not bundle.exists()


def test_garbled_chunk_is_not_published(store: Path, capsys) -> None:
    chunk = store / "train_loss" / "c" / "0" / "0" / "0" / "1"
    chunk.write_bytes(bytes(range(7, 47)))
    bundle = store.parent / "bundle"
    assert main(["publish", str(store), "--out", str(bundle)]) == 2
    err = capsys.readouterr().err
    assert "1 chunks do not decode: train_loss/c/0/0/0/1 (" in err
    assert not bundle.exists()


def test_garbled_done_chunk_is_named(store: Path, capsys) -> None:
    chunk = store / "done" / "c" / "0" / "0" / "0" / "1"
    chunk.write_bytes(bytes(range(3, 40)))
    before = tree_digest(store)
    assert rerun(store) == 2
    assert "chunk 'done/c/0/0/0/1' cannot be read" in capsys.readouterr().err
    assert main(["info", "--check", str(store)]) == 2
    assert "damaged      done/c/0/0/0/1: " in capsys.readouterr().out
    assert tree_digest(store) == before


def test_broken_array_metadata_is_named(store: Path, capsys) -> None:
    meta = store / "W2" / "zarr.json"
    meta.write_text(meta.read_text().replace('"', "'", 1))  # not JSON any more
    before = tree_digest(store)
    assert rerun(store) == 2
    assert "array 'W2' (W2/zarr.json) does not open" in capsys.readouterr().err
    for command in (["plot", str(store)], ["phases", str(store)]):
        assert main(command) == 2
        assert "array 'W2' (W2/zarr.json) does not open" in capsys.readouterr().err
    assert main(["info", "--check", str(store)]) == 2
    assert "damaged      W2/zarr.json: JSONDecodeError" in capsys.readouterr().out
    assert tree_digest(store) == before


def test_info_check_passes_a_sound_store(store: Path, capsys) -> None:
    assert main(["info", "--check", str(store)]) == 0
    assert "chunks       all decode" in capsys.readouterr().out


def test_truncated_array_metadata(store: Path, capsys) -> None:
    meta = store / "eigenvalues" / "zarr.json"
    meta.write_text(meta.read_text()[:40])
    before = tree_digest(store)
    assert rerun(store) == 2
    assert "damaged" in capsys.readouterr().err
    assert tree_digest(store) == before


def test_truncated_root_metadata(store: Path, capsys) -> None:
    meta = store / "zarr.json"
    meta.write_text(meta.read_text()[:100])
    before = tree_digest(store)
    assert rerun(store) == 2
    assert "cannot open store" in capsys.readouterr().err
    assert tree_digest(store) == before


def test_incompatible_schema_version(store: Path, capsys) -> None:
    meta = store / "zarr.json"
    document = json.loads(meta.read_text())
    document["attributes"]["schema_version"] = "99"
    meta.write_text(json.dumps(document))
    before = tree_digest(store)
    assert rerun(store) == 2
    assert "schema version '99'" in capsys.readouterr().err
    assert tree_digest(store) == before
    with pytest.raises(pa.StoreMismatchError):
        pa.open_sweep(store)


def test_folder_that_is_not_a_store(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    assert (
        main(["run", "--store", str(folder), "--no-figures", *sets(tiny_overrides())])
        == 2
    )
    assert "not a Zarr v3 store" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


@pytest.mark.skipif(
    not Path("/proc/self").is_dir(),
    reason="needs Linux /proc, read-only for every user",
)
def test_read_only_location(capsys) -> None:
    target = Path("/proc/phasearray-test.zarr")
    assert (
        main(["run", "--store", str(target), "--no-figures", *sets(tiny_overrides())])
        == 2
    )
    assert "cannot create store" in capsys.readouterr().err
    assert not target.exists()


@contextlib.contextmanager
def read_only(folder: Path):
    """Make ``folder`` unwritable for this process, root included.

    Mode 555 stops other users; root needs the immutable attribute (chattr +i
    on ext4 and most Linux file systems), skipped where it cannot be set.
    """
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(folder)]).returncode:
        pytest.skip("root writes into read-only folders and chattr +i is unavailable")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(folder)], check=True)


def test_read_only_folder(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    with read_only(folder):
        assert (
            main(["run", "--store", str(folder / "s.zarr"), *sets(tiny_overrides())])
            == 2
        )
    assert "not writable" in capsys.readouterr().err
    assert list(folder.iterdir()) == []


def test_cli_workers_flag_runs_on_a_local_cluster(
    tmp_path: Path, uninterrupted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "cli-dask.zarr"
    code = main(
        ["run", "--store", str(store), "--workers", "2", "--no-figures", *sets(LONGER)]
    )
    assert code == 0
    assert "dask: <Client" in capsys.readouterr().out
    assert_same_store(store, uninterrupted)


def test_scheduler_flag_joins_a_running_cluster_from_another_folder(
    tmp_path: Path, uninterrupted: Path, monkeypatch, capsys
) -> None:
    from distributed import LocalCluster

    # The workers start in this folder; the run then names its store relative
    # to another one.
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster:
        monkeypatch.chdir(tmp_path)
        argv = ["run", "--store", "rel.zarr", "--scheduler", cluster.scheduler_address]
        assert main([*argv, "--no-figures", *sets(LONGER)]) == 0
    assert "dask: <Client" in capsys.readouterr().out
    assert_same_store(tmp_path / "rel.zarr", uninterrupted)


def test_unreachable_scheduler_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    import phasearray.cli

    monkeypatch.setattr(phasearray.cli, "SCHEDULER_TIMEOUT", 1.0)
    store = tmp_path / "never.zarr"
    code = main(
        [
            "run",
            "--store",
            str(store),
            "--scheduler",
            "tcp://127.0.0.1:9",
            "--no-figures",
            *sets(tiny_overrides()),
        ]
    )
    assert code == 2
    assert "cannot reach" in capsys.readouterr().err
    assert not store.exists()


def test_scheduler_address_of_a_silent_server_exits_2(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    # A port that accepts connections but never speaks dask's protocol (a web
    # server, a dashboard) must not hang the run.
    import socket
    import threading

    import phasearray.cli

    monkeypatch.setattr(phasearray.cli, "SCHEDULER_TIMEOUT", 1.0)
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    threading.Thread(
        target=lambda: accepted.append(server.accept()[0]), daemon=True
    ).start()
    address = f"tcp://127.0.0.1:{server.getsockname()[1]}"
    store = tmp_path / "never.zarr"
    try:
        argv = ["run", "--store", str(store), "--scheduler", address, "--no-figures"]
        assert main([*argv, *sets(tiny_overrides())]) == 2
    finally:
        for connection in accepted:
            connection.close()
        server.close()
    assert "no answer as a dask scheduler within 1 s" in capsys.readouterr().err
    assert not store.exists()


def test_workers_and_scheduler_together_exit_2(tmp_path: Path, capsys) -> None:
    argv = ["run", "--store", str(tmp_path / "x.zarr"), "--workers", "2"]
    argv += ["--scheduler", "tcp://127.0.0.1:9", *sets(tiny_overrides())]
    assert main(argv) == 2
    assert "--workers and --scheduler exclude each other" in capsys.readouterr().err


def test_resume_with_another_block_size_keeps_the_stores_chunks(
    tmp_path: Path, uninterrupted: Path
) -> None:
    """Blocks come from the store's chunks, not from engine.block_models on resume."""
    store = tmp_path / "resized.zarr"
    stop = interrupt_after(7)
    with pytest.raises(KeyboardInterrupt):
        pa.run_sweep(load_pipeline("quick", LONGER), store, progress=stop)
    resized = [*LONGER, "engine.block_models=1"]
    pa.run_sweep(load_pipeline("quick", resized), store)
    assert bool(pa.open_sweep(store).done.all())
    assert_same_store(store, uninterrupted)


def test_missing_resume_slot_is_damage(interrupted: Path, capsys) -> None:
    store = interrupted
    slots = sorted((store / "resume_W2" / "c").rglob("*"))
    for path in (p for p in slots if p.is_file()):
        path.unlink()
    before = tree_digest(store)
    assert rerun(store) == 2
    assert "resume_W2/c/" in capsys.readouterr().err
    assert tree_digest(store) == before


def test_read_only_incomplete_store_is_refused_untouched(
    interrupted: Path, capsys
) -> None:
    store = interrupted
    before = tree_digest(store)
    folders = [store, *(p for p in store.rglob("*") if p.is_dir())]
    with contextlib.ExitStack() as stack:
        for folder in folders:
            stack.enter_context(read_only(folder))
        assert rerun(store) == 2
    assert "not writable" in capsys.readouterr().err
    assert tree_digest(store) == before


def test_plot_of_an_incomplete_store_says_so(interrupted: Path, capsys) -> None:
    store = interrupted
    figures = store.parent / "figures"
    argv = ["plot", str(store), "--out", str(figures), "--figure", "fig2_test_loss_map"]
    assert main(argv) == 0
    assert "is incomplete (0 of 8 models done)" in capsys.readouterr().err
    assert (figures / "fig2_test_loss_map.png").is_file()


def test_resume_with_another_engine_warns_and_is_recorded(tmp_path: Path, capsys):
    from phasearray.errors import PhasearrayWarning

    store = tmp_path / "e.zarr"
    pipeline = load_pipeline("quick", tiny_overrides())
    stop = interrupt_after(2)
    with pytest.raises(KeyboardInterrupt):
        pa.run_sweep(pipeline, store, progress=stop)
    assert "engines" not in read_attrs(store)  # one engine so far
    with pytest.warns(PhasearrayWarning, match="started with engine 'numpy'"):
        pa.run_sweep(pipeline, store, engine="numba")
    attrs = read_attrs(store)
    assert (attrs["engine"], attrs["engines"]) == ("numpy", ["numpy", "numba"])
    assert main(["info", str(store)]) == 0
    assert "engine       numpy, then numba   created" in capsys.readouterr().out

    pa.run_sweep(pipeline, store, engine="numpy")  # complete: trains nothing more
    assert read_attrs(store)["engines"] == ["numpy", "numba"]


@pytest.mark.parametrize("workers", ["0", "-3", "1000"])
def test_worker_counts_outside_the_machine_exit_2(
    tmp_path: Path, capsys, workers: str
) -> None:
    store = tmp_path / "w.zarr"
    argv = ["run", "--store", str(store), "--workers", workers]
    assert main([*argv, "--no-figures", *sets(tiny_overrides())]) == 2
    cores = os.cpu_count() or 1
    expected = f"--workers: got {workers}; must be between 1 and {4 * cores}"
    assert expected in capsys.readouterr().err
    assert not store.exists()


def test_unknown_engine_and_bad_scheduler_exit_2(tmp_path: Path, capsys) -> None:
    store = tmp_path / "x.zarr"
    with pytest.raises(SystemExit) as info:
        main(
            ["run", "--store", str(store), "--engine", "bogus", *sets(tiny_overrides())]
        )
    assert info.value.code == 2
    code = main(
        [
            "run",
            "--store",
            str(store),
            "--scheduler",
            "not a url",
            *sets(tiny_overrides()),
        ]
    )
    assert code == 2
    assert "--scheduler" in capsys.readouterr().err
    assert not store.exists()


def test_study_with_unavailable_engine_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "study"
    variants = "variants={dim: b, field: train.batch_size, values: [2, 4]}"
    code = main(
        [
            "run",
            "--store",
            str(root),
            "--engine",
            "cupy",
            *sets([*tiny_overrides(), variants]),
        ]
    )
    assert code == 2
    assert not root.exists()


def test_lyapunov_growth_is_float64_in_float32_runs(tmp_path: Path) -> None:
    overrides = tiny_overrides(
        **{
            "train.dtype": "float32",
            "record.lyapunov": "true",
            "record.lyapunov_perturbation": "1e-4",
        }
    )
    pa.run_sweep(load_pipeline("quick", overrides), tmp_path / "f.zarr")
    ds = pa.open_sweep(tmp_path / "f.zarr")
    assert ds.lyapunov_log_growth.dtype == np.float64 and ds.W2.dtype == np.float32
