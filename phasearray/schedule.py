"""Counter-based minibatch schedules.

Every index comes from a generator keyed by (stream, purpose, epoch), never
from a stream of state carried between calls. Any engine, any split of the
models into blocks and any resume point therefore see the same minibatches.

Schedules (``../SPEC`` §2):

``sequential``
    batch b of every epoch is samples ``[b |B|, (b + 1) |B|)``; the authors'
    protocol.
``shuffle``
    a fresh permutation of the training set each epoch.
``iid``
    every index uniform on ``[0, |D|)`` with replacement.

An epoch is ``|D| // |B|`` steps; a remainder of the training set is unused.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import ConfigError

__all__ = ["SCHEDULE_TAGS", "batch_indices", "keyed_generator"]

# Distinct words mixed into the key of each purpose, so that adding a purpose
# never changes the numbers drawn for another.
SCHEDULE_TAGS = {"shuffle": 0x5348, "iid": 0x4949}

StreamKey = tuple[int, ...]


def keyed_generator(key: StreamKey, tag: int, counter: int = 0) -> np.random.Generator:
    """A Philox generator determined by ``(key, tag, counter)`` alone.

    Parameters
    ----------
    key : tuple of int
        Identifies the stream, e.g. ``(seed,)``; non-negative integers.
    tag : int
        Identifies the purpose (teacher weights, inputs, shuffles, ...).
    counter : int
        Epoch or other counter.
    """
    entropy = [int(k) for k in key] + [int(tag), int(counter)]
    return np.random.Generator(np.random.Philox(np.random.SeedSequence(entropy)))


def batch_indices(
    schedule: str,
    keys: Sequence[StreamKey],
    t0: int,
    t1: int,
    n_train: int,
    batch_size: int,
) -> np.ndarray:
    """Minibatch sample indices of steps ``t0 <= t < t1`` for each stream.

    Parameters
    ----------
    schedule : {"sequential", "shuffle", "iid"}
    keys : sequence of tuple of int, length S
        One key per stream (for a sweep, ``(seed,)``).
    t0, t1 : int
        Step range, counted from 0 over the whole run.
    n_train : int
        Size |D| of the training set.
    batch_size : int
        |B|.

    Returns
    -------
    numpy.ndarray, dims (stream, step, batch), int64
        Indices into the training set.
    """
    if schedule not in ("sequential", *SCHEDULE_TAGS):
        raise ConfigError(
            f"schedule {schedule!r} is not known; choose sequential, shuffle or iid"
        )
    steps_per_epoch = n_train // batch_size
    steps = np.arange(t0, t1, dtype=np.int64)
    epoch, position = np.divmod(steps, steps_per_epoch)
    out = np.empty((len(keys), steps.size, batch_size), dtype=np.int64)
    if steps.size == 0:
        return out

    if schedule == "sequential":
        offsets = position[:, None] * batch_size + np.arange(batch_size)
        out[:] = offsets[None]
        return out

    for e in np.unique(epoch):
        in_epoch = epoch == e
        rows = position[in_epoch]
        for s, key in enumerate(keys):
            table = _epoch_table(schedule, key, int(e), n_train, batch_size)
            out[s, in_epoch] = table[rows]
    return out


def _epoch_table(
    schedule: str, key: StreamKey, epoch: int, n_train: int, batch_size: int
) -> np.ndarray:
    """All batches of one epoch, dims (step_in_epoch, batch)."""
    steps_per_epoch = n_train // batch_size
    generator = keyed_generator(key, SCHEDULE_TAGS[schedule], epoch)
    if schedule == "shuffle":
        order = generator.permutation(n_train)[: steps_per_epoch * batch_size]
        return order.reshape(steps_per_epoch, batch_size)
    return generator.integers(0, n_train, size=(steps_per_epoch, batch_size))
