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
  :func:`dbm_coefficients` and :func:`dbm_level_spacing`);
- the feature distribution p(φ) of φ = tanh(z), z ~ N(0, σ_z²), eq. (2.21),
  whose single peak splits in two at σ_z² = σ_c² = 1/2.

References
----------
C. Park, B. Lucini, G. Aarts, "Phase diagram and eigenvalue dynamics of
stochastic gradient descent in multilayer neural networks", Mach. Learn.:
Sci. Technol. 6 (2025) 045048.
"""

from __future__ import annotations

import contextlib
import logging
from functools import partial
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
    "dbm_level_spacing",
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

# Bytes of one (members, n2, samples) temporary of the DBM kernels; sets how many
# members go together (small enough to stay in cache).
_DBM_BATCH_BYTES = 4 * 2**20


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
    Members that share ``phi1``, ``y`` and ``W3`` (one seed across the grid)
    are handled together, their pre-activations in one matrix product.

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
        Members handled together; by default as many as keep each temporary
        array near 4 MiB. Leading dims of all inputs broadcast together.

    Returns
    -------
    DBMCoefficients
        K̃ and Ṽ with dims (..., n2, n2), eigenvalues (..., n2), float64.

    See Also
    --------
    dbm_level_spacing : K_S, V_S, D_S directly, about twice as fast.
    """
    _check_convention(convention)
    n2 = W2.shape[-2]
    shapes = ((n2, n2), (n2, n2), (n2,))
    work = partial(_full_batch, activation=activation, convention=convention)
    return DBMCoefficients(*_over_members(W2, W3, phi1, y, work, shapes, batch))


def dbm_level_spacing(W2, W3, phi1, y, activation, *, convention="paper", batch=None):
    """K_S, V_S and D_S of every member without forming the whole K̃ and Ṽ.

    Equal to :func:`level_spacing_coefficients` of :func:`dbm_coefficients`,
    but in the ``paper`` convention only the rows of Ṽ at the smallest and
    largest eigenvalue are accumulated, which is all eqs. (B.7) and (B.9)
    read. Parameters as for :func:`dbm_coefficients`.

    Returns
    -------
    K_S, V_S, D_S : ndarray, dims (...)
    """
    _check_convention(convention)
    work = partial(_ends_batch, activation=activation, convention=convention)
    return _over_members(W2, W3, phi1, y, work, ((), (), ()), batch)


