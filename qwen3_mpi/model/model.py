"""The Qwen3 forward pass over this rank's shard: embedding, the layers (model/layer.py's spec), the LM
head, and every buffer they write.

Shape suffixes (one letter per dimension): T tokens in this call, S cached positions, D hidden size,
H query heads on this rank, G KV heads on this rank, K head dim, F FFN width on this rank, V vocabulary
rows on this rank, O output features of a fused projection, R ranks, P positions of the RoPE tables.
`x_TD` is [T, D].
"""

from __future__ import annotations

import hashlib
import os
from collections import namedtuple

import numba
import numpy as np

from .. import aligned
from ..comm import Comm
from ..config import Qwen3Config
from ..kernels.attention import BLOCKS_MIN_T
from ..kernels.decode import FAILED, DecodeStep, barrier_state, layer_stacks, regions_work
from ..kernels.linear import SMALL_T
from ..kernels.registry import ATTENTION, attention_context
from ..kv_cache import KVCache
from ..options import RunOptions
from ..rope import rope_tables
from .layer import FusedLayers, HalfRegions, Kernels, combine, decoder_layer, steps_of
from .plan import ShardLayout
from .shard import ShardWeights

QBLOCK = 128  # queries per task of streaming attention

# the state of one forward call: views of the model's buffers for its T tokens, its first position, the
# norms' eps, and the same as kernels/decode.py's regions take it (`decode`)
Step = namedtuple("Step", "x_TD h_TD part_TD qkv_TO attn_TO gu_TO act_TF cos_PK2 sin_PK2 pos0 eps scratch decode")


