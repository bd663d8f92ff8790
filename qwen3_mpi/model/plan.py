"""The sharding plan, in one place: which axis of every weight is split across ranks, which range of it
rank r reads, and which collective follows it in the forward pass.

    weight (checkpoint name)           split by          rank r reads                then
    embed_tokens                       vocabulary rows   vocab[r]                    combine (-> full embeddings)
    input_layernorm                    replicated
    self_attn.q_proj                   output rows       heads[r] x head_dim
    self_attn.k_proj, v_proj           output rows       kv_heads[r] x head_dim
    self_attn.q_norm, k_norm           replicated
    self_attn.o_proj                   input columns     heads[r] x head_dim         combine (partial sums -> full hidden)
    post_attention_layernorm           replicated
    mlp.gate_proj, up_proj             output rows       ffn[r]
    mlp.down_proj                      input columns     ffn[r]                      combine (partial sums -> full hidden)
    norm                               replicated
    lm_head (embed_tokens when tied)   vocabulary rows   vocab[r]                    gather (logits or candidates -> rank 0)

Query heads are balanced contiguous ranges; a rank holds every KV head its query heads use, so KV
heads are replicated when ranks outnumber num_key_value_heads (and a KV head's keys and values are
then computed by every rank that holds it). The FFN and the vocabulary are balanced contiguous ranges.
PLAN below is this table as data; ShardLayout holds rank r's ranges; shard_reads turns both into the
slices load_shard reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..config import Qwen3Config
from ..errors import UserError


def balanced_range(n: int, parts: int, index: int) -> tuple[int, int]:
    """[start, stop) of part `index` when n items are split into `parts` contiguous near-equal ranges."""
    return n * index // parts, n * (index + 1) // parts


@dataclass(frozen=True)
class ShardLayout:
    """The ranges rank `rank` of `size` holds (global indices); per-rank sizes live only here, the config
    keeps Hugging Face's global values."""

    rank: int
    size: int
    heads: tuple[int, int]  # query heads [start, stop)
    kv_heads: tuple[int, int]  # KV heads [start, stop)
    ffn: tuple[int, int]  # intermediate columns [start, stop)
    vocab: tuple[int, int]  # vocabulary rows [start, stop)

    @classmethod
    def for_rank(cls, config: Qwen3Config, rank: int, size: int) -> ShardLayout:
        if size > config.num_attention_heads:
            raise UserError(
                f"{size} ranks is more than num_attention_heads ({config.num_attention_heads}); "
                f"run with at most {config.num_attention_heads} ranks"
            )
        h0, h1 = balanced_range(config.num_attention_heads, size, rank)
        group = config.num_attention_heads // config.num_key_value_heads
        return cls(
            rank=rank,
            size=size,
            heads=(h0, h1),
            kv_heads=(h0 // group, (h1 - 1) // group + 1),
            ffn=balanced_range(config.intermediate_size, size, rank),
            vocab=balanced_range(config.vocab_size, size, rank),
        )

    @classmethod
    def all_ranks(cls, config: Qwen3Config, size: int) -> list[ShardLayout]:
        return [cls.for_rank(config, r, size) for r in range(size)]

    @property
    def n_heads(self) -> int:
        return self.heads[1] - self.heads[0]

    @property
    def n_kv_heads(self) -> int:
        return self.kv_heads[1] - self.kv_heads[0]

    @property
    def n_ffn(self) -> int:
        return self.ffn[1] - self.ffn[0]

    @property
    def n_vocab(self) -> int:
        return self.vocab[1] - self.vocab[0]

    def kv_head_of(self, config: Qwen3Config) -> list[int]:
        """Local KV head index used by each local query head (GQA)."""
        group = config.num_attention_heads // config.num_key_value_heads
        return [h // group - self.kv_heads[0] for h in range(*self.heads)]


@dataclass(frozen=True)
class Split:
    """One row of the plan: a checkpoint tensor ("{L}" stands for the layer index), its global shape,
    the axis split across ranks (0 output rows, 1 input columns, None replicated), the ShardLayout
    range read along it, in units of `unit` rows or columns, and the collective that follows."""

    name: str
    shape: Callable[[Qwen3Config], tuple[int, ...]]
    axis: int | None = None
    part: str | None = None
    unit: Callable[[Qwen3Config], int] = lambda c: 1
    then: str = ""


def _head_dim(c: Qwen3Config) -> int:
    return c.head_dim


_LAYER = "model.layers.{L}."
PLAN = {
    "embed_tokens": Split(
        "model.embed_tokens.weight", lambda c: (c.vocab_size, c.hidden_size), 0, "vocab", then="combine"
    ),
    "input_layernorm": Split(_LAYER + "input_layernorm.weight", lambda c: (c.hidden_size,)),
    "q_proj": Split(
        _LAYER + "self_attn.q_proj.weight",
        lambda c: (c.num_attention_heads * c.head_dim, c.hidden_size),
        0,
        "heads",
        _head_dim,
    ),
    "k_proj": Split(
        _LAYER + "self_attn.k_proj.weight",
        lambda c: (c.num_key_value_heads * c.head_dim, c.hidden_size),
        0,
        "kv_heads",
        _head_dim,
    ),
    "v_proj": Split(
        _LAYER + "self_attn.v_proj.weight",
        lambda c: (c.num_key_value_heads * c.head_dim, c.hidden_size),
        0,
        "kv_heads",
        _head_dim,
    ),
    "q_norm": Split(_LAYER + "self_attn.q_norm.weight", lambda c: (c.head_dim,)),
    "k_norm": Split(_LAYER + "self_attn.k_norm.weight", lambda c: (c.head_dim,)),
    "o_proj": Split(
        _LAYER + "self_attn.o_proj.weight",
        lambda c: (c.hidden_size, c.num_attention_heads * c.head_dim),
        1,
        "heads",
        _head_dim,
        then="combine",
    ),
    "post_attention_layernorm": Split(_LAYER + "post_attention_layernorm.weight", lambda c: (c.hidden_size,)),
    "gate_proj": Split(_LAYER + "mlp.gate_proj.weight", lambda c: (c.intermediate_size, c.hidden_size), 0, "ffn"),
    "up_proj": Split(_LAYER + "mlp.up_proj.weight", lambda c: (c.intermediate_size, c.hidden_size), 0, "ffn"),
    "down_proj": Split(
        _LAYER + "mlp.down_proj.weight", lambda c: (c.hidden_size, c.intermediate_size), 1, "ffn", then="combine"
    ),
    "norm": Split("model.norm.weight", lambda c: (c.hidden_size,)),
    "lm_head": Split("lm_head.weight", lambda c: (c.vocab_size, c.hidden_size), 0, "vocab", then="gather"),
}

# the weights of a layer as the model holds them (model/shard.py's LayerWeights): each the plan rows
# stacked by output rows into one matrix, or one tensor
LAYER_WEIGHTS = {
    "input_layernorm_D": ("input_layernorm",),
    "post_attention_layernorm_D": ("post_attention_layernorm",),
    "q_norm_K": ("q_norm",),
    "k_norm_K": ("k_norm",),
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "o_proj": ("o_proj",),
    "gate_up_proj": ("gate_proj", "up_proj"),
    "down_proj": ("down_proj",),
}

Read = tuple  # (name, global shape, rows (start, stop) or None, cols (start, stop) or None)


def read_of(key: str, config: Qwen3Config, layout: ShardLayout, layer: int | None = None) -> Read:
    """The slice of PLAN[key] (of layer `layer`) that this layout's rank reads."""
    split = PLAN[key]
    name = split.name.format(L=layer)
    rows = cols = None
    if split.axis is not None:
        start, stop = getattr(layout, split.part)
        unit = split.unit(config)
        span = (start * unit, stop * unit)
        rows, cols = (span, None) if split.axis == 0 else (None, span)
    return name, split.shape(config), rows, cols


def shard_reads(config: Qwen3Config, layout: ShardLayout) -> dict:
    """Every slice this rank reads: {layer: {LayerWeights field: [Read, ...]}, 'embed': [...], 'lm_head':
    [...] (none when tied), 'norm': [...]}."""
    reads = {
        i: {field: [read_of(k, config, layout, i) for k in keys] for field, keys in LAYER_WEIGHTS.items()}
        for i in range(config.num_hidden_layers)
    }
    reads["embed"] = [read_of("embed_tokens", config, layout)]
    reads["lm_head"] = [] if config.tie_word_embeddings else [read_of("lm_head", config, layout)]
    reads["norm"] = [read_of("norm", config, layout)]
    return reads


def all_reads(config: Qwen3Config, layout: ShardLayout) -> list[Read]:
    plan = shard_reads(config, layout)
    groups = [g for i in range(config.num_hidden_layers) for g in plan[i].values()]
    groups += [plan["embed"], plan["lm_head"], plan["norm"]]
    return [read for group in groups for read in group]
