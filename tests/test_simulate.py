"""phasearray.simulate on explicit arrays."""

from __future__ import annotations

import numpy as np
import pytest

import phasearray as pa
from phasearray.errors import ConfigError


@pytest.mark.parametrize("engine", ["numpy", "numba", "auto"])
def test_authors_trajectory_through_simulate(authors_case, engine) -> None:
    case = authors_case
    ds = pa.simulate(
        teacher=(case["teacher_W1"], case["teacher_W2"], case["teacher_W3"]),
        x_train=case["x_train"],
        W2_init=case["student_W2_init"],
        learning_rate=float(case["learning_rate"]),
        batch_size=int(case["batch_size"]),
        steps=3000,
        checkpoints=[1000, 2000],
        schedule="sequential",
        engine=engine,
    )
    assert ds.attrs["engine"] == ("numba" if engine == "auto" else engine)
    np.testing.assert_array_equal(ds.t, [0, 1000, 2000, 3000])
    np.testing.assert_array_equal(ds.epoch, [0, 1, 2, 3])
    reference = case["W2_snapshots"]
    # float64: ≤ 1e-12 relative to the largest entry after each epoch (the main
    # job asks for 1e-10; 7.3e-15 measured with numpy, 5.2e-15 with numba)
    np.testing.assert_allclose(
        ds.W2.values, reference, rtol=0, atol=1e-12 * np.abs(reference).max()
    )
    assert ds.W2.dims == ("t", "unit2", "unit1")


def _teacher(seed=0):
    rng = np.random.default_rng(seed)
    return (
        (
            rng.normal(size=(32, 3)) / np.sqrt(3),
            rng.normal(size=(16, 32)) / np.sqrt(32),
            rng.normal(size=(1, 16)) / 4,
        ),
        rng.normal(size=(400, 3)),
        rng,
    )


@pytest.mark.parametrize("engine", ["numpy", "numba"])
def test_member_dimension_and_observables_against_direct_formulas(engine) -> None:
    teacher, x, rng = _teacher()
    W2_init = 0.3 * rng.normal(size=(3, 16, 32))
    x_test = rng.normal(size=(50, 3))
    ds = pa.simulate(
        teacher=teacher,
        x_train=x,
        x_test=x_test,
        W2_init=W2_init,
        learning_rate=[0.05, 0.1, 0.2],
        batch_size=4,
        steps=200,
        checkpoints=[100],
        schedule="iid",
        seed=[1, 2, 3],
        engine=engine,
    )
    assert ds.W2.dims == ("member", "t", "unit2", "unit1")
    np.testing.assert_allclose(ds["T"], [0.0125, 0.025, 0.05])

    W1, Wt, W3 = teacher
    W2 = ds.W2.isel(member=1, t=-1).values
    phi1 = np.tanh(x @ W1.T)
    y = np.tanh(phi1 @ Wt.T) @ W3.T
    phi2 = np.tanh(phi1 @ W2.T)
    loss = 0.5 * np.mean(np.sum((phi2 @ W3.T - y) ** 2, axis=1))
    np.testing.assert_allclose(ds.train_loss.isel(member=1, t=-1), loss, rtol=1e-12)
    delta = ((phi2 @ W3.T - y) @ W3) * (1 - phi2**2)
    np.testing.assert_allclose(
        ds.grad_norm.isel(member=1, t=-1),
        np.linalg.norm(delta.T @ phi1 / len(x)),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        ds.eigenvalues.isel(member=1, t=-1),
        np.linalg.eigvalsh(W2 @ W2.T),
        rtol=1e-10,
        atol=1e-14,
    )

    phi1_test = np.tanh(x_test @ W1.T)
    phi2_t = np.tanh(phi1_test @ W2.T)
    phi2_0 = np.tanh(phi1_test @ W2_init[1].T)
    np.testing.assert_allclose(
        ds.feature_overlap.isel(member=1, t=-1), np.mean(phi2_t * phi2_0), rtol=1e-12
    )
    h = (np.tanh(phi1_test @ Wt.T) @ W3.T) @ W3
    cosine = np.sum(h * phi2_t) / np.linalg.norm(h) / np.linalg.norm(phi2_t)
    np.testing.assert_allclose(ds.alignment.isel(member=1, t=-1), cosine, rtol=1e-12)
    assert -1 <= float(ds.alignment.min()) and float(ds.alignment.max()) <= 1


