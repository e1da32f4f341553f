"""Fused CPU engine: one Numba kernel runs every step of a chunk, per model.

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
within 3 ulp of the exact value (NumPy's within about 1 ulp), so the engine
follows the NumPy reference to round-off wherever the dynamics does not
amplify it.

:meth:`NumbaEngine.train_observables` and :meth:`NumbaEngine.test_observables`
are the checkpoint kernels of :mod:`phasearray.engines.fused_observables`.

Compilation takes ~20 s per precision (plus ~10 s for the observables) the
first time; Numba caches the machine code next to this file (or in its user
cache directory), so later processes, Dask workers included, load it at once.
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
    _padded_transpose,
    _vload,
    _vsplat,
    _vstore,
    _vsum,
    kernel_tanh,
    tanh_constants,
)
from .base import Engine, SGDProblem, SGDState, require_W2_only

__all__ = [
    "TILE_STEPS",
    "UNIT_MEMBERS",
    "VECTOR_BYTES",
    "NumbaEngine",
    "kernel_tanh",
    "tanh_constants",
    "work_units",
]

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
    n1, n2p, _, n3, B = dims
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

    for t0 in range(0, K, TILE_STEPS):
        steps = min(TILE_STEPS, K - t0)
        _gather(phi1, y, indices, t0, steps, X, Y)
        for u in range(members.size):
            step = step_size[members[u]]
            _sgd_steps(WT[u], V, X, Y, steps, step, dims, code, tables, scratch)

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
    n2, n1 = W2.shape[1], W2.shape[2]
    nv = -(-n2 // _lanes(W2))
    dims = (n1, nv * _lanes(W2), nv, W3.shape[1], indices.shape[2])
    for u in prange(unit_stream.size):
        s = unit_stream[u]
        members = unit_members[unit_start[u] : unit_start[u + 1]]
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
