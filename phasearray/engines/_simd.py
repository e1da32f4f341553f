"""SIMD vectors for Numba kernels, and tanh evaluated on them.

Numba's loop vectoriser gives up on the short (16-wide) loops of this problem
and its SLP vectoriser is off, so the CPU kernels spell their SIMD out: a small
vector type (:class:`_Vector`, :data:`VECTOR_BYTES` bytes: 8 float64 or 16
float32 lanes) whose load, store, broadcast and arithmetic are written as LLVM
IR. Plain ``+ - * /`` on vectors are single IEEE operations; :func:`_vfma` is
the one fused multiply-add, used only where a kernel says so.

tanh is evaluated on vectors as −expm1(−2a)/(2 + expm1(−2a)) with a Cody–Waite
reduction and a polynomial, in two variants: :func:`_tanh` with separate
multiplies and adds (the SGD kernel) and :func:`_tanh_fused`, whose polynomial
uses fused multiply-adds (the checkpoint kernels). Both are within 4 ulp of
the exact value.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, models, overload, register_model

__all__ = ["ACTIVATION_CODES", "VECTOR_BYTES", "kernel_tanh", "tanh_constants"]

# Bytes of one SIMD vector of the kernels (AVX-512 width; LLVM splits it into
# two or four registers on CPUs with narrower ones).
VECTOR_BYTES = 64

# Integer codes of the activations inside the kernels.
ACTIVATION_CODES = {"tanh": 0, "relu": 1, "identity": 2}


# --- SIMD vectors in Numba ------------------------------------------------------


class _Vector(types.Type):
    """``count`` SIMD registers (default one) of ``dtype`` lanes, float32 or float64.

    A vector of several registers (see :func:`_vjoin`) is one LLVM vector,
    split by LLVM into registers with each operation issued for all of them
    in turn: independent work placed side by side for the out-of-order core.
    """

    def __init__(self, dtype: types.Float, count: int = 1) -> None:
        self.dtype = dtype
        self.count = count
        self.width = count * VECTOR_BYTES // (dtype.bitwidth // 8)
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


@intrinsic
def _vfill(typingctx, like, x):
    """A vector of the type of ``like`` with every lane equal to the scalar ``x``."""
    if not (isinstance(like, _Vector) and x == like.dtype):
        return None

    def codegen(context, builder, sig, args):
        undefined = ir.Constant(context.get_value_type(like), ir.Undefined)
        first = builder.insert_element(undefined, args[1], ir.IntType(32)(0))
        mask = ir.Constant(ir.VectorType(ir.IntType(32), like.width), [0] * like.width)
        return builder.shuffle_vector(first, first, mask)

    return like(like, x), codegen


@intrinsic
def _vjoin(typingctx, a, b):
    """The lanes of ``a`` then those of ``b``, as one vector of twice the width."""
    if not (isinstance(a, _Vector) and a == b):
        return None
    joined = _Vector(a.dtype, 2 * a.count)

    def codegen(context, builder, sig, args):
        lanes = ir.Constant(
            ir.VectorType(ir.IntType(32), joined.width), list(range(joined.width))
        )
        return builder.shuffle_vector(args[0], args[1], lanes)

    return joined(a, b), codegen


def _half(upper: bool) -> Any:
    """An intrinsic taking the lower or upper half of the lanes of a vector."""

    @intrinsic
    def half(typingctx, a):
        if not (isinstance(a, _Vector) and a.count % 2 == 0):
            return None
        halved = _Vector(a.dtype, a.count // 2)

        def codegen(context, builder, sig, args):
            first = halved.width if upper else 0
            lanes = ir.Constant(
                ir.VectorType(ir.IntType(32), halved.width),
                list(range(first, first + halved.width)),
            )
            return builder.shuffle_vector(args[0], args[0], lanes)

        return halved(a), codegen

    return half


_vlow, _vhigh = _half(False), _half(True)


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
def _vfma(typingctx, a, b, c):
    """a·b + c lane-wise with one rounding (llvm.fma; a library call on CPUs
    without fused multiply-add, slower but the same value)."""
    if not (isinstance(a, _Vector) and a == b == c):
        return None

    def codegen(context, builder, sig, args):
        return _llvm_math(builder, "fma", args)

    return a(a, b, c), codegen


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


# --- layout ---------------------------------------------------------------------


@njit
def _padded_transpose(matrix, out):
    """out[c * width + r] = matrix[r, c] for a (rows, cols) matrix; rest zero."""
    rows, cols = matrix.shape
    width = out.size // cols
    out[:] = 0
    for r in range(rows):
        for c in range(cols):
            out[c * width + r] = matrix[r, c]


@njit(inline="always")
def _layout(W2, W3):
    """(n1, n2p, nv, n3) of W2 (M, n2, n1) and W3 (S, n3, n2).

    n2 is padded to nv whole vectors of n2p lanes in all, the layout of W2ᵀ
    in the kernels.
    """
    nv = -(-W2.shape[1] // _lanes(W2))
    return (W2.shape[2], nv * _lanes(W2), nv, W3.shape[1])


@njit(inline="always")
def _unit(unit_stream, unit_start, unit_members, u):
    """Stream and member indices of work unit u (see fused_cpu.work_units)."""
    return unit_stream[u], unit_members[unit_start[u] : unit_start[u + 1]]


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


@njit(inline="always")
def _tanh_reduction(z, tables):
    """k and r with −2a = k ln 2 + r, a = min(|z|, clamp) (Cody–Waite)."""
    clamp, inv_ln2, rounder, ln2_hi, ln2_lo, one, _, lowest = tables[0]
    a = _vabs(z)
    a = _vwhere_greater(a, _vfill(z, clamp), _vfill(z, clamp), a)
    x = _vfill(z, lowest - lowest) - (a + a)

    # k = round(x / ln 2) by the add-and-subtract trick; r = x − k ln 2.
    k = (x * _vfill(z, inv_ln2) + _vfill(z, rounder)) - _vfill(z, rounder)
    k = _vwhere_greater(k, _vfill(z, lowest), k, _vfill(z, one - one))
    r = (x - k * _vfill(z, ln2_hi)) - k * _vfill(z, ln2_lo)
    return k, r


@njit(inline="always")
def _tanh_result(z, k, p, tables):
    """tanh z from k and p = expm1(r): e = 2^k p + (2^k − 1), −e/(2 + e) signed."""
    one, two = tables[0][5], tables[0][6]
    scale = _vexp2_integer(k)
    e = scale * p + (scale - _vfill(z, one))
    return _vcopysign(e / (_vfill(z, two) + e), z)


@njit
def _tanh(z, tables):
    """tanh of a vector, within 4 ulp (measured ≤ 3.3); ±inf → ±1, NaN → NaN.

    tanh a = −e/(2 + e) with e = expm1(−2a), a = |z|; e = 2^k p + (2^k − 1)
    with p = expm1(r), −2a = k ln 2 + r (Cody–Waite), and p = r Σ c_n r^n
    evaluated as two Horner chains in r² (even and odd n) to halve latency.
    """
    _, even, odd = tables
    k, r = _tanh_reduction(z, tables)
    r2 = r * r
    p_even = _vfill(z, even[0])
    for c in even[1:]:
        p_even = p_even * r2 + _vfill(z, c)
    p_odd = _vfill(z, odd[0])
    for c in odd[1:]:
        p_odd = p_odd * r2 + _vfill(z, c)
    return _tanh_result(z, k, (p_even + r * p_odd) * r, tables)


@njit
def _tanh_fused(z, tables):
    """:func:`_tanh` with the polynomial's steps as fused multiply-adds.

    Half the operations of the polynomial, and one rounding less per step;
    the result differs from :func:`_tanh` in the last bits.
    """
    _, even, odd = tables
    k, r = _tanh_reduction(z, tables)
    r2 = r * r
    p_even = _vfill(z, even[0])
    for c in even[1:]:
        p_even = _vfma(p_even, r2, _vfill(z, c))
    p_odd = _vfill(z, odd[0])
    for c in odd[1:]:
        p_odd = _vfma(p_odd, r2, _vfill(z, c))
    return _tanh_result(z, k, _vfma(r, p_odd, p_even) * r, tables)


@njit(inline="always")
def _activation(z, code, tables, fused):
    """φ(z) and φ'(z) of a vector, as in activations.py.

    ``code`` picks the activation (:data:`ACTIVATION_CODES`): tanh' = 1 − h²
    (with :func:`_tanh_fused` where ``fused``); relu = max(z, 0) keeping NaN,
    relu' = [z > 0]; identity' = 1.
    """
    one = _vfill(z, tables[0][5])
    zero = one - one
    if code == 0:
        h = _tanh_fused(z, tables) if fused else _tanh(z, tables)
        return h, one - h * h
    if code == 1:
        return _vwhere_greater(zero, z, zero, z), _vwhere_greater(z, zero, one, zero)
    return z, one


def kernel_tanh(z: np.ndarray, fused: bool = False) -> np.ndarray:
    """tanh of a 1-D float32 or float64 array, exactly as the kernels compute it.

    ``fused`` selects :func:`_tanh_fused` (the checkpoint kernels) over
    :func:`_tanh` (the SGD kernel).

    Examples
    --------
    >>> kernel_tanh(np.array([0.0, 1.0, np.inf]))
    array([0.        , 0.76159416, 1.        ])
    """
    z = np.asarray(z)
    lanes = VECTOR_BYTES // z.itemsize
    padded = np.zeros(-(-z.size // lanes) * lanes, z.dtype)
    padded[: z.size] = z
    arguments = (*tanh_constants(z.dtype), fused)
    return _tanh_lanes(padded, *arguments)[: z.size]


@njit(cache=True)
def _tanh_lanes(z, scalars, even, odd, fused):
    out = np.empty_like(z)
    tables = (scalars, even, odd)
    for e in range(z.size // _lanes(z)):
        start = e * _lanes(z)
        zv = _vload(z, start)
        _vstore(out, start, _tanh_fused(zv, tables) if fused else _tanh(zv, tables))
    return out
