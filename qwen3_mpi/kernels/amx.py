"""Prefill matrix products on Intel AMX tiles, as exact as float32 sgemm.

AMX multiplies bf16 tiles and accumulates in float32 (TDPBF16PS: a 16x32 by 32x16 product per
instruction). The weights are bf16 already; an activation x is split into three bf16 parts,
x = hi + mid + lo with hi = bf16(x), mid = bf16(x - hi), lo = bf16(x - hi - mid), which hold its 24
significant bits, so W @ x = W @ hi + W @ mid + W @ lo accumulated in float32 has the error of a float32
product (measured: max error 1.2-3e-6 against float64 where sgemm has 2-2.6e-6). Three passes over the
bf16 units still run faster than float32 sgemm on the same cores (docs/benchmarks.md, 'Kernel
measurements').

Layout: the activation tile (A) is 16 tokens x 32 columns of one part, read from the split's rows; the
weight tile (B) must be "VNNI" pairs (column pairs interleaved per output), so the weights are packed
once at load (pack(): the same bytes, every tile 1 KiB contiguous). A tile of C is then 16 tokens x 16
outputs, stored straight into y [T, O]. Four C tiles (32 tokens x 32 outputs), two A and two B tiles use
all eight tile registers.

Linux hands out the AMX register state only on request (arch_prctl ARCH_REQ_XCOMP_PERM, kernel >= 5.16);
AVAILABLE says whether this process has it and numba compiles for a CPU with amx-tile and amx-bf16.
Set QWEN3_MPI_AMX=0 to leave AMX unused.
"""

import ctypes
import os
import platform

import numpy as np
from llvmlite import ir
from numba import get_thread_id, njit, prange, types
from numba.extending import intrinsic

from .. import aligned
from .llvm_ir import I8, I64, PTR, address, declare, itemsize, prefetch, target_features

ROWS = 32  # outputs (rows of W) per task: two B tiles
TOKENS = 32  # tokens per pass over a task's weights: two A tiles
STEP = 32  # bf16 elements of I per tile product
PARTS = 3  # bf16 parts of each activation
T_CHUNK = 128  # tokens split at a time
SLAB = 1024  # columns of I split at a time: 3 x 1024 x 128 bf16 = 768 KiB stay in L2

_SYS_ARCH_PRCTL = 158  # x86_64
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18


def _enable() -> bool:
    if os.environ.get("QWEN3_MPI_AMX", "1") == "0" or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    if not {"+amx-tile", "+amx-bf16"} <= target_features():
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0


AVAILABLE = _enable()

# ldtilecfg's 64-byte operand: palette 1, tiles 0-7 of 16 rows x 64 bytes
CONFIG = np.zeros(64, np.uint8)
CONFIG[0] = 1
CONFIG[16:32].view(np.uint16)[:] = 64
CONFIG[48:56] = 16


# --- the tile instructions, as numba intrinsics (tile numbers must be literal) ---------------------------


def _stride_bytes(context, array_type, stride, builder):
    return builder.mul(stride, ir.Constant(I64, itemsize(context, array_type)))


@intrinsic
def tile_config(typingctx, config):
    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        builder.call(declare(builder, "llvm.x86.ldtilecfg", [PTR]), [builder.bitcast(data, PTR)])

    return types.void(config), codegen


@intrinsic
def tile_release(typingctx):
    def codegen(context, builder, sig, args):
        builder.call(declare(builder, "llvm.x86.tilerelease", []), [])

    return types.void(), codegen


@intrinsic
def tile_zero(typingctx, tile):
    if not isinstance(tile, types.IntegerLiteral):
        return None

    def codegen(context, builder, sig, args):
        builder.call(declare(builder, "llvm.x86.tilezero", [I8]), [ir.Constant(I8, tile.literal_value)])

    return types.void(tile), codegen


