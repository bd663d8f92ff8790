"""qwen3_mpi: tensor-parallel Qwen3 inference on CPU clusters with MPI and numba.

The public API: `load(model_dir, RunOptions(...), comm=None) -> Session` (session.py), RunOptions
(options.py), SamplingParams (sampling.py). They are imported on first use, so that importing the
package (say, for qwen3_mpi.demo) does not start MPI.
"""

from ._cpu import prefer_512_bit_vectors

prefer_512_bit_vectors()

__version__ = "0.1.0"

_PUBLIC = {"load": "session", "Session": "session", "RunOptions": "options", "SamplingParams": "sampling"}
__all__ = ["RunOptions", "SamplingParams", "Session", "load"]


def __getattr__(name):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module 'qwen3_mpi' has no attribute {name!r}")
