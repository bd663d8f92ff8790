"""Time the ways of combining per-rank partial sums (run under mpirun -n N): shared, allgather, allreduce.

    mpirun -n 2 python bench/combine.py [--hidden 1024] [--tokens 1 128] [--iters 2000] [--threads N]
Prints one JSON line per (method, tokens) from rank 0: microseconds per combine, median of 5 rounds.
"""

import argparse
import json
import statistics

import numpy as np

from qwen3_mpi.comm import Comm
from qwen3_mpi.model.layer import combine
from qwen3_mpi.options import COMBINE_KINDS
from qwen3_mpi.session import set_threads


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 128])
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--threads", type=int, help="threads per rank (default: as qwen3-mpi chooses)")
    args = parser.parse_args()
    comms = {method: Comm(combine=method) for method in COMBINE_KINDS}
    comm = comms["shared"]
    set_threads(comm, args.threads)  # by default as qwen3-mpi does: the node's cores shared among its ranks
    for T in args.tokens:
        iters = max(20, args.iters // T)
        for method in COMBINE_KINDS:
            x = np.zeros((T, args.hidden), np.float32)
            part = np.random.default_rng(comm.rank).standard_normal((T, args.hidden), dtype=np.float32)
            h, norm = np.zeros_like(x), np.ones(args.hidden, np.float32)
            rounds = []
            for _ in range(6):
                comm.barrier()
                t0 = comm.wtime()
                for _ in range(iters):
                    combine(comms[method], x, part, h, norm, np.float32(1e-6))
                rounds.append((comm.wtime() - t0) / iters * 1e6)
            if comm.is_root:
                print(
                    json.dumps(
                        {
                            "ranks": comm.size,
                            "method": method,
                            "tokens": T,
                            "hidden": args.hidden,
                            "us_per_combine": statistics.median(rounds[1:]),
                        }
                    )
                )


if __name__ == "__main__":
    main()
