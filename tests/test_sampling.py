import numpy as np

from qwen3_mpi.sampling import Sampler, SamplingParams

logits = np.array([0.1, 3.0, 2.9, -1.0, 0.5], np.float32)


def test_greedy_is_argmax():
    assert Sampler(SamplingParams(), 0)(logits, [], []) == 1


def test_top_k_1_is_argmax():
    s = Sampler(SamplingParams(temperature=5.0, top_k=1), 0)
    assert {s(logits, [], []) for _ in range(50)} == {1}


def test_top_p_and_min_p_restrict_candidates():
    s = Sampler(SamplingParams(temperature=1.0, top_p=0.5), 0)
    assert {s(logits, [], []) for _ in range(200)} <= {1, 2}
    s = Sampler(SamplingParams(temperature=1.0, min_p=0.5), 0)
    assert {s(logits, [], []) for _ in range(200)} == {1, 2}


def test_seed_reproducible_and_penalties():
    a = [Sampler(SamplingParams(temperature=1.0), 7)(logits, [], []) for _ in range(20)]
    b = [Sampler(SamplingParams(temperature=1.0), 7)(logits, [], []) for _ in range(20)]
    assert a == b
    assert Sampler(SamplingParams(repetition_penalty=2.0), 0)(logits, [1], []) == 2
    assert Sampler(SamplingParams(presence_penalty=1.0), 0)(logits, [], [1]) == 2