def _over_members(W2, W3, phi1, y, work, shapes, batch):
    """Run ``work`` over batches of members that share their data set.

    ``work(W2 (b, n2, n1), W3 (n3, n2), phi1 (n, n1), y (n, n3))`` returns one
    array per entry of ``shapes`` with a leading dim b; the results are laid
    out over the broadcast leading dims of the inputs.
    """
    lead = np.broadcast_shapes(
        W2.shape[:-2], W3.shape[:-2], phi1.shape[:-2], y.shape[:-2]
    )
    size = int(np.prod(lead, dtype=np.int64))
    n, n2 = phi1.shape[-2], W2.shape[-2]
    if batch is None:
        batch = max(1, _DBM_BATCH_BYTES // (8 * n * n2))
    members = np.broadcast_to(W2, (*lead, *W2.shape[-2:])).reshape(size, *W2.shape[-2:])
    data = [_flat(a, lead) for a in (W3, phi1, y)]
    keys = np.stack([index for _, index in data], axis=1)
    groups, group_of = np.unique(keys, axis=0, return_inverse=True)
    outputs = [np.empty((size, *shape)) for shape in shapes]

    with _one_blas_thread():
        for g, key in enumerate(groups):
            shared = [flat[k] for (flat, _), k in zip(data, key, strict=True)]
            chosen = np.flatnonzero(group_of.ravel() == g)
            for start in range(0, chosen.size, batch):
                part = chosen[start : start + batch]
                results = work(np.asarray(members[part], dtype=np.float64), *shared)
                for out, result in zip(outputs, results, strict=True):
                    out[part] = result
    return tuple(
        out.reshape((*lead, *shape)) for out, shape in zip(outputs, shapes, strict=True)
    )


def _flat(array, lead):
    """``array`` (..., a, b) as (m, a, b) and, per member of ``lead``, its row."""
    own = (1,) * (len(lead) - (array.ndim - 2)) + array.shape[:-2]
    rows = np.arange(int(np.prod(own, dtype=np.int64))).reshape(own)
    flat = np.asarray(array, dtype=np.float64).reshape(-1, *array.shape[-2:])
    return flat, np.broadcast_to(rows, lead).ravel()


@contextlib.contextmanager
def _one_blas_thread():
    """Keep BLAS to one thread: the products here are small, and the kernels
    run inside Dask tasks, one per core; more BLAS threads only oversubscribe.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        logger.debug("threadpoolctl is missing; BLAS keeps its own thread count")
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _full_batch(W2, W3, phi1, y, *, activation, convention):
    """K̃, Ṽ and eigenvalues of a batch of members sharing (W3, phi1, y)."""
    W2, bad = _finite(W2)
    U, values = _eigenbasis(W2, convention)
    if convention == "paper":
        u, delta = _signals(W2, W3, phi1, y, activation, U)
        mean, variance = _moments(u, delta)
        K_tilde, V_tilde = -mean, variance
    else:
        u, delta = _signals(W2, W3, phi1, y, activation)
        mean, variance = _moments(u, delta)
        Ut = np.swapaxes(U, -1, -2)
        K_tilde, V_tilde = -(Ut @ mean @ U), Ut @ variance @ U
    for array in (K_tilde, V_tilde, values):
        array[bad] = np.nan
    return K_tilde, V_tilde, values


def _ends_batch(W2, W3, phi1, y, *, activation, convention):
    """K_S, V_S, D_S of a batch, from the rows of Ṽ at the two end eigenvalues."""
    if convention == "phase_ml":
        K_tilde, V_tilde, _ = _full_batch(
            W2, W3, phi1, y, activation=activation, convention=convention
        )
        return level_spacing_coefficients(K_tilde, V_tilde, convention=convention)

    W2, bad = _finite(W2)
    U, _ = _eigenbasis(W2, convention)
    u, d = _signals(W2, W3, phi1, y, activation, U)
    n = u.shape[-1]
    ends = [0, -1]
    ue, de = u[:, ends], d[:, ends]  # (b, 2, n)

    # rows e of E[A] and E[A²] with A_ej = u_e d_j + d_e u_j (see _moments)
    mean = (ue @ _T(d) + de @ _T(u)) / n
    pe = ue * de
    second = ((ue * ue) @ _T(d * d) + (de * de) @ _T(u * u) + 2 * pe @ _T(u * d)) / n
    V_rows = second - mean * mean  # (b, 2, N)
    K_ends = -2 * np.mean(pe, axis=-1)  # K̃_ee = −E[2 u_e d_e]
    terms = _spacing_terms(
        K_ends[:, 0], K_ends[:, 1], V_rows[:, 0], V_rows[:, 1], convention
    )
    for array in terms:
        array[bad] = np.nan
    return terms


# Weights beyond this are a runaway (identity networks grow without bound and
# stay finite); the DBM noise is quartic in W2 and would overflow near 1e77.
RUNAWAY = 1e30


def _finite(W2):
    """W2 with non-finite or runaway members zeroed, and the mask of those members."""
    with np.errstate(invalid="ignore"):
        bad = ~np.all(np.abs(W2) < RUNAWAY, axis=(-2, -1))
    return np.where(bad[:, None, None], 0.0, W2), bad


def _eigenbasis(W2, convention):
    """Eigenvectors U (columns) and eigenvalues of X = W2 W2ᵀ, (b, N, N), (b, N)."""
    X = W2 @ _T(W2)
    if convention == "paper":
        values, U = np.linalg.eigh(X)
    else:
        U, values, _ = np.linalg.svd(X)
    return U, values


def _signals(W2, W3, phi1, y, activation, U=None):
    """u_α = W2 φ1_α and δ_α = W3ᵀ (ŷ_α − y_α) ⊙ φ'(z_α), dims (b, N, n).

    With ``U``, both come rotated into the eigenbasis: Uᵀu and Uᵀδ. The
    pre-activations of the whole batch (and Uᵀu) are one matrix product with
    the shared φ1.
    """
    b, N, n1 = W2.shape
    rows = W2 if U is None else np.concatenate([W2, _T(U) @ W2], axis=1)
    products = (rows.reshape(-1, n1) @ phi1.T).reshape(b, -1, N, phi1.shape[0])
    z = products[:, 0]
    h = activate(activation, z, np)
    residual = W3 @ h - y.T  # (b, n3, n)
    with np.errstate(over="ignore", invalid="ignore"):
        delta = _T(W3) @ residual if W3.shape[0] > 1 else W3[0][:, None] * residual
        delta *= derivative(activation, z, h, np)
    if U is None:
        return z, delta
    return products[:, 1], _T(U) @ delta


def _moments(u, d):
    """Mean and variance over samples of A_α = u_α d_αᵀ + d_α u_αᵀ, (b, N, N).

    u, d have dims (b, N, n). With p = u ⊙ d: E[A_ij²] = E[u_i² d_j²] +
    E[d_i² u_j²] + 2 E[p_i p_j], so only N×N products of (N, n) matrices are
    formed, never the n matrices A_α.
    """
    n = u.shape[-1]
    cross = u @ _T(d) / n
    mean = cross + _T(cross)
    squares = (u * u) @ _T(d * d) / n
    p = u * d
    second = squares + _T(squares) + 2 * (p @ _T(p)) / n
    return mean, second - mean * mean


def _T(array):
    return np.swapaxes(array, -1, -2)


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
    return _spacing_terms(
        K_tilde[..., 0, 0],
        K_tilde[..., -1, -1],
        V_tilde[..., 0, :],
        V_tilde[..., -1, :],
        convention,
    )


def _spacing_terms(K_first, K_last, V_first, V_last, convention):
    """K_S, V_S, D_S from K̃ at the first and last level and Ṽ's first and last row."""
    n = V_first.shape[-1]
    k = np.arange(1, n - 1)
    D_S = (V_first[..., 0] + V_last[..., -1]) / (2 * (n - 1) ** 2)
    if convention == "paper":
        K_S = (K_last - K_first) / (n - 1)
        harmonic = (V_last[..., n - 1 - k] + V_first[..., k]) / k
        V_S = 2 * V_last[..., 0] / (n - 1) ** 2 + harmonic.sum(-1) / (n - 1)
    else:
        K_S = np.abs(K_first) - np.abs(K_last)
        harmonic = (V_first[..., k] + V_last[..., n - k]) / k
        V_S = 2 * V_first[..., -1] / (n - 1) + harmonic.sum(-1)
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
