"""Preallocated per-rank K/V cache [layers, G, S, K] for this rank's KV heads: float32, or bf16 bits
(uint16, rounded to nearest even as each position is written) to halve its memory and the bytes attention
reads per token."""

import numpy as np

from . import aligned

KV_DTYPES = {"float32": np.float32, "bfloat16": np.uint16}


class KVCache:
    def __init__(self, n_layers: int, n_kv_heads: int, max_positions: int, head_dim: int, dtype: str = "float32"):
        shape = (n_layers, n_kv_heads, max_positions, head_dim)
        self.dtype = dtype
        self.k_LGSK = aligned.zeros(shape, KV_DTYPES[dtype])
        self.v_LGSK = aligned.zeros(shape, KV_DTYPES[dtype])

    def layer(self, i: int):
        return self.k_LGSK[i], self.v_LGSK[i]

    @property
    def nbytes(self) -> int:
        return self.k_LGSK.nbytes + self.v_LGSK.nbytes
