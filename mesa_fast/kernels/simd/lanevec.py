"""Explicit SIMD lane vectors for the Numba kernels (the intrinsics every SIMD kernel in this folder is built on).

Why this exists: the kernels vectorise across independent (batch, head) sequences ("lanes"), each
lane running the scalar recursion of ``mesa_ref.ops``. Numba ships with LLVM's SLP vectoriser switched
off (NUMBA_SLP_VECTORIZE=0), and LLVM fully unrolls a loop of 8 iterations before its loop vectoriser
sees it, so ``for l in range(8): y[l] += a[l] * x[l]`` compiles to scalar code (slow: docs/performance.md
has the rate measured on a 20x20 lane matvec). Rather than depend on a global Numba setting, this module defines a Numba
type ``LaneVec`` whose LLVM representation is ``<n x float>`` / ``<n x double>`` and a handful of
intrinsics on it. Values of that type live in registers (an accumulator is a vector register, not a
memory location), so the kernels get the same SIMD code whatever the Numba configuration.

Two widths, fixed when a vector is made (``vload``/``vzeros``/``vsplat`` make LANES = 8 lanes,
``wload``/``wzeros``/``wsplat`` make WIDE = 16); every other operation takes the width of its
arguments:
* LANES = 8 (``runtime.tuning.MESA_LANES``): the mesa kernels (``mesa.py``). One AVX2 register of float32, two of
  float64. (The mesa kernels at 16 lanes with FMA were tried and measured no faster; not adopted.)
* WIDE = 16 (``runtime.tuning.ATTENTION_LANES``): the attention kernels (``attention_*.py``), GELU, LayerNorm and
  ``gemm.py``. One AVX-512 register of float32 (two of float64); on a machine without AVX-512 LLVM splits each
  operation into two AVX2 ones. 16 lanes, and ``vfma`` on top, each made the linear-attention recursion measurably
  faster than 8 lanes (docs/performance-archive/notes.md, "Attention kernels").

Semantics: ``vadd``/``vsub``/``vmul``/``vdiv``/``vsqrt`` are the IEEE operations applied lane by lane
(no fast-math flags, no FMA contraction), so each lane computes exactly what a scalar loop with the
same operation order would compute. ``vfma(a, b, c)`` is the fused a*b + c (one rounding, llvm.fma),
used only where its kernel's docstring says so.

Memory: ``vload(a, off)`` / ``vstore(a, off, x)`` read/write ``a[off:off+n]`` of a 1-D C-contiguous
array ``a`` (no bounds check: callers index lane-strided buffers they allocated). The accesses are
unaligned instructions; 16-lane float32 vectors that straddle two cache lines cost markedly more than
aligned ones (docs/performance.md), so the attention kernels allocate 64-byte aligned buffers
(``aligned_empty``).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from ...runtime.tuning import ALIGN                      # bytes: one cache line, one AVX-512 register
from ...runtime.tuning import ATTENTION_LANES as WIDE   # lanes of the attention kernels' vectors
from ...runtime.tuning import MESA_LANES as LANES       # lanes of the mesa kernels' vectors


class LaneVec(types.Type):
    """A vector of ``lanes`` values of ``dtype`` (float32 or float64), held in registers."""

    def __init__(self, dtype, lanes):
        self.dtype = dtype
        self.lanes = lanes
        super().__init__(name=f"LaneVec{lanes}({dtype})")


@register_model(LaneVec)
class _LaneVecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        be_type = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(be_type, fe_type.lanes))


def _vec_ptr(context, builder, arrty, arr, off, lanes):
    """Pointer to a[off] as a pointer to <lanes x dtype>."""
    ary = context.make_array(arrty)(context, builder, arr)
    ptr = builder.gep(ary.data, [off])
    be_type = context.get_value_type(arrty.dtype)
    return builder.bitcast(ptr, ir.PointerType(ir.VectorType(be_type, lanes)))


def _make_load(lanes):
    @intrinsic
    def load(typingctx, arr, off):
        if not (isinstance(arr, types.Array) and arr.ndim == 1 and isinstance(off, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            ptr = _vec_ptr(context, builder, sig.args[0], args[0], args[1], lanes)
            return builder.load(ptr, align=arr.dtype.bitwidth // 8)

        return LaneVec(arr.dtype, lanes)(arr, off), codegen

    load.__doc__ = f"a[off:off+{lanes}] as a {lanes}-lane LaneVec."
    return load


def _make_zeros(lanes):
    @intrinsic
    def zeros(typingctx, arr):
        if not isinstance(arr, types.Array):
            return None

        def codegen(context, builder, sig, args):
            be_type = context.get_value_type(sig.args[0].dtype)
            return ir.Constant(ir.VectorType(be_type, lanes), [ir.Constant(be_type, 0.0)] * lanes)

        return LaneVec(arr.dtype, lanes)(arr), codegen

    zeros.__doc__ = f"A {lanes}-lane LaneVec of zeros with ``arr``'s dtype (``arr`` only fixes the dtype)."
    return zeros


def _make_splat(lanes):
    @intrinsic
    def splat(typingctx, arr, x):
        if not (isinstance(arr, types.Array) and isinstance(x, (types.Float, types.Integer))):
            return None

        def codegen(context, builder, sig, args):
            dtype = sig.args[0].dtype
            val = context.cast(builder, args[1], sig.args[1], dtype)
            vec = ir.Constant(ir.VectorType(context.get_value_type(dtype), lanes), ir.Undefined)
            for lane in range(lanes):
                vec = builder.insert_element(vec, val, ir.Constant(ir.IntType(32), lane))
            return vec

        return LaneVec(arr.dtype, lanes)(arr, x), codegen

    splat.__doc__ = f"A {lanes}-lane LaneVec with every lane equal to the scalar ``x`` (cast to ``arr``'s dtype)."
    return splat


vload, vzeros, vsplat = _make_load(LANES), _make_zeros(LANES), _make_splat(LANES)
wload, wzeros, wsplat = _make_load(WIDE), _make_zeros(WIDE), _make_splat(WIDE)


@intrinsic
def vstore(typingctx, arr, off, x):
    """a[off:off+n] = x (n: x's lanes)."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and isinstance(x, LaneVec)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _vec_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[2].lanes)
        builder.store(args[2], ptr, align=arr.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.void(arr, off, x), codegen


def _make_binop(opname):
    @intrinsic
    def binop(typingctx, a, b):
        if not (isinstance(a, LaneVec) and a == b):
            return None

        def codegen(context, builder, sig, args):
            return getattr(builder, opname)(args[0], args[1])

        return a(a, b), codegen

    binop.__doc__ = f"Lane-wise IEEE {opname} of two LaneVecs."
    return binop


vadd = _make_binop("fadd")
vsub = _make_binop("fsub")
vmul = _make_binop("fmul")
vdiv = _make_binop("fdiv")


def _llvm_vector_fn(builder, name, vec_type, nargs):
    elem = "f32" if isinstance(vec_type.element, ir.FloatType) else "f64"
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec_type, [vec_type] * nargs),
                                          f"llvm.{name}.v{vec_type.count}{elem}")


