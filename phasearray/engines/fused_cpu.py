"""Fused CPU engine: one Numba kernel runs every step of a chunk, per work unit.

The arithmetic is that of :func:`phasearray.engines.batched.sgd_step` (eq.
(2.28) of Park et al. 2025) in the same order of scaling: the minibatch *sum*
of the per-sample gradients is multiplied by ε/|B| and subtracted from W2. A
chunk of up to :data:`~phasearray.engines.base.STEP_CHUNK` steps is one kernel
call with no allocation per step.

Design
------
Work units. The members are split into units of one stream each (at most
:data:`UNIT_MEMBERS` members, see :func:`work_units`) handed to the threads one
at a time by ``prange``. A unit keeps its members' W2ᵀ in local buffers for the
whole chunk; for each tile of :data:`TILE_STEPS` steps it gathers the stream's
minibatch rows into one contiguous buffer, then runs every member through the
tile. Members of a stream share their minibatches, so the training set is read
sequentially, once per unit, not at random rows per member.

SIMD. The kernel is written with the explicit vectors of
:mod:`phasearray.engines._simd` (64 bytes: 8 float64 or 16 float32 lanes). W2
is held transposed, (n1, n2), so that a row is one or two vectors. Every
operation is a plain IEEE multiply, add, subtract or divide, never a fused
multiply-add, and a member's operations involve its own inputs only, so its
result is bit-identical for any split of the members into blocks, any number
of threads and any resume point. tanh is the vector tanh of that module,
within 4 ulp of the exact value (NumPy's within about 1 ulp), so the engine
follows the NumPy reference to round-off wherever the dynamics does not
amplify it.

Groups of members. Where |B| = 4, n3 = 1 and n2 fits in two vectors (the
usual case), a unit's members go through each tile two (nv = 2) or four
(nv = 1) at a time: their minibatches are the same, so one broadcast of φ1
serves four vector columns of W2ᵀ, the four columns' chains of dependent
operations overlap, and tanh is evaluated on four vectors side by side. Each
member's own operations, and their order, are those of the one-member code.

:meth:`NumbaEngine.train_observables` and :meth:`NumbaEngine.test_observables`
are the checkpoint kernels of :mod:`phasearray.engines.fused_observables`.

Compilation takes 15–20 s per precision (and about as long for the checkpoint
kernels) the first time; Numba caches the machine code next to this file (or
in its user cache directory), so later processes, Dask workers included, load
it at once. Numba keys that cache on the contents of the file that defines a
kernel, not of the files it compiles in: :data:`SIMD_SOURCE_SHA256` makes a
change of ``_simd.py`` a change of this file too.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numba
import numpy as np
from numba import njit, prange

from . import fused_observables
from ._simd import (
    ACTIVATION_CODES,
    VECTOR_BYTES,
    _activation,
    _item,
    _lanes,
    _layout,
    _padded_transpose,
    _unit,
    _vhigh,
    _vjoin,
    _vload,
    _vlow,
    _vsplat,
    _vstore,
    _vsum,
    kernel_tanh,
    tanh_constants,
)
from .base import Engine, SGDProblem, SGDState, require_W2_only

__all__ = [
    "SIMD_SOURCE_SHA256",
    "TILE_STEPS",
    "UNIT_MEMBERS",
    "VECTOR_BYTES",
    "NumbaEngine",
    "kernel_tanh",
    "tanh_constants",
    "work_units",
]

# Numba keys the cache of a kernel on the contents of the file that defines it,
# not of _simd.py, which the kernel compiles in: keeping the SHA-256 of that
# file here (a test checks it) makes every change there a change here, so the
# cached machine code is rebuilt.
SIMD_SOURCE_SHA256 = "5e0b95989574a4731893dc7fec6e116384463c8effeb08ae77cccb3b460bc373"

logger = logging.getLogger(__name__)

# Steps whose minibatch rows are gathered into one contiguous buffer at a time.
TILE_STEPS = 128

# Most members in one work unit (one stream, trained by one thread in turn).
UNIT_MEMBERS = 32


class NumbaEngine(Engine):
    """Per-member fused SGD kernel compiled with Numba, parallel over members.

    Examples
    --------
    >>> from phasearray.engines import get_engine
    >>> get_engine("numba").name
    'numba'
    """

    name: ClassVar[str] = "numba"

    @staticmethod
    def is_available() -> bool:
        """Whether Numba imports here (it is a core dependency)."""
        try:
            import numba  # noqa: F401
        except ImportError:
            return False
        return True

    def start(
        self,
        problem: SGDProblem,
        W2: np.ndarray,
        trained: dict[str, np.ndarray] | None = None,
    ) -> SGDState:
        """Host copies of the block's arrays, C-contiguous, in ``problem.dtype``."""
        require_W2_only(problem, self.name)
        state = super().start(problem, W2)
        state.arrays = {k: np.ascontiguousarray(v) for k, v in state.arrays.items()}
        state.W2 = np.ascontiguousarray(state.W2)
        return state

    def _run_chunk(self, state: SGDState, indices: np.ndarray) -> None:
        arrays = self._contiguous(state)
        if not state.W2.flags.c_contiguous:
            raise ValueError(
                "state.W2 must be C-contiguous to be updated in place by the numba "
                "engine; make the state with NumbaEngine.start"
            )
        units = work_units(arrays["member_stream"], numba.get_num_threads())
        logger.debug(
            "numba: %d steps of %d members in %d units",
            indices.shape[1],
            state.W2.shape[0],
            units[0].size,
        )
        # Units differ in size: hand them to the threads one at a time.
        with numba.parallel_chunksize(1):
            _sgd_chunk(
                state.W2,
                arrays["phi1"],
                arrays["y"],
                arrays["W3"],
                arrays["step_size"],
                np.ascontiguousarray(indices, dtype=np.int64),
                *units,
                ACTIVATION_CODES[state.problem.activation],
                *tanh_constants(state.W2.dtype),
            )

    def train_observables(self, state: SGDState) -> tuple[np.ndarray, np.ndarray]:
        """Training loss L and gradient norm |∇_{W2} L|_F of every member.

        The quantities of :func:`phasearray.observables.loss_and_gradient`,
        from the checkpoint kernel of
        :func:`phasearray.engines.fused_observables.train_observables`.

        Returns
        -------
        train_loss, grad_norm : dims (M,), in ``problem.dtype``
        """
        arrays = self._contiguous(state)
        with numba.parallel_chunksize(1):
            return fused_observables.train_observables(
                np.ascontiguousarray(state.W2),
                arrays["phi1"],
                arrays["y"],
                arrays["W3"],
                work_units(arrays["member_stream"], numba.get_num_threads()),
                ACTIVATION_CODES[state.problem.activation],
                tanh_constants(state.W2.dtype),
            )

    def test_observables(
        self, state: SGDState, test: dict[str, Any]
    ) -> dict[str, np.ndarray]:
        """Test loss, feature overlap and alignment of every member, fused.

        See :func:`phasearray.engines.fused_observables.test_observables`.

        Returns
        -------
        dict of str to numpy.ndarray
            ``test_loss``, ``feature_overlap``, ``alignment``, dims (M,), in
            ``problem.dtype``.
        """
        arrays = self._contiguous(state)
        dtype = state.W2.dtype
        with numba.parallel_chunksize(1):
            return fused_observables.test_observables(
                np.ascontiguousarray(state.W2),
                np.ascontiguousarray(test["phi1"], dtype=dtype),
                np.ascontiguousarray(test["y"], dtype=dtype),
                arrays["W3"],
                np.ascontiguousarray(test["phi2_initial"], dtype=dtype),
                work_units(arrays["member_stream"], numba.get_num_threads()),
                ACTIVATION_CODES[state.problem.activation],
                tanh_constants(dtype),
            )

    @staticmethod
    def _contiguous(state: SGDState) -> dict[str, np.ndarray]:
        """The state's arrays in C order, as the kernels index them flat."""
        return {k: np.ascontiguousarray(v) for k, v in state.arrays.items()}


