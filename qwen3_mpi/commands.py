"""The commands: set up on every rank (errors agreed on), then run the engine."""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
from pathlib import Path

import numba
import numpy as np

from .cli import PROG, peak_rss_mb
from .comm import Comm
from .config import Qwen3Config, ShardLayout, generation_defaults, int_tuple
from .engine import Engine
from .errors import UserError
from .model import Model, load_shard
from .sampling import Sampler, SamplingParams
from .weights import Checkpoint


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


def _load(args, comm: Comm, model_dir: Path, config: Qwen3Config, max_context: int, max_tokens: int):
    """Layout and this rank's weights (errors agreed on), the warmed-up Model, and the load time."""
    layout = comm.agree(ShardLayout.for_rank, config, comm.rank, comm.size)
    comm.barrier()
    t0 = comm.wtime()
    weights = comm.agree(lambda: load_shard(Checkpoint(model_dir), config, layout))
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
    )
    model.warmup()
    load_s = comm.max(comm.wtime() - t0)
    return model, load_s


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
            ids = tokenizer.apply_chat_template(messages)
        if not ids:
            raise UserError("--prompt: the prompt is empty after tokenization")
        _check_ids(ids, config.vocab_size, "--prompt (tokenizer)")
    if args.stop and tokenizer is None:
        raise UserError("--stop needs the model's tokenizer.json to decode text")
    return ids, tokenizer


def _sampling(args, defaults: dict) -> SamplingParams:
    sample = defaults.get("do_sample", False)

    def pick(flag, key, off):
        return flag if flag is not None else (defaults.get(key, off) if sample else off)

    params = SamplingParams(
        temperature=pick(args.temperature, "temperature", 0.0) if args.temperature is not None or sample else 0.0,
        top_k=int(pick(args.top_k, "top_k", 0) or 0),
        top_p=float(pick(args.top_p, "top_p", 1.0) or 1.0),
        min_p=float(pick(args.min_p, "min_p", 0.0) or 0.0),
        repetition_penalty=float(pick(args.repetition_penalty, "repetition_penalty", 1.0) or 1.0),
        presence_penalty=args.presence_penalty,
    )
    for name, value, ok in (
        ("--temperature", params.temperature, params.temperature >= 0),
        ("--top-k", params.top_k, params.top_k >= 0),
        ("--top-p", params.top_p, 0 < params.top_p <= 1),
        ("--min-p", params.min_p, 0 <= params.min_p < 1),
        ("--repetition-penalty", params.repetition_penalty, params.repetition_penalty > 0),
    ):
        if not ok:
            raise UserError(f"{name}: {value} is out of range")
    return params


class _TextStream:
    """Rank 0: decodes the generated ids, prints new text as it completes, and watches for --stop strings."""

    def __init__(self, tokenizer, stops: list[str], echo: bool):
        self.tokenizer, self.stops, self.echo = tokenizer, stops, echo
        self.text, self.printed = "", 0

    def __call__(self, gen):
        if self.tokenizer is None:
            return None
        self.text = self.tokenizer.decode(gen.output_ids)
        for stop in self.stops:
            at = self.text.find(stop)
            if at >= 0:
                self.text = self.text[:at]
                self._flush(final=True)
                return "stop"
        self._flush(final=False)
        return None

    def _flush(self, final: bool):
        end = len(self.text)
        if not final:
            end -= max((len(s) - 1 for s in self.stops), default=0)  # might be the start of a stop string
            while end > self.printed and self.text[end - 1] == "\ufffd":  # an incomplete UTF-8 sequence
                end -= 1
        if self.echo and end > self.printed:
            sys.stdout.write(self.text[self.printed : end])
            sys.stdout.flush()
            self.printed = end


def generate(args, comm: Comm) -> None:
    model_dir = _model_dir(args, comm)
    config = comm.agree(Qwen3Config.from_hf, model_dir)
    # rank 0 alone: tokenizer, prompt, sampling and stops
    setup = comm.agree(lambda: _root_setup(args, model_dir, config) if comm.is_root else None)
    prompt_len, max_context, new_tokens = comm.bcast(setup[1] if comm.is_root else None)
    model, load_s = _load(args, comm, model_dir, config, max_context, min(args.prefill_chunk, prompt_len))
    engine = Engine(model, comm)
    if comm.is_root:
        (ids, tokenizer, sampler, stop_ids, seed), _ = setup
        stream = _TextStream(tokenizer, args.stop, echo=not args.json)
        gen = engine.generate(ids, new_tokens, sampler, stop_ids, on_token=stream)
    else:
        engine.generate(None, new_tokens, None, set())
    rss = comm.gather(peak_rss_mb())
    weights_mb = comm.gather(model.weights.nbytes / 2**20)
    if not comm.is_root:
        return
    stream._flush(final=True)
    text = stream.text if tokenizer is not None else None
    result = {
        "model": str(model_dir),
        "prompt_ids": gen.prompt_ids,
        "output_ids": gen.output_ids,
        "text": text,
        "stop_reason": gen.stop_reason,
        "ranks": comm.size,
        "threads_per_rank": numba.get_num_threads(),
        "attention": args.attention,
        "combine": comm.combine_method,
        "seed": seed,
        "load_s": load_s,
        "prefill_tokens": len(gen.prompt_ids),
        "prefill_s": gen.prefill_s,
        "prefill_tokens_per_s": len(gen.prompt_ids) / gen.prefill_s,
        "decode_tokens": gen.decode_steps,
        "decode_s": gen.decode_s,
        "decode_tokens_per_s": gen.decode_steps / gen.decode_s if gen.decode_steps else 0.0,
        "peak_rss_mb": max(rss),
        "peak_rss_mb_per_rank": rss,
        "weights_mb_per_rank": weights_mb,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(flush=True)
    _log(
        comm,
        f"{comm.size} rank(s) x {result['threads_per_rank']} thread(s), {args.attention} attention; "
        f"load {load_s:.2f} s",
    )
    _log(
        comm,
        f"prefill {result['prefill_tokens']} tokens in {gen.prefill_s:.3f} s "
        f"({result['prefill_tokens_per_s']:.1f} tokens/s); decode {gen.decode_steps} tokens in "
        f"{gen.decode_s:.3f} s ({result['decode_tokens_per_s']:.1f} tokens/s); stop: {gen.stop_reason}",
    )
    _log(comm, f"peak RSS per rank: {', '.join(f'{r:.0f}' for r in rss)} MB")


def _root_setup(args, model_dir: Path, config: Qwen3Config):
    ids, tokenizer = _prepare_prompt(args, model_dir, config)
    defaults = generation_defaults(model_dir)
    params = _sampling(args, defaults)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    stop_ids = set() if args.ignore_eos else set(config.eos_token_ids) | set(int_tuple(defaults.get("eos_token_id")))
    limit = config.max_position_embeddings
    max_context = args.max_context or min(len(ids) + args.max_new_tokens, limit)
    if max_context > limit:
        raise UserError(f"--max-context {max_context} exceeds max_position_embeddings ({limit})")
    if len(ids) >= max_context:
        raise UserError(
            f"the prompt has {len(ids)} tokens, leaving no room in a context of {max_context} "
            "(--max-context / max_position_embeddings)"
        )
    new_tokens = min(args.max_new_tokens, max_context - len(ids))
    return (ids, tokenizer, Sampler(params, seed), stop_ids, seed), (len(ids), max_context, new_tokens)


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
