"""The DuckDB store: opening, locking, migrations, transactions and runs.

Concurrency design. DuckDB lets one process open a file read-write, and read-only openers
are refused while it is open. selfevo therefore separates two locks:

* the **job lock** (``<db>.lock``, ``flock``) is held by a writing command for its whole
  duration; a second writer fails at once with "store is in use by PID … (command)". The OS
  drops it when the process dies, so a SIGKILLed job never leaves the store locked.
* the **DuckDB file lock** is held only while a connection is open. Writers open a
  connection per short transaction (about 10 ms to open, write and close), so readers
  (``sql``, ``stats``, ``report``) get in between; a reader that finds the file busy retries
  for up to ``wait`` seconds, saying so once on stderr.

A killed job leaves its ``runs`` row at ``running``; the next writer marks it ``killed``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import secrets
import sys
import time
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from corpus.errors import CorpusError, StoreBusy
from corpus.migrations import MIGRATIONS, migrate, pending_migrations
from corpus.redaction import redact, redact_optional
from corpus.version import code_version
from schemas.errors import UserError, Waiting
from schemas.identity import canonical_json

DEFAULT_DB = "selfevo.duckdb"
DB_ENV = "SELFEVO_DB"


def default_db_path() -> str:
    """``$SELFEVO_DB`` or ``./selfevo.duckdb``."""
    return os.environ.get(DB_ENV) or DEFAULT_DB


def new_run_id() -> str:
    """A sortable run id: ``r`` + UTC time to the millisecond + random suffix."""
    now = datetime.now(UTC)
    return f"r{now:%Y%m%dT%H%M%S}{now.microsecond // 1000:03d}-{secrets.token_hex(3)}"


def is_lock_conflict(exc: BaseException) -> bool:
    """Whether DuckDB refused to open the file because another process holds its lock: an
    ``IOException`` from connecting, never an error in a user's SQL (whatever its text)."""
    return isinstance(exc, duckdb.IOException) and str(exc).startswith(
        "IO Error: Could not set lock on file")


#: Network file systems a store connection refuses, should an extension ever register one.
NETWORK_FILESYSTEMS = ("HTTPFileSystem", "S3FileSystem", "GCSFileSystem", "HuggingFaceFileSystem",
                       "AzureBlobStorageFileSystem", "AzureDfsStorageFileSystem")


def connect_file(path: str | os.PathLike[str], *, read_only: bool) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection to a store file that never fetches or loads code on its own.

    Extension auto-install and auto-load are off (``sqlite_scan``, ``read_csv('https://…')``
    or a SQLite file fail instead of downloading a native extension), Python variables are not
    scanned as tables, and network file systems are disabled.
    """
    from corpus.extensions import offline_config

    config = offline_config() | {"python_enable_replacements": False}
    try:
        con = duckdb.connect(str(path), read_only=read_only, config=config)
    except duckdb.Error as exc:
        if not is_lock_conflict(exc) and _not_duckdb(Path(path)):
            raise CorpusError(f"{path} is not a DuckDB file (a selfevo store is one); "
                              "pass another --db") from None
        raise
    con.execute(f"SET disabled_filesystems = '{','.join(NETWORK_FILESYSTEMS)}'")
    return con


def _not_duckdb(path: Path) -> bool:
    """Whether ``path`` holds bytes but not DuckDB's file header (``DUCK`` at offset 8)."""
    try:
        with path.open("rb") as f:
            head = f.read(12)
    except OSError:
        return False
    return len(head) > 0 and head[8:12] != b"DUCK"


class Run:
    """A row of ``runs`` being written; ``counts`` is saved when the run finishes."""

    def __init__(self, store: Store, run_id: str, command: str, config: dict[str, Any]):
        self.store = store
        self.run_id = run_id
        self.command = command
        self.config = config
        self.counts: dict[str, Any] = {}

    def add(self, key: str, n: int = 1) -> None:
        """Increase a count shown in ``runs.counts``."""
        self.counts[key] = self.counts.get(key, 0) + n


