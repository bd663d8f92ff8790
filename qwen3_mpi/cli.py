"""Command line: argparse -> options; the only place options are read.

    qwen3-mpi generate [-m DIR] (-p TEXT | --prompt-ids 1,2,3) [-n N] [sampling] [--attention ...] [--json]
    qwen3-mpi chat [-m DIR] [sampling] [--max-context N]
    qwen3-mpi logits -m DIR --prompt-ids 1,2,3 -o FILE.npy
    qwen3-mpi bench [-m DIR] [--prompt-len N] [--gen-len N] [--iters N]
Both run under `mpirun -n N` or alone.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import traceback

from .comm import AgreedError, Comm
from .config import COMBINE_KINDS
from .errors import UserError
from .kernels.attention import ATTENTION_KERNELS
from .kv_cache import KV_DTYPES

PROG = "qwen3-mpi"


class _Parser(argparse.ArgumentParser):
    quiet = False  # every rank parses the same argv; only rank 0 prints usage and errors

    def _print_message(self, message, file=None):
        if not self.quiet:
            super()._print_message(message, file)


def _ids(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not ids:
        raise argparse.ArgumentTypeError("expected at least one token id")
    return ids


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Tensor-parallel Qwen3 inference on CPU clusters (run under mpirun).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add_run_options(p, model_required: bool, attention: bool = True):
        p.add_argument(
            "-m",
            "--model",
            required=model_required,
            help="Hugging Face Qwen3 checkpoint directory"
            + ("" if model_required else " (default: the random-weight demo checkpoint)"),
        )
        if attention:
            p.add_argument(
                "--attention",
                choices=ATTENTION_KERNELS,
                default="streaming",
                help="attention kernel (default: streaming)",
            )
        p.add_argument("--block-size", type=_positive, default=256, help="streaming attention KV block (default 256)")
        p.add_argument(
            "--kv-cache-dtype",
            choices=list(KV_DTYPES),
            default="float32",
            help="KV cache element type; bfloat16 halves its memory and what attention reads (default float32)",
        )
        p.add_argument(
            "--combine",
            choices=COMBINE_KINDS,
            default="shared",
            help="how partial sums are combined across ranks (default: shared, in memory shared by a node's "
            "ranks, between nodes by an allgather; summed in rank order)",
        )
        p.add_argument(
            "--threads", type=_positive, help="threads per rank (default: cores on the node / ranks on the node)"
        )
        p.add_argument(
            "--prefill-chunk", type=_positive, default=512, help="prompt tokens per forward call (default 512)"
        )
        p.add_argument(
            "--profile",
            action="store_true",
            help="per rank and phase: compute, waiting for the slowest rank, collectives, bytes sent per token",
        )
        p.add_argument(
            "--no-progress",
            dest="progress",
            action="store_false",
            help="no progress bars on stderr (they are off with --json, or without a terminal: TERM unset)",
        )

    def add_generation_options(p):
        p.add_argument("-s", "--system", help="system message for the chat template")
        think = p.add_mutually_exclusive_group()
        think.add_argument(
            "--think",
            dest="think",
            action="store_true",
            default=None,
            help="enable_thinking=True in the chat template (the template's default when neither is given)",
        )
        think.add_argument("--no-think", dest="think", action="store_false", help="enable_thinking=False")
        p.add_argument("--hide-thinking", action="store_true", help="do not show the <think>...</think> block")
        p.add_argument("--tools", metavar="FILE", help="JSON list of tool schemas for the chat template")
        p.add_argument("-n", "--max-new-tokens", type=_positive, default=128, help="per answer (default 128)")
        p.add_argument("--temperature", type=float, help="0 = greedy (default: generation_config.json, else 0)")
        p.add_argument("--top-k", type=int, help="default: generation_config.json, else off (0)")
        p.add_argument("--top-p", type=float, help="default: generation_config.json, else off (1)")
        p.add_argument("--min-p", type=float, help="default: generation_config.json, else off (0)")
        p.add_argument("--repetition-penalty", type=float, help="default: generation_config.json, else off (1)")
        p.add_argument("--presence-penalty", type=float, help="subtracted from generated tokens (default 0)")
        p.add_argument("--seed", type=int, help="sampling seed (default: random; reported)")
        p.add_argument("--stop", action="append", default=[], help="stop when this text is generated (repeatable)")
        p.add_argument("--ignore-eos", action="store_true", help="do not stop at end-of-sequence tokens")

    g = sub.add_parser("generate", help="generate text")
    add_run_options(g, model_required=False)
    prompt = g.add_mutually_exclusive_group(required=True)
    prompt.add_argument("-p", "--prompt", help="prompt text (chat template applied unless --no-chat-template)")
    prompt.add_argument(
        "--prompt-ids", type=_ids, help="prompt as token ids, e.g. 1,2,3 (no template, no tokenizer needed)"
    )
    g.add_argument("--no-chat-template", action="store_true", help="tokenize the prompt text as is")
    add_generation_options(g)
    g.add_argument(
        "--max-context",
        type=_positive,
        help="KV cache positions (default: prompt + new tokens, at most max_position_embeddings)",
    )
    g.add_argument("--json", action="store_true", help="print one JSON object (ids, text, timings) instead of text")

    c = sub.add_parser("chat", help="interactive chat on rank 0's stdin (/reset, /exit)")
    add_run_options(c, model_required=False)
    add_generation_options(c)
    c.add_argument(
        "--max-context",
        type=_positive,
        default=4096,
        help="KV cache positions for the whole conversation (default 4096, at most max_position_embeddings)",
    )
    c.add_argument("--json", action="store_true", help="one JSON object per answer instead of streamed text")

    lg = sub.add_parser("logits", help="write the logits of every prompt position to a .npy file")
    add_run_options(lg, model_required=True)
    lg.add_argument("--prompt-ids", type=_ids, required=True, help="token ids, e.g. 1,2,3")
    lg.add_argument("-o", "--output", required=True, help="output .npy file: float32 [len(prompt), vocab_size]")

    b = sub.add_parser("bench", help="measure prefill and decode tokens/s (median of --iters after --warmup)")
    add_run_options(b, model_required=False, attention=False)
    b.add_argument(
        "--attention",
        type=_kernels,
        default=list(ATTENTION_KERNELS),
        help="kernels to measure, comma-separated (default: standard,streaming)",
    )
    b.add_argument("--prompt-len", type=_positive, default=128, help="default 128")
    b.add_argument("--gen-len", type=_positive, default=64, help="new tokens per iteration (default 64)")
    b.add_argument("--iters", type=_positive, default=3, help="measured iterations (default 3)")
    b.add_argument("--warmup", type=int, default=1, help="unmeasured iterations first (default 1)")
    b.add_argument("-o", "--output", help="append the JSON lines to this file")
    return parser


def _kernels(text: str) -> list[str]:
    kernels = [k for k in text.split(",") if k]
    bad = [k for k in kernels if k not in ATTENTION_KERNELS]
    if bad or not kernels:
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(ATTENTION_KERNELS)}")
    return kernels


def main(argv=None) -> int:
    comm = Comm()
    _Parser.quiet = not comm.is_root
    try:
        args = build_parser().parse_args(argv)
        comm.combine_method = args.combine
        comm.profile = args.profile
        _set_threads(comm, args.threads)
        from . import commands

        run = {"generate": commands.generate, "chat": commands.chat, "logits": commands.logits, "bench": commands.bench}
        run[args.command](args, comm)
        return 0
    except AgreedError as e:  # every rank knows: exit cleanly, rank 0 says why
        if comm.is_root:
            print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except UserError as e:  # found by this rank alone: the others may be waiting in a collective
        print(f"{PROG}: error: " + (f"(rank {comm.rank}) " if comm.size > 1 else "") + str(e), file=sys.stderr)
        comm.abort(1)
    except KeyboardInterrupt:
        comm.abort(130)
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - the message first, in one write: the launcher may stop forwarding soon
        sys.stderr.write(
            f"{PROG}: internal error on rank {comm.rank}: {type(e).__name__}: {e}\n{traceback.format_exc()}"
        )
        comm.abort(1)
    return 1


def _set_threads(comm: Comm, threads: int | None) -> int:
    """Threads for numba and BLAS: --threads, else this node's cores shared among the ranks on it."""
    if threads is None:
        # the CPUs this rank may run on, shared with every rank on the node whose CPUs overlap them (all of
        # them unless the launcher pinned ranks to separate cores)
        mine = set(os.sched_getaffinity(0))
        sharing = sum(1 for cpus in comm.node.allgather(mine) if cpus & mine)
        threads = max(1, len(mine) // sharing)
    import numba
    from threadpoolctl import threadpool_limits

    from .kernels.blas import SGEMM

    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    # with sgemm called from numba's threads, BLAS must not start threads of its own
    threadpool_limits(1 if SGEMM is not None else threads)
    return threads


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
