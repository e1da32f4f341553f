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

SIMD. Numba's loop vectoriser gives up on the short (16-wide) loops of this
problem and its SLP vectoriser is off, so the kernel spells its SIMD out: a
small vector type (:class:`_Vector`, 64 bytes: 8 float64 or 16 float32 lanes)
whose load, store, broadcast and arithmetic are written as LLVM IR. W2 is held
transposed, (n1, n2), so that a row is one or two vectors. Every operation is
a plain IEEE multiply, add, subtract or divide, never a fused multiply-add, so
a member's result depends on its own inputs only: it is bit-identical for any
split of the members into blocks, any number of threads and any resume point.

tanh is evaluated on vectors too, as −expm1(−2a)/(2 + expm1(−2a)) with a
Cody–Waite reduction and a polynomial (:func:`kernel_tanh`); it is within 3 ulp
of the exact value (NumPy's within about 1 ulp), so the engine follows the
NumPy reference to round-off wherever the dynamics does not amplify it.

:meth:`NumbaEngine.train_observables` reuses the same forward and backward
code for the training loss and gradient norm over the whole training set.

Compilation takes ~20 s per precision (plus ~7 s for the observables) the
first time; Numba caches the machine code next to this file (or in its user
cache directory), so later processes, Dask workers included, load it at once.
"""

from __future__ import annotations

import logging
import math
import operator
from typing import Any, ClassVar

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, models, overload, register_model

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

# Bytes of one SIMD vector of the kernel (AVX-512 width; LLVM splits it into
# two or four registers on CPUs with narrower ones).
VECTOR_BYTES = 64

# Steps whose minibatch rows are gathered into one contiguous buffer at a time.
TILE_STEPS = 128

# Most members in one work unit (one stream, trained by one thread in turn).
UNIT_MEMBERS = 32

# Integer codes of the activations inside the kernel.
ACTIVATION_CODES = {"tanh": 0, "relu": 1, "identity": 2}


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
        arrays = {k: np.ascontiguousarray(v) for k, v in state.arrays.items()}
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

        The same quantities as :func:`phasearray.observables.loss_and_gradient`,
        from the SGD kernel's own forward and backward passes over the training
        set, four samples at a time, per member and in parallel.

        Returns
        -------
        train_loss, grad_norm : dims (M,), in ``problem.dtype``
        """
        arrays = {k: np.ascontiguousarray(v) for k, v in state.arrays.items()}
        W2 = np.ascontiguousarray(state.W2)
        loss = np.empty(W2.shape[0], W2.dtype)
        grad_norm = np.empty(W2.shape[0], W2.dtype)
        units = work_units(arrays["member_stream"], numba.get_num_threads())
        with numba.parallel_chunksize(1):
            _train_observables(  # type: ignore[call-arg]  # Numba's stub: no args
                W2,
                arrays["phi1"],
                arrays["y"],
                arrays["W3"],
                *units,
                ACTIVATION_CODES[state.problem.activation],
                *tanh_constants(W2.dtype),
                loss,
                grad_norm,
            )
        return loss, grad_norm


# --- SIMD vectors in Numba ------------------------------------------------------


class _Vector(types.Type):
    """One SIMD register of ``dtype`` lanes (float32 or float64)."""

    def __init__(self, dtype: types.Float) -> None:
        self.dtype = dtype
        self.width = VECTOR_BYTES // (dtype.bitwidth // 8)
        super().__init__(name=f"Vector({dtype}x{self.width})")


@register_model(_Vector)
class _VectorModel(models.PrimitiveModel):
    def __init__(self, dmm: Any, fe_type: _Vector) -> None:
        element = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(element, fe_type.width))


def _contiguous(array: Any) -> bool:
    """Whether a Numba type is a C-contiguous float32 or float64 array."""
    return (
        isinstance(array, types.Array)
        and array.layout == "C"
        and array.dtype in (types.float32, types.float64)
    )


def _vector_pointer(context, builder, array_type, array, start, vector_type):
    """Address of element ``start`` of a contiguous array, as a vector pointer."""
    data = context.make_array(array_type)(context, builder, array).data
    pointer = builder.gep(data, [start])
    return builder.bitcast(pointer, context.get_value_type(vector_type).as_pointer())