class Store:
    """A selfevo DuckDB store. Use :meth:`open` for writing, :meth:`open_readonly` to read."""

    def __init__(self, path: str | os.PathLike[str], *, write: bool, wait: float = 30.0):
        self.path = Path(path)
        self.write = write
        self.wait = wait
        self._con: duckdb.DuckDBPyConnection | None = None
        self._depth = 0
        self._lock_fd: int | None = None
        self._warned = False
        self._migrated = False

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def open(
        cls, path: str | os.PathLike[str] | None = None, *, command: str = "selfevo",
        wait: float = 120.0,
    ) -> Store:
        """Open (creating if needed) for writing: take the job lock, migrate, reap dead runs."""
        store = cls(path or default_db_path(), write=True, wait=wait)
        if store.path.parent and not store.path.parent.exists():
            raise CorpusError(f"directory {store.path.parent} does not exist; create it first")
        store._acquire_job_lock(command)
        try:
            with store.transaction() as con:
                pass  # migrations run on connect
            with store.transaction() as con:
                con.execute(
                    "UPDATE runs SET status = 'killed', finished_at = now(), "
                    "error = 'process ended without finishing the run' "
                    "WHERE status = 'running'"
                )
                # A call pending in a batch was handed to the provider on purpose: its batch
                # answers it (once), so it is not a request a dead job left in flight.
                con.execute(
                    "UPDATE calls SET possibly_billed = true WHERE status = 'pending' AND "
                    "call_id NOT IN (SELECT call_id FROM batch_calls WHERE status = 'pending')"
                )
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def open_readonly(cls, path: str | os.PathLike[str] | None = None, wait: float = 30.0) -> Store:
        """Open an existing store for reading; works while another process runs a job."""
        store = cls(path or default_db_path(), write=False, wait=wait)
        if not store.path.exists():
            raise CorpusError(
                f"no store at {store.path}; create one with 'selfevo init --db {store.path}' "
                "or pass --db / set SELFEVO_DB"
            )
        return store

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close any open connection and release the job lock."""
        if self._con is not None:
            self._con.close()
            self._con = None
            self._depth = 0
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- locking -------------------------------------------------------------------------
    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def _acquire_job_lock(self, command: str) -> None:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise StoreBusy(
                f"store {self.path} is in use by {holder}; wait for it to finish "
                "or use another --db"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"PID {os.getpid()} ({command})".encode(), 0)
        self._lock_fd = fd

    # -- connections ---------------------------------------------------------------------
    def _connect(self) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + self.wait
        delay = 0.005
        while True:
            try:
                con = connect_file(self.path, read_only=not self.write)
                break
            except duckdb.IOException as exc:
                if not is_lock_conflict(exc) or time.monotonic() > deadline:
                    if is_lock_conflict(exc):
                        raise StoreBusy(
                            f"store {self.path} stayed busy for {self.wait:.0f}s: {exc}. "
                            "Retry when the running job finishes a write."
                        ) from None
                    raise CorpusError(f"cannot open store {self.path}: {exc}") from None
                if not self._warned and time.monotonic() > deadline - self.wait + 1.0:
                    print(f"waiting for store {self.path} (busy) …", file=sys.stderr)
                    self._warned = True
                # Short, jittered retries: a reader's query holds the file for milliseconds,
                # and a long back-off would let back-to-back readers starve a writer.
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.04)
        if self._migrated:
            return con
        if self.write:
            migrate(con)
        elif pending_migrations(con):
            con.close()
            raise CorpusError(
                f"store {self.path} was made by an older selfevo; run 'selfevo init --db "
                f"{self.path}' once to migrate it"
            )
        self._migrated = True
        return con

    @contextlib.contextmanager
    def connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection, opened on entry and closed when the outermost block exits.

        Nest it (or wrap a whole job in it) to keep one connection open, at the price of
        keeping readers out meanwhile.
        """
        if self._con is None:
            self._con = self._connect()
        self._depth += 1
        try:
            yield self._con
        finally:
            self._depth -= 1
            if self._depth == 0 and self._con is not None:
                self._con.close()
                self._con = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One write transaction: all of it lands, or (on any exception) none of it."""
        if not self.write:
            raise CorpusError("this store was opened read-only")
        with self.connection() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run one statement and fetch all rows."""
        with self.connection() as con:
            return con.execute(sql, params or []).fetchall()

    def query_dicts(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        """Run one statement and fetch rows as dicts."""
        with self.connection() as con:
            cur = con.execute(sql, params or [])
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    # -- runs ----------------------------------------------------------------------------
    def start_run(self, command: str, config: dict[str, Any], parent_run_id: str | None = None) -> Run:
        """Insert a ``running`` row in ``runs`` and return it."""
        run = Run(self, new_run_id(), command, config)
        with self.transaction() as con:
            con.execute(
                "INSERT INTO runs (run_id, command, config, code_version, started_at, status,"
                " pid, parent_run_id) VALUES (?, ?, ?, ?, now(), 'running', ?, ?)",
                [run.run_id, command, redact(canonical_json(config)), code_version(),
                 os.getpid(), parent_run_id],
            )
        return run

    def finish_run(self, run: Run, status: str = "ok", error: str | None = None) -> None:
        """Mark a run finished with its counts."""
        with self.transaction() as con:
            con.execute(
                "UPDATE runs SET status = ?, finished_at = now(), counts = ?, error = ? "
                "WHERE run_id = ?",
                [status, json.dumps(run.counts, sort_keys=True), redact_optional(error),
                 run.run_id],
            )

    @contextlib.contextmanager
    def run(
        self, command: str, config: dict[str, Any], parent_run_id: str | None = None
    ) -> Iterator[Run]:
        """A run for the block: ``ok`` on success, ``interrupted`` on Ctrl-C, ``waiting`` when it
        stopped to wait for work outside (:class:`schemas.errors.Waiting`), else ``failed``."""
        run = self.start_run(command, config, parent_run_id)
        try:
            yield run
        except KeyboardInterrupt:
            self.finish_run(run, "interrupted", "interrupted by the user")
            raise
        except Waiting as exc:  # e.g. batches still running: the next run continues
            self.finish_run(run, "waiting", str(exc).splitlines()[0])
            raise
        except BaseException as exc:
            self.finish_run(run, "failed", run_error(exc))
            raise
        self.finish_run(run, "ok")


def run_error(exc: BaseException) -> str:
    """The one line a failed run keeps in ``runs.error``: a user error's message; for any
    other exception (a bug) also its type and the innermost frame, so the row alone says
    where it broke. Full tracebacks are for the terminal (``selfevo --debug``)."""
    first = str(exc).splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, UserError):
        return first or type(exc).__name__
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {first}{where}" if first else f"{type(exc).__name__}{where}"


def latest_migration() -> str:
    """Name of the newest migration this code knows."""
    return MIGRATIONS[-1].__name__
