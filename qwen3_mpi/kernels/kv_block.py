"""The two passes of streaming attention's row kernel over one KV block, as explicit vector LLVM IR.

For a head_dim that is a multiple of 16 (Qwen3's is 128), a K or V row is head_dim / 16 vectors of 16
floats (a bf16 row widened as it is loaded), which stay in registers while every row of the task uses
them: the K row for the dot product of each (head, query) row, the V row for each row's output. The
outputs of two rows at a time stay in registers across the whole block, and a row's dot product is
summed once, by a tree of shuffles. numba's own loops widened a row again for every row that used it,
kept the outputs in memory (a load and a store per element and position) and summed each dot product
through its own reduction, so streaming decode takes less time with these passes, with a bf16 or a
float32 cache (docs/benchmarks.md, 'Kernel measurements').

Each pass prefetches the row KV_AHEAD positions ahead, with the number of lines of a row known when
the code is generated (no loop for LLVM to unroll), into the cache the decode products prefetch into
(bf16.PREFETCH_LOCALITY): on the Zen 4 EPYC L2 rather than L1, faster for a cache read from memory,
a little slower for one that stays in L3 (docs/benchmarks.md, 'Kernel measurements').
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .bf16 import PREFETCH_LOCALITY, F32x16, I32x16, fma16, splat
from .llvm_ir import I32, I64, LINE, PTR, emit_prefetch

F32 = ir.FloatType()
LANES = 16
KV_AHEAD = 16  # positions of K or V the row kernel prefetches ahead (8 KiB): faster than 8 (docs/benchmarks.md)


def _view(context, builder, array_type, array):
    """(data as i8*, rows, row stride in bytes) of a 2-d array."""
    a = context.make_array(array_type)(context, builder, array)
    shape = cgutils.unpack_tuple(builder, a.shape)
    strides = cgutils.unpack_tuple(builder, a.strides)
    return builder.bitcast(a.data, PTR), shape[0], strides[0]


def _row(builder, data, stride, r):
    return builder.gep(data, [builder.mul(r, stride)])


def _load_row(builder, row, chunks, bf16):
    """The row (i8* to its first element) as `chunks` <16 x float>, bf16 widened exactly."""
    vectors = []
    for c in range(chunks):
        if bf16:
            at = builder.gep(row, [ir.Constant(I64, 2 * LANES * c)])
            bits = builder.load(builder.bitcast(at, ir.VectorType(ir.IntType(16), LANES).as_pointer()), align=2)
            wide = builder.shl(builder.zext(bits, I32x16), ir.Constant(I32x16, [16] * LANES))
            vectors.append(builder.bitcast(wide, F32x16))
        else:
            at = builder.gep(row, [ir.Constant(I64, 4 * LANES * c)])
            vectors.append(builder.load(builder.bitcast(at, F32x16.as_pointer()), align=4))
    return vectors


def _prefetch_ahead(builder, data, stride, j, ahead, row_bytes):
    """Prefetch the lines of row j + ahead (row_bytes long, from a line boundary when the rows are)."""
    row = _row(builder, data, stride, builder.add(j, ir.Constant(I64, ahead)))
    for line in range(0, row_bytes, LINE):
        emit_prefetch(builder, builder.gep(row, [ir.Constant(I64, line)]), PREFETCH_LOCALITY)


def _sum_lanes(builder, v):
    """The sum of a <16 x float>'s lanes, by halves (a tree of 4 shuffles and adds)."""
    width = LANES
    while width > 1:
        width //= 2
        halves = [ir.Constant(ir.VectorType(I32, width), list(range(h * width, (h + 1) * width))) for h in (0, 1)]
        v = builder.fadd(builder.shuffle_vector(v, v, halves[0]), builder.shuffle_vector(v, v, halves[1]))
    return builder.extract_element(v, ir.Constant(I32, 0))


def _check(cache, K, rows_of):
    """Types accepted: a float32 or bf16 (uint16) C-contiguous 2-d cache block, head_dim K a literal
    multiple of 16, float32 C-contiguous 2-d rows."""
    if not isinstance(K, types.IntegerLiteral) or K.literal_value % LANES or K.literal_value <= 0:
        return False
    if not (isinstance(cache, types.Array) and cache.ndim == 2 and cache.layout == "C"):
        return False
    if cache.dtype not in (types.float32, types.uint16):
        return False
    return all(
        isinstance(a, types.Array) and a.ndim == 2 and a.layout == "C" and a.dtype == types.float32 for a in rows_of
    )


