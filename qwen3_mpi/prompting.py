"""Rank 0's side of a request: the prompt as token ids (text through the chat template, a file, stdin,
or ids), the chat template's variables, the stop ids, and the sampling parameters (flags over
generation_config.json's values)."""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

from .config import Qwen3Config, int_tuple
from .errors import UserError
from .options import SamplingFlags, TextOptions
from .sampling import SamplingParams


def check_ids(ids: list[int], vocab_size: int, flag: str) -> None:
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise UserError(f"{flag}: token id {bad[0]} is outside the vocabulary [0, {vocab_size})")


def prompt_text(prompt: str | None, prompt_file: str | None) -> str:
    """The prompt's text: -p's, -f's file ('-': standard input), or standard input when neither is given."""
    if prompt is not None:
        return prompt
    if prompt_file not in (None, "-"):
        try:
            return Path(prompt_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"--file {prompt_file}: cannot be read ({e.strerror or e})") from None
    if prompt_file is None and sys.stdin.isatty():
        raise UserError("no prompt: give -p TEXT, -f FILE, --prompt-ids IDS, or pipe the prompt into stdin")
    return sys.stdin.read()


def tokenizer_for(model_dir: Path, needed: bool):
    """The checkpoint's tokenizer: always when needed, else if its files are there (None otherwise)."""
    from .tokenizer import Tokenizer

    if needed or (model_dir / "tokenizer.json").exists():
        return Tokenizer(model_dir)
    return None


def prompt_ids(text_prompt: str | None, ids: tuple[int, ...] | None, text: TextOptions, tokenizer, config) -> list[int]:
    """The prompt's token ids: the given ids, or the text through the chat template (one user message
    after the system message) or tokenized as is."""
    if ids is not None:
        check_ids(list(ids), config.vocab_size, "--prompt-ids")
        return list(ids)
    if not text.chat_template:
        out = tokenizer.encode(text_prompt)
    else:
        system = [{"role": "system", "content": text.system}] if text.system else []
        out = tokenizer.apply_chat_template(
            [*system, {"role": "user", "content": text_prompt}], **template_options(text)
        )
    if not out:
        raise UserError("--prompt: the prompt is empty after tokenization")
    check_ids(out, config.vocab_size, "--prompt (tokenizer)")
    return out


def template_options(text: TextOptions) -> dict:
    """Variables for the chat template: enable_thinking when --think / --no-think was given, tools from
    --tools (a JSON list of function schemas, as transformers' apply_chat_template takes them)."""
    options = {} if text.think is None else {"enable_thinking": text.think}
    if text.tools:
        try:
            tools = json.loads(Path(text.tools).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UserError(f"--tools {text.tools}: cannot be read as JSON ({e})") from None
        if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
            raise UserError(f"--tools {text.tools}: expected a JSON list of tool (function) schemas")
        options["tools"] = tools
    return options


def stop_ids(text: TextOptions, config: Qwen3Config, defaults: dict) -> set[int]:
    if text.ignore_eos:
        return set()
    return set(config.eos_token_ids) | set(int_tuple(defaults.get("eos_token_id")))


SAMPLING_RULES = {  # flag: (attribute, check, what the check requires)
    "--temperature": ("temperature", lambda v: 0 <= v < math.inf, ">= 0 (0 is greedy)"),
    "--top-k": ("top_k", lambda v: v >= 0, ">= 0 (0 is off)"),
    "--top-p": ("top_p", lambda v: 0 < v <= 1, "in (0, 1] (1 is off)"),
    "--min-p": ("min_p", lambda v: 0 <= v <= 1, "in [0, 1] (0 is off)"),
    "--repetition-penalty": ("repetition_penalty", lambda v: 0 < v < math.inf, "> 0 (1 is off)"),
    "--presence-penalty": ("presence_penalty", lambda v: -math.inf < v < math.inf, "a finite number (0 is off)"),
    "--seed": ("seed", lambda v: 0 <= v < 2**63, ">= 0"),
}


def sampling_params(flags: SamplingFlags, defaults: dict) -> tuple[SamplingParams, int]:
    """(params, seed): the flags given, else generation_config.json's values when it samples
    (do_sample), else off; the seed given, else a random one (reported). Out-of-range values (given or
    from the file) are refused, naming the flag."""
    for flag, (attr, ok, rule) in SAMPLING_RULES.items():
        value = getattr(flags, attr)
        if value is not None and not ok(value):
            raise UserError(f"{flag}: {value} is out of range: must be {rule}")
    sample = bool(defaults.get("do_sample", False))

    def pick(attr, off):
        value = getattr(flags, attr)
        if value is None and sample:
            value = defaults.get(attr)
        return off if value is None else value

    params = SamplingParams(
        temperature=float(pick("temperature", 1.0)) if (sample or flags.temperature is not None) else 0.0,
        top_k=int(pick("top_k", 0)),
        top_p=float(pick("top_p", 1.0)),
        min_p=float(pick("min_p", 0.0)),
        repetition_penalty=float(pick("repetition_penalty", 1.0)),
        presence_penalty=float(pick("presence_penalty", 0.0)),
    )
    for attr, ok, rule in SAMPLING_RULES.values():
        if attr != "seed" and not ok(getattr(params, attr)):
            raise UserError(f"generation_config.json: {attr} = {getattr(params, attr)} is out of range: must be {rule}")
    seed = flags.seed if flags.seed is not None else random.SystemRandom().randrange(2**31)
    return params, seed
