"""Explicit 8-lane SIMD values for the Numba kernels.

Why this exists: the mesa kernels vectorise across 8 independent (batch, head) sequences
("lanes"), each lane running the scalar recursion of ``mesa_ref.ops.mesa``. Numba ships with
LLVM's SLP vectoriser switched off (NUMBA_SLP_VECTORIZE=0), and LLVM fully unrolls a loop of 8
iterations before its loop vectoriser sees it, so ``for l in range(8): y[l] += a[l] * x[l]``
compiles to scalar code (measured: 1.5 GFLOP/s on a 20x20 lane matvec). Rather than depend on
a global Numba setting, this module defines a Numba type ``LaneVec`` whose LLVM representation
is ``<8 x float>`` / ``<8 x double>`` and a handful of intrinsics on it. Values of that type live
in registers (an accumulator is a vector register, not a memory location), so the kernels get
the same SIMD code whatever the Numba configuration.

Semantics: every operation is the IEEE operation applied lane by lane (``fadd``/``fsub``/``fmul``
/``fdiv`` without fast-math flags, no FMA contraction), so each lane computes exactly what a
scalar loop with the same operation order would compute.

Memory: ``vload(a, off)`` / ``vstore(a, off, x)`` read/write ``a[off:off+LANES]`` of a 1-D
C-contiguous array ``a`` (no bounds check: callers index lane-strided buffers they allocated).
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic, models, register_model

LANES = 8   # sequences per SIMD group; one AVX2 register of float32, two of float64


class LaneVec(types.Type):
    """A vector of LANES values of ``dtype`` (float32 or float64), held in registers."""

    def __init__(self, dtype):
        self.dtype = dtype
        super().__init__(name=f"LaneVec{LANES}({dtype})")


@register_model(LaneVec)
class _LaneVecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        be_type = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(be_type, LANES))


def _vec_ptr(context, builder, arrty, arr, off):
    """Pointer to a[off] as a pointer to <LANES x dtype>."""
    ary = context.make_array(arrty)(context, builder, arr)
    ptr = builder.gep(ary.data, [off])
    be_type = context.get_value_type(arrty.dtype)
    return builder.bitcast(ptr, ir.PointerType(ir.VectorType(be_type, LANES)))


@intrinsic
def vload(typingctx, arr, off):
    """a[off:off+LANES] as a LaneVec."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and isinstance(off, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _vec_ptr(context, builder, sig.args[0], args[0], args[1])
        return builder.load(ptr, align=arr.dtype.bitwidth // 8)

    return LaneVec(arr.dtype)(arr, off), codegen


@intrinsic
def vstore(typingctx, arr, off, x):
    """a[off:off+LANES] = x."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and isinstance(x, LaneVec)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _vec_ptr(context, builder, sig.args[0], args[0], args[1])
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


@intrinsic
def vzeros(typingctx, arr):
    """A LaneVec of zeros with ``arr``'s dtype (``arr`` only fixes the dtype)."""
    if not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, sig, args):
        be_type = context.get_value_type(sig.args[0].dtype)
        return ir.Constant(ir.VectorType(be_type, LANES), [ir.Constant(be_type, 0.0)] * LANES)

    return LaneVec(arr.dtype)(arr), codegen


@intrinsic
def vsplat(typingctx, arr, x):
    """A LaneVec with every lane equal to the scalar ``x`` (cast to ``arr``'s dtype)."""
    if not (isinstance(arr, types.Array) and isinstance(x, (types.Float, types.Integer))):
        return None

    def codegen(context, builder, sig, args):
        dtype = sig.args[0].dtype
        val = context.cast(builder, args[1], sig.args[1], dtype)
        vec_type = ir.VectorType(context.get_value_type(dtype), LANES)
        vec = ir.Constant(vec_type, ir.Undefined)
        for lane in range(LANES):
            vec = builder.insert_element(vec, val, ir.Constant(ir.IntType(32), lane))
        return vec

    return LaneVec(arr.dtype)(arr, x), codegen