# --- the kernel -----------------------------------------------------------------
#
# Per member, W2 is held transposed and padded: WT[i * n2p + j] = W2[j, i] for
# j < n2 and 0 for n2 ≤ j < n2p, n2 rounded up to nv whole vectors; padded
# lanes stay zero for a finite model and never reach the real ones. Per step,
# H = φ(z), P = φ'(z) and D = δ are (B, n2p) buffers and E = ŷ − y is (B, n3);
# a unit's tile holds the gathered φ1 rows as (step, B, n1) and y as (step, B, n3).
# ``dims`` is (n1, n2p, nv, n3, B).


@njit(inline="always")
def _forward(WT, X, x0, H, P, dims, code, tables):
    """H[b, :] = φ(W2 φ1_b) and P[b, :] = φ'(W2 φ1_b) for the B rows from x0.

    Four samples share each pass over W2ᵀ (independent accumulators keep the
    adders busy); every z_bj is the sum over ascending i on either path, and
    φ is applied while z is still in registers.
    """
    n1, n2p, nv, _, B = dims
    for v in range(nv):
        jv = v * _lanes(WT)
        b = 0
        while b + 4 <= B:
            _forward_four(
                WT, X, x0 + b * n1, H, P, b * n2p + jv, jv, dims, code, tables
            )
            b += 4
        while b < B:
            row = x0 + b * n1
            z = _vload(WT, jv) * _vsplat(_item(X, row))
            for i in range(1, n1):
                z = z + _vload(WT, i * n2p + jv) * _vsplat(_item(X, row + i))
            _activate(z, H, P, b * n2p + jv, code, tables)
            b += 1


