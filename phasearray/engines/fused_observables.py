"""Checkpoint kernels of the fused CPU engine: the observables of SPEC §3.

At a checkpoint every member needs the training loss L and the gradient norm
|∇_{W2} L|_F over all |D| = 4000 training samples — as much arithmetic as
|D|/|B| = 1000 SGD steps — and the test loss, feature overlap G(t, 0) and
alignment over the 128 test samples. These kernels compute them per member
from its W2, in parallel over the work units of
:func:`phasearray.engines.fused_cpu.work_units`.

Unlike an SGD step, where four samples meet one W2, here thousands of samples
meet the same W2, so the work is two matrix products per member:

    Z = W2 Φ1ᵀ            (n2 × |D|)   forward, with φ(Z) and φ'(Z)
    G = Σ_α δ_α φ1_αᵀ     (n2 × n1)    gradient sum, δ = (W3ᵀ e) ⊙ φ'(Z)

computed tile by tile (:data:`TILE_SAMPLES` samples) with register blocks of
two vectors by four samples (or one vector by eight) and fused multiply-adds;
tanh is :func:`phasearray.engines._simd._tanh_fused`. The products run at
about the rate of a large dgemm, and tanh costs about as much as one of them
(measurements in BENCHMARKS.md).

Each member's sums run in a fixed order over its own data, so the values do
not depend on the block split or the number of threads; they agree with
:mod:`phasearray.observables` to round-off (the order of the sums differs).
Sums of float32 values are squared and accumulated in float64.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._simd import (
    _activation,
    _item,
    _lanes,
    _layout,
    _padded_transpose,
    _unit,
    _vfma,
    _vload,
    _vsplat,
    _vstore,
    _vsum,
)

__all__ = [
    "SIMD_SOURCE_SHA256",
    "TILE_SAMPLES",
    "test_observables",
    "train_observables",
]

# Numba keys the cache of a kernel on the contents of the file that defines it,
# not of _simd.py, which the kernel compiles in: keeping the SHA-256 of that
# file here (a test checks it) makes every change there a change here, so the
# cached machine code is rebuilt.
SIMD_SOURCE_SHA256 = "5e0b95989574a4731893dc7fec6e116384463c8effeb08ae77cccb3b460bc373"

# Samples whose features are held in the tile buffers at a time (3 buffers of
# 64 × 16 float64 = 8 KB each: in L1 next to W2ᵀ and the gradient).
TILE_SAMPLES = 64

# ``dims`` below is (n1, n2p, nv, n3), see phasearray.engines._simd._layout.


# --- forward: H = φ(W2 φ1), P = φ'(W2 φ1) for a tile --------------------------


@njit(inline="always")
def _store_activated(z, H, P, start, code, tables):
    """H[start:] = φ(z), P[start:] = φ'(z) for one vector z."""
    h, p = _activation(z, code, tables, True)
    _vstore(H, start, h)
    _vstore(P, start, p)


