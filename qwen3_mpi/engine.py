"""The generation loop. Every rank runs it; rank 0 decides (tokens, sampling, stops) and broadcasts."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .comm import Comm
from .model import Model
from .sampling import Sampler


@dataclass
class Generation:
    prompt_ids: list[int]
    output_ids: list[int] = field(default_factory=list)
    stop_reason: str = "length"
    prefill_s: float = 0.0
    decode_s: float = 0.0
    decode_steps: int = 0


class Engine:
    def __init__(self, model: Model, comm: Comm):
        self.model, self.comm = model, comm

    def _broadcast_ids(self, ids: list[int] | None) -> np.ndarray:
        n = self.comm.bcast_ints(np.array([len(ids) if ids is not None else 0], np.int64))[0]
        buf = np.array(ids, dtype=np.int64) if self.comm.is_root else np.empty(n, dtype=np.int64)
        return self.comm.bcast_ints(buf)

    def prefill(self, ids_T: np.ndarray, all_logits: bool = False):
        """Run the prompt in chunks of at most max_tokens; the logits of the last (or every) position."""
        chunk = self.model.max_tokens
        outputs = []
        logits = None
        for start in range(0, len(ids_T), chunk):
            logits = self.model.forward(ids_T[start : start + chunk], start, all_logits=all_logits)
            outputs.append(logits)
        if all_logits and self.comm.is_root:
            return np.concatenate(outputs, axis=0)
        return logits

    def generate(
        self,
        prompt_ids: list[int] | None,
        max_new_tokens: int,
        sampler: Sampler | None,
        stop_ids: set[int],
        on_token=None,
    ) -> Generation | None:
        """Prefill the prompt (rank 0's ids), then decode up to max_new_tokens. Rank 0 gets the Generation;
        on_token(gen) is called on rank 0 after each new token and may return a stop reason."""
        comm = self.comm
        ids_T = self._broadcast_ids(prompt_ids)
        gen = Generation(prompt_ids=ids_T.tolist())
        comm.barrier()
        t0 = comm.wtime()
        logits = self.prefill(ids_T)
        gen.prefill_s = comm.wtime() - t0
        t1 = comm.wtime()
        step = np.zeros(2, np.int64)  # [token, stop]
        pos = len(ids_T)
        while True:
            if comm.is_root:
                token = sampler(logits, gen.prompt_ids + gen.output_ids, gen.output_ids)
                gen.output_ids.append(token)
                reason = None
                if token in stop_ids:
                    reason = "eos"
                elif on_token is not None:
                    reason = on_token(gen)
                if reason is None and len(gen.output_ids) >= max_new_tokens:
                    reason = "length"
                if reason is not None:
                    gen.stop_reason = reason
                step[:] = (token, reason is not None)
            comm.bcast_ints(step)
            if step[1]:
                break
            logits = self.model.forward(step[:1].copy(), pos)
            pos += 1
            gen.decode_steps += 1
        gen.decode_s = comm.wtime() - t1
        return gen if comm.is_root else None
