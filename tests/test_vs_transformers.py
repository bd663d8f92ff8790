"""The whole model against Hugging Face transformers (fp32 reference on the same safetensors), for
1..4 ranks through mpirun: logits at every position and greedy generation."""

import json

import numpy as np
import pytest
from conftest import CHECKPOINTS, FIGURES, GREEDY_TOKENS, PROMPT_IDS, run_cli

TOLERANCE = 1e-3
RANKS = [1, 2, 3, 4]
ids_arg = ",".join(map(str, PROMPT_IDS))


@pytest.mark.parametrize("ranks", RANKS)
@pytest.mark.parametrize("attention", ["standard", "streaming"])
@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_logits_match_transformers(checkpoints, tmp_path, name, attention, ranks):
    directory, ref = checkpoints[name]
    out = tmp_path / "logits.npy"
    # prefill chunks of 9 then 4 tokens: a forward call of many queries (streaming: sgemm tiles) and one
    # of few (streaming: the row kernel), both against the cache; KV blocks of 4 positions
    proc = run_cli(
        [
            "logits",
            "-m",
            str(directory),
            "--prompt-ids",
            ids_arg,
            "-o",
            str(out),
            "--attention",
            attention,
            "--prefill-chunk",
            "9",
            "--block-size",
            "4",
        ],
        ranks=ranks,
    )
    assert proc.returncode == 0, proc.stderr
    ours = np.load(out)
    assert ours.shape == ref["logits"].shape == (len(PROMPT_IDS), 384)
    diff = float(np.abs(ours - ref["logits"]).max())
    FIGURES.append(f"logits {name:18s} {attention:9s} N={ranks}: max |ours - transformers| = {diff:.2e}")
    assert diff <= TOLERANCE
    assert (ours.argmax(axis=1) == ref["logits"].argmax(axis=1)).all()


@pytest.mark.parametrize("ranks", RANKS)
@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_greedy_generation_matches_transformers(checkpoints, name, ranks):
    directory, ref = checkpoints[name]
    for attention in ["streaming"] + (["standard"] if ranks in (1, 3) else []):
        proc = run_cli(
            [
                "generate",
                "-m",
                str(directory),
                "--prompt-ids",
                ids_arg,
                "-n",
                str(GREEDY_TOKENS),
                "--temperature",
                "0",
                "--ignore-eos",
                "--json",
                "--attention",
                attention,
            ],
            ranks=ranks,
        )
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert result["output_ids"] == ref["greedy"], attention
        assert result["ranks"] == ranks and result["prompt_ids"] == PROMPT_IDS


@pytest.mark.parametrize("combine", ["allgather", "allreduce"])
def test_combine_methods_agree(checkpoints, tmp_path, combine):
    """Both ways of combining partial sums give the reference logits (the logits command also checks
    that every rank ends with a bit-identical hidden state, and fails otherwise)."""
    directory, ref = checkpoints["gqa4-sharded-bf16"]
    out = tmp_path / "logits.npy"
    proc = run_cli(
        ["logits", "-m", str(directory), "--prompt-ids", ids_arg, "-o", str(out), "--combine", combine], ranks=3
    )
    assert proc.returncode == 0, proc.stderr
    assert float(np.abs(np.load(out) - ref["logits"]).max()) <= TOLERANCE


def test_without_mpirun(checkpoints, tmp_path):
    directory, ref = checkpoints["untied-gqa1-f32"]
    out = tmp_path / "logits.npy"
    proc = run_cli(["logits", "-m", str(directory), "--prompt-ids", ids_arg, "-o", str(out)])
    assert proc.returncode == 0, proc.stderr
    assert float(np.abs(np.load(out) - ref["logits"]).max()) <= TOLERANCE
