"""Shared test fixtures: tiny random Qwen3 checkpoints written by transformers, and the reference outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qwen3_mpi.demo import QWEN3_0_6B

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TOKENIZER_DIR = SHARED / "qwen3" / "tokenizer"
CONFIGS_DIR = SHARED / "qwen3" / "configs"

# the demo checkpoint's writer at a small size (Qwen3-0.6B's config otherwise, long context)
SMALL_DEMO_CONFIG = dict(
    QWEN3_0_6B,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    initializer_range=0.3,
)

PROMPT_IDS = [3, 17, 101, 7, 250, 42, 42, 9, 311, 64, 5, 199, 77]
GREEDY_TOKENS = 32

# name -> (Qwen3Config kwargs, storage dtype, max shard size for save_pretrained or None, config.json style)
CHECKPOINTS = {
    # tied embeddings, GQA 2, head_dim 32 != 64/4, 3 layers, theta 1e4, bf16, transformers 4.5x config keys
    "tied-gqa2-bf16": (
        {
            "hidden_size": 64,
            "intermediate_size": 160,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 32,
            "tie_word_embeddings": True,
            "rope_theta": 1e4,
        },
        "bfloat16",
        None,
        "4.x",
    ),
    # untied, GQA 1 (MHA), head_dim = hidden/heads, 2 layers, theta 1e6, f32
    "untied-gqa1-f32": (
        {
            "hidden_size": 64,
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "head_dim": 16,
            "tie_word_embeddings": False,
            "rope_theta": 1e6,
        },
        "float32",
        None,
        "5.x",
    ),
    # untied, GQA 4, 5 layers (odd), theta 1e6, bf16, several files with an index
    "gqa4-sharded-bf16": (
        {
            "hidden_size": 96,
            "intermediate_size": 200,
            "num_hidden_layers": 5,
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
            "head_dim": 24,
            "tie_word_embeddings": False,
            "rope_theta": 1e6,
        },
        "bfloat16",
        "60KB",
        "5.x",
    ),
}


def run_cli(args: list[str], ranks: int | None = None, timeout: float = 300, env=None) -> subprocess.CompletedProcess:
    """Run `qwen3-mpi ARGS` (under mpirun -n ranks when ranks is given); never hangs past timeout."""
    cmd = [sys.executable, "-m", "qwen3_mpi", *args]
    if ranks is not None:
        cmd = ["mpirun", "-n", str(ranks), *cmd]
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=ROOT)


def write_checkpoint(directory: Path, kwargs: dict, dtype: str, shard: str | None, style: str) -> None:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=384,
        max_position_embeddings=256,
        initializer_range=0.25,
        eos_token_id=None,
        bos_token_id=None,
        **kwargs,
    )
    model = Qwen3ForCausalLM(config)
    with torch.no_grad():  # random norm weights too, so every tensor is exercised
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(directory, **({"max_shard_size": shard} if shard else {}))
    if style == "4.x":  # rewrite config.json the way transformers 4.5x writes it
        path = directory / "config.json"
        raw = json.loads(path.read_text())
        rope = raw.pop("rope_parameters", None) or {}
        raw["rope_theta"] = rope.get("rope_theta", kwargs.get("rope_theta"))
        raw["rope_scaling"] = None
        raw["torch_dtype"] = raw.pop("dtype", dtype)
        raw.pop("layer_types", None)
        raw["transformers_version"] = "4.51.0"
        path.write_text(json.dumps(raw, indent=2))


def _reference(directory: Path) -> dict:
    """transformers' fp32 logits at every prompt position and its greedy continuation; and the logits
    with every key and value rounded to bf16 as it enters the cache (the reference of a bf16 KV cache)."""
    import torch
    from transformers import Qwen3ForCausalLM, cache_utils

    model = Qwen3ForCausalLM.from_pretrained(directory, dtype=torch.float32)
    model.eval()
    ids = torch.tensor([PROMPT_IDS])
    update = cache_utils.DynamicLayer.update

    def update_rounded(self, key_states, value_states, *args, **kwargs):
        bf16 = torch.bfloat16
        return update(self, key_states.to(bf16).float(), value_states.to(bf16).float(), *args, **kwargs)

    with torch.no_grad():
        logits = model(ids).logits[0].numpy()
        cache_utils.DynamicLayer.update = update_rounded
        try:
            logits_bf16_kv = model(ids, use_cache=True).logits[0].numpy()
        finally:
            cache_utils.DynamicLayer.update = update
        assert not np.array_equal(logits, logits_bf16_kv)  # the rounding took effect
        out = model.generate(
            ids,
            max_new_tokens=GREEDY_TOKENS,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
            min_new_tokens=GREEDY_TOKENS,
        )
    return {"logits": logits, "logits_bf16_kv": logits_bf16_kv, "greedy": out[0, len(PROMPT_IDS) :].tolist()}


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    root = tmp_path_factory.mktemp("checkpoints")
    result = {}
    for name, (kwargs, dtype, shard, style) in CHECKPOINTS.items():
        directory = root / name
        write_checkpoint(directory, kwargs, dtype, shard, style)
        result[name] = (directory, _reference(directory))
    return result


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory) -> Path:
    """The demo checkpoint (own tokenizer and chat template) at SMALL_DEMO_CONFIG's size."""
    from qwen3_mpi import demo

    return demo.ensure_demo(SMALL_DEMO_CONFIG, tmp_path_factory.mktemp("cache") / "demo")


def rank_processes(proc, ranks: int, timeout: float = 60) -> dict:
    """The qwen3_mpi processes under a running mpirun, by rank (PMI_RANK / OMPI_COMM_WORLD_RANK)."""
    import time

    import psutil

    def is_rank(p) -> bool:
        try:
            return "qwen3_mpi" in " ".join(p.cmdline())
        except psutil.Error:  # gone, or a zombie: a launcher's short-lived helper (seen under hydra)
            return False

    deadline = time.time() + timeout
    found = []
    while len(found) < ranks and time.time() < deadline:
        found = [p for p in psutil.Process(proc.pid).children(recursive=True) if is_rank(p)]
        time.sleep(0.2)
    assert len(found) == ranks, f"found {len(found)} of {ranks} ranks"
    by_rank = {}
    for p in found:
        env = p.environ()
        by_rank[int(env.get("PMI_RANK", env.get("OMPI_COMM_WORLD_RANK", -1)))] = p
    return by_rank


def kill_job(proc, marker: str) -> None:
    """A test's cleanup: kill the launcher and every process still running under it or with marker (the
    job's model path) in its command line, so that a test failing mid-job leaves nothing running for
    the next one."""
    import psutil

    def cmdline(p) -> str:
        try:
            return " ".join(p.cmdline())
        except psutil.Error:
            return ""

    try:
        procs = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        procs = []
    procs += [p for p in psutil.process_iter() if p.pid != os.getpid() and marker in cmdline(p)]
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    proc.kill()
    proc.wait()


@pytest.fixture
def reap():
    """reap(proc, marker) -> proc: after the test, whatever it did, kill_job(proc, marker) ends that job
    (after the test's own checks that it ended by itself)."""
    jobs = []
    yield lambda proc, marker: jobs.append((proc, marker)) or proc
    for proc, marker in jobs:
        kill_job(proc, marker)


TOOLS = [  # a tool schema as transformers' apply_chat_template takes it
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]

FIGURES: list[str] = []  # measured figures, printed at the end of the run


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("measured figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