def _tile_move(name):
    @intrinsic
    def move(typingctx, tile, array, offset, stride):
        """tile <-> 16 rows of array starting at element offset, rows stride elements apart."""
        if not isinstance(tile, types.IntegerLiteral):
            return None

        def codegen(context, builder, sig, args):
            where = address(context, builder, sig.args[1], args[1], args[2])
            stride_bytes = _stride_bytes(context, sig.args[1], args[3], builder)
            fn = declare(builder, name, [I8, PTR, I64])
            builder.call(fn, [ir.Constant(I8, tile.literal_value), where, stride_bytes])

        return types.void(tile, array, types.int64, types.int64), codegen

    return move


tile_load = _tile_move("llvm.x86.tileloadd64")
tile_store = _tile_move("llvm.x86.tilestored64")


@intrinsic
def tile_dpbf16ps(typingctx, c, a, b):
    """C[m, n] += sum_k A[m, 2k] B[k, 2n] + A[m, 2k + 1] B[k, 2n + 1] (bf16 in, float32 accumulate)."""
    if not all(isinstance(t, types.IntegerLiteral) for t in (c, a, b)):
        return None

    def codegen(context, builder, sig, args):
        fn = declare(builder, "llvm.x86.tdpbf16ps", [I8] * 3)
        builder.call(fn, [ir.Constant(I8, t.literal_value) for t in (c, a, b)])

    return types.void(c, a, b), codegen


# --- kernels ---------------------------------------------------------------------------------------------


@njit(inline="always")
def _bf16_round(v):
    """v rounded to the nearest bf16 (ties to even), as float32 bits."""
    b = np.float32(v).view(np.uint32)
    return np.uint32((b + np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000))


@njit(inline="always")
def _bf16_parts(v):
    """v = hi + mid + lo, each a bf16 (as its 16 bits): the 24 significant bits of a float32."""
    hi = _bf16_round(v)
    r = np.float32(v - hi.view(np.float32))
    mid = _bf16_round(r)
    lo = _bf16_round(np.float32(r - mid.view(np.float32)))
    return np.uint16(hi >> np.uint32(16)), np.uint16(mid >> np.uint32(16)), np.uint16(lo >> np.uint32(16))


@njit(parallel=True, cache=True)
def split_bf16(parts_PTI, x_TI, t0, i0):
    """parts[p, t, i] = bf16 part p of x[t0 + t, i0 + i]; zero past x's rows and columns. A tile of 16
    tokens x 32 columns of a part is then 16 rows of 64 bytes, SLAB * 2 bytes apart."""
    Tp, width = parts_PTI.shape[1], parts_PTI.shape[2]
    T = min(Tp, x_TI.shape[0] - t0)
    n = min(width, x_TI.shape[1] - i0)
    for t in prange(Tp):
        if t < T:
            x = x_TI[t0 + t, i0 : i0 + n]
            for i in range(n):
                parts_PTI[0, t, i], parts_PTI[1, t, i], parts_PTI[2, t, i] = _bf16_parts(x[i])
            parts_PTI[:, t, n:] = 0
        else:
            parts_PTI[:, t, :] = 0