@njit(inline="always")
def _forward_four(WT, X, row, H, P, start, jv, dims, code, tables):
    """:func:`_forward` for lanes jv… of the four samples whose rows start at row."""
    n1, n2p = dims[0], dims[1]
    w = _vload(WT, jv)
    z0 = w * _vsplat(_item(X, row))
    z1 = w * _vsplat(_item(X, row + n1))
    z2 = w * _vsplat(_item(X, row + 2 * n1))
    z3 = w * _vsplat(_item(X, row + 3 * n1))
    for i in range(1, n1):
        w = _vload(WT, i * n2p + jv)
        z0 = z0 + w * _vsplat(_item(X, row + i))
        z1 = z1 + w * _vsplat(_item(X, row + n1 + i))
        z2 = z2 + w * _vsplat(_item(X, row + 2 * n1 + i))
        z3 = z3 + w * _vsplat(_item(X, row + 3 * n1 + i))
    _activate(z0, H, P, start, code, tables)
    _activate(z1, H, P, start + n2p, code, tables)
    _activate(z2, H, P, start + 2 * n2p, code, tables)
    _activate(z3, H, P, start + 3 * n2p, code, tables)


@njit
def _activate(z, H, P, start, code, tables):
    """Store φ(z) in H and φ'(z) in P from ``start`` on (see _simd._activation)."""
    h, p = _activation(z, code, tables, False)
    _vstore(H, start, h)
    _vstore(P, start, p)


@njit(inline="always")
def _activate_four(z0, z1, z2, z3, H, P, start, stride, code, tables):
    """:func:`_activate` of four vectors, stored from start + b·stride, b < 4.

    φ is evaluated on the four joined into one vector, so that the long chain
    of dependent operations of tanh runs four times side by side; every lane
    gets the same operations as from :func:`_activate`. φ comes from
    :func:`~phasearray.engines._simd._activation`, which takes no arrays: where
    a branch of an inlined function passes arrays to a call, Numba keeps their
    reference counting, at a cost of atomic increments in every step.
    """
    h, p = _activation(_vjoin(_vjoin(z0, z1), _vjoin(z2, z3)), code, tables, False)
    _vstore(H, start, _vlow(_vlow(h)))
    _vstore(H, start + stride, _vhigh(_vlow(h)))
    _vstore(H, start + 2 * stride, _vlow(_vhigh(h)))
    _vstore(H, start + 3 * stride, _vhigh(_vhigh(h)))
    _vstore(P, start, _vlow(_vlow(p)))
    _vstore(P, start + stride, _vhigh(_vlow(p)))
    _vstore(P, start + 2 * stride, _vlow(_vhigh(p)))
    _vstore(P, start + 3 * stride, _vhigh(_vhigh(p)))


