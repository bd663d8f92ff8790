"""y = x @ W.T for weights kept in the checkpoint's dtype (bf16 bits or float32), W shaped [O, I].

bf16 W is stored in the tile layout of amx.pack (the same bytes, in 1 KiB tiles of 16 outputs x 32
inputs) on CPUs with AVX-512, in rows elsewhere. Few rows of x (decode): a numba kernel reads every
weight once and widens it in registers, so the bytes read per token equal the stored size (memory
bound). Many rows (prefill, compute bound): in the tile layout, the AMX kernels of amx.py where the CPU
has AMX, else the float32 FMA kernel of fma.py; float32 W and bf16 W in rows: numba threads each take
tiles of W rows, widen a tile to float32 in their own scratch (L2-resident) and multiply it with
OpenBLAS sgemm called from that thread.
"""

import numpy as np
from numba import get_num_threads, get_thread_id, njit, prange
from numba.extending import overload

from .. import aligned
from . import amx, fma
from .bf16 import dot_pairs_16x4, pair_to_f32, to_f32
from .blas import NO_TRANS, ROW_MAJOR, SGEMM, TRANS
from .llvm_ir import target_features
from .ops import embed_rows

SMALL_T = 4  # at most this many rows of x: matvec; more: the prefill products
TILE_ROWS = 128  # rows of W per sgemm call (128 x 3072 floats = 1.5 MB fits L2)
PACKED_OUT = 64  # floats per thread for matvec_packed: four blocks of 16 outputs


