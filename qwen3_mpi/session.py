"""load(model_dir, options, comm) -> Session: the one way to a running engine, for the commands, the
benchmarks and library users. Every rank calls it; every check is agreed on by all ranks (a bad input
on any rank ends every rank with one message from rank 0).

    from qwen3_mpi import RunOptions, load
    session = load("~/models/Qwen3-0.6B", RunOptions(max_context=1024))
    gen = session.generate([9707, 11, 1879], max_new_tokens=16)   # rank 0: a Generation; else None
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from . import progress
from .comm import Comm
from .config import Qwen3Config
from .engine import Engine, Generation
from .errors import UserError
from .model import Model, ShardLayout, load_shard, shard_nbytes
from .options import RunOptions
from .report import say
from .sampling import Sampler, SamplingParams
from .weights import Checkpoint, fingerprint

DEFAULT_CONTEXT = 4096  # KV cache positions when neither the options nor the command size it
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class Session:
    """A loaded model on every rank: its config, this rank's layout and model, the engine that drives
    generation, and the seconds loading took (the slowest rank's, compiling included)."""

    comm: Comm
    options: RunOptions
    model_dir: Path
    config: Qwen3Config
    layout: ShardLayout
    model: Model
    engine: Engine
    threads: int
    load_s: float

    def generate(
        self,
        prompt_ids: list[int] | None,
        max_new_tokens: int,
        params: SamplingParams | None = None,
        seed: int = 0,
        stop_ids: frozenset[int] = frozenset(),
    ) -> Generation | None:
        """Every rank calls it; rank 0's prompt ids and params count, and rank 0 gets the Generation."""
        params = params or SamplingParams()
        sampler = Sampler(params, seed) if self.comm.is_root else None
        return self.engine.generate(prompt_ids, max_new_tokens, params, sampler, set(stop_ids))


def model_dir(model: str | None, comm: Comm, options: RunOptions) -> Path:
    """The checkpoint directory -m names, or the demo checkpoint (written once per node) without -m."""
    if model is not None:
        path = Path(model).expanduser()
        comm.agree(_check_dir, path, model)
        return path
    from .demo import demo_path, ensure_demo

    path = demo_path()
    if not (path / "config.json").exists() and not options.quiet:
        say(comm, f"no -m given: writing the demo checkpoint (Qwen3-0.6B shape, random weights) to {path}")
    # one writer per node (the cache may be node-local), everyone waits for it; rank 0 shows its writing
    with progress.bytes_bar(options.progress and comm.is_root, "writing demo checkpoint") as on_write:
        comm.agree(lambda: _write_demo(ensure_demo, on_write) if comm.local_rank == 0 else None)
    if options.quiet:
        return path
    say(
        comm,
        f"no -m given: using {path}: Qwen3-0.6B architecture with RANDOM weights and a made-up "
        "tokenizer, so the text is meaningless; the speeds are real",
    )
    return path


def _check_dir(path: Path, given: str) -> None:
    if path.is_dir():
        return
    if HUB_ID.match(given) and not path.exists():
        name = given.split("/")[1]
        raise UserError(
            f"--model {given}: no such directory; it looks like a Hugging Face hub id, and qwen3-mpi does not "
            f"download models: run `hf download {given} --local-dir ~/models/{name}` (pip install huggingface_hub), "
            f"then -m ~/models/{name}"
        )
    raise UserError(f"--model {given}: no such directory")


def _write_demo(ensure, on_write):
    try:
        return ensure(on_write=on_write)
    except OSError as e:
        raise UserError(f"cannot write the demo checkpoint: {e}") from None


def read_config(path: Path, comm: Comm) -> Qwen3Config:
    return comm.agree(Qwen3Config.from_hf, path)


def set_threads(comm: Comm, threads: int | None, warn: bool = True) -> int:
    """Threads for numba and BLAS: `threads`, else this node's cores shared among the ranks on it. Rank 0
    warns once when a node runs more threads than it has cores (every thread then waits for another)."""
    # the CPUs this rank may run on, shared with every rank on the node whose CPUs overlap them (all of
    # them unless the launcher pinned ranks to separate cores)
    mine = set(os.sched_getaffinity(0))
    node = comm.node.allgather(mine)
    if threads is None:
        threads = max(1, len(mine) // sum(1 for cpus in node if cpus & mine))
    import numba
    from threadpoolctl import threadpool_limits

    from .kernels.blas import SGEMM

    threads = min(threads, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(threads)
    # with sgemm called from numba's threads, BLAS must not start threads of its own
    threadpool_limits(1 if SGEMM is not None else threads)
    cores = len(set().union(*node))
    hosts = comm.allgather((socket.gethostname(), comm.local_size, threads, cores))
    if comm.is_root and warn:
        for host, ranks, per_rank, n in dict.fromkeys(hosts):
            if ranks * per_rank > n:
                say(
                    comm,
                    f"warning: {ranks} rank(s) x {per_rank} thread(s) on {host}, which has {n} cores: threads "
                    f"share cores and every step waits for them; run at most {n} ranks x threads per node "
                    "(fewer ranks per node, or --threads)",
                )
                break
    return threads


def load(
    path: str | Path,
    options: RunOptions | None = None,
    comm: Comm | None = None,
    *,
    max_tokens: int | None = None,
    config: Qwen3Config | None = None,
) -> Session:
    """Load this rank's shard of the checkpoint at `path` and warm the kernels up (compiling them, or
    loading them from numba's cache). The KV cache holds options.max_context positions (default
    DEFAULT_CONTEXT, at most max_position_embeddings); a forward call takes up to max_tokens tokens
    (default and at most options.prefill_chunk)."""
    options = options or RunOptions()
    comm = comm or Comm(combine=options.combine, profile=options.profile)
    threads = set_threads(comm, options.threads, warn=not options.quiet)
    path = Path(path).expanduser()
    config = config or read_config(path, comm)
    limit = config.max_position_embeddings
    max_context = options.max_context or min(DEFAULT_CONTEXT, limit)
    if max_context > limit:
        comm.agree(_fail, f"--max-context {max_context} exceeds the model's max_position_embeddings ({limit})")
    max_tokens = min(max_tokens or options.prefill_chunk, options.prefill_chunk, max_context)
    comm.agree(_same_checkpoint, comm, path)
    layout = comm.agree(ShardLayout.for_rank, config, comm.rank, comm.size)
    show = comm.bcast(options.progress if comm.is_root else None)
    comm.barrier()
    t0 = comm.wtime()
    weights = comm.agree(_load_weights, comm, path, config, layout, show)
    model = Model(config, layout, weights, comm, options, max_context=max_context, max_tokens=max_tokens)
    message = "compiling kernels (once per machine, about a minute; cached for later runs)"
    with progress.spinner(show and comm.is_root, message):
        model.warmup()
    load_s = comm.max(comm.wtime() - t0)
    return Session(comm, options, path, config, layout, model, Engine(model, comm), threads, load_s)


def _fail(message: str):
    raise UserError(message)


def _same_checkpoint(comm: Comm, path: Path) -> None:
    """Every rank must see the checkpoint rank 0 sees (same files, sizes and headers)."""
    mine = (socket.gethostname(), fingerprint(path))
    everyone = comm.allgather(mine)
    host0, files0 = everyone[0]
    for rank, (host, files) in enumerate(everyone[1:], start=1):
        if files == files0:
            continue
        theirs, ours = {n: (s, h) for n, s, h in files}, {n: (s, h) for n, s, h in files0}
        for name in sorted(set(theirs) | set(ours)):
            a, b = ours.get(name), theirs.get(name)
            if a == b:
                continue
            if a is None or b is None:
                what = f"{name} exists on {'rank 0' if a else f'rank {rank}'} only"
            elif a[0] != b[0]:
                what = f"{name} is {a[0]} bytes on rank 0, {b[0]} on rank {rank}"
            else:
                what = f"{name} has different headers (tensors) on rank 0 and rank {rank}"
            raise UserError(
                f"rank {rank} (host {host}) and rank 0 (host {host0}) see different checkpoints at {path}: "
                f"{what}; every node needs the same files at the same path"
            )


def _load_weights(comm: Comm, path: Path, config: Qwen3Config, layout: ShardLayout, show: bool):
    """This rank's weights, reporting its bytes to rank 0's progress bar (always ending the report)."""
    report = progress.LoadProgress(comm, show)
    try:
        ckpt = Checkpoint(path)
        everyone = 0
        if comm.is_root and show:  # the bar's true total from the start: every rank's slices, by the plan
            everyone = sum(shard_nbytes(ckpt, config, lay) for lay in ShardLayout.all_ranks(config, comm.size))
        report.start(shard_nbytes(ckpt, config, layout), everyone)
        ckpt.on_read = report.on_read
        return load_shard(ckpt, config, layout)
    finally:
        report.finish()
