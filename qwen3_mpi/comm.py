"""The only module that imports mpi4py: collectives of the forward pass, start-up agreement, abort.

Comm moves buffers between ranks and does no model arithmetic: the forward pass (model/layer.py's
combine) adds the partial sums it hands back. Without mpirun the process is a singleton MPI world of
one rank.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

# Open MPI asks its UCX one-sided component about every window and, on a machine without UCX
# devices (PyPI's Open MPI on a laptop or VM), prints an error before it falls back to shared
# memory; the only window here is the combine's on-node shared memory, which that fallback serves
os.environ.setdefault("OMPI_MCA_osc", "^ucx")
from mpi4py import MPI  # after the setting above, which MPI reads as it starts

from .errors import UserError
from .options import COMBINE_KINDS


def _timed(payload):
    """Adds the call's wall time to self.collective_s (the time this rank spends in collectives). With
    profiling on, a barrier first separates waiting for the slowest rank from the collective itself,
    and the bytes this rank contributes (payload(*args)) are counted, per phase."""

    def decorate(method):
        def timed(self, *args, **kwargs):
            t0 = MPI.Wtime()
            if self.profile and self.size > 1:
                self.world.Barrier()
            t1 = MPI.Wtime()
            try:
                return method(self, *args, **kwargs)
            finally:
                t2 = MPI.Wtime()
                self.collective_s += t2 - t0
                if self.profile:
                    stats = self.profile_stats.setdefault(self.phase, dict.fromkeys(PROFILE_KEYS, 0))
                    stats["wait_s"] += t1 - t0
                    stats["collective_s"] += t2 - t1
                    stats["bytes_sent"] += payload(self, *args) if self.size > 1 else 0
                    stats["calls"] += 1

        timed.__name__, timed.__doc__ = method.__name__, method.__doc__
        return timed

    return decorate


PROFILE_KEYS = ("wait_s", "collective_s", "bytes_sent", "calls")
# rows of partial sums per exchange through the shared window: 2 x ranks x 64 x D floats in all per node
# (e.g. 21 MB for 8 ranks of Qwen3-32B, D = 5120), whatever the prefill chunk, since containers often
# give /dev/shm 64 MB
SHARED_ROWS = 64


def world_rank() -> int:
    """This process's rank in MPI_COMM_WORLD (before any Comm exists)."""
    return MPI.COMM_WORLD.Get_rank()


class AgreedError(Exception):
    """A UserError that every rank has learned of (so every rank can exit cleanly)."""


