"""Arrays that start on a cache line (64 bytes).

numpy only promises 16-byte alignment (large arrays come from mmap and typically start 16 bytes past a
page). Then every 64-byte row of an AMX tile load, and every 512-bit vector load, spans two cache lines:
measured on this project's development machine (Xeon with AMX), a tile load from L1 took 16.5 ns at an
address 16, 32 or 48 bytes past a line and 2.5 ns on a line. Weights, activations, scratch and the KV
cache are allocated here.
"""

import numpy as np

LINE = 64


def empty(shape, dtype) -> np.ndarray:
    """np.empty(shape, dtype), starting on a 64-byte boundary."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(n + LINE, np.uint8)
    skip = -raw.ctypes.data % LINE
    return raw[skip : skip + n].view(dtype).reshape(shape)


def zeros(shape, dtype) -> np.ndarray:
    out = empty(shape, dtype)
    out[...] = 0
    return out


def is_aligned(a: np.ndarray) -> bool:
    return a.ctypes.data % LINE == 0


def copy(a: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of a on a 64-byte boundary."""
    out = empty(a.shape, a.dtype)
    out[...] = a
    return out
