"""Errors of the store layer."""

import errno
import re
from typing import Any

from schemas.errors import UserError


class CorpusError(UserError):
    """Root of the store's expected errors (bad input, missing store, busy store)."""


class StoreBusy(CorpusError):
    """Another process holds the store for writing."""


class StoreInterrupted(CorpusError):
    """The user pressed Ctrl-C (or sent SIGINT) during a job."""


#: errno values, and the texts DuckDB wraps them in, of a store or file that cannot be written.
_STORAGE_ERRNOS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded",
                   errno.EFBIG: "file too large", errno.EROFS: "read-only file system",
                   errno.EACCES: "permission denied", errno.EPERM: "permission denied"}
_STORAGE_TEXTS = {"No space left on device": "disk full", "Disk quota exceeded":
                  "disk quota exceeded", "File too large": "file too large",
                  "Read-only file system": "read-only file system",
                  "Permission denied": "permission denied"}


def storage_error(exc: BaseException) -> CorpusError | None:
    """A one-line CorpusError when ``exc`` is a file-system refusal (disk full, quota, file
    too large, read-only, permission), whether raised by Python or wrapped by DuckDB; None for
    anything else. Such errors are the machine's state, not bugs: they get no traceback."""
    kind = None
    if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS:
        kind = _STORAGE_ERRNOS[exc.errno]
        where = f" ({exc.filename})" if exc.filename else ""
    else:
        text = str(exc)
        kind = next((k for t, k in _STORAGE_TEXTS.items() if t in text), None)
        quoted = re.search(r'"([^"]+)"', text)
        where = f" ({quoted.group(1)})" if quoted else ""
    if kind is None:
        return None
    advice = ("free some space, or pass --db / --out on another disk"
              if kind in ("disk full", "disk quota exceeded", "file too large")
              else "use a writable location (--db, --out) or fix its permissions")
    return CorpusError(f"{kind}{where}: the write was rolled back and nothing of it was kept; "
                       f"{advice}, then re-run the command")


_sigint_seen = False
_watchdog_armed = False
_watchdog_on = False

#: Seconds a command may take to stop after Ctrl-C before it is ended at once. Every write is
#: one transaction, so ending it hard is what SIGKILL does, which the store survives.
STOP_GRACE_S = 30.0


def arm_stop_watchdog() -> None:
    """After Ctrl-C, make sure the process ends: if it still runs after :data:`STOP_GRACE_S`
    (a thread stuck in a request, a hang), say so in one line and exit 130 at once.

    Armed only in the CLI (:func:`mark_interrupts`): a library caller keeps its process."""
    global _watchdog_armed
    if not _watchdog_on or _watchdog_armed:
        return
    _watchdog_armed = True
    import os
    import threading

    def stop_now() -> None:
        import faulthandler

        if faulthandler.is_enabled():  # python -X faulthandler: show where it was stuck
            faulthandler.dump_traceback(all_threads=True)
        os.write(2, f"Error: interrupted (Ctrl-C): still stopping after {STOP_GRACE_S:.0f}s; "
                    "ended now (committed work is kept; the next command marks the run "
                    "killed)\n".encode())
        os._exit(130)

    timer = threading.Timer(STOP_GRACE_S, stop_now)
    timer.daemon = True  # never what keeps the process alive
    timer.start()


_store_stuck = False


def mark_store_stuck() -> None:
    """Note that a DuckDB call of this process on the store never returned: the process must
    end without waiting for it (:func:`exit_now_if_stuck`)."""
    global _store_stuck
    _store_stuck = True


def exit_now_if_stuck(code: int) -> None:
    """End the process at once with ``code`` if :func:`mark_store_stuck` was called: a normal
    exit would wait on the stuck DuckDB instance. Everything committed is on disk."""
    if _store_stuck:
        import os
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _mark_sigint(signum: int, frame: Any) -> None:
    global _sigint_seen
    _sigint_seen = True
    arm_stop_watchdog()
    # Never inside an import: a KeyboardInterrupt there can leave the module's import lock
    # held, and the next thread importing it (the ledger's writer) waits forever. Ask again
    # in a moment instead; the import finishes first.
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            import os
            import threading

            again = threading.Timer(0.05, os.kill, (os.getpid(), signum))
            again.daemon = True
            again.start()
            return
        frame = frame.f_back
    raise KeyboardInterrupt


def mark_interrupts() -> None:
    """Remember that Ctrl-C was pressed, then raise KeyboardInterrupt as Python does.

    A KeyboardInterrupt raised at an arbitrary instruction surfaces as whatever the code it
    hit makes of it: DuckDB's "Query interrupted", or an AttributeError from a module whose
    import it cut short. The CLI installs this handler so that any failure after a Ctrl-C is
    reported as the interruption it is (:func:`is_interrupt`), and so that the process ends
    within :data:`STOP_GRACE_S` of it whatever it was doing (:func:`arm_stop_watchdog`)."""
    import signal
    import threading

    global _watchdog_on
    if threading.current_thread() is threading.main_thread():
        _watchdog_on = True
        signal.signal(signal.SIGINT, _mark_sigint)


def is_interrupt(exc: BaseException) -> bool:
    """Ctrl-C, however it surfaced: KeyboardInterrupt, DuckDB's interrupted query (an
    InterruptException, or a RuntimeError "Query interrupted" from its Arrow/Polars paths),
    or any error after a Ctrl-C was seen (:func:`mark_interrupts`)."""
    if isinstance(exc, KeyboardInterrupt | StoreInterrupted) or _sigint_seen:
        return True
    import duckdb

    if isinstance(exc, duckdb.InterruptException):
        return True
    return isinstance(exc, RuntimeError) and "Query interrupted" in str(exc)
