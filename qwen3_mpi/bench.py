"""`qwen3-mpi bench`: prefill and decode tokens/s, warm-up, barrier, median of several iterations.

Every rank runs the same loop; rank 0 prints one JSON line per attention kernel (and appends it to
--output). Prompts are seeded random token ids; decoding is greedy and ignores end-of-sequence, so
every iteration does exactly the same work.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import numba
import numpy as np

from .cli import peak_rss_mb
from .comm import Comm
from .engine import Engine
from .sampling import Sampler, SamplingParams


def weight_bytes_per_token(model) -> int:
    """Bytes of weights a decode step reads on this rank: every matrix once, one embedding row."""
    w = model.weights
    total = w.lm_head.nbytes + w.embed.row_nbytes
    for layer in w.layers:
        total += sum(m.nbytes for m in (layer.qkv_proj, layer.o_proj, layer.gate_up_proj, layer.down_proj))
    return total


def run(args, comm: Comm, model_dir: Path, model) -> None:
    engine = Engine(model, comm)
    greedy = Sampler(SamplingParams(), 0)
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, model.config.vocab_size, args.prompt_len).tolist() if comm.is_root else None
    results = []
    for kernel in args.attention:
        model.set_attention(kernel)
        prefill, decode = [], []
        for i in range(args.warmup + args.iters):
            gen = engine.generate(prompt, args.gen_len, SamplingParams(), greedy if comm.is_root else None, set())
            if comm.is_root and i >= args.warmup:
                prefill.append(args.prompt_len / gen.prefill_s)
                decode.append(gen.decode_steps / gen.decode_s)
        weight_bytes = comm.gather(weight_bytes_per_token(model))
        rss = comm.gather(peak_rss_mb())
        if comm.is_root:
            results.append(
                {
                    "model": str(model_dir),
                    "ranks": comm.size,
                    "threads_per_rank": numba.get_num_threads(),
                    "attention": kernel,
                    "kv_cache_dtype": model.cache.dtype,
                    "combine": comm.combine_method,
                    "prompt_len": args.prompt_len,
                    "gen_len": args.gen_len,
                    "iters": args.iters,
                    "prefill_tokens_per_s": statistics.median(prefill),
                    "decode_tokens_per_s": statistics.median(decode),
                    "prefill_tokens_per_s_all": prefill,
                    "decode_tokens_per_s_all": decode,
                    "weight_bytes_per_token": sum(weight_bytes),
                    "peak_rss_mb": max(rss),
                }
            )
    if comm.is_root:
        for r in results:
            line = json.dumps(r)
            print(line, flush=True)
            if args.output:
                with open(args.output, "a") as f:
                    f.write(line + "\n")
        for r in results:
            print(
                f"{r['ranks']} rank(s) x {r['threads_per_rank']} thread(s) {r['attention']:9s} prompt "
                f"{r['prompt_len']:5d}: prefill {r['prefill_tokens_per_s']:8.1f} tokens/s, decode "
                f"{r['decode_tokens_per_s']:6.1f} tokens/s (median of {r['iters']})",
                file=sys.stderr,
            )
