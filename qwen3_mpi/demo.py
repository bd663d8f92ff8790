"""The demo checkpoint: Qwen3-0.6B's exact architecture with seeded random bf16 weights, and a tokenizer
built here (the real Qwen3 tokenizer cannot be shipped). Generated once into the user's cache directory;
the same seed gives the same bytes on every node. Its text output is meaningless: the weights are random.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np

DEMO_NAME = "qwen3-0.6b-random-v1"
SEED = 1234

# Qwen3-0.6B's config.json (architecture fields as published)
QWEN3_0_6B = {
    "architectures": ["Qwen3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 1024,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "max_position_embeddings": 40960,
    "max_window_layers": 28,
    "model_type": "qwen3",
    "num_attention_heads": 16,
    "num_hidden_layers": 28,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": None,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}
GENERATION_CONFIG = {"bos_token_id": 151643, "eos_token_id": [151645, 151643], "do_sample": False}
SPECIAL_TOKENS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def cache_dir() -> Path:
    base = os.environ.get("QWEN3_MPI_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "qwen3_mpi"
    )
    return Path(base)


def demo_path() -> Path:
    return cache_dir() / DEMO_NAME


def ensure_demo(config: dict | None = None, target: Path | None = None, on_write=None) -> Path:
    """The demo checkpoint directory, written first if absent (atomically: a temporary directory renamed);
    on_write(n, total) after each n bytes of the total written."""
    target = target or demo_path()
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        write_random_checkpoint(tmp, config or QWEN3_0_6B, SEED, on_write)
        write_tokenizer(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").exists():  # lost a race to another process: fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _tensor_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    D, I, V, K = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["head_dim"]
    H, G = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    shapes = {"model.embed_tokens.weight": (V, D)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update(
            {
                p + "input_layernorm.weight": (D,),
                p + "post_attention_layernorm.weight": (D,),
                p + "self_attn.q_proj.weight": (H * K, D),
                p + "self_attn.k_proj.weight": (G * K, D),
                p + "self_attn.v_proj.weight": (G * K, D),
                p + "self_attn.o_proj.weight": (D, H * K),
                p + "self_attn.q_norm.weight": (K,),
                p + "self_attn.k_norm.weight": (K,),
                p + "mlp.gate_proj.weight": (I, D),
                p + "mlp.up_proj.weight": (I, D),
                p + "mlp.down_proj.weight": (D, I),
            }
        )
    shapes["model.norm.weight"] = (D,)
    if not cfg.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (V, D)
    return shapes


def _random_bf16(name: str, shape: tuple[int, ...], seed: int, std: float, chunk: int = 1 << 22):
    """Seeded per tensor: N(0, std) for matrices, 1 + N(0, 0.1) for norm weights; bf16 bits (rounded to
    nearest even), yielded in chunks of rows so that writing needs little memory."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    rows = max(1, chunk // int(np.prod(shape[1:], dtype=np.int64)))
    for start in range(0, shape[0], rows):
        values = rng.standard_normal((min(rows, shape[0] - start), *shape[1:]), dtype=np.float32)
        values = values * np.float32(0.1) + np.float32(1.0) if len(shape) == 1 else values * np.float32(std)
        bits = values.view(np.uint32)
        yield ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def write_random_checkpoint(directory: Path, cfg: dict, seed: int, on_write=None) -> None:
    """config.json, generation_config.json and model.safetensors, written one tensor at a time;
    on_write(n, total) after each n bytes of the tensors' total."""
    shapes = _tensor_shapes(cfg)
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in shapes.items():
        nbytes = 2 * int(np.prod(shape))
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(directory / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for name, shape in shapes.items():
            for block in _random_bf16(name, shape, seed, cfg.get("initializer_range", 0.02)):
                f.write(block.tobytes())
                if on_write is not None:
                    on_write(block.nbytes, offset)
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))
    (directory / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2))


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: each byte as a printable character."""
    keep = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars, n = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    return chars


def build_tokenizer_json(n_regular: int = 151643) -> dict:
    """A byte-level BPE whose n_regular ids are the 256 bytes and then pseudo-words made of consonant-vowel
    syllables (so every id decodes to something readable), plus Qwen's special tokens at Qwen's ids."""
    vocab = {c: i for i, c in enumerate(_bytes_to_unicode().values())}
    merges: list[list[str]] = []

    def add(left: str, right: str) -> bool:
        if len(vocab) >= n_regular or left + right in vocab:
            return len(vocab) < n_regular
        vocab[left + right] = len(vocab)
        merges.append([left, right])
        return True

    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    for s in syllables:
        add(s[0], s[1])
    for s in syllables:
        add("Ġ", s)
    words = list(syllables)
    while len(vocab) < n_regular:
        longer = []
        for w in words:
            for s in syllables:
                if not (add(w, s) and add("Ġ" + w, s)):
                    break
                longer.append(w + s)
            else:
                continue
            break
        words = longer
    added = [
        {
            "id": i,
            "content": t,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for t, i in SPECIAL_TOKENS.items()
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": merges,
        },
    }


def write_tokenizer(directory: Path) -> None:
    (directory / "tokenizer.json").write_text(json.dumps(build_tokenizer_json(), ensure_ascii=False))
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "comment": "Built by qwen3_mpi for its random-weight demo checkpoint; not the Qwen3 tokenizer.",
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
