"""Sampling: the same distribution as transformers' logits processors, and the same tokens whether the
vocabulary is whole or split across ranks (candidates merged as rank 0 merges them)."""

import numpy as np
import pytest

from qwen3_mpi.sampling import Sampler, SamplingParams, best, penalize

rng = np.random.default_rng(0)
V = 1000

PARAMS = [
    SamplingParams(temperature=0.6, top_k=20, top_p=0.95),  # Qwen3's generation_config.json
    SamplingParams(temperature=1.0, top_k=50),
    SamplingParams(temperature=0.8, top_p=0.5),
    SamplingParams(temperature=1.3, min_p=0.05),
    SamplingParams(temperature=0.7, top_k=40, top_p=0.8, min_p=0.1),
    SamplingParams(temperature=1.0, repetition_penalty=1.3, presence_penalty=0.5),
]


def transformers_probs(logits, params, context_ids):
    """Probabilities after transformers' processors, in its order."""
    import torch
    from transformers.generation.logits_process import (
        MinPLogitsWarper,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    ids = torch.tensor([context_ids], dtype=torch.long)
    scores = torch.tensor(logits[None], dtype=torch.float32)
    processors = []
    if params.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    processors.append(TemperatureLogitsWarper(params.temperature))
    if params.top_k:
        processors.append(TopKLogitsWarper(params.top_k))
    if params.top_p < 1.0:
        processors.append(TopPLogitsWarper(params.top_p))
    if params.min_p:
        processors.append(MinPLogitsWarper(params.min_p))
    for proc in processors:
        scores = proc(ids, scores)
    return torch.softmax(scores, dim=-1)[0].double().numpy()


@pytest.mark.parametrize("params", [p for p in PARAMS if p.presence_penalty == 0])
def test_distribution_matches_transformers(params):
    logits = (rng.standard_normal(V) * 3).astype(np.float32)
    context = rng.integers(0, V, 30).tolist()
    sampler = Sampler(params, 0)
    penalized = logits.copy()
    penalize(penalized, 0, params, context, [])
    m = params.per_rank()
    ids, probs = sampler.distribution(*(best(penalized, 0, m) if m else (np.arange(V), penalized)))
    ours = np.zeros(V)
    ours[ids] = probs
    expect = transformers_probs(logits, params, context)
    assert set(np.flatnonzero(ours)) == set(np.flatnonzero(expect))
    np.testing.assert_allclose(ours, expect, atol=1e-6)


def test_penalties():
    logits = np.array([0.1, 3.0, 2.9, -1.0, 0.5], np.float32)
    rep = logits.copy()
    penalize(rep, 0, SamplingParams(repetition_penalty=2.0), [1, 3], [])
    np.testing.assert_allclose(rep, [0.1, 1.5, 2.9, -2.0, 0.5])
    pres = logits.copy()
    penalize(pres, 0, SamplingParams(presence_penalty=1.0), [0, 1, 2], [1, 1])  # once per token
    np.testing.assert_allclose(pres, [0.1, 2.0, 2.9, -1.0, 0.5])
    part = logits[2:].copy()  # a rank holding ids 2..4 sees only its own ids
    penalize(part, 2, SamplingParams(repetition_penalty=2.0), [1, 3], [])
    np.testing.assert_allclose(part, [2.9, -2.0, 0.5])


def test_greedy_takes_the_lowest_id_among_equal_maxima():
    logits = np.array([0.0, 2.0, 1.0, 2.0], np.float32)
    sampler = Sampler(SamplingParams(), 0)
    assert sampler(logits, [], []) == 1
    # split as two ranks would send their maxima
    ids = np.concatenate([best(logits[:2], 0, 1)[0], best(logits[2:], 2, 1)[0]])
    values = np.concatenate([best(logits[:2], 0, 1)[1], best(logits[2:], 2, 1)[1]])
    assert sampler.choose(ids, values) == 1


@pytest.mark.parametrize("params", PARAMS + [SamplingParams()])
@pytest.mark.parametrize("ranks", [2, 3, 7])
def test_split_vocabulary_draws_the_same_tokens(params, ranks):
    """Each 'rank' penalizes its rows and sends its candidates; rank 0 merges them. The tokens drawn with
    one seed equal those drawn from the whole vocabulary."""
    whole, split = Sampler(params, 42), Sampler(params, 42)
    bounds = np.linspace(0, V, ranks + 1).astype(int)
    context = rng.integers(0, V, 20).tolist()
    generated = []
    for _ in range(40):
        logits = (rng.standard_normal(V) * 2).astype(np.float32)
        a = whole(logits, context + generated, generated)
        ids, values = [], []
        for r in range(ranks):
            part = logits[bounds[r] : bounds[r + 1]].copy()
            penalize(part, bounds[r], params, context + generated, generated)
            m = params.per_rank()
            i, v = best(part, bounds[r], m) if m else (np.arange(bounds[r], bounds[r + 1]), part)
            ids.append(i)
            values.append(v)
        b = split.choose(np.concatenate(ids), np.concatenate(values))
        assert a == b
        generated.append(a)


def test_best_pads_when_a_rank_has_fewer_rows_than_k():
    ids, values = best(np.array([1.0, 3.0], np.float32), 10, 4)
    assert sorted(ids[values > -np.inf].tolist()) == [10, 11] and (values == -np.inf).sum() == 2


def test_seed_reproducible_and_distribution_respected():
    logits = np.log(np.array([0.5, 0.3, 0.2, 1e-9], np.float32))
    params = SamplingParams(temperature=1.0, top_k=3)
    a = [Sampler(params, 7)(logits, [], []) for _ in range(5)]
    s1, s2 = Sampler(params, 7), Sampler(params, 7)
    assert [s1(logits, [], []) for _ in range(50)] == [s2(logits, [], []) for _ in range(50)]
    draws = np.array([Sampler(params, i)(logits, [], []) for i in range(3000)])
    assert set(draws) <= {0, 1, 2} and len(a) == 5
    np.testing.assert_allclose(np.bincount(draws, minlength=3)[:3] / 3000, [0.5, 0.3, 0.2], atol=0.03)


@pytest.mark.parametrize("scale", [8.0, 0.1], ids=["peaked: head of the vocabulary", "flat: full sort"])
def test_top_p_over_a_large_vocabulary_matches_transformers(scale):
    params = SamplingParams(temperature=0.7, top_p=0.9)
    logits = (rng.standard_normal(20000) * scale).astype(np.float32)
    ids, probs = Sampler(params, 0).distribution(np.arange(logits.size), logits)
    ours = np.zeros(logits.size)
    ours[ids] = probs
    expect = transformers_probs(logits, params, [0])
    assert set(np.flatnonzero(ours)) == set(np.flatnonzero(expect))
    np.testing.assert_allclose(ours, expect, atol=1e-6)
