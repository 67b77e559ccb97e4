"""Test hook: kill the process at an exact point of the batch path (the SIGKILL tests).

``SELFEVO_FAULT_BATCH_KILL=POINT[:N]`` makes the N-th (default first) pass through
``POINT`` SIGKILL the process. Points: ``shard`` (a shard file written, not registered),
``upload`` (a shard uploaded, its file id not recorded), ``create`` (a batch created, its
id not recorded), ``poll`` (a poll recorded), ``settle`` (a chunk of results committed).
Unset, :func:`fault` is a dictionary look-up.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Callable

FAULT_ENV = "SELFEVO_FAULT_BATCH_KILL"
_hits: Counter[str] = Counter()


def fault(point: str, before: Callable[[], None] | None = None) -> None:
    """SIGKILL this process if the hook names ``point`` and this is its N-th pass.

    ``before`` runs first (e.g. flushing the ledger, so "committed" is true at the kill).
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    name, _, n = spec.partition(":")
    if name != point:
        return
    _hits[point] += 1
    if _hits[point] == int(n or 1):
        if before is not None:
            before()
        os.kill(os.getpid(), signal.SIGKILL)