@njit(inline="always")
def _forward_pair4(WT, X, row, H, P, start, dims, code, tables):
    """Two vector columns (from lane ``start % n2p``) of four samples from ``row``.

    Eight accumulators; each broadcast of φ1_αi serves both columns.
    """
    n1, n2p = dims[0], dims[1]
    jv, lanes = start % n2p, _lanes(WT)
    w0, w1 = _vload(WT, jv), _vload(WT, jv + lanes)
    x = _vsplat(_item(X, row))
    a0, b0 = w0 * x, w1 * x
    x = _vsplat(_item(X, row + n1))
    a1, b1 = w0 * x, w1 * x
    x = _vsplat(_item(X, row + 2 * n1))
    a2, b2 = w0 * x, w1 * x
    x = _vsplat(_item(X, row + 3 * n1))
    a3, b3 = w0 * x, w1 * x
    for i in range(1, n1):
        w0, w1 = _vload(WT, i * n2p + jv), _vload(WT, i * n2p + jv + lanes)
        x = _vsplat(_item(X, row + i))
        a0, b0 = _vfma(w0, x, a0), _vfma(w1, x, b0)
        x = _vsplat(_item(X, row + n1 + i))
        a1, b1 = _vfma(w0, x, a1), _vfma(w1, x, b1)
        x = _vsplat(_item(X, row + 2 * n1 + i))
        a2, b2 = _vfma(w0, x, a2), _vfma(w1, x, b2)
        x = _vsplat(_item(X, row + 3 * n1 + i))
        a3, b3 = _vfma(w0, x, a3), _vfma(w1, x, b3)
    _store_activated(a0, H, P, start, code, tables)
    _store_activated(b0, H, P, start + lanes, code, tables)
    _store_activated(a1, H, P, start + n2p, code, tables)
    _store_activated(b1, H, P, start + n2p + lanes, code, tables)
    _store_activated(a2, H, P, start + 2 * n2p, code, tables)
    _store_activated(b2, H, P, start + 2 * n2p + lanes, code, tables)
    _store_activated(a3, H, P, start + 3 * n2p, code, tables)
    _store_activated(b3, H, P, start + 3 * n2p + lanes, code, tables)


@njit(inline="always")
def _forward_single8(WT, X, row, H, P, start, dims, code, tables):
    """One vector column (from lane ``start % n2p``) of eight samples from ``row``."""
    n1, n2p = dims[0], dims[1]
    jv = start % n2p
    w = _vload(WT, jv)
    a0 = w * _vsplat(_item(X, row))
    a1 = w * _vsplat(_item(X, row + n1))
    a2 = w * _vsplat(_item(X, row + 2 * n1))
    a3 = w * _vsplat(_item(X, row + 3 * n1))
    a4 = w * _vsplat(_item(X, row + 4 * n1))
    a5 = w * _vsplat(_item(X, row + 5 * n1))
    a6 = w * _vsplat(_item(X, row + 6 * n1))
    a7 = w * _vsplat(_item(X, row + 7 * n1))
    for i in range(1, n1):
        w = _vload(WT, i * n2p + jv)
        a0 = _vfma(w, _vsplat(_item(X, row + i)), a0)
        a1 = _vfma(w, _vsplat(_item(X, row + n1 + i)), a1)
        a2 = _vfma(w, _vsplat(_item(X, row + 2 * n1 + i)), a2)
        a3 = _vfma(w, _vsplat(_item(X, row + 3 * n1 + i)), a3)
        a4 = _vfma(w, _vsplat(_item(X, row + 4 * n1 + i)), a4)
        a5 = _vfma(w, _vsplat(_item(X, row + 5 * n1 + i)), a5)
        a6 = _vfma(w, _vsplat(_item(X, row + 6 * n1 + i)), a6)
        a7 = _vfma(w, _vsplat(_item(X, row + 7 * n1 + i)), a7)
    _store_activated(a0, H, P, start, code, tables)
    _store_activated(a1, H, P, start + n2p, code, tables)
    _store_activated(a2, H, P, start + 2 * n2p, code, tables)
    _store_activated(a3, H, P, start + 3 * n2p, code, tables)
    _store_activated(a4, H, P, start + 4 * n2p, code, tables)
    _store_activated(a5, H, P, start + 5 * n2p, code, tables)
    _store_activated(a6, H, P, start + 6 * n2p, code, tables)
    _store_activated(a7, H, P, start + 7 * n2p, code, tables)


@njit(inline="always")
def _forward_one(WT, X, row, H, P, start, dims, code, tables):
    """One vector column (from lane ``start % n2p``) of the sample at ``row``."""
    n1, n2p = dims[0], dims[1]
    jv = start % n2p
    z = _vload(WT, jv) * _vsplat(_item(X, row))
    for i in range(1, n1):
        z = _vfma(_vload(WT, i * n2p + jv), _vsplat(_item(X, row + i)), z)
    _store_activated(z, H, P, start, code, tables)


