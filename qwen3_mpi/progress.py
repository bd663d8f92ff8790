"""Progress on rank 0's stderr: weights loading (the bytes of every rank), writing the demo checkpoint,
compiling the kernels (a spinner), long prefills.

While loading, every other rank reports its progress to rank 0 with small non-blocking messages; rank 0
folds them into one bar as it reads its own slices, then waits for each rank's last report. Every rank
sends that last report whatever happens (errors included), so rank 0 never waits for a rank that has
given up.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager

_TAG = 7301  # MPI tag of the loading reports


def at_terminal() -> bool:
    """Whether stderr is a terminal; under mpirun it is a pipe even at one, so a terminal is also
    recognized by TERM (set and not 'dumb')."""
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
        self._dones, self._finals = {}, set()

    def start(self, total: int, everyone: int) -> None:
        """total: this rank's bytes; everyone: every rank's (rank 0's bar shows it from the start)."""
        self.total = total
        if not self.enabled:
            return
        if self.rank == 0:
            self._bar = _bar(everyone, "loading weights", "B", leave=True)

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


@contextmanager
def spinner(enabled: bool, message: str, delay: float = 1.0):
    """While the body runs (numba compiling, which holds no lock a thread needs): after `delay` seconds
    a line `message ... 12 s` redrawn every 0.2 s, ended with the time it took; nothing for a body
    quicker than `delay` (kernels loaded from numba's cache)."""
    if not enabled:
        yield
        return
    done = threading.Event()
    t0 = time.monotonic()
    shown = []

    def spin():
        if done.wait(delay):
            return
        frames = "|/-\\"
        i = 0
        while not done.wait(0.2):
            sys.stderr.write(f"\r{message} {frames[i % 4]} {time.monotonic() - t0:.0f} s")
            sys.stderr.flush()
            shown.append(True)
            i += 1

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        if shown:
            sys.stderr.write(f"\r{message}: done in {time.monotonic() - t0:.0f} s\033[K\n")
            sys.stderr.flush()


@contextmanager
def bytes_bar(enabled: bool, desc: str):
    """A bar of bytes whose total the writer gives: yields on_write(n, total), or None when not enabled."""
    if not enabled:
        yield None
        return
    b = None

    def on_write(n: int, total: int) -> None:
        nonlocal b
        if b is None:
            b = _bar(total, desc, "B")
        b.update(n)

    try:
        yield on_write
    finally:
        if b is not None:
            b.close()