@njit(parallel=True, fastmath=True, cache=True)
def matvec(y_TO, x_TI, w_OI):
    """y[t, o] = sum_i W[o, i] x[t, i], reading W once (each row serves all T rows of x): O*I elements.
    A task takes four rows a quarter of W apart, so every thread reads four memory streams at once and
    keeps more loads in flight than one stream does (more bandwidth than row by row on the machines
    measured: docs/benchmarks.md, 'Kernel measurements')."""
    for o in prange((w_OI.shape[0] + 3) // 4):
        _matvec_task(o, y_TO, x_TI, w_OI)


@njit(fastmath=True, cache=True)
def _matvec_task(o, y_TO, x_TI, w_OI):
    """matvec's task o: rows o, o + q, o + 2q, o + 3q of W (q = a quarter of its rows, rounded up)."""
    T, I = x_TI.shape
    O = w_OI.shape[0]
    q = (O + 3) // 4
    # past the end, row O - 1 is read again and not stored
    r0 = w_OI[o]
    r1 = w_OI[min(o + q, O - 1)]
    r2 = w_OI[min(o + 2 * q, O - 1)]
    r3 = w_OI[min(o + 3 * q, O - 1)]
    for t in range(T):
        xt = x_TI[t]
        a0 = np.float32(0.0)
        a1 = np.float32(0.0)
        a2 = np.float32(0.0)
        a3 = np.float32(0.0)
        for i in range(I):
            xi = xt[i]
            a0 += to_f32(r0[i]) * xi
            a1 += to_f32(r1[i]) * xi
            a2 += to_f32(r2[i]) * xi
            a3 += to_f32(r3[i]) * xi
        y_TO[t, o] = a0
        if o + q < O:
            y_TO[t, o + q] = a1
        if o + 2 * q < O:
            y_TO[t, o + 2 * q] = a2
        if o + 3 * q < O:
            y_TO[t, o + 3 * q] = a3


@njit(parallel=True, fastmath=True, cache=True)
def matvec_packed(y_TO, x_TI, wv_BSKOJ, scratch):
    """matvec for W packed by amx.pack: a block of 16 outputs is one contiguous run of tiles whose 64-byte
    rows hold a column pair of all 16 outputs, so 16 float32 lanes accumulate 16 outputs (no horizontal
    sums); a task takes four blocks a quarter of W apart (four memory streams, as matvec). scratch: per
    thread, PACKED_OUT floats."""
    w_X, x_X = _packed_views(wv_BSKOJ, x_TI)
    for b in prange((wv_BSKOJ.shape[0] + 3) // 4):
        _matvec_packed_task(b, y_TO, x_TI, wv_BSKOJ, w_X, x_X, scratch)


@njit(cache=True, inline="always")
def _packed_views(wv_BSKOJ, x_TI):
    """W's bf16 pairs as one run of uint32 (block b starts at b * S * 256) and x as one run of floats."""
    return wv_BSKOJ.reshape(-1, 32).view(np.uint32).reshape(-1), x_TI.reshape(-1)


@njit(fastmath=True, cache=True)
def _matvec_packed_task(b, y_TO, x_TI, wv_BSKOJ, w_X, x_X, scratch):
    """matvec_packed's task b: blocks b, b + q, b + 2q, b + 3q (q = a quarter of the blocks, rounded up);
    w_X, x_X: _packed_views, made once for all tasks rather than per task (faster: docs/benchmarks.md,
    'Kernel measurements')."""
    T, I = x_TI.shape
    O = y_TO.shape[1]
    B, S = wv_BSKOJ.shape[:2]
    run = S * 256
    n = I // 2  # whole column pairs
    q = (B + 3) // 4
    out = scratch[get_thread_id() * PACKED_OUT : (get_thread_id() + 1) * PACKED_OUT]
    # past the end, block B - 1 is read again and not stored
    offs = (b * run, min(b + q, B - 1) * run, min(b + 2 * q, B - 1) * run, min(b + 3 * q, B - 1) * run)
    for t in range(T):
        dot_pairs_16x4(w_X, offs[0], offs[1], offs[2], offs[3], x_X, t * I, n, out)
        if I % 2:  # the last column: the low halves of pair n
            xl = x_TI[t, I - 1]
            for j in range(4):
                for o in range(16):
                    out[16 * j + o] += pair_to_f32(w_X[offs[j] + 16 * n + o])[0] * xl
        for j in range(4):
            blk = b + j * q
            if blk < B:
                for o in range(min(16, O - 16 * blk)):
                    y_TO[t, 16 * blk + o] = out[16 * j + o]


@njit(inline="always")
def task_units(w):
    """(outputs per unit, q) of the tasks of matvec (2-d rows) or matvec_packed (5-d tiles) for W: task c
    computes units c, c + q, c + 2q and c + 3q, a unit being a row of W or a block of 16 outputs."""
    return 16 if w.ndim == 5 else 1, (w.shape[0] + 3) // 4


def matvec_share(part, parts, y_TO, x_TI, w, scratch):
    """Inside a parallel region: share `part` of `parts` (tasks part q // parts .. (part + 1) q // parts
    - 1) of matvec or matvec_packed, whichever W's layout (2-d rows or 5-d tiles) takes."""
    raise NotImplementedError  # numba only


@overload(matvec_share, jit_options={"fastmath": True})
def _matvec_share(part, parts, y_TO, x_TI, w, scratch):
    if w.ndim == 5:

        def packed(part, parts, y_TO, x_TI, w, scratch):
            w_X, x_X = _packed_views(w, x_TI)
            q = task_units(w)[1]
            for b in range(part * q // parts, (part + 1) * q // parts):
                _matvec_packed_task(b, y_TO, x_TI, w, w_X, x_X, scratch)

        return packed

    def rows(part, parts, y_TO, x_TI, w, scratch):
        q = task_units(w)[1]
        for o in range(part * q // parts, (part + 1) * q // parts):
            _matvec_task(o, y_TO, x_TI, w)

    return rows


@njit(parallel=True, cache=True)
def rows_packed(out_TD, ids_T, wv_BSKOJ, v0, V):
    """out[t] = row ids[t] - v0 of W packed by amx.pack, for ids in [v0, v0 + V), else 0."""
    D = out_TD.shape[1]
    for t in prange(ids_T.shape[0]):
        r = ids_T[t] - v0
        if 0 <= r < V:
            for d in range(D):
                out_TD[t, d] = to_f32(wv_BSKOJ[r // 16, d // 32, d % 32 // 2, r % 16, d % 2])
        else:
            out_TD[t, :] = 0.0


def _tile_pointer(w_OI, o0, n, tile_RI):
    raise NotImplementedError  # numba only


@overload(_tile_pointer, inline="always")
def _tile_pointer_impl(w_OI, o0, n, tile_RI):
    """Address of rows [o0, o0 + n) of W as float32: W itself when float32, else widened into tile."""
    if w_OI.dtype == np.float32:
        return lambda w_OI, o0, n, tile_RI: w_OI[o0:].ctypes.data

    def widen(w_OI, o0, n, tile_RI):
        for r in range(n):
            for i in range(w_OI.shape[1]):
                tile_RI[r, i] = to_f32(w_OI[o0 + r, i])
        return tile_RI.ctypes.data

    return widen


@njit(parallel=True, fastmath=True, cache=True)
def matmul_tiles(y_TO, x_TI, w_OI, scratch_PRI, sgemm):
    """y = x @ W.T, a tile of R rows of W per task: 2*T*O*I flops, W read once (widened per tile)."""
    T, I = x_TI.shape
    O = w_OI.shape[0]
    R = scratch_PRI.shape[1]
    for j in prange((O + R - 1) // R):
        o0 = j * R
        n = min(R, O - o0)
        tile = scratch_PRI[get_thread_id()]
        w_ptr = _tile_pointer(w_OI, o0, n, tile)
        # y[:, o0:o0+n] = x @ tile[:n].T, written in place (leading dimension O)
        sgemm(
            ROW_MAJOR,
            NO_TRANS,
            TRANS,
            T,
            n,
            I,
            np.float32(1.0),
            x_TI.ctypes.data,
            I,
            w_ptr,
            I,
            np.float32(0.0),
            y_TO[:, o0:].ctypes.data,
            O,
        )


@njit(parallel=True, fastmath=True, cache=True)
def widen(out_OI, w_OI):
    """out = W as float32 (exact)."""
    for o in prange(w_OI.shape[0]):
        for i in range(w_OI.shape[1]):
            out_OI[o, i] = to_f32(w_OI[o, i])


class Linear:
    """A weight matrix W [O, I] of this rank (raw checkpoint dtype) and its product with activations."""

    def __init__(self, w_OI: np.ndarray, tiles: bool = True):
        """tiles=False keeps bf16 W as it is (rows) instead of the tile layout (for tests)."""
        assert w_OI.ndim == 2 and w_OI.flags.c_contiguous and w_OI.dtype in (np.uint16, np.float32)
        self.shape = w_OI.shape
        self.packed = tiles and self.tiles_for(w_OI.dtype)
        if self.packed:
            self.w = amx.pack(w_OI)  # [B, S, 16, 16, 2], see amx.pack
        else:
            self.w = w_OI if aligned.is_aligned(w_OI) else aligned.copy(w_OI)  # rows on cache lines

    @classmethod
    def read_in_tiles(cls, O: int, I: int, read_rows, chunk_rows: int) -> "Linear":
        """A bf16 W [O, I] for the tile kernels, from read_rows(a, b) -> rows a..b of W (uint16), packed as
        each chunk of rows arrives: the unpacked matrix is never whole in memory."""
        assert cls.tiles_for(np.dtype(np.uint16))
        chunk_rows = max(amx.ROWS, chunk_rows // amx.ROWS * amx.ROWS)
        wv = amx.packed_empty(O, I)
        for a in range(0, O, chunk_rows):
            amx.pack_rows(wv, read_rows(a, min(O, a + chunk_rows)), a, O)
        lin = cls.__new__(cls)
        lin.shape, lin.packed, lin.w = (O, I), True, wv
        return lin

    @staticmethod
    def tiles_for(dtype: np.dtype) -> bool:
        """Whether a matrix of this raw dtype goes into the tile layout: bf16 does where numba compiles
        for AVX-512 (AMX implies it). With 256-bit vectors only, the tile-layout kernels spill their 16
        accumulators and lose to the row layout (docs/benchmarks.md, 'Kernel measurements')."""
        return dtype == np.uint16 and (amx.AVAILABLE or "+avx512f" in target_features())

    @property
    def nbytes(self) -> int:
        return self.w.nbytes

    @property
    def row_nbytes(self) -> int:
        """Bytes of one row as stored."""
        return self.shape[1] * self.w.itemsize

    def __call__(self, y_TO, x_TI, scratch) -> None:
        """y_TO = x_TI @ W.T (both C-contiguous); scratch: float32, at least scratch_size(T) elements."""
        T = x_TI.shape[0]
        w = self.w
        O, I = self.shape
        if T <= SMALL_T:  # a decode step: dispatch in as few Python steps as possible (~140 calls a token)
            if self.packed:
                matvec_packed(y_TO, x_TI, w, scratch)
            else:
                matvec(y_TO, x_TI, w)
            return
        threads = get_num_threads()
        if self.packed and amx.AVAILABLE:
            amx.matmul(y_TO, x_TI, w, scratch, threads)
        elif self.packed:
            fma.matmul(y_TO, x_TI, w, scratch[: fma.scratch_floats(threads)].reshape(threads, -1))
        elif SGEMM is not None:
            matmul_tiles(y_TO, x_TI, w, scratch[: threads * TILE_ROWS * I].reshape(threads, TILE_ROWS, I), SGEMM)
        elif w.dtype == np.float32:
            np.matmul(x_TI, w.T, out=y_TO)
        else:  # no OpenBLAS to call from numba threads: widen all of W, then numpy's BLAS
            tile = scratch[: O * I].reshape(O, I)
            widen(tile, w)
            np.matmul(x_TI, tile.T, out=y_TO)

    def rows(self, out_TD, ids_T, v0: int) -> None:
        """out[t] = W[ids[t] - v0] as float32 for ids in [v0, v0 + O) (an embedding lookup), else 0."""
        if self.packed:
            rows_packed(out_TD, ids_T, self.w, v0, self.shape[0])
        else:
            embed_rows(out_TD, ids_T, self.w, v0)

    def scratch_size(self, T: int) -> int:
        O, I = self.shape
        threads = get_num_threads()
        if T <= SMALL_T:
            return threads * PACKED_OUT if self.packed else 0
        if self.packed:
            return amx.scratch_floats(I, T, threads) if amx.AVAILABLE else fma.scratch_floats(threads)
        if SGEMM is not None:
            return threads * TILE_ROWS * I
        return O * I
