"""The generation loop. Every rank runs it; rank 0 decides (tokens, sampling, stops) and broadcasts."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from .comm import Comm
from .model import Model
from .sampling import Sampler, SamplingParams, candidates

# end-of-sequence or --stop text; max new tokens; cache full; Ctrl-C (commands/interrupt.py)
FINISH_REASONS = ("stop", "length", "context", "interrupted")

# "RANK:STEP": that rank raises at that decode step (for the tests that show a failing rank ends the job)
_FAULT = tuple(int(v) for v in os.environ["QWEN3_MPI_FAULT"].split(":")) if os.environ.get("QWEN3_MPI_FAULT") else None


@dataclass
class Generation:
    prompt_ids: list[int]
    pos0: int = 0  # cached positions before the prompt (a chat's earlier turns)
    output_ids: list[int] = field(default_factory=list)
    finish_reason: str = "length"
    prefill_s: float = 0.0
    decode_s: float = 0.0
    decode_steps: int = 0
    collective_s: float = 0.0  # rank 0's time inside collectives during prefill and decode


class Engine:
    def __init__(self, model: Model, comm: Comm):
        self.model, self.comm = model, comm
        self.v0 = model.layout.vocab[0]
        self.interrupted = False  # rank 0: set (by a signal handler) to stop after the current token

    def _broadcast_ids(self, ids: list[int] | None) -> np.ndarray:
        n = self.comm.bcast_ints(np.array([len(ids) if ids is not None else 0], np.int64))[0]
        buf = np.array(ids, dtype=np.int64) if self.comm.is_root else np.empty(n, dtype=np.int64)
        return self.comm.bcast_ints(buf)

    def prefill(self, ids_T: np.ndarray, pos0: int = 0, all_logits: bool = False, gather: bool = True, progress=None):
        """Run the prompt at positions pos0.. in chunks of at most max_tokens; the logits of the last (or
        every) position. progress(n), if given, is called on rank 0 after each chunk of n tokens."""
        chunk = self.model.max_tokens
        outputs = []
        logits = None
        for start in range(0, len(ids_T), chunk):
            part = ids_T[start : start + chunk]
            logits = self.model.forward(part, pos0 + start, all_logits=all_logits, gather=gather)
            outputs.append(logits)
            if progress is not None:
                progress(len(part))
        if all_logits and self.comm.is_root:
            return np.concatenate(outputs, axis=0)
        return logits

    def _next_token(self, local_V, params: SamplingParams, sampler: Sampler | None, context, generated) -> int:
        """Every rank penalizes its vocabulary rows and sends rank 0 its candidates (or, for sampling
        without top-k, all its logits); rank 0 draws. Returns the token on rank 0, -1 elsewhere."""
        ids, values = candidates(local_V, self.v0, params, context, generated)
        m = params.per_rank()
        if m is None:
            full = self.comm.gather_columns(values[None], self.model.vocab_counts)
            return sampler.choose(np.arange(full.shape[1]), full[0]) if self.comm.is_root else -1
        gathered = self.comm.gather_rows(np.concatenate([ids, values]).astype(np.float64))
        if not self.comm.is_root:
            return -1
        return sampler.choose(gathered[:, :m].ravel().astype(np.int64), gathered[:, m:].ravel().astype(np.float32))

    def generate(
        self,
        prompt_ids: list[int] | None,
        max_new_tokens: int,
        params: SamplingParams | None,
        sampler: Sampler | None,
        stop_ids: set[int],
        on_token=None,
        pos0: int = 0,
        context_ids: list[int] | None = None,
        progress=None,
    ) -> Generation | None:
        """Prefill the prompt (rank 0's ids, the sampling params and pos0 are broadcast) after pos0 cached
        positions, then decode up to max_new_tokens, or until the cache is full. Rank 0 gets the
        Generation; on_token(gen) is called on rank 0 after each new token and may return "stop".
        context_ids: the ids of the cached positions (for the repetition penalty; rank 0's are used)."""
        comm = self.comm
        self.interrupted = False
        collective0 = comm.collective_s
        ids_T = self._broadcast_ids(prompt_ids)
        pos0 = int(comm.bcast_ints(np.array([pos0], np.int64))[0])
        context = list(self._broadcast_ids(context_ids if comm.is_root else None)) if pos0 else []
        params = comm.bcast(params)
        gen = Generation(prompt_ids=ids_T.tolist(), pos0=pos0)
        comm.barrier()
        comm.phase = "prefill"
        t0 = comm.wtime()
        local = self.prefill(ids_T, pos0, gather=False, progress=progress)
        gen.prefill_s = comm.wtime() - t0
        comm.phase = "decode"
        t1 = comm.wtime()
        history = context + gen.prompt_ids  # every rank keeps it, for the penalties
        first_new = len(history)
        step = np.zeros(2, np.int64)  # [token, stop]
        pos = pos0 + len(ids_T)
        while True:
            token = self._next_token(local, params, sampler, history, history[first_new:])
            if comm.is_root:
                gen.output_ids.append(token)
                reason = None
                if token in stop_ids:
                    reason = "stop"
                elif on_token is not None:
                    reason = on_token(gen)
                if reason is None and self.interrupted:
                    reason = "interrupted"
                if reason is None and len(gen.output_ids) >= max_new_tokens:
                    reason = "length"
                if reason is None and pos >= self.model.max_context:
                    reason = "context"
                if reason is not None:
                    gen.finish_reason = reason
                step[:] = (token, reason is not None)
            comm.bcast_ints(step)
            history.append(int(step[0]))
            if step[1]:
                break
            if _FAULT == (comm.rank, gen.decode_steps):
                raise RuntimeError(f"injected fault (QWEN3_MPI_FAULT) on rank {comm.rank} at decode step {_FAULT[1]}")
            local = self.model.forward(step[:1].copy(), pos, gather=False)
            pos += 1
            gen.decode_steps += 1
        gen.decode_s = comm.wtime() - t1
        comm.phase = "other"
        gen.collective_s = comm.collective_s - collective0
        self.last = gen  # every rank's own timings (for --profile)
        return gen if comm.is_root else None
