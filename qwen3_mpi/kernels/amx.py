"""Prefill matrix products on Intel AMX tiles, as exact as float32 sgemm.

AMX multiplies bf16 tiles and accumulates in float32 (TDPBF16PS: a 16x32 by 32x16 product per
instruction). The weights are bf16 already; an activation x is split into three bf16 parts,
x = hi + mid + lo with hi = bf16(x), mid = bf16(x - hi), lo = bf16(x - hi - mid), which hold its 24
significant bits, so W @ x = W @ hi + W @ mid + W @ lo accumulated in float32 has the error of a float32
product (measured: max error 1.2-3e-6 against float64 where sgemm has 2-2.6e-6). Three passes over the
bf16 units still run at 2.5-3.5x the float32 sgemm rate on the same cores.

Layout: the weight tile (A) is 16 rows of W [O, I] read in place (32 bf16 = 64 bytes per row); the
activation tile (B) must be "VNNI" pairs, so the split writes each B tile (16 pairs of columns x 16
tokens x 2) as 1 KiB of contiguous memory. A tile of C is then W rows x tokens, transposed into y [T, O].
Four C tiles (32 rows x 32 tokens), two A and two B tiles use all eight tile registers.

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

ROWS = 32  # rows of W per task (two A tiles)
TOKENS = 32  # tokens per pass over a task's rows (two B tiles)
STEP = 32  # bf16 elements of I per tile product
PARTS = 3  # bf16 parts of each activation
T_CHUNK = 128  # tokens split at a time
SLAB = 1024  # columns of I split at a time: 3 x 1024 x 128 bf16 = 768 KiB stay in L2

_SYS_ARCH_PRCTL = 158  # x86_64
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18


def _numba_cpu_features() -> str:
    """The feature string numba compiles for (its configured one, else the host's)."""
    from numba.core import config

    if config.CPU_FEATURES is not None:
        return config.CPU_FEATURES
    if config.CPU_NAME not in (None, "host"):
        return ""  # a named CPU without an explicit feature list: do not assume AMX
    import llvmlite.binding as llvm

    return llvm.get_host_cpu_features().flatten()


def _enable() -> bool:
    if os.environ.get("QWEN3_MPI_AMX", "1") == "0" or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    features = set(_numba_cpu_features().split(","))
    if not {"+amx-tile", "+amx-bf16"} <= features:
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


def _declare(builder, name, args):
    module = builder.module
    fn = module.globals.get(name)
    return fn if fn is not None else ir.Function(module, ir.FunctionType(ir.VoidType(), args), name)


_I8, _I64 = ir.IntType(8), ir.IntType(64)
_PTR = _I8.as_pointer()


def _address(context, builder, array_type, array, offset):
    """&array.data[offset] (offset in elements) as i8*."""
    data = context.make_array(array_type)(context, builder, array).data
    itemsize = context.get_abi_sizeof(context.get_data_type(array_type.dtype))
    return builder.gep(builder.bitcast(data, _PTR), [builder.mul(offset, ir.Constant(_I64, itemsize))])


def _stride_bytes(context, array_type, stride, builder):
    itemsize = context.get_abi_sizeof(context.get_data_type(array_type.dtype))
    return builder.mul(stride, ir.Constant(_I64, itemsize))


@intrinsic
def tile_config(typingctx, config):
    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        builder.call(_declare(builder, "llvm.x86.ldtilecfg", [_PTR]), [builder.bitcast(data, _PTR)])

    return types.void(config), codegen


@intrinsic
def tile_release(typingctx):
    def codegen(context, builder, sig, args):
        builder.call(_declare(builder, "llvm.x86.tilerelease", []), [])

    return types.void(), codegen


@intrinsic
def tile_zero(typingctx, tile):
    if not isinstance(tile, types.IntegerLiteral):
        return None

    def codegen(context, builder, sig, args):
        builder.call(_declare(builder, "llvm.x86.tilezero", [_I8]), [ir.Constant(_I8, tile.literal_value)])

    return types.void(tile), codegen


def _tile_move(name):
    @intrinsic
    def move(typingctx, tile, array, offset, stride):
        """tile <-> 16 rows of array starting at element offset, rows stride elements apart."""
        if not isinstance(tile, types.IntegerLiteral):
            return None

        def codegen(context, builder, sig, args):
            address = _address(context, builder, sig.args[1], args[1], args[2])
            stride_bytes = _stride_bytes(context, sig.args[1], args[3], builder)
            fn = _declare(builder, name, [_I8, _PTR, _I64])
            builder.call(fn, [ir.Constant(_I8, tile.literal_value), address, stride_bytes])

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
        fn = _declare(builder, "llvm.x86.tdpbf16ps", [_I8] * 3)
        builder.call(fn, [ir.Constant(_I8, t.literal_value) for t in (c, a, b)])

    return types.void(c, a, b), codegen


@intrinsic
def prefetch(typingctx, array, offset):
    """Prefetch the cache line of array[offset] into L2 (llvm.prefetch: read, locality 2, data)."""

    def codegen(context, builder, sig, args):
        address = _address(context, builder, sig.args[0], args[0], args[1])
        i32 = ir.IntType(32)
        fn = _declare_typed(builder, "llvm.prefetch.p0", ir.FunctionType(ir.VoidType(), [_PTR, i32, i32, i32]))
        builder.call(fn, [address, ir.Constant(i32, 0), ir.Constant(i32, 2), ir.Constant(i32, 1)])

    return types.void(array, types.int64), codegen


def _declare_typed(builder, name, fntype):
    fn = builder.module.globals.get(name)
    return fn if fn is not None else ir.Function(builder.module, fntype, name)


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
def split_bf16(xv_NSPHKTJ, x_TI, t0, i0, parts_PTI):
    """xv[n, s, p, h, k, t, j] = bf16 part p of x[t0 + 32n + 16h + t, i0 + 32s + 2k + j]; zero past x's
    rows and columns. Every (n, s, p, h) is one B tile, 1 KiB contiguous.

    Two passes, each over contiguous memory: the parts of each row of x (vectorized) into parts[p, t],
    then 16 x 16 blocks of bf16 pairs (32 bits) transposed into xv."""
    N, S, P = xv_NSPHKTJ.shape[:3]
    Tp = TOKENS * N
    T = min(Tp, x_TI.shape[0] - t0)
    width = min(STEP * S, x_TI.shape[1] - i0)
    for t in prange(Tp):
        if t < T:
            x = x_TI[t0 + t, i0 : i0 + width]
            for i in range(width):
                parts_PTI[0, t, i], parts_PTI[1, t, i], parts_PTI[2, t, i] = _bf16_parts(x[i])
            parts_PTI[:, t, width:] = 0
        else:
            parts_PTI[:, t, :] = 0
    pairs_PTK = parts_PTI.view(np.uint32)
    xv_NSPHKT = xv_NSPHKTJ.reshape(N, S, P, 2, 16, 32).view(np.uint32)
    for job in prange(N * S):
        n = job // S
        s = job % S
        for p in range(P):
            for h in range(2):
                for k in range(16):
                    for t in range(16):
                        xv_NSPHKT[n, s, p, h, k, t] = pairs_PTK[p, TOKENS * n + 16 * h + t, 16 * s + k]


@njit(parallel=True, fastmath=True, cache=True)
def tile_products(y_TO, t0, xv_NSPHKTJ, w_OI, i0, accumulate, edge_RI, tail_OK, c_TNX):
    """y[t0 + t, o] (+)= sum over parts p and k of W[o, i0 + k] xv[...]: the tokens and the columns (a
    slab of I from i0) that xv holds.

    A task takes 32 rows of W (two A tiles per step, read in place) and runs them against every 32
    tokens (two B tiles per part and step), accumulating in the four C tiles, which are then transposed
    into y. The last block of fewer than 32 rows comes from edge (zero-padded), the columns past the
    last whole step of 32 from tail (zero-padded): nothing past the end of W is read.

    Only the first pass over a task's rows reads them from memory (the others find them in L2), and a
    tile load stalls the tile unit until its data is there: so during the later passes the next task's
    rows are prefetched into L2 a few lines per step (measured 5-10% faster)."""
    O, I = w_OI.shape
    N, S, P = xv_NSPHKTJ.shape[:3]
    T = min(TOKENS * N, y_TO.shape[0] - t0)
    s0 = i0 // STEP  # the slab's first step in W
    full = I // STEP  # steps read from W in place
    Ip = edge_RI.shape[1]
    tile = 512  # bf16 elements of a B tile
    row_lines = (min(STEP * S, I - i0) + 31) // 32  # 64-byte lines of a row's slab
    lines = ROWS * row_lines
    per = (lines + max(N - 1, 1) * S - 1) // (max(N - 1, 1) * S)  # lines prefetched per step
    for b in prange((O + ROWS - 1) // ROWS):
        o0 = b * ROWS
        ahead = o0 + 2 * ROWS <= O  # the next task reads W in place
        c = c_TNX[get_thread_id()]
        tile_config(CONFIG)
        for n in range(N):
            tile_zero(4)
            tile_zero(5)
            tile_zero(6)
            tile_zero(7)
            for s in range(S):
                if ahead and (n > 0 or N == 1):
                    first = ((n - 1 if N > 1 else 0) * S + s) * per
                    if first < lines:
                        r = first // row_lines
                        at = (o0 + ROWS + r) * I + i0 + (first - r * row_lines) * 32  # its first line
                        end = (o0 + ROWS + r) * I + i0 + row_lines * 32  # the end of that row's slab
                        for _ in range(min(per, lines - first)):
                            if at >= end:  # on to the next row
                                at += I - row_lines * 32
                                end += I
                            prefetch(w_OI, at)
                            at += 32
                g = s0 + s  # step in W
                if o0 + ROWS > O:
                    tile_load(0, edge_RI, g * STEP, Ip)
                    tile_load(1, edge_RI, 16 * Ip + g * STEP, Ip)
                elif g < full:
                    tile_load(0, w_OI, o0 * I + g * STEP, I)
                    tile_load(1, w_OI, (o0 + 16) * I + g * STEP, I)
                else:
                    tile_load(0, tail_OK, o0 * STEP, STEP)
                    tile_load(1, tail_OK, (o0 + 16) * STEP, STEP)
                at = (n * S + s) * P * 2 * tile
                for p in range(P):
                    # each B tile is loaded right before its two products, whose order frees the
                    # register early for the next load (twice the rate of loading both first)
                    tile_load(2, xv_NSPHKTJ, at, 32)
                    tile_dpbf16ps(4, 0, 2)
                    tile_dpbf16ps(6, 1, 2)
                    tile_load(3, xv_NSPHKTJ, at + tile, 32)
                    tile_dpbf16ps(5, 0, 3)
                    tile_dpbf16ps(7, 1, 3)
                    at += 2 * tile
            # c[n, q, r, t]: tile q = rows 0-15 / 16-31 (q // 2) x tokens 0-15 / 16-31 (q % 2)
            tile_store(4, c[n], 0, 16)
            tile_store(5, c[n], 256, 16)
            tile_store(6, c[n], 512, 16)
            tile_store(7, c[n], 768, 16)
        tile_release()
        # y row by row (contiguous stores): row r, token t of the task is c[n, q, r % 16, t % 16] with
        # tile q = 2 (r >= 16) + (t >= 16); a half row of y reads one column of a tile (stride 16)
        rows = min(ROWS, O - o0)
        for n in range(N):
            for t in range(min(TOKENS, T - TOKENS * n)):
                y_row = y_TO[t0 + TOKENS * n + t, o0 : o0 + rows]
                for h in range(2):
                    column = c[n, (2 * h + t // 16) * 256 + t % 16 :: 16]
                    half = y_row[16 * h : min(16 * h + 16, rows)]
                    if accumulate:
                        for r in range(half.shape[0]):
                            half[r] += column[r]
                    else:
                        for r in range(half.shape[0]):
                            half[r] = column[r]


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def _sizes(O: int, I: int, T: int, threads: int) -> tuple[int, int, int, int, int, int]:
    """Padded columns, slab width, token blocks of 32 per chunk of tokens, and float32 elements of: the
    split of a slab (VNNI tiles and row-major parts), the C tiles, edge and tail."""
    Ip = _round_up(I, STEP)
    slab, N = min(Ip, SLAB), _round_up(min(T, T_CHUNK), TOKENS) // TOKENS
    n_split = PARTS * slab * N * TOKENS // 2
    return Ip, slab, N, n_split, threads * N * ROWS * TOKENS, (ROWS * Ip + _round_up(O, ROWS) * STEP) // 2


def scratch_floats(O: int, I: int, T: int, threads: int) -> int:
    """float32 elements of scratch that matmul needs for x [T, I] and W [O, I]."""
    _, _, _, n_split, n_c, n_edges = _sizes(O, I, T, threads)
    return 2 * n_split + n_c + n_edges


def matmul(y_TO, x_TI, w_OI, scratch, threads: int) -> None:
    """y = x @ W.T for bf16 bits W [O, I], float32 x [T, I] and y [T, O]: T_CHUNK tokens by SLAB columns
    at a time (their split, 3 x 128 x 1024 bf16 = 768 KiB, stays in L2 while every row of W passes by
    once per 32 tokens; the slabs' float32 partial sums are added in y, as sgemm adds its K blocks).
    scratch must start on a cache line (aligned.py): so do all the tiles carved from it."""
    T, I = x_TI.shape
    O = w_OI.shape[0]
    Ip, slab, N, n_split, n_c, n_edges = _sizes(O, I, T, threads)
    at = np.cumsum([0, n_split, n_split, n_c, ROWS * Ip // 2, n_edges - ROWS * Ip // 2])
    c = scratch[at[2] : at[3]].reshape(threads, N, ROWS * TOKENS)
    edge = scratch[at[3] : at[4]].view(np.uint16).reshape(ROWS, Ip)
    tail = scratch[at[4] : at[5]].view(np.uint16).reshape(-1, STEP)
    if O % ROWS:
        edge[:] = 0
        edge[: O % ROWS, :I] = w_OI[O - O % ROWS :]
    if I % STEP:
        tail[:] = 0
        tail[:O, : I % STEP] = w_OI[:, I - I % STEP :]
    for t0 in range(0, T, N * TOKENS):
        n = (min(N * TOKENS, T - t0) + TOKENS - 1) // TOKENS  # the last chunk may be shorter
        for i0 in range(0, I, slab):
            width = min(slab, Ip - i0)
            xv = (
                scratch[: n * width * PARTS * TOKENS // 2]
                .view(np.uint16)
                .reshape(n, width // STEP, PARTS, 2, 16, 16, 2)
            )
            parts = (
                scratch[at[1] : at[1] + n * width * PARTS * TOKENS // 2]
                .view(np.uint16)
                .reshape(PARTS, n * TOKENS, width)
            )
            split_bf16(xv, x_TI, t0, i0, parts)
            tile_products(y_TO, t0, xv, w_OI, i0, i0 > 0, edge, tail, c[:, :n])
