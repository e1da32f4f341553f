"""The reference batched engine against a plain float64 loop and the authors' run."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from conftest import members_of

from phasearray.engines import SGDProblem, get_engine
from phasearray.ensemble import make_ensemble, stream_key, teacher_outputs
from phasearray.schedule import batch_indices


def plain_sgd(W2, phi1, y, W3, lr, batches, activation="tanh"):
    """One model, one sample at a time, float64: the definition of SPEC §2."""
    W2 = W2.copy()
    for rows in batches:
        grad = np.zeros_like(W2)
        for a in rows:
            z = W2 @ phi1[a]
            h = {
                "tanh": np.tanh,
                "relu": lambda v: np.maximum(v, 0),
                "identity": lambda v: v,
            }[activation](z)
            slope = {
                "tanh": 1 - h**2,
                "relu": (z > 0) * 1.0,
                "identity": np.ones_like(z),
            }[activation]
            delta = (W3.T @ (W3 @ h - y[a])) * slope
            grad += np.outer(delta, phi1[a])
        W2 -= lr / len(rows) * grad
    return W2


def small_problem(schedule: str, activation: str, rates, dtype="float64"):
    keys = [stream_key(0), stream_key(1)]
    e = make_ensemble(keys, (3, 8, 4, 1), n_train=40, n_test=8)
    phi1 = np.tanh(e.x_train @ np.swapaxes(e.teacher_W1, 1, 2))
    if activation != "tanh":
        phi1 = {
            "relu": np.maximum(e.x_train @ np.swapaxes(e.teacher_W1, 1, 2), 0),
            "identity": e.x_train @ np.swapaxes(e.teacher_W1, 1, 2),
        }[activation]
    y = teacher_outputs(e.x_train, e.teacher_W1, e.teacher_W2, e.teacher_W3, activation)
    M = len(rates)
    member_stream = np.arange(M) % 2
    problem = SGDProblem(
        phi1=phi1,
        y=y,
        W3=e.teacher_W3,
        keys=e.keys,
        member_stream=member_stream,
        learning_rate=np.asarray(rates, float),
        batch_size=4,
        schedule=schedule,
        activation=activation,
        dtype=dtype,
    )
    W2 = 0.5 / np.sqrt(8) * e.W2_normal[member_stream]
    return problem, W2


@pytest.mark.parametrize("activation", ["tanh", "relu", "identity"])
@pytest.mark.parametrize("schedule", ["sequential", "shuffle", "iid"])
def test_batched_engine_matches_a_plain_float64_loop(
    schedule: str, activation: str
) -> None:
    rates = [0.05, 0.2, 0.5]
    problem, W2 = small_problem(schedule, activation, rates)
    engine = get_engine("numpy")
    state = engine.start(problem, W2)
    engine.advance(state, 0, 60)

    indices = batch_indices(schedule, problem.keys, 0, 60, 40, 4)
    for m, s in enumerate(problem.member_stream):
        expected = plain_sgd(
            W2[m],
            problem.phi1[s],
            problem.y[s],
            problem.W3[s],
            rates[m],
            indices[s],
            activation,
        )
        # float64, 60 steps in an ordered regime: round-off only
        np.testing.assert_allclose(state.W2[m], expected, rtol=1e-12, atol=1e-14)


def test_block_split_is_bit_identical() -> None:
    rates = [0.1, 0.3, 0.6, 1.0, 2.0, 8.0]
    problem, W2 = small_problem("shuffle", "tanh", rates)
    engine = get_engine("numpy")
    whole = engine.start(problem, W2)
    engine.advance(whole, 0, 200)
    for members in (np.array([0, 1]), np.array([2, 3, 4, 5]), np.array([5])):
        sub = members_of(problem, members)
        part = engine.start(sub, W2[members])
        engine.advance(part, 0, 120)
        engine.advance(part, 120, 200)  # and a resume point in the middle
        np.testing.assert_array_equal(part.W2, whole.W2[members])


def test_float32_follows_float64_within_its_precision() -> None:
    problem, W2 = small_problem("iid", "tanh", [0.1, 0.4])
    engine = get_engine("numpy")
    s64 = engine.start(problem, W2)
    s32 = engine.start(replace(problem, dtype="float32"), W2)
    engine.advance(s64, 0, 100)
    engine.advance(s32, 0, 100)
    assert s32.W2.dtype == np.float32
    # ε32 ≈ 6e-8 per operation, a few hundred operations per element, ordered cell
    np.testing.assert_allclose(s32.W2, s64.W2, rtol=1e-4, atol=1e-5)


def test_authors_trajectory_is_reproduced(authors_case) -> None:
    case = authors_case
    W1, W3 = case["teacher_W1"], case["teacher_W3"]
    phi1 = np.tanh(case["x_train"] @ W1.T)
    y = teacher_outputs(case["x_train"], W1, case["teacher_W2"], W3, "tanh")
    problem = SGDProblem(
        phi1=phi1[None],
        y=y[None],
        W3=W3[None],
        keys=((0,),),
        member_stream=np.zeros(1, int),
        learning_rate=np.array([float(case["learning_rate"])]),
        batch_size=int(case["batch_size"]),
        schedule="sequential",
        activation="tanh",
    )
    engine = get_engine("numpy")
    state = engine.start(problem, case["student_W2_init"][None])
    for epoch in range(1, int(case["epochs"]) + 1):
        engine.advance(state, (epoch - 1) * 1000, epoch * 1000)
        reference = case["W2_snapshots"][epoch]
        np.testing.assert_allclose(
            state.W2[0], reference, rtol=0, atol=1e-10 * np.abs(reference).max()
        )
