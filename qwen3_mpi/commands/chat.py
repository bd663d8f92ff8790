"""`qwen3-mpi chat`: a conversation read from rank 0's stdin, one line per user turn. Each turn renders
the whole conversation with the chat template and prefills only what differs from the KV cache (the
template drops earlier turns' thinking, so the cache is reused up to the first difference)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import numpy as np

from .. import prompting, report, session
from ..config import generation_defaults
from ..errors import UserError
from ..options import ChatCommand, RunOptions
from ..progress import bar
from ..sampling import Sampler
from ..textstream import TextStream
from .interrupt import stop_on_interrupt

CHAT_CONTEXT = 4096  # KV cache positions for the whole conversation unless --max-context


def _setup(cmd: ChatCommand, path):
    tokenizer = prompting.tokenizer_for(path, True)
    prompting.template_options(cmd.text)  # a bad --tools file is refused now, not at the first turn
    if not tokenizer.has_chat_template:
        raise UserError(f"{path}: chat needs a chat template (tokenizer_config.json or chat_template.jinja)")
    defaults = generation_defaults(path)
    return tokenizer, defaults, *prompting.sampling_params(cmd.sampling, defaults)


def run(cmd: ChatCommand, options: RunOptions, comm) -> int:
    path = session.model_dir(cmd.model, comm, options)
    config = session.read_config(path, comm)
    setup = comm.agree(lambda: _setup(cmd, path) if comm.is_root else None)
    max_context = options.max_context or min(CHAT_CONTEXT, config.max_position_embeddings)
    s = session.load(path, replace(options, max_context=max_context), comm, config=config)
    if not comm.is_root:
        with stop_on_interrupt(None):  # Ctrl-C is rank 0's to act on
            while comm.bcast(None):  # rank 0 says whether another turn follows
                s.engine.generate(None, 0, None, None, set())
        return 0
    tokenizer, defaults, params, seed = setup
    stop_ids = prompting.stop_ids(cmd.text, config, defaults)
    quiet = cmd.json  # stderr keeps only errors
    if not quiet:
        report.say(comm, f"loaded in {s.load_s:.2f} s; " + report.run_line(s, seed))
        report.say(comm, "type a message; /reset starts over, /exit or end of input ends")
    sampler = Sampler(params, seed)
    options_t = prompting.template_options(cmd.text)
    system = [{"role": "system", "content": cmd.text.system}] if cmd.text.system else []
    messages, cached = list(system), []  # cached: the ids whose keys and values are in the cache
    interrupted = False
    while True:
        try:
            line = _read_line(marker=not quiet)
        except KeyboardInterrupt:  # Ctrl-C at the prompt ends the chat
            line, interrupted = None, True
        if line is None:
            break
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            break
        if text == "/reset":
            messages, cached = list(system), []
            if not quiet:
                report.say(comm, "conversation reset")
            continue
        turn = [*messages, {"role": "user", "content": line.rstrip("\n")}]
        ids = tokenizer.apply_chat_template(turn, **options_t)
        if len(ids) >= max_context:
            _problem(quiet, f"context full: the conversation needs {len(ids)} of {max_context} positions; /reset")
            continue
        keep = min(_common_prefix(cached, ids), len(ids) - 1)
        comm.bcast(True)
        stream = TextStream(tokenizer, cmd.text.stop, cmd.text.hide_thinking, None if quiet else sys.stdout)
        new = len(ids) - keep
        show = options.progress and new >= 2 * s.model.max_tokens
        with bar(show, new, "prefill", "tokens") as update, stop_on_interrupt(s.engine):
            gen = s.engine.generate(
                ids[keep:], cmd.text.max_new_tokens, params, sampler, stop_ids, stream, keep, ids[:keep], update
            )
        stream.flush()
        if quiet:
            turn_result = {
                "conversation_ids": ids,
                "reused_positions": keep,
                "output_ids": gen.output_ids,
                "text": stream.visible_text,
                **report.speed_fields(gen),
            }
            print(json.dumps(turn_result), flush=True)
        else:
            print(flush=True)
            report.say(comm, f"[{keep} positions reused] " + report.stats_line(gen, None))
        cached = ids + gen.output_ids[:-1]  # the last token was drawn but never run through the model
        messages = [*turn, {"role": "assistant", "content": stream.text}]
        if gen.finish_reason == "context":
            _problem(quiet, f"context full ({max_context} positions): /reset to start a new conversation")
    comm.bcast(False)  # the other ranks leave their loop (on an error, the job is aborted instead)
    return 130 if interrupted else 0


def _problem(quiet: bool, message: str) -> None:
    """A turn that could not run (or was cut): a line on stderr, or with --json an object on stdout."""
    if quiet:
        print(json.dumps({"error": message}), flush=True)
    else:
        print(f"{report.PROG}: {message}", file=sys.stderr, flush=True)


def _read_line(marker: bool) -> str | None:
    """The next user line (None at the end of input). Under mpirun stdin is a pipe even at a terminal,
    so the prompt marker is always printed (unless --json). It goes to stderr, after the previous
    turn's timings there: mpirun forwards stdout and stderr separately, so only within one stream is
    the order kept."""
    if marker:
        sys.stderr.write("> ")
        sys.stderr.flush()
    line = sys.stdin.readline()
    if marker and not line:
        sys.stderr.write("\n")
    return line or None


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n
