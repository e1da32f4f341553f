"""Training W1 and W3 besides W2 (``model.trainable``).

References: a plain float64 loop over the samples of every minibatch with
back-propagation written out per sample; losses recomputed from the stored
weights; a sweep interrupted and resumed.

Tolerances: float64 agrees with the loop to 1e-12 relative after 200 steps in
ordered cells (small T, where SGD is not chaotic); float32 to 1e-4 relative
(about 2^-23 per step, grown over 200 steps of a contracting map).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import interrupt_after, tiny_overrides

import phasearray as pa
from phasearray import rmt
from phasearray.activations import activate
from phasearray.cli import main
from phasearray.config import load_pipeline
from phasearray.engines import get_engine, resolve_engine_name
from phasearray.ensemble import make_ensemble, sgd_problem, stream_key
from phasearray.errors import ConfigError

WIDTHS = (3, 12, 6, 2)
STEPS = 200


def _problem(trainable, activation="tanh", dtype="float64"):
    ensemble = make_ensemble([stream_key(0), stream_key(1)], WIDTHS, 60, 20)
    problem = sgd_problem(
        ensemble,
        np.array([0, 1, 1]),
        np.array([0.05, 0.1, 0.2]),
        batch_size=3,
        schedule="iid",
        activation=activation,
        dtype=dtype,
        trainable=trainable,
    )
    W2 = 0.5 / np.sqrt(WIDTHS[1]) * ensemble.W2_normal[problem.member_stream]
    return ensemble, problem, W2


# φ' written out here, apart from phasearray.activations
_SLOPES = {
    "tanh": lambda a: 1.0 - np.tanh(a) ** 2,
    "relu": lambda a: (a > 0).astype(np.float64),
    "identity": np.ones_like,
}


def _plain_loop(ensemble, problem, W2_initial, steps):
    """SGD sample by sample in float64, every member on its own."""
    indices = problem.indices(0, steps)
    out = []
    for m, s in enumerate(problem.member_stream):
        weights = (ensemble.teacher_W1[s], W2_initial[m], ensemble.teacher_W3[s])
        out.append(
            _plain_member(
                weights,
                ensemble.x_train[s],
                problem.y[s],
                indices[s],
                problem.learning_rate[m] / problem.batch_size,
                problem.trainable,
                problem.activation,
            )
        )
    return [np.stack(layer) for layer in zip(*out, strict=True)]


def _plain_member(weights, x, y, batches, step_size, trainable, activation):
    """One student: for each minibatch, back-propagate sample by sample."""
    W1, W2, W3 = (np.array(w, dtype=np.float64) for w in weights)
    phi = lambda a: activate(activation, a, np)  # noqa: E731
    slope = _SLOPES[activation]
    for batch in batches:
        g1, g2, g3 = np.zeros_like(W1), np.zeros_like(W2), np.zeros_like(W3)
        for a in batch:
            a1 = W1 @ x[a]
            h1 = phi(a1)
            a2 = W2 @ h1
            h2 = phi(a2)
            e = W3 @ h2 - y[a]
            g3 += np.outer(e, h2)
            d2 = (W3.T @ e) * slope(a2)
            g2 += np.outer(d2, h1)
            g1 += np.outer((W2.T @ d2) * slope(a1), x[a])
        if "W1" in trainable:
            W1 -= step_size * g1
        W2 -= step_size * g2
        if "W3" in trainable:
            W3 -= step_size * g3
    return W1, W2, W3


@pytest.mark.parametrize("trainable", [("W1", "W2", "W3"), ("W2", "W3"), ("W1", "W2")])
def test_numpy_engine_matches_a_plain_loop(trainable) -> None:
    ensemble, problem, W2 = _problem(trainable)
    engine = get_engine("numpy")
    state = engine.start(problem, W2)
    engine.advance(state, 0, STEPS)

    W1_ref, W2_ref, W3_ref = _plain_loop(ensemble, problem, W2, STEPS)
    rtol = 1e-12
    np.testing.assert_allclose(state.W2, W2_ref, rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(state.member_W3(), W3_ref, rtol=rtol, atol=1e-12)
    if "W1" in trainable:
        np.testing.assert_allclose(state.trained["W1"], W1_ref, rtol=rtol, atol=1e-12)
    # the outer layers moved where they train, and stayed where they do not
    moved = np.abs(state.member_W3() - ensemble.teacher_W3[[0, 1, 1]]).max()
    assert (moved > 1e-3) == ("W3" in trainable)


def test_relu_layers_and_float32_match_the_loop() -> None:
    trainable = ("W1", "W2", "W3")
    ensemble, problem, W2 = _problem(trainable, activation="relu", dtype="float32")
    engine = get_engine("numpy")
    state = engine.start(problem, W2)
    engine.advance(state, 0, STEPS)
    W1_ref, W2_ref, W3_ref = _plain_loop(ensemble, problem, W2, STEPS)
    assert state.W2.dtype == np.float32
    np.testing.assert_allclose(state.W2, W2_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state.trained["W1"], W1_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state.trained["W3"], W3_ref, rtol=1e-4, atol=1e-5)


def test_fused_engines_refuse_outer_layers() -> None:
    _, problem, W2 = _problem(("W1", "W2", "W3"))
    with pytest.raises(NotImplementedError, match="use engine 'numpy' or 'cupy'"):
        get_engine("numba").start(problem, W2)
    # the message names the layers, not a pipeline field (simulate has none)
    expected = r"trains W2 alone; with the trainable layers \['W1', 'W2', 'W3'\]"
    with pytest.raises(ConfigError, match=expected):
        resolve_engine_name("numba", ("W1", "W2", "W3"))
    assert resolve_engine_name("auto", ("W2", "W3")) in ("numpy", "cupy")


def test_simulate_trains_the_listed_layers() -> None:
    rng = np.random.default_rng(3)
    W1 = rng.normal(size=(12, 3)) / np.sqrt(3)
    W2 = rng.normal(size=(6, 12)) / np.sqrt(12)
    W3 = rng.normal(size=(2, 6)) / np.sqrt(6)
    x = rng.normal(size=(60, 3))
    y = _forward(x, W1, W2, W3)
    W2_init = 0.5 / np.sqrt(12) * rng.normal(size=(6, 12))
    ds = pa.simulate(
        teacher=(W1, W2, W3),
        x_train=x,
        W2_init=W2_init,
        learning_rate=0.2,
        batch_size=3,
        steps=STEPS,
        schedule="sequential",
        trainable=["W3", "W1", "W2"],
    )
    # sequential: batch b of every epoch is samples [3b, 3b + 3)
    batches = [np.arange(3 * (t % 20), 3 * (t % 20) + 3) for t in range(STEPS)]
    expected = _plain_member(
        (W1, W2_init, W3), x, y, batches, 0.2 / 3, ("W1", "W2", "W3"), "tanh"
    )
    for name, reference in zip(("W1", "W2", "W3"), expected, strict=True):
        np.testing.assert_allclose(ds[name].isel(t=-1), reference, rtol=1e-12)
    assert ds.attrs["engine"] == "numpy"  # auto: the fused engines train W2 alone
    with pytest.raises(ConfigError, match="include W2"):
        pa.simulate(
            teacher=(W1, W2, W3),
            x_train=x,
            W2_init=W2_init,
            learning_rate=0.2,
            batch_size=3,
            steps=3,
            trainable=["W1"],
        )


OUTER = {"model.trainable": "[W1, W2, W3]"}


def test_sweep_records_trained_layers_and_their_losses(tmp_path: Path) -> None:
    pipeline = load_pipeline("quick", tiny_overrides(**OUTER))
    pa.run_sweep(pipeline, tmp_path / "s.zarr", engine="auto")
    ds = pa.open_sweep(tmp_path / "s.zarr").load()

    # t = 0: the trained layers start as the teacher's
    np.testing.assert_array_equal(
        ds.W1.isel(t=0), ds.teacher_W1.broadcast_like(ds.W1.isel(t=0))
    )
    np.testing.assert_array_equal(
        ds.W3.isel(t=0), ds.teacher_W3.broadcast_like(ds.W3.isel(t=0))
    )

    # the stored losses are those of the stored weights (plain float64 forward pass)
    last = ds.isel(t=-1, T=0)
    for i in range(last.sizes["sigma_W"]):
        for s in range(last.sizes["seed"]):
            m = last.isel(sigma_W=i, seed=s)
            for split, name in (("x_train", "train_loss"), ("x_test", "test_loss")):
                x = m[split].values
                teacher = [m[f"teacher_W{k}"].values for k in (1, 2, 3)]
                y = _forward(x, *teacher)
                yhat = _forward(x, m.W1.values, m.W2.values, m.W3.values)
                expected = 0.5 * np.mean(np.sum((y - yhat) ** 2, axis=1))
                np.testing.assert_allclose(m[name], expected, rtol=1e-10)


def _forward(x, W1, W2, W3):
    return np.tanh(np.tanh(x @ W1.T) @ W2.T) @ W3.T


def test_resume_with_trained_layers_is_bit_identical(tmp_path: Path) -> None:
    pipeline = load_pipeline("quick", tiny_overrides(**OUTER))
    pa.run_sweep(pipeline, tmp_path / "whole.zarr")
    with pytest.raises(KeyboardInterrupt):
        pa.run_sweep(pipeline, tmp_path / "cut.zarr", progress=interrupt_after(3))
    pa.run_sweep(pipeline, tmp_path / "cut.zarr")
    a = pa.open_sweep(tmp_path / "whole.zarr").load()
    b = pa.open_sweep(tmp_path / "cut.zarr").load()
    for name in ("W1", "W2", "W3", "train_loss", "test_loss", "diverged"):
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_dbm_uses_the_trained_layers(tmp_path: Path) -> None:
    pipeline = load_pipeline("quick", tiny_overrides(**OUTER))
    pa.run_sweep(pipeline, tmp_path / "s.zarr")
    ds = pa.open_sweep(tmp_path / "s.zarr")
    K_S = ds.phase.dbm().K_S.isel(T=0, sigma_W=0, seed=1).values

    m = ds.isel(T=0, sigma_W=0, seed=1, t=-1).load()
    x = m.x_train.values
    teacher = [m[f"teacher_W{k}"].values for k in (1, 2, 3)]
    phi1 = np.tanh(x @ m.W1.values.T)
    y = _forward(x, *teacher)
    expected, _, _ = rmt.dbm_level_spacing(m.W2.values, m.W3.values, phi1, y, "tanh")
    np.testing.assert_allclose(K_S, expected, rtol=1e-12)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[W1]", "include W2"),
        ("[W2, W2]", "distinct"),
        ("[W4]", "W4"),
    ],
)
def test_bad_trainable_is_refused(tmp_path: Path, capsys, value, message) -> None:
    store = tmp_path / "s.zarr"
    assert (
        main(["run", "--store", str(store), "--set", f"model.trainable={value}"]) == 2
    )
    err = capsys.readouterr().err
    assert "model.trainable" in err and message in err
    assert not store.exists()


def test_fused_engine_and_twins_are_refused_with_outer_layers(
    tmp_path: Path, capsys
) -> None:
    store = tmp_path / "s.zarr"
    args = ["run", "--store", str(store), "--set", "model.trainable=[W1,W2,W3]"]
    assert main([*args, "--engine", "numba"]) == 2
    assert "trains W2 alone" in capsys.readouterr().err
    assert main([*args, "--set", "record.lyapunov=true"]) == 2
    assert "record.lyapunov" in capsys.readouterr().err
    assert not store.exists()