@njit
def _delta(H, P, V, Y, y0, E, D, dims):
    """E[b] = W3 h_b − y_b, then D[b, :] = (W3ᵀ E[b]) ⊙ φ'(z_b)."""
    _, n2p, nv, n3, B = dims
    lanes = _lanes(H)
    for b in range(B):
        for o in range(n3):
            acc = _vload(H, b * n2p) * _vload(V, o * n2p)
            for v in range(1, nv):
                jv = v * lanes
                acc = acc + _vload(H, b * n2p + jv) * _vload(V, o * n2p + jv)
            E[b * n3 + o] = _vsum(acc) - _item(Y, y0 + b * n3 + o)
    for b in range(B):
        for v in range(nv):
            jv = v * lanes
            acc = _vsplat(E[b * n3]) * _vload(V, jv)
            for o in range(1, n3):
                acc = acc + _vsplat(E[b * n3 + o]) * _vload(V, o * n2p + jv)
            _vstore(D, b * n2p + jv, acc * _vload(P, b * n2p + jv))


@njit(inline="always")
def _update(WT, D, X, x0, step, dims):
    """W2ᵀ[i, :] −= (ε/|B|) Σ_b φ1_bi δ_b, the sum over ascending b."""
    n1, n2p, nv, _, B = dims
    if B == 4:
        _update_four(WT, D, X, x0, step, dims)
        return
    for i in range(n1):
        for v in range(nv):
            jv = v * _lanes(WT)
            g = _vload(D, jv) * _vsplat(_item(X, x0 + i))
            for b in range(1, B):
                g = g + _vload(D, b * n2p + jv) * _vsplat(_item(X, x0 + b * n1 + i))
            w = _vload(WT, i * n2p + jv) - _vsplat(step) * g
            _vstore(WT, i * n2p + jv, w)


@njit(inline="always")
def _update_four(WT, D, X, x0, step, dims):
    """:func:`_update` for |B| = 4, holding the four δ vectors in registers."""
    n1, n2p, nv = dims[0], dims[1], dims[2]
    for v in range(nv):
        jv = v * _lanes(WT)
        d0 = _vload(D, jv)
        d1 = _vload(D, n2p + jv)
        d2 = _vload(D, 2 * n2p + jv)
        d3 = _vload(D, 3 * n2p + jv)
        for i in range(n1):
            g = d0 * _vsplat(_item(X, x0 + i)) + d1 * _vsplat(_item(X, x0 + n1 + i))
            g = g + d2 * _vsplat(_item(X, x0 + 2 * n1 + i))
            g = g + d3 * _vsplat(_item(X, x0 + 3 * n1 + i))
            w = _vload(WT, i * n2p + jv) - _vsplat(step) * g
            _vstore(WT, i * n2p + jv, w)


# --- several members at once -----------------------------------------------------
#
# Where |B| = 4, n3 = 1 and nv ≤ 2 (the common case), a unit trains two (nv = 2)
# or four (nv = 1) of its members side by side: their minibatches are the same,
# so each broadcast of φ1 serves four vector columns, and the four columns'
# chains of dependent operations overlap. A column is one vector of lanes of
# one member's W2ᵀ: w is its offset in the unit's WT buffer (u · n1 · n2p + j)
# and h its offset in the H, P and D buffers, which hold one (B, n2p) slot per
# member (slot · B · n2p + j). Each column gets exactly the operations of the
# one-member code above, in the same order, so the results are bit-identical.


@njit(inline="always")
def _forward_cols4(WT, w, H, P, h, X, row, dims, code, tables):
    """:func:`_forward_four` for the four columns at offsets w (in WT) and h."""
    n1, n2p = dims[0], dims[1]
    w0, w1, w2, w3 = w
    x0 = _vsplat(_item(X, row))
    x1 = _vsplat(_item(X, row + n1))
    x2 = _vsplat(_item(X, row + 2 * n1))
    x3 = _vsplat(_item(X, row + 3 * n1))
    wa, wb, wc, wd = _vload(WT, w0), _vload(WT, w1), _vload(WT, w2), _vload(WT, w3)
    a0, a1, a2, a3 = wa * x0, wa * x1, wa * x2, wa * x3
    b0, b1, b2, b3 = wb * x0, wb * x1, wb * x2, wb * x3
    c0, c1, c2, c3 = wc * x0, wc * x1, wc * x2, wc * x3
    d0, d1, d2, d3 = wd * x0, wd * x1, wd * x2, wd * x3
    for i in range(1, n1):
        x0 = _vsplat(_item(X, row + i))
        x1 = _vsplat(_item(X, row + n1 + i))
        x2 = _vsplat(_item(X, row + 2 * n1 + i))
        x3 = _vsplat(_item(X, row + 3 * n1 + i))
        r = i * n2p
        wa, wb = _vload(WT, w0 + r), _vload(WT, w1 + r)
        wc, wd = _vload(WT, w2 + r), _vload(WT, w3 + r)
        a0, a1, a2, a3 = a0 + wa * x0, a1 + wa * x1, a2 + wa * x2, a3 + wa * x3
        b0, b1, b2, b3 = b0 + wb * x0, b1 + wb * x1, b2 + wb * x2, b3 + wb * x3
        c0, c1, c2, c3 = c0 + wc * x0, c1 + wc * x1, c2 + wc * x2, c3 + wc * x3
        d0, d1, d2, d3 = d0 + wd * x0, d1 + wd * x1, d2 + wd * x2, d3 + wd * x3
    _activate_four(a0, a1, a2, a3, H, P, h[0], n2p, code, tables)
    _activate_four(b0, b1, b2, b3, H, P, h[1], n2p, code, tables)
    _activate_four(c0, c1, c2, c3, H, P, h[2], n2p, code, tables)
    _activate_four(d0, d1, d2, d3, H, P, h[3], n2p, code, tables)


