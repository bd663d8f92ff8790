"""Choosing the next token from a vocabulary split across ranks.

Every rank holds the logits of its vocabulary rows. Each applies the penalties to its rows and sends
rank 0 only its best few tokens: its maximum when greedy, its top_k when top-k is on (top-p and min-p
then act within those top_k, as in transformers, where top-k comes first). Rank 0 merges them (at most
ranks x top_k values instead of the whole vocabulary) and draws. Only temperature sampling without top-k
needs every logit; then the whole vocabulary is gathered.

The draw depends only on the logit values and the seed, never on how the vocabulary was split: the
candidates are put in a canonical order (logit descending, id ascending) before the random draw.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    min_p: float = 0.0  # 0: off
    repetition_penalty: float = 1.0  # 1: off (transformers' rule: divide positive logits, multiply negative)
    presence_penalty: float = 0.0  # 0: off (subtracted once from every token already generated)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def per_rank(self) -> int | None:
        """How many of its best tokens each rank sends: 1 greedy, top_k with top-k; None: all of them."""
        if self.greedy:
            return 1
        return self.top_k if self.top_k > 0 else None


def penalize(logits_V: np.ndarray, v0: int, params: SamplingParams, context_ids, generated_ids) -> None:
    """In place, on this rank's vocabulary rows [v0, v0 + V): the repetition penalty on every id of the
    context (prompt and generated), the presence penalty on every generated id."""
    V = logits_V.shape[0]

    def local(ids):
        ids = np.unique(np.asarray(ids, dtype=np.int64)) - v0
        return ids[(ids >= 0) & (ids < V)]

    if params.repetition_penalty != 1.0 and len(context_ids):
        seen = local(context_ids)
        vals = logits_V[seen]
        logits_V[seen] = np.where(vals > 0, vals / params.repetition_penalty, vals * params.repetition_penalty)
    if params.presence_penalty != 0.0 and len(generated_ids):
        logits_V[local(generated_ids)] -= params.presence_penalty


def best(logits_V: np.ndarray, v0: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """This rank's m highest logits and their (global) ids, padded with -inf past V."""
    V = logits_V.shape[0]
    ids = np.zeros(m, np.int64)
    values = np.full(m, -np.inf, np.float32)
    if m == 1:
        top = np.array([np.argmax(logits_V)])
    else:
        top = np.argpartition(logits_V, V - m)[V - m :] if m < V else np.arange(V)
    ids[: top.size] = top + v0
    values[: top.size] = logits_V[top]
    return ids, values


def candidates(logits_V: np.ndarray, v0: int, params: SamplingParams, context_ids, generated_ids):
    """What a rank holding vocabulary rows [v0, v0 + V) sends rank 0: (ids, logits) after the penalties
    (applied in place), its best per_rank() of them, or all of them when per_rank() is None."""
    penalize(logits_V, v0, params, context_ids, generated_ids)
    m = params.per_rank()
    if m is None:
        return np.arange(v0, v0 + logits_V.shape[0]), logits_V
    return best(logits_V, v0, m)


class Sampler:
    """Rank 0's draw from the merged candidates, with its own random stream."""

    SORT_LIMIT = 4096  # above this many candidates (the whole vocabulary), sort only when top-p needs it

    def __init__(self, params: SamplingParams, seed: int):
        self.params = params
        self.rng = np.random.default_rng(seed)

    def distribution(self, ids: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The candidates (ids, logits after penalties; -inf entries are padding) -> (ids, probabilities)
        in canonical order, after temperature, top-k, top-p and min-p (transformers' order; ties at the
        k-th value stay)."""
        p = self.params
        keep = values > -np.inf
        ids, values = ids[keep], values[keep].astype(np.float64)
        if ids.size > self.SORT_LIMIT and p.top_p < 1.0 and p.top_k == 0:
            ids, values = self._top_p_head(ids, values)
        if ids.size <= self.SORT_LIMIT or p.top_p < 1.0:
            order = np.lexsort((ids, -values))  # logit descending, then id ascending
        else:
            order = np.argsort(ids, kind="stable")
        ids, values = ids[order], values[order] / p.temperature
        if 0 < p.top_k < values.size:  # sorted: the k-th value is values[k - 1]
            kept = values >= values[p.top_k - 1]
            ids, values = ids[kept], values[kept]
        probs = np.exp(values - values.max())
        probs /= probs.sum()
        if p.top_p < 1.0:  # the smallest prefix (in sorted order) whose mass reaches top_p
            cumulative = np.cumsum(probs)
            probs[np.searchsorted(cumulative, p.top_p * cumulative[-1]) + 1 :] = 0.0
        if p.min_p > 0.0:  # relative to the most likely token, so unaffected by renormalizing
            probs[probs < p.min_p * probs.max()] = 0.0
        return ids, probs / probs.sum()

    def _top_p_head(self, ids, values):
        """The whole vocabulary under top-p: the SORT_LIMIT best tokens when they alone reach top_p of the
        mass (they are then exactly the tokens a full sort would keep), else everything."""
        head = np.argpartition(-values, self.SORT_LIMIT)[: self.SORT_LIMIT]
        weights = np.exp((values - values.max()) / self.params.temperature)
        if weights[head].sum() >= self.params.top_p * weights.sum():
            return ids[head], values[head]
        return ids, values

    def choose(self, ids: np.ndarray, values: np.ndarray) -> int:
        """The next token: the highest logit (lowest id among equals) when greedy, else a draw."""
        if self.params.greedy:
            keep = values > -np.inf
            ids, values = ids[keep], values[keep]
            return int(ids[values == values.max()].min())
        ids, probs = self.distribution(ids, values)
        return int(ids[self.rng.choice(probs.size, p=probs)])

    def __call__(self, logits_V: np.ndarray, context_ids, generated_ids) -> int:
        """The next token from one whole logits vector (a single rank's view of everything)."""
        return self.choose(
            *candidates(np.array(logits_V, dtype=np.float32), 0, self.params, context_ids, generated_ids)
        )
