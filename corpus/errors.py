"""Errors of the store layer."""

import errno
import re

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


def is_interrupt(exc: BaseException) -> bool:
    """Ctrl-C, however it surfaced: KeyboardInterrupt, or DuckDB's interrupted query (an
    InterruptException, or a RuntimeError "Query interrupted" from its Arrow/Polars paths)."""
    if isinstance(exc, KeyboardInterrupt | StoreInterrupted):
        return True
    import duckdb

    if isinstance(exc, duckdb.InterruptException):
        return True
    return isinstance(exc, RuntimeError) and "Query interrupted" in str(exc)