@njit
def _forward_tile(WT, X, x0, ns, H, P, dims, code, tables):
    """H[b, :] = φ(W2 φ1_b), P[b, :] = φ'(W2 φ1_b) for the ns rows of X from x0.

    Each z_bj is Σ_i W2_ji φ1_bi over ascending i, one rounding per term.
    """
    n1, n2p, nv = dims[0], dims[1], dims[2]
    lanes = _lanes(WT)
    for v in range(0, nv - 1, 2):
        b = 0
        while b + 4 <= ns:
            _forward_pair4(
                WT, X, x0 + b * n1, H, P, b * n2p + v * lanes, dims, code, tables
            )
            b += 4
        for c in range(b, ns):
            for w in (v, v + 1):
                _forward_one(
                    WT, X, x0 + c * n1, H, P, c * n2p + w * lanes, dims, code, tables
                )
    if nv % 2:
        jv = (nv - 1) * lanes
        b = 0
        while b + 8 <= ns:
            _forward_single8(WT, X, x0 + b * n1, H, P, b * n2p + jv, dims, code, tables)
            b += 8
        for c in range(b, ns):
            _forward_one(WT, X, x0 + c * n1, H, P, c * n2p + jv, dims, code, tables)


# --- backward: residuals, δ and the gradient sum for a tile --------------------


@njit(inline="always")
def _residuals_scalar(H, P, V, Y, y0, ns, D, n2p, nv):
    """:func:`_residuals` for n3 = 1 and nv (1 or 2) a constant at the call site.

    Straight-line per sample: the generic loops over outputs and vectors cost
    about as much as their arithmetic here.
    """
    lanes = _lanes(H)
    v0 = _vload(V, 0)
    v1 = _vload(V, lanes) if nv == 2 else v0
    squares = 0.0
    for b in range(ns):
        r = b * n2p
        acc = _vload(H, r) * v0
        if nv == 2:
            acc = _vfma(_vload(H, r + lanes), v1, acc)
        e = _vsum(acc) - _item(Y, y0 + b)
        squares += np.float64(e) * np.float64(e)  # no float32 overflow
        _vstore(D, r, (_vsplat(e) * v0) * _vload(P, r))
        if nv == 2:
            _vstore(D, r + lanes, (_vsplat(e) * v1) * _vload(P, r + lanes))
    return squares


@njit
def _residuals(H, P, V, Y, y0, ns, E, D, dims):
    """Σ_b |e_b|² with e_b = W3 h_b − y_b; D[b, :] = (W3ᵀ e_b) ⊙ φ'(z_b)."""
    n2p, nv, n3 = dims[1], dims[2], dims[3]
    lanes = _lanes(H)
    squares = 0.0
    for b in range(ns):
        for o in range(n3):
            acc = _vload(H, b * n2p) * _vload(V, o * n2p)
            for v in range(1, nv):
                acc = _vfma(
                    _vload(H, b * n2p + v * lanes), _vload(V, o * n2p + v * lanes), acc
                )
            E[o] = _vsum(acc) - _item(Y, y0 + b * n3 + o)
            squares += np.float64(E[o]) * np.float64(E[o])
        for v in range(nv):
            jv = v * lanes
            acc = _vsplat(E[0]) * _vload(V, jv)
            for o in range(1, n3):
                acc = _vfma(_vsplat(E[o]), _vload(V, o * n2p + jv), acc)
            _vstore(D, b * n2p + jv, acc * _vload(P, b * n2p + jv))
    return squares


