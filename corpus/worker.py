"""A background thread that works on the store, and the one safe way to wait for it.

Never ``Thread.join()`` or ``Thread.is_alive()`` a thread that uses the store's connection
from the main thread, where Ctrl-C lands: on CPython 3.11 a KeyboardInterrupt that
interrupts ``join`` (or hits ``is_alive`` at the wrong bytecode) releases the *running*
thread's state lock and marks it stopped (the clean-up of bpo-45274), so ``is_alive()``
says False while it still runs. The import's writer then kept inserting while the run was
being finished on the same DuckDB connection: a deadlock (each thread holding what the
other needs: the GIL and DuckDB's connection lock) or a segfault (the finishing thread
closed the connection under it). A :class:`Worker`'s end is an Event it sets itself, and
waiting on an Event is safe to interrupt. Every thread of selfevo that uses the store and
is waited for is one: the import's writer, the ledger's writer, the thread that records a
run's final state (a lake's heartbeat thread is never waited for: an Event stops it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Worker:
    """A daemon thread running ``target()``; :attr:`done` is set when it has returned or
    raised (``target`` keeps its own outcome)."""

    def __init__(self, target: Callable[[], None], name: str) -> None:
        self.done = threading.Event()
        self._started = False

        def run() -> None:
            try:
                target()
            finally:
                self.done.set()

        self._thread = threading.Thread(target=run, name=name, daemon=True)

    def start(self) -> None:
        self._started = True  # first: a Ctrl-C inside Thread.start() still leaves it running
        self._thread.start()

    @property
    def running(self) -> bool:
        """Started and not finished (what ``is_alive()`` should say)."""
        return self._started and not self.done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (interruptible, harmlessly); True when finished."""
        return self.done.wait(timeout)

    def wait_through_interrupts(self) -> None:
        """Wait until it has finished, whatever Ctrl-C does meanwhile; a KeyboardInterrupt
        that came during the wait is raised after it (the worker still holds the store's
        connection until then, so nothing else may use it before)."""
        interrupted: BaseException | None = None
        while self.running:
            try:
                self.done.wait()
            except KeyboardInterrupt as exc:
                interrupted = exc
        if interrupted is not None:
            raise interrupted
