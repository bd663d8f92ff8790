"""The commands: set up on every rank (errors agreed on), then run the engine."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import sys
import tempfile
from pathlib import Path

import numba
import numpy as np

from . import progress
from .cli import PROG, peak_rss_mb
from .comm import Comm
from .config import Qwen3Config, ShardLayout, generation_defaults, int_tuple
from .engine import Engine
from .errors import UserError
from .model import Model, load_shard, shard_nbytes
from .sampling import Sampler, SamplingParams
from .textstream import TextStream
from .weights import Checkpoint, fingerprint


def _log(comm: Comm, message: str) -> None:
    if comm.is_root:
        print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _model_dir(args, comm: Comm) -> Path:
    if args.model is not None:
        path = Path(args.model)
        comm.agree(lambda: None if path.is_dir() else _raise(f"--model {path}: no such directory"))
        return path
    from .demo import demo_path, ensure_demo

    path = demo_path()
    if not (path / "config.json").exists():
        _log(comm, f"no -m given: writing the demo checkpoint (Qwen3-0.6B shape, random weights) to {path} ...")
    # one writer per node (the cache may be node-local), everyone waits for it
    comm.agree(lambda: _demo(ensure_demo) if comm.local_rank == 0 else None)
    _log(
        comm,
        f"no -m given: using {path}: Qwen3-0.6B architecture with RANDOM weights and a made-up "
        "tokenizer, so the text is meaningless; the speeds are real",
    )
    return path


def _demo(ensure):
    try:
        return ensure()
    except OSError as e:
        raise UserError(f"cannot write the demo checkpoint: {e}") from None


def _raise(message: str):
    raise UserError(message)


def _same_checkpoint(comm: Comm, model_dir: Path) -> None:
    """Every rank must see the checkpoint rank 0 sees (same files, sizes and headers)."""
    import socket

    mine = (socket.gethostname(), fingerprint(model_dir))
    everyone = comm.allgather(mine)
    host0, files0 = everyone[0]
    for rank, (host, files) in enumerate(everyone[1:], start=1):
        if files == files0:
            continue
        theirs, ours = {n: (s, h) for n, s, h in files}, {n: (s, h) for n, s, h in files0}
        for name in sorted(set(theirs) | set(ours)):
            a, b = ours.get(name), theirs.get(name)
            if a == b:
                continue
            if a is None or b is None:
                what = f"{name} exists on {'rank 0' if a else f'rank {rank}'} only"
            elif a[0] != b[0]:
                what = f"{name} is {a[0]} bytes on rank 0, {b[0]} on rank {rank}"
            else:
                what = f"{name} has different headers (tensors) on rank 0 and rank {rank}"
            raise UserError(
                f"rank {rank} (host {host}) and rank 0 (host {host0}) see different checkpoints at {model_dir}: "
                f"{what}; every node needs the same files at the same path"
            )


def _load(args, comm: Comm, model_dir: Path, config: Qwen3Config, max_context: int, max_tokens: int):
    """Layout and this rank's weights (errors agreed on), the warmed-up Model, and the load time."""
    comm.agree(_same_checkpoint, comm, model_dir)
    layout = comm.agree(ShardLayout.for_rank, config, comm.rank, comm.size)
    show = comm.bcast(progress.wanted(args) if comm.is_root else None)
    comm.barrier()
    t0 = comm.wtime()
    weights = comm.agree(lambda: _load_weights(comm, model_dir, config, layout, show))
    attention = args.attention if isinstance(args.attention, str) else args.attention[0]
    model = Model(
        config,
        layout,
        weights,
        comm,
        attention=attention,
        max_context=max_context,
        max_tokens=max_tokens,
        block=args.block_size,
        kv_dtype=args.kv_cache_dtype,
    )
    model.warmup()
    load_s = comm.max(comm.wtime() - t0)
    return model, load_s


def _load_weights(comm: Comm, model_dir: Path, config: Qwen3Config, layout: ShardLayout, show: bool):
    """This rank's weights, reporting its bytes to rank 0's progress bar (always ending the report)."""
    report = progress.LoadProgress(comm, show)
    try:
        ckpt = Checkpoint(model_dir)
        report.start(shard_nbytes(ckpt, config, layout))
        ckpt.on_read = report.on_read
        return load_shard(ckpt, config, layout)
    finally:
        report.finish()


