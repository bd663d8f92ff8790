"""Faults never hang: a failing rank, a killed rank, Ctrl-C on rank 0 end the whole job within seconds."""

import signal
import subprocess
import sys
import time

import psutil
import pytest
from conftest import ROOT, SMALL_DEMO_CONFIG, rank_processes

pytestmark = pytest.mark.slow  # outside the fast subset: python -m pytest -m "not slow"

LIMIT = 30  # seconds from the fault to the end of the job
STARTUP = 240  # seconds for start-up (a fresh checkout compiles the kernels first) and the fault


@pytest.fixture(scope="module")
def long_context_demo(tmp_path_factory):
    from qwen3_mpi import demo

    return demo.ensure_demo(SMALL_DEMO_CONFIG, tmp_path_factory.mktemp("faults") / "model")


def start(model, ranks, env=None):
    cmd = ["mpirun", "-n", str(ranks), sys.executable, "-m", "qwen3_mpi", "generate", "-m", str(model)]
    cmd += ["--prompt-ids", "1,2,3", "-n", "30000", "--ignore-eos", "--json"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)


def finish(proc, since):
    try:
        out, err = proc.communicate(timeout=LIMIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"the job did not end within {LIMIT} s")
    return out, err, time.time() - since


@pytest.mark.parametrize(("ranks", "failing"), [(2, 1), (3, 2), (3, 0)])
def test_an_exception_on_any_rank_ends_the_job(long_context_demo, ranks, failing, reap):
    import os

    proc = start(long_context_demo, ranks, env=dict(os.environ, QWEN3_MPI_FAULT=f"{failing}:5"))
    reap(proc, str(long_context_demo))
    try:
        out, err = proc.communicate(timeout=STARTUP)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"the job did not end within {STARTUP} s")
    assert proc.returncode != 0
    message = f"internal error on rank {failing}: RuntimeError: injected fault (QWEN3_MPI_FAULT) on rank {failing}"
    assert err.count(message) == 1, err  # once (then its traceback), and no other rank reports an error
    assert err.count("internal error on rank") == 1 and out == ""


@pytest.mark.parametrize("victim", [0, 1])
def test_a_killed_rank_ends_the_job_within_seconds(long_context_demo, victim, reap):
    proc = reap(start(long_context_demo, 2), str(long_context_demo))
    ranks = rank_processes(proc, 2)
    time.sleep(3)  # well into the generation
    assert proc.poll() is None
    t0 = time.time()
    ranks[victim].kill()
    _, _, took = finish(proc, t0)
    assert proc.returncode != 0 and took < LIMIT


@pytest.mark.parametrize("target", ["rank 0", "mpirun"])
def test_ctrl_c_ends_every_rank(long_context_demo, target, reap):
    proc = reap(start(long_context_demo, 3), str(long_context_demo))
    ranks = rank_processes(proc, 3)
    time.sleep(3)
    t0 = time.time()
    (ranks[0] if target == "rank 0" else psutil.Process(proc.pid)).send_signal(signal.SIGINT)
    _, _, took = finish(proc, t0)
    assert proc.returncode != 0 and took < LIMIT
    _, alive = psutil.wait_procs(list(ranks.values()), timeout=10)
    assert not alive, [(p.pid, p.status()) for p in alive]
