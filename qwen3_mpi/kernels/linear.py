"""y = x @ W.T for weights stored as the checkpoint stores them (bf16 bits or float32), W shaped [O, I].

Few rows of x (decode): a numba kernel reads every weight once and widens it in registers, so the bytes
read per token equal the stored size (memory bound). Many rows (prefill, compute bound): bf16 W on a CPU
with AMX goes to the tile kernels of amx.py; otherwise numba threads each take tiles of W rows, widen a
tile to float32 in their own scratch (L2-resident) and multiply it with OpenBLAS sgemm called from that
thread.
"""

import numpy as np
from numba import get_num_threads, get_thread_id, njit, prange
from numba.extending import overload

from .. import aligned
from . import amx
from .bf16 import to_f32
from .blas import NO_TRANS, ROW_MAJOR, SGEMM, TRANS

SMALL_T = 4  # at most this many rows of x: matvec; more: tiles + sgemm
TILE_ROWS = 128  # rows of W per sgemm call (128 x 3072 floats = 1.5 MB fits L2)


@njit(parallel=True, fastmath=True, cache=True)
def matvec(y_TO, x_TI, w_OI):
    """y[t, o] = sum_i W[o, i] x[t, i], reading W once (each row serves all T rows of x): O*I elements.
    A task takes four rows a quarter of W apart, so every thread reads four memory streams at once and
    keeps more loads in flight than one stream does (measured 10-30% more bandwidth than row by row)."""
    T, I = x_TI.shape
    O = w_OI.shape[0]
    q = (O + 3) // 4
    for o in prange(q):
        # rows o, o + q, o + 2q, o + 3q; past the end, row O - 1 is read again and not stored
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

    def __init__(self, w_OI: np.ndarray):
        assert w_OI.ndim == 2 and w_OI.flags.c_contiguous and w_OI.dtype in (np.uint16, np.float32)
        self.w_OI = w_OI if aligned.is_aligned(w_OI) else aligned.copy(w_OI)  # tile rows on cache lines
        self.amx = amx.AVAILABLE and w_OI.dtype == np.uint16

    @property
    def shape(self):
        return self.w_OI.shape

    @property
    def nbytes(self):
        return self.w_OI.nbytes

    def __call__(self, y_TO, x_TI, scratch) -> None:
        """y_TO = x_TI @ W.T (both C-contiguous); scratch: float32, at least scratch_size(T) elements."""
        T = x_TI.shape[0]
        w = self.w_OI
        O, I = w.shape
        if T <= SMALL_T:
            matvec(y_TO, x_TI, w)
        elif self.amx:
            amx.matmul(y_TO, x_TI, w, scratch, get_num_threads())
        elif SGEMM is not None:
            threads = get_num_threads()
            matmul_tiles(y_TO, x_TI, w, scratch[: threads * TILE_ROWS * I].reshape(threads, TILE_ROWS, I), SGEMM)
        elif w.dtype == np.float32:
            np.matmul(x_TI, w.T, out=y_TO)
        else:  # no OpenBLAS to call from numba threads: widen all of W, then numpy's BLAS
            tile = scratch[: O * I].reshape(O, I)
            widen(tile, w)
            np.matmul(x_TI, tile.T, out=y_TO)

    def scratch_size(self, T: int) -> int:
        O, I = self.w_OI.shape
        if T <= SMALL_T:
            return 0
        if self.amx:
            return amx.scratch_floats(O, I, T, get_num_threads())
        if SGEMM is not None:
            return get_num_threads() * TILE_ROWS * I
        return O * I
