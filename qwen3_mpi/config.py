"""Model configuration, global, as in config.json: Qwen3Config keeps Hugging Face names and global sizes
(per-rank sizes live only in model/plan.py's ShardLayout)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError


@dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling: rope_type 'default', 'linear' or 'yarn' (transformers' formulas)."""

    rope_type: str = "default"
    factor: float = 1.0
    original_max_position_embeddings: int | None = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None


@dataclass(frozen=True)
class Qwen3Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    torch_dtype: str
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)
    eos_token_ids: tuple[int, ...] = ()

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config.json") -> Qwen3Config:
        model_type = raw.get("model_type")
        if model_type != "qwen3":
            raise UserError(
                f"{source}: model_type {model_type!r} is not supported; qwen3_mpi runs dense Qwen3 "
                "models (model_type 'qwen3') only"
                + (" (MoE models are not supported yet)" if model_type == "qwen3_moe" else "")
            )
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            if not isinstance(raw.get(key), int) or raw[key] <= 0:
                raise UserError(f"{source}: {key} must be a positive integer, got {raw.get(key)!r}")
        if raw.get("hidden_act", "silu") != "silu":
            raise UserError(f"{source}: hidden_act {raw['hidden_act']!r} is not supported (only 'silu')")
        if raw.get("attention_bias", False):
            raise UserError(f"{source}: attention_bias=true is not supported")
        if raw.get("use_sliding_window", False):
            raise UserError(f"{source}: use_sliding_window=true is not supported")
        heads = raw["num_attention_heads"]
        kv_heads = raw.get("num_key_value_heads") or heads
        if heads % kv_heads:
            raise UserError(
                f"{source}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
            )
        head_dim = raw.get("head_dim") or raw["hidden_size"] // heads
        if head_dim % 2:
            raise UserError(f"{source}: head_dim {head_dim} must be even for RoPE")
        # transformers 5.x: rope_parameters {rope_theta, rope_type, ...}; 4.x: rope_theta + rope_scaling.
        rope = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
        rope_theta = float(rope.get("rope_theta", raw.get("rope_theta", 10000.0)))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "linear", "yarn"):
            raise UserError(f"{source}: rope type {rope_type!r} is not supported (default, linear, yarn)")
        scaling = RopeScaling(
            rope_type=rope_type,
            factor=float(rope.get("factor", 1.0)),
            original_max_position_embeddings=rope.get("original_max_position_embeddings"),
            beta_fast=float(rope.get("beta_fast", 32.0)),
            beta_slow=float(rope.get("beta_slow", 1.0)),
            attention_factor=rope.get("attention_factor"),
        )
        eos = raw.get("eos_token_id")
        return cls(
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            intermediate_size=raw["intermediate_size"],
            num_hidden_layers=raw["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            max_position_embeddings=int(raw.get("max_position_embeddings", 32768)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            torch_dtype=str(raw.get("dtype") or raw.get("torch_dtype") or "bfloat16"),
            rope_scaling=scaling,
            eos_token_ids=int_tuple(eos),
        )

    @classmethod
    def from_hf(cls, model_dir: str | Path) -> Qwen3Config:
        path = Path(model_dir) / "config.json"
        return cls.from_dict(read_json(path), source=str(path))


def read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def int_tuple(value) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def generation_defaults(model_dir: str | Path) -> dict:
    """generation_config.json as a dict ({} when the file is absent)."""
    path = Path(model_dir) / "generation_config.json"
    return read_json(path) if path.exists() else {}
