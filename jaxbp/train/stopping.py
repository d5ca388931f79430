"""SIGINT and SIGTERM during :func:`jaxbp.train.fit`: the run stops at the next step boundary.

The handlers only record the signal; they never raise while the run trains, so a second
signal cannot break a checkpoint write, and XLA's garbage-collection callback (which swallows
any exception raised inside it: "Exception ignored in _xla_gc_callback") cannot swallow a
stop. The loop asks :meth:`StopSignals.poll` after every step; every process of a
multi-process run asks at the same step, and ``poll`` takes the largest signal any of them
received (:func:`jaxbp.parallel.max_over_processes`), so all of them stop after the same
step and process 0 writes the one checkpoint.

Before the run starts (data, model, user code), a single process keeps Python's default:
a signal raises ``KeyboardInterrupt`` (a user module that loops at import can be
interrupted), which leaves :func:`fit` as a :class:`TrainingInterrupted` saying that
nothing was written. The signal is recorded as well, so that a ``KeyboardInterrupt``
something swallowed still stops the run, at its first step boundary (and the swallowed one
is not printed as "Exception ignored"). Several processes only
record from the start: a process that left alone would leave the others waiting for it.
"""

from __future__ import annotations

import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any

import jax

from jaxbp import parallel
from jaxbp.train.errors import TrainingInterrupted

__all__ = ["AFTER_STOP", "STOP_SIGNALS", "Received", "StopSignals"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: What the handlers become when :func:`fit` returns: the ones it found, or (a command that
#: exits next) ignored once a stop signal has arrived, so that a late one cannot interrupt
#: the exit with a traceback or kill it with another status.
AFTER_STOP = ("restore", "ignore")


@dataclass
class Received:
    """What the handlers have seen: the first stop signal (None: none yet), how many arrived,
    and whether one raises ``KeyboardInterrupt`` (before the run starts, one process)."""

    first: int | None = None
    count: int = 0
    raising: bool = True


class StopSignals:
    """A context manager that installs the SIGINT and SIGTERM handlers of a run (in the main
    thread; elsewhere signals cannot be handled and nothing is installed) and puts the old
    ones back on exit (``after_stop="ignore"``: ignores both once a stop signal arrived)."""

    def __init__(self, after_stop: str = "restore"):
        if after_stop not in AFTER_STOP:
            raise ValueError(f"after_stop must be one of {AFTER_STOP}, got {after_stop!r}")
        self.after_stop = after_stop
        self.received = Received()
        self.agreed: int | None = None  # the stop signal every process agreed on at the last poll
        self.old: dict[int, Any] = {}
        self.old_unraisable: Any = None

    def handle(self, signum: int, frame: Any) -> None:
        """The handler: record the signal; raise only before the run starts."""
        self.received.count += 1
        if self.received.first is None:
            self.received.first = signum
        if self.received.raising:
            raise KeyboardInterrupt

    def __enter__(self) -> StopSignals:
        self.received.raising = jax.process_count() == 1
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self.old[sig] = signal.signal(sig, self.handle)
            self.old_unraisable, sys.unraisablehook = sys.unraisablehook, self.unraisable
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        ignore = self.after_stop == "ignore" and self.received.first is not None
        for sig, old in self.old.items():
            signal.signal(sig, signal.SIG_IGN if ignore else old)
        if self.old_unraisable is not None:
            sys.unraisablehook = self.old_unraisable
        if exc_type is KeyboardInterrupt and self.received.raising:  # before the run started
            name = signal.Signals(self.received.first or signal.SIGINT).name
            raise TrainingInterrupted(f"{name} received before training started: stopped; nothing was written")
        return False

    def unraisable(self, info: Any) -> None:
        """``sys.unraisablehook``: a ``KeyboardInterrupt`` of :meth:`handle` that something
        swallowed (XLA's gc callback) is recorded already; anything else is shown as before."""
        if not (isinstance(info.exc_value, KeyboardInterrupt) and self.received.first is not None):
            self.old_unraisable(info)

    def start_run(self) -> None:
        """The run starts: from here on a signal is only recorded, for :meth:`poll`."""
        self.received.raising = False

    def poll(self, mesh: Any) -> bool:
        """Whether any process has received a stop signal: called at a step boundary, by
        every process at the same one (a collective with several processes)."""
        agreed = parallel.max_over_processes(mesh, self.received.first or 0)
        self.agreed = agreed or None
        return self.agreed is not None

    def describe(self) -> str:
        """``"SIGINT received"``, or where this process did not receive it itself, ``"SIGTERM
        received by another process"``."""
        name = signal.Signals(self.agreed or self.received.first or signal.SIGINT).name
        return f"{name} received" if self.received.first == self.agreed else f"{name} received by another process"