def _check_ids(ids: list[int], vocab_size: int, flag: str) -> None:
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise UserError(f"{flag}: token id {bad[0]} is outside the vocabulary [0, {vocab_size})")


def _prepare_prompt(args, model_dir: Path, config: Qwen3Config):
    """Rank 0: prompt ids and the tokenizer (None for --prompt-ids without tokenizer files)."""
    tokenizer = None
    if args.prompt_ids is not None:
        ids = list(args.prompt_ids)
        _check_ids(ids, config.vocab_size, "--prompt-ids")
        if (model_dir / "tokenizer.json").exists():
            from .tokenizer import Tokenizer

            tokenizer = Tokenizer(model_dir)
    else:
        from .tokenizer import Tokenizer

        tokenizer = Tokenizer(model_dir)
        if args.no_chat_template:
            ids = tokenizer.encode(args.prompt)
        else:
            messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
                {"role": "user", "content": args.prompt}
            ]
            ids = tokenizer.apply_chat_template(messages, **_template_options(args))
        if not ids:
            raise UserError("--prompt: the prompt is empty after tokenization")
        _check_ids(ids, config.vocab_size, "--prompt (tokenizer)")
    if args.stop and tokenizer is None:
        raise UserError("--stop needs the model's tokenizer.json to decode text")
    return ids, tokenizer


