"""Observables at a checkpoint, as pure array functions (SPEC §3).

Every function takes arrays of one stream's data set and the W2 of any number
of members on that stream (leading dims ``...``), works on NumPy and CuPy
arrays alike (pass ``xp``) and never decides what is recorded.

Shapes: a data set holds n samples; W2 is (..., n2, n1), W3 is (n3, n2),
first-layer features φ1 are (n, n1), targets y are (n, n3).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .activations import activate, derivative

__all__ = [
    "alignment",
    "eigenvalues",
    "feature_overlap",
    "features",
    "gradient",
    "loss",
    "loss_and_gradient",
]


def features(phi1: Any, W2: Any, activation: str, xp: Any = np) -> Any:
    """Second-layer features ("soft spins") φ2 = φ(W2 φ1), dims (..., n, n2)."""
    return activate(activation, phi1 @ xp.swapaxes(W2, -1, -2), xp)


def loss(phi2: Any, y: Any, W3: Any, xp: Any = np) -> Any:
    """L = mean over samples of ½ Σ_i (y_i − ŷ_i)², ŷ = W3 φ2; dims (...)."""
    residual = phi2 @ xp.swapaxes(W3, -1, -2) - y
    return 0.5 * xp.mean(xp.sum(residual * residual, axis=-1), axis=-1)


def gradient(phi1: Any, y: Any, W2: Any, W3: Any, activation: str, xp: Any = np) -> Any:
    """∇_{W2} L over the whole data set, dims (..., n2, n1).

    ∇_{W2} L = (1/n) Σ_α δ_α φ1_αᵀ with δ_α = W3ᵀ (ŷ_α − y_α) ⊙ φ'(z_α).
    """
    z = phi1 @ xp.swapaxes(W2, -1, -2)
    h = activate(activation, z, xp)
    delta = ((h @ xp.swapaxes(W3, -1, -2) - y) @ W3) * derivative(activation, z, h, xp)
    return xp.swapaxes(delta, -1, -2) @ phi1 / phi1.shape[-2]


def loss_and_gradient(
    phi1: Any, y: Any, W2: Any, W3: Any, activation: str, xp: Any = np
) -> tuple[Any, Any]:
    """L and ∇_{W2} L over one data set, sharing the forward pass.

    The same quantities as :func:`loss` of :func:`features` and :func:`gradient`
    for members sharing one data set, with fewer passes over the intermediates.

    Parameters
    ----------
    phi1 : (n, n1), or (..., n, n1) with one data set per member
    y : (n, n3) or (..., n, n3)
    W2 : (..., n2, n1)
    W3 : (n3, n2) or (..., n3, n2)

    Returns
    -------
    loss : dims (...)
    gradient : dims (..., n2, n1)
    """
    if phi1.ndim != 2:
        # a data set per member: broadcast over the leading dims
        phi2 = features(phi1, W2, activation, xp)
        return loss(phi2, y, W3, xp), gradient(phi1, y, W2, W3, activation, xp)
    lead, (n2, n1), n = W2.shape[:-2], W2.shape[-2:], phi1.shape[0]

    # Units-major layout (..., n2, n): every product is one large GEMM with
    # the shared features, whatever the number of members.
    z = (W2.reshape(-1, n1) @ phi1.T).reshape(*lead, n2, n)
    if activation == "tanh":
        h = xp.tanh(z, out=z)
        slope = h * h
        xp.subtract(1, slope, out=slope)
    else:
        h = activate(activation, z, xp)
        slope = derivative(activation, z, h, xp)
    residual = W3 @ h
    residual -= y.T
    value = 0.5 * xp.mean(xp.sum(residual * residual, axis=-2), axis=-1)
    delta = W3.T @ residual
    delta *= slope
    summed = (delta.reshape(-1, n) @ phi1).reshape(*lead, n2, n1)
    return value, summed / n


def eigenvalues(W2: Any, xp: Any = np) -> Any:
    """Eigenvalues of X = W2 W2ᵀ, ascending, dims (..., n2).

    They are the squared singular values of W2 (eq. (4.1) of Park et al. 2025).
    Matrices whose X is not finite (diverged, or overflowing) give NaN.
    """
    X = W2 @ xp.swapaxes(W2, -1, -2)
    finite = xp.all(xp.isfinite(X), axis=(-2, -1))
    values = xp.linalg.eigvalsh(xp.where(finite[..., None, None], X, 0))
    return xp.where(finite[..., None], values, xp.nan)


def feature_overlap(phi2: Any, phi2_initial: Any, xp: Any = np) -> Any:
    """G(t, 0) = mean over samples α and units j of φ2_jα(t) φ2_jα(0); dims (...)."""
    return xp.mean(phi2 * phi2_initial, axis=(-2, -1))


def alignment(phi2: Any, y: Any, W3: Any, xp: Any = np) -> Any:
    """Cosine between h_jα = Σ_i y_iα W3_ij and φ2_jα over (j, α); dims (...).

    Lies in [−1, 1]. (The authors' figure divides it once more by the number
    of test samples.)
    """
    h = y @ W3
    dot = xp.sum(h * phi2, axis=(-2, -1))
    norms = xp.sqrt(xp.sum(h * h, axis=(-2, -1)) * xp.sum(phi2 * phi2, axis=(-2, -1)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return dot / norms
