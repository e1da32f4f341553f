"""The one interface every engine implements.

An engine advances the middle-layer weights W2 of many students at once by
plain SGD (SPEC §2):

    W2 ← W2 − (ε / |B|) Σ_{α ∈ B_t} ∇_{W2} ℓ_α,   ℓ_α = ½ Σ_i (y_iα − ŷ_iα)²

with ŷ = W3 φ(W2 φ1(x)). By default the first layer is frozen, so its
features φ1 = φ(W1 x) of the training set are computed once per stream and
handed in. Where W1 or W3 train too (``SGDProblem.trainable``), every member
carries its own copy of them in ``SGDState.trained``; only the batched engines
run that case. Engines know nothing about xarray, Zarr or observables.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..activations import activate
from ..schedule import StreamKey, batch_indices

__all__ = ["STEP_CHUNK", "Engine", "SGDProblem", "SGDState"]

# Minibatch indices are made on the host this many steps at a time, aligned to
# multiples of it, so memory stays bounded whatever t1 - t0 is.
STEP_CHUNK = 8192


@dataclass(frozen=True)
class SGDProblem:
    """What stays fixed while a block of M students trains, on S streams.

    Attributes
    ----------
    phi1 : (S, n_train, n1) float64
        First-layer features φ(W̄1 x) of each stream's training set.
    y : (S, n_train, n3) float64
        Teacher targets.
    W3 : (S, n3, n2) float64
        Frozen read-out (the teacher's).
    keys : tuple of S stream keys
        Keys of the minibatch schedule (see :mod:`phasearray.schedule`).
    member_stream : (M,) int64
        Stream of each member.
    learning_rate : (M,) float64
        ε of each member (T = ε / |B|).
    batch_size : int
    schedule : {"sequential", "shuffle", "iid"}
    activation : {"tanh", "relu", "identity"}
    dtype : {"float64", "float32"}
    trainable : tuple of {"W1", "W2", "W3"}
        The layers SGD updates; W1 and W3 start from each stream's ``W1`` and
        ``W3``.
    x : (S, n_train, n0) float64, optional
        Inputs of each stream's training set; needed where W1 trains.
    W1 : (S, n1, n0) float64, optional
        First layer of each stream; needed where W1 trains.
    """

    phi1: np.ndarray
    y: np.ndarray
    W3: np.ndarray
    keys: tuple[StreamKey, ...]
    member_stream: np.ndarray
    learning_rate: np.ndarray
    batch_size: int
    schedule: str
    activation: str
    dtype: str = "float64"
    trainable: tuple[str, ...] = ("W2",)
    x: np.ndarray | None = None
    W1: np.ndarray | None = None

    @property
    def trains_outer(self) -> bool:
        """Whether W1 or W3 train besides W2."""
        return self.trainable != ("W2",)

    @property
    def n_members(self) -> int:
        return int(self.member_stream.size)

    @property
    def n_train(self) -> int:
        return int(self.phi1.shape[1])

    def indices(self, t0: int, t1: int) -> np.ndarray:
        """Minibatch indices, dims (stream, step, batch), for steps [t0, t1)."""
        return batch_indices(
            self.schedule, self.keys, t0, t1, self.n_train, self.batch_size
        )


@dataclass
class SGDState:
    """Arrays of one block on the engine's device; W2 changes in place.

    ``trained`` holds each member's own W1 (M, n1, n0) and W3 (M, n3, n2)
    where those layers train; it is empty otherwise.
    """

    problem: SGDProblem
    W2: Any
    arrays: dict[str, Any] = field(default_factory=dict)
    trained: dict[str, Any] = field(default_factory=dict)

    def member_W3(self) -> Any:
        """The read-out of every member, dims (M, n3, n2)."""
        if "W3" in self.trained:
            return self.trained["W3"]
        return self.arrays["W3"][self.arrays["member_stream"]]

    def member_features(
        self, x: Any, phi1: Any, xp: Any, part: slice = slice(None)
    ) -> Any:
        """First-layer features φ1 = φ(W1 x) of members ``part`` on a data set.

        ``x`` (S, n, n0) are each stream's inputs and ``phi1`` (S, n, n1) their
        features under the frozen W1; the latter serve unless W1 trains.
        Returns dims (members, n, n1).
        """
        member_stream = self.arrays["member_stream"][part]
        if "W1" not in self.trained:
            return phi1[member_stream]
        W1 = self.trained["W1"][part]
        return activate(
            self.problem.activation, x[member_stream] @ xp.swapaxes(W1, 1, 2), xp
        )


class Engine(ABC):
    """Advance ``state.W2`` from step t0 to t1; the same schedule on every engine."""

    name: ClassVar[str]

    @property
    def xp(self) -> Any:
        """Array namespace of the engine's device arrays (numpy or cupy)."""
        return np

    def start(
        self,
        problem: SGDProblem,
        W2: np.ndarray,
        trained: dict[str, np.ndarray] | None = None,
    ) -> SGDState:
        """Move a block's data and initial W2 (M, n2, n1) to the device.

        ``trained`` gives the members' W1 (M, n1, n0) and W3 (M, n3, n2) where
        those layers train (on a resume); by default they start as the
        stream's W1 and W3.
        """
        xp, dtype = self.xp, problem.dtype
        arrays = {
            "phi1": xp.asarray(problem.phi1, dtype=dtype),
            "y": xp.asarray(problem.y, dtype=dtype),
            "W3": xp.asarray(problem.W3, dtype=dtype),
            "member_stream": xp.asarray(problem.member_stream, dtype=np.int64),
            "step_size": xp.asarray(
                problem.learning_rate / problem.batch_size, dtype=dtype
            ),
        }
        W2_device = xp.array(W2, dtype=dtype, copy=True)
        state = SGDState(problem=problem, W2=W2_device, arrays=arrays)
        if problem.trains_outer:
            _start_outer_layers(state, trained or {}, xp)
        return state

    def advance(self, state: SGDState, t0: int, t1: int) -> None:
        """Run SGD steps t0 ≤ t < t1 on every member, in place."""
        for a, b in chunk_bounds(t0, t1):
            self._run_chunk(state, state.problem.indices(a, b))

    @abstractmethod
    def _run_chunk(self, state: SGDState, indices: np.ndarray) -> None:
        """Run the steps whose minibatches are ``indices`` (stream, step, batch)."""

    def to_host(self, array: Any) -> np.ndarray:
        return np.asarray(array)

    def train_observables(self, state: SGDState) -> tuple[np.ndarray, np.ndarray]:
        """Training loss L and gradient norm |∇_{W2} L|_F of every member.

        The costliest observables (a pass over the whole training set); fused
        engines may override this with their own kernel.

        Returns
        -------
        train_loss, grad_norm : host arrays, dims (M,)
        """
        from ..observables import loss_and_gradient

        if state.problem.trains_outer:
            return _member_train_observables(self, state)
        xp, problem, arrays = self.xp, state.problem, state.arrays
        M = problem.n_members
        train_loss = np.empty(M, dtype=problem.dtype)
        grad_norm = np.empty(M, dtype=problem.dtype)
        with np.errstate(all="ignore"):
            for s, part in _member_groups(problem.member_stream):
                value, grad = loss_and_gradient(
                    arrays["phi1"][s],
                    arrays["y"][s],
                    state.W2[xp.asarray(part)],
                    arrays["W3"][s],
                    problem.activation,
                    xp,
                )
                train_loss[part] = self.to_host(value)
                grad_norm[part] = self.to_host(
                    xp.sqrt(xp.sum(grad * grad, axis=(1, 2)))
                )
        return train_loss, grad_norm

    def test_observables(
        self, state: SGDState, test: dict[str, Any]
    ) -> dict[str, np.ndarray]:
        """Test loss, feature overlap G(t, 0) and alignment of every member.

        Parameters
        ----------
        state : SGDState
            The members' weights, from :meth:`start` and :meth:`advance`.
        test : dict
            The block's held-out arrays on the device
            (:func:`phasearray.checkpoint.held_out_arrays`): ``phi1``
            (S, n_test, n1), ``y`` (S, n_test, n3), ``phi2_initial``
            (M, n_test, n2) and, where W1 trains, ``x``.

        Returns
        -------
        dict of str to numpy.ndarray
            ``test_loss``, ``feature_overlap``, ``alignment``, dims (M,).
        """
        from .. import observables as obs

        xp, problem = self.xp, state.problem
        with np.errstate(all="ignore"):
            phi1 = state.member_features(test.get("x"), test["phi1"], xp)
            phi2 = obs.features(phi1, state.W2, problem.activation, xp)
            W3 = state.member_W3()
            y = test["y"][xp.asarray(problem.member_stream)]
            values = {
                "test_loss": obs.loss(phi2, y, W3, xp),
                "feature_overlap": obs.feature_overlap(phi2, test["phi2_initial"], xp),
                "alignment": obs.alignment(phi2, y, W3, xp),
            }
        return {name: self.to_host(value) for name, value in values.items()}


def _start_outer_layers(
    state: SGDState, trained: dict[str, np.ndarray], xp: Any
) -> None:
    """Each member's own copy of the trained outer layers, and the inputs."""
    problem, dtype = state.problem, state.problem.dtype
    if problem.x is None or problem.W1 is None:
        raise ValueError("SGDProblem: x and W1 are needed where W1 or W3 train")
    stream_values = {"W1": problem.W1, "W3": problem.W3}
    for name in problem.trainable:
        if name == "W2":
            continue
        initial = trained.get(name, stream_values[name][problem.member_stream])
        state.trained[name] = xp.array(initial, dtype=dtype, copy=True)
    state.arrays["x"] = xp.asarray(problem.x, dtype=dtype)


def _member_train_observables(
    engine: Engine, state: SGDState
) -> tuple[np.ndarray, np.ndarray]:
    """Training loss and |∇_{W2} L| where members have their own W1 or W3."""
    from ..observables import loss_and_gradient

    xp, problem, arrays = engine.xp, state.problem, state.arrays
    train_loss = np.empty(problem.n_members, dtype=problem.dtype)
    grad_norm = np.empty(problem.n_members, dtype=problem.dtype)
    W3 = state.member_W3()
    with np.errstate(all="ignore"):
        for start in range(0, problem.n_members, OUTER_OBSERVABLE_BATCH):
            part = slice(start, start + OUTER_OBSERVABLE_BATCH)
            streams = arrays["member_stream"][part]
            phi1 = state.member_features(arrays.get("x"), arrays["phi1"], xp, part)
            value, grad = loss_and_gradient(
                phi1,
                arrays["y"][streams],
                state.W2[part],
                W3[part],
                problem.activation,
                xp,
            )
            train_loss[part] = engine.to_host(value)
            grad_norm[part] = engine.to_host(xp.sqrt(xp.sum(grad * grad, axis=(1, 2))))
    return train_loss, grad_norm


def require_W2_only(problem: SGDProblem, engine: str) -> None:
    """Fused engines train W2 alone; say which engines train more."""
    if problem.trains_outer:
        raise NotImplementedError(
            f"engine {engine!r} trains W2 alone, but model.trainable = "
            f"{list(problem.trainable)}; use engine 'numpy' or 'cupy'"
        )


# Members whose training-set observables are computed together where each has
# its own W1 or W3; bounds the (members, samples, n1) features to ~35 MB at
# |D| = 4000, n1 = 32 in float64.
OUTER_OBSERVABLE_BATCH = 32

# Members of one stream whose training-set observables are computed together;
# bounds the (members, samples, n2) intermediates to ~50 MB at |D| = 4000.
OBSERVABLE_BATCH = 96


def _member_groups(member_stream: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(stream, members) pairs, at most :data:`OBSERVABLE_BATCH` members each."""
    groups = []
    for s in np.unique(member_stream):
        members = np.flatnonzero(member_stream == s)
        for part in np.array_split(members, -(-members.size // OBSERVABLE_BATCH)):
            groups.append((int(s), part))
    return groups


def chunk_bounds(t0: int, t1: int) -> list[tuple[int, int]]:
    """Split [t0, t1) at multiples of :data:`STEP_CHUNK`."""
    edges = [t0, *range((t0 // STEP_CHUNK + 1) * STEP_CHUNK, t1, STEP_CHUNK), t1]
    return [(a, b) for a, b in itertools.pairwise(edges) if b > a]
