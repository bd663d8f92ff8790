"""y = x @ W.T for weights stored as the checkpoint stores them (bf16 bits or float32), W shaped [O, I].

Few rows (decode): a numba kernel reads every weight once and converts it in registers, so the bytes
read equal the stored size (memory bound). Many rows (prefill): W is converted to float32 a tile of
rows at a time and multiplied with BLAS sgemm (compute bound).
"""
import numpy as np
from numba import njit, prange

from .bf16 import to_f32

SMALL_T = 4             # at most this many rows of x: the streaming kernel; more: tiles + BLAS
TILE_BYTES = 4 << 20    # float32 bytes of one converted weight tile


@njit(parallel=True, fastmath=True, cache=True)
def matvec(y_TO, x_TI, w_OI):
    """y[t, o] = sum_i W[o, i] x[t, i]. Reads W once (each row serves all T rows of x): O*I elements."""
    T, I = x_TI.shape
    for o in prange(w_OI.shape[0]):
        row = w_OI[o]
        for t in range(T):
            xt = x_TI[t]
            acc = np.float32(0.0)
            for i in range(I):
                acc += to_f32(row[i]) * xt[i]
            y_TO[t, o] = acc


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
        self.w_OI = w_OI
        self.tile_rows = max(1, min(w_OI.shape[0], TILE_BYTES // (4 * w_OI.shape[1])))

    @property
    def shape(self):
        return self.w_OI.shape

    @property
    def nbytes(self):
        return self.w_OI.nbytes

    def __call__(self, y_TO, x_TI, scratch) -> None:
        """y_TO = x_TI @ W.T; scratch is a float32 buffer of at least scratch_size(T) elements."""
        T = x_TI.shape[0]
        w = self.w_OI
        if T <= SMALL_T:
            matvec(y_TO, x_TI, w)
        elif w.dtype == np.float32:
            np.matmul(x_TI, w.T, out=y_TO)
        else:
            O, I = w.shape
            rows = self.tile_rows
            tile = scratch[: rows * I].reshape(rows, I)
            out = scratch[rows * I : rows * I + T * rows].reshape(T, rows)
            for o0 in range(0, O, rows):
                n = min(rows, O - o0)
                widen(tile[:n], w[o0 : o0 + n])
                np.matmul(x_TI, tile[:n].T, out=out[:, :n])
                y_TO[:, o0 : o0 + n] = out[:, :n]

    def scratch_size(self, T: int) -> int:
        return self.tile_rows * (self.w_OI.shape[1] + T)
