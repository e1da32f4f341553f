"""Counter-based minibatch schedules."""

from __future__ import annotations

import numpy as np
import pytest

from phasearray.schedule import batch_indices

N_TRAIN, BATCH = 40, 4  # 10 steps per epoch


def test_sequential_is_the_authors_order() -> None:
    idx = batch_indices("sequential", [(0,)], 0, 25, N_TRAIN, BATCH)[0]
    expected = np.arange(40).reshape(10, 4)
    np.testing.assert_array_equal(idx[:10], expected)
    np.testing.assert_array_equal(idx[10:20], expected)
    np.testing.assert_array_equal(idx[20:], expected[:5])


def test_shuffle_is_a_permutation_each_epoch_and_differs_between_epochs() -> None:
    idx = batch_indices("shuffle", [(3,)], 0, 30, N_TRAIN, BATCH)[0]
    epochs = idx.reshape(3, 40)
    for epoch in epochs:
        np.testing.assert_array_equal(np.sort(epoch), np.arange(40))
    assert not np.array_equal(epochs[0], epochs[1])


def test_iid_is_uniform_with_replacement() -> None:
    idx = batch_indices("iid", [(1,)], 0, 5000, N_TRAIN, BATCH)[0]
    counts = np.bincount(idx.ravel(), minlength=N_TRAIN)
    # 20000 draws over 40 values: each count ~ Binomial(20000, 1/40), sd ≈ 22
    assert counts.min() > 500 - 5 * 22 and counts.max() < 500 + 5 * 22
    assert any(len(set(row)) < BATCH for row in idx)  # repeats within a batch occur


@pytest.mark.parametrize("schedule", ["sequential", "shuffle", "iid"])
def test_any_split_of_steps_gives_the_same_sequence(schedule: str) -> None:
    keys = [(0,), (1,), (7, 99, 5)]
    whole = batch_indices(schedule, keys, 0, 57, N_TRAIN, BATCH)
    parts = [
        batch_indices(schedule, keys, a, b, N_TRAIN, BATCH)
        for a, b in ((0, 13), (13, 14), (14, 57))
    ]
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), whole)


@pytest.mark.parametrize("schedule", ["shuffle", "iid"])
def test_streams_depend_on_their_key_only(schedule: str) -> None:
    alone = batch_indices(schedule, [(5,)], 0, 20, N_TRAIN, BATCH)[0]
    among = batch_indices(schedule, [(1,), (5,), (9,)], 0, 20, N_TRAIN, BATCH)[1]
    other = batch_indices(schedule, [(6,)], 0, 20, N_TRAIN, BATCH)[0]
    np.testing.assert_array_equal(alone, among)
    assert not np.array_equal(alone, other)


def test_unknown_schedule() -> None:
    with pytest.raises(ValueError, match="schedule 'random' is not known"):
        batch_indices("random", [(0,)], 0, 1, N_TRAIN, BATCH)