@intrinsic
def vfma(typingctx, a, b, c):
    """Lane-wise fused a*b + c, rounded once (llvm.fma: an FMA instruction where the CPU has one)."""
    if not (isinstance(a, LaneVec) and a == b and b == c):
        return None

    def codegen(context, builder, sig, args):
        return builder.call(_llvm_vector_fn(builder, "fma", args[0].type, 3), list(args))

    return a(a, b, c), codegen


@njit(cache=True, nogil=True)
def aligned_empty(n, like):
    """An uninitialised 1-D array of n elements of ``like``'s dtype whose first element is ALIGN-byte aligned
    (Numba's own allocations are 32-byte aligned)."""
    raw = np.empty(n + ALIGN // like.itemsize, like.dtype)
    o = ((-raw.ctypes.data) % ALIGN) // like.itemsize
    return raw[o:o + n]


@njit(cache=True, nogil=True)
def aligned_zeros(n, like):
    """``aligned_empty`` filled with zeros."""
    a = aligned_empty(n, like)
    a[:] = 0
    return a


@intrinsic
def vsqrt(typingctx, a):
    """Lane-wise IEEE square root (llvm.sqrt, correctly rounded)."""
    if not isinstance(a, LaneVec):
        return None

    def codegen(context, builder, sig, args):
        return builder.call(_llvm_vector_fn(builder, "sqrt", args[0].type, 1), [args[0]])

    return a(a), codegen


def _unop_intrinsic(name, doc):
    @intrinsic
    def unop(typingctx, a):
        if not isinstance(a, LaneVec):
            return None

        def codegen(context, builder, sig, args):
            return builder.call(_llvm_vector_fn(builder, name, args[0].type, 1), [args[0]])

        return a(a), codegen

    unop.__doc__ = doc
    return unop


vabs = _unop_intrinsic("fabs", "Lane-wise |a| (llvm.fabs).")


@intrinsic
def vcopysign(typingctx, a, b):
    """Lane-wise |a| with the sign bit of b (llvm.copysign)."""
    if not (isinstance(a, LaneVec) and a == b):
        return None

    def codegen(context, builder, sig, args):
        return builder.call(_llvm_vector_fn(builder, "copysign", args[0].type, 2), list(args))

    return a(a, b), codegen


@intrinsic
def vmax(typingctx, a, b):
    """Lane-wise a if a > b else b (so b where either is NaN; the kernels check for NaN separately)."""
    if not (isinstance(a, LaneVec) and a == b):
        return None

    def codegen(context, builder, sig, args):
        return builder.select(builder.fcmp_ordered(">", args[0], args[1]), args[0], args[1])

    return a(a, b), codegen


@intrinsic
def vsum(typingctx, a):
    """The sum of a's lanes as a scalar, added in lane order (llvm.vector.reduce.fadd without reassociation)."""
    if not isinstance(a, LaneVec):
        return None

    def codegen(context, builder, sig, args):
        vt = args[0].type
        elem = "f32" if isinstance(vt.element, ir.FloatType) else "f64"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt.element, [vt.element, vt]),
                                            f"llvm.vector.reduce.fadd.v{vt.count}{elem}")
        return builder.call(fn, [ir.Constant(vt.element, -0.0), args[0]])

    return a.dtype(a), codegen


