"""The attention kernels by name: the one table that maps `--attention NAME` to a kernel's forward call
(any number of queries), its buffer sizes and the form the fused decode regions run it in. Adding a
kernel touches this table and the kernel's file; nothing else compares kernel names.

    name        forward (T queries)                                  decode regions run
    standard    attention_standard: a materialized score row         standard_row per (query, head)
    streaming   attention_streaming(_blocks): online softmax          streaming_job per (KV head, span)
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import attention
from .decode import ROWS, SPANS

# what an attention call needs besides q, the cache and the position, built once per model (Model.attn)
AttentionContext = namedtuple("AttentionContext", "kv_of_H heads_of_G scale scratch parts block qblock")


@dataclass(frozen=True)
class AttentionKernel:
    name: str
    forward: Callable[..., None]  # forward(out_TO, qkv_TO, k_cache_GSK, v_cache_GSK, pos0, ctx)
    buffers: Callable[..., tuple[int, int]]  # buffers(max_context, block, qblock, K, group, G, dtype)
    decode_form: int  # kernels/decode.py's ROWS or SPANS


def _standard(out_TO, qkv_TO, k_cache_GSK, v_cache_GSK, pos0, ctx):
    attention.attention_standard(out_TO, qkv_TO, ctx.kv_of_H, k_cache_GSK, v_cache_GSK, pos0, ctx.scale, ctx.scratch)


def _standard_buffers(max_context, block, qblock, head_dim, group, kv_heads, kv_dtype):
    """(floats of scratch per thread, floats of span partials): a score row of every position."""
    return max_context, 0


def _streaming(out_TO, qkv_TO, k_cache_GSK, v_cache_GSK, pos0, ctx):
    attention.streaming(
        *(out_TO, qkv_TO, ctx.heads_of_G, k_cache_GSK, v_cache_GSK, pos0, ctx.scale, ctx.scratch, ctx.parts),
        *(ctx.block, ctx.qblock),
    )


def _streaming_buffers(max_context, block, qblock, head_dim, group, kv_heads, kv_dtype):
    """(floats of scratch per thread, floats of span partials): whatever the context length."""
    return (
        attention.streaming_scratch_size(block, qblock, head_dim, group, kv_dtype),
        attention.span_partials_floats(kv_heads, group, head_dim),
    )


ATTENTION = {
    "standard": AttentionKernel("standard", _standard, _standard_buffers, ROWS),
    "streaming": AttentionKernel("streaming", _streaming, _streaming_buffers, SPANS),
}


def attention_context(
    kernel: AttentionKernel, kv_of_H, n_kv_heads, head_dim, max_context, block, qblock, kv_dtype, threads
) -> AttentionContext:
    """The kernel's AttentionContext for this rank's heads, its buffers allocated (see aligned.py)."""
    from .. import aligned

    heads_of_G = attention.heads_of_kv(kv_of_H, n_kv_heads)
    group = int(np.diff(heads_of_G).max())
    size, parts = kernel.buffers(max_context, block, qblock, head_dim, group, n_kv_heads, kv_dtype)
    return AttentionContext(
        kv_of_H,
        heads_of_G,
        np.float32(head_dim**-0.5),
        aligned.zeros((threads, size), np.float32),
        aligned.zeros(parts, np.float32),
        block,
        qblock,
    )
