"""Next-token choice on rank 0: greedy at temperature 0, else penalties, temperature, top-k, top-p, min-p."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    min_p: float = 0.0  # 0: off
    repetition_penalty: float = 1.0  # 1: off (transformers' rule: divide positive logits, multiply negative)
    presence_penalty: float = 0.0  # 0: off (subtracted once from every token already generated)


class Sampler:
    def __init__(self, params: SamplingParams, seed: int):
        self.params = params
        self.rng = np.random.default_rng(seed)

    def __call__(self, logits_V: np.ndarray, context_ids: list[int], generated_ids: list[int]) -> int:
        p = self.params
        logits = logits_V.astype(np.float64)
        if p.repetition_penalty != 1.0 and context_ids:
            seen = np.unique(np.asarray(context_ids))
            vals = logits[seen]
            logits[seen] = np.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if p.presence_penalty != 0.0 and generated_ids:
            logits[np.unique(np.asarray(generated_ids))] -= p.presence_penalty
        if p.temperature <= 0.0:
            return int(np.argmax(logits))
        logits /= p.temperature
        if 0 < p.top_k < logits.size:
            kth = np.partition(logits, -p.top_k)[-p.top_k]
            logits[logits < kth] = -np.inf
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        if p.min_p > 0.0:
            probs[probs < p.min_p * probs.max()] = 0.0
        if p.top_p < 1.0:
            candidates = np.flatnonzero(probs)  # few after top-k; sorting only them keeps this cheap
            order = candidates[np.argsort(-probs[candidates], kind="stable")]
            cumulative = np.cumsum(probs[order])
            keep = np.searchsorted(cumulative, p.top_p * cumulative[-1]) + 1  # smallest set reaching top_p
            probs[order[keep:]] = 0.0
        probs /= probs.sum()
        return int(self.rng.choice(probs.size, p=probs))
