"""The Qwen3 forward pass over this rank's shard.

Shape suffixes (one letter per dimension): T tokens in this call, S cached positions, D hidden size,
H query heads on this rank, G KV heads on this rank, K head dim, F FFN width on this rank, V vocabulary
rows on this rank, O output features of a fused projection, R ranks. `x_TD` is [T, D].
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numba
import numpy as np

from . import aligned
from .comm import Comm
from .config import Qwen3Config, ShardLayout
from .errors import UserError
from .kernels import Linear, qk_norm_rope_cache, silu_mul
from .kernels.attention import (
    ATTENTION_KERNELS,
    BLOCKS_MIN_T,
    attention_standard,
    heads_of_kv,
    span_partials_floats,
    streaming,
    streaming_scratch_size,
)
from .kernels.decode import (
    FAILED,
    attention_half,
    barrier_state,
    compile_now,
    layer_stacks,
    layers_region,
    mlp_half,
    regions_work,
)
from .kernels.linear import SMALL_T
from .kv_cache import KV_DTYPES, KVCache
from .rope import rope_tables
from .weights import Checkpoint, as_f32


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


def shard_reads(config: Qwen3Config, layout: ShardLayout):
    """Every slice this rank reads, as (name, shape, rows, cols): the plan load_shard follows."""
    D, K, I = config.hidden_size, config.head_dim, config.intermediate_size
    Hq, Hkv, Vg = config.num_attention_heads, config.num_key_value_heads, config.vocab_size
    heads = (layout.heads[0] * K, layout.heads[1] * K)
    kv = (layout.kv_heads[0] * K, layout.kv_heads[1] * K)
    reads = {}
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        reads[i] = {
            "input_layernorm_D": [(p + "input_layernorm.weight", (D,), None, None)],
            "post_attention_layernorm_D": [(p + "post_attention_layernorm.weight", (D,), None, None)],
            "q_norm_K": [(p + "self_attn.q_norm.weight", (K,), None, None)],
            "k_norm_K": [(p + "self_attn.k_norm.weight", (K,), None, None)],
            "qkv_proj": [
                (p + "self_attn.q_proj.weight", (Hq * K, D), heads, None),
                (p + "self_attn.k_proj.weight", (Hkv * K, D), kv, None),
                (p + "self_attn.v_proj.weight", (Hkv * K, D), kv, None),
            ],
            "o_proj": [(p + "self_attn.o_proj.weight", (D, Hq * K), None, heads)],
            "gate_up_proj": [
                (p + "mlp.gate_proj.weight", (I, D), layout.ffn, None),
                (p + "mlp.up_proj.weight", (I, D), layout.ffn, None),
            ],
            "down_proj": [(p + "mlp.down_proj.weight", (D, I), None, layout.ffn)],
        }
    reads["embed"] = [("model.embed_tokens.weight", (Vg, D), layout.vocab, None)]
    reads["lm_head"] = [] if config.tie_word_embeddings else [("lm_head.weight", (Vg, D), layout.vocab, None)]
    reads["norm"] = [("model.norm.weight", (D,), None, None)]
    return reads


def shard_nbytes(ckpt: Checkpoint, config: Qwen3Config, layout: ShardLayout) -> int:
    """Bytes (as stored) of every slice this rank reads."""
    plan = shard_reads(config, layout)
    groups = [g for i in range(config.num_hidden_layers) for g in plan[i].values()]
    groups += [plan["embed"], plan["lm_head"], plan["norm"]]
    return sum(ckpt.slice_nbytes(*read) for group in groups for read in group)


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


class Model:
    """This rank's share of the model, its KV cache and every buffer the forward pass writes."""

    def __init__(
        self,
        config: Qwen3Config,
        layout: ShardLayout,
        weights: ShardWeights,
        comm: Comm,
        *,
        attention: str,
        max_context: int,
        max_tokens: int,
        block: int = 256,
        qblock: int = 128,
        kv_dtype: str = "float32",
    ):
        self.config, self.layout, self.weights, self.comm = config, layout, weights, comm
        self.max_context, self.max_tokens = max_context, max_tokens
        self.block, self.qblock = block, qblock
        D, K, T = config.hidden_size, config.head_dim, max_tokens
        H, G, F = layout.n_heads, layout.n_kv_heads, layout.n_ffn
        self.vocab_counts = [
            b - a for a, b in (ShardLayout.for_rank(config, r, layout.size).vocab for r in range(layout.size))
        ]
        self.last_T = 0
        # the norm after each combine: the input norm of layer i after combine i (the embeddings' is 0),
        # the final norm after the last layer's
        self.norms_after = [layer.input_layernorm_D for layer in weights.layers] + [weights.norm_D]
        self.kv_of_H = np.array(layout.kv_head_of(config), dtype=np.int64)
        self.heads_of_G = heads_of_kv(self.kv_of_H, layout.n_kv_heads)
        if kv_dtype not in KV_DTYPES:
            raise UserError(f"--kv-cache-dtype must be one of {', '.join(KV_DTYPES)}, not {kv_dtype!r}")
        self.cache = KVCache(config.num_hidden_layers, G, max_context, K, kv_dtype)
        self.cos_PK2, self.sin_PK2 = rope_tables(config, max_context)
        self.scale = np.float32(K**-0.5)
        f32, zeros = np.float32, aligned.zeros  # every buffer on a cache line (see aligned.py)
        self.x_TD = zeros((T, D), f32)  # the residual stream, identical on every rank
        self.h_TD = zeros((T, D), f32)  # normed input of a block
        self.part_TD = zeros((T, D), f32)  # this rank's partial sum of a block's output
        self.qkv_TO = zeros((T, (H + 2 * G) * K), f32)
        self.attn_TO = zeros((T, H * K), f32)
        self.gu_TO = zeros((T, 2 * F), f32)
        self.act_TF = zeros((T, F), f32)
        self.logits_1V = zeros((1, layout.n_vocab), f32)
        linears = [weights.lm_head] + [
            m for layer in weights.layers for m in (layer.qkv_proj, layer.o_proj, layer.gate_up_proj, layer.down_proj)
        ]
        self.scratch = zeros(max(m.scratch_size(T) for m in linears), f32)
        self.sync = barrier_state()  # of the decode regions
        # a decode step (up to SMALL_T tokens) runs in parallel regions (kernels/decode.py), where numba runs
        # them as such and its threads have cores of their own (spinning threads would wait for each other);
        # numba's thread count must stay what it is now (else a barrier gives up and forward raises)
        self.threads = numba.get_num_threads()
        regions = regions_work(self.threads) and self.threads * comm.local_size <= (os.cpu_count() or 1)
        stacks = layer_stacks(weights.layers, self.norms_after)
        # agreed by every rank: the ranks of a region meet at its barriers
        ranks = comm.allgather((regions, stacks is not None, self.threads))
        self.regions = all(r[0] for r in ranks)
        self.layer_stacks = stacks if all(r[1] for r in ranks) else None
        # ranks all on one node run every layer in one region, combining through the node's window: the
        # barrier of every thread of every rank before each combine (-> Comm.node_slots)
        one_node = comm.size > 1 and comm.local_size == comm.size
        self.node_sync = comm.node_shared(barrier_state()) if one_node else None
        self.node_threads = sum(r[2] for r in ranks)
        self._node_compiled = False
        self.set_attention(attention)

    def set_attention(self, attention: str) -> None:
        """Choose the attention kernel ('standard' or 'streaming') and size its per-thread scratch (and, for
        streaming, the buffer of decode's per-span partial states)."""
        if attention not in ATTENTION_KERNELS:
            raise UserError(f"--attention must be 'standard' or 'streaming', not {attention!r}")
        self.attention = attention
        threads = numba.get_num_threads()
        if attention == "standard":
            size, parts = self.max_context, 0
        else:
            group = int(np.diff(self.heads_of_G).max())
            size = streaming_scratch_size(self.block, self.qblock, self.config.head_dim, group, self.cache.k_LGSK.dtype)
            parts = span_partials_floats(self.layout.n_kv_heads, group, self.config.head_dim)
        self.attn_scratch = aligned.zeros((threads, size), np.float32)
        self.attn_parts = aligned.zeros(parts, np.float32)  # streaming decode's per-span partial states

    def forward(self, ids_T: np.ndarray, pos0: int, all_logits: bool = False, gather: bool = True) -> np.ndarray | None:
        """Run T tokens at positions pos0.. through the model, filling the KV cache. Returns on rank 0
        the logits of the last token [V] (or of every token [T, V] with all_logits), None elsewhere; with
        gather=False, on every rank the last token's logits of this rank's vocabulary rows [V_r]."""
        T = self.last_T = ids_T.shape[0]
        if T > self.max_tokens or pos0 + T > self.max_context:
            raise ValueError("forward: tokens exceed the preallocated buffers")
        cfg, w, comm = self.config, self.weights, self.comm
        eps = np.float32(cfg.rms_norm_eps)
        x, h, part = self.x_TD[:T], self.h_TD[:T], self.part_TD[:T]
        qkv, attn, gu, act = self.qkv_TO[:T], self.attn_TO[:T], self.gu_TO[:T], self.act_TF[:T]

        # embedding rows of this rank's vocabulary (zeros elsewhere) -> full embeddings; every combine
        # also computes the norm of the block that follows it into h
        w.embed.rows(part, ids_T, self.layout.vocab[0])
        x[:] = 0.0
        comm.combine(x, part, h, self.norms_after[0], eps)
        if T > SMALL_T or not self.regions:
            for i, layer in enumerate(w.layers):
                self._layer(i, layer, pos0, T)
        else:
            # what every layer shares, as kernels/decode.py's regions take it
            step = (h, qkv, attn, part, self.cos_PK2, self.sin_PK2, pos0, eps, self.attention == "standard")
            step += (
                self.kv_of_H,
                self.heads_of_G,
                self.scale,
                self.attn_scratch,
                self.block,
                self.qblock,
                self.scratch,
            )
            if self.layer_stacks is not None and (comm.size == 1 or self._node_region()):
                self._layers_region(step, x, part, gu, act)
            else:  # a region per half-layer, between the combines
                for i, layer in enumerate(w.layers):
                    attention_half(
                        *(self.threads, self.sync, step, self.attn_parts, layer.qkv_proj.w, layer.q_norm_K),
                        *(layer.k_norm_K, *self.cache.layer(i), layer.o_proj.w),
                    )
                    comm.combine(x, part, h, layer.post_attention_layernorm_D, eps)
                    mlp_half(self.threads, self.sync, step, gu, layer.gate_up_proj.w, act, layer.down_proj.w)
                    comm.combine(x, part, h, self.norms_after[i + 1], eps)
        if self.sync[FAILED]:
            raise RuntimeError(
                f"a decode region's {self.threads} threads did not all arrive at a barrier in time: "
                f"numba's '{numba.threading_layer()}' threading layer did not run them at once"
            )
        if self.node_sync is not None and self.node_sync[FAILED]:
            raise RuntimeError(
                f"the {self.node_threads} threads of the node's {comm.size} ranks did not all arrive at a "
                "decode region's barrier in time: a rank stopped, or their threads share cores"
            )

        # h = final norm; LM head rows of this rank's vocabulary, logits -> rank 0
        counts = self.vocab_counts
        if all_logits:
            logits_TV = np.empty((T, self.layout.n_vocab), np.float32)
            w.lm_head(logits_TV, h, self.scratch)
            return comm.gather_columns(logits_TV, counts)
        w.lm_head(self.logits_1V, h[T - 1 : T], self.scratch)
        if not gather:
            return self.logits_1V[0]
        full = comm.gather_columns(self.logits_1V, counts)
        return None if full is None else full[0]

    def _node_region(self) -> bool:
        """Whether several ranks run a decode step's layers in one region each (on one node, combining in
        its shared window)."""
        return self.node_sync is not None and self.comm.combine_method == "shared"

    def _layers_region(self, step: tuple, x, part, gu, act) -> None:
        """Every layer in one region (kernels/decode.layers_region): a single rank's partial sums are its
        own; several ranks' are the node window's slots, this rank's in place of `part`."""
        args = (self.threads, self.sync)
        if self.comm.size == 1:
            args += ((self.sync, self.threads), (step, step), self.attn_parts, self.layer_stacks)
            slots = (part[None], part[None])
        else:
            slots_a, slots_m, slot = self.comm.node_slots(*part.shape)
            steps = tuple(step[:3] + (half[slot],) + step[4:] for half in (slots_a, slots_m))
            args += ((self.node_sync, self.node_threads), steps, self.attn_parts, self.layer_stacks)
            slots = (slots_a, slots_m)
        args += (self.cache.k_LGSK, self.cache.v_LGSK, gu, act, x, slots)
        if self.comm.size > 1 and not self._node_compiled:
            compile_now(layers_region, *args)  # every rank, before any waits at the region's barriers
            self.comm.barrier()
            self._node_compiled = True
        layers_region(*args)
        self.comm.count_exchanges(2 * len(self.weights.layers), part.nbytes)

    def _layer(self, i: int, layer: LayerWeights, pos0: int, T: int) -> None:
        """Layer i, one kernel call after another."""
        eps, comm = np.float32(self.config.rms_norm_eps), self.comm
        H, G = self.layout.n_heads, self.layout.n_kv_heads
        x, h, part = self.x_TD[:T], self.h_TD[:T], self.part_TD[:T]
        qkv, attn, gu, act = self.qkv_TO[:T], self.attn_TO[:T], self.gu_TO[:T], self.act_TF[:T]
        k_cache, v_cache = self.cache.layer(i)
        # attention block: q/k/v of local heads, q/k norm + RoPE, cache, attention, o_proj slice
        layer.qkv_proj(qkv, h, self.scratch)
        qk_norm_rope_cache(
            qkv, H, G, layer.q_norm_K, layer.k_norm_K, self.cos_PK2, self.sin_PK2, pos0, eps, k_cache, v_cache
        )
        self._attention(attn, qkv, k_cache, v_cache, pos0)
        layer.o_proj(part, attn, self.scratch)
        # partial sums -> full hidden, added to the residual; the MLP's norm
        comm.combine(x, part, h, layer.post_attention_layernorm_D, eps)
        # MLP block: gate/up of the local FFN slice, SiLU(gate) * up, down_proj slice
        layer.gate_up_proj(gu, h, self.scratch)
        silu_mul(act, gu)
        layer.down_proj(part, act, self.scratch)
        # partial sums -> full hidden, added to the residual; the next layer's norm (or the final one)
        comm.combine(x, part, h, self.norms_after[i + 1], eps)

    def warmup(self) -> None:
        """Compile (or load from numba's cache) every kernel path once: decode steps and, as far as the
        buffers allow, prefill steps of each size class. Writes cache positions that the real prefill
        overwrites."""
        for T in sorted({min(t, self.max_tokens, self.max_context) for t in (1, SMALL_T + 1, BLOCKS_MIN_T)}):
            self.forward(np.zeros(T, np.int64), 0)

    def _attention(self, out_TO, qkv_TO, k_cache, v_cache, pos0):
        if self.attention == "standard":
            attention_standard(out_TO, qkv_TO, self.kv_of_H, k_cache, v_cache, pos0, self.scale, self.attn_scratch)
        else:
            streaming(
                out_TO,
                qkv_TO,
                self.heads_of_G,
                k_cache,
                v_cache,
                pos0,
                self.scale,
                self.attn_scratch,
                self.attn_parts,
                self.block,
                self.qblock,
            )

    def hidden_digest(self) -> str:
        """A hash of the residual stream of the last call: equal on every rank when combine is exact."""
        return hashlib.sha256(self.x_TD[: self.last_T].tobytes()).hexdigest()
