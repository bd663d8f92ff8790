"""cblas_sgemm of the OpenBLAS that numpy loaded, callable from numba threads.

Calling it from inside a numba prange (with OpenBLAS itself single-threaded) keeps one thread pool busy
instead of two: numba's OpenMP threads and OpenBLAS's own threads spin-wait for work and, sharing the
same cores, slow each other down badly. Returns None where numpy's BLAS is not OpenBLAS.
"""

import ctypes

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112

_CANDIDATES = [  # (symbol, integer type): scipy-openblas (numpy's wheels) is ILP64 with a prefix/suffix
    ("scipy_cblas_sgemm64_", ctypes.c_int64),
    ("cblas_sgemm64_", ctypes.c_int64),
    ("scipy_cblas_sgemm", ctypes.c_int),
    ("cblas_sgemm", ctypes.c_int),
]


def find_sgemm():
    import numpy  # noqa: F401  (loads its BLAS)
    from threadpoolctl import threadpool_info

    for info in threadpool_info():
        if info.get("internal_api") != "openblas":
            continue
        lib = ctypes.CDLL(info["filepath"])
        for symbol, blasint in _CANDIDATES:
            if hasattr(lib, symbol):
                proto = ctypes.CFUNCTYPE(
                    None,
                    ctypes.c_int,
                    ctypes.c_int,
                    ctypes.c_int,
                    blasint,
                    blasint,
                    blasint,
                    ctypes.c_float,
                    ctypes.c_void_p,
                    blasint,
                    ctypes.c_void_p,
                    blasint,
                    ctypes.c_float,
                    ctypes.c_void_p,
                    blasint,
                )
                return proto((symbol, lib))
    return None


SGEMM = find_sgemm()
