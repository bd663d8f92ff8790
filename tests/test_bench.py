"""The benchmarks run and report (on a tiny checkpoint; no timing is asserted)."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, run_cli

from qwen3_mpi.options import COMBINE_KINDS

pytestmark = pytest.mark.slow  # outside the fast subset: python -m pytest -m "not slow"


def test_bench_command_writes_json_lines(checkpoints, tmp_path):
    directory, _ = checkpoints["gqa4-sharded-bf16"]
    out = tmp_path / "results.jsonl"
    proc = run_cli(
        [
            "bench",
            "-m",
            str(directory),
            "--prompt-len",
            "11",
            "--gen-len",
            "4",
            "--iters",
            "2",
            "--warmup",
            "1",
            "-o",
            str(out),
        ],
        ranks=3,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["attention"] for r in rows] == ["standard", "streaming"]
    for r in rows:
        assert r["ranks"] == 3 and r["prompt_len"] == 11 and r["gen_len"] == 4
        assert len(r["decode_tokens_per_s_all"]) == 2 and r["decode_tokens_per_s"] > 0
        assert r["weight_bytes_per_token"] > 0


def test_run_mpi_benchmark_script_table_and_plots(checkpoints, tmp_path):
    directory, _ = checkpoints["untied-gqa1-f32"]
    env = dict(
        os.environ,
        NUM_PROCS="1 2",
        MODEL=str(directory),
        PROMPT_LEN="6 12",
        GEN_LEN="3",
        ITERS="1",
        ATTENTION="standard,streaming",
        OUT=str(tmp_path),
    )
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "run_mpi_benchmark.sh")], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 8  # 2 rank counts x 2 prompts x 2 kernels
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 8  # header and one row each
    for name in ("prefill_vs_prompt_len", "decode_vs_prompt_len", "prefill_vs_ranks", "decode_vs_ranks"):
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_attention_micro_benchmark(tmp_path):
    out = tmp_path / "attention.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "attention.py"),
            "--heads",
            "4",
            "--kv-heads",
            "2",
            "--head-dim",
            "16",
            "--positions",
            "16",
            "300",
            "--queries",
            "1",
            "9",
            "--kv-dtype",
            "float32",
            "bfloat16",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr  # the script also checks that both kernels agree
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 16  # 2 lengths x 2 query counts x 2 kernels x 2 cache types
    for dtype in ("float32", "bfloat16"):
        ours = [r for r in rows if r["kv_dtype"] == dtype]
        standard = {r["positions"]: r["working_memory_bytes"] for r in ours if r["kernel"] == "standard"}
        streaming = {r["positions"]: r["working_memory_bytes"] for r in ours if r["kernel"] == "streaming"}
        assert standard[300] > standard[16] and streaming[300] == streaming[16]  # flat in the number of positions


def test_combine_benchmark():
    proc = subprocess.run(
        ["mpirun", "-n", "2", sys.executable, str(ROOT / "bench" / "combine.py"), "--iters", "40"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert {(r["method"], r["tokens"]) for r in rows} == {(m, t) for m in COMBINE_KINDS for t in (1, 128)}


FAKE_LLAMA_BENCH = '''#!{python}
"""Stands in for llama.cpp's llama-bench: checks the arguments compare.py passes, prints its JSON."""
import json, sys
a = dict(zip(sys.argv[1::2], sys.argv[2::2]))
assert a["-m"] == {gguf!r} and a["-t"] == "2" and a["-o"] == "json", a
p, n, r = int(a["-p"]), int(a["-n"]), int(a["-r"])
info = {{"build_commit": "fake", "build_number": 1, "cpu_info": "test"}}
tests = [dict(info, n_prompt=p, n_gen=0, samples_ts=[300.0 + i for i in range(r)])] if p else []
tests.append(dict(info, n_prompt=0, n_gen=n, samples_ts=[20.0] * r))
print(json.dumps(tests))
'''


def test_compare_side_by_side_with_llama_cpp(checkpoints, tmp_path):
    """bench/compare.py end to end, one round, with a stand-in for llama-bench (llama.cpp is not built
    here): every engine's row, llama.cpp's figures as its llama-bench reports them, the paired bursts of
    qwen3_mpi at 1 and 2 ranks and of llama.cpp."""
    directory, _ = checkpoints["gqa4-sharded-bf16"]
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"")
    fake = tmp_path / "llama-bench"
    fake.write_text(FAKE_LLAMA_BENCH.format(python=sys.executable, gguf=str(gguf)))
    fake.chmod(0o755)
    out = tmp_path / "compare.json"
    args = ["-m", str(directory), "--prompt-len", "12", "--gen-len", "5", "--rounds", "1", "--iters", "2"]
    args += ["--threads", "2", "--read-gib", "0.125", "--llama-bench", str(fake), "--gguf", str(gguf), "-o", str(out)]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "compare.py"), *args], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr
    rows = {line.split(" | ")[0][2:]: line for line in proc.stdout.splitlines() if line.startswith("| ")}
    engines = ["transformers bfloat16", "transformers float32", "llama.cpp bf16", "qwen3_mpi N=1", "qwen3_mpi N=2"]
    assert list(rows) == ["engine", *engines]  # the header, then a row each
    assert rows["llama.cpp bf16"].startswith("| llama.cpp bf16 | 300.5 | 20.00 |")  # median of 300, 301
    assert "llama.cpp bf16 decode paired with reads (12 bursts" in proc.stdout
    result = json.loads(out.read_text())
    summary, paired = result["summary"], result["rounds"][0]["paired"]
    for name in engines:
        assert summary[name]["decode_tokens_per_s"] > 0 and len(summary[name]["decode_pct_of_roofline"]) == 1
    assert (
        summary["transformers float32"]["weight_bytes_per_token"]
        == 2 * summary["llama.cpp bf16"]["weight_bytes_per_token"]
    )
    one, two = paired["N=1"], paired["N=2"]
    assert len(one["decode_pct_of_read_paired"]) == len(one["llama_cpp_decode_pct_of_read_paired"]) == 12
    assert (one["ranks"], two["ranks"], len(two["decode_pct_of_read_paired"])) == (1, 2, 12)
    assert "llama_cpp_decode_pct_of_read_paired" not in two  # llama.cpp runs beside the single rank only
    assert all(0 < v < 200 for v in one["decode_pct_of_read_paired"] + two["decode_pct_of_read_paired"])
    assert "qwen3_mpi N=2 decode paired with reads (12 bursts" in proc.stdout
