"""The first minute as a new user meets it: --version, one-line usage errors, prompts from files and
stdin, a hub id, a context that cannot fit, quiet --json on stderr, the oversubscription warning,
Ctrl-C, and the progress of the demo write, the load and the compile."""

import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, SMALL_DEMO_CONFIG, run_cli

TIMEOUT = 180


def test_version():
    from qwen3_mpi import __version__

    proc = run_cli(["--version"], timeout=TIMEOUT)
    assert proc.returncode == 0 and proc.stdout.strip() == f"qwen3-mpi {__version__}"


@pytest.mark.parametrize(
    ("args", "usage", "error"),
    [
        (["generate", "-p", "hi", "--bogus"], "usage: qwen3-mpi generate ", "unrecognized arguments: --bogus"),
        (["generate", "-p", "hi", "--attention", "fast"], "usage: qwen3-mpi generate ", "invalid choice: 'fast'"),
        (["chat", "--top-k", "x"], "usage: qwen3-mpi chat ", "argument --top-k: invalid int value"),
        (["genrate"], "usage: qwen3-mpi {generate,chat,logits,bench}", "invalid choice: 'genrate'"),
    ],
)
def test_a_usage_error_is_the_subcommands_one_line_usage_and_the_error(args, usage, error):
    proc = run_cli(args, ranks=2, timeout=TIMEOUT)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 3, proc.stderr  # usage, error, where the full text is; once, from rank 0
    assert lines[0].startswith(usage) and error in lines[1] and "--help" in lines[2]


def test_help_keeps_the_full_text():
    proc = run_cli(["generate", "--help"], timeout=TIMEOUT)
    assert proc.returncode == 0
    for flag in ("--prompt", "--file", "--prompt-ids", "--max-context", "--kv-cache-dtype", "--json", "standard input"):
        assert flag in proc.stdout


def test_a_hub_id_is_not_downloaded_and_the_error_says_how(tmp_path):
    proc = run_cli(["generate", "-m", "Qwen/Qwen3-0.6B", "-p", "hi"], ranks=2, timeout=TIMEOUT)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("hf download Qwen/Qwen3-0.6B --local-dir") == 1, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def _json(proc) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_prompt_from_file_stdin_and_flag_agree(small_demo, tmp_path):
    base = ["generate", "-m", str(small_demo), "-n", "3", "--json"]
    text = "Tell me about the sea\n"
    (tmp_path / "prompt.txt").write_text(text)
    flag = _json(run_cli([*base, "-p", text], ranks=2, timeout=TIMEOUT))
    from_file = _json(run_cli([*base, "-f", str(tmp_path / "prompt.txt")], ranks=2, timeout=TIMEOUT))
    cmd = [sys.executable, "-m", "qwen3_mpi", *base]
    for extra in ([], ["-f", "-"]):
        proc = subprocess.run([*cmd, *extra], input=text, capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT)
        assert _json(proc)["prompt_ids"] == flag["prompt_ids"]
    assert from_file["prompt_ids"] == flag["prompt_ids"] and from_file["output_ids"] == flag["output_ids"]
    missing = run_cli([*base, "-f", str(tmp_path / "nope.txt")], ranks=2, timeout=TIMEOUT)
    assert missing.returncode == 1 and missing.stderr.count("--file ") == 1 and "nope.txt" in missing.stderr


def test_prompt_and_new_tokens_must_fit_the_context(small_demo):
    base = ["generate", "-m", str(small_demo), "--prompt-ids", "1,2,3,4"]
    too_long = run_cli([*base, "-n", "50000"], ranks=2, timeout=TIMEOUT)
    assert too_long.returncode == 1
    message = "the prompt (4 tokens) + -n 50000 = 50004 positions exceed the model's max_position_embeddings (40960)"
    assert too_long.stderr.count(message) == 1, too_long.stderr
    small = run_cli([*base, "-n", "10", "--max-context", "8"], ranks=2, timeout=TIMEOUT)
    assert small.returncode == 1
    assert small.stderr.count("the prompt (4 tokens) + -n 10 = 14 positions do not fit --max-context 8") == 1
    fits = run_cli([*base, "-n", "6"], ranks=2, timeout=TIMEOUT)  # the cache: prompt + new tokens
    assert fits.returncode == 0, fits.stderr
    assert "KV cache 10 positions, float32" in fits.stderr
    assert _json(run_cli([*base, "-n", "6", "--json"], timeout=TIMEOUT))["kv_cache_positions"] == 10