def _template_options(args) -> dict:
    """Variables for the chat template: enable_thinking when --think / --no-think was given, tools from
    --tools (a JSON list of function schemas, as transformers' apply_chat_template takes them)."""
    options = {} if args.think is None else {"enable_thinking": args.think}
    if args.tools:
        try:
            tools = json.loads(Path(args.tools).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UserError(f"--tools {args.tools}: cannot be read as JSON ({e})") from None
        if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
            raise UserError(f"--tools {args.tools}: expected a JSON list of tool (function) schemas")
        options["tools"] = tools
    return options


SAMPLING_RULES = {  # flag: (attribute, check, what the check requires)
    "--temperature": ("temperature", lambda v: 0 <= v < math.inf, ">= 0 (0 is greedy)"),
    "--top-k": ("top_k", lambda v: v >= 0, ">= 0 (0 is off)"),
    "--top-p": ("top_p", lambda v: 0 < v <= 1, "in (0, 1] (1 is off)"),
    "--min-p": ("min_p", lambda v: 0 <= v <= 1, "in [0, 1] (0 is off)"),
    "--repetition-penalty": ("repetition_penalty", lambda v: 0 < v < math.inf, "> 0 (1 is off)"),
    "--presence-penalty": ("presence_penalty", lambda v: -math.inf < v < math.inf, "a finite number (0 is off)"),
    "--seed": ("seed", lambda v: 0 <= v < 2**63, ">= 0"),
}


def _sampling(args, defaults: dict) -> SamplingParams:
    """The flags given, else generation_config.json's values when it samples (do_sample), else off.
    Out-of-range values (given or from the file) are refused, naming the flag."""
    for flag, (attr, ok, rule) in SAMPLING_RULES.items():
        value = getattr(args, attr, None)
        if value is not None and not ok(value):
            raise UserError(f"{flag}: {value} is out of range: must be {rule}")
    sample = bool(defaults.get("do_sample", False))

    def pick(attr, off):
        value = getattr(args, attr)
        if value is None and sample:
            value = defaults.get(attr)
        return off if value is None else value

    params = SamplingParams(
        temperature=float(pick("temperature", 1.0)) if (sample or args.temperature is not None) else 0.0,
        top_k=int(pick("top_k", 0)),
        top_p=float(pick("top_p", 1.0)),
        min_p=float(pick("min_p", 0.0)),
        repetition_penalty=float(pick("repetition_penalty", 1.0)),
        presence_penalty=float(pick("presence_penalty", 0.0)),
    )
    for attr, ok, rule in SAMPLING_RULES.values():
        if attr != "seed" and not ok(getattr(params, attr)):
            raise UserError(f"generation_config.json: {attr} = {getattr(params, attr)} is out of range: must be {rule}")
    return params


def _profile(comm: Comm, gen) -> dict:
    """This rank's time per phase: wall, waiting for the slowest rank (a barrier before each collective),
    inside collectives, and computing (the rest); bytes its data crossed to other ranks, per token."""
    import socket

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


def _profile_table(profile: list[dict]) -> list[str]:
    lines = [
        "rank  host              phase    tokens   wall ms  compute ms  wait ms  collective ms  calls  bytes/token",
    ]
    for p in profile:
        for phase in ("prefill", "decode"):
            q = p[phase]
            lines.append(
                f"{p['rank']:>4}  {p['host'][:16]:16}  {phase:7}  {q['tokens']:>6}  {q['wall_s'] * 1e3:8.1f}  "
                f"{q['compute_s'] * 1e3:10.1f}  {q['wait_s'] * 1e3:7.1f}  {q['collective_s'] * 1e3:13.1f}  "
                f"{q['collectives']:>5}  {q['bytes_sent_per_token']:11.0f}"
            )
    return lines


def _stats_line(gen, load_s: float | None) -> str:
    """One line in the spirit of llama.cpp's timings."""
    prefill_tps = len(gen.prompt_ids) / gen.prefill_s if gen.prefill_s else 0.0
    decode_tps = gen.decode_steps / gen.decode_s if gen.decode_s else 0.0
    total = gen.prefill_s + gen.decode_s
    parts = [] if load_s is None else [f"load {load_s:.2f} s"]
    parts += [
        f"prefill {len(gen.prompt_ids)} tokens {gen.prefill_s * 1e3:.0f} ms ({prefill_tps:.1f} tokens/s)",
        (
            f"decode {gen.decode_steps} tokens {gen.decode_s * 1e3:.0f} ms ({decode_tps:.1f} tokens/s, "
            f"{1e3 / decode_tps if decode_tps else 0.0:.1f} ms/token)"
        ),
        f"collectives {100 * gen.collective_s / total if total else 0.0:.0f}% of the time",
        f"finish: {gen.finish_reason}",
    ]
    return "; ".join(parts)


def generate(args, comm: Comm) -> None:
    model_dir = _model_dir(args, comm)
    config = comm.agree(Qwen3Config.from_hf, model_dir)
    # rank 0 alone: tokenizer, prompt, sampling and stops
    setup = comm.agree(lambda: _root_setup(args, model_dir, config) if comm.is_root else None)
    prompt_len, max_context = comm.bcast(setup[1] if comm.is_root else None)
    model, load_s = _load(args, comm, model_dir, config, max_context, min(args.prefill_chunk, prompt_len))
    engine = Engine(model, comm)
    if not comm.is_root:
        engine.generate(None, 0, None, None, set())
        comm.gather(peak_rss_mb())
        comm.gather(model.weights.nbytes / 2**20)
        comm.gather(_profile(comm, engine.last) if args.profile else None)
        return
    (ids, tokenizer, params, seed, stop_ids), _ = setup
    stream = TextStream(tokenizer, args.stop, args.hide_thinking, None if args.json else sys.stdout)
    on_token = stream if tokenizer is not None else None
    long_prompt = progress.wanted(args) and len(ids) >= 2 * model.max_tokens
    with progress.bar(long_prompt, len(ids), "prefill", "tokens") as bar:
        gen = engine.generate(ids, args.max_new_tokens, params, Sampler(params, seed), stop_ids, on_token, progress=bar)
    rss = comm.gather(peak_rss_mb())
    weights_mb = comm.gather(model.weights.nbytes / 2**20)
    profile = comm.gather(_profile(comm, gen) if args.profile else None)
    stream.flush()
    text = stream.visible_text if tokenizer is not None else None
    total = gen.prefill_s + gen.decode_s
    result = {
        "model": str(model_dir),
        "prompt_ids": gen.prompt_ids,
        "output_ids": gen.output_ids,
        "text": text,
        "finish_reason": gen.finish_reason,
        "ranks": comm.size,
        "threads_per_rank": numba.get_num_threads(),
        "attention": args.attention,
        "kv_cache_dtype": args.kv_cache_dtype,
        "combine": comm.combine_method,
        "sampling": {**dataclasses.asdict(params), "seed": seed},
        "load_s": load_s,
        "prefill_tokens": len(gen.prompt_ids),
        "prefill_s": gen.prefill_s,
        "prefill_tokens_per_s": len(gen.prompt_ids) / gen.prefill_s,
        "decode_tokens": gen.decode_steps,
        "decode_s": gen.decode_s,
        "decode_tokens_per_s": gen.decode_steps / gen.decode_s if gen.decode_steps else 0.0,
        "collective_s": gen.collective_s,
        "collective_share": gen.collective_s / total if total else 0.0,
        "peak_rss_mb": max(rss),
        "peak_rss_mb_per_rank": rss,
        "weights_mb_per_rank": weights_mb,
    }
    if args.profile:
        result["profile"] = profile
    if args.json:
        print(json.dumps(result))
        return
    print(flush=True)
    if args.profile:
        for line in _profile_table(profile):
            print(line, file=sys.stderr)
    _log(comm, f"{comm.size} rank(s) x {result['threads_per_rank']} thread(s), {args.attention} attention, seed {seed}")
    _log(comm, _stats_line(gen, load_s))
    _log(comm, f"peak RSS per rank: {', '.join(f'{r:.0f}' for r in rss)} MB")


def chat(args, comm: Comm) -> None:
    """An interactive conversation read from rank 0's stdin, one line per user turn. Each turn renders
    the whole conversation with the chat template and prefills only what differs from the KV cache
    (the template drops earlier turns' thinking, so the cache is reused up to the first difference)."""
    model_dir = _model_dir(args, comm)
    config = comm.agree(Qwen3Config.from_hf, model_dir)
    setup = comm.agree(lambda: _chat_setup(args, model_dir, config) if comm.is_root else None)
    max_context = comm.bcast(setup[1] if comm.is_root else None)
    model, load_s = _load(args, comm, model_dir, config, max_context, min(args.prefill_chunk, max_context))
    engine = Engine(model, comm)
    if not comm.is_root:
        while comm.bcast(None):  # rank 0 says whether another turn follows
            engine.generate(None, 0, None, None, set())
        return
    (tokenizer, params, seed, stop_ids), _ = setup
    _log(comm, f"loaded in {load_s:.2f} s; {max_context} positions of context; seed {seed}")
    _log(comm, "type a message; /reset starts over, /exit or end of input ends")
    sampler = Sampler(params, seed)
    system = [{"role": "system", "content": args.system}] if args.system else []
    messages, cached = list(system), []  # cached: the ids whose keys and values are in the cache
    while (line := _read_line(marker=not args.json)) is not None:
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            break
        if text == "/reset":
            messages, cached = list(system), []
            _log(comm, "conversation reset")
            continue
        turn = [*messages, {"role": "user", "content": line.rstrip("\n")}]
        ids = tokenizer.apply_chat_template(turn, **_template_options(args))
        if len(ids) >= max_context:
            _log(comm, f"context full: the conversation needs {len(ids)} of {max_context} positions; /reset")
            continue
        keep = min(_common_prefix(cached, ids), len(ids) - 1)
        comm.bcast(True)
        stream = TextStream(tokenizer, args.stop, args.hide_thinking, None if args.json else sys.stdout)
        new = len(ids) - keep
        with progress.bar(progress.wanted(args) and new >= 2 * model.max_tokens, new, "prefill", "tokens") as bar:
            gen = engine.generate(
                ids[keep:], args.max_new_tokens, params, sampler, stop_ids, stream, keep, ids[:keep], bar
            )
        stream.flush()
        if args.json:
            turn_result = {
                "conversation_ids": ids,
                "reused_positions": keep,
                "output_ids": gen.output_ids,
                "text": stream.visible_text,
                "finish_reason": gen.finish_reason,
                "prefill_tokens": len(gen.prompt_ids),
                "prefill_s": gen.prefill_s,
                "decode_tokens": gen.decode_steps,
                "decode_s": gen.decode_s,
            }
            print(json.dumps(turn_result), flush=True)
        else:
            print(flush=True)
        cached = ids + gen.output_ids[:-1]  # the last token was drawn but never run through the model
        messages = [*turn, {"role": "assistant", "content": stream.text}]
        _log(comm, f"[{keep} positions reused] " + _stats_line(gen, None))
        if gen.finish_reason == "context":
            _log(comm, f"context full ({max_context} positions): /reset to start a new conversation")
    comm.bcast(False)  # the other ranks leave their loop (on an error, the job is aborted instead)


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


def _chat_setup(args, model_dir: Path, config: Qwen3Config):
    from .tokenizer import Tokenizer

    tokenizer = Tokenizer(model_dir)
    _template_options(args)  # a bad --tools file is refused now, not at the first turn
    if not tokenizer.has_chat_template:
        raise UserError(f"{model_dir}: chat needs a chat template (tokenizer_config.json or chat_template.jinja)")
    defaults = generation_defaults(model_dir)
    params = _sampling(args, defaults)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    limit = config.max_position_embeddings
    max_context = min(args.max_context, limit)
    return (tokenizer, params, seed, _stop_ids(args, config, defaults)), max_context


def _root_setup(args, model_dir: Path, config: Qwen3Config):
    ids, tokenizer = _prepare_prompt(args, model_dir, config)
    defaults = generation_defaults(model_dir)
    params = _sampling(args, defaults)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    stop_ids = _stop_ids(args, config, defaults)
    limit = config.max_position_embeddings
    max_context = args.max_context or min(len(ids) + args.max_new_tokens, limit)
    if max_context > limit:
        raise UserError(f"--max-context {max_context} exceeds max_position_embeddings ({limit})")
    if len(ids) >= max_context:
        raise UserError(
            f"the prompt has {len(ids)} tokens, leaving no room in a context of {max_context} "
            "(--max-context / max_position_embeddings)"
        )
    return (ids, tokenizer, params, seed, stop_ids), (len(ids), max_context)


def _stop_ids(args, config: Qwen3Config, defaults: dict) -> set[int]:
    if args.ignore_eos:
        return set()
    return set(config.eos_token_ids) | set(int_tuple(defaults.get("eos_token_id")))


def logits(args, comm: Comm) -> None:
    model_dir = _model_dir(args, comm)
    config = comm.agree(Qwen3Config.from_hf, model_dir)
    out = Path(args.output)
    comm.agree(lambda: _check_logits_args(args, config, out) if comm.is_root else None)
    n = len(args.prompt_ids)
    model, _ = _load(args, comm, model_dir, config, n, min(args.prefill_chunk, n))
    engine = Engine(model, comm)
    values = engine.prefill(np.array(args.prompt_ids, np.int64), all_logits=True)
    digests = comm.gather(model.hidden_digest())
    if not comm.is_root:
        return
    if len(set(digests)) != 1:
        raise RuntimeError(f"ranks hold different hidden states (combine {comm.combine_method}): {digests}")
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npy", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, values.astype(np.float32, copy=False))
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise


def _check_logits_args(args, config: Qwen3Config, out: Path) -> None:
    _check_ids(args.prompt_ids, config.vocab_size, "--prompt-ids")
    n, limit = len(args.prompt_ids), config.max_position_embeddings
    if n > limit:
        raise UserError(f"--prompt-ids: {n} tokens exceed max_position_embeddings ({limit})")
    if not out.parent.is_dir():
        raise UserError(f"-o {out}: directory {out.parent} does not exist")


def bench(args, comm: Comm) -> None:
    from . import bench as benchmark

    model_dir = _model_dir(args, comm)
    config = comm.agree(Qwen3Config.from_hf, model_dir)
    context = args.prompt_len + args.gen_len
    if context > config.max_position_embeddings:
        comm.agree(_raise, f"--prompt-len + --gen-len = {context} exceeds max_position_embeddings")
    model, load_s = _load(args, comm, model_dir, config, context, min(args.prefill_chunk, args.prompt_len))
    _log(comm, f"loaded in {load_s:.2f} s")
    benchmark.run(args, comm, model_dir, model)
