"""Attention micro-benchmark: standard vs streaming kernels against the number of cached positions.

    python bench/attention.py [--heads 16] [--kv-heads 8] [--head-dim 128] [--queries 1 128]
                              [--positions 128 256 ... 16384] [--kv-dtype float32 bfloat16] [--threads N]
                              [-o results.jsonl]
For each case the new queries sit at the end of S cached positions (decode: 1 query; a prefill chunk:
128). As in a forward pass, each call reads the KV cache of the next of several layers (together at
least --cache-mb, so the cache comes from memory, not from the last level of CPU cache); the two kernels
take turns (with each --kv-dtype: a bf16 cache holds the same values rounded). Prints one JSON line per
case: median seconds per call over 5 turns, and the kernel's working memory (its per-thread scratch and,
for streaming, the buffer of decode's per-span partial states: the only memory that differs between
the kernels).
"""

import argparse
import json
import statistics
import time

import numba
import numpy as np
from threadpoolctl import threadpool_limits

from qwen3_mpi.kernels.attention import (
    attention_standard,
    heads_of_kv,
    span_partials_floats,
    streaming,
    streaming_scratch_size,
)
from qwen3_mpi.kernels.bf16 import store_f32
from qwen3_mpi.kv_cache import KV_DTYPES


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--queries", type=int, nargs="+", default=[1, 128])
    parser.add_argument("--positions", type=int, nargs="+", default=[128 << i for i in range(8)])
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--qblock", type=int, default=128)
    parser.add_argument("--threads", type=int, default=numba.config.NUMBA_NUM_THREADS)
    parser.add_argument("--kv-dtype", nargs="+", choices=list(KV_DTYPES), default=["float32"], help="KV cache types")
    parser.add_argument("--cache-mb", type=int, default=256, help="KV caches walked, in all (default 256)")
    parser.add_argument("-o", "--output")
    args = parser.parse_args()
    numba.set_num_threads(args.threads)
    threadpool_limits(1)  # as qwen3-mpi does: sgemm is called from numba's threads
    H, G, K = args.heads, args.kv_heads, args.head_dim
    kv_of_H = np.arange(H, dtype=np.int64) // (H // G)
    heads_of_G = heads_of_kv(kv_of_H, G)
    scale = np.float32(K**-0.5)
    rng = np.random.default_rng(0)
    for S in args.positions:
        k = rng.standard_normal((G, S, K), dtype=np.float32)
        v = rng.standard_normal((G, S, K), dtype=np.float32)
        caches = {}  # per KV dtype: the layers' caches walked (bf16: the same values rounded)
        for dtype in args.kv_dtype:
            kd, vd = (k, v) if dtype == "float32" else (to_bf16(k), to_bf16(v))
            n = -(-(args.cache_mb << 20) // (2 * kd.nbytes))
            caches[dtype] = [(kd, vd)] + [(kd.copy(), vd.copy()) for _ in range(n - 1)]
        for T in args.queries:
            if T > S:
                continue
            qkv = rng.standard_normal((T, H * K), dtype=np.float32)
            out = np.zeros((T, H * K), np.float32)
            pos0 = S - T
            kernels = {}
            for dtype in args.kv_dtype:
                std_scratch = np.zeros((args.threads, S), np.float32)
                size = streaming_scratch_size(args.block, args.qblock, K, H // G, KV_DTYPES[dtype])
                str_scratch = np.zeros((args.threads, size), np.float32)
                parts = np.zeros(span_partials_floats(G, H // G, K), np.float32)
                kernels["standard", dtype] = (
                    std_scratch.nbytes,
                    lambda k, v, out=out, qkv=qkv, pos0=pos0, scratch=std_scratch: attention_standard(
                        out, qkv, kv_of_H, k, v, pos0, scale, scratch
                    ),
                )
                kernels["streaming", dtype] = (
                    str_scratch.nbytes + parts.nbytes,
                    lambda k, v, out=out, qkv=qkv, pos0=pos0, scratch=str_scratch, parts=parts: streaming(
                        out, qkv, heads_of_G, k, v, pos0, scale, scratch, parts, args.block, args.qblock
                    ),
                )
            results, times = {}, {key: [] for key in kernels}
            for key, (_, run) in kernels.items():
                run(*caches[key[1]][0])
                results[key] = out.copy()
            for _ in range(5):
                for key, (_, run) in kernels.items():
                    layers = caches[key[1]]
                    t0 = time.perf_counter()
                    for kl, vl in layers:
                        run(kl, vl)
                    times[key].append((time.perf_counter() - t0) / len(layers))
            for (kind, dtype), (nbytes, _) in kernels.items():
                row = {
                    "kernel": kind,
                    "kv_dtype": dtype,
                    "positions": S,
                    "queries": T,
                    "heads": H,
                    "kv_heads": G,
                    "head_dim": K,
                    "threads": args.threads,
                    "layers": len(caches[dtype]),
                    "seconds": statistics.median(times[kind, dtype]),
                    "working_memory_bytes": nbytes,
                }
                line = json.dumps(row)
                print(line, flush=True)
                if args.output:
                    with open(args.output, "a") as f:
                        f.write(line + "\n")
            for dtype in args.kv_dtype:
                assert np.allclose(results["standard", dtype], results["streaming", dtype], atol=1e-4, rtol=1e-3)


def to_bf16(a: np.ndarray) -> np.ndarray:
    """bf16 bits of float32 a, rounded to nearest even (as the engine's cache stores them)."""
    out = np.zeros(a.shape, np.uint16)
    store_rows(out.reshape(-1, a.shape[-1]), a.reshape(-1, a.shape[-1]))
    return out


@numba.njit
def store_rows(dst, src):
    for r in range(src.shape[0]):
        store_f32(dst[r], src[r])


if __name__ == "__main__":
    main()
