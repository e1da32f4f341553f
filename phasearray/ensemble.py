"""Teachers, data sets and initial weights, drawn from seeds on the host.

SPEC §1: teacher weights W̄1 ~ N(0, 1/n0), W̄2 ~ N(0, 1/n1), W̄3 ~ N(0, 1/n2);
inputs x ~ N(0, I_n0); targets y = teacher(x). The student starts from
W2 = σ_W / √n1 · G with G a standard-normal matrix drawn once per stream, so
with common random numbers every (T, σ_W) cell of a seed shares G, the teacher,
the data and the minibatch sequence.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .activations import activate
from .engines.base import SGDProblem
from .errors import ConfigError
from .schedule import StreamKey, keyed_generator

__all__ = ["Ensemble", "make_ensemble", "sgd_problem", "stream_key", "teacher_outputs"]

_TAGS = {
    "teacher_W1": 0x5701,
    "teacher_W2": 0x5702,
    "teacher_W3": 0x5703,
    "x_train": 0x5801,
    "x_test": 0x5802,
    "W2_normal": 0x4702,
}


@dataclass(frozen=True)
class Ensemble:
    """Host arrays of S streams (one per seed, or per seed and cell).

    Attributes
    ----------
    keys : tuple of tuple of int, length S
    teacher_W1 : (S, n1, n0)
    teacher_W2 : (S, n2, n1)
    teacher_W3 : (S, n3, n2)
    x_train : (S, n_train, n0)
    x_test : (S, n_test, n0)
    W2_normal : (S, n2, n1)
        Standard-normal matrix G; the student's W2(0) is σ_W / √n1 · G.
    """

    keys: tuple[StreamKey, ...]
    teacher_W1: np.ndarray
    teacher_W2: np.ndarray
    teacher_W3: np.ndarray
    x_train: np.ndarray
    x_test: np.ndarray
    W2_normal: np.ndarray


def stream_key(
    seed: int, T: float | None = None, sigma_W: float | None = None
) -> StreamKey:
    """Key of a stream: ``(seed,)`` shared by all cells, or per (seed, cell).

    A per-cell key uses the bit patterns of T and σ_W, not their grid indices,
    so adding grid points never changes the draws of an existing cell.
    """
    if T is None or sigma_W is None:
        return (int(seed),)
    bits = np.array([T, sigma_W], dtype=np.float64).view(np.uint64)
    return (int(seed), int(bits[0]), int(bits[1]))


def make_ensemble(
    keys: Sequence[StreamKey],
    widths: Sequence[int],
    n_train: int,
    n_test: int,
    source: str = "gaussian",
) -> Ensemble:
    """Draw teachers, inputs and standard-normal initial matrices, float64.

    Parameters
    ----------
    keys : sequence of tuple of int
        One key per stream; see :func:`stream_key`.
    widths : (n0, n1, n2, n3)
    n_train, n_test : int
        Sizes of the training and test sets.
    source : {"gaussian", "digits"}
        Inputs x ~ N(0, I), or scikit-learn's handwritten digits (standardised
        pixels, n0 = 64), split per stream into training and test images.
    """
    n0, n1, n2, n3 = widths
    shapes = {
        "teacher_W1": ((n1, n0), n0),
        "teacher_W2": ((n2, n1), n1),
        "teacher_W3": ((n3, n2), n2),
        "x_train": ((n_train, n0), 1),
        "x_test": ((n_test, n0), 1),
        "W2_normal": ((n2, n1), 1),
    }
    arrays = {
        name: np.stack([_normal(key, name, shape, fan_in) for key in keys])
        for name, (shape, fan_in) in shapes.items()
        if source == "gaussian" or not name.startswith("x_")
    }
    if source == "digits":
        splits = [_digits_split(key, n_train, n_test) for key in keys]
        arrays["x_train"] = np.stack([train for train, _ in splits])
        arrays["x_test"] = np.stack([test for _, test in splits])
    elif source != "gaussian":
        raise ConfigError(
            f"data source {source!r} is not known; choose gaussian or digits"
        )
    return Ensemble(keys=tuple(tuple(k) for k in keys), **arrays)


def _normal(
    key: StreamKey, name: str, shape: tuple[int, ...], fan_in: int
) -> np.ndarray:
    generator = keyed_generator(key, _TAGS[name])
    return generator.standard_normal(shape) / np.sqrt(fan_in)


@functools.cache
def _digits() -> np.ndarray:
    """scikit-learn's 1 797 digit images as standardised pixels, dims (1797, 64)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError(
            "data.source 'digits' needs scikit-learn: pip install 'phasearray[digits]'"
        ) from None
    pixels = load_digits().data.astype(np.float64)
    spread = pixels.std(axis=0)
    # Pixels that are always blank carry no information: they stay 0.
    return np.divide(
        pixels - pixels.mean(axis=0),
        spread,
        out=np.zeros_like(pixels),
        where=spread > 0,
    )


def _digits_split(
    key: StreamKey, n_train: int, n_test: int
) -> tuple[np.ndarray, np.ndarray]:
    images = _digits()
    order = keyed_generator(key, _TAGS["x_train"]).permutation(images.shape[0])
    return images[order[:n_train]], images[order[n_train : n_train + n_test]]


def teacher_outputs(
    x: np.ndarray, W1: np.ndarray, W2: np.ndarray, W3: np.ndarray, activation: str
) -> np.ndarray:
    """Targets y = W̄3 φ(W̄2 φ(W̄1 x)).

    Parameters
    ----------
    x : (..., n, n0)
    W1 : (..., n1, n0); W2 : (..., n2, n1); W3 : (..., n3, n2)

    Returns
    -------
    (..., n, n3)
    """
    phi1 = activate(activation, x @ np.swapaxes(W1, -1, -2), np)
    phi2 = activate(activation, phi1 @ np.swapaxes(W2, -1, -2), np)
    return phi2 @ np.swapaxes(W3, -1, -2)


def sgd_problem(
    ensemble: Ensemble,
    member_stream: np.ndarray,
    learning_rate: np.ndarray,
    *,
    batch_size: int,
    schedule: str,
    activation: str,
    dtype: str = "float64",
    trainable: tuple[str, ...] = ("W2",),
) -> SGDProblem:
    """The engines' input for students trained on the streams of ``ensemble``.

    Parameters
    ----------
    ensemble : Ensemble
        S streams.
    member_stream : (M,) int
        Stream of each student.
    learning_rate : (M,) float
        ε of each student (T = ε / |B|).
    trainable : tuple of {"W1", "W2", "W3"}
        Layers SGD updates; trained W1 and W3 start from the teacher's.

    Returns
    -------
    SGDProblem
        With first-layer features φ1 = φ(W̄1 x) and targets y of every stream.
    """
    e = ensemble
    return SGDProblem(
        phi1=activate(activation, e.x_train @ np.swapaxes(e.teacher_W1, 1, 2), np),
        y=teacher_outputs(
            e.x_train, e.teacher_W1, e.teacher_W2, e.teacher_W3, activation
        ),
        W3=e.teacher_W3,
        keys=e.keys,
        member_stream=np.asarray(member_stream, dtype=np.int64).ravel(),
        learning_rate=np.asarray(learning_rate, dtype=np.float64),
        batch_size=batch_size,
        schedule=schedule,
        activation=activation,
        dtype=dtype,
        trainable=tuple(trainable),
        x=e.x_train,
        W1=e.teacher_W1,
    )