@njit(inline="always")
def _forward_cols2(WT, w, H, P, h, X, row, dims, code, tables):
    """:func:`_forward_cols4` for two columns."""
    n1, n2p = dims[0], dims[1]
    w0, w1 = w
    x0 = _vsplat(_item(X, row))
    x1 = _vsplat(_item(X, row + n1))
    x2 = _vsplat(_item(X, row + 2 * n1))
    x3 = _vsplat(_item(X, row + 3 * n1))
    wa, wb = _vload(WT, w0), _vload(WT, w1)
    a0, a1, a2, a3 = wa * x0, wa * x1, wa * x2, wa * x3
    b0, b1, b2, b3 = wb * x0, wb * x1, wb * x2, wb * x3
    for i in range(1, n1):
        x0 = _vsplat(_item(X, row + i))
        x1 = _vsplat(_item(X, row + n1 + i))
        x2 = _vsplat(_item(X, row + 2 * n1 + i))
        x3 = _vsplat(_item(X, row + 3 * n1 + i))
        wa, wb = _vload(WT, w0 + i * n2p), _vload(WT, w1 + i * n2p)
        a0, a1, a2, a3 = a0 + wa * x0, a1 + wa * x1, a2 + wa * x2, a3 + wa * x3
        b0, b1, b2, b3 = b0 + wb * x0, b1 + wb * x1, b2 + wb * x2, b3 + wb * x3
    _activate_four(a0, a1, a2, a3, H, P, h[0], n2p, code, tables)
    _activate_four(b0, b1, b2, b3, H, P, h[1], n2p, code, tables)


@njit(inline="always")
def _delta_four(H, P, D, h, V, Y, y0, dims, nv):
    """:func:`_delta` for |B| = 4 and n3 = 1 on the member slot from h.

    Straight-line, with ``nv`` (1 or 2) a constant at the call site: a call of
    the generic :func:`_delta`, with its short runtime loops, costs about as
    much as its arithmetic. E is not kept (SGD does not need it).
    """
    n2p, L = dims[1], _lanes(H)
    v0 = _vload(V, 0)
    v1 = _vload(V, L) if nv == 2 else v0
    for b in range(4):
        r = h + b * n2p
        acc = _vload(H, r) * v0
        if nv == 2:
            acc = acc + _vload(H, r + L) * v1
        e = _vsplat(_vsum(acc) - _item(Y, y0 + b))
        _vstore(D, r, (e * v0) * _vload(P, r))
        if nv == 2:
            _vstore(D, r + L, (e * v1) * _vload(P, r + L))