def _splat_const(vec_type, value):
    return ir.Constant(vec_type, [ir.Constant(vec_type.element, value)] * vec_type.count)


# exp: Cephes' expf (float32) and exp (float64): x = n ln2 + r with |r| <= ln2 / 2 (ln2 split in two so that n *
# ln2_hi is exact), exp(r) by a polynomial (float32) or a Pade form (float64), times 2**n built from exponent bits
# in two halves (so that results near the overflow bound and gradual underflow come out right).
_EXP = {
    32: dict(c1=0.693359375, c2=-2.12194440e-4, lo=-104.0, hi=89.0, mbits=23, bias=127,
             p=(1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)),
    64: dict(c1=6.93145751953125e-1, c2=1.42860682030941723212e-6, lo=-746.0, hi=710.0, mbits=52, bias=1023,
             P=(1.26177193074810590878e-4, 3.02994407707441961300e-2, 9.99999999999999999910e-1),
             Q=(3.00198505138664455042e-6, 2.52448340349684104192e-3, 2.27265548208155028766e-1,
                2.00000000000000000009e0)),
}
_LOG2E = 1.4426950408889634


def _poly(builder, x, coeffs):
    acc = _splat_const(x.type, coeffs[0])
    for c in coeffs[1:]:
        acc = builder.fadd(builder.fmul(acc, x), _splat_const(x.type, c))
    return acc


