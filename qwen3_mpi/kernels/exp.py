"""exp for float32 that LLVM vectorizes (numba's np.exp is a scalar libm call unless Intel's SVML is
installed): 2^n exp(r) with n = round(x / ln 2), r = x - n ln 2 (Cody-Waite, two-part ln 2) and a
degree-7 Taylor polynomial for |r| <= ln(2) / 2. Measured relative error <= 3.2e-7 (under 3 ulp) over
[-87, 88]; inputs are clamped to that range, so exp(-inf) gives ~1e-38 rather than 0 (harmless where it
is used: softmax corrections that multiply zeros, and SiLU)."""

import numpy as np
from numba import njit

_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693145751953125)  # ln 2 = _LN2_HI + _LN2_LO, _LN2_HI exact in 16 bits
_LN2_LO = np.float32(1.428606765330187e-06)


@njit(inline="always", fastmath=True)
def exp32(x):
    x = min(max(x, np.float32(-87.0)), np.float32(88.0))
    n = np.floor(x * _LOG2E + np.float32(0.5))
    r = (x - n * _LN2_HI) - n * _LN2_LO
    p = np.float32(1.0 / 5040)
    p = p * r + np.float32(1.0 / 720)
    p = p * r + np.float32(1.0 / 120)
    p = p * r + np.float32(1.0 / 24)
    p = p * r + np.float32(1.0 / 6)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)
    return p * np.uint32((np.int32(n) + np.int32(127)) << np.int32(23)).view(np.float32)
