"""Command line: argparse -> RunOptions and a command object (options.py), built once here and passed
down; the only module that reads argparse objects. Dispatch, exit codes and every error's way out.

    qwen3-mpi generate [-m DIR] (-p TEXT | -f FILE | --prompt-ids 1,2,3) [-n N] [sampling] [--json]
    qwen3-mpi chat [-m DIR] [sampling] [--max-context N] [--json]
    qwen3-mpi logits -m DIR --prompt-ids 1,2,3 -o FILE.npy
    qwen3-mpi bench [-m DIR] [--prompt-len N] [--gen-len N] [--iters N]
Each runs under `mpirun -n N` or alone.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from . import __version__
from .comm import AgreedError, Comm, world_rank
from .errors import UserError
from .kernels.registry import ATTENTION
from .kv_cache import KV_DTYPES
from .options import (
    COMBINE_KINDS,
    BenchCommand,
    ChatCommand,
    GenerateCommand,
    LogitsCommand,
    RunOptions,
    SamplingFlags,
    TextOptions,
)
from .progress import at_terminal
from .report import PROG

USAGE = {  # each subcommand's one-line usage, printed with its errors
    "generate": f"{PROG} generate [-m DIR] (-p TEXT | -f FILE | --prompt-ids IDS) [-n N] [options]",
    "chat": f"{PROG} chat [-m DIR] [-n N] [options]",
    "logits": f"{PROG} logits -m DIR --prompt-ids IDS -o FILE.npy [options]",
    "bench": f"{PROG} bench [-m DIR] [--prompt-len N] [--gen-len N] [--iters N] [options]",
}


class _Parser(argparse.ArgumentParser):
    quiet = False  # every rank parses the same argv; only rank 0 prints usage and errors
    short_usage: str | None = None

    def _print_message(self, message, file=None):
        if not self.quiet:
            super()._print_message(message, file)

    def error(self, message):
        """One line of usage and the error, like git and cargo; --help has the full text."""
        usage = self.short_usage or f"{PROG} {{generate,chat,logits,bench}} ..."
        self._print_message(f"usage: {usage}\n{self.prog}: error: {message}\n", sys.stderr)
        self._print_message(f"(see '{self.prog} --help')\n", sys.stderr)
        self.exit(2)


def _ids(text: str) -> tuple[int, ...]:
    try:
        ids = tuple(int(t) for t in text.replace(",", " ").split())
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


def _kernels(text: str) -> tuple[str, ...]:
    kernels = tuple(k for k in text.split(",") if k)
    if not kernels or any(k not in ATTENTION for k in kernels):
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(ATTENTION)}")
    return kernels


def _add_run_options(p, model_required: bool, attention: bool = True) -> None:
    p.add_argument(
        "-m",
        "--model",
        required=model_required,
        help="Hugging Face Qwen3 checkpoint directory"
        + ("" if model_required else " (default: the random-weight demo checkpoint)"),
    )
    if attention:
        p.add_argument(
            "--attention", choices=list(ATTENTION), default="streaming", help="attention kernel (default: streaming)"
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
    p.add_argument("--threads", type=_positive, help="threads per rank (default: cores on the node / ranks on it)")
    p.add_argument("--prefill-chunk", type=_positive, default=512, help="prompt tokens per forward call (default 512)")
    p.add_argument(
        "--profile",
        action="store_true",
        help="per rank and phase: compute, waiting for the slowest rank, collectives, bytes sent per token",
    )
    p.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bars or spinners on stderr (they are off with --json, or without a terminal: TERM unset)",
    )


def _add_generation_options(p, context: str, json: str) -> None:
    """Flags of generate and chat; context, json: what --max-context and --json mean for the command."""
    p.add_argument("--max-context", type=_positive, help=f"KV cache positions ({context})")
    p.add_argument("--json", action="store_true", help=json)
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Tensor-parallel Qwen3 inference on CPU clusters (run under mpirun).")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name: str, **kwargs):
        p = sub.add_parser(name, **kwargs)
        p.short_usage = USAGE[name]
        return p

    g = command("generate", help="generate text")
    _add_run_options(g, model_required=False)
    prompt = g.add_mutually_exclusive_group()
    prompt.add_argument("-p", "--prompt", help="prompt text (chat template applied unless --no-chat-template)")
    prompt.add_argument("-f", "--file", metavar="PATH", help="read the prompt text from PATH ('-': standard input)")
    prompt.add_argument(
        "--prompt-ids", type=_ids, help="prompt as token ids, e.g. 1,2,3 (no template, no tokenizer needed)"
    )
    g.add_argument("--no-chat-template", action="store_true", help="tokenize the prompt text as is")
    _add_generation_options(
        g,
        context="default: prompt + new tokens; at most max_position_embeddings",
        json="print one JSON object (ids, text, timings) instead of text; stderr only for errors",
    )
    g.epilog = "Without -p, -f or --prompt-ids, the prompt is read from standard input."

    c = command("chat", help="interactive chat on rank 0's stdin (/reset, /exit)")
    _add_run_options(c, model_required=False)
    _add_generation_options(
        c,
        context="for the whole conversation; default 4096, at most max_position_embeddings",
        json="one JSON object per answer instead of streamed text; stderr only for errors",
    )

    lg = command("logits", help="write the logits of every prompt position to a .npy file")
    _add_run_options(lg, model_required=True)
    lg.add_argument("--prompt-ids", type=_ids, required=True, help="token ids, e.g. 1,2,3")
    lg.add_argument("-o", "--output", required=True, help="output .npy file: float32 [len(prompt), vocab_size]")

    b = command("bench", help="measure prefill and decode tokens/s (median of --iters after --warmup)")
    _add_run_options(b, model_required=False, attention=False)
    b.add_argument(
        "--attention",
        type=_kernels,
        default=tuple(ATTENTION),
        help=f"kernels to measure, comma-separated (default: {','.join(ATTENTION)})",
    )
    b.add_argument("--prompt-len", type=_positive, default=128, help="default 128")
    b.add_argument("--gen-len", type=_positive, default=64, help="new tokens per iteration (default 64)")
    b.add_argument("--iters", type=_positive, default=3, help="measured iterations (default 3)")
    b.add_argument("--warmup", type=int, default=1, help="unmeasured iterations first (default 1)")
    b.add_argument("-o", "--output", help="append the JSON lines to this file")
    parser.subcommands = sub.choices
    return parser


def parse(argv=None):
    """argv -> (command name, RunOptions, command object); usage errors exit 2."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # an unknown flag after the subcommand is that subcommand's error
        parser.subcommands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    as_json = getattr(args, "json", False)
    run = RunOptions(
        attention=args.attention if isinstance(args.attention, str) else args.attention[0],
        block_size=args.block_size,
        kv_cache_dtype=args.kv_cache_dtype,
        combine=args.combine,
        threads=args.threads,
        prefill_chunk=args.prefill_chunk,
        max_context=getattr(args, "max_context", None),
        profile=args.profile,
        progress=args.progress and not as_json and at_terminal(),
        quiet=as_json,
    )
    if args.command in ("generate", "chat"):
        text = TextOptions(
            system=args.system,
            think=args.think,
            tools=args.tools,
            chat_template=not getattr(args, "no_chat_template", False),
            hide_thinking=args.hide_thinking,
            stop=tuple(args.stop),
            ignore_eos=args.ignore_eos,
            max_new_tokens=args.max_new_tokens,
        )
        sampling = SamplingFlags(
            *(args.temperature, args.top_k, args.top_p, args.min_p, args.repetition_penalty),
            *(args.presence_penalty, args.seed),
        )
        if args.command == "generate":
            command = GenerateCommand(args.model, args.prompt, args.file, args.prompt_ids, text, sampling, as_json)
        else:
            command = ChatCommand(args.model, text, sampling, as_json)
    elif args.command == "logits":
        command = LogitsCommand(args.model, args.prompt_ids, args.output)
    else:
        command = BenchCommand(
            args.model, args.attention, args.prompt_len, args.gen_len, args.iters, args.warmup, args.output
        )
    return args.command, run, command


def main(argv=None) -> int:
    _Parser.quiet = world_rank() != 0
    try:
        name, options, command = parse(argv)
    except UserError as e:  # a value argparse let through that the options refuse
        if not _Parser.quiet:
            print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    comm = Comm(combine=options.combine, profile=options.profile)
    try:
        from .commands import RUN

        return RUN[name](command, options, comm)
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
