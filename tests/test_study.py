"""Studies: variants of one pipeline joined along a new dim."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_overrides
from test_cli import sets

import phasearray as pa
from phasearray.cli import main
from phasearray.config import load_pipeline
from phasearray.errors import ConfigError, StoreMismatchError

BATCH = "variants={dim: batch_size, field: train.batch_size, values: [2, 4]}"


def test_batch_size_study_joins_variants(tmp_path: Path) -> None:
    root = tmp_path / "study"
    assert (
        main(
            [
                "run",
                "--store",
                str(root),
                "--no-figures",
                *sets([*tiny_overrides(), BATCH]),
            ]
        )
        == 0
    )
    ds = pa.open_study(root)
    np.testing.assert_array_equal(ds.batch_size, [2, 4])
    assert ds.train_loss.dims == ("batch_size", "T", "sigma_W", "seed", "t")
    # learning rate ε = T |B| differs per variant at matched T
    np.testing.assert_allclose(ds.learning_rate, [[0.25, 8.0], [0.5, 16.0]])
    # the |B| = 4 variant is the plain pipeline, bit for bit
    plain = tmp_path / "plain.zarr"
    pa.run_sweep(load_pipeline("quick", tiny_overrides()), plain)
    np.testing.assert_array_equal(
        ds.train_loss.sel(batch_size=4), pa.open_sweep(plain).train_loss
    )


def test_width_study_keeps_per_model_observables(tmp_path: Path) -> None:
    widths = "variants={dim: width, field: model.widths, values: [[3, 32, 16, 1], [3, 64, 32, 1]], labels: [1, 2]}"
    pipeline = load_pipeline(
        "quick",
        [
            *tiny_overrides(**{"train.steps": "20", "record.checkpoints": "[0, 20]"}),
            widths,
        ],
    )
    pa.run_study(pipeline, tmp_path / "w")
    ds = pa.open_study(tmp_path / "w")
    assert set(ds.data_vars) >= {"train_loss", "test_loss", "feature_overlap"}
    assert "W2" not in ds  # widths differ between variants
    assert ds.sizes["width"] == 2


def test_study_folder_from_another_study_is_refused(tmp_path: Path) -> None:
    pa.run_study(
        load_pipeline(
            "quick",
            [
                *tiny_overrides(
                    **{"train.steps": "20", "record.checkpoints": "[0, 20]"}
                ),
                BATCH,
            ],
        ),
        tmp_path / "s",
    )
    other = load_pipeline(
        "quick",
        [
            *tiny_overrides(**{"train.steps": "30", "record.checkpoints": "[0, 30]"}),
            BATCH,
        ],
    )
    with pytest.raises(StoreMismatchError, match="another pipeline"):
        pa.run_study(other, tmp_path / "s")


def test_invalid_variant_value_is_reported() -> None:
    with pytest.raises(ConfigError, match=r"variants\.values.*train\.batch_size = 0"):
        load_pipeline(
            "quick",
            [
                *tiny_overrides(),
                "variants={dim: b, field: train.batch_size, values: [0]}",
            ],
        )


def test_plot_command_on_a_study_folder(tmp_path: Path) -> None:
    root = tmp_path / "study"
    # checkpoints at matched epochs for |B| = 2 and 4 (t·|B| equal)
    overrides = tiny_overrides(**{"record.checkpoints": "[0, 50, 100, 150, 300]"})
    pa.run_study(load_pipeline("quick", [*overrides, BATCH]), root)
    out = tmp_path / "figures"
    assert main(["plot", str(root), "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert "beyond_variants.png" in names and "beyond_scaling.png" in names
