"""Side by side on this machine: transformers (bf16 and fp32), llama.cpp (bf16, when given) and qwen3_mpi
on the same checkpoint, the same prompt length and number of new tokens, against the machine's measured
limits.

    python bench/compare.py [-m DIR] [--prompt-len 128] [--gen-len 64] [--rounds 5] [--iters 2]
                            [--ranks 1 2] [--attention streaming] [--read-gib 2] [-o results.json]
                            [--llama-bench BIN --gguf FILE]    (bench/llama_cpp.sh prints both)
Needs the test extra (torch, transformers). The engines take turns: each round measures the machine,
then runs every engine (its own process, a warm-up and --iters measured iterations), so that a ratio
compares figures taken minutes apart at most (this VM's speed moves by 10-40% over minutes). Prints a
table: tokens/s (median over rounds), ratios to transformers and decode as a percentage of the bandwidth
roofline (weight bytes read per token / the round's best read bandwidth), each a median over rounds
with its range, and prefill as a percentage of the measured float32 GEMM rate. Then, since the rounds'
reads can fall in another stretch of the machine than the engines' runs: qwen3_mpi's decode at each of
--ranks (an MPI job each), in bursts of 16 steps each between two reads of the machine by all its ranks
at once, as a percentage of the better of the two (12 bursts per round and rank count); with
--llama-bench, each burst of the single-rank job is followed by one of llama.cpp's decode (32 tokens,
its own timing) and a third read.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np


def read_bandwidth(threads: int, gib: float) -> dict:
    """STREAM-like reads of a float32 array larger than the caches with `threads` numba threads, two
    ways, and numpy's one-thread sum; GB/s, best of 5 each. "numba_gb_s", the roofline's bandwidth, is
    the faster of the two numba reads: one stream per task (a plain sum of 16 KiB), or the decode
    kernel's access pattern without its arithmetic (four streams per task, each prefetching
    PREFETCH_AHEAD lines ahead into L2), so that no read the engine does can beat the figure it is measured by."""
    reader = Reader(threads, gib)
    plain = max(reader.plain() for _ in range(5))
    streams = max(reader.streams() for _ in range(5))
    return {
        "numpy_1_thread_gb_s": reader.a.nbytes / min(_timed(lambda: reader.a.sum()) for _ in range(3)) / 1e9,
        "numba_plain_gb_s": plain,
        "numba_streams_prefetch_gb_s": streams,
        "numba_gb_s": max(plain, streams),
    }


class Reader:
    """The two numba reads of read_bandwidth over one array of `gib` GiB; each call reads it once (GB/s)."""

    def __init__(self, threads: int, gib: float):
        import numba
        from numba import njit, prange

        from qwen3_mpi.kernels.bf16 import PREFETCH_AHEAD

        sum_streams = _sum_streams_intrinsic()

        @njit(parallel=True, fastmath=True)
        def read(a, out):
            for c in prange(out.size):
                chunk = a[c * 4096 : (c + 1) * 4096]
                s = np.float32(0.0)
                for i in range(chunk.size):
                    s += chunk[i]
                out[c] = s

        @njit(parallel=True, fastmath=True)
        def read_streams(a, out, ahead):
            for c in prange(out.size):  # four streams of 4096 floats side by side
                out[c] = sum_streams(a, c * 16384, 256, ahead)

        self.a = np.ones(int(gib * 2**28), np.float32)
        out = np.zeros(self.a.size // 4096, np.float32)
        out4 = np.zeros(self.a.size // 16384, np.float32)
        numba.set_num_threads(threads)
        read(self.a, out)
        read_streams(self.a, out4, PREFETCH_AHEAD)
        assert out.sum() == self.a.size and out4.sum() == self.a.size  # every element read once
        self.ways = (lambda: read(self.a, out), lambda: read_streams(self.a, out4, PREFETCH_AHEAD))
        self.plain = lambda: self.a.nbytes / _timed(self.ways[0]) / 1e9
        self.streams = lambda: self.a.nbytes / _timed(self.ways[1]) / 1e9

    def best(self) -> float:
        return max(self.plain(), self.streams())

    def best_together(self, comm) -> float:
        """best() with every rank of comm reading its own array at once (GB/s, all ranks' bytes over the
        time from a barrier to the barrier after the last rank's read); rank 0's figure is the one used."""
        rates = []
        for way in self.ways:
            comm.barrier()
            t0 = time.perf_counter()
            way()
            comm.barrier()
            rates.append(comm.size * self.a.nbytes / (time.perf_counter() - t0) / 1e9)
        return max(rates)


def paired_decode(model_dir, attention, prompt_len, threads, gib, turns=12, steps=16, llama=None) -> dict | None:
    """qwen3_mpi's decode (greedy, through Engine.generate as `qwen3-mpi generate` runs it) on the ranks of
    this MPI job, `threads` cores shared among them, in bursts of `steps` steps, each between two reads of
    the machine in which every rank reads at once (Reader.best_together): per turn, the weight bytes a
    step reads on all ranks times steps/s over the better of the two reads. Paired so closely, the ratio
    holds when the machine's bandwidth drifts between the rounds' own measurements. With llama =
    (llama-bench, gguf) on a single rank, each turn then runs a burst of llama.cpp's decode (2 x `steps`
    tokens after its warm-up, in its own process; its own timing) before a third read, so both engines
    are measured against reads taken seconds apart. Returns the figures on rank 0, None elsewhere."""
    import qwen3_mpi
    from qwen3_mpi.sampling import Sampler, SamplingParams

    context = prompt_len + (turns + 1) * steps
    options = qwen3_mpi.RunOptions(attention=attention, max_context=context, progress=False)
    session = qwen3_mpi.load(model_dir, options, max_tokens=prompt_len)  # threads as qwen3-mpi sets them
    comm, config, engine, greedy = session.comm, session.config, session.engine, SamplingParams()
    reader = Reader(max(1, threads // comm.size), gib / comm.size)
    sampler = Sampler(greedy, 0) if comm.is_root else None
    prompt = np.random.default_rng(0).integers(0, config.vocab_size, prompt_len).tolist()

    def burst(ids, pos0):
        """`steps` forward passes, each with its greedy token (the first at pos0); rank 0: its seconds."""
        gen = engine.generate(ids if comm.is_root else None, steps, greedy, sampler, set(), pos0=pos0, context_ids=[])
        return (gen.prefill_s + gen.decode_s, gen.output_ids[-1]) if comm.is_root else (0.0, 0)

    _, token = burst(prompt, 0)  # the prompt; its last position's token starts the first burst
    pos = prompt_len
    step_bytes = sum(comm.allgather(session.model.weights.decode_nbytes))
    ratios, reads, llama_ratios, llama_reads = [], [], [], []
    for _ in range(turns):
        before = reader.best_together(comm)
        seconds, token = burst([token], pos)
        pos += steps
        middle = reader.best_together(comm)
        reads.append(max(before, middle))
        ratios.append(100 * step_bytes * steps / seconds / 1e9 / reads[-1] if comm.is_root else 0.0)
        if llama and comm.size == 1:
            tokens_per_s = llama_cpp_run(*llama, 0, 2 * steps, 1, threads)["decode_tokens_per_s"]
            llama_reads.append(max(middle, reader.best()))
            llama_ratios.append(100 * step_bytes * tokens_per_s / 1e9 / llama_reads[-1])
    if not comm.is_root:
        return None
    result = {
        "decode_pct_of_read_paired": ratios,
        "read_gb_s": reads,
        "ranks": comm.size,
        "threads_per_rank": session.threads,
    }
    if llama_ratios:
        result |= {"llama_cpp_decode_pct_of_read_paired": llama_ratios, "llama_cpp_read_gb_s": llama_reads}
    return result


def _sum_streams_intrinsic():
    """sum_streams(a, start, lines, ahead): the sum of a[start : start + 64 * lines] (float32) read as four
    streams of 16 * lines floats side by side, a 64-byte vector at a time, each load prefetching the line
    `ahead` lines further on its stream (LLVM IR, like kernels/bf16.py's dot_pairs_16x4)."""
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    from qwen3_mpi.kernels.bf16 import PREFETCH_LOCALITY
    from qwen3_mpi.kernels.llvm_ir import I32, I64, emit_prefetch

    f32x16 = ir.VectorType(ir.FloatType(), 16)

    @intrinsic
    def sum_streams(typingctx, a, start, lines, ahead):
        def codegen(context, builder, sig, args):
            array, start_v, lines_v, ahead_v = args
            data = context.make_array(sig.args[0])(context, builder, array).data
            accs = [cgutils.alloca_once_value(builder, ir.Constant(f32x16, [0.0] * 16)) for _ in range(4)]
            run = builder.mul(lines_v, ir.Constant(I64, 16))  # floats per stream
            with cgutils.for_range(builder, lines_v) as loop:
                for j in range(4):
                    at = builder.add(
                        builder.add(start_v, builder.mul(ir.Constant(I64, j), run)),
                        builder.mul(loop.index, ir.Constant(I64, 16)),
                    )
                    ahead_at = builder.add(at, builder.mul(ahead_v, ir.Constant(I64, 16)))
                    emit_prefetch(builder, builder.gep(data, [ahead_at]), PREFETCH_LOCALITY)
                    v = builder.load(builder.bitcast(builder.gep(data, [at]), f32x16.as_pointer()), align=4)
                    builder.store(builder.fadd(builder.load(accs[j]), v), accs[j])
            total = builder.fadd(
                builder.fadd(builder.load(accs[0]), builder.load(accs[1])),
                builder.fadd(builder.load(accs[2]), builder.load(accs[3])),
            )
            s = builder.extract_element(total, ir.Constant(I32, 0))
            for i in range(1, 16):
                s = builder.fadd(s, builder.extract_element(total, ir.Constant(I32, i)))
            return s

        return types.float32(a, types.int64, types.int64, types.int64), codegen

    return sum_streams


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def gemm_rate(threads: int, T: int, O: int, I: int) -> float:
    """float32 GFLOP/s of numpy's BLAS for [T, I] @ [I, O], best of 5."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, I), dtype=np.float32)
    w = rng.standard_normal((O, I), dtype=np.float32)
    y = np.empty((T, O), np.float32)
    with threadpool_limits(threads):
        np.matmul(x, w.T, out=y)
        best = min(_timed(lambda: np.matmul(x, w.T, out=y)) for _ in range(5))
    return 2 * T * O * I / best / 1e9


def transformers_run(model_dir, dtype_name, prompt, gen_len, iters, threads) -> dict:
    """Prefill the prompt, then greedy decode gen_len - 1 steps with the KV cache; median tokens/s.

    The prefill asks for the last position's logits only (logits_to_keep=1), as `generate` does: the LM
    head over every prompt position would add 2 x 128 x 151,936 x 1,024 flops (40 GFLOP, a third more
    than the layers) to transformers' prefill that generation never needs."""
    import torch
    from transformers import Qwen3ForCausalLM

    torch.set_num_threads(threads)
    model = Qwen3ForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype_name))
    model.eval()
    ids = torch.tensor([prompt])
    prefill, decode = [], []
    with torch.inference_mode():
        for i in range(iters + 1):
            t0 = time.perf_counter()
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
            t1 = time.perf_counter()
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            for _ in range(gen_len - 1):
                out = model(input_ids=token, past_key_values=past, use_cache=True)
                past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            t2 = time.perf_counter()
            if i > 0:  # the first iteration warms up
                prefill.append(len(prompt) / (t1 - t0))
                decode.append((gen_len - 1) / (t2 - t1))
    del model
    return {"prefill_tokens_per_s": statistics.median(prefill), "decode_tokens_per_s": statistics.median(decode)}