@njit(inline="always")
def _update_cols4(WT, w, D, h, step, X, x0, dims):
    """:func:`_update_four` for the four columns at offsets w and h, steps ``step``."""
    n1, n2p = dims[0], dims[1]
    w0, w1, w2, w3 = w
    a0, a1 = _vload(D, h[0]), _vload(D, h[0] + n2p)
    a2, a3 = _vload(D, h[0] + 2 * n2p), _vload(D, h[0] + 3 * n2p)
    b0, b1 = _vload(D, h[1]), _vload(D, h[1] + n2p)
    b2, b3 = _vload(D, h[1] + 2 * n2p), _vload(D, h[1] + 3 * n2p)
    c0, c1 = _vload(D, h[2]), _vload(D, h[2] + n2p)
    c2, c3 = _vload(D, h[2] + 2 * n2p), _vload(D, h[2] + 3 * n2p)
    d0, d1 = _vload(D, h[3]), _vload(D, h[3] + n2p)
    d2, d3 = _vload(D, h[3] + 2 * n2p), _vload(D, h[3] + 3 * n2p)
    sa, sb = _vsplat(step[0]), _vsplat(step[1])
    sc, sd = _vsplat(step[2]), _vsplat(step[3])
    for i in range(n1):
        x0s = _vsplat(_item(X, x0 + i))
        x1s = _vsplat(_item(X, x0 + n1 + i))
        x2s = _vsplat(_item(X, x0 + 2 * n1 + i))
        x3s = _vsplat(_item(X, x0 + 3 * n1 + i))
        ga, gb = a0 * x0s + a1 * x1s, b0 * x0s + b1 * x1s
        gc, gd = c0 * x0s + c1 * x1s, d0 * x0s + d1 * x1s
        ga, gb, gc, gd = ga + a2 * x2s, gb + b2 * x2s, gc + c2 * x2s, gd + d2 * x2s
        ga, gb, gc, gd = ga + a3 * x3s, gb + b3 * x3s, gc + c3 * x3s, gd + d3 * x3s
        r = i * n2p
        _vstore(WT, w0 + r, _vload(WT, w0 + r) - sa * ga)
        _vstore(WT, w1 + r, _vload(WT, w1 + r) - sb * gb)
        _vstore(WT, w2 + r, _vload(WT, w2 + r) - sc * gc)
        _vstore(WT, w3 + r, _vload(WT, w3 + r) - sd * gd)


@njit(inline="always")
def _update_cols2(WT, w, D, h, step, X, x0, dims):
    """:func:`_update_cols4` for two columns."""
    n1, n2p = dims[0], dims[1]
    w0, w1 = w
    a0, a1 = _vload(D, h[0]), _vload(D, h[0] + n2p)
    a2, a3 = _vload(D, h[0] + 2 * n2p), _vload(D, h[0] + 3 * n2p)
    b0, b1 = _vload(D, h[1]), _vload(D, h[1] + n2p)
    b2, b3 = _vload(D, h[1] + 2 * n2p), _vload(D, h[1] + 3 * n2p)
    sa, sb = _vsplat(step[0]), _vsplat(step[1])
    for i in range(n1):
        x0s = _vsplat(_item(X, x0 + i))
        x1s = _vsplat(_item(X, x0 + n1 + i))
        x2s = _vsplat(_item(X, x0 + 2 * n1 + i))
        x3s = _vsplat(_item(X, x0 + 3 * n1 + i))
        ga, gb = a0 * x0s + a1 * x1s, b0 * x0s + b1 * x1s
        ga, gb = ga + a2 * x2s, gb + b2 * x2s
        ga, gb = ga + a3 * x3s, gb + b3 * x3s
        r = i * n2p
        _vstore(WT, w0 + r, _vload(WT, w0 + r) - sa * ga)
        _vstore(WT, w1 + r, _vload(WT, w1 + r) - sb * gb)


@njit
def _sgd_steps_cols4(WT, w, h, step, V, X, Y, steps, dims, code, tables, HPD):
    """Run ``steps`` SGD steps of the members of four columns (see above).

    The columns are those of two members where nv = 2, of four where nv = 1;
    ``step`` is the ε/|B| of each column's member.
    """
    n1, _, nv, _, B = dims
    H, P, D = HPD
    if nv == 2:
        for k in range(steps):
            _forward_cols4(WT, w, H, P, h, X, k * B * n1, dims, code, tables)
            _delta_four(H, P, D, h[0], V, Y, k * B, dims, 2)
            _delta_four(H, P, D, h[2], V, Y, k * B, dims, 2)
            _update_cols4(WT, w, D, h, step, X, k * B * n1, dims)
    else:
        for k in range(steps):
            _forward_cols4(WT, w, H, P, h, X, k * B * n1, dims, code, tables)
            _delta_four(H, P, D, h[0], V, Y, k * B, dims, 1)
            _delta_four(H, P, D, h[1], V, Y, k * B, dims, 1)
            _delta_four(H, P, D, h[2], V, Y, k * B, dims, 1)
            _delta_four(H, P, D, h[3], V, Y, k * B, dims, 1)
            _update_cols4(WT, w, D, h, step, X, k * B * n1, dims)