def _exp_ir(builder, x):
    vt = x.type
    bits = 32 if isinstance(vt.element, ir.FloatType) else 64
    k = _EXP[bits]
    ity = ir.VectorType(ir.IntType(bits), vt.count)
    one = _splat_const(vt, 1.0)
    minnum = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt, vt]),
                                            f"llvm.minnum.v{vt.count}f{bits}")
    maxnum = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt, vt]),
                                            f"llvm.maxnum.v{vt.count}f{bits}")
    xc = builder.call(maxnum, [builder.call(minnum, [x, _splat_const(vt, k["hi"])]), _splat_const(vt, k["lo"])])
    n = builder.call(_llvm_vector_fn(builder, "floor", vt, 1),
                     [builder.fadd(builder.fmul(xc, _splat_const(vt, _LOG2E)), _splat_const(vt, 0.5))])
    r = builder.fsub(xc, builder.fmul(n, _splat_const(vt, k["c1"])))
    r = builder.fsub(r, builder.fmul(n, _splat_const(vt, k["c2"])))
    if bits == 32:
        z = builder.fmul(r, r)
        p = builder.fadd(builder.fadd(builder.fmul(_poly(builder, r, k["p"]), z), r), one)
    else:
        xx = builder.fmul(r, r)
        px = builder.fmul(r, _poly(builder, xx, k["P"]))
        q = _poly(builder, xx, k["Q"])
        p = builder.fadd(one, builder.fmul(_splat_const(vt, 2.0), builder.fdiv(px, builder.fsub(q, px))))
    ni = builder.fptosi(n, ity)
    n1 = builder.ashr(ni, ir.Constant(ity, [ir.Constant(ity.element, 1)] * vt.count))
    n2 = builder.sub(ni, n1)

    def pow2(m):
        e = builder.shl(builder.add(m, ir.Constant(ity, [ir.Constant(ity.element, k["bias"])] * vt.count)),
                        ir.Constant(ity, [ir.Constant(ity.element, k["mbits"])] * vt.count))
        return builder.bitcast(e, vt)

    y = builder.fmul(builder.fmul(p, pow2(n1)), pow2(n2))
    return builder.select(builder.fcmp_unordered("uno", x, x), x, y)     # NaN in, NaN out


@intrinsic
def vexp(typingctx, a):
    """Lane-wise exp(a), within ~1-2 ulp of the correctly rounded result over the whole range (Cephes' expf / exp
    polynomials, no table), 0 below the underflow bound, inf above the overflow bound, NaN for NaN.
    (Numba without Intel's SVML compiles ``np.exp`` in a loop to one scalar call per element.)"""
    if not isinstance(a, LaneVec):
        return None

    def codegen(context, builder, sig, args):
        return _exp_ir(builder, args[0])

    return a(a), codegen


_TRANSPOSE_STAGES = (
    # (pairs of register indices, low mask, high mask): three butterfly stages turn 8 rows into
    # 8 columns (checked against numpy in tests/fast/test_fast_mesa.py through the gathers).
    (((0, 1), (2, 3), (4, 5), (6, 7)), (0, 8, 2, 10, 4, 12, 6, 14), (1, 9, 3, 11, 5, 13, 7, 15)),
    (((0, 2), (1, 3), (4, 6), (5, 7)), (0, 1, 8, 9, 4, 5, 12, 13), (2, 3, 10, 11, 6, 7, 14, 15)),
    (((0, 4), (1, 5), (2, 6), (3, 7)), (0, 1, 2, 3, 8, 9, 10, 11), (4, 5, 6, 7, 12, 13, 14, 15)),
)


def _mask(idx):
    return ir.Constant(ir.VectorType(ir.IntType(32), len(idx)), [int(m) for m in idx])


def _i64(context, builder, val, ty):
    return context.cast(builder, val, ty, types.int64)


def _transpose8(context, builder, arr_ty, arr, src_offsets, dst_ty, dst, dst_offsets):
    """Load 8 vectors at src_offsets, transpose them with the butterfly stages, store them at dst_offsets."""
    align = arr_ty.dtype.bitwidth // 8
    rows = [builder.load(_vec_ptr(context, builder, arr_ty, arr, off, 8), align=align) for off in src_offsets]
    for pairs, lo, hi in _TRANSPOSE_STAGES:
        new = list(rows)
        for x, y in pairs:
            new[x] = builder.shuffle_vector(rows[x], rows[y], _mask(lo))
            new[y] = builder.shuffle_vector(rows[x], rows[y], _mask(hi))
        rows = new
    for b, off in enumerate(dst_offsets):
        builder.store(rows[b], _vec_ptr(context, builder, dst_ty, dst, off, 8), align=align)


