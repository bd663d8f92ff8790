"""This rank's weights: the slices model/plan.py's table assigns it, read straight from the checkpoint
into the layouts the kernels take (kernels.Linear), and nothing else."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import aligned
from ..config import Qwen3Config
from ..kernels import Linear
from ..weights import Checkpoint, as_f32
from .plan import ShardLayout, all_reads, shard_reads


@dataclass
class LayerWeights:
    input_layernorm_D: np.ndarray
    post_attention_layernorm_D: np.ndarray
    q_norm_K: np.ndarray
    k_norm_K: np.ndarray
    qkv_proj: Linear  # [q_proj; k_proj; v_proj] rows of this rank's heads: [(H + 2G) K, D]
    o_proj: Linear  # columns of this rank's heads: [D, H K]
    gate_up_proj: Linear  # [gate_proj; up_proj] rows of this rank's FFN slice: [2F, D]
    down_proj: Linear  # columns of this rank's FFN slice: [D, F]


@dataclass
class ShardWeights:
    embed: Linear  # this rank's vocabulary rows of embed_tokens (looked up by row)
    lm_head: Linear  # this rank's vocabulary rows of lm_head (the embedding when tied)
    norm_D: np.ndarray
    layers: list[LayerWeights]

    @property
    def nbytes(self) -> int:
        n = self.embed.nbytes + (0 if self.lm_head is self.embed else self.lm_head.nbytes)
        for layer in self.layers:
            n += sum(m.nbytes for m in (layer.qkv_proj, layer.o_proj, layer.gate_up_proj, layer.down_proj))
        return n

    @property
    def decode_nbytes(self) -> int:
        """Bytes of weights a decode step reads: every matrix once, one embedding row."""
        n = self.lm_head.nbytes + self.embed.row_nbytes
        for layer in self.layers:
            n += sum(m.nbytes for m in (layer.qkv_proj, layer.o_proj, layer.gate_up_proj, layer.down_proj))
        return n


def _fused(ckpt: Checkpoint, parts: list[tuple[str, tuple[int, int], tuple[int, int]]], cols: int) -> Linear:
    """The row slices (name, shape, rows) of several projections stacked into one matrix, read straight
    into it; it stays bf16 when every part is bf16, else float32."""
    dtypes = [ckpt.raw_dtype(name, shape) for name, shape, _ in parts]
    dtype = np.uint16 if all(d == np.uint16 for d in dtypes) else np.float32
    w_OI = aligned.empty((sum(r1 - r0 for _, _, (r0, r1) in parts), cols), dtype)
    start = 0
    for (name, shape, (r0, r1)), part_dtype in zip(parts, dtypes):
        rows = w_OI[start : start + r1 - r0]
        if part_dtype == dtype and ckpt.tensors[name].dtype != "F16":
            ckpt.read(name, shape, rows=(r0, r1), out=rows)
        else:
            rows[:] = as_f32(ckpt.read(name, shape, rows=(r0, r1)))
        start += r1 - r0
    return Linear(w_OI)


def _matrix(raw: np.ndarray) -> Linear:
    return Linear(np.ascontiguousarray(raw if raw.dtype == np.uint16 else as_f32(raw)))


def _read_matrix(ckpt: Checkpoint, name: str, shape: tuple[int, int], rows, cols) -> Linear:
    """A [rows, cols] slice as a Linear; one going into the tile layout is read and packed 8 MiB of rows at
    a time, so a rank never holds a large matrix twice (the 0.6B embedding is 311 MB)."""
    if not Linear.tiles_for(ckpt.raw_dtype(name, shape)):
        return _matrix(ckpt.read(name, shape, rows=rows, cols=cols))
    (r0, r1), (c0, c1) = rows or (0, shape[0]), cols or (0, shape[1])
    return Linear.read_in_tiles(
        r1 - r0,
        c1 - c0,
        lambda a, b: ckpt.read(name, shape, rows=(r0 + a, r0 + b), cols=cols),
        (8 << 20) // (2 * (c1 - c0)),
    )


def shard_nbytes(ckpt: Checkpoint, config: Qwen3Config, layout: ShardLayout) -> int:
    """Bytes (as stored) of every slice this rank reads."""
    return sum(ckpt.slice_nbytes(*read) for read in all_reads(config, layout))


def load_shard(ckpt: Checkpoint, config: Qwen3Config, layout: ShardLayout) -> ShardWeights:
    """Read this rank's slices (and nothing else) of every tensor, following shard_reads' plan."""
    plan = shard_reads(config, layout)

    def one(read):
        name, shape, rows, cols = read
        return ckpt.read(name, shape, rows=rows, cols=cols)

    def fused(reads):
        return _fused(ckpt, [(name, shape, rows) for name, shape, rows, _ in reads], config.hidden_size)

    layers = []
    for i in range(config.num_hidden_layers):
        r = plan[i]
        layers.append(
            LayerWeights(
                input_layernorm_D=as_f32(one(*r["input_layernorm_D"])),
                post_attention_layernorm_D=as_f32(one(*r["post_attention_layernorm_D"])),
                q_norm_K=as_f32(one(*r["q_norm_K"])),
                k_norm_K=as_f32(one(*r["k_norm_K"])),
                qkv_proj=fused(r["qkv_proj"]),
                o_proj=_read_matrix(ckpt, *r["o_proj"][0]),
                gate_up_proj=fused(r["gate_up_proj"]),
                down_proj=_read_matrix(ckpt, *r["down_proj"][0]),
            )
        )
    embed = _read_matrix(ckpt, *plan["embed"][0])
    lm_head = _read_matrix(ckpt, *plan["lm_head"][0]) if plan["lm_head"] else embed
    return ShardWeights(embed, lm_head, as_f32(one(*plan["norm"])), layers)