@njit
def _sgd_steps_cols2(WT, w, h, step, V, X, Y, steps, dims, code, tables, HPD):
    """:func:`_sgd_steps_cols4` for two columns: one member (nv = 2) or two."""
    n1, _, nv, _, B = dims
    H, P, D = HPD
    if nv == 2:
        for k in range(steps):
            _forward_cols2(WT, w, H, P, h, X, k * B * n1, dims, code, tables)
            _delta_four(H, P, D, h[0], V, Y, k * B, dims, 2)
            _update_cols2(WT, w, D, h, step, X, k * B * n1, dims)
    else:
        for k in range(steps):
            _forward_cols2(WT, w, H, P, h, X, k * B * n1, dims, code, tables)
            _delta_four(H, P, D, h[0], V, Y, k * B, dims, 1)
            _delta_four(H, P, D, h[1], V, Y, k * B, dims, 1)
            _update_cols2(WT, w, D, h, step, X, k * B * n1, dims)


@njit
def _sgd_steps_grouped(WT, V, X, Y, steps, steps_u, dims, code, tables, HPD):
    """Run ``steps`` SGD steps of the members of a unit, in groups of columns.

    ``steps_u`` is the ε/|B| of each member, in the order of WT's rows.
    Returns how many members (from the first) were trained: all but the last
    of an odd count where nv = 1, which is left to :func:`_sgd_steps`.
    """
    n1, n2p, nv, _, B = dims
    S, L, slot = n1 * n2p, _lanes(WT), B * n2p
    count = steps_u.size
    u = 0
    if nv == 2:
        while u + 2 <= count:
            w = (u * S, u * S + L, (u + 1) * S, (u + 1) * S + L)
            h = (0, L, slot, slot + L)
            sa, sb = steps_u[u], steps_u[u + 1]
            step = (sa, sa, sb, sb)
            _sgd_steps_cols4(WT, w, h, step, V, X, Y, steps, dims, code, tables, HPD)
            u += 2
        if u < count:
            w2, h2, step2 = (u * S, u * S + L), (0, L), (steps_u[u], steps_u[u])
            _sgd_steps_cols2(WT, w2, h2, step2, V, X, Y, steps, dims, code, tables, HPD)
            u += 1
    else:
        while u + 4 <= count:
            w = (u * S, (u + 1) * S, (u + 2) * S, (u + 3) * S)
            h = (0, slot, 2 * slot, 3 * slot)
            step = (steps_u[u], steps_u[u + 1], steps_u[u + 2], steps_u[u + 3])
            _sgd_steps_cols4(WT, w, h, step, V, X, Y, steps, dims, code, tables, HPD)
            u += 4
        while u + 2 <= count:
            w2, h2 = (u * S, (u + 1) * S), (0, slot)
            step2 = (steps_u[u], steps_u[u + 1])
            _sgd_steps_cols2(WT, w2, h2, step2, V, X, Y, steps, dims, code, tables, HPD)
            u += 2
    return u


@njit
def _sgd_steps(WT, V, X, Y, steps, step, dims, code, tables, scratch):
    """Run ``steps`` SGD steps of one member on the rows of a gathered tile."""
    n1, _, _, n3, B = dims
    H, P, D, E = scratch
    for k in range(steps):
        _forward(WT, X, k * B * n1, H, P, dims, code, tables)
        _delta(H, P, V, Y, k * B * n3, E, D, dims)
        _update(WT, D, X, k * B * n1, step, dims)


@njit
def _gather(phi1, y, indices, t0, steps, X, Y):
    """Copy the minibatch rows of steps t0 … t0 + steps − 1 of one stream.

    X[k, b, :] = φ1[indices[t0 + k, b], :] and Y likewise, flattened.
    """
    n1, n3, B = phi1.shape[1], y.shape[1], indices.shape[1]
    for k in range(steps):
        for b in range(B):
            r = indices[t0 + k, b]
            row = k * B + b
            X[row * n1 : (row + 1) * n1] = phi1[r]
            Y[row * n3 : (row + 1) * n3] = y[r]


