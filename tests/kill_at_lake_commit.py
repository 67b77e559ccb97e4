"""``python tests/kill_at_lake_commit.py POINT:N[:WHAT] selfevo ARGS…``: run ``selfevo`` on a
DuckLake and SIGKILL the process at an exact point of the N-th of its lake transactions
that changed WHAT, counted from its run row (the run row's own insert is not counted).

A test-only wrapper, so production code carries no fault hook: it wraps
:meth:`corpus.lake.Lake.transact`. Points: ``body`` (the transaction's body ran, its COMMIT
not sent: nothing of it may land), ``commit`` (the COMMIT returned, the run row is still
``running``: all of it must stay), ``none`` (no kill; prints how many were counted). WHAT:
``any`` (the default: every transaction), ``answers`` (it raised the number of answered
calls), ``pending`` (it raised the number of calls in flight). Counting by what a
transaction did, not by its rank, keeps the point where it is meant to be when the ledger
groups its rows differently under load.
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

MEASURES = {"answers": "SELECT count(*) FROM calls WHERE status = 'ok'",
            "pending": "SELECT count(*) FROM calls WHERE status = 'pending'"}


def kill_at(spec: str) -> None:
    """Arm ``Lake.transact`` to SIGKILL this process at point ``spec``."""
    point, _, rest = spec.partition(":")
    n, _, what = rest.partition(":")
    what = what or "any"
    if point not in ("body", "commit", "none") or what not in ("any", *MEASURES):
        raise SystemExit(f"unknown kill point {spec!r}")
    target = int(n or 1)
    state = {"armed": False, "hits": 0}
    lock = threading.Lock()
    transact, insert_run = Lake.transact, Store._insert_run

    def measure(con: Any) -> int:
        return 0 if what == "any" else con.execute(MEASURES[what]).fetchone()[0]

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def wrapped(self: Lake, fn: Any, **kwargs: Any) -> Any:
        if not state["armed"]:
            return transact(self, fn, **kwargs)
        counted: dict[str, int] = {}  # this call's rank, kept if its body is re-run

        def body(con: Any) -> Any:
            before = measure(con)
            result = fn(con)
            if what == "any" or measure(con) > before:
                with lock:
                    if "rank" not in counted:
                        state["hits"] += 1
                        counted["rank"] = state["hits"]
                if point == "body" and counted["rank"] == target:
                    die()
            return result

        result = transact(self, body, **kwargs)
        if point == "commit" and counted.get("rank") == target:
            die()
        return result

    def arm(self: Store, *args: Any, **kwargs: Any) -> None:
        insert_run(self, *args, **kwargs)
        state["armed"] = True

    Lake.transact = wrapped  # type: ignore[method-assign]
    Store._insert_run = arm  # type: ignore[method-assign]
    if point == "none":
        import atexit

        atexit.register(lambda: print(f"lake transactions counted: {state['hits']}",
                                      file=sys.stderr))


if __name__ == "__main__":
    kill_at(sys.argv.pop(1))
    sys.exit(main())