def qwen3_mpi_run(model_dir, ranks, attention, prompt_len, gen_len, iters) -> dict:
    cmd = [
        "mpirun",
        "-n",
        str(ranks),
        sys.executable,
        "-m",
        "qwen3_mpi",
        "bench",
        "--attention",
        attention,
        "--prompt-len",
        str(prompt_len),
        "--gen-len",
        str(gen_len),
        "--iters",
        str(iters),
    ]
    if model_dir:
        cmd += ["-m", model_dir]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def llama_cpp_run(llama_bench, gguf, prompt_len, gen_len, iters, threads) -> dict:
    """llama.cpp's own benchmark on the same checkpoint converted to bf16 GGUF (bench/llama_cpp.sh):
    prefill of prompt_len tokens and gen_len decode steps, each run `iters` times after its warm-up run;
    median tokens/s. It reads the same weight bytes per token as qwen3_mpi (every tensor bf16, the LM
    head tied to the embedding); its activations are bf16 in the bf16 products."""
    cmd = [llama_bench, "-m", gguf, "-p", str(prompt_len), "-n", str(gen_len), "-t", str(threads)]
    proc = subprocess.run(cmd + ["-r", str(iters), "-o", "json"], capture_output=True, text=True, check=True)
    tests = json.loads(proc.stdout)
    decode = next(t for t in tests if t["n_gen"] == gen_len and t["n_prompt"] == 0)
    result = {
        "decode_tokens_per_s": statistics.median(decode["samples_ts"]),
        "decode_tokens_per_s_all": decode["samples_ts"],
        "build": f"{decode.get('build_commit', '?')} ({decode.get('build_number', '?')})",
        "cpu": decode.get("cpu_info", ""),
    }
    if prompt_len:  # -p 0: decode only
        prefill = next(t for t in tests if t["n_prompt"] == prompt_len and t["n_gen"] == 0)
        result["prefill_tokens_per_s"] = statistics.median(prefill["samples_ts"])
        result["prefill_tokens_per_s_all"] = prefill["samples_ts"]
    return result


