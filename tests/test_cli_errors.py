"""Bad input: one clear message from rank 0, a non-zero exit, every rank ended, no hang."""

import json
import shutil

import numpy as np
import pytest
from conftest import CONFIGS_DIR, run_cli
from safetensors.numpy import load_file, save_file

TIMEOUT = 120


def assert_clean_failure(proc, message):
    assert proc.returncode != 0
    assert proc.stderr.count(message) == 1, proc.stderr  # said once (by rank 0), not by every rank
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout == ""


@pytest.fixture
def f32_copy(checkpoints, tmp_path):
    directory = tmp_path / "model"
    shutil.copytree(checkpoints["untied-gqa1-f32"][0], directory)
    return directory


def test_missing_model_directory(tmp_path):
    proc = run_cli(["generate", "-m", str(tmp_path / "nope"), "--prompt-ids", "1,2"], ranks=2, timeout=TIMEOUT)
    assert_clean_failure(proc, "no such directory")


def test_more_ranks_than_heads(f32_copy):
    proc = run_cli(
        ["logits", "-m", str(f32_copy), "--prompt-ids", "1,2", "-o", str(f32_copy / "x.npy")], ranks=5, timeout=TIMEOUT
    )
    assert_clean_failure(proc, "5 ranks is more than num_attention_heads (4)")
    assert not (f32_copy / "x.npy").exists()


@pytest.mark.parametrize("progress", [False, True], ids=["json", "progress-bar"])
@pytest.mark.parametrize("change", ["missing", "shape"])
def test_bad_tensor_is_named(f32_copy, change, progress):
    """Also with the loading progress bar on (every rank reports to rank 0 while loading): a rank that
    fails still ends its reports, so nobody waits."""
    path = f32_copy / "model.safetensors"
    tensors = load_file(str(path))
    name = "model.layers.1.mlp.down_proj.weight"
    if change == "missing":
        del tensors[name]
        message = f"tensor {name} is missing from the checkpoint"
    else:
        tensors[name] = np.zeros((3, 3), np.float32)
        message = f"model.safetensors: tensor {name} has shape [3, 3], expected [64, 96]"
    save_file(tensors, str(path))
    args = ["generate", "-m", str(f32_copy), "--prompt-ids", "1,2"] + ([] if progress else ["--json"])
    proc = run_cli(args, ranks=2, timeout=TIMEOUT, env={"TERM": "xterm" if progress else "dumb"})
    assert_clean_failure(proc, message)


def test_token_id_outside_vocabulary(f32_copy):
    proc = run_cli(["generate", "-m", str(f32_copy), "--prompt-ids", "1,384"], ranks=2, timeout=TIMEOUT)
    assert_clean_failure(proc, "--prompt-ids: token id 384 is outside the vocabulary [0, 384)")


def test_moe_model_refused(f32_copy):
    shutil.copy(CONFIGS_DIR / "Qwen3-30B-A3B" / "config.json", f32_copy / "config.json")
    proc = run_cli(["generate", "-m", str(f32_copy), "--prompt-ids", "1"], ranks=2, timeout=TIMEOUT)
    assert_clean_failure(proc, "model_type 'qwen3_moe' is not supported")


def test_text_prompt_without_tokenizer(f32_copy):
    proc = run_cli(["generate", "-m", str(f32_copy), "-p", "hello"], ranks=2, timeout=TIMEOUT)
    assert_clean_failure(proc, "tokenizer.json: file not found")


def test_bad_flag_reported_once(f32_copy):
    proc = run_cli(
        ["generate", "-m", str(f32_copy), "--prompt-ids", "1", "--attention", "fast"], ranks=2, timeout=TIMEOUT
    )
    assert proc.returncode == 2
    assert proc.stderr.count("invalid choice: 'fast'") == 1, proc.stderr


