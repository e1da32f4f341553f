"""The phasearray command: exit codes, messages, and nothing stored changed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from conftest import tiny_overrides
from test_config import BAD

from phasearray.cli import main


def sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def tree_digest(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def small_store(tmp_path: Path) -> Path:
    store = tmp_path / "small.zarr"
    assert (
        main(["run", "--store", str(store), "--no-figures", *sets(tiny_overrides())])
        == 0
    )
    return store


@pytest.mark.parametrize("overrides, message", BAD.values(), ids=BAD.keys())
def test_bad_pipeline_exits_2_and_creates_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    overrides: list[str],
    message: str,
) -> None:
    store = tmp_path / "never.zarr"
    code = main(["run", "--store", str(store), "--no-figures", *sets(overrides)])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not store.exists()


def test_missing_and_unreadable_pipeline_files(tmp_path: Path, capsys) -> None:
    assert (
        main(
            ["run", str(tmp_path / "missing.yaml"), "--store", str(tmp_path / "s.zarr")]
        )
        == 2
    )
    assert "pipeline file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: [unclosed\n")
    assert main(["run", str(bad), "--store", str(tmp_path / "s.zarr")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert not (tmp_path / "s.zarr").exists()


def test_store_from_another_pipeline_is_refused_untouched(
    small_store: Path, capsys
) -> None:
    before = tree_digest(small_store)
    changed = tiny_overrides(**{"train.steps": "400"})
    assert (
        main(["run", "--store", str(small_store), "--no-figures", *sets(changed)]) == 2
    )
    err = capsys.readouterr().err
    assert (
        "made from another pipeline" in err
        and "train.steps: 300 in the store, 400 asked" in err
    )
    assert tree_digest(small_store) == before


def test_complete_store_does_nothing_and_says_so(small_store: Path, capsys) -> None:
    before = tree_digest(small_store)
    assert (
        main(
            [
                "run",
                "--store",
                str(small_store),
                "--no-figures",
                *sets(tiny_overrides()),
            ]
        )
        == 0
    )
    assert "nothing to train" in capsys.readouterr().out
    assert tree_digest(small_store) == before


def test_complete_store_gets_its_missing_figures(small_store: Path, capsys) -> None:
    before = tree_digest(small_store)
    figures = small_store.with_name(small_store.stem + "-figures")
    argv = ["run", "--store", str(small_store), *sets(tiny_overrides())]
    assert main(argv) == 0
    assert "nothing to train" in capsys.readouterr().out
    assert (figures / "fig2_test_loss_map.png").is_file()
    assert tree_digest(small_store) == before


def test_store_named_through_a_missing_folder(small_store: Path, capsys) -> None:
    # runs/../small.zarr is small.zarr, though runs/ does not exist
    detour = small_store.parent / "runs" / ".." / small_store.name
    argv = ["run", "--store", str(detour), "--no-figures", *sets(tiny_overrides())]
    assert main(argv) == 0
    assert "nothing to train" in capsys.readouterr().out
    assert not (small_store.parent / "runs").exists()


def test_store_path_that_is_a_file(tmp_path: Path, capsys) -> None:
    target = tmp_path / "file.zarr"
    target.write_text("not a store")
    assert main(["run", "--store", str(target), *sets(tiny_overrides())]) == 2
    assert "is a file" in capsys.readouterr().err
    assert target.read_text() == "not a store"
    assert main(["info", str(target)]) == 2


def test_info_reports_grid_and_completion(small_store: Path, capsys) -> None:
    assert main(["info", str(small_store)]) == 0
    out = capsys.readouterr().out
    assert "2 T in [0.125, 4]" in out and "8 models" in out
    assert "2 of 2 blocks complete" in out
    assert "MiB on disk" in out


def test_info_on_a_missing_store(tmp_path: Path, capsys) -> None:
    assert main(["info", str(tmp_path / "nothing.zarr")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_unavailable_engine_exits_2(tmp_path: Path, capsys) -> None:
    code = main(
        [
            "run",
            "--store",
            str(tmp_path / "g.zarr"),
            "--engine",
            "cupy",
            *sets(tiny_overrides()),
        ]
    )
    assert code == 2
    assert "engine 'cupy' cannot run here" in capsys.readouterr().err
    assert not (tmp_path / "g.zarr").exists()