def linear_flops_per_token(config: dict) -> float:
    """2 x the multiply-adds of every layer's projections (attention over a short prompt is small)."""
    D, I, K = config["hidden_size"], config["intermediate_size"], config["head_dim"]
    H, G, L = config["num_attention_heads"], config["num_key_value_heads"], config["num_hidden_layers"]
    return 2.0 * L * (D * (H + 2 * G) * K + H * K * D + 3 * D * I)


def worker(args) -> dict:
    """Runs in a process of its own, so that numba's, OpenBLAS's and torch's thread pools never meet."""
    config = json.loads(Path(args.model, "config.json").read_text())
    if args.worker == "machine":
        machine = read_bandwidth(args.threads, args.read_gib)
        machine["sgemm_gflop_s"] = gemm_rate(
            args.threads, args.prompt_len, 2 * config["intermediate_size"], config["hidden_size"]
        )
        machine["threads"] = args.threads
        return machine
    if args.worker == "paired":
        from mpi4py import MPI

        llama = (args.llama_bench, args.gguf) if args.llama_bench else None
        try:
            return paired_decode(args.model, args.attention, args.prompt_len, args.threads, args.read_gib, llama=llama)
        except BaseException:  # noqa: BLE001 - end the whole job: the other ranks would wait in a collective forever
            traceback.print_exc()
            sys.stderr.flush()
            MPI.COMM_WORLD.Abort(1)
    prompt = np.random.default_rng(0).integers(0, config["vocab_size"], args.prompt_len).tolist()
    return transformers_run(args.model, args.worker, prompt, args.gen_len, args.iters, args.threads)


