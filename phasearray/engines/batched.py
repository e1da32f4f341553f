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

__all__ = ["NumpyEngine", "sgd_step"]


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


class NumpyEngine(Engine):
    """Batched matmuls over members with NumPy; one Python step per SGD step."""

    name: ClassVar[str] = "numpy"

    def _run_chunk(self, state: SGDState, indices: np.ndarray) -> None:
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
