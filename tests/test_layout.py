"""The sharding plan: every rank count from 1 to num_attention_heads covers everything exactly once."""

import itertools

import pytest
from conftest import CONFIGS_DIR

from qwen3_mpi.config import Qwen3Config
from qwen3_mpi.errors import UserError
from qwen3_mpi.model import ShardLayout

MODELS = ["Qwen3-0.6B", "Qwen3-8B", "Qwen3-14B", "Qwen3-32B"]


@pytest.mark.parametrize("model", MODELS)
def test_every_rank_count_partitions_heads_ffn_and_vocab(model):
    config = Qwen3Config.from_hf(CONFIGS_DIR / model)
    group = config.num_attention_heads // config.num_key_value_heads
    for size in range(1, config.num_attention_heads + 1):
        layouts = [ShardLayout.for_rank(config, r, size) for r in range(size)]
        for attr, total in (
            ("heads", config.num_attention_heads),
            ("ffn", config.intermediate_size),
            ("vocab", config.vocab_size),
        ):
            ranges = [getattr(l, attr) for l in layouts]
            assert ranges[0][0] == 0 and ranges[-1][1] == total
            assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
            lengths = [b - a for a, b in ranges]
            assert max(lengths) - min(lengths) <= 1 and min(lengths) > 0  # balanced
        for l in layouts:
            used = {h // group for h in range(*l.heads)}
            assert used == set(range(*l.kv_heads))  # exactly the KV heads its query heads use
            assert all(0 <= g < l.n_kv_heads for g in l.kv_head_of(config))


def test_kv_heads_replicated_beyond_their_count():
    config = Qwen3Config.from_hf(CONFIGS_DIR / "Qwen3-0.6B")  # 16 heads, 8 KV heads
    layouts = [ShardLayout.for_rank(config, r, 16) for r in range(16)]
    assert [l.kv_heads for l in layouts] == [(r // 2, r // 2 + 1) for r in range(16)]


def test_more_ranks_than_heads_is_an_error():
    config = Qwen3Config.from_hf(CONFIGS_DIR / "Qwen3-0.6B")
    with pytest.raises(UserError, match="17 ranks is more than num_attention_heads"):
        ShardLayout.for_rank(config, 0, 17)
