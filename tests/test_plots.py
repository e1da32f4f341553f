"""Figures of a sweep and the ``plot`` / ``phases`` subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from phasearray import cli_analysis
from phasearray.analysis import synthetic_sweep
from phasearray.errors import ConfigError
from phasearray.plots import FIGURES, write_figures

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == PNG_MAGIC


def _store(ds: xr.Dataset, path) -> None:
    ds.chunk({"seed": 1, "t": 1}).to_zarr(path, zarr_format=3, consolidated=False)


@pytest.fixture(scope="module")
def small() -> xr.Dataset:
    """Two T, three σ_W, two seeds (one diverged), four checkpoints."""
    return synthetic_sweep(
        T=(0.5, 8.0),
        sigma_W=(0.25, 2.0, 32.0),
        seeds=2,
        steps=100,
        n_checkpoints=3,
        n_train=64,
        n_test=16,
        diverged=[(1, 0, 1)],
    ).chunk({"seed": 1, "t": 1})


def test_write_figures_writes_every_figure_as_png(small, tmp_path) -> None:
    paths = write_figures(small, tmp_path / "figures")
    assert [p.name for p in paths] == [f"{name}.png" for name in FIGURES]
    assert len(paths) >= 9
    assert all(p.is_file() and _is_png(p) and p.stat().st_size > 5000 for p in paths)


def test_figures_of_a_minimal_store(tmp_path) -> None:
    # two T, one σ_W, one seed, two checkpoints: nothing to contour, one member
    ds = synthetic_sweep(
        T=(0.1, 10.0),
        sigma_W=(1.0,),
        seeds=1,
        steps=10,
        n_checkpoints=1,
        n_train=16,
        n_test=8,
    )
    paths = write_figures(ds, tmp_path, dpi=40)
    assert len(paths) == len(FIGURES) and all(_is_png(p) for p in paths)


def test_figures_survive_a_cell_without_finite_members(tmp_path) -> None:
    ds = synthetic_sweep(
        T=(0.1, 10.0),
        sigma_W=(0.5, 4.0),
        seeds=1,
        steps=10,
        n_checkpoints=2,
        n_train=16,
        n_test=8,
        diverged=[(1, 0, 0), (1, 1, 0)],
    )
    paths = write_figures(ds, tmp_path, dpi=40)
    assert all(_is_png(p) for p in paths)


def _poisoned(ds: xr.Dataset, name: str) -> xr.Dataset:
    """``ds`` whose variable ``name`` raises if any of it is computed."""

    def explode(block):
        raise AssertionError(f"{name} was computed but the figure does not draw it")

    data = ds[name].data
    poisoned = da.map_blocks(explode, data, dtype=data.dtype)
    return ds.assign({name: (ds[name].dims, poisoned, ds[name].attrs)})


def test_a_figure_computes_only_what_it_draws(small, tmp_path) -> None:
    ds = _poisoned(_poisoned(small, "W2"), "eigenvalues")
    paths = write_figures(
        ds, tmp_path, figures=["fig2_test_loss_map", "fig5_feature_overlap_alignment"]
    )
    assert [p.name for p in paths] == [
        "fig2_test_loss_map.png",
        "fig5_feature_overlap_alignment.png",
    ]
    with pytest.raises(AssertionError, match=r"(W2|eigenvalues) was computed"):
        write_figures(ds, tmp_path, figures=["fig9_summary"])


def test_unknown_figure_is_refused_with_the_choices(small, tmp_path) -> None:
    with pytest.raises(
        ConfigError, match=r"figures: got \['fig99'\]; choose from fig1"
    ):
        write_figures(small, tmp_path, figures=["fig99"])


# --- the plot and phases subcommands ---------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phasearray")
    cli_analysis.register(parser.add_subparsers())
    return parser


def _run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    return args.handler(args)


def test_plot_command_writes_to_the_default_folder(small, tmp_path, capsys) -> None:
    store = tmp_path / "sweep.zarr"
    _store(small, store)
    assert _run(["plot", str(store), "--figure", "fig2_test_loss_map"]) == 0
    expected = tmp_path / "sweep-figures" / "fig2_test_loss_map.png"
    assert capsys.readouterr().out.splitlines() == [str(expected)]
    assert _is_png(expected)


def test_plot_command_writes_every_figure_of_a_store(small, tmp_path, capsys) -> None:
    store = tmp_path / "sweep.zarr"
    _store(small, store)
    assert _run(["plot", str(store), "--out", str(tmp_path / "all")]) == 0
    written = [Path(line).name for line in capsys.readouterr().out.splitlines()]
    assert written == [f"{name}.png" for name in FIGURES] + ["beyond_one_particle.png"]
    assert all(_is_png(tmp_path / "all" / name) for name in written)


def test_phases_command_prints_labels_and_recommendation(small, tmp_path, capsys):
    store = tmp_path / "sweep.zarr"
    _store(small, store)
    assert _run(["phases", str(store), "--batch-size", "8"]) == 0
    out = capsys.readouterr().out
    assert "DBM + sigma_c rule" in out and "observable rule" in out
    assert "batch size 8" in out
    # one row per T in each grid, highest T first, labels from O/H/J
    rows = [
        line.split() for line in out.splitlines() if line[:13].strip() in ("8", "0.5")
    ]
    assert [row[0] for row in rows[:2]] == ["8", "0.5"]
    assert all(cell.rstrip("*") in "OHJ" for row in rows for cell in row[1:4])
    assert "(batch size 8, rule dbm)" in out
    assert _run(["phases", str(store), "--rule", "observables"]) == 0
    assert "(batch size 4, rule observables)" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["plot", "phases"])
def test_missing_store_exits_2_with_a_message(command, tmp_path, capsys) -> None:
    missing = tmp_path / "nothing.zarr"
    assert _run([command, str(missing)]) == 2
    err = capsys.readouterr().err
    assert "nothing.zarr" in err and "does not exist" in err


def test_default_figure_folder_is_next_to_the_store(tmp_path) -> None:
    folder = cli_analysis.default_figure_folder(tmp_path / "runs" / "quick.zarr")
    assert folder == tmp_path / "runs" / "quick-figures"


def test_recommendation_table_marks_sigma_without_ordered_T() -> None:
    advice = xr.Dataset(
        {
            "T_max": ("sigma_W", [1.0, np.nan]),
            "learning_rate": ("sigma_W", [4.0, np.nan]),
        },
        coords={"sigma_W": [0.5, 64.0]},
        attrs={"batch_size": 4, "rule": "dbm"},
    )
    text = cli_analysis.format_recommendation(advice)
    assert text.splitlines()[2].split() == ["0.5", "2", "1", "4"]
    assert text.splitlines()[3].split() == ["64", "0.01562", "none", "-"]