@pytest.mark.parametrize("engine", ["numpy", "numba"])
def test_divergence_is_caught_and_kept_to_its_member(engine) -> None:
    teacher, x, rng = _teacher()
    W2_init = 0.3 * rng.normal(size=(2, 16, 32))
    ds = pa.simulate(
        teacher=teacher,
        x_train=x,
        W2_init=W2_init,
        learning_rate=[0.1, 500.0],
        batch_size=4,
        steps=100,
        checkpoints=[50],
        activation="identity",
        engine=engine,
    )
    assert bool(ds.diverged.isel(member=1, t=-1)) and not bool(
        ds.diverged.isel(member=0).any()
    )
    assert np.isnan(ds.W2.isel(member=1, t=-1)).all()
    assert np.isfinite(ds.train_loss.isel(member=0)).all()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"schedule": "random"}, "schedule: got 'random'"),
        ({"activation": "sigmoid"}, "activation: got 'sigmoid'"),
        ({"dtype": "float16"}, "dtype: got 'float16'"),
        ({"batch_size": 0}, "batch_size: got 0"),
        ({"batch_size": 401}, r"batch_size: got 401; must be an integer in \[1, 400\]"),
        ({"steps": -1}, "steps: got -1"),
        ({"learning_rate": -0.1}, "learning_rate: got -0.1"),
        ({"checkpoints": [5, 3]}, "checkpoints: got \\[5, 3\\]"),
        (
            {"W2_init": np.zeros((16, 31))},
            r"W2_init: got shape \(16, 31\); expected \(16, 32\) for the teacher's "
            "widths n0 = 3, n1 = 32",
        ),
        (
            {"teacher": (np.zeros((32, 4)), np.zeros((16, 32)), np.zeros((1, 16)))},
            r"x_train: got shape \(400, 3\); expected \(any, 4\) for the teacher's "
            r"widths n0 = 4, n1 = 32, n2 = 16, n3 = 1, read from teacher W1 \(32, 4\), "
            r"W2 \(16, 32\), W3 \(1, 16\) \(n1 × n0, n2 × n1, n3 × n2\): one of them "
            "is wrong",
        ),
        ({"learning_rate": [0.1, 0.2]}, "learning_rate: got shape"),
        ({"x_train": "abc"}, "x_train: got a str that is not an array of numbers"),
        (
            {
                "x_train": np.where(np.arange(400)[:, None] == 7, np.nan, 1.0)
                * [1, 1, 1]
            },
            r"x_train: 3 entries are NaN or infinite \(the first at index \(7, 0\): "
            r"nan\); inputs must be finite",
        ),
        (
            {"W2_init": np.full((2, 16, 32), np.inf)},
            r"W2_init: 1024 entries are NaN or infinite \(the first at index "
            r"\(0, 0, 0\): inf\)",
        ),
    ],
)
def test_bad_arguments(change, message) -> None:
    teacher, x, _ = _teacher()
    kwargs = dict(
        teacher=teacher,
        x_train=x,
        W2_init=np.zeros((16, 32)),
        learning_rate=0.1,
        batch_size=4,
        steps=10,
        engine="numpy",
    )
    kwargs.update(change)
    with pytest.raises(ConfigError, match=message):
        pa.simulate(**kwargs)


def test_copies_of_one_data_set_share_a_stream_and_give_the_same_result() -> None:
    teacher, x, rng = _teacher()
    W2_init = 0.3 * rng.normal(size=(3, 16, 32))
    kwargs = dict(
        W2_init=W2_init,
        learning_rate=[0.05, 0.1, 0.2],
        batch_size=4,
        steps=60,
        schedule="shuffle",
        engine="numpy",
    )
    shared = pa.simulate(teacher=teacher, x_train=x, **kwargs)
    copied = pa.simulate(
        teacher=tuple(np.repeat(w[None], 3, axis=0) for w in teacher),
        x_train=np.repeat(x[None], 3, axis=0),
        **kwargs,
    )
    np.testing.assert_array_equal(shared.W2, copied.W2)
    np.testing.assert_array_equal(shared.test_loss, copied.test_loss)
