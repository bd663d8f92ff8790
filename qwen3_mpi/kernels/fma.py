"""Prefill matrix products on AVX-512 CPUs without AMX: float32 FMA on bf16 weights widened in registers.

The weights stay in the tile layout of amx.pack, whose 64-byte rows hold one column pair of 16 outputs
(uint32 lanes: column 2k in the low half, 2k + 1 in the high half). One 512-bit load, a shift and a
mask give the exact float32 weights of 16 outputs for two columns, so the products need no widened copy
of W and no horizontal sums: lanes are outputs, tokens are broadcast. A micro-kernel holds MT tokens x
NB blocks of 16 outputs in float32 accumulators (4 x 4 = 16 of the 32 512-bit registers) and walks KCP
column pairs at a time, so the NB runs of weights it reads (NB x 16 outputs x 2 KCP columns x 2 bytes =
32 KiB) stay in L1 while every MT tokens pass over them.

It runs close to the FMA units' peak, faster than numpy's OpenBLAS sgemm on the same cores (on the
machine measured: docs/benchmarks.md, 'Kernel measurements'). Each KCP chunk starts its accumulators
at zero and is added to y at the end, as a blocked sgemm adds its K blocks, which keeps the rounding
error that of sgemm.
"""

import numpy as np
from llvmlite import ir
from numba import get_thread_id, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .bf16 import F32x16, I32x16, fma16, pair_to_f32, splat, widen_pairs
from .llvm_ir import I64

MT = 4  # tokens per micro-kernel call
NB = 4  # blocks of 16 outputs per micro-kernel call
KCP = 128  # column pairs per chunk: NB x 16 x 256 bf16 = 32 KiB of W stays in L1


@intrinsic
def gemm_pairs(typingctx, w_X, w0, run, x_X, x0, xs, n, y_X, y0, ys, accumulate, mt, nb):
    """For t < mt, b < nb, o < 16 (mt, nb literals):
    y[y0 + t ys + 16 b + o] (+)= sum over k < n of lo(w[w0 + b run + 16 k + o]) x[x0 + t xs + 2 k]
                                                  + hi(w[w0 + b run + 16 k + o]) x[x0 + t xs + 2 k + 1]
    w: uint32 pairs of bf16 (lo: the low half), x and y float32; '+=' when accumulate, else '='.
    LLVM IR written directly: numba keeps vector accumulators of a loop in memory, not in registers."""
    if not (isinstance(mt, types.IntegerLiteral) and isinstance(nb, types.IntegerLiteral)):
        return None
    MT_, NB_ = mt.literal_value, nb.literal_value
    i64 = types.int64
    sig = types.void(w_X, i64, i64, x_X, i64, i64, i64, y_X, i64, i64, types.boolean, mt, nb)

    def codegen(context, builder, signature, args):
        w, w0v, runv, x, x0v, xsv, nv, y, y0v, ysv, acc_in = args[:11]
        wdata = context.make_array(signature.args[0])(context, builder, w).data
        xdata = context.make_array(signature.args[3])(context, builder, x).data
        ydata = context.make_array(signature.args[7])(context, builder, y).data
        fma = fma16(builder)
        zero = ir.Constant(F32x16, [0.0] * 16)

        def const(v):
            return ir.Constant(I64, v)

        accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(NB_)] for _ in range(MT_)]
        x_rows = [builder.add(x0v, builder.mul(const(t), xsv)) for t in range(MT_)]
        w_runs = [builder.add(w0v, builder.mul(const(b), runv)) for b in range(NB_)]
        with cgutils.for_range(builder, nv) as loop:
            k = loop.index
            lo, hi = [], []
            for b in range(NB_):
                at = builder.gep(wdata, [builder.add(w_runs[b], builder.mul(k, const(16)))])
                pairs = builder.load(builder.bitcast(at, I32x16.as_pointer()), align=4)
                low, high = widen_pairs(builder, pairs)
                lo.append(low)
                hi.append(high)
            for t in range(MT_):
                xi = builder.add(x_rows[t], builder.mul(k, const(2)))
                xa = splat(builder, builder.load(builder.gep(xdata, [xi])))
                xb = splat(builder, builder.load(builder.gep(xdata, [builder.add(xi, const(1))])))
                for b in range(NB_):
                    a = builder.call(fma, [lo[b], xa, builder.load(accs[t][b])])
                    builder.store(builder.call(fma, [hi[b], xb, a]), accs[t][b])
        for t in range(MT_):
            for b in range(NB_):
                at = builder.add(y0v, builder.add(builder.mul(const(t), ysv), const(16 * b)))
                ptr = builder.bitcast(builder.gep(ydata, [at]), F32x16.as_pointer())
                total = builder.load(accs[t][b])
                with builder.if_then(acc_in):
                    builder.store(builder.fadd(builder.load(ptr, align=4), total), ptr, align=4)
                with builder.if_then(builder.not_(acc_in)):
                    builder.store(total, ptr, align=4)

    return sig, codegen


