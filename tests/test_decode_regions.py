"""A decode step in parallel regions (kernels/decode.py) against the same step one kernel call at a time:
the same tasks, so the same logits up to the order of fastmath sums (LLVM may vectorize a task inlined
into a region differently: differences of ~1e-6 seen); and a region whose threads cannot all run ends
with an error instead of hanging."""

from __future__ import annotations

import subprocess
import sys

import numba
import numpy as np
import pytest
from conftest import PROMPT_IDS, ROOT

from qwen3_mpi.comm import Comm
from qwen3_mpi.config import Qwen3Config
from qwen3_mpi.kernels.decode import FAILED, PATIENCE, barrier, barrier_state
from qwen3_mpi.model import Model, ShardLayout, load_shard
from qwen3_mpi.options import RunOptions
from qwen3_mpi.weights import Checkpoint

pytestmark = pytest.mark.slow  # outside the fast subset: python -m pytest -m "not slow"

LONG = 1030  # past attention.SPLIT (1,024) cached positions: streaming decode splits the context in spans


def _model(directory, attention: str, kv_dtype: str, context: int) -> Model:
    config = Qwen3Config.from_hf(directory)
    layout = ShardLayout.for_rank(config, 0, 1)
    weights = load_shard(Checkpoint(directory), config, layout)
    options = RunOptions(attention=attention, kv_cache_dtype=kv_dtype)
    return Model(config, layout, weights, Comm(), options, max_context=context, max_tokens=64)


def _decode(model: Model, prompt: list[int]) -> np.ndarray:
    """Logits of a prefill, six greedy decode steps and a step of three tokens (still matvec-sized)."""
    rows, pos = [], 0
    for start in range(0, len(prompt), 64):
        chunk = np.array(prompt[start : start + 64], np.int64)
        rows.append(model.forward(chunk, pos).copy())
        pos += len(chunk)
    for _ in range(6):
        rows.append(model.forward(np.array([int(np.argmax(rows[-1]))]), pos).copy())
        pos += 1
    rows.append(model.forward(np.array([5, 6, 7]), pos).copy())
    return np.array(rows)


@pytest.mark.parametrize(
    "name, attention, kv_dtype",
    [
        ("tied-gqa2-bf16", "streaming", "float32"),  # bf16 weights: the tile layout's products; FFN 160:
        # each gate_up_proj task holds the gate and the up of the same columns (SiLU without a barrier)
        ("untied-gqa1-f32", "streaming", "float32"),  # float32 weights: the row layout's
        ("gqa4-sharded-bf16", "streaming", "float32"),  # FFN 200: SiLU after a barrier
        ("gqa4-sharded-bf16", "standard", "float32"),
        ("tied-gqa2-bf16", "streaming", "bfloat16"),  # a bf16 KV cache
    ],
)
def test_regions_give_the_logits_of_one_call_at_a_time(checkpoints, name, attention, kv_dtype):
    directory, _ = checkpoints[name]
    prompt = list(PROMPT_IDS) + [int(t) for t in np.random.default_rng(1).integers(0, 500, LONG - len(PROMPT_IDS))]
    model = _model(directory, attention, kv_dtype, LONG + 16)
    assert model.threads == numba.get_num_threads() >= 2 and model.regions and model.layer_stacks is not None
    results = {}
    for mode in ("calls", "halves", "whole"):  # one call at a time; a region per half-layer; every layer in one
        model.regions = mode != "calls"
        stacks, model.layer_stacks = model.layer_stacks, None if mode == "halves" else model.layer_stacks
        results[mode] = {"short": _decode(model, PROMPT_IDS), "long": _decode(model, prompt)}
        model.layer_stacks = stacks
    for mode in ("halves", "whole"):
        for length in ("short", "long"):
            np.testing.assert_allclose(results[mode][length], results["calls"][length], rtol=1e-5, atol=1e-5)
    assert np.isfinite(results["calls"]["long"]).all()


@numba.njit
def _lonely_barrier(sync):
    barrier(sync, 2)  # the second thread never comes


def test_a_barrier_waiting_for_a_thread_that_never_comes_gives_up():
    sync = barrier_state()
    sync[PATIENCE] = 10_000_000  # cycles: a few ms
    _lonely_barrier(sync)
    assert sync[FAILED] == 1


def test_a_region_whose_threads_cannot_all_run_raises(checkpoints):
    directory, _ = checkpoints["tied-gqa2-bf16"]
    model = _model(directory, "streaming", "float32", 64)
    model.forward(np.array(PROMPT_IDS, np.int64), 0)
    model.sync[PATIENCE] = 10_000_000
    model.threads = numba.get_num_threads() + 1  # more region workers than threads: two share one
    with pytest.raises(RuntimeError, match="did not all arrive at a barrier"):
        model.forward(np.array([5]), len(PROMPT_IDS))


NODE_SCRIPT = """
import sys, time
import numba, numpy as np
import qwen3_mpi.model.layer
from qwen3_mpi.comm import Comm
from qwen3_mpi.config import Qwen3Config
from qwen3_mpi.kernels.decode import PATIENCE
from qwen3_mpi.model import Model, ShardLayout, load_shard
from qwen3_mpi.options import RunOptions
from qwen3_mpi.weights import Checkpoint

numba.set_num_threads(1)
directory, late, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
comm = Comm()
config = Qwen3Config.from_hf(directory)
layout = ShardLayout.for_rank(config, comm.rank, comm.size)
model = Model(config, layout, load_shard(Checkpoint(directory), config, layout), comm,
              RunOptions(attention="streaming"), max_context=64, max_tokens=16)
lines = [f"one region {model.regions and model.node_region}"]
model.forward(np.array([3, 17, 101, 7, 250, 42]), 0)
model.forward(np.array([5]), 6)  # compiled, and run once in lockstep
comm.barrier()
if comm.rank == 0:
    model.node_sync[PATIENCE] = 100_000_000  # cycles: well under a second
comm.barrier()
if comm.rank == late:  # this rank enters the region 3 s after the other
    region = qwen3_mpi.model.layer.layers_region
    qwen3_mpi.model.layer.layers_region = lambda *args: (time.sleep(3), region(*args))
try:
    model.forward(np.array([9]), 7)
    lines.append("no error")
except RuntimeError as e:
    lines.append(f"error {e}")
with open(f"{out}.{comm.rank}", "w") as f:
    f.write("\\n".join(lines))
"""


def test_a_rank_that_never_reaches_the_node_region_barrier_ends_it_with_an_error(checkpoints, tmp_path):
    """Two ranks of one node run a decode step's layers in one region each and meet at its barriers; when
    one of them comes too late, the other's region gives up and both raise instead of hanging."""
    directory, _ = checkpoints["tied-gqa2-bf16"]
    script = tmp_path / "late_rank.py"
    script.write_text(NODE_SCRIPT)
    proc = subprocess.run(
        ["mpirun", "-n", "2", sys.executable, str(script), str(directory), "1", str(tmp_path / "rank")],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    message = "the 2 threads of the node's 2 ranks did not all arrive at a decode region's barrier in time"
    for rank in range(2):
        lines = (tmp_path / f"rank.{rank}").read_text().splitlines()
        assert lines[0] == "one region True" and lines[1].startswith(f"error {message}"), (rank, lines)
