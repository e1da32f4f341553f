"""Reference engine: all members of a block as batched matmuls.

Written against the array namespace ``xp`` only (NumPy here; CuPy arrays run
the same code), one SGD step at a time. It is the readable definition the
fused engines are tested against.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ..activations import activate, derivative
from .base import Engine, SGDState

__all__ = ["NumpyEngine", "sgd_step", "sgd_step_layers"]


def sgd_step(
    W2: Any,
    xb: Any,
    yb: Any,
    W3: Any,
    step_size: Any,
    activation: str,
    xp: Any,
) -> None:
    """One SGD step on every member, in place.

    Parameters
    ----------
    W2 : (M, n2, n1)
        Trained weights, updated in place.
    xb : (M, B, n1)
        First-layer features φ1 of each member's minibatch.
    yb : (M, B, n3)
        Targets of the minibatch.
    W3 : (M, n3, n2)
        Read-out weights.
    step_size : (M,)
        ε / |B| per member.

    Notes
    -----
    With z = W2 φ1, h = φ(z), ŷ = W3 h and δ = W3ᵀ (ŷ − y) ⊙ φ'(z),
    Σ_α ∇_{W2} ℓ_α = Σ_α δ_α φ1_αᵀ (eq. (2.28) of Park et al. 2025).
    """
    z = xb @ xp.swapaxes(W2, 1, 2)
    h = activate(activation, z, xp)
    error = h @ xp.swapaxes(W3, 1, 2) - yb
    delta = (error @ W3) * derivative(activation, z, h, xp)
    gradient_sum = xp.swapaxes(delta, 1, 2) @ xb
    W2 -= step_size[:, None, None] * gradient_sum


def sgd_step_layers(
    weights: dict[str, Any],
    h1: Any,
    xb: Any,
    yb: Any,
    step_size: Any,
    activation: str,
    xp: Any,
) -> None:
    """One SGD step on every member where W1 or W3 train besides W2, in place.

    Parameters
    ----------
    weights : dict with "W1" (M, n1, n0), "W2" (M, n2, n1), "W3" (M, n3, n2)
        Each member's weights; those listed in ``weights["trainable"]`` are
        updated in place.
    h1 : (M, B, n1) or None
        First-layer features of the minibatch where W1 is frozen; computed
        from ``xb`` (M, B, n0) where W1 trains.
    yb : (M, B, n3)
    step_size : (M,)
        ε / |B| per member.

    Notes
    -----
    Back-propagation with a1 = W1 x, h1 = φ(a1), a2 = W2 h1, h2 = φ(a2),
    e = W3 h2 − y: Σ_α ∇_{W3} ℓ_α = Σ_α e_α h2_αᵀ, δ2 = W3ᵀ e ⊙ φ'(a2),
    Σ_α ∇_{W2} ℓ_α = Σ_α δ2_α h1_αᵀ, δ1 = W2ᵀ δ2 ⊙ φ'(a1) and
    Σ_α ∇_{W1} ℓ_α = Σ_α δ1_α x_αᵀ. Every gradient is taken at the weights
    before the step.
    """
    W1, W2, W3 = weights["W1"], weights["W2"], weights["W3"]
    trainable = weights["trainable"]
    if h1 is None:
        a1 = xb @ xp.swapaxes(W1, 1, 2)
        h1 = activate(activation, a1, xp)
    a2 = h1 @ xp.swapaxes(W2, 1, 2)
    h2 = activate(activation, a2, xp)
    error = h2 @ xp.swapaxes(W3, 1, 2) - yb
    delta2 = (error @ W3) * derivative(activation, a2, h2, xp)

    gradients = {"W2": xp.swapaxes(delta2, 1, 2) @ h1}
    if "W3" in trainable:
        gradients["W3"] = xp.swapaxes(error, 1, 2) @ h2
    if "W1" in trainable:
        delta1 = (delta2 @ W2) * derivative(activation, a1, h1, xp)
        gradients["W1"] = xp.swapaxes(delta1, 1, 2) @ xb

    for name, gradient_sum in gradients.items():
        weights[name] -= step_size[:, None, None] * gradient_sum


class NumpyEngine(Engine):
    """Batched matmuls over members with NumPy; one Python step per SGD step."""

    name: ClassVar[str] = "numpy"

    def _run_chunk(self, state: SGDState, indices: np.ndarray) -> None:
        if state.problem.trains_outer:
            self._run_chunk_layers(state, indices)
            return
        xp, arrays = self.xp, state.arrays
        member_stream = arrays["member_stream"]
        stream_column = member_stream[:, None]
        W3 = arrays["W3"][member_stream]
        member_indices = xp.asarray(indices)[member_stream]

        # Diverging members overflow; they are caught and marked at checkpoints.
        with np.errstate(over="ignore", invalid="ignore"):
            for k in range(indices.shape[1]):
                rows = member_indices[:, k, :]
                xb = arrays["phi1"][stream_column, rows]
                yb = arrays["y"][stream_column, rows]
                sgd_step(
                    state.W2,
                    xb,
                    yb,
                    W3,
                    arrays["step_size"],
                    state.problem.activation,
                    xp,
                )

    def _run_chunk_layers(self, state: SGDState, indices: np.ndarray) -> None:
        """The steps of a chunk where W1 or W3 train besides W2."""
        xp, arrays, problem = self.xp, state.arrays, state.problem
        member_stream = arrays["member_stream"]
        stream_column = member_stream[:, None]
        member_indices = xp.asarray(indices)[member_stream]
        weights = {
            "W1": state.trained.get("W1"),
            "W2": state.W2,
            "W3": state.member_W3(),
            "trainable": problem.trainable,
        }
        W1_trains = "W1" in problem.trainable

        with np.errstate(over="ignore", invalid="ignore"):
            for k in range(indices.shape[1]):
                rows = member_indices[:, k, :]
                xb = arrays["x"][stream_column, rows]
                h1 = None if W1_trains else arrays["phi1"][stream_column, rows]
                yb = arrays["y"][stream_column, rows]
                sgd_step_layers(
                    weights, h1, xb, yb, arrays["step_size"], problem.activation, xp
                )
