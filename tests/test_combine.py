"""combine (model/layer.py) under mpirun: every method, on every rank, gives x + (part_0 + part_1 + ...) summed in rank
order, for row counts below, at and above the shared window's SHARED_ROWS."""

import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT

SCRIPT = textwrap.dedent(
    """
    import hashlib
    import numpy as np
    from qwen3_mpi.comm import SHARED_ROWS, Comm
    from qwen3_mpi.model.layer import combine
    from qwen3_mpi.options import COMBINE_KINDS

    comms = {method: Comm(combine=method) for method in COMBINE_KINDS}
    comm = comms["shared"]
    D, eps = 96, np.float32(1e-6)
    w = np.random.default_rng(99).standard_normal(D, dtype=np.float32)
    for T in (1, 5, SHARED_ROWS, 2 * SHARED_ROWS + 22, 3):
        x0 = np.random.default_rng(T).standard_normal((T, D), dtype=np.float32)
        parts = [np.random.default_rng(1000 * T + r).standard_normal((T, D), dtype=np.float32) for r in range(comm.size)]
        s = parts[0].copy()
        for p in parts[1:]:
            s += p
        want = x0 + s
        ms = np.mean(want.astype(np.float64) ** 2, axis=1, keepdims=True)
        want_out = w * (want / np.sqrt(ms + eps))
        for method in COMBINE_KINDS:
            for repeat in range(3):  # the shared window's two halves in turn
                x, out = x0.copy(), np.empty_like(x0)
                combine(comms[method], x, parts[comm.rank].copy(), out, w, eps)
                digests = comm.allgather(hashlib.sha256(x.tobytes() + out.tobytes()).hexdigest())
                assert len(set(digests)) == 1, (method, T)
                if method != "allreduce":  # MPI's own sum order is not promised
                    assert np.array_equal(x, want), (method, T)
                np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-5)
    if comm.is_root:
        print("ok")
    """
)


@pytest.mark.parametrize("ranks", [2, 3])
def test_every_combine_sums_in_rank_order_on_every_rank(ranks):
    proc = subprocess.run(
        ["mpirun", "-n", str(ranks), sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