def _strided_offsets(builder, off, stride):
    ity = ir.IntType(64)
    return [builder.add(off, builder.mul(stride, ir.Constant(ity, a))) for a in range(8)]


def _table_offsets(context, builder, tab_ty, tab, off):
    """off + tab[a] for a in 0..7 (tab: a 1-D int64 array)."""
    ary = context.make_array(tab_ty)(context, builder, tab)
    return [builder.add(off, builder.load(builder.gep(ary.data, [ir.Constant(ir.IntType(64), a)])))
            for a in range(8)]


def _transpose_args_ok(src, dst):
    return (isinstance(src, types.Array) and isinstance(dst, types.Array) and src.ndim == 1 and dst.ndim == 1
            and src.dtype == dst.dtype)


@intrinsic
def vtranspose_copy(typingctx, src, soff, sstride, dst, doff, dstride):
    """An 8 x 8 block transpose between two 1-D arrays:

        dst[doff + b*dstride + a] = src[soff + a*sstride + b]    for a, b in 0..7

    (8 vector loads, 24 shuffles, 8 vector stores). Used to move one token of 8 sequences
    between the (N, T, width) layout and the lane layout (width, 8).
    """
    if not _transpose_args_ok(src, dst):
        return None

    def codegen(context, builder, sig, args):
        s_arr, s_off, s_stride, d_arr, d_off, d_stride = args
        a = sig.args
        _transpose8(context, builder, a[0], s_arr,
                    _strided_offsets(builder, _i64(context, builder, s_off, a[1]), _i64(context, builder, s_stride, a[2])),
                    a[3], d_arr,
                    _strided_offsets(builder, _i64(context, builder, d_off, a[4]), _i64(context, builder, d_stride, a[5])))
        return context.get_dummy_value()

    return types.void(src, soff, sstride, dst, doff, dstride), codegen


@intrinsic
def vtranspose_from_rows(typingctx, src, rows, soff, dst, doff, dstride):
    """The 8 x 8 transpose with source rows at arbitrary offsets (one per lane, ``rows``: 1-D int64, length >= 8):

        dst[doff + b*dstride + a] = src[rows[a] + soff + b]    for a, b in 0..7
    """
    if not (_transpose_args_ok(src, dst) and isinstance(rows, types.Array) and rows.dtype == types.int64):
        return None

    def codegen(context, builder, sig, args):
        s_arr, r_arr, s_off, d_arr, d_off, d_stride = args
        a = sig.args
        _transpose8(context, builder, a[0], s_arr,
                    _table_offsets(context, builder, a[1], r_arr, _i64(context, builder, s_off, a[2])),
                    a[3], d_arr,
                    _strided_offsets(builder, _i64(context, builder, d_off, a[4]), _i64(context, builder, d_stride, a[5])))
        return context.get_dummy_value()

    return types.void(src, rows, soff, dst, doff, dstride), codegen


@intrinsic
def vtranspose_to_rows(typingctx, src, soff, sstride, dst, rows, doff):
    """The inverse of ``vtranspose_from_rows``: dst[rows[b] + doff + a] = src[soff + a*sstride + b]."""
    if not (_transpose_args_ok(src, dst) and isinstance(rows, types.Array) and rows.dtype == types.int64):
        return None

    def codegen(context, builder, sig, args):
        s_arr, s_off, s_stride, d_arr, r_arr, d_off = args
        a = sig.args
        _transpose8(context, builder, a[0], s_arr,
                    _strided_offsets(builder, _i64(context, builder, s_off, a[1]), _i64(context, builder, s_stride, a[2])),
                    a[3], d_arr,
                    _table_offsets(context, builder, a[4], r_arr, _i64(context, builder, d_off, a[5])))
        return context.get_dummy_value()

    return types.void(src, soff, sstride, dst, rows, doff), codegen