def test_json_keeps_stderr_quiet_and_chat_has_generates_speed_fields(small_demo):
    gen = run_cli(["generate", "-m", str(small_demo), "-p", "Hi", "-n", "4", "--json"], ranks=2, timeout=TIMEOUT)
    assert gen.stderr == "" and gen.returncode == 0
    speed = {k for k in json.loads(gen.stdout) if k.startswith(("prefill", "decode", "collective"))}
    assert speed >= {"prefill_tokens_per_s", "decode_tokens_per_s", "decode_s", "prefill_s", "collective_share"}
    chat = subprocess.run(
        ["mpirun", "-n", "2", sys.executable, "-m", "qwen3_mpi", "chat", "-m", str(small_demo), "-n", "4", "--json"],
        input="Hi\nAnd again\n",
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=ROOT,
    )
    assert chat.returncode == 0 and chat.stderr == "", chat.stderr
    turns = [json.loads(line) for line in chat.stdout.splitlines()]
    assert len(turns) == 2 and all(speed <= set(t) and "finish_reason" in t for t in turns)


def test_more_threads_than_cores_warns_once(small_demo):
    cores = len(os.sched_getaffinity(0))
    args = ["generate", "-m", str(small_demo), "--prompt-ids", "1,2", "-n", "2", "--threads", str(cores)]
    proc = run_cli(args, ranks=2, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    warning = f"warning: 2 rank(s) x {cores} thread(s) on "
    assert proc.stderr.count(warning) == 1 and f"which has {cores} cores" in proc.stderr, proc.stderr
    fits = run_cli(["generate", "-m", str(small_demo), "--prompt-ids", "1,2", "-n", "2"], ranks=2, timeout=TIMEOUT)
    assert "warning:" not in fits.stderr
    quiet = run_cli([*args, "--json"], ranks=2, timeout=TIMEOUT)
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_ctrl_c_stops_generation_cleanly(small_demo, reap):
    """SIGINT to the launcher (as a terminal's Ctrl-C sends it): the text so far, the stats line, exit 130,
    no MPI abort from any rank."""
    args = ["generate", "-m", str(small_demo), "-p", "Hi", "-n", "30000", "--max-context", "30050", "--ignore-eos"]
    cmd = ["mpirun", "-n", "2", sys.executable, "-m", "qwen3_mpi", *args, "--temperature", "0"]
    proc = reap(
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, bufsize=0),
        "30050",
    )
    first = proc.stdout.read(1)  # generation has started
    assert first, proc.stderr.read()
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 130, err
    assert len(first + out) > 20
    stats = [line for line in err.splitlines() if "ms/token" in line]
    assert len(stats) == 1 and "finish: interrupted" in stats[0], err
    assert "Abort" not in err and "BAD TERMINATION" not in err and "Traceback" not in err, err


def test_spinner_says_what_it_waits_for_and_how_long_it_took(monkeypatch):
    from qwen3_mpi import progress

    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    with progress.spinner(True, "compiling kernels", delay=0.05):
        time.sleep(0.5)
    assert re.search(r"compiling kernels [|/\\-] 0 s", err.getvalue()), err.getvalue()
    assert re.search(r"compiling kernels: done in \d+ s", err.getvalue())
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    with progress.spinner(True, "compiling kernels", delay=5):  # quick: nothing shown
        pass
    assert err.getvalue() == ""


def test_demo_write_reports_every_byte(tmp_path):
    from qwen3_mpi import demo

    reports = []
    path = demo.ensure_demo(SMALL_DEMO_CONFIG, tmp_path / "demo", on_write=lambda n, total: reports.append((n, total)))
    header = (path / "model.safetensors").read_bytes()
    totals = {total for _, total in reports}
    tensors = len(header) - 8 - int.from_bytes(header[:8], "little")
    assert totals == {tensors} and sum(n for n, _ in reports) == tensors


def test_loading_bar_has_its_true_total_from_the_start(small_demo):
    proc = run_cli(
        ["generate", "-m", str(small_demo), "--prompt-ids", "1,2", "-n", "2"], ranks=3, env={"TERM": "xterm"}
    )
    assert proc.returncode == 0, proc.stderr
    frames = [f for f in proc.stderr.replace("\r", "\n").splitlines() if f.startswith("loading weights")]
    totals = {re.search(r"/\s*([\d.]+\s*[kMG]?)", f).group(1) for f in frames}
    assert len(frames) >= 2 and len(totals) == 1, frames
