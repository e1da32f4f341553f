"""Pipelines: defaults, overrides and every kind of bad value."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from phasearray.config import (
    load_pipeline,
    log_checkpoints,
    named_pipelines,
    parse_pipeline,
)
from phasearray.errors import ConfigError


def test_quick_is_the_papers_grid() -> None:
    p = load_pipeline()
    np.testing.assert_array_equal(p.grid.T, 2.0 ** np.arange(-5, 7))
    np.testing.assert_array_equal(p.grid.sigma_W, 2.0 ** np.arange(-3, 9))
    assert (p.train.schedule, p.train.dtype, p.train.steps) == (
        "shuffle",
        "float64",
        100_000,
    )
    assert p.grid.seeds >= 8
    assert 28 <= p.checkpoints.size <= 32
    assert p.checkpoints[0] == 0 and p.checkpoints[-1] == 100_000


def test_paper_is_the_authors_protocol() -> None:
    p = load_pipeline("paper")
    assert (p.grid.seeds, p.train.steps, p.train.schedule) == (100, 10**8, "sequential")
    assert p.grid.fresh_teachers
    assert p.checkpoints.size == 21
    assert p.steps_per_epoch == 1000


def test_shipped_pipelines_are_found_by_name() -> None:
    assert {"quick", "paper"} <= set(named_pipelines())


def test_overrides_set_values_by_dotted_path() -> None:
    p = load_pipeline(
        "quick", ["train.steps=2000", "grid.seeds=2", "grid.T=[0.5, 1.0]"]
    )
    assert (p.train.steps, p.grid.seeds, p.grid.T) == (2000, 2, (0.5, 1.0))


def test_log_checkpoints_are_unique_and_include_the_ends() -> None:
    t = log_checkpoints(100, 30)
    assert t[0] == 0 and t[-1] == 100
    assert np.all(np.diff(t) > 0)


def test_fingerprint_ignores_name_and_engine_only() -> None:
    a = load_pipeline("quick", ["train.steps=2000"])
    b = load_pipeline("quick", ["train.steps=2000", "name=other", "engine.name=numpy"])
    c = load_pipeline("quick", ["train.steps=2001"])
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


BAD = {
    "unknown-key": (["train.learning_rate=0.1"], "unknown field 'train.learning_rate'"),
    "unknown-section": (["optimizer.name=adam"], "unknown field 'optimizer'"),
    "wrong-type": (["train.steps='many'"], "field 'train.steps': got 'many'"),
    "float-steps": (["train.steps=1.5"], "field 'train.steps': got 1.5"),
    "T-zero": (["grid.T=[0.5, 0]"], "field 'grid.T.1': got 0"),
    "T-negative": (["grid.T=[-1]"], "field 'grid.T.0': got -1"),
    "sigma-zero": (["grid.sigma_W=[0.0]"], "field 'grid.sigma_W.0': got 0.0"),
    "sigma-inf": (["grid.sigma_W=[.inf]"], "field 'grid.sigma_W.0'"),
    "batch-zero": (["train.batch_size=0"], "field 'train.batch_size': got 0"),
    "batch-too-big": (["train.batch_size=4001"], "must be at most data.n_train = 4000"),
    "negative-steps": (["train.steps=-5"], "field 'train.steps': got -5"),
    "unsorted": (["record.checkpoints=[0, 50, 10]"], "strictly increasing"),
    "beyond-steps": (
        ["record.checkpoints=[0, 200000]"],
        "must lie in [0, train.steps = 100000]",
    ),
    "schedule": (["train.schedule=random"], "'sequential', 'shuffle' or 'iid'"),
    "activation": (["model.activation=sigmoid"], "'tanh', 'relu' or 'identity'"),
    "dtype": (["train.dtype=float16"], "'float64' or 'float32'"),
    "engine": (["engine.name=tpu"], "'auto', 'numpy', 'numba', 'cupy' or 'cupy-fused'"),
    "zero-seeds": (["grid.seeds=0"], "field 'grid.seeds': got 0"),
    "widths": (["model.widths=[3, 32]"], "needs exactly 4 widths"),
    "duplicate-T": (["grid.T=[1, 1]"], "values must be distinct"),
    "W2-not-checkpoint": (
        ["record.checkpoints=[0, 10]", "record.W2=[5]"],
        "not checkpoints",
    ),
    "bad-override": (["train.steps"], "must look like dotted.path=value"),
    "trainable": (
        ["model.trainable=[W1]"],
        "field 'model.trainable': got ['W1']; must list distinct layers of "
        "['W1', 'W2', 'W3'] and include W2",
    ),
    "trainable-layer": (["model.trainable=[W2, W4]"], "'W1', 'W2' or 'W3'"),
    "lyapunov-float32": (
        ["record.lyapunov=true", "train.dtype=float32"],
        "with train.dtype float32 it must be at least 1.2e-05",
    ),
    "digits-width": (["data.source=digits"], "so n0 must be 64"),
    "engine-as-value": (["engine=cupy"], "choose the engine with engine.name"),
    "log2-overflow": (["grid.T={log2: [2000, 2001]}"], "must lie within [-64, 64]"),
    "name-path": (
        ["name=../../evil"],
        "field 'name': got '../../evil'; must be a file name",
    ),
    "name-empty": (["name=''"], "field 'name': got ''"),
    "huge-T": (["grid.T=[1e308, 0.5]"], "field 'grid.T.0': got 1e+308; must be less"),
    "huge-seeds": (["grid.seeds=1000000000"], "field 'grid.seeds': got 1000000000"),
    "huge-width": (["model.widths=[3, 100000, 16, 1]"], "field 'model.widths.1'"),
    "huge-steps": (["train.steps=9223372036854775808"], "field 'train.steps'"),
    "huge-first-seed": (["grid.first_seed=18446744073709551616"], "grid.first_seed"),
    "huge-n_train": (["data.n_train=10000000000"], "field 'data.n_train'"),
    "variants-empty": (
        ["variants={dim: b, field: train.batch_size, values: []}"],
        "field 'variants.values': got []; a study needs a value",
    ),
    "variants-dim-T": (
        ["variants={dim: T, field: train.batch_size, values: [2, 4]}"],
        "field 'variants.dim': got 'T'; a dim of every store",
    ),
    "variants-repeated": (
        ["variants={dim: b, field: train.batch_size, values: [2, 2]}"],
        "field 'variants.values': got [2, 2]; values must be distinct",
    ),
    "section-as-value": (["train=3"], "field 'train': got 3; must be a section"),
}


@pytest.mark.parametrize("overrides, message", BAD.values(), ids=BAD.keys())
def test_bad_values_name_field_value_and_allowed(
    overrides: list[str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_pipeline("quick", overrides)
    assert message in str(info.value)


def test_file_and_override_read_numbers_alike(tmp_path: Path) -> None:
    # YAML 1.1 reads 1e-6 (no dot) as a string; files and --set both use 1.2.
    path = tmp_path / "p.yaml"
    path.write_text(
        "grid: {T: [0.5], sigma_W: [1.0], seeds: 1}\n"
        "record: {lyapunov: true, lyapunov_perturbation: 1e-6}\n"
    )
    from_file = load_pipeline(path)
    assert from_file.record.lyapunov_perturbation == 1e-6
    overridden = load_pipeline(path, ["record.lyapunov_perturbation=1e-6"])
    assert overridden.fingerprint() == from_file.fingerprint()


def test_a_key_given_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "grid: {T: [0.5], sigma_W: [1.0]}\ntrain:\n  steps: 10\n  steps: 300\n"
    )
    with pytest.raises(
        ConfigError, match=r"not valid YAML: .*key 'steps' is given twice"
    ):
        load_pipeline(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"pipeline file not found: .*nope\.yaml.*quick"
    ):
        load_pipeline(tmp_path / "nope.yaml")


def test_unreadable_yaml(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("grid: {T: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_pipeline(path)


def test_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match="must be a mapping"):
        parse_pipeline([1, 2])


def test_grid_is_required() -> None:
    with pytest.raises(ConfigError, match="field 'grid' is required"):
        parse_pipeline({})


def test_exponent_floats_are_numbers_in_yaml() -> None:
    # PyYAML reads an unquoted 1e-4 as a string (YAML 1.1); pipelines use 1.2 floats
    p = load_pipeline("quick", ["record.lyapunov_perturbation=1e-4"])
    assert p.record.lyapunov_perturbation == 1e-4


@pytest.mark.parametrize(
    "override, message",
    [
        ("grid.T=0.5", "must be a list of positive numbers or {log2: [first, last]}"),
        ("record.checkpoints=5", "must be a list of steps or {log: N}"),
        ("record.W2=some", "must be 'all', 'ends' or a list of checkpoint steps"),
    ],
)
def test_compound_fields_say_what_they_accept(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_pipeline("quick", [override])
    assert message in str(info.value)
    assert str(info.value).count("\n") == 1  # one line, not one per union branch