@njit
def _train_unit(W2, phi1, y, W3, step_size, indices, members, dims, code, tables):
    """Advance the members of one stream through every step of ``indices``.

    The members' W2ᵀ stay in local buffers for the whole chunk; the rows of
    each tile of :data:`TILE_STEPS` steps are gathered once for all of them.
    """
    n1, n2p, nv, n3, B = dims
    K, dtype = indices.shape[0], W2.dtype
    WT = np.empty((members.size, n1 * n2p), dtype)
    for u in range(members.size):
        _padded_transpose(W2[members[u]], WT[u])
    V = np.empty(n3 * n2p, dtype)
    _padded_transpose(W3.T, V)
    X = np.empty(TILE_STEPS * B * n1, dtype)
    Y = np.empty(TILE_STEPS * B * n3, dtype)
    scratch = (
        np.empty(B * n2p, dtype),
        np.empty(B * n2p, dtype),
        np.empty(B * n2p, dtype),
        np.empty(B * n3, dtype),
    )
    grouped = B == 4 and nv <= 2 and n3 == 1
    slots = 4 * B * n2p if grouped else 0
    HPD = (np.empty(slots, dtype), np.empty(slots, dtype), np.empty(slots, dtype))
    steps_u = step_size[members]

    for t0 in range(0, K, TILE_STEPS):
        steps = min(TILE_STEPS, K - t0)
        _gather(phi1, y, indices, t0, steps, X, Y)
        u = 0
        if grouped:
            u = _sgd_steps_grouped(WT, V, X, Y, steps, steps_u, dims, code, tables, HPD)
        while u < members.size:
            step = step_size[members[u]]
            _sgd_steps(WT[u], V, X, Y, steps, step, dims, code, tables, scratch)
            u += 1

    for u in range(members.size):
        W2[members[u]] = WT[u].reshape(n1, n2p)[:, : W2.shape[1]].T


@njit(parallel=True, fastmath=False, cache=True)
def _sgd_chunk(
    W2,
    phi1,
    y,
    W3,
    step_size,
    indices,
    unit_stream,
    unit_start,
    unit_members,
    code,
    scalars,
    even,
    odd,
):
    """Advance every member through the steps of ``indices``, in place.

    Parameters
    ----------
    W2 : (M, n2, n1), float32 or float64, C-contiguous
    phi1 : (S, n_train, n1); y : (S, n_train, n3); W3 : (S, n3, n2)
    step_size : (M,)
        ε/|B| of each member.
    indices : (S, steps, B) int64
        Minibatch rows per stream and step.
    unit_stream, unit_start, unit_members : int64 arrays
        Work units, see :func:`work_units`.
    code : int
        Activation, see :data:`ACTIVATION_CODES`.
    scalars, even, odd : tuples
        From :func:`tanh_constants`, in the dtype of W2.
    """
    dims = (*_layout(W2, W3), indices.shape[2])
    for u in prange(unit_stream.size):
        s, members = _unit(unit_stream, unit_start, unit_members, u)
        _train_unit(
            W2,
            phi1[s],
            y[s],
            W3[s],
            step_size,
            indices[s],
            members,
            dims,
            code,
            (scalars, even, odd),
        )


def work_units(
    member_stream: np.ndarray, n_threads: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split the members into units of one stream each, for the threads.

    A unit gathers its stream's minibatch rows once per tile for all its
    members, so units are as large as possible while leaving about four
    units per thread for load balance (at most :data:`UNIT_MEMBERS` members).

    Returns
    -------
    unit_stream : (U,) int64
        Stream of each unit.
    unit_start : (U + 1,) int64
        Unit u holds ``unit_members[unit_start[u]:unit_start[u + 1]]``.
    unit_members : (M,) int64
        Member indices, grouped by unit.
    """
    member_stream = np.asarray(member_stream, dtype=np.int64)
    size = int(np.clip(-(-member_stream.size // (4 * n_threads)), 1, UNIT_MEMBERS))
    streams, members = [], []
    for s in np.unique(member_stream):
        of_stream = np.flatnonzero(member_stream == s)
        for start in range(0, of_stream.size, size):
            streams.append(s)
            members.append(of_stream[start : start + size])
    unit_start = np.cumsum([0, *(m.size for m in members)])
    unit_members = np.concatenate(members) if members else np.empty(0, np.int64)
    return (
        np.asarray(streams, dtype=np.int64),
        unit_start.astype(np.int64),
        unit_members.astype(np.int64),
    )
