"""What the commands print: rank 0's messages on stderr, the stats line, the JSON objects (one schema
of speed fields for generate and chat), the --profile table."""

from __future__ import annotations

import resource
import socket
import sys

PROG = "qwen3-mpi"


def say(comm, message: str) -> None:
    """A message from rank 0 on stderr."""
    if comm.is_root:
        print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def speed_fields(gen) -> dict:
    """The timings of a Generation, as every JSON object names them."""
    total = gen.prefill_s + gen.decode_s
    return {
        "finish_reason": gen.finish_reason,
        "prefill_tokens": len(gen.prompt_ids),
        "prefill_s": gen.prefill_s,
        "prefill_tokens_per_s": len(gen.prompt_ids) / gen.prefill_s if gen.prefill_s else 0.0,
        "decode_tokens": gen.decode_steps,
        "decode_s": gen.decode_s,
        "decode_tokens_per_s": gen.decode_steps / gen.decode_s if gen.decode_steps else 0.0,
        "collective_s": gen.collective_s,
        "collective_share": gen.collective_s / total if total else 0.0,
    }


def stats_line(gen, load_s: float | None) -> str:
    """One line in the spirit of llama.cpp's timings."""
    f = speed_fields(gen)
    decode_tps = f["decode_tokens_per_s"]
    parts = [] if load_s is None else [f"load {load_s:.2f} s"]
    parts += [
        f"prefill {f['prefill_tokens']} tokens {gen.prefill_s * 1e3:.0f} ms ({f['prefill_tokens_per_s']:.1f} tokens/s)",
        (
            f"decode {gen.decode_steps} tokens {gen.decode_s * 1e3:.0f} ms ({decode_tps:.1f} tokens/s, "
            f"{1e3 / decode_tps if decode_tps else 0.0:.1f} ms/token)"
        ),
        f"collectives {100 * f['collective_share']:.0f}% of the time",
        f"finish: {gen.finish_reason}",
    ]
    return "; ".join(parts)


def run_line(session, seed: int | None) -> str:
    """The run's shape: ranks, threads, attention, the KV cache's size."""
    m = session.model
    cache = f"KV cache {m.max_context} positions, {m.cache.dtype}, {m.cache.nbytes / 2**20:.0f} MiB per rank"
    seed_text = "" if seed is None else f", seed {seed}"
    return (
        f"{session.comm.size} rank(s) x {session.threads} thread(s), {m.attention.name} attention, {cache}{seed_text}"
    )


def profile(comm, gen) -> dict:
    """This rank's time per phase: wall, waiting for the slowest rank (a barrier before each collective),
    inside collectives, and computing (the rest); bytes its data crossed to other ranks, per token."""
    phases = {}
    for phase, wall, tokens in (
        ("prefill", gen.prefill_s, len(gen.prompt_ids)),
        ("decode", gen.decode_s, gen.decode_steps),
    ):
        stats = comm.profile_stats.get(phase, {})
        wait, coll = stats.get("wait_s", 0.0), stats.get("collective_s", 0.0)
        phases[phase] = {
            "tokens": tokens,
            "wall_s": wall,
            "compute_s": wall - wait - coll,
            "wait_s": wait,
            "collective_s": coll,
            "collectives": stats.get("calls", 0),
            "bytes_sent_per_token": stats.get("bytes_sent", 0) / tokens if tokens else 0.0,
        }
    return {"rank": comm.rank, "host": socket.gethostname(), **phases}


def profile_table(profiles: list[dict]) -> list[str]:
    lines = [
        "rank  host              phase    tokens   wall ms  compute ms  wait ms  collective ms  calls  bytes/token",
    ]
    for p in profiles:
        for phase in ("prefill", "decode"):
            q = p[phase]
            lines.append(
                f"{p['rank']:>4}  {p['host'][:16]:16}  {phase:7}  {q['tokens']:>6}  {q['wall_s'] * 1e3:8.1f}  "
                f"{q['compute_s'] * 1e3:10.1f}  {q['wait_s'] * 1e3:7.1f}  {q['collective_s'] * 1e3:13.1f}  "
                f"{q['collectives']:>5}  {q['bytes_sent_per_token']:11.0f}"
            )
    return lines
