"""The options of a run and of each command: frozen objects, built once from argv by cli.py and passed
down, each field checked once here (in __post_init__), so nothing below cli.py reads argparse objects
or re-validates a choice.

RunOptions shapes the engine (kernels, cache, ranks' combine, threads); the command objects say what
to do with it (prompt, sampling flags, output).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import UserError
from .kernels.registry import ATTENTION
from .kv_cache import KV_DTYPES

COMBINE_KINDS = ("shared", "allgather", "allreduce")


def _choice(flag: str, value, choices) -> None:
    if value not in choices:
        raise UserError(f"{flag} must be one of {', '.join(choices)}, not {value!r}")


def _positive(flag: str, value) -> None:
    if value is not None and (not isinstance(value, int) or value <= 0):
        raise UserError(f"{flag} must be a positive integer, not {value!r}")


@dataclass(frozen=True)
class RunOptions:
    """How the engine runs: the attention kernel (kernels/registry.py's name), its KV block, the KV
    cache's element type, how ranks combine partial sums, threads per rank (None: the node's cores
    shared among its ranks), prompt tokens per forward call, KV cache positions (None: the command
    sizes it), per-phase profiling, progress bars on rank 0's stderr, and quiet: nothing on stderr but
    errors (--json)."""

    attention: str = "streaming"
    block_size: int = 256
    kv_cache_dtype: str = "float32"
    combine: str = "shared"
    threads: int | None = None
    prefill_chunk: int = 512
    max_context: int | None = None
    profile: bool = False
    progress: bool = True
    quiet: bool = False

    def __post_init__(self):
        _choice("--attention", self.attention, tuple(ATTENTION))
        _choice("--kv-cache-dtype", self.kv_cache_dtype, tuple(KV_DTYPES))
        _choice("--combine", self.combine, COMBINE_KINDS)
        for flag, value in (
            ("--block-size", self.block_size),
            ("--threads", self.threads),
            ("--prefill-chunk", self.prefill_chunk),
            ("--max-context", self.max_context),
        ):
            _positive(flag, value)


@dataclass(frozen=True)
class SamplingFlags:
    """The sampling flags as given (None: generation_config.json's value when it samples, else off);
    prompting.sampling_params resolves them into a SamplingParams."""

    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = None


@dataclass(frozen=True)
class TextOptions:
    """What shapes the prompt and the answer's text: chat template variables, stops, new tokens."""

    system: str | None = None
    think: bool | None = None  # enable_thinking; None: the template's default
    tools: str | None = None  # a JSON file of tool schemas
    chat_template: bool = True
    hide_thinking: bool = False
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    max_new_tokens: int = 128


@dataclass(frozen=True)
class GenerateCommand:
    model: str | None
    prompt: str | None = None  # text; or
    prompt_file: str | None = None  # a file's text ('-': stdin); or
    prompt_ids: tuple[int, ...] | None = None  # token ids
    text: TextOptions = field(default_factory=TextOptions)
    sampling: SamplingFlags = field(default_factory=SamplingFlags)
    json: bool = False


@dataclass(frozen=True)
class ChatCommand:
    model: str | None
    text: TextOptions = field(default_factory=TextOptions)
    sampling: SamplingFlags = field(default_factory=SamplingFlags)
    json: bool = False


@dataclass(frozen=True)
class LogitsCommand:
    model: str
    prompt_ids: tuple[int, ...]
    output: str


@dataclass(frozen=True)
class BenchCommand:
    model: str | None
    attention: tuple[str, ...] = tuple(ATTENTION)
    prompt_len: int = 128
    gen_len: int = 64
    iters: int = 3
    warmup: int = 1
    output: str | None = None

    def __post_init__(self):
        for name in self.attention:
            _choice("--attention", name, tuple(ATTENTION))