@njit(inline="always")
def _gradient_pair4(G, D, X, x0, ns, r0, dims):
    """G rows i … i + 3, two vector columns, from element r0 = i n2p + jv."""
    n1, n2p = dims[0], dims[1]
    jv, i, lanes = r0 % n2p, r0 // n2p, _lanes(G)
    a0, b0 = _vload(G, r0), _vload(G, r0 + lanes)
    a1, b1 = _vload(G, r0 + n2p), _vload(G, r0 + n2p + lanes)
    a2, b2 = _vload(G, r0 + 2 * n2p), _vload(G, r0 + 2 * n2p + lanes)
    a3, b3 = _vload(G, r0 + 3 * n2p), _vload(G, r0 + 3 * n2p + lanes)
    for b in range(ns):
        d0, d1 = _vload(D, b * n2p + jv), _vload(D, b * n2p + jv + lanes)
        row = x0 + b * n1 + i
        x = _vsplat(_item(X, row))
        a0, b0 = _vfma(d0, x, a0), _vfma(d1, x, b0)
        x = _vsplat(_item(X, row + 1))
        a1, b1 = _vfma(d0, x, a1), _vfma(d1, x, b1)
        x = _vsplat(_item(X, row + 2))
        a2, b2 = _vfma(d0, x, a2), _vfma(d1, x, b2)
        x = _vsplat(_item(X, row + 3))
        a3, b3 = _vfma(d0, x, a3), _vfma(d1, x, b3)
    _vstore(G, r0, a0)
    _vstore(G, r0 + lanes, b0)
    _vstore(G, r0 + n2p, a1)
    _vstore(G, r0 + n2p + lanes, b1)
    _vstore(G, r0 + 2 * n2p, a2)
    _vstore(G, r0 + 2 * n2p + lanes, b2)
    _vstore(G, r0 + 3 * n2p, a3)
    _vstore(G, r0 + 3 * n2p + lanes, b3)


@njit(inline="always")
def _gradient_single8(G, D, X, x0, ns, r0, dims):
    """G rows i … i + 7, one vector column, from element r0 = i n2p + jv."""
    n1, n2p = dims[0], dims[1]
    jv, i = r0 % n2p, r0 // n2p
    a0, a1 = _vload(G, r0), _vload(G, r0 + n2p)
    a2, a3 = _vload(G, r0 + 2 * n2p), _vload(G, r0 + 3 * n2p)
    a4, a5 = _vload(G, r0 + 4 * n2p), _vload(G, r0 + 5 * n2p)
    a6, a7 = _vload(G, r0 + 6 * n2p), _vload(G, r0 + 7 * n2p)
    for b in range(ns):
        d = _vload(D, b * n2p + jv)
        row = x0 + b * n1 + i
        a0 = _vfma(d, _vsplat(_item(X, row)), a0)
        a1 = _vfma(d, _vsplat(_item(X, row + 1)), a1)
        a2 = _vfma(d, _vsplat(_item(X, row + 2)), a2)
        a3 = _vfma(d, _vsplat(_item(X, row + 3)), a3)
        a4 = _vfma(d, _vsplat(_item(X, row + 4)), a4)
        a5 = _vfma(d, _vsplat(_item(X, row + 5)), a5)
        a6 = _vfma(d, _vsplat(_item(X, row + 6)), a6)
        a7 = _vfma(d, _vsplat(_item(X, row + 7)), a7)
    _vstore(G, r0, a0)
    _vstore(G, r0 + n2p, a1)
    _vstore(G, r0 + 2 * n2p, a2)
    _vstore(G, r0 + 3 * n2p, a3)
    _vstore(G, r0 + 4 * n2p, a4)
    _vstore(G, r0 + 5 * n2p, a5)
    _vstore(G, r0 + 6 * n2p, a6)
    _vstore(G, r0 + 7 * n2p, a7)


@njit(inline="always")
def _gradient_one(G, D, X, x0, ns, r0, dims):
    """G row i, one vector column, from element r0 = i n2p + jv."""
    n1, n2p = dims[0], dims[1]
    jv, i = r0 % n2p, r0 // n2p
    a = _vload(G, r0)
    for b in range(ns):
        a = _vfma(_vload(D, b * n2p + jv), _vsplat(_item(X, x0 + b * n1 + i)), a)
    _vstore(G, r0, a)


