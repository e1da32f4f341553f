"""Random-matrix quantities of the weights, as pure NumPy kernels (SPEC §4).

Nothing here knows about xarray or the store: every function takes arrays with
any number of leading ("member") dims and returns arrays of the same leading
dims. :mod:`phasearray.analysis` wraps them lazily over a sweep.

Contents

- Marchenko–Pastur edges and density of X = W2 W2ᵀ at initialisation,
  eq. (4.2) of Park et al. 2025;
- the average level spacing S, eq. (4.5), and its time-averaged rate λ̄,
  eq. (4.7);
- the Dyson-Brownian-motion drift K̃ and noise Ṽ of the eigenvalues, the
  level-spacing coefficients K_S, V_S, D_S, eqs. (B.7) and (B.9), and the
  convergence criterion, eq. (4.15), in two conventions (see
  :func:`dbm_coefficients`);
- the feature distribution p(φ) of φ = tanh(z), z ~ N(0, σ_z²), eq. (2.21),
  whose single peak splits in two at σ_z² = σ_c² = 1/2.

References
----------
C. Park, B. Lucini, G. Aarts, "Phase diagram and eigenvalue dynamics of
stochastic gradient descent in multilayer neural networks", Mach. Learn.:
Sci. Technol. 6 (2025) 045048.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np

from .activations import activate, derivative
from .errors import ConfigError

__all__ = [
    "CONVENTIONS",
    "SIGMA_C2",
    "DBMCoefficients",
    "dbm_coefficients",
    "dbm_criterion",
    "feature_density",
    "feature_peak",
    "level_spacing",
    "level_spacing_coefficients",
    "level_spacing_rate",
    "marchenko_pastur_density",
    "marchenko_pastur_edges",
    "preactivation_variance",
]

logger = logging.getLogger(__name__)

CONVENTIONS = ("paper", "phase_ml")

SIGMA_C2 = 0.5
"""σ_c²: p(φ) of tanh features has one peak below it and two above, eq. (2.22)."""

# Bytes of temporaries one DBM batch may hold; sets how many members go together.
_DBM_BATCH_BYTES = 64 * 2**20


# --- Marchenko–Pastur ------------------------------------------------------------


def marchenko_pastur_edges(sigma_W, r):
    """Edges x± = σ_W² (1 ± √r)² of the Marchenko–Pastur law, eq. (4.2).

    Parameters
    ----------
    sigma_W : array_like
        Initial weight scale; the entries of W2 are N(0, σ_W²/n1).
    r : float
        n2 / n1 (1/2 for the paper's network), at most 1.

    Returns
    -------
    x_minus, x_plus : ndarray
        Same dims as ``sigma_W``.

    Examples
    --------
    >>> round(float(marchenko_pastur_edges(1 / 8, 0.5)[1]), 3)
    0.046
    """
    sigma2 = np.square(np.asarray(sigma_W, dtype=np.float64))
    root = np.sqrt(r)
    return sigma2 * (1 - root) ** 2, sigma2 * (1 + root) ** 2


def marchenko_pastur_density(x, sigma_W, r):
    """Density p(x) = √((x₊ − x)(x − x₋)) / (2π σ_W² r x) on [x₋, x₊], eq. (4.2).

    Parameters
    ----------
    x : array_like
        Eigenvalues of X = W2 W2ᵀ.
    sigma_W : array_like
        Broadcasts against ``x``.
    r : float
        n2 / n1, in (0, 1]; for r ≤ 1 the law has no atom at zero and
        integrates to one, with mean σ_W².

    Returns
    -------
    ndarray
        Broadcast dims of ``x`` and ``sigma_W``; zero outside [x₋, x₊].
    """
    x = np.asarray(x, dtype=np.float64)
    x_minus, x_plus = marchenko_pastur_edges(sigma_W, r)
    inside = (x > x_minus) & (x < x_plus)
    product = np.where(inside, (x_plus - x) * (x - x_minus), 0.0)
    scale = 2 * np.pi * np.square(sigma_W) * r * np.where(inside, x, 1.0)
    return np.sqrt(product) / scale


# --- level spacing ---------------------------------------------------------------


def level_spacing(eigenvalues):
    """Average level spacing S = (x_N − x_1) / (N − 1), eq. (4.5).

    Parameters
    ----------
    eigenvalues : ndarray, dims (..., N)
        Eigenvalues of X (any order); NaN anywhere gives NaN.

    Returns
    -------
    ndarray, dims (...)
    """
    values = np.asarray(eigenvalues)
    n = values.shape[-1]
    return (np.max(values, axis=-1) - np.min(values, axis=-1)) / (n - 1)


def level_spacing_rate(S, S_initial, t):
    """Time-averaged rate λ̄(t) = (1/t) log(S(t) / S(0)), eq. (4.7).

    Parameters
    ----------
    S, S_initial : ndarray
        Level spacing at time t and at t = 0; broadcast together.
    t : array_like
        Time since the start, in the unit the rate is wanted per (steps or
        epochs); broadcasts against ``S``.

    Returns
    -------
    ndarray
        NaN at t = 0 and where either spacing is not positive and finite.
    """
    t = np.asarray(t, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.log(S / S_initial)
        return np.where(t > 0, ratio / np.where(t > 0, t, 1.0), np.nan)


# --- feature distribution --------------------------------------------------------


def feature_density(phi, sigma_z2):
    """p(φ) of φ = tanh(z) with z ~ N(0, σ_z²), eq. (2.21).

    p(φ) = exp(−artanh(φ)² / (2σ_z²)) / (√(2π σ_z²) (1 − φ²)), which integrates
    to one over (−1, 1). It has a single peak at 0 for σ_z² ≤ 1/2 and two peaks
    at ±φ* (see :func:`feature_peak`) above.

    Parameters
    ----------
    phi : array_like
        Feature values in (−1, 1); zero is returned at ±1 and outside.
    sigma_z2 : array_like
        Variance of the pre-activation, broadcast against ``phi``.

    Returns
    -------
    ndarray
    """
    phi = np.asarray(phi, dtype=np.float64)
    inside = np.abs(phi) < 1
    safe = np.where(inside, phi, 0.0)
    z = np.arctanh(safe)
    gauss = np.exp(-(z * z) / (2 * sigma_z2)) / np.sqrt(2 * np.pi * sigma_z2)
    return np.where(inside, gauss / (1 - safe * safe), 0.0)


def feature_peak(sigma_z2):
    """Position φ* ≥ 0 of the maximum of p(φ): the root of φ = tanh(2σ_z² φ).

    The extrema of the potential V(φ) = artanh(φ)²/(2σ_z²) + log(1 − φ²) of
    eq. (2.21) solve φ = tanh(2σ_z² φ); a root φ* > 0 exists only above
    σ_z² = σ_c² = 1/2, so φ* = 0 there and below.

    Parameters
    ----------
    sigma_z2 : array_like

    Returns
    -------
    ndarray
        Same dims as ``sigma_z2``.
    """
    gain = 2 * np.asarray(sigma_z2, dtype=np.float64)
    low = np.zeros_like(gain)
    high = np.ones_like(gain)

    # bisection on f(φ) = tanh(gain φ) − φ, positive just above 0 when gain > 1
    for _ in range(60):
        middle = 0.5 * (low + high)
        positive = np.tanh(gain * middle) > middle
        low = np.where(positive, middle, low)
        high = np.where(positive, high, middle)
    return np.where(gain > 1, 0.5 * (low + high), 0.0)


def preactivation_variance(W2, phi1):
    """Variance σ_z² of the pre-activations z = W2 φ1 over samples and units.

    The jamming argument of Park et al. 2025 (eq. (2.19)) takes
    z ~ N(0, σ_z²) with σ_z² ≲ σ_W²; this measures σ_z² of a student.

    Parameters
    ----------
    W2 : ndarray, dims (..., n2, n1)
    phi1 : ndarray, dims (..., n, n1)
        First-layer features of n samples.

    Returns
    -------
    ndarray, dims (...)
    """
    z = phi1 @ np.swapaxes(W2, -1, -2)
    return np.var(z, axis=(-2, -1))


# --- Dyson Brownian motion -------------------------------------------------------


class DBMCoefficients(NamedTuple):
    """Drift and noise of the eigenvalues of X in the eigenbasis of X.

    Attributes
    ----------
    K_tilde : ndarray, dims (..., N, N)
        K̃, rotated drift.
    V_tilde : ndarray, dims (..., N, N)
        Ṽ, rotated noise.
    eigenvalues : ndarray, dims (..., N)
        Eigenvalues of X in the order the convention uses (ascending for
        ``paper``, descending for ``phase_ml``).
    """

    K_tilde: np.ndarray
    V_tilde: np.ndarray
    eigenvalues: np.ndarray


def dbm_coefficients(W2, W3, phi1, y, activation, *, convention="paper", batch=None):
    """DBM drift K̃ and noise Ṽ of X = W2 W2ᵀ, from per-sample gradients.

    For each sample α of the data set, the gradient of ℓ_α = ½ |y_α − ŷ_α|² is
    Δ_α = δ_α φ1_αᵀ with δ_α = W3ᵀ (ŷ_α − y_α) ⊙ φ'(z_α), z_α = W2 φ1_α, and the
    change it induces in X is Δ^X_α = u_α δ_αᵀ + δ_α u_αᵀ with u_α = W2 φ1_α
    (eq. (4.4) of Park et al. 2025). With U the eigenvectors of X:

    ``convention="paper"`` (appendix B of the paper)
        U from ``eigh`` (ascending eigenvalues); K̃ = −Uᵀ mean_α(Δ^X_α) U and
        Ṽ_ij = variance over α of (Uᵀ Δ^X_α U)_ij. Ṽ does not depend on the
        signs of the eigenvectors.
    ``convention="phase_ml"`` (the authors' released notebook)
        U from the SVD of X (descending eigenvalues); K̃ as above but Ṽ is the
        element-wise variance matrix V_ab = variance over α of (Δ^X_α)_ab
        rotated as a matrix, Ṽ = Uᵀ V U. Its off-diagonal entries then depend
        on the signs LAPACK gives the singular vectors. The notebook evaluates
        this on its 128 test samples at the final weights; pass those as
        ``phi1`` and ``y``.

    Variances are population variances (divided by the number of samples).
    They are formed as E[a²] − E[a]², which in float64 loses accuracy only
    where the spread is below ~1e-8 of the mean, far from any phase boundary.

    Parameters
    ----------
    W2 : ndarray, dims (..., n2, n1)
        Student weights; members holding NaN or inf give NaN.
    W3 : ndarray, dims (..., n3, n2)
        Read-out.
    phi1 : ndarray, dims (..., n, n1)
        First-layer features φ(W1 x) of the n samples.
    y : ndarray, dims (..., n, n3)
        Targets of the same samples.
    activation : {"tanh", "relu", "identity"}
    convention : {"paper", "phase_ml"}
    batch : int, optional
        Members handled together; by default as many as fit in ~64 MiB of
        temporaries. Leading dims of all inputs broadcast together.

    Returns
    -------
    DBMCoefficients
        K̃ and Ṽ with dims (..., n2, n2), eigenvalues (..., n2), float64.
    """
    _check_convention(convention)
    lead = np.broadcast_shapes(
        W2.shape[:-2], W3.shape[:-2], phi1.shape[:-2], y.shape[:-2]
    )
    n_samples, n1 = phi1.shape[-2:]
    n2 = W2.shape[-2]
    size = int(np.prod(lead, dtype=np.int64))
    if batch is None:
        per_member = 8 * n_samples * (n1 + 8 * n2)
        batch = max(1, _DBM_BATCH_BYTES // per_member)

    # a single model is a batch of one
    flat = lead or (1,)
    views = [np.broadcast_to(a, flat + a.shape[-2:]) for a in (W2, W3, phi1, y)]
    K_tilde = np.empty((size, n2, n2))
    V_tilde = np.empty((size, n2, n2))
    values = np.empty((size, n2))
    for start in range(0, size, batch):
        index = np.unravel_index(np.arange(start, min(start + batch, size)), flat)
        parts = [np.asarray(v[index], dtype=np.float64) for v in views]
        out = _dbm_batch(*parts, activation, convention)
        K_tilde[start : start + batch], V_tilde[start : start + batch] = out[:2]
        values[start : start + batch] = out[2]
    return DBMCoefficients(
        K_tilde.reshape((*lead, n2, n2)),
        V_tilde.reshape((*lead, n2, n2)),
        values.reshape((*lead, n2)),
    )


def _dbm_batch(W2, W3, phi1, y, activation, convention):
    """:func:`dbm_coefficients` of a flat batch, dims (b, ...)."""
    finite = np.all(np.isfinite(W2), axis=(-2, -1))
    W2 = np.where(finite[:, None, None], W2, 0.0)
    u, delta = _signal_and_error(W2, W3, phi1, y, activation)
    X = W2 @ np.swapaxes(W2, -1, -2)

    if convention == "paper":
        values, U = np.linalg.eigh(X)
        mean, variance = _sample_moments(u @ U, delta @ U)
        K_tilde, V_tilde = -mean, variance
    else:
        U, values, _ = np.linalg.svd(X)
        mean, variance = _sample_moments(u, delta)
        Ut = np.swapaxes(U, -1, -2)
        K_tilde, V_tilde = -(Ut @ mean @ U), Ut @ variance @ U

    bad = ~finite
    K_tilde[bad], V_tilde[bad], values[bad] = np.nan, np.nan, np.nan
    return K_tilde, V_tilde, values


def _signal_and_error(W2, W3, phi1, y, activation):
    """u_α = W2 φ1_α and δ_α = W3ᵀ (ŷ_α − y_α) ⊙ φ'(z_α), dims (b, n, n2)."""
    z = phi1 @ np.swapaxes(W2, -1, -2)
    h = activate(activation, z, np)
    residual = h @ np.swapaxes(W3, -1, -2) - y
    with np.errstate(over="ignore", invalid="ignore"):
        delta = (residual @ W3) * derivative(activation, z, h, np)
    return z, delta


def _sample_moments(u, d):
    """Mean and variance over samples of A_α = u_α d_αᵀ + d_α u_αᵀ, (b, N, N).

    With p = u ⊙ d: E[A_ij²] = E[u_i² d_j²] + E[d_i² u_j²] + 2 E[p_i p_j], so
    only N×N products of (n, N) matrices are formed, never the n matrices A_α.
    """
    n = u.shape[-2]
    cross = np.swapaxes(u, -1, -2) @ d / n
    mean = cross + np.swapaxes(cross, -1, -2)
    squares = np.swapaxes(u * u, -1, -2) @ (d * d) / n
    p = u * d
    second = (
        squares + np.swapaxes(squares, -1, -2) + 2 * (np.swapaxes(p, -1, -2) @ p) / n
    )
    return mean, second - mean * mean


def level_spacing_coefficients(K_tilde, V_tilde, *, convention="paper"):
    """K_S, V_S and D_S of the stochastic equation for S, eqs. (4.8), (B.7), (B.9).

    ``convention="paper"`` (eigenvalues ascending, 1-based indices as in the
    paper)::

        K_S = (K̃_NN − K̃_11) / (N − 1)
        V_S = 2 Ṽ_N1 / (N − 1)² + (1/(N − 1)) Σ_{k=1}^{N−2} (Ṽ_{N,N−k} + Ṽ_{1,k+1}) / k
        D_S = (Ṽ_11 + Ṽ_NN) / (2 (N − 1)²)

    ``convention="phase_ml"`` (eigenvalues descending, 0-based indices as in
    the authors' notebook, generalised from N = 16)::

        K_S = |K̃_00| − |K̃_{N−1,N−1}|                     (no 1/(N − 1))
        V_S = 2 Ṽ_{0,N−1} / (N − 1) + Σ_{k=1}^{N−2} (Ṽ_{0,k} + Ṽ_{N−1,N−k}) / k

    i.e. both V_S terms lack one factor 1/(N − 1), and the second index of the
    last sum is one off (at k = 1 it reads the diagonal Ṽ_{N−1,N−1}). D_S is
    not used there; it is given with the paper's formula on the end points.

    Parameters
    ----------
    K_tilde, V_tilde : ndarray, dims (..., N, N)
        From :func:`dbm_coefficients` with the same convention.
    convention : {"paper", "phase_ml"}

    Returns
    -------
    K_S, V_S, D_S : ndarray, dims (...)
    """
    _check_convention(convention)
    n = K_tilde.shape[-1]
    k = np.arange(1, n - 1)
    diagonal = np.diagonal(K_tilde, axis1=-2, axis2=-1)
    D_S = (V_tilde[..., 0, 0] + V_tilde[..., -1, -1]) / (2 * (n - 1) ** 2)
    if convention == "paper":
        K_S = (diagonal[..., -1] - diagonal[..., 0]) / (n - 1)
        harmonic = (V_tilde[..., -1, n - 1 - k] + V_tilde[..., 0, k]) / k
        V_S = 2 * V_tilde[..., -1, 0] / (n - 1) ** 2 + harmonic.sum(-1) / (n - 1)
    else:
        K_S = np.abs(diagonal[..., 0]) - np.abs(diagonal[..., -1])
        harmonic = (V_tilde[..., 0, k] + V_tilde[..., -1, n - k]) / k
        V_S = 2 * V_tilde[..., 0, -1] / (n - 1) + harmonic.sum(-1)
    return K_S, V_S, D_S


def dbm_criterion(K_S, V_S, T, sigma_W, r, n2, *, convention="paper"):
    """Whether the level spacing converges: eq. (4.15) of Park et al. 2025.

    ``convention="paper"``: converged when
    ``lhs = (N − 1)/(4√r) · T/σ_W²  ≤  rhs = −K_S / V_S``.

    ``convention="phase_ml"``: converged when
    ``lhs = T V_S / (4 σ_W²)  ≤  rhs = √r · K_S / (N − 1)``, the notebook's
    ``K_S / (√2 · 15) ≥ T V_S / (4 σ_W²)`` for n2 = 16, r = 1/2.

    Parameters
    ----------
    K_S, V_S : ndarray
        From :func:`level_spacing_coefficients` with the same convention.
    T, sigma_W : array_like
        Temperature and initial weight scale, broadcast against K_S.
    r : float
        n2 / n1.
    n2 : int
        N, the number of eigenvalues.
    convention : {"paper", "phase_ml"}

    Returns
    -------
    converged : ndarray of bool
        False wherever an input is not finite.
    lhs, rhs : ndarray of float
    """
    _check_convention(convention)
    sigma2 = np.square(sigma_W)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if convention == "paper":
            lhs = (n2 - 1) / (4 * np.sqrt(r)) * T / sigma2 + np.zeros_like(K_S)
            rhs = -K_S / V_S
        else:
            lhs = T * V_S / (4 * sigma2)
            rhs = np.sqrt(r) * K_S / (n2 - 1) + np.zeros_like(lhs)
        converged = np.isfinite(lhs) & np.isfinite(rhs) & (lhs <= rhs)
    return converged, lhs, rhs


def _check_convention(convention):
    if convention not in CONVENTIONS:
        raise ConfigError(
            f"convention {convention!r} is not known; choose 'paper' (Park et al. "
            "2025, appendix B) or 'phase_ml' (the authors' notebook)"
        )
