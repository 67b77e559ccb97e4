"""Subprocesses that never outlive their test.

A test that starts a ``selfevo`` process and then fails, times out or is interrupted must not
leave it running (it held stores and CPU for up to an hour, reparented to init). Every child
started here is in its own process group, dies with the pytest process that started it
(``PR_SET_PDEATHSIG``), and is killed — the whole group — and reaped when its block ends,
however it ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl: nobody will ever reap us
        os._exit(1)


def spawn(cmd: list[str], **kwargs: Any) -> subprocess.Popen:
    """Popen in a new process group that is SIGKILLed if the test process dies.

    Prefer :func:`child`, which also kills and reaps it; a caller of ``spawn`` must call
    :func:`reap` in a ``finally``."""
    parent = os.getpid()
    return subprocess.Popen(cmd, start_new_session=True,
                            preexec_fn=lambda: _die_with_parent(parent), **kwargs)


def reap(p: subprocess.Popen, timeout: float = 30.0) -> None:
    """Kill ``p``'s process group if anything of it still runs, then wait for ``p``."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, signal.SIGKILL)  # the group outlives its leader: kill it always
    try:
        p.communicate(timeout=timeout)  # also closes its pipes
    except (subprocess.TimeoutExpired, ValueError):
        p.wait(timeout)


@contextlib.contextmanager
def child(cmd: list[str], **kwargs: Any) -> Iterator[subprocess.Popen]:
    """:func:`spawn` for the block; killed (whole group) and reaped when it ends."""
    p = spawn(cmd, **kwargs)
    try:
        yield p
    finally:
        reap(p)
