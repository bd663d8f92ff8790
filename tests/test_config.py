"""config.json as transformers 4.5x and 5.x write it; other model types refused."""

import json

import pytest
from conftest import CONFIGS_DIR

from qwen3_mpi.config import Qwen3Config
from qwen3_mpi.errors import UserError


def test_real_qwen3_configs():
    c = Qwen3Config.from_hf(CONFIGS_DIR / "Qwen3-0.6B")
    assert (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (1024, 16, 8, 128)
    assert c.head_dim != c.hidden_size // c.num_attention_heads
    assert c.rope_theta == 1e6 and c.tie_word_embeddings and c.torch_dtype == "bfloat16"
    assert c.rope_scaling.rope_type == "default"
    c8 = Qwen3Config.from_hf(CONFIGS_DIR / "Qwen3-8B")
    assert not c8.tie_word_embeddings and c8.num_hidden_layers == 36


def test_transformers_5_style(tmp_path):
    raw = json.loads((CONFIGS_DIR / "Qwen3-0.6B" / "config.json").read_text())
    raw.pop("rope_theta"), raw.pop("rope_scaling"), raw.pop("torch_dtype")
    raw["rope_parameters"] = {
        "rope_theta": 5e5,
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 32768,
    }
    raw["dtype"] = "float32"
    c = Qwen3Config.from_dict(raw)
    assert c.rope_theta == 5e5 and c.torch_dtype == "float32"
    assert c.rope_scaling.rope_type == "yarn" and c.rope_scaling.factor == 4.0


def test_head_dim_defaults_to_hidden_over_heads():
    raw = json.loads((CONFIGS_DIR / "Qwen3-0.6B" / "config.json").read_text())
    raw.pop("head_dim")
    assert Qwen3Config.from_dict(raw).head_dim == 64


@pytest.mark.parametrize("model_type", ["qwen3_moe", "llama", None])
def test_other_model_types_refused(model_type):
    raw = json.loads((CONFIGS_DIR / "Qwen3-30B-A3B" / "config.json").read_text())
    raw["model_type"] = model_type
    with pytest.raises(UserError, match="model_type"):
        Qwen3Config.from_dict(raw)


def test_missing_and_broken_config(tmp_path):
    with pytest.raises(UserError, match="config.json: file not found"):
        Qwen3Config.from_hf(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        Qwen3Config.from_hf(tmp_path)
