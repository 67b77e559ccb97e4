"""``python tests/kill_at_batch_phase.py POINT[:N] CHUNK selfevo ARGS…``: run ``selfevo`` and
SIGKILL the process at an exact point of the batch path (the N-th time, default the first).

A test-only wrapper, so production code carries no fault hook: it wraps the batch path's
methods. Points: ``shard`` (a shard file written, not registered), ``upload`` (a shard
uploaded, its file id not recorded), ``create`` (a batch created, its id not recorded),
``poll`` (a poll recorded), ``settle`` (a chunk of results committed), ``none`` (no kill).
``CHUNK`` is the result lines settled per transaction.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from generation.batches.completion import BatchCompletion
from generation.batches.drive import Driver
from generation.batches.options import BatchOptions
from generation.batches.provider import BatchAPI
from generation.batches.settle import Settler
from selfevo.cli import main


def kill_at(spec: str) -> None:
    """Wrap the method of point ``spec`` (``POINT[:N]``) to SIGKILL on its N-th pass."""
    point, _, n = spec.partition(":")
    hits = [0]

    def arm(cls: type, name: str, before: bool = False,
            then: Any = None) -> None:
        original = getattr(cls, name)

        def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
            hits[0] += 1
            last = hits[0] == int(n or 1)
            if before and last:
                os.kill(os.getpid(), signal.SIGKILL)
            result = original(self, *args, **kwargs)
            if last:
                if then is not None:
                    then(self)
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        setattr(cls, name, wrapped)

    if point == "shard":  # the file is complete on disk; its registration not begun
        arm(BatchCompletion, "_register", before=True)
    elif point == "upload":
        arm(BatchAPI, "upload")
    elif point == "create":
        arm(BatchAPI, "create")
    elif point == "poll":
        arm(Driver, "poll")
    elif point == "settle":  # the chunk committed, then the kill
        arm(Settler, "_chunk", then=lambda settler: settler.ledger.writer.flush())
    elif point != "none":
        raise SystemExit(f"unknown kill point {point!r}")


def settle_chunk(n: int) -> None:
    """Settle ``n`` result lines per transaction (small, so a file has several chunks)."""
    original = BatchOptions.__init__

    def init(self: BatchOptions, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("settle_chunk", n)
        original(self, *args, **kwargs)

    BatchOptions.__init__ = init  # type: ignore[method-assign]


if __name__ == "__main__":
    kill_at(sys.argv.pop(1))
    settle_chunk(int(sys.argv.pop(1)))
    sys.exit(main())