@njit(parallel=True, cache=True)
def _pack(wv_BSKOJ, w_RI, r0):
    """Blocks of wv holding rows r0 .. r0 + R of W from w = those rows (r0 a multiple of 16); zero past
    w's rows and columns."""
    R, I = w_RI.shape
    S = wv_BSKOJ.shape[1]
    for b in prange(r0 // 16, min(wv_BSKOJ.shape[0], (r0 + R + 15) // 16)):
        for s in range(S):
            for k in range(16):
                for o in range(16):
                    for j in range(2):
                        r, c = 16 * b + o - r0, STEP * s + 2 * k + j
                        wv_BSKOJ[b, s, k, o, j] = w_RI[r, c] if r < R and c < I else np.uint16(0)


def packed_empty(O: int, I: int) -> np.ndarray:
    """An uninitialized wv [B, S, 16, 16, 2] for W [O, I] (see pack); fill it with pack_rows."""
    return aligned.empty((_round_up(O, ROWS) // 16, _round_up(I, STEP) // STEP, 16, 16, 2), np.uint16)


def pack_rows(wv_BSKOJ, w_RI, r0: int, O: int) -> None:
    """Pack rows r0 .. r0 + R of W [O, I] (r0 a multiple of 32) into wv; the call with W's last row also
    zeroes the padding rows. A large matrix is packed a chunk of rows at a time, as it is read."""
    assert r0 % ROWS == 0 and r0 + w_RI.shape[0] <= O
    _pack(wv_BSKOJ, w_RI, r0)
    if r0 + w_RI.shape[0] == O:
        wv_BSKOJ[(O + 15) // 16 :] = 0


def pack(w_OI: np.ndarray) -> np.ndarray:
    """bf16 bits W [O, I] -> wv [B, S, 16, 16, 2] with wv[b, s, k, o, j] = W[16b + o, 32s + 2k + j] (zero
    past W; B = O rounded up to 32, over 16): the tile-unit ("VNNI") layout, every (b, s) one contiguous
    1 KiB B tile; 64-byte aligned. The same bytes as W (plus padding), so decode reads no more."""
    wv = packed_empty(*w_OI.shape)
    pack_rows(wv, w_OI, 0, w_OI.shape[0])
    return wv


@njit(inline="always")
def _load_c(block, at, stride):
    """C tiles 4-7 <- the 32 tokens x 32 outputs of block from element at, rows stride elements apart:
    4 = tokens 0-15 x outputs 0-15, 5 = tokens 0-15 x outputs 16-31, 6 and 7 = tokens 16-31."""
    tile_load(4, block, at, stride)
    tile_load(5, block, at + 16, stride)
    tile_load(6, block, at + 16 * stride, stride)
    tile_load(7, block, at + 16 * stride + 16, stride)


@njit(inline="always")
def _store_c(block, at, stride):
    tile_store(4, block, at, stride)
    tile_store(5, block, at + 16, stride)
    tile_store(6, block, at + 16 * stride, stride)
    tile_store(7, block, at + 16 * stride + 16, stride)


@njit(parallel=True, fastmath=True, cache=True)
def tile_products(y_TO, t0, parts_PTI, wv_BSKOJ, i0, accumulate, c_TQX):
    """y[t0 + t, o] (+)= sum over parts p and k of parts[p, t, k] W[o, i0 + k]: the tokens and the columns
    (a slab of I from i0) that parts holds.

    A task takes 32 outputs (two B tiles of W per step) and runs them against every 32 tokens (two A
    tiles per part and step), accumulating in four C tiles of 16 tokens x 16 outputs, which start from y
    (or zero) and go back into y by tile stores: y is written in place, row-major, no transposing. Tiles
    that would reach past y's last token or output go through the thread's c.

    Only the first pass over a task's weights reads them from memory (the others find them in L2);
    during the later passes the next task's weights are prefetched into L2 a few lines per step."""
    T_all, O = y_TO.shape
    P, Tp, width = parts_PTI.shape
    N = Tp // TOKENS
    T = min(Tp, T_all - t0)
    S = (min(width, SLAB) + STEP - 1) // STEP
    s0 = i0 // STEP  # the slab's first step in W
    steps = wv_BSKOJ.shape[1]
    tile = 512  # bf16 elements of a tile
    lines = 2 * S * tile // 32  # 64-byte lines of a task's slab of W (two runs of S tiles)
    per = (lines + max(N - 1, 1) * S - 1) // (max(N - 1, 1) * S)  # lines prefetched per step
    for task in prange(wv_BSKOJ.shape[0] // 2):
        o0 = task * ROWS
        b0 = (2 * task * steps + s0) * tile  # W tiles of outputs o0.. and o0 + 16.. for step s: b0 + s * tile
        b1 = b0 + steps * tile
        ahead = o0 + 2 * ROWS <= wv_BSKOJ.shape[0] * 16  # the next task's tiles exist
        c = c_TQX[get_thread_id()]
        tile_config(CONFIG)
        for n in range(N):
            t = t0 + TOKENS * n
            whole = t + TOKENS <= t0 + T and o0 + ROWS <= O  # all four C tiles inside y
            if not accumulate:
                tile_zero(4)
                tile_zero(5)
                tile_zero(6)
                tile_zero(7)
            elif whole:
                _load_c(y_TO, t * O + o0, O)
            else:
                _edge_in(c, y_TO, t, o0)
                _load_c(c, 0, ROWS)
            for s in range(S):
                if ahead and (n > 0 or N == 1):
                    first = ((n - 1 if N > 1 else 0) * S + s) * per
                    for line in range(first, min(first + per, lines)):
                        # the next task's two runs of S tiles (outputs o0 + 32.. and o0 + 48..)
                        run, i = (0, line) if line < lines // 2 else (1, line - lines // 2)
                        prefetch(wv_BSKOJ, b0 + (2 + run) * steps * tile + 32 * i, 2)
                tile_load(0, wv_BSKOJ, b0 + s * tile, 32)
                tile_load(1, wv_BSKOJ, b1 + s * tile, 32)
                at = (TOKENS * n) * width + STEP * s  # parts[p, 32n, 32s]
                for p in range(P):
                    # each A tile is loaded right before its two products, whose order frees the
                    # register early for the next load (faster than loading both first: docs/benchmarks.md)
                    tile_load(2, parts_PTI, at, width)
                    tile_dpbf16ps(4, 2, 0)
                    tile_dpbf16ps(5, 2, 1)
                    tile_load(3, parts_PTI, at + 16 * width, width)
                    tile_dpbf16ps(6, 3, 0)
                    tile_dpbf16ps(7, 3, 1)
                    at += Tp * width
            if whole:
                _store_c(y_TO, t * O + o0, O)
            else:
                _store_c(c, 0, ROWS)
                _edge_out(y_TO, c, t, o0)
        tile_release()


@njit(inline="always")
def _edge_in(c, y_TO, t, o0):
    """c[32 r + i] = y[t + r, o0 + i] where y has it, else 0: a C block that reaches past y."""
    T, O = y_TO.shape
    for r in range(TOKENS):
        for i in range(ROWS):
            c[r * ROWS + i] = y_TO[t + r, o0 + i] if t + r < T and o0 + i < O else np.float32(0.0)


@njit(inline="always")
def _edge_out(y_TO, c, t, o0):
    """The part of the C block in c that lies inside y, into y."""
    T, O = y_TO.shape
    for r in range(min(TOKENS, T - t)):
        for i in range(min(ROWS, O - o0)):
            y_TO[t + r, o0 + i] = c[r * ROWS + i]


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def _sizes(I: int, T: int, threads: int) -> tuple[int, int, int, int]:
    """Slab width, padded tokens per chunk, and float32 elements of the split of a slab and of the C
    tiles of the partial blocks."""
    slab, Tp = min(_round_up(I, STEP), SLAB), _round_up(min(T, T_CHUNK), TOKENS)
    return slab, Tp, PARTS * Tp * slab // 2, threads * TOKENS * ROWS


def scratch_floats(I: int, T: int, threads: int) -> int:
    """float32 elements of scratch that matmul needs for x [T, I]."""
    return sum(_sizes(I, T, threads)[2:])


def matmul(y_TO, x_TI, wv_BSKOJ, scratch, threads: int) -> None:
    """y = x @ W.T for W packed by pack(), float32 x [T, I] and y [T, O]: T_CHUNK tokens by SLAB columns at
    a time (their split, 3 x 128 x 1024 bf16 = 768 KiB, stays in L2 while every tile of W passes by once
    per 32 tokens; the slabs accumulate into y, as sgemm adds its K blocks). Fastest when y, x and scratch
    start on a cache line (aligned.py) and O is a multiple of 16: then every tile row is one line."""
    T, I = x_TI.shape
    slab, Tp, n_split, n_c = _sizes(I, T, threads)
    c = scratch[n_split : n_split + n_c].reshape(threads, TOKENS * ROWS)
    for t0 in range(0, T, Tp):
        tp = min(Tp, _round_up(T - t0, TOKENS))  # the last chunk may be shorter
        for i0 in range(0, I, slab):
            width = min(slab, _round_up(I - i0, STEP))
            parts = scratch[: PARTS * tp * width // 2].view(np.uint16).reshape(PARTS, tp, width)
            split_bf16(parts, x_TI, t0, i0)
            tile_products(y_TO, t0, parts, wv_BSKOJ, i0, i0 > 0, c)