@njit
def _gradient_tile(G, D, X, x0, ns, dims):
    """G[i, :] += Σ_b φ1_bi δ_b over the tile's ns samples, in ascending b."""
    n1, n2p, nv = dims[0], dims[1], dims[2]
    lanes = _lanes(G)
    for v in range(0, nv - 1, 2):
        i = 0
        while i + 4 <= n1:
            _gradient_pair4(G, D, X, x0, ns, i * n2p + v * lanes, dims)
            i += 4
        for k in range(i, n1):
            for w in (v, v + 1):
                _gradient_one(G, D, X, x0, ns, k * n2p + w * lanes, dims)
    if nv % 2:
        jv = (nv - 1) * lanes
        i = 0
        while i + 8 <= n1:
            _gradient_single8(G, D, X, x0, ns, i * n2p + jv, dims)
            i += 8
        for k in range(i, n1):
            _gradient_one(G, D, X, x0, ns, k * n2p + jv, dims)


# --- per unit ------------------------------------------------------------------


@njit
def _train_unit(W2, phi1, y, W3, members, dims, code, tables, loss, grad_norm):
    """L and |∇L|_F over the training set for the members of one stream."""
    n1, n2p, nv, n3 = dims
    n, n2, dtype = phi1.shape[0], W2.shape[1], W2.dtype
    X, Y = phi1.reshape(n * n1), y.reshape(n * n3)
    WT, G = np.empty(n1 * n2p, dtype), np.empty(n1 * n2p, dtype)
    V = np.empty(n3 * n2p, dtype)
    _padded_transpose(W3.T, V)
    H = np.empty(TILE_SAMPLES * n2p, dtype)
    P = np.empty(TILE_SAMPLES * n2p, dtype)
    D = np.empty(TILE_SAMPLES * n2p, dtype)
    E = np.empty(n3, dtype)

    for m in members:
        _padded_transpose(W2[m], WT)
        G[:] = 0
        squares = 0.0
        for start in range(0, n, TILE_SAMPLES):
            ns = min(TILE_SAMPLES, n - start)
            _forward_tile(WT, X, start * n1, ns, H, P, dims, code, tables)
            if n3 == 1 and nv == 2:
                squares += _residuals_scalar(H, P, V, Y, start, ns, D, n2p, 2)
            elif n3 == 1 and nv == 1:
                squares += _residuals_scalar(H, P, V, Y, start, ns, D, n2p, 1)
            else:
                squares += _residuals(H, P, V, Y, start * n3, ns, E, D, dims)
            _gradient_tile(G, D, X, start * n1, ns, dims)
        norm2 = 0.0
        for i in range(n1):
            for j in range(n2):
                # G is the sum, |D| times the mean: square it in float64
                g = np.float64(G[i * n2p + j])
                norm2 += g * g
        loss[m] = 0.5 * squares / n
        grad_norm[m] = np.sqrt(norm2) / n


@njit(error_model="numpy")
def _test_unit(W2, phi1, y, W3, phi2_0, members, dims, code, tables, out):
    """Test loss, G(t, 0) and alignment for the members of one stream.

    ``out`` is (3, M): rows test_loss, feature_overlap, alignment.
    """
    n1, n2p, _, n3 = dims
    n, n2, dtype = phi1.shape[0], W2.shape[1], W2.dtype
    X = phi1.reshape(n * n1)
    target = np.zeros((n, n2), np.float64)  # h_αj = Σ_o y_αo W3_oj
    for a in range(n):
        for o in range(n3):
            for j in range(n2):
                target[a, j] += y[a, o] * W3[o, j]
    target_norm2 = np.sum(target * target)
    WT = np.empty(n1 * n2p, dtype)
    H = np.empty(TILE_SAMPLES * n2p, dtype)
    P = np.empty(TILE_SAMPLES * n2p, dtype)

    for m in members:
        _padded_transpose(W2[m], WT)
        squares = overlap = dot = norm2 = 0.0
        for start in range(0, n, TILE_SAMPLES):
            ns = min(TILE_SAMPLES, n - start)
            _forward_tile(WT, X, start * n1, ns, H, P, dims, code, tables)
            for b in range(ns):
                a = start + b
                for o in range(n3):
                    e = -y[a, o]
                    for j in range(n2):
                        e += W3[o, j] * H[b * n2p + j]
                    squares += np.float64(e) * np.float64(e)
                for j in range(n2):
                    h = np.float64(H[b * n2p + j])
                    overlap += h * phi2_0[m, a, j]
                    dot += target[a, j] * h
                    norm2 += h * h
        out[0, m] = 0.5 * squares / n
        out[1, m] = overlap / (n * n2)
        out[2, m] = dot / np.sqrt(target_norm2 * norm2)