def in_subprocess(args, what: str, model_dir: str, ranks: int = 0) -> dict:
    """worker(args) for `what` in a process of its own, or in an MPI job of `ranks` ranks."""
    cmd = ["mpirun", "-n", str(ranks)] if ranks else []
    cmd += [
        sys.executable,
        __file__,
        "--worker",
        what,
        "-m",
        model_dir,
        "--prompt-len",
        str(args.prompt_len),
        "--gen-len",
        str(args.gen_len),
        "--iters",
        str(args.iters),
        "--threads",
        str(args.threads),
        "--attention",
        args.attention,
        "--read-gib",
        str(args.read_gib),
    ]
    if args.llama_bench and ranks <= 1:
        cmd += ["--llama-bench", args.llama_bench, "--gguf", args.gguf]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", help="checkpoint (default: the demo checkpoint)")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--gen-len", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5, help="turns of all engines (median over rounds)")
    parser.add_argument("--iters", type=int, default=2, help="measured iterations per engine and round")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--attention", default="streaming")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--read-gib", type=float, default=2.0, help="GiB read to measure bandwidth (beyond the caches)")
    parser.add_argument("--llama-bench", help="llama.cpp's llama-bench binary (see bench/llama_cpp.sh)")
    parser.add_argument("--gguf", help="the checkpoint as bf16 GGUF, for --llama-bench")
    parser.add_argument("-o", "--output", help="write all figures as JSON here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one measurement in its own process
    args = parser.parse_args()
    if bool(args.llama_bench) != bool(args.gguf):
        parser.error("--llama-bench and --gguf go together")
    if args.worker:
        result = worker(args)
        if result is not None:  # rank 0's (the paired decode runs on every rank of its MPI job)
            print(json.dumps(result))
        return

    from qwen3_mpi.demo import ensure_demo

    model_dir = args.model or str(ensure_demo())
    config = json.loads(Path(model_dir, "config.json").read_text())

    def measure(when: str) -> dict:
        m = in_subprocess(args, "machine", model_dir)
        print(
            f"machine {when}: {args.threads} threads; read bandwidth {m['numba_gb_s']:.1f} GB/s (numba: "
            f"{m['numba_plain_gb_s']:.1f} plain, {m['numba_streams_prefetch_gb_s']:.1f} four streams with "
            f"prefetch), {m['numpy_1_thread_gb_s']:.1f} GB/s (numpy, 1 thread); float32 GEMM "
            f"{m['sgemm_gflop_s']:.0f} GFLOP/s",
            flush=True,
        )
        return m

    engines = ["transformers bfloat16", "transformers float32"] + [f"qwen3_mpi N={n}" for n in args.ranks]
    if args.llama_bench:
        engines.insert(2, "llama.cpp bf16")
    # bursts paired with reads: (engine, the paired run they come from, their keys' prefix); llama.cpp's
    # run in the single-rank paired run, between its bursts
    paired_engines = [(f"qwen3_mpi N={n}", f"N={n}", "") for n in args.ranks]
    if args.llama_bench and 1 in args.ranks:
        paired_engines.append(("llama.cpp bf16", "N=1", "llama_cpp_"))
    rounds = []  # per round: {"machine": [...], engine: figures, "paired": {"N=n": figures}}
    for k in range(args.rounds):
        figures = {"machine": [measure(f"round {k + 1}, before the engines")]}
        for name in engines:
            if name.startswith("transformers"):
                r = in_subprocess(args, name.split()[1], model_dir)
            elif name.startswith("llama.cpp"):
                r = llama_cpp_run(args.llama_bench, args.gguf, args.prompt_len, args.gen_len, args.iters, args.threads)
            else:
                n = int(name.split("=")[1])
                r = qwen3_mpi_run(args.model, n, args.attention, args.prompt_len, args.gen_len, args.iters)
            figures[name] = r
            print(
                f"round {k + 1}: {name}: prefill {r['prefill_tokens_per_s']:.1f}, decode "
                f"{r['decode_tokens_per_s']:.2f} tokens/s",
                flush=True,
            )
        figures["machine"].append(measure(f"round {k + 1}, after the engines"))
        figures["paired"] = {f"N={n}": in_subprocess(args, "paired", model_dir, ranks=n) for n in args.ranks}
        for engine, n, key in paired_engines:
            paired = figures["paired"][n].get(f"{key}decode_pct_of_read_paired")
            if paired:
                print(
                    f"round {k + 1}: {engine} decode, {len(paired)} bursts each between two reads: "
                    f"{statistics.median(paired):.0f}% ({min(paired):.0f}-{max(paired):.0f}%) of the read",
                    flush=True,
                )
        rounds.append(figures)

    flops = linear_flops_per_token(config)
    bf16_bytes = rounds[0][f"qwen3_mpi N={args.ranks[0]}"]["weight_bytes_per_token"]
    summary = {}
    for name in engines:
        prefill = [f[name]["prefill_tokens_per_s"] for f in rounds]
        decode = [f[name]["decode_tokens_per_s"] for f in rounds]
        row = {
            "prefill_tokens_per_s": statistics.median(prefill),
            "decode_tokens_per_s": statistics.median(decode),
            "prefill_vs_tf_fp32": [
                p / f["transformers float32"]["prefill_tokens_per_s"] for p, f in zip(prefill, rounds)
            ],
            "decode_vs_tf_bf16": [
                d / f["transformers bfloat16"]["decode_tokens_per_s"] for d, f in zip(decode, rounds)
            ],
            "prefill_pct_of_gemm": [
                100 * p * flops / 1e9 / max(m["sgemm_gflop_s"] for m in f["machine"]) for p, f in zip(prefill, rounds)
            ],
        }
        # every engine reads every weight once per token: as stored (bf16), or widened (transformers fp32)
        row["weight_bytes_per_token"] = bf16_bytes * (2 if name == "transformers float32" else 1)
        row["decode_pct_of_roofline"] = [
            100 * d * row["weight_bytes_per_token"] / (max(m["numba_gb_s"] for m in f["machine"]) * 1e9)
            for d, f in zip(decode, rounds)
        ]
        summary[name] = row

    def spread(values, fmt):
        return f"{fmt(statistics.median(values))} ({fmt(min(values))}-{fmt(max(values))})"

    bandwidths = [max(m["numba_gb_s"] for m in f["machine"]) for f in rounds]
    print(
        f"\nprompt {args.prompt_len}, {args.gen_len} new tokens; {args.rounds} rounds, median of {args.iters} "
        f"per engine and round; tokens/s: median over rounds; ratios and percentages: median (range) over "
        f"rounds, each taken within one round; read bandwidth per round (best of its two measurements): "
        + ", ".join(f"{b:.1f}" for b in bandwidths)
        + " GB/s"
    )
    print(
        "| engine | prefill tokens/s | decode tokens/s | prefill vs tf fp32 | decode vs tf bf16 | "
        "decode % of roofline | prefill % of GEMM rate |"
    )
    print("|---|---|---|---|---|---|---|")
    ratio, pct = (lambda v: f"{v:.2f}x"), (lambda v: f"{v:.0f}%")
    for name, r in summary.items():
        roofline = spread(r["decode_pct_of_roofline"], pct)
        print(
            f"| {name} | {r['prefill_tokens_per_s']:.1f} | {r['decode_tokens_per_s']:.2f} | "
            f"{spread(r['prefill_vs_tf_fp32'], ratio)} | {spread(r['decode_vs_tf_bf16'], ratio)} | {roofline} | "
            f"{spread(r['prefill_pct_of_gemm'], pct)} |"
        )
    for engine, n, key in paired_engines:
        if f"{key}decode_pct_of_read_paired" not in rounds[0]["paired"][n]:
            continue
        paired = [
            (v, b)
            for f in rounds
            for v, b in zip(f["paired"][n][f"{key}decode_pct_of_read_paired"], f["paired"][n][f"{key}read_gb_s"])
        ]
        print(
            f"\n{engine} decode paired with reads ({len(paired)} bursts, each between two reads of the machine): "
            f"{spread([v for v, _ in paired], pct)} of the read"
        )
        for label, keep in (("below 60 GB/s", lambda b: b < 60), ("60 GB/s and above", lambda b: b >= 60)):
            part = [v for v, b in paired if keep(b)]
            if part:
                print(f"  bursts whose read was {label}: {len(part)}, {spread(part, pct)} of the read")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(
                {
                    "summary": summary,
                    "rounds": rounds,
                    "prompt_len": args.prompt_len,
                    "gen_len": args.gen_len,
                    "iters": args.iters,
                    "model": model_dir,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