@njit(inline="always")
def _call(w, w0, run, x, x0, xs, n, y, y0, ys, accumulate, mt, nb):
    """gemm_pairs with the runtime mt and nb turned into literals: mt is MT = 4 or a tail of 1-3 tokens,
    nb is NB or 2 (W's blocks come in pairs)."""
    if nb == NB:
        if mt == MT:
            gemm_pairs(w, w0, run, x, x0, xs, n, y, y0, ys, accumulate, MT, NB)
        elif mt == 3:
            gemm_pairs(w, w0, run, x, x0, xs, n, y, y0, ys, accumulate, 3, NB)
        elif mt == 2:
            gemm_pairs(w, w0, run, x, x0, xs, n, y, y0, ys, accumulate, 2, NB)
        else:
            gemm_pairs(w, w0, run, x, x0, xs, n, y, y0, ys, accumulate, 1, NB)
    elif mt == MT:
        gemm_pairs(w, w0, run, x, x0, xs, n, y, y0, ys, accumulate, MT, 2)
    elif mt == 3:
        gemm_pairs(w, w0, run, x, x0, xs, n, y, y0, ys, accumulate, 3, 2)
    elif mt == 2:
        gemm_pairs(w, w0, run, x, x0, xs, n, y, y0, ys, accumulate, 2, 2)
    else:
        gemm_pairs(w, w0, run, x, x0, xs, n, y, y0, ys, accumulate, 1, 2)


@njit(parallel=True, fastmath=True, cache=True)
def matmul(y_TO, x_TI, wv_BSKOJ, c_RX):
    """y = x @ W.T for W packed by amx.pack (bf16 bits), float32 x [T, I] and y [T, O]; c: per thread,
    MT x NB x 16 floats for the blocks that reach past y's last output. A task is NB blocks of 16
    outputs (the last one may have 2: W's blocks come in pairs); it walks W KCP column pairs at a time
    and, for each chunk, every MT tokens."""
    T, I = x_TI.shape
    O = y_TO.shape[1]
    B, S = wv_BSKOJ.shape[:2]
    w = wv_BSKOJ.reshape(-1).view(np.uint32)
    run = S * 256  # uint32 pairs from one block of 16 outputs to the next
    x = x_TI.reshape(-1)
    y = y_TO.reshape(-1)
    pairs = I // 2
    width = NB * 16
    for task in prange((B + NB - 1) // NB):
        b0 = task * NB
        nb = min(NB, B - b0)
        inside = 16 * (b0 + nb) <= O  # every output of the task is a column of y
        c = c_RX[get_thread_id()]
        for k0 in range(0, max(pairs, 1), KCP):
            n = min(KCP, pairs - k0)
            for t in range(0, T, MT):
                mt = min(MT, T - t)
                if inside:
                    _call(w, b0 * run + 16 * k0, run, x, t * I + 2 * k0, I, n, y, t * O + 16 * b0, O, k0 > 0, mt, nb)
                else:
                    _call(w, b0 * run + 16 * k0, run, x, t * I + 2 * k0, I, n, c, 0, width, False, mt, nb)
                    for r in range(mt):
                        for o in range(16 * b0, O):
                            v = c[r * width + o - 16 * b0]
                            y_TO[t + r, o] = y_TO[t + r, o] + v if k0 > 0 else v
        if I % 2:  # the last column: the low halves of pair I // 2
            for o in range(16 * b0, min(16 * (b0 + nb), O)):
                b = o // 16
                wo = pair_to_f32(w[b * run + 16 * pairs + o % 16])[0]
                for t in range(T):
                    y_TO[t, o] += wo * x_TI[t, I - 1]


def scratch_floats(threads: int) -> int:
    """float32 elements of scratch that matmul needs (its c)."""
    return threads * MT * NB * 16
