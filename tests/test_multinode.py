"""Ranks on two hosts: two Linux network namespaces joined by a bridge, so that MPI sees two nodes and
talks TCP between them (no shared memory), launched through hydra's ssh-style launcher. Needs root and
iproute2; skipped otherwise, with the reason."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import GREEDY_TOKENS, PROMPT_IDS, ROOT

SUBNET = f"10.77.{os.getpid() % 200 + 20}"
LAUNCHER = """#!/bin/sh
# called like ssh: [options] host command; host {subnet}.N runs in network namespace {prefix}N
while [ "${{1#-}}" != "$1" ]; do shift; done
host=$1; shift
exec ip netns exec "{prefix}${{host##*.}}" sh -c "$*"
"""


def sh(*args):
    subprocess.run(args, check=True, capture_output=True)


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory):
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to create network namespaces")
    prefix = f"q3{os.getpid() % 100000}n"
    bridge = f"q3{os.getpid() % 100000}br"
    try:
        try:
            sh("ip", "link", "add", bridge, "type", "bridge")
            sh("ip", "addr", "add", f"{SUBNET}.254/24", "dev", bridge)
            sh("ip", "link", "set", bridge, "up")
            for i in (1, 2):
                ns, inside, outside = f"{prefix}{i}", f"{prefix}v{i}", f"{prefix}b{i}"
                sh("ip", "netns", "add", ns)
                sh("ip", "link", "add", inside, "type", "veth", "peer", "name", outside)
                sh("ip", "link", "set", inside, "netns", ns)
                sh("ip", "link", "set", outside, "master", bridge)
                sh("ip", "link", "set", outside, "up")
                sh("ip", "-n", ns, "addr", "add", f"{SUBNET}.{i}/24", "dev", inside)
                sh("ip", "-n", ns, "link", "set", inside, "up")
                sh("ip", "-n", ns, "link", "set", "lo", "up")
                sh("ip", "-n", ns, "route", "add", "default", "via", f"{SUBNET}.254")
        except subprocess.CalledProcessError as e:
            pytest.skip(f"cannot build the two hosts here ({' '.join(e.cmd)}): {e.stderr.decode().strip()}")
        launcher = tmp_path_factory.mktemp("launcher") / "netns-launch"
        launcher.write_text(LAUNCHER.format(subnet=SUBNET, prefix=prefix))
        launcher.chmod(0o755)
        yield ["mpirun", "-iface", bridge, "-launcher", "ssh", "-launcher-exec", str(launcher)]
    finally:
        for i in (1, 2):
            subprocess.run(["ip", "netns", "del", f"{prefix}{i}"], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def run(mpirun, per_host, args):
    hosts = f"{SUBNET}.1:{per_host},{SUBNET}.2:{per_host}"
    cmd = [*mpirun, "-hosts", hosts, "-n", str(2 * per_host), sys.executable, "-m", "qwen3_mpi", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.mark.parametrize("per_host", [1, 2])
def test_two_hosts_match_transformers(two_hosts, checkpoints, tmp_path, per_host):
    directory, ref = checkpoints["gqa4-sharded-bf16"]
    ids = ",".join(map(str, PROMPT_IDS))
    out = tmp_path / "logits.npy"
    # the logits command also checks that all ranks, on both hosts, hold bit-identical hidden states
    proc = run(two_hosts, per_host, ["logits", "-m", str(directory), "--prompt-ids", ids, "-o", str(out)])
    assert proc.returncode == 0, proc.stderr
    assert np.abs(np.load(out) - ref["logits"]).max() <= 1e-3
    proc = run(
        two_hosts,
        per_host,
        [
            "generate",
            "-m",
            str(directory),
            "--prompt-ids",
            ids,
            "-n",
            str(GREEDY_TOKENS),
            "--temperature",
            "0",
            "--ignore-eos",
            "--json",
        ],
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["output_ids"] == ref["greedy"] and result["ranks"] == 2 * per_host