@intrinsic
def _vload(typingctx, array, start):
    """The vector of elements ``start, start + 1, …`` of a C-contiguous array."""
    if not _contiguous(array):
        return None
    vector = _Vector(array.dtype)

    def codegen(context, builder, sig, args):
        pointer = _vector_pointer(context, builder, sig.args[0], *args, vector)
        return builder.load(pointer, align=vector.dtype.bitwidth // 8)

    return vector(array, start), codegen


@intrinsic
def _vstore(typingctx, array, start, value):
    """Write ``value`` to elements ``start, start + 1, …`` of a C-contiguous array."""
    if not (_contiguous(array) and value == _Vector(array.dtype)):
        return None

    def codegen(context, builder, sig, args):
        pointer = _vector_pointer(
            context, builder, sig.args[0], args[0], args[1], sig.args[2]
        )
        builder.store(args[2], pointer, align=sig.args[2].dtype.bitwidth // 8)

    return types.void(array, start, value), codegen


@intrinsic
def _vsplat(typingctx, x):
    """A vector with every lane equal to the scalar ``x``."""
    vector = _Vector(x)

    def codegen(context, builder, sig, args):
        undefined = ir.Constant(context.get_value_type(vector), ir.Undefined)
        first = builder.insert_element(undefined, args[0], ir.IntType(32)(0))
        mask = ir.Constant(
            ir.VectorType(ir.IntType(32), vector.width), [0] * vector.width
        )
        return builder.shuffle_vector(first, first, mask)

    return vector(x), codegen


def _lane_wise(method: str) -> Any:
    """An intrinsic applying ``builder.<method>`` to two vectors of one type."""

    @intrinsic
    def apply(typingctx, a, b):
        if not (isinstance(a, _Vector) and a == b):
            return None

        def codegen(context, builder, sig, args):
            return getattr(builder, method)(*args)

        return a(a, b), codegen

    return apply


_vadd, _vsub, _vmul, _vdiv = (_lane_wise(m) for m in ("fadd", "fsub", "fmul", "fdiv"))


def _register_operator(python_operator: Any, implementation: Any) -> None:
    @overload(python_operator)
    def vector_operator(a, b):
        if isinstance(a, _Vector) and isinstance(b, _Vector):
            return lambda a, b: implementation(a, b)
        return None


for _op, _impl in (
    (operator.add, _vadd),
    (operator.sub, _vsub),
    (operator.mul, _vmul),
    (operator.truediv, _vdiv),
):
    _register_operator(_op, _impl)


def _llvm_math(builder, name, args):
    """Call the LLVM intrinsic ``llvm.<name>`` on vectors."""
    vector = args[0].type
    suffix = "f64" if isinstance(vector.element, ir.DoubleType) else "f32"
    signature = ir.FunctionType(vector, [a.type for a in args])
    function = cgutils.get_or_insert_function(
        builder.module, signature, f"llvm.{name}.v{vector.count}{suffix}"
    )
    return builder.call(function, args)


@intrinsic
def _lanes(typingctx, x):
    """Lanes of a vector of the dtype of ``x`` (array or scalar), a constant."""
    width = _Vector(x.dtype if isinstance(x, types.Array) else x).width

    def codegen(context, builder, sig, args):
        return context.get_constant(types.intp, width)

    return types.intp(x), codegen


@intrinsic
def _item(typingctx, array, index):
    """``array.flat[index]`` of a C-contiguous array, with no negative wraparound."""
    if not _contiguous(array):
        return None

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        return builder.load(builder.gep(data, [args[1]]))

    return array.dtype(array, index), codegen


@intrinsic
def _vsum(typingctx, a):
    """Sum of the lanes of a vector, by halving: ((l0 + l4) + (l2 + l6)) + …"""
    if not isinstance(a, _Vector):
        return None

    def codegen(context, builder, sig, args):
        value, half = args[0], a.width // 2
        while half >= 1:
            upper = [half + lane for lane in range(half)]
            mask = ir.Constant(ir.VectorType(ir.IntType(32), half), upper)
            lower = ir.Constant(ir.VectorType(ir.IntType(32), half), list(range(half)))
            value = builder.fadd(
                builder.shuffle_vector(value, value, lower),
                builder.shuffle_vector(value, value, mask),
            )
            half //= 2
        return builder.extract_element(value, ir.IntType(32)(0))

    return a.dtype(a), codegen


@intrinsic
def _vabs(typingctx, a):
    """|a| lane-wise."""
    if not isinstance(a, _Vector):
        return None

    def codegen(context, builder, sig, args):
        return _llvm_math(builder, "fabs", args)

    return a(a), codegen


@intrinsic
def _vcopysign(typingctx, magnitude, sign):
    """|magnitude| with the sign bit of ``sign``, lane-wise."""
    if not (isinstance(magnitude, _Vector) and magnitude == sign):
        return None

    def codegen(context, builder, sig, args):
        return _llvm_math(builder, "copysign", args)

    return magnitude(magnitude, sign), codegen


@intrinsic
def _vwhere_greater(typingctx, a, b, x, y):
    """``x`` where a > b, else ``y`` (so ``y`` where either is NaN), lane-wise."""
    if not (isinstance(a, _Vector) and a == b == x == y):
        return None

    def codegen(context, builder, sig, args):
        greater = builder.fcmp_ordered(">", args[0], args[1])
        return builder.select(greater, args[2], args[3])

    return a(a, b, x, y), codegen


@intrinsic
def _vexp2_integer(typingctx, k):
    """2**k for integer-valued ``k`` in the normal exponent range, exactly.

    Writes k + bias into the exponent field of the float format.
    """
    if not isinstance(k, _Vector):
        return None

    def codegen(context, builder, sig, args):
        vector = args[0].type
        bits, bias, shift = (
            (64, 1023, 52)
            if isinstance(vector.element, ir.DoubleType)
            else (32, 127, 23)
        )
        integers = ir.VectorType(ir.IntType(bits), vector.count)
        n = builder.fptosi(args[0], integers)
        n = builder.add(n, ir.Constant(integers, [bias] * vector.count))
        n = builder.shl(n, ir.Constant(integers, [shift] * vector.count))
        return builder.bitcast(n, vector)

    return k(k), codegen


# --- tanh on vectors ------------------------------------------------------------

# Per precision: clamp beyond which tanh rounds to ±1, the round-to-integer
# constant 1.5·2^p, ln 2 split into a high part with trailing zero bits and a
# low part (Cody–Waite), and the degree of the Taylor polynomial of expm1 on
# |r| ≤ ln(2)/2 (truncation below half an ulp).
_TANH_FORMATS = {
    np.dtype(np.float64): (
        22.0,
        1.5 * 2.0**52,
        0.6931471803691238,
        1.9082149292705877e-10,
        13,
    ),
    np.dtype(np.float32): (10.0, 1.5 * 2.0**23, 0.693145751953125, 1.4286068e-06, 8),
}


def tanh_constants(dtype: Any) -> tuple[tuple[Any, ...], ...]:
    """Constants of the kernel's tanh in ``dtype``.

    Returns
    -------
    scalars : (clamp, 1/ln 2, round constant, ln2_hi, ln2_lo, 1, 2, −64)
    even, odd : the coefficients c_n = 1/(n + 1)! of expm1(r)/r = Σ c_n r^n
        with n even and n odd, highest first.
    """
    dtype = np.dtype(dtype)
    clamp, rounder, ln2_hi, ln2_lo, degree = _TANH_FORMATS[dtype]
    scalars = (clamp, 1 / math.log(2), rounder, ln2_hi, ln2_lo, 1.0, 2.0, -64.0)
    coefficients = [1 / math.factorial(n + 1) for n in range(degree)]
    even, odd = coefficients[0::2][::-1], coefficients[1::2][::-1]
    return tuple(tuple(map(dtype.type, c)) for c in (scalars, even, odd))


@njit
def _tanh(z, tables):
    """tanh of a vector, to ~3 ulp; ±inf → ±1, NaN → NaN.

    tanh a = −e/(2 + e) with e = expm1(−2a), a = |z|; e = 2^k p + (2^k − 1)
    with p = expm1(r), −2a = k ln 2 + r (Cody–Waite), and p = r Σ c_n r^n
    evaluated as two Horner chains in r² (even and odd n) to halve latency.
    """
    scalars, even, odd = tables
    clamp, inv_ln2, rounder, ln2_hi, ln2_lo, one, two, lowest = scalars
    a = _vabs(z)
    a = _vwhere_greater(a, _vsplat(clamp), _vsplat(clamp), a)
    x = _vsplat(lowest - lowest) - (a + a)

    # k = round(x / ln 2) by the add-and-subtract trick; r = x − k ln 2.
    k = (x * _vsplat(inv_ln2) + _vsplat(rounder)) - _vsplat(rounder)
    k = _vwhere_greater(k, _vsplat(lowest), k, _vsplat(one - one))
    r = (x - k * _vsplat(ln2_hi)) - k * _vsplat(ln2_lo)

    r2 = r * r
    p_even = _vsplat(even[0])
    for c in even[1:]:
        p_even = p_even * r2 + _vsplat(c)
    p_odd = _vsplat(odd[0])
    for c in odd[1:]:
        p_odd = p_odd * r2 + _vsplat(c)
    p = (p_even + r * p_odd) * r

    scale = _vexp2_integer(k)
    e = scale * p + (scale - _vsplat(one))
    return _vcopysign(e / (_vsplat(two) + e), z)


def kernel_tanh(z: np.ndarray) -> np.ndarray:
    """tanh of a 1-D float32 or float64 array, exactly as the kernel computes it.

    Examples
    --------
    >>> kernel_tanh(np.array([0.0, 1.0, np.inf]))
    array([0.        , 0.76159416, 1.        ])
    """
    z = np.asarray(z)
    lanes = VECTOR_BYTES // z.itemsize
    padded = np.zeros(-(-z.size // lanes) * lanes, z.dtype)
    padded[: z.size] = z
    return _tanh_lanes(padded, *tanh_constants(z.dtype))[: z.size]


@njit(cache=True)
def _tanh_lanes(z, scalars, even, odd):
    out = np.empty_like(z)
    for e in range(z.size // _lanes(z)):
        start = e * _lanes(z)
        _vstore(out, start, _tanh(_vload(z, start), (scalars, even, odd)))
    return out


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
    """Store φ(z) in H and φ'(z) in P from ``start`` on, as in activations.py.

    tanh' = 1 − h²; relu = max(z, 0) keeping NaN, relu' = [z > 0];
    identity' = 1.
    """
    one = _vsplat(tables[0][5])
    zero = one - one
    if code == 0:
        h = _tanh(z, tables)
        _vstore(H, start, h)
        _vstore(P, start, one - h * h)
    elif code == 1:
        _vstore(H, start, _vwhere_greater(zero, z, zero, z))
        _vstore(P, start, _vwhere_greater(z, zero, one, zero))
    else:
        _vstore(H, start, z)
        _vstore(P, start, one)


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
def _padded_transpose(matrix, out):
    """out[c * width + r] = matrix[r, c] for a (rows, cols) matrix; rest zero."""
    rows, cols = matrix.shape
    width = out.size // cols
    out[:] = 0
    for r in range(rows):
        for c in range(cols):
            out[c * width + r] = matrix[r, c]


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


@njit
def _observe_unit(W2, phi1, y, W3, members, dims, code, tables, loss, grad_norm):
    """L and |∇L|_F over the whole training set for the members of one stream.

    The training set is swept in batches of (up to) four samples; the gradient
    sum G = Σ_α δ_α φ1_αᵀ is accumulated with :func:`_update` at step −1.
    """
    n1, n2p, nv, n3, _ = dims
    n, n2, dtype = phi1.shape[0], W2.shape[1], W2.dtype
    X, Y = phi1.reshape(n * n1), y.reshape(n * n3)
    WT = np.empty(n1 * n2p, dtype)
    G = np.empty(n1 * n2p, dtype)
    V = np.empty(n3 * n2p, dtype)
    _padded_transpose(W3.T, V)
    H = np.empty(4 * n2p, dtype)
    P = np.empty(4 * n2p, dtype)
    D = np.empty(4 * n2p, dtype)
    E = np.empty(4 * n3, dtype)
    minus_one = -tables[0][5]

    for m in members:
        _padded_transpose(W2[m], WT)
        G[:] = 0
        total = 0.0
        for start in range(0, n, 4):
            batch = (n1, n2p, nv, n3, min(4, n - start))
            _forward(WT, X, start * n1, H, P, batch, code, tables)
            _delta(H, P, V, Y, start * n3, E, D, batch)
            for e in range(batch[4] * n3):
                total += E[e] * E[e]
            _update(G, D, X, start * n1, minus_one, batch)
        squares = 0.0
        for i in range(n1):
            for j in range(n2):
                squares += G[i * n2p + j] * G[i * n2p + j]
        loss[m] = 0.5 * total / n
        grad_norm[m] = np.sqrt(squares) / n


@njit(parallel=True, fastmath=False, cache=True)
def _train_observables(
    W2,
    phi1,
    y,
    W3,
    unit_stream,
    unit_start,
    unit_members,
    code,
    scalars,
    even,
    odd,
    loss,
    grad_norm,
):
    """Fill ``loss`` and ``grad_norm`` (M,) for every member; see _sgd_chunk."""
    n2, n1 = W2.shape[1], W2.shape[2]
    nv = -(-n2 // _lanes(W2))
    dims = (n1, nv * _lanes(W2), nv, W3.shape[1], 4)
    for u in prange(unit_stream.size):
        s = unit_stream[u]
        members = unit_members[unit_start[u] : unit_start[u + 1]]
        _observe_unit(
            W2,
            phi1[s],
            y[s],
            W3[s],
            members,
            dims,
            code,
            (scalars, even, odd),
            loss,
            grad_norm,
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