class Comm:
    """MPI_COMM_WORLD (or `world`), configured once: how partial sums travel (`combine`, one of
    COMBINE_KINDS) and whether collectives are profiled per phase."""

    def __init__(self, world=None, *, combine: str = "shared", profile: bool = False):
        if combine not in COMBINE_KINDS:
            raise ValueError(f"combine must be one of {COMBINE_KINDS}, not {combine!r}")
        self.world = world or MPI.COMM_WORLD
        self.rank = self.world.Get_rank()
        self.size = self.world.Get_size()
        # ranks sharing this node's memory: used to split the node's cores among them
        self.node = self.world.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank = self.node.Get_rank()
        self.local_size = self.node.Get_size()
        self.combine_method = combine
        self._gathered = None  # allgather's receive buffer
        self._win, self._node_counts, self._halves = None, None, {}  # shared: see _shared_slots
        self._state_wins = []  # node_shared's
        self.collective_s = 0.0  # wall time in the collectives below (single rank: the local sums)
        self.profile = profile  # --profile: per-phase waiting, collective time and bytes
        self.profile_stats: dict[str, dict] = {}
        self.phase = "other"
        self._sent = []

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    # --- agreement at start-up: a bad input on any rank ends every rank with one message from rank 0
    def agree(self, fn, *args, **kwargs):
        """Run fn on this rank; if it raises UserError on any rank, raise AgreedError on every rank
        carrying the lowest failing rank's message."""
        try:
            result, error = fn(*args, **kwargs), None
        except UserError as e:
            result, error = None, str(e)
        errors = self.world.allgather(error)
        for r, message in enumerate(errors):
            if message is not None:
                raise AgreedError(message if r == 0 or self.size == 1 else f"(rank {r}) {message}")
        return result

    def abort(self, code: int = 1) -> None:
        """End every rank (MPI_Abort): the only way a launcher ends ranks on other hosts that wait in a
        collective. The launcher forwards this rank's last output first only if given a moment."""
        sys.stdout.flush()
        sys.stderr.flush()
        if self.size > 1:
            time.sleep(0.5)
            self.world.Abort(code)
        os._exit(code)

    # --- the forward pass
    def partials(self, part_TD: np.ndarray):
        """This rank's partial sums [T, D] -> every rank's: yields (rows, parts_RTD), parts_RTD[r] rank r's
        partial sums of those rows (rank order, the same on every rank), in chunks that together cover
        the T rows. 'shared': the partials meet in memory shared by the node's ranks (SHARED_ROWS rows
        at a time), and one rank per node exchanges its node's with the other nodes (an allgather
        among them); 'allgather': every rank gathers every partial with MPI; 'allreduce' lets MPI sum
        them (one "rank" of sums, in MPI's order). A single rank yields its own."""
        T = part_TD.shape[0]
        if self.size == 1:
            yield slice(0, T), part_TD[None]
        elif self.combine_method == "shared":
            for t0 in range(0, T, SHARED_ROWS):  # the window holds SHARED_ROWS rows of every rank
                rows = slice(t0, min(T, t0 + SHARED_ROWS))
                yield rows, self._exchange_shared(part_TD[rows])
        else:
            yield slice(0, T), self._exchange_mpi(part_TD)

    @_timed(lambda self, part_TD: part_TD.nbytes * (self.size - 1))  # to every other rank
    def _exchange_mpi(self, part_TD: np.ndarray) -> np.ndarray:
        T, D = part_TD.shape
        if self.combine_method == "allreduce":
            self.world.Allreduce(MPI.IN_PLACE, part_TD, op=MPI.SUM)
            return part_TD[None]
        if self._gathered is None or self._gathered.size < self.size * T * D:
            self._gathered = np.empty(self.size * T * D, dtype=np.float32)
        parts_RTD = self._gathered[: self.size * T * D].reshape(self.size, T, D)
        self.world.Allgather(part_TD, parts_RTD)
        return parts_RTD

    def _shared_slots(self, T: int, D: int) -> tuple[np.ndarray, np.ndarray]:
        """The two halves of a window shared by the node's ranks, each as slots [ranks, T, D] (T up to
        SHARED_ROWS): nodes in the order of their first rank, each node's ranks in rank order (rank order
        itself when every node's ranks are consecutive, as mpirun places them by default). Exchanges
        alternate between the halves, so one barrier per exchange suffices: a rank writes the half of
        exchange k + 2 only after every rank of its node has reached exchange k + 1, and so has finished
        reading exchange k. Allocated (collectively: every rank combines the same shapes) at the first
        combine, again for a larger D."""
        if self._node_counts is None:
            leader = self.local_rank == 0
            self._leaders = self.world.Split(0 if leader else MPI.UNDEFINED, self.rank)  # one rank per node
            counts = self._leaders.allgather(self.local_size) if leader else None
            node = self._leaders.Get_rank() if leader else None
            self._node_counts, node = self.node.bcast((counts, node))
            self._slot = sum(self._node_counts[:node]) + self.local_rank
            self._half, self._parity, self._halves = 0, 0, {}
        if self.size * SHARED_ROWS * D > self._half:
            self._free_window()
            half = self.size * SHARED_ROWS * D
            self._win = MPI.Win.Allocate_shared(2 * half * 4 if self.local_rank == 0 else 0, 4, comm=self.node)
            self._win.Lock_all(MPI.MODE_NOCHECK)  # a passive epoch, for Sync
            self._shared = np.frombuffer(self._win.Shared_query(0)[0], np.float32)
            self._half, self._halves = half, {}
        half, need = self._half, self.size * T * D
        self._halves[T, D] = tuple(self._shared[h * half : h * half + need].reshape(self.size, T, D) for h in (0, 1))
        return self._halves[T, D]

    @_timed(lambda self, part_TD: part_TD.nbytes * (self.size - 1))
    def _exchange_shared(self, part_TD: np.ndarray) -> np.ndarray:
        """This rank's partials into its slot of the next half of the window -> every rank's partials
        [ranks, T, D]. After the writes, the node's ranks see each other's slots (a barrier between
        memory syncs, as MPI's shared-memory model asks); across nodes the leaders gather every node's
        slots into their own window, which the node's other ranks may read after a second barrier."""
        halves = self._halves.get(part_TD.shape) or self._shared_slots(*part_TD.shape)
        self._parity ^= 1
        parts_RTD = halves[self._parity]
        parts_RTD[self._slot] = part_TD
        self._win.Sync()
        self.node.Barrier()
        if len(self._node_counts) > 1:
            if self.local_rank == 0:
                sizes = [c * parts_RTD[0].size for c in self._node_counts]
                starts = np.cumsum([0] + sizes[:-1]).tolist()
                self._leaders.Allgatherv(MPI.IN_PLACE, [parts_RTD, sizes, starts, MPI.FLOAT])
                self._win.Sync()
            self.node.Barrier()
        self._win.Sync()
        return parts_RTD

    def node_slots(self, T: int, D: int) -> tuple[np.ndarray, np.ndarray, int]:
        """For a decode region that combines partial sums itself (kernels/decode.layers_region, every rank
        on this node): the window's slots [ranks, T, D] of the next exchange and of the one after, and this
        rank's slot. The region alternates between them, an even number of exchanges, each after a barrier
        of every rank, so the next combine here takes up where it left off (collective on first use)."""
        halves = self._halves.get((T, D)) or self._shared_slots(T, D)
        return halves[self._parity ^ 1], halves[self._parity], self._slot

    def node_shared(self, values: np.ndarray) -> np.ndarray:
        """A copy of the first rank's int64 array in memory shared by this node's ranks, e.g. the state of
        the barriers of a region that spans them (collective over the node)."""
        win = MPI.Win.Allocate_shared(values.nbytes if self.local_rank == 0 else 0, 8, comm=self.node)
        win.Lock_all(MPI.MODE_NOCHECK)
        shared = np.frombuffer(win.Shared_query(0)[0], np.int64)[: values.size]
        if self.local_rank == 0:
            shared[:] = values
        win.Sync()
        self.node.Barrier()
        win.Sync()
        self._state_wins.append(win)  # kept for the process's life
        return shared

    def count_exchanges(self, n: int, nbytes: int) -> None:
        """For --profile: n combines of nbytes of partial sums that a region did itself, between every pair
        of ranks (their time, and the waits at their barriers, count as compute)."""
        if self.profile and self.size > 1:
            stats = self.profile_stats.setdefault(self.phase, dict.fromkeys(PROFILE_KEYS, 0))
            stats["bytes_sent"] += n * nbytes * (self.size - 1)
            stats["calls"] += n

    def _free_window(self) -> None:
        if self._win is not None:
            self._win.Unlock_all()
            self._win.Free()
            self._win, self._shared = None, None

    @_timed(lambda self, local_TV, counts: 0 if self.is_root else local_TV.nbytes)
    def gather_columns(self, local_TV: np.ndarray, counts: list[int]) -> np.ndarray | None:
        """Column blocks [T, V_r] of every rank -> [T, sum V_r] on rank 0 (None elsewhere)."""
        T = local_TV.shape[0]
        if self.size == 1:
            return local_TV.copy()
        sizes = [T * c for c in counts]
        recv = np.empty(sum(sizes), dtype=np.float32) if self.is_root else None
        spec = [recv, sizes, np.cumsum([0] + sizes[:-1]).tolist(), MPI.FLOAT] if self.is_root else None
        self.world.Gatherv(np.ascontiguousarray(local_TV), spec, root=0)
        if not self.is_root:
            return None
        blocks, start = [], 0
        for c in counts:
            blocks.append(recv[start : start + T * c].reshape(T, c))
            start += T * c
        return np.concatenate(blocks, axis=1)

    @_timed(lambda self, local: 0 if self.is_root else local.nbytes)
    def gather_rows(self, local: np.ndarray) -> np.ndarray | None:
        """Every rank's float64 array of the same shape -> [ranks, ...] on rank 0 (None elsewhere)."""
        if self.size == 1:
            return local[None].copy()
        recv = np.empty((self.size, *local.shape), np.float64) if self.is_root else None
        self.world.Gather(np.ascontiguousarray(local, np.float64), recv, root=0)
        return recv

    # --- small messages to rank 0 outside the collectives (progress reports)
    def send_root(self, obj, tag: int) -> None:
        """Non-blocking: obj to rank 0; wait_sent() completes every such send."""
        self._sent.append(self.world.isend(obj, dest=0, tag=tag))

    def wait_sent(self) -> None:
        MPI.Request.Waitall(self._sent)
        self._sent = []

    def receive_any(self, tag: int, block: bool) -> tuple[int, object] | None:
        """(source, obj) of a message with this tag; None when not block and none is waiting."""
        if not block and not self.world.iprobe(source=MPI.ANY_SOURCE, tag=tag):
            return None
        status = MPI.Status()
        obj = self.world.recv(source=MPI.ANY_SOURCE, tag=tag, status=status)
        return status.Get_source(), obj

    @_timed(lambda self, values: values.nbytes if self.is_root else 0)
    def bcast_ints(self, values: np.ndarray) -> np.ndarray:
        """Rank 0's int64 array (same length on every rank) to every rank."""
        if self.size > 1:
            self.world.Bcast(values, root=0)
        return values

    def bcast(self, obj):
        return self.world.bcast(obj, root=0) if self.size > 1 else obj

    def barrier(self) -> None:
        self.world.Barrier()

    def max(self, value: float) -> float:
        return self.world.allreduce(value, op=MPI.MAX) if self.size > 1 else value

    def allgather(self, obj) -> list:
        return self.world.allgather(obj) if self.size > 1 else [obj]

    def gather(self, obj):
        return self.world.gather(obj, root=0)

    @staticmethod
    def wtime() -> float:
        return MPI.Wtime()
