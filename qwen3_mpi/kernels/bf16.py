"""bf16 <-> float32 inside numba: the bf16 bits shifted into the top half of a float32 are its exact value;
the other way rounds to nearest even."""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .llvm_ir import I32, I64, declare, emit_prefetch, target_cpu


@intrinsic
def _bf16_bits_to_f32(typingctx, bits):
    """float32 whose bits are (uint32(bits) << 16): zero-extend, shift, bitcast (vectorizes)."""
    if bits != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        wide = builder.shl(builder.zext(args[0], I32), ir.Constant(I32, 16))
        return builder.bitcast(wide, ir.FloatType())

    return types.float32(types.uint16), codegen


def to_f32(w):
    """float32 value of a weight element: bf16 bits (uint16) or a float."""
    raise NotImplementedError  # replaced inside numba by the overload below


@overload(to_f32, inline="always")
def _to_f32(w):
    if w == types.uint16:
        return lambda w: _bf16_bits_to_f32(w)
    if isinstance(w, types.Float):
        return lambda w: np.float32(w)
    return None


@njit(inline="always")
def to_bf16(x):
    """The bf16 bits (uint16) of float32 x rounded to nearest, ties to even (as torch's
    .to(torch.bfloat16)); a NaN stays a (quiet) NaN, a float beyond bf16's range becomes infinity."""
    u = np.float32(x).view(np.uint32)
    if (u & 0x7FFFFFFF) > 0x7F800000:
        return np.uint16((u >> 16) | 0x40)
    return np.uint16((u + 0x7FFF + ((u >> 16) & 1)) >> 16)


def store_f32(dst, src):
    """dst[:] = src (float32), rounded to bf16 where dst holds bf16 bits (uint16)."""
    raise NotImplementedError  # replaced inside numba by the overload below


@overload(store_f32)
def _store_f32(dst, src):
    if dst.dtype == types.uint16:

        def store_rounded(dst, src):
            for i in range(src.shape[0]):
                dst[i] = to_bf16(src[i])

        return store_rounded

    def store(dst, src):
        dst[:] = src

    return store


@intrinsic
def pair_to_f32(typingctx, pair):
    """The two bf16 of a uint32 (little-endian: element 0 in the low half) as float32: (u << 16) and
    (u & 0xFFFF0000), bitcast. For weights packed in pairs (amx.pack)."""
    if pair != types.uint32:
        return None

    def codegen(context, builder, signature, args):
        low = builder.bitcast(builder.shl(args[0], ir.Constant(I32, 16)), ir.FloatType())
        high = builder.bitcast(builder.and_(args[0], ir.Constant(I32, 0xFFFF0000)), ir.FloatType())
        return context.make_tuple(builder, signature.return_type, [low, high])

    return types.UniTuple(types.float32, 2)(types.uint32), codegen


F32x16 = ir.VectorType(ir.FloatType(), 16)
I32x16 = ir.VectorType(I32, 16)
# the decode products' software prefetch, by the CPU (see dot_pairs_16x4): 64-byte lines each stream
# prefetches ahead of its loads, and into which cache (emit_prefetch's locality: 3 L1, 2 L2)
PREFETCH_AHEAD, PREFETCH_LOCALITY = {"znver5": (32, 3)}.get(target_cpu(), (16, 2))


def splat(builder, value):
    """<16 x float> with every lane = value (LLVM IR)."""
    undef = ir.Constant(F32x16, ir.Undefined)
    one = builder.insert_element(undef, value, ir.Constant(I32, 0))
    return builder.shuffle_vector(one, undef, ir.Constant(I32x16, [0] * 16))


def fma16(builder):
    """llvm.fma.v16f32 (LLVM IR): a * b + c on <16 x float>, rounded once."""
    return declare(builder, "llvm.fma.v16f32", [F32x16] * 3, F32x16)


def widen_pairs(builder, pairs):
    """The two bf16 halves of each lane of a <16 x i32> of pairs as two <16 x float> (LLVM IR): the low
    halves shifted up, the high halves masked; both exact."""
    low = builder.bitcast(builder.shl(pairs, ir.Constant(I32x16, [16] * 16)), F32x16)
    high = builder.bitcast(builder.and_(pairs, ir.Constant(I32x16, [0xFFFF0000] * 16)), F32x16)
    return low, high


@intrinsic
def dot_pairs_16x4(typingctx, w_X, off0, off1, off2, off3, x_X, x0, n, out_X):
    """out[16j + o] = sum over k < n of lo(w[off_j + 16k + o]) x[x0 + 2k] + hi(w[off_j + 16k + o]) x[x0 + 2k + 1]
    for j < 4 and o < 16, where w is uint32 pairs of bf16 (lo: the low half) and x, out float32.

    Four runs of w read side by side (four memory streams), 16 outputs per 512-bit vector, float32
    accumulators in registers: LLVM IR written directly, since numba cannot keep vector accumulators
    across a loop that walks memory (it keeps them in memory, much slower). Each stream prefetches the
    line PREFETCH_AHEAD lines ahead of the one it loads, into the cache PREFETCH_LOCALITY names: on a
    Zen 5 EPYC (znver5) 32 lines ahead into L1 (prefetcht0), where the hardware prefetcher alone left
    the product below a plain read of memory; on a Zen 4 EPYC (znver4), where those L1 prefetches were
    slower than none, 16 lines ahead into L2 (prefetcht1). Other CPUs get the latter (measurements:
    docs/benchmarks.md, 'Kernel measurements')."""
    sig = types.void(w_X, types.int64, types.int64, types.int64, types.int64, x_X, types.int64, types.int64, out_X)

    def codegen(context, builder, signature, args):
        w, *offs, x, x0v, nv, out = args
        wdata = context.make_array(signature.args[0])(context, builder, w).data
        xdata = context.make_array(signature.args[5])(context, builder, x).data
        odata = context.make_array(signature.args[8])(context, builder, out).data
        accs = [cgutils.alloca_once_value(builder, ir.Constant(F32x16, [0.0] * 16)) for _ in range(8)]
        fma = fma16(builder)
        ahead = ir.Constant(I64, 16 * PREFETCH_AHEAD)
        with cgutils.for_range(builder, nv) as loop:
            k = loop.index
            xi = builder.add(x0v, builder.mul(k, ir.Constant(I64, 2)))
            xa = splat(builder, builder.load(builder.gep(xdata, [xi])))
            xb = splat(builder, builder.load(builder.gep(xdata, [builder.add(xi, ir.Constant(I64, 1))])))
            k16 = builder.mul(k, ir.Constant(I64, 16))
            for j in range(4):
                at = builder.add(offs[j], k16)
                emit_prefetch(builder, builder.gep(wdata, [builder.add(at, ahead)]), PREFETCH_LOCALITY)
                pairs = builder.load(builder.bitcast(builder.gep(wdata, [at]), I32x16.as_pointer()), align=4)
                lo, hi = widen_pairs(builder, pairs)
                builder.store(builder.call(fma, [lo, xa, builder.load(accs[2 * j])]), accs[2 * j])
                builder.store(builder.call(fma, [hi, xb, builder.load(accs[2 * j + 1])]), accs[2 * j + 1])
        for j in range(4):
            total = builder.fadd(builder.load(accs[2 * j]), builder.load(accs[2 * j + 1]))
            at = builder.gep(odata, [ir.Constant(I64, 16 * j)])
            builder.store(total, builder.bitcast(at, F32x16.as_pointer()), align=4)

    return sig, codegen
