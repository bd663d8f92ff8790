"""`qwen3-mpi bench`: prefill and decode tokens/s, warm-up, barrier, median of several iterations.

Every rank runs the same loop; rank 0 prints one JSON line per attention kernel (and appends it to
--output). Prompts are seeded random token ids; decoding is greedy and ignores end-of-sequence, so
every iteration does exactly the same work.
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import replace

import numpy as np

from .. import report, session
from ..errors import UserError
from ..options import BenchCommand, RunOptions
from ..sampling import Sampler, SamplingParams


def _fail(message: str):
    raise UserError(message)


def run(cmd: BenchCommand, options: RunOptions, comm) -> int:
    path = session.model_dir(cmd.model, comm, options)
    config = session.read_config(path, comm)
    context = cmd.prompt_len + cmd.gen_len
    if context > config.max_position_embeddings:
        comm.agree(_fail, f"--prompt-len + --gen-len = {context} exceeds max_position_embeddings")
    options = replace(options, attention=cmd.attention[0], max_context=context)
    s = session.load(path, options, comm, max_tokens=cmd.prompt_len, config=config)
    report.say(comm, f"loaded in {s.load_s:.2f} s")
    greedy = Sampler(SamplingParams(), 0)
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, config.vocab_size, cmd.prompt_len).tolist() if comm.is_root else None
    results = []
    for kernel in cmd.attention:
        s.model.set_attention(kernel)
        prefill, decode = [], []
        for i in range(cmd.warmup + cmd.iters):
            gen = s.engine.generate(prompt, cmd.gen_len, SamplingParams(), greedy if comm.is_root else None, set())
            if comm.is_root and i >= cmd.warmup:
                prefill.append(cmd.prompt_len / gen.prefill_s)
                decode.append(gen.decode_steps / gen.decode_s)
        weight_bytes = comm.gather(s.model.weights.decode_nbytes)
        rss = comm.gather(report.peak_rss_mb())
        if comm.is_root:
            results.append(
                {
                    "model": str(path),
                    "ranks": comm.size,
                    "threads_per_rank": s.threads,
                    "attention": kernel,
                    "kv_cache_dtype": options.kv_cache_dtype,
                    "combine": options.combine,
                    "prompt_len": cmd.prompt_len,
                    "gen_len": cmd.gen_len,
                    "iters": cmd.iters,
                    "prefill_tokens_per_s": statistics.median(prefill),
                    "decode_tokens_per_s": statistics.median(decode),
                    "prefill_tokens_per_s_all": prefill,
                    "decode_tokens_per_s_all": decode,
                    "weight_bytes_per_token": sum(weight_bytes),
                    "peak_rss_mb": max(rss),
                }
            )
    if not comm.is_root:
        return 0
    for r in results:
        line = json.dumps(r)
        print(line, flush=True)
        if cmd.output:
            with open(cmd.output, "a") as f:
                f.write(line + "\n")
    for r in results:
        print(
            f"{r['ranks']} rank(s) x {r['threads_per_rank']} thread(s) {r['attention']:9s} prompt "
            f"{r['prompt_len']:5d}: prefill {r['prefill_tokens_per_s']:8.1f} tokens/s, decode "
            f"{r['decode_tokens_per_s']:6.1f} tokens/s (median of {r['iters']})",
            file=sys.stderr,
        )
    return 0
