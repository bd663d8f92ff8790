"""numba kernels. Each takes its output buffer first, allocates nothing, and states what it computes.

Weights arrive as uint16 (bf16 bits) or float32; `to_f32` reads either as float32 exactly.
"""

from .attention import attention_standard, attention_streaming
from .linear import Linear
from .ops import add_partials, embed_rows, qk_norm_rope_cache, silu_mul

__all__ = [
    "Linear",
    "add_partials",
    "attention_standard",
    "attention_streaming",
    "embed_rows",
    "qk_norm_rope_cache",
    "silu_mul",
]
