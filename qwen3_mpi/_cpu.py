"""Let LLVM use 512-bit vectors on CPUs with AVX-512.

LLVM's tuning for AVX-512 CPUs prefers 256-bit vectors; for the memory-bound decode kernels the 512-bit
code needs fewer instructions per byte read (measured on a 2-core AVX-512 VM: decode +12%). numba reads
NUMBA_CPU_FEATURES once, when it is imported, so this runs first; a NUMBA_CPU_FEATURES or NUMBA_CPU_NAME
the user set wins.
"""

import os
import platform
import sys


def prefer_512_bit_vectors() -> None:
    if "NUMBA_CPU_FEATURES" in os.environ or "NUMBA_CPU_NAME" in os.environ or "numba" in sys.modules:
        return
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    features = llvm.get_host_cpu_features()
    if features.get("avx512f"):
        os.environ["NUMBA_CPU_FEATURES"] = features.flatten() + ",-prefer-256-bit"
