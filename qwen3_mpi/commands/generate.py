"""`qwen3-mpi generate`: one prompt, one answer, streamed to stdout (or one JSON object)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, replace

from .. import prompting, report, session
from ..config import Qwen3Config, generation_defaults
from ..errors import UserError
from ..options import GenerateCommand, RunOptions
from ..progress import bar
from ..sampling import Sampler, SamplingParams
from ..textstream import TextStream
from .interrupt import stop_on_interrupt


@dataclass(frozen=True)
class _Request:
    """Rank 0's prompt and sampling, and the KV cache positions it needs."""

    ids: list[int]
    tokenizer: object
    params: SamplingParams
    seed: int
    stop_ids: set[int]
    max_context: int


def _request(cmd: GenerateCommand, options: RunOptions, path, config: Qwen3Config) -> _Request:
    text = cmd.text
    needs_tokenizer = cmd.prompt_ids is None or bool(text.stop)
    if text.stop and cmd.prompt_ids is not None and not (path / "tokenizer.json").exists():
        raise UserError("--stop needs the model's tokenizer.json to decode text")
    tokenizer = prompting.tokenizer_for(path, needs_tokenizer)
    prompt = None if cmd.prompt_ids is not None else prompting.prompt_text(cmd.prompt, cmd.prompt_file)
    ids = prompting.prompt_ids(prompt, cmd.prompt_ids, text, tokenizer, config)
    defaults = generation_defaults(path)
    params, seed = prompting.sampling_params(cmd.sampling, defaults)
    need, limit = len(ids) + text.max_new_tokens, config.max_position_embeddings
    sizes = f"the prompt ({len(ids)} tokens) + -n {text.max_new_tokens} = {need} positions"
    if options.max_context is not None and need > options.max_context:
        raise UserError(f"{sizes} do not fit --max-context {options.max_context}: raise it or lower -n")
    if need > limit:
        raise UserError(f"{sizes} exceed the model's max_position_embeddings ({limit}): lower -n")
    max_context = options.max_context or need
    return _Request(ids, tokenizer, params, seed, prompting.stop_ids(text, config, defaults), max_context)


def run(cmd: GenerateCommand, options: RunOptions, comm) -> int:
    path = session.model_dir(cmd.model, comm, options)
    config = session.read_config(path, comm)
    # rank 0 alone: tokenizer, prompt, sampling and stops
    req = comm.agree(lambda: _request(cmd, options, path, config) if comm.is_root else None)
    prompt_len, max_context = comm.bcast((len(req.ids), req.max_context) if comm.is_root else None)
    s = session.load(
        path,
        replace(options, max_context=max_context),
        comm,
        max_tokens=min(options.prefill_chunk, prompt_len),
        config=config,
    )
    if not comm.is_root:
        with stop_on_interrupt(None):
            s.engine.generate(None, 0, None, None, set())
        _gather_report(s, options)
        return 0
    stream = TextStream(req.tokenizer, cmd.text.stop, cmd.text.hide_thinking, None if cmd.json else sys.stdout)
    on_token = stream if req.tokenizer is not None else None
    long_prompt = options.progress and len(req.ids) >= 2 * s.model.max_tokens
    with bar(long_prompt, len(req.ids), "prefill", "tokens") as update, stop_on_interrupt(s.engine):
        gen = s.engine.generate(
            req.ids,
            cmd.text.max_new_tokens,
            req.params,
            Sampler(req.params, req.seed),
            req.stop_ids,
            on_token,
            progress=update,
        )
    rss, weights_mb, profiles = _gather_report(s, options)
    stream.flush()
    result = {
        "model": str(path),
        "prompt_ids": gen.prompt_ids,
        "output_ids": gen.output_ids,
        "text": stream.visible_text if req.tokenizer is not None else None,
        "ranks": comm.size,
        "threads_per_rank": s.threads,
        "attention": options.attention,
        "kv_cache_dtype": options.kv_cache_dtype,
        "kv_cache_positions": s.model.max_context,
        "combine": options.combine,
        "sampling": {**asdict(req.params), "seed": req.seed},
        "load_s": s.load_s,
        **report.speed_fields(gen),
        "peak_rss_mb": max(rss),
        "peak_rss_mb_per_rank": rss,
        "weights_mb_per_rank": weights_mb,
    }
    if options.profile:
        result["profile"] = profiles
    if cmd.json:
        print(json.dumps(result), flush=True)
    else:
        print(flush=True)
        if options.profile:
            for line in report.profile_table(profiles):
                print(line, file=sys.stderr)
        report.say(comm, report.run_line(s, req.seed))
        report.say(comm, report.stats_line(gen, s.load_s))
        report.say(comm, f"peak RSS per rank: {', '.join(f'{r:.0f}' for r in rss)} MB")
    return 130 if gen.finish_reason == "interrupted" else 0


def _gather_report(s, options: RunOptions):
    """Every rank's peak RSS, weight megabytes and (with --profile) profile, on rank 0."""
    comm = s.comm
    rss = comm.gather(report.peak_rss_mb())
    weights_mb = comm.gather(s.model.weights.nbytes / 2**20)
    profiles = comm.gather(report.profile(comm, s.engine.last) if options.profile else None)
    return rss, weights_mb, profiles