@intrinsic
def block_scores(typingctx, k_NK, q_TO, h0, heads, sc_RB, scale, K):
    """sc[hh nq + tq, j] = scale (q[tq, (h0 + hh) K : (h0 + hh + 1) K] . k[j]) for every row j < n of the
    block k (a [n, K] slice of the cache), hh < heads and tq < nq (the rows of q)."""
    if not _check(k_NK, K, (q_TO, sc_RB)):
        return None
    chunks, bf16 = K.literal_value // LANES, k_NK.dtype == types.uint16
    row_bytes = K.literal_value * (2 if bf16 else 4)
    sig = types.void(k_NK, q_TO, types.int64, types.int64, sc_RB, types.float32, K)

    def codegen(context, builder, signature, args):
        k_arg, q_arg, h0v, headsv, sc_arg, scalev, _ = args
        k, n, k_stride = _view(context, builder, signature.args[0], k_arg)
        q, nq, q_stride = _view(context, builder, signature.args[1], q_arg)
        sc, _, sc_stride = _view(context, builder, signature.args[4], sc_arg)
        fma = fma16(builder)
        with cgutils.for_range(builder, n) as jl:
            j = jl.index
            _prefetch_ahead(builder, k, k_stride, j, KV_AHEAD, row_bytes)
            kv = _load_row(builder, _row(builder, k, k_stride, j), chunks, bf16)
            with cgutils.for_range(builder, headsv) as hl:
                column = builder.mul(builder.add(h0v, hl.index), ir.Constant(I64, 4 * K.literal_value))
                with cgutils.for_range(builder, nq) as tl:
                    q_row = builder.gep(_row(builder, q, q_stride, tl.index), [column])
                    qv = _load_row(builder, q_row, chunks, False)
                    sums = [builder.fmul(qv[c], kv[c]) for c in range(min(2, chunks))]
                    for c in range(2, chunks):
                        sums[c % 2] = builder.call(fma, [qv[c], kv[c], sums[c % 2]])
                    total = _sum_lanes(builder, sums[0] if chunks == 1 else builder.fadd(sums[0], sums[1]))
                    r = builder.add(builder.mul(hl.index, nq), tl.index)
                    at = builder.gep(_row(builder, sc, sc_stride, r), [builder.mul(j, ir.Constant(I64, 4))])
                    builder.store(builder.fmul(total, scalev), builder.bitcast(at, F32.as_pointer()))

    return sig, codegen


@intrinsic
def block_values(typingctx, v_NK, sc_RB, acc_RK, K):
    """acc[r] += sum over j < n of sc[r, j] v[j], for every row r of acc and row j of the block v (a
    [n, K] slice of the cache). Rows are taken two at a time, their outputs in registers across the block."""
    if not _check(v_NK, K, (sc_RB, acc_RK)):
        return None
    chunks, bf16 = K.literal_value // LANES, v_NK.dtype == types.uint16
    row_bytes = K.literal_value * (2 if bf16 else 4)
    sig = types.void(v_NK, sc_RB, acc_RK, K)

    def codegen(context, builder, signature, args):
        v, n, v_stride = _view(context, builder, signature.args[0], args[0])
        sc, _, sc_stride = _view(context, builder, signature.args[1], args[1])
        acc, rows, acc_stride = _view(context, builder, signature.args[2], args[2])
        fma = fma16(builder)

        def rows_from(r0, count):
            acc_rows = [_row(builder, acc, acc_stride, builder.add(r0, ir.Constant(I64, i))) for i in range(count)]
            sc_rows = [_row(builder, sc, sc_stride, builder.add(r0, ir.Constant(I64, i))) for i in range(count)]
            slots = [
                cgutils.alloca_once_value(builder, value)
                for row in acc_rows
                for value in _load_row(builder, row, chunks, False)
            ]
            with cgutils.for_range(builder, n) as jl:
                j = jl.index
                _prefetch_ahead(builder, v, v_stride, j, KV_AHEAD, row_bytes)
                vv = _load_row(builder, _row(builder, v, v_stride, j), chunks, bf16)
                for i, sc_row in enumerate(sc_rows):
                    at = builder.gep(sc_row, [builder.mul(j, ir.Constant(I64, 4))])
                    e = splat(builder, builder.load(builder.bitcast(at, F32.as_pointer())))
                    for c in range(chunks):
                        slot = slots[i * chunks + c]
                        builder.store(builder.call(fma, [e, vv[c], builder.load(slot)]), slot)
            for i, row in enumerate(acc_rows):
                for c in range(chunks):
                    at = builder.gep(row, [ir.Constant(I64, 4 * LANES * c)])
                    builder.store(
                        builder.load(slots[i * chunks + c]), builder.bitcast(at, F32x16.as_pointer()), align=4
                    )

        pairs = builder.sdiv(rows, ir.Constant(I64, 2))
        with cgutils.for_range(builder, pairs) as pl:
            rows_from(builder.mul(pl.index, ir.Constant(I64, 2)), 2)
        odd = builder.icmp_signed("!=", builder.mul(pairs, ir.Constant(I64, 2)), rows)
        with builder.if_then(odd):
            rows_from(builder.sub(rows, ir.Constant(I64, 1)), 1)

    return sig, codegen
