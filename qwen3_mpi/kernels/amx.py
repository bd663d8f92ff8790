"""Prefill matrix products on Intel AMX tiles, as exact as float32 sgemm.

AMX multiplies bf16 tiles and accumulates in float32 (TDPBF16PS: a 16x32 by 32x16 product per
instruction). The weights are bf16 already; an activation x is split into three bf16 parts,
x = hi + mid + lo with hi = bf16(x), mid = bf16(x - hi), lo = bf16(x - hi - mid), which hold its 24
significant bits, so W @ x = W @ hi + W @ mid + W @ lo accumulated in float32 has the error of a float32
product (measured: max error 1.2-3e-6 against float64 where sgemm has 2-2.6e-6). Three passes over the
bf16 units still run at 2.5-3.5x the float32 sgemm rate on the same cores.

Layout: the weight tile (A) is 16 rows of W [O, I] read in place (32 bf16 = 64 bytes per row); the
activation tile (B) must be "VNNI" pairs, so the split writes xv[p, i // 2, t, i % 2]. A tile of C is
then W rows x tokens, stored transposed into y [T, O]. Four C tiles (32 rows x 32 tokens), two A and
two B tiles use all eight tile registers.

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
def split_bf16(xv_PKTJ, x_TI, t0, i0, parts_PTI):
    """xv[p, k, t, j] = bf16 part p of x[t0 + t, i0 + 2k + j]; zero past x's rows and columns.

    Two passes, each over contiguous memory: the parts of each row of x (vectorized) into parts[p, t],
    then 16 x 16 blocks of bf16 pairs (32 bits) transposed into xv."""
    P, Kh, Tp, _ = xv_PKTJ.shape
    T = min(Tp, x_TI.shape[0] - t0)
    width = min(2 * Kh, x_TI.shape[1] - i0)
    for t in prange(Tp):
        if t < T:
            x = x_TI[t0 + t, i0 : i0 + width]
            for i in range(width):
                parts_PTI[0, t, i], parts_PTI[1, t, i], parts_PTI[2, t, i] = _bf16_parts(x[i])
            parts_PTI[:, t, width:] = 0
        else:
            parts_PTI[:, t, :] = 0
    pairs_PTK = parts_PTI.view(np.uint32)
    xv_PKT = xv_PKTJ.reshape(P, Kh, 2 * Tp).view(np.uint32)
    blocks = (Kh + 15) // 16
    for job in prange(P * blocks):
        p = job // blocks
        k0 = job % blocks * 16
        for tb in range(0, Tp, 16):
            for k in range(k0, min(k0 + 16, Kh)):
                for t in range(tb, tb + 16):
                    xv_PKT[p, k, t] = pairs_PTK[p, t, k]


@njit(parallel=True, fastmath=True, cache=True)
def tile_products(y_TO, t0, xv_PKTJ, w_OI, i0, accumulate, c_PRT, pad_PRK):
    """y[t0 + t, o] (+)= sum over parts p and k of W[o, i0 + k] xv[p, k // 2, t, k % 2]: the tokens and
    the columns (a slab of I) that xv holds.

    A task takes 32 rows of W and runs them against every 32 tokens, reading W in place; the columns
    past the last whole step of 32, and all of a last block of fewer than 32 rows, are read from a
    zero-padded copy in the thread's pad (never past the end of W)."""
    O, I = w_OI.shape
    P, Kh, Tp, _ = xv_PKTJ.shape
    T = min(Tp, y_TO.shape[0] - t0)
    width = min(2 * Kh, I - i0)
    steps = (width + STEP - 1) // STEP
    part = Kh * Tp * 2
    row = Tp * 2
    for b in prange((O + ROWS - 1) // ROWS):
        o0 = b * ROWS
        n = min(ROWS, O - o0)
        pad = pad_PRK[get_thread_id()]
        c = c_PRT[get_thread_id()]
        first = 0 if n < ROWS else width // STEP  # steps before this one read W in place
        if first < steps:
            for r in range(ROWS):
                for k in range(first * STEP, steps * STEP):
                    pad[r, k - first * STEP] = w_OI[o0 + r, i0 + k] if r < n and k < width else np.uint16(0)
        tile_config(CONFIG)
        for tb in range(0, Tp, TOKENS):
            tile_zero(4)
            tile_zero(5)
            tile_zero(6)
            tile_zero(7)
            for s in range(steps):
                if s < first:
                    tile_load(0, w_OI, o0 * I + i0 + s * STEP, I)
                    tile_load(1, w_OI, (o0 + 16) * I + i0 + s * STEP, I)
                else:
                    tile_load(0, pad, (s - first) * STEP, pad.shape[1])
                    tile_load(1, pad, 16 * pad.shape[1] + (s - first) * STEP, pad.shape[1])
                for p in range(P):
                    at = p * part + s * (STEP // 2) * row + tb * 2
                    tile_load(2, xv_PKTJ, at, row)
                    tile_load(3, xv_PKTJ, at + 32, row)
                    tile_dpbf16ps(4, 0, 2)
                    tile_dpbf16ps(5, 0, 3)
                    tile_dpbf16ps(6, 1, 2)
                    tile_dpbf16ps(7, 1, 3)
            # c[r, t]: rows 0-15 / 16-31 of the task x tokens 0-15 / 16-31
            tile_store(4, c, 0, TOKENS)
            tile_store(5, c, 16, TOKENS)
            tile_store(6, c, 16 * TOKENS, TOKENS)
            tile_store(7, c, 16 * TOKENS + 16, TOKENS)
            for t in range(min(TOKENS, T - tb)):
                y_row = y_TO[t0 + tb + t, o0 : o0 + n]
                if accumulate:
                    for r in range(n):
                        y_row[r] += c[r * TOKENS + t]
                else:
                    for r in range(n):
                        y_row[r] = c[r * TOKENS + t]
        tile_release()


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def _sizes(I: int, T: int, threads: int) -> tuple[int, int, int, int, int, int]:
    """Slab width, padded token count, and float32 elements of the split slab (twice: row-major and
    VNNI), the C tiles and the pads."""
    slab, Tp = min(_round_up(I, STEP), SLAB), _round_up(min(T, T_CHUNK), TOKENS)
    n_xv = PARTS * slab * Tp // 2
    return slab, Tp, n_xv, n_xv, threads * ROWS * TOKENS, threads * ROWS * slab // 2


def scratch_floats(I: int, T: int, threads: int) -> int:
    """float32 elements of scratch that matmul needs for x [T, I]."""
    return sum(_sizes(I, T, threads)[2:])


def matmul(y_TO, x_TI, w_OI, scratch, threads: int) -> None:
    """y = x @ W.T for bf16 bits W [O, I], float32 x [T, I] and y [T, O]: T_CHUNK tokens by SLAB
    columns at a time (the split slab stays in L2 while every row of W passes by)."""
    T, I = x_TI.shape
    slab, Tp, n_xv, n_rows, n_c, n_pad = _sizes(I, T, threads)
    at = np.cumsum([0, n_xv, n_rows, n_c, n_pad])
    c = scratch[at[2] : at[3]].reshape(threads, ROWS * TOKENS)
    pad = scratch[at[3] : at[4]].view(np.uint16).reshape(threads, ROWS, slab)
    for t0 in range(0, T, Tp):
        tp = min(Tp, _round_up(T - t0, TOKENS))  # the last chunk may be shorter
        xv = scratch[: PARTS * slab * tp // 2].view(np.uint16).reshape(PARTS, slab // 2, tp, 2)
        rows = scratch[at[1] : at[1] + PARTS * tp * slab // 2].view(np.uint16).reshape(PARTS, tp, slab)
        for i0 in range(0, I, slab):
            split_bf16(xv, x_TI, t0, i0, rows)
            tile_products(y_TO, t0, xv, w_OI, i0, i0 > 0, c, pad)
