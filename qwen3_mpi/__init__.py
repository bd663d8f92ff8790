"""qwen3_mpi: tensor-parallel Qwen3 inference on CPU clusters with MPI and numba."""

from ._cpu import prefer_512_bit_vectors

prefer_512_bit_vectors()

__version__ = "0.1.0"
