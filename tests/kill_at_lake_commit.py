"""``python tests/kill_at_lake_commit.py POINT:N selfevo ARGS…``: run ``selfevo`` on a DuckLake
and SIGKILL the process at an exact point of its N-th lake transaction after its run row
was written (the run's own work: the run row's insert is not counted).

A test-only wrapper, so production code carries no fault hook: it wraps
:meth:`corpus.lake.Lake.transact`. Points: ``body`` (the transaction's body ran, its COMMIT
not sent: nothing of it may land), ``commit`` (the COMMIT returned, the run row is still
``running``: all of it must stay), ``none`` (no kill; prints how many transactions ran).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

from corpus.lake import Lake
from corpus.store import Store
from selfevo.cli import main


def kill_at(spec: str) -> None:
    """Arm ``Lake.transact`` to SIGKILL this process at point ``spec`` (``POINT:N``)."""
    point, _, n = spec.partition(":")
    if point not in ("body", "commit", "none"):
        raise SystemExit(f"unknown kill point {point!r}")
    target = int(n or 1)
    state = {"armed": False, "hits": 0}
    lock = threading.Lock()
    transact, insert_run = Lake.transact, Store._insert_run

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def wrapped(self: Lake, fn: Any, **kwargs: Any) -> Any:
        with lock:
            mine = state["armed"] and state["hits"] + 1 == target
            state["hits"] += state["armed"]
        if mine and point == "body":
            def body(con: Any) -> Any:
                result = fn(con)
                die()
                return result
            return transact(self, body, **kwargs)
        result = transact(self, fn, **kwargs)
        if mine and point == "commit":
            die()
        return result

    def arm(self: Store, *args: Any, **kwargs: Any) -> None:
        insert_run(self, *args, **kwargs)
        state["armed"] = True

    Lake.transact = wrapped  # type: ignore[method-assign]
    Store._insert_run = arm  # type: ignore[method-assign]
    if point == "none":
        import atexit

        atexit.register(lambda: print(f"lake transactions: {state['hits']}", file=sys.stderr))


if __name__ == "__main__":
    kill_at(sys.argv.pop(1))
    sys.exit(main())
