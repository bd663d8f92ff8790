"""qwen3_mpi: tensor-parallel Qwen3 inference on CPU clusters with MPI and numba."""

__version__ = "0.1.0"