class Model:
    """This rank's share of the model, its KV cache and every buffer the forward pass writes, for up to
    max_tokens tokens a call and max_context cached positions."""

    def __init__(
        self,
        config: Qwen3Config,
        layout: ShardLayout,
        weights: ShardWeights,
        comm: Comm,
        options: RunOptions,
        *,
        max_context: int,
        max_tokens: int,
    ):
        self.config, self.layout, self.weights, self.comm = config, layout, weights, comm
        self.options = options
        self.max_context, self.max_tokens = max_context, max_tokens
        D, K, T = config.hidden_size, config.head_dim, max_tokens
        H, G, F = layout.n_heads, layout.n_kv_heads, layout.n_ffn
        self.vocab_counts = [lay.n_vocab for lay in ShardLayout.all_ranks(config, layout.size)]
        self.last_T = 0
        # the norm after each combine: the input norm of layer i after combine i (the embeddings' is 0),
        # the final norm after the last layer's
        self.norms_after = [layer.input_layernorm_D for layer in weights.layers] + [weights.norm_D]
        self.kv_of_H = np.array(layout.kv_head_of(config), dtype=np.int64)
        self.cache = KVCache(config.num_hidden_layers, G, max_context, K, options.kv_cache_dtype)
        self.cos_PK2, self.sin_PK2 = rope_tables(config, max_context)
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
        # every layer in one region when it runs decoder_layer's steps and its arrays stack
        fused = all(r[1] for r in ranks) and steps_of(decoder_layer, weights.layers[0]) == FusedLayers.STEPS
        self.layer_stacks = stacks if fused else None
        # ranks all on one node run every layer in one region, combining through the node's window: the
        # barrier of every thread of every rank before each combine (-> Comm.node_slots)
        one_node = comm.size > 1 and comm.local_size == comm.size
        self.node_sync = comm.node_shared(barrier_state()) if one_node else None
        self.node_threads = sum(r[2] for r in ranks)
        self.node_compiled = False
        self.set_attention(options.attention)

    def set_attention(self, name: str) -> None:
        """Use kernels/registry.py's attention kernel `name`, with its buffers."""
        self.attention = ATTENTION[name]
        self.attn = attention_context(
            *(self.attention, self.kv_of_H, self.layout.n_kv_heads, self.config.head_dim, self.max_context),
            *(self.options.block_size, QBLOCK, self.cache.k_LGSK.dtype, numba.get_num_threads()),
        )

    def step(self, T: int, pos0: int) -> Step:
        """The state of a forward call of T tokens from position pos0."""
        eps = np.float32(self.config.rms_norm_eps)
        x, h, part = self.x_TD[:T], self.h_TD[:T], self.part_TD[:T]
        qkv, attn, gu, act = self.qkv_TO[:T], self.attn_TO[:T], self.gu_TO[:T], self.act_TF[:T]
        a = self.attn
        decode = DecodeStep(
            *(h, qkv, attn, part, self.cos_PK2, self.sin_PK2, pos0, eps, self.attention.decode_form),
            *(a.kv_of_H, a.heads_of_G, a.scale, a.scratch, a.block, a.qblock, self.scratch),
        )
        return Step(x, h, part, qkv, attn, gu, act, self.cos_PK2, self.sin_PK2, pos0, eps, self.scratch, decode)

    def forward(self, ids_T: np.ndarray, pos0: int, all_logits: bool = False, gather: bool = True) -> np.ndarray | None:
        """Run T tokens at positions pos0.. through the model, filling the KV cache. Returns on rank 0
        the logits of the last token [V] (or of every token [T, V] with all_logits), None elsewhere; with
        gather=False, on every rank the last token's logits of this rank's vocabulary rows [V_r]."""
        T = self.last_T = ids_T.shape[0]
        if T > self.max_tokens or pos0 + T > self.max_context:
            raise ValueError("forward: tokens exceed the preallocated buffers")
        w, comm, s = self.weights, self.comm, self.step(T, pos0)

        # embedding rows of this rank's vocabulary (zeros elsewhere); combine, a collective: -> the full
        # embeddings in x; h = layer 0's input norm
        w.embed.rows(s.part_TD, ids_T, self.layout.vocab[0])
        s.x_TD[:] = 0.0
        combine(comm, s.x_TD, s.part_TD, s.h_TD, self.norms_after[0], s.eps)
        # the layers: decoder_layer's steps (model/layer.py), two combines (collectives) in each
        run = self._executor(T, s)
        if isinstance(run, FusedLayers):
            run.layers()  # decoder_layer's steps for every layer, in one region
        else:
            for i, layer in enumerate(w.layers):
                decoder_layer(run, i, layer, self.norms_after[i + 1])
        self._check_barriers()

        # h = the final norm (the last combine's); LM head rows of this rank's vocabulary; gather, a
        # collective: every rank's logits -> rank 0
        counts = self.vocab_counts
        if all_logits:
            logits_TV = np.empty((T, self.layout.n_vocab), np.float32)
            w.lm_head(logits_TV, s.h_TD, self.scratch)
            return comm.gather_columns(logits_TV, counts)
        w.lm_head(self.logits_1V, s.h_TD[T - 1 : T], self.scratch)
        if not gather:
            return self.logits_1V[0]
        full = comm.gather_columns(self.logits_1V, counts)
        return None if full is None else full[0]

    def _executor(self, T: int, s: Step):
        """model/layer.py's executor for a call of T tokens."""
        if T > SMALL_T or not self.regions:
            return Kernels(self, s)
        if self.layer_stacks is not None and (self.comm.size == 1 or self.node_region):
            return FusedLayers(self, s)
        return HalfRegions(self, s)

    @property
    def node_region(self) -> bool:
        """Whether several ranks run a decode step's layers in one region each (all on one node,
        combining in its shared window)."""
        return self.node_sync is not None and self.comm.combine_method == "shared"

    def _check_barriers(self) -> None:
        if self.sync[FAILED]:
            raise RuntimeError(
                f"a decode region's {self.threads} threads did not all arrive at a barrier in time: "
                f"numba's '{numba.threading_layer()}' threading layer did not run them at once"
            )
        if self.node_sync is not None and self.node_sync[FAILED]:
            raise RuntimeError(
                f"the {self.node_threads} threads of the node's {self.comm.size} ranks did not all arrive at "
                "a decode region's barrier in time: a rank stopped, or their threads share cores"
            )

    def warmup(self) -> None:
        """Compile (or load from numba's cache) every kernel path once: decode steps and, as far as the
        buffers allow, prefill steps of each size class. Writes cache positions that the real prefill
        overwrites."""
        for T in sorted({min(t, self.max_tokens, self.max_context) for t in (1, SMALL_T + 1, BLOCKS_MIN_T)}):
            self.forward(np.zeros(T, np.int64), 0)

    def hidden_digest(self) -> str:
        """A hash of the residual stream of the last call: equal on every rank when combine is exact."""
        return hashlib.sha256(self.x_TD[: self.last_T].tobytes()).hexdigest()
