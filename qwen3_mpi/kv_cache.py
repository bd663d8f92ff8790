"""Preallocated per-rank K/V cache: float32 [layers, G, S, K] for this rank's KV heads."""

import numpy as np

from . import aligned


class KVCache:
    def __init__(self, n_layers: int, n_kv_heads: int, max_positions: int, head_dim: int):
        shape = (n_layers, n_kv_heads, max_positions, head_dim)
        self.k_LGSK = aligned.zeros(shape, np.float32)
        self.v_LGSK = aligned.zeros(shape, np.float32)

    def layer(self, i: int):
        return self.k_LGSK[i], self.v_LGSK[i]

    @property
    def nbytes(self) -> int:
        return self.k_LGSK.nbytes + self.v_LGSK.nbytes