def test_prompt_ids_need_no_tokenizer(f32_copy):
    proc = run_cli(
        ["generate", "-m", str(f32_copy), "--prompt-ids", "1,2,3", "-n", "4", "--json"], ranks=2, timeout=TIMEOUT
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    for key in (
        "prompt_ids",
        "output_ids",
        "text",
        "ranks",
        "attention",
        "load_s",
        "prefill_tokens",
        "prefill_s",
        "prefill_tokens_per_s",
        "decode_tokens",
        "decode_s",
        "decode_tokens_per_s",
        "peak_rss_mb",
    ):
        assert key in result
    assert result["prompt_ids"] == [1, 2, 3] and len(result["output_ids"]) == 4 and result["text"] is None


@pytest.mark.parametrize("ranks,flag", [(1, None), (2, None), (2, "1")])
def test_threads_default_to_node_cores_over_local_ranks(f32_copy, ranks, flag):
    import os

    args = ["generate", "-m", str(f32_copy), "--prompt-ids", "1,2", "-n", "2", "--json"]
    proc = run_cli(args + (["--threads", flag] if flag else []), ranks=ranks, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    expect = int(flag) if flag else max(1, len(os.sched_getaffinity(0)) // ranks)
    assert json.loads(proc.stdout)["threads_per_rank"] == expect


def _run_generate(directory, *extra, ranks=2):
    return run_cli(
        ["generate", "-m", str(directory), "--prompt-ids", "1,2", "-n", "2", *extra], ranks=ranks, timeout=TIMEOUT
    )


def test_config_missing_or_malformed(f32_copy):
    (f32_copy / "config.json").write_text("{ this is not json")
    assert_clean_failure(_run_generate(f32_copy), f"{f32_copy / 'config.json'}: not valid JSON")
    (f32_copy / "config.json").unlink()
    assert_clean_failure(_run_generate(f32_copy), f"{f32_copy / 'config.json'}: file not found")


@pytest.mark.parametrize("damage", ["truncated", "corrupt-header"])
def test_damaged_safetensors_file(f32_copy, damage):
    path = f32_copy / "model.safetensors"
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
        message = "extends past the end of the file (truncated?)"
    else:
        path.write_bytes(data[:8] + b"#" * 16 + data[24:])
        message = f"{path}: not a safetensors file (bad header)"
    assert_clean_failure(_run_generate(f32_copy), message)


def test_index_names_a_tensor_its_file_lacks(checkpoints, tmp_path):
    import ml_dtypes  # noqa: F401  (numpy's bfloat16, for safetensors.numpy)

    directory = tmp_path / "model"
    shutil.copytree(checkpoints["gqa4-sharded-bf16"][0], directory)
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    name = "model.layers.4.self_attn.o_proj.weight"
    file = directory / index["weight_map"][name]
    tensors = load_file(str(file))
    del tensors[name]
    save_file(tensors, str(file))
    assert_clean_failure(_run_generate(directory), f"tensor {name} is missing from the checkpoint")


def test_wrong_dtype_is_named(f32_copy):
    path = f32_copy / "model.safetensors"
    tensors = load_file(str(path))
    name = "model.layers.0.self_attn.q_proj.weight"
    tensors[name] = tensors[name].astype(np.int32)
    save_file(tensors, str(path))
    assert_clean_failure(_run_generate(f32_copy), f"tensor {name} has dtype I32; supported: BF16, F16, F32")


def test_only_pickle_weights_are_refused_unread(f32_copy):
    (f32_copy / "model.safetensors").unlink()
    sentinel = f32_copy / "unpickled"
    import pickle

    class Bomb:  # unpickling this would create the sentinel file
        def __reduce__(self):
            return (open, (str(sentinel), "w"))

    (f32_copy / "pytorch_model.bin").write_bytes(pickle.dumps(Bomb()))
    assert_clean_failure(_run_generate(f32_copy), "pickle checkpoints such as pytorch_model.bin are never loaded")
    assert not sentinel.exists()


def test_prompt_longer_than_the_context(f32_copy):
    ids = ",".join(["5"] * 300)  # max_position_embeddings is 256
    proc = run_cli(["generate", "-m", str(f32_copy), "--prompt-ids", ids], ranks=2, timeout=TIMEOUT)
    assert_clean_failure(
        proc, "the prompt (300 tokens) + -n 128 = 428 positions exceed the model's max_position_embeddings (256)"
    )


def test_unreadable_tokenizer(f32_copy):
    (f32_copy / "tokenizer.json").write_text('{"version": "1.0", "model": 42}')
    proc = run_cli(["generate", "-m", str(f32_copy), "-p", "hello"], ranks=2, timeout=TIMEOUT)
    assert_clean_failure(proc, f"{f32_copy / 'tokenizer.json'}: cannot be read as a tokenizer")


@pytest.mark.parametrize("change", ["tensor", "missing-file"])
def test_ranks_seeing_different_checkpoints_stop(f32_copy, tmp_path, change):
    """Two ranks started on different directories (MPMD launch), as two nodes with different copies
    would be: stopped before loading, naming the file, the ranks and their hosts."""
    import subprocess
    import sys

    other = tmp_path / "other"
    shutil.copytree(f32_copy, other)
    if change == "tensor":
        tensors = load_file(str(other / "model.safetensors"))
        tensors["model.norm.weight"] = tensors["model.norm.weight"][:-1].copy()
        save_file(tensors, str(other / "model.safetensors"))
        message = "model.safetensors is"
    else:
        (other / "config.json").unlink()
        (other / "config.json").symlink_to(f32_copy / "config.json")  # same config, one file more
        (other / "model-extra.safetensors").write_bytes((other / "model.safetensors").read_bytes())
        message = "model-extra.safetensors exists on rank 1 only"
    rank = [sys.executable, "-m", "qwen3_mpi", "generate", "--prompt-ids", "1,2", "-n", "2", "-m"]
    cmd = ["mpirun", "-n", "1", *rank, str(f32_copy), ":", "-n", "1", *rank, str(other)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    assert_clean_failure(proc, "rank 1 (host ")
    assert message in proc.stderr and "see different checkpoints" in proc.stderr
