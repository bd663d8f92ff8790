"""The demo checkpoint writer and tokenizer, at a small size: transformers loads what we write and agrees."""

import json

import numpy as np
from conftest import run_cli


def test_written_atomically(small_demo):
    assert sorted(p.name for p in small_demo.iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert [p.name for p in small_demo.parent.iterdir()] == ["demo"]  # no temporary directory left behind


def test_transformers_reads_it_and_agrees(small_demo, tmp_path):
    import torch
    from transformers import Qwen3ForCausalLM

    ids = [5, 900, 151644, 77, 3000]
    model = Qwen3ForCausalLM.from_pretrained(small_demo, dtype=torch.float32)
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    out = tmp_path / "l.npy"
    proc = run_cli(["logits", "-m", str(small_demo), "--prompt-ids", ",".join(map(str, ids)), "-o", str(out)], ranks=2)
    assert proc.returncode == 0, proc.stderr
    assert np.abs(np.load(out) - ref).max() <= 1e-3


def test_tokenizer_round_trip_and_chat(small_demo):
    from qwen3_mpi.tokenizer import Tokenizer

    tok = Tokenizer(small_demo)
    text = "Hello badu kemi world! 123"
    assert tok.decode(tok.encode(text)) == text
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert ids[0] == 151644 and tok.decode(ids) == "user\nhi\nassistant\n"
    assert tok.decode([20000]).strip().isalpha()  # every id decodes to a readable pseudo-word


def test_generate_from_text(small_demo):
    args = [
        "generate",
        "-m",
        str(small_demo),
        "-p",
        "Hello",
        "-n",
        "5",
        "--seed",
        "3",
        "--temperature",
        "0.8",
        "--json",
    ]
    proc = run_cli(args, ranks=2)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert len(result["output_ids"]) <= 5 and isinstance(result["text"], str)
    again = json.loads(run_cli(args, ranks=2).stdout)
    assert again["output_ids"] == result["output_ids"]  # same seed and ranks, same tokens


def test_stop_text(small_demo):
    base = [
        "generate",
        "-m",
        str(small_demo),
        "-p",
        "Hello",
        "-n",
        "12",
        "--temperature",
        "0",
        "--ignore-eos",
        "--json",
    ]
    full = json.loads(run_cli(base, ranks=1).stdout)
    words = full["text"].split()
    assert len(words) >= 3, full["text"]
    stop = words[2][:3]
    cut = full["text"].index(stop)
    proc = run_cli(base + ["--stop", stop], ranks=2)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["finish_reason"] == "stop" and result["text"] == full["text"][:cut]
