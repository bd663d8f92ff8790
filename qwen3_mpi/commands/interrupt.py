"""Ctrl-C during generation: the terminal sends SIGINT to every local rank (and mpirun forwards it to
the others). Rank 0 asks its engine to stop after the current token, which ends every rank's loop
through the step broadcast; the other ranks ignore the signal and wait for that word. So the text so
far is kept, the stats are printed, and the command exits with 130, with no MPI abort."""

from __future__ import annotations

import signal
from contextlib import contextmanager


@contextmanager
def stop_on_interrupt(engine):
    """While the body runs: SIGINT stops `engine` (rank 0's) after its current token; with engine None
    (the other ranks) SIGINT is ignored. A second Ctrl-C on rank 0 interrupts at once."""

    def handler(signum, frame):
        if engine.interrupted:
            raise KeyboardInterrupt
        engine.interrupted = True

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN if engine is None else handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