@njit(parallel=True, fastmath=False, cache=True)
def _train_units(W2, phi1, y, W3, units, code, scalars, even, odd, loss, grad_norm):
    """:func:`_train_unit` for every work unit, in parallel; fills loss, grad_norm."""
    unit_stream, unit_start, unit_members = units
    dims = _layout(W2, W3)
    for u in prange(unit_stream.size):
        s, members = _unit(unit_stream, unit_start, unit_members, u)
        tables = (scalars, even, odd)
        _train_unit(
            W2, phi1[s], y[s], W3[s], members, dims, code, tables, loss, grad_norm
        )


@njit(parallel=True, fastmath=False, cache=True)
def _test_units(W2, phi1, y, W3, phi2_0, units, code, scalars, even, odd, out):
    """:func:`_test_unit` for every work unit, in parallel; fills out (3, M)."""
    unit_stream, unit_start, unit_members = units
    dims = _layout(W2, W3)
    for u in prange(unit_stream.size):
        s, members = _unit(unit_stream, unit_start, unit_members, u)
        tables = (scalars, even, odd)
        _test_unit(W2, phi1[s], y[s], W3[s], phi2_0, members, dims, code, tables, out)


# --- entry points --------------------------------------------------------------


def train_observables(W2, phi1, y, W3, units, code, tables):
    """Training loss L and |∇_{W2} L|_F of every member.

    Parameters
    ----------
    W2 : (M, n2, n1), float32 or float64, C-contiguous
    phi1 : (S, |D|, n1); y : (S, |D|, n3); W3 : (S, n3, n2), in W2's dtype
    units : (unit_stream, unit_start, unit_members), from ``work_units``
    code : int
        Activation, see :data:`phasearray.engines._simd.ACTIVATION_CODES`.
    tables : tuple
        From :func:`phasearray.engines._simd.tanh_constants`, in W2's dtype.

    Returns
    -------
    train_loss, grad_norm : (M,), in W2's dtype
        L = (1/2|D|) Σ_α |ŷ_α − y_α|² and |(1/|D|) Σ_α δ_α φ1_αᵀ|_F.
    """
    loss = np.empty(W2.shape[0], W2.dtype)
    grad_norm = np.empty(W2.shape[0], W2.dtype)
    _train_units(W2, phi1, y, W3, units, code, *tables, loss, grad_norm)
    return loss, grad_norm


def test_observables(W2, phi1, y, W3, phi2_0, units, code, tables):
    """Test loss, feature overlap G(t, 0) and alignment of every member.

    Parameters
    ----------
    phi1 : (S, n_test, n1); y : (S, n_test, n3)
    phi2_0 : (M, n_test, n2)
        Each member's test-set features at t = 0.
    W2, W3, units, code, tables
        As for :func:`train_observables`.

    Returns
    -------
    dict of (M,) arrays in W2's dtype
        ``test_loss`` (½ mean |ŷ − y|²), ``feature_overlap`` (mean over α, j
        of φ2_jα(t) φ2_jα(0)) and ``alignment`` (cosine of h = y W3 and φ2
        over (j, α), NaN where φ2 or h is zero).
    """
    out = np.empty((3, W2.shape[0]), W2.dtype)
    _test_units(W2, phi1, y, W3, phi2_0, units, code, *tables, out)
    return dict(zip(("test_loss", "feature_overlap", "alignment"), out, strict=True))
