"""Shared fixtures: the handed reference files and small pipelines."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from phasearray.engines import SGDProblem

SHARED = Path(__file__).resolve().parents[2] / "shared"
AUTHORS_CASE = SHARED / "cases" / "phase_ml_tanh_T0.125_sigma0.5.npz"


@pytest.fixture
def authors_case() -> dict[str, np.ndarray]:
    """The trajectory produced by the authors' own training script (float64)."""
    if not AUTHORS_CASE.is_file():
        message = f"reference trajectory not found next to the checkout: {AUTHORS_CASE}"
        if os.environ.get("CI"):  # the cross-check must run in CI
            pytest.fail(message)
        pytest.skip(message)
    with np.load(AUTHORS_CASE) as data:
        return {name: data[name] for name in data.files}


def members_of(problem: SGDProblem, members: np.ndarray) -> SGDProblem:
    """The same SGD problem for some of its members (their streams and ε)."""
    return replace(
        problem,
        member_stream=problem.member_stream[members],
        learning_rate=problem.learning_rate[members],
    )


def tiny_overrides(**extra: str) -> list[str]:
    """`--set` items for a sweep that runs in a few seconds."""
    items = {
        "grid.T": "[0.125, 4.0]",
        "grid.sigma_W": "[0.25, 64.0]",
        "grid.seeds": "2",
        "train.steps": "300",
        "data.n_train": "400",
        "data.n_test": "32",
        "record.checkpoints": "[0, 10, 100, 300]",
        "engine.name": "numpy",
        "engine.block_models": "4",
    }
    items.update(extra)
    return [f"{k}={v}" for k, v in items.items()]


MODEL_VARS = [
    "W2",
    "eigenvalues",
    "train_loss",
    "test_loss",
    "grad_norm",
    "feature_overlap",
    "alignment",
    "diverged",
    "done",
]


def assert_same_values(a, b, names=MODEL_VARS) -> None:
    """Every named variable of two datasets bit-identical (NaN where NaN)."""
    for name in names:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def interrupt_after(calls: int):
    """A progress callback that raises KeyboardInterrupt at its ``calls``-th call."""
    seen = []

    def progress(model_steps: int) -> None:
        seen.append(model_steps)
        if len(seen) == calls:
            raise KeyboardInterrupt

    return progress
