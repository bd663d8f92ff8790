"""Progress bars on rank 0's stderr: weights loading (the bytes of every rank) and long prefills.

While loading, every other rank reports its progress to rank 0 with small non-blocking messages; rank 0
folds them into one bar as it reads its own slices, then waits for each rank's last report. Every rank
sends that last report whatever happens (errors included), so rank 0 never waits for a rank that has
given up.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

_TAG = 7301  # MPI tag of the loading reports


def wanted(args) -> bool:
    """Bars unless --json or --no-progress; under mpirun stderr is a pipe even at a terminal, so a
    terminal is recognized by TERM (set and not 'dumb') as well as by isatty."""
    if getattr(args, "json", False) or not getattr(args, "progress", True):
        return False
    term = os.environ.get("TERM", "")
    return sys.stderr.isatty() or (term != "" and term != "dumb")


def _bar(total: int, desc: str, unit: str, leave: bool = False):
    from tqdm import tqdm

    scale = unit == "B"
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=scale,
        unit_divisor=1024 if scale else 1000,
        leave=leave,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.2,
    )


class LoadProgress:
    """on_read(n) after each read of n bytes on every rank; finish() on every rank at the end."""

    def __init__(self, comm, enabled: bool):
        self.comm, self.enabled = comm, enabled
        self.rank, self.size = comm.rank, comm.size
        self.total = self.done = self._sent = 0
        self._bar = None
        self._totals, self._dones, self._finals = {}, {}, set()

    def start(self, total: int) -> None:
        self.total = total
        if not self.enabled:
            return
        if self.rank == 0:
            self._totals[0] = total
            self._bar = _bar(total, "loading weights", "B", leave=True)
        else:
            self._send(("total", total))

    def on_read(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        if self.rank == 0:
            self._dones[0] = self.done
            self._drain(block=False)
        elif self.done - self._sent >= max(self.total // 50, 1):
            self._send(("done", self.done))
            self._sent = self.done

    def finish(self) -> None:
        if not self.enabled:
            return
        if self.rank != 0:
            self._send(("final", self.done))
            self.comm.wait_sent()
            return
        self._dones[0] = self.done
        self._finals.add(0)
        while len(self._finals) < self.size:  # also when this rank failed before start()
            self._drain(block=True)
        if self._bar is not None:
            self._bar.close()

    def _send(self, message) -> None:
        self.comm.send_root(message, _TAG)

    def _drain(self, block: bool) -> None:
        while (got := self.comm.receive_any(_TAG, block)) is not None:
            source, (kind, value) = got
            if kind == "total":
                self._totals[source] = value
                if self._bar is not None:
                    self._bar.total = sum(self._totals.values())
            else:
                self._dones[source] = value
                if kind == "final":
                    self._finals.add(source)
            block = False
        if self._bar is not None:
            self._bar.update(sum(self._dones.values()) - self._bar.n)  # redrawn at most every mininterval


@contextmanager
def bar(enabled: bool, total: int, desc: str, unit: str):
    """A plain bar on rank 0: yields update(n), or None when not enabled; it closes at total."""
    if not enabled:
        yield None
        return
    b = _bar(total, desc, unit)

    def update(n: int) -> None:
        b.update(n)
        if b.n >= total:  # gone before anything else (the generated text) is printed
            b.close()

    try:
        yield update
    finally:
        b.close()
