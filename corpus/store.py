"""The DuckDB store: opening, locking, migrations, transactions and runs.

Concurrency design. DuckDB lets one process open a file read-write, and read-only openers
are refused while it is open. selfevo therefore separates two locks:

* the **job lock** (``corpus.joblock``: ``flock`` of ``<real path>.lock`` and of a lock
  keyed by the file's device and inode, so a symlink, hard link or other path to the same
  file meets the same lock) is held by a writing command for its whole duration; a second
  writer fails at once with "store is in use by PID … (command)". The OS drops it when the
  process dies, so a SIGKILLed job never leaves the store locked.
* the **DuckDB file lock** is held only while a connection is open. Writers open a
  connection per short transaction (about 10 ms to open, write and close), so readers
  (``sql``, ``stats``, ``report``) get in between; a reader that finds the file busy retries
  for up to ``wait`` seconds, saying so once on stderr.

A killed job leaves its ``runs`` row at ``running``; the next writer marks it ``killed``
and sets its ``counts`` from the rows it committed (they are kept: every write is a whole
transaction, so what landed is complete), or marks it ``failed`` when the job left its last
words in the lock file (its final UPDATE was refused, e.g. by a full disk).

Before writing, a store is checked: a DuckDB file with tables but no ``_migrations`` is someone
else's database and is refused untouched; a store with migrations this code does not know was
written by a newer selfevo and is refused for writing (upgrade selfevo).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from corpus.errors import CorpusError, StoreBusy, is_interrupt, storage_error
from corpus.joblock import JobLock
from corpus.migrations import (
    MIGRATIONS,
    foreign_tables,
    migrate,
    pending_migrations,
    unknown_migrations,
)
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
        self._lock: JobLock | None = None
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
            raise CorpusError(f"directory {store.path.parent} does not exist; create it first "
                              "or pass --db (SELFEVO_DB) a file in another")
        store._lock = JobLock(store.path, command)
        try:
            store._lock.acquire()
            with store.transaction():
                pass  # the file is checked and migrated on connect
            store._lock.acquire_identity()  # a new store exists only now
            with store.transaction() as con:
                reap_dead_runs(con, store._lock.last_words)
        except BaseException as exc:
            store.close()
            converted = storage_error(exc)
            if converted is not None:
                raise converted from exc
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
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- locking -------------------------------------------------------------------------
    @property
    def lock_path(self) -> Path:
        """The path lock file, ``<real path of the store>.lock`` (corpus.joblock)."""
        return JobLock(self.path, "").path_lock

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
            try:
                check_writable_store(con, self.path)
            except BaseException:
                con.close()
                raise
            migrate(con)
        elif foreign_tables(con):
            con.close()
            raise CorpusError(f"{self.path} is a DuckDB database but not a selfevo store; "
                              "pass --db a selfevo store")
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
            self._depth = max(self._depth - 1, 0)  # 0 already if the connection was discarded
            if self._depth == 0 and self._con is not None:
                # Closing checkpoints the WAL into the file: a Ctrl-C in there could leave the
                # database instance locked for the next connect of this process (it hung).
                with _deferred_sigint():
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
                # A failed statement or an interrupt may have ended the transaction already;
                # the error that got us here is the one to report, not ROLLBACK's.
                with contextlib.suppress(duckdb.Error):
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
        self._insert_run(run, parent_run_id)
        return run

    def _insert_run(self, run: Run, parent_run_id: str | None) -> None:
        with self.transaction() as con:
            con.execute(
                "INSERT INTO runs (run_id, command, config, code_version, started_at, status,"
                " pid, parent_run_id) VALUES (?, ?, ?, ?, now(), 'running', ?, ?)",
                [run.run_id, run.command, redact(canonical_json(run.config)), code_version(),
                 os.getpid(), parent_run_id],
            )

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
        stopped to wait for work outside (:class:`schemas.errors.Waiting`), else ``failed``.

        A full disk or unwritable file becomes a one-line CorpusError; an interrupt, however
        DuckDB surfaced it, becomes KeyboardInterrupt. When even the final UPDATE is refused,
        the final state goes to the lock file for the next writer (corpus.joblock).
        """
        run = Run(self, new_run_id(), command, config)
        try:
            # Inside the try: a Ctrl-C that lands while the row is being written still ends
            # it as 'interrupted' (an UPDATE of a row that never landed changes nothing).
            self._insert_run(run, parent_run_id)
            yield run
        except Waiting as exc:  # e.g. batches still running: the next run continues
            self._finish_anyway(run, "waiting", str(exc).splitlines()[0])
            raise
        except BaseException as exc:
            if is_interrupt(exc):
                self._finish_anyway(run, "interrupted", "interrupted by the user (Ctrl-C)")
                if isinstance(exc, KeyboardInterrupt):
                    raise
                raise KeyboardInterrupt from exc
            converted = storage_error(exc)
            self._finish_anyway(run, "failed", run_error(converted or exc))
            if converted is not None:
                raise converted from exc
            raise
        with _deferred_sigint():  # the work is done: a Ctrl-C now must not leave it 'running'
            self.finish_run(run, "ok")

    def _finish_anyway(self, run: Run, status: str, error: str) -> None:
        """finish_run, deaf to a second Ctrl-C; if the store refuses the UPDATE, the final
        state is left in the lock file and the next writer applies it."""
        with _deferred_sigint():
            for _attempt in range(2):
                try:
                    self.finish_run(run, status, error)
                    return
                except Exception:
                    # The interrupted job may have left its connection inside an aborted
                    # transaction: drop it and try once more on a fresh one.
                    self._discard_connection()
            if self._lock is None or not self._lock.leave_last_word(run.run_id, status, error):
                print(f"warning: could not record run {run.run_id} as {status}", file=sys.stderr)

    def _discard_connection(self) -> None:
        if self._con is not None:
            with contextlib.suppress(duckdb.Error):
                self._con.close()
            self._con = None
            self._depth = 0


@contextlib.contextmanager
def _deferred_sigint() -> Iterator[None]:
    """Hold off SIGINT for the block (main thread only; elsewhere Python gets no signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hits: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda *_: hits.append(1))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def check_writable_store(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Refuse, before writing a byte, someone else's DuckDB file or a newer selfevo's store."""
    foreign = foreign_tables(con)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise CorpusError(
            f"{path} is a DuckDB database but not a selfevo store (it has {shown} and no "
            "_migrations); nothing was written to it — pass --db a new file or a selfevo store"
        )
    newer = unknown_migrations(con)
    if newer:
        raise CorpusError(
            f"store {path} was migrated by a newer selfevo ({', '.join(newer)}); this one "
            "must not write to it: upgrade selfevo (pip install -U selfevo)"
        )


def _run_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Tables whose rows name the run that wrote them (a killed run's counts come from them)."""
    return [r[0] for r in con.execute(
        "SELECT c.table_name FROM information_schema.columns c "
        "JOIN information_schema.tables t USING (table_catalog, table_schema, table_name) "
        "WHERE c.column_name = 'run_id' AND t.table_type = 'BASE TABLE' "
        "AND c.table_name <> 'runs' AND c.table_catalog = current_database() "
        "ORDER BY 1").fetchall()]


def reap_dead_runs(con: duckdb.DuckDBPyConnection,
                   last_words: dict[str, list[str]] | None = None) -> list[str]:
    """Give every ``running`` run (its process is gone: we hold the job lock) a final state.

    A run that left last words gets them (e.g. ``failed``: disk full); any other is
    ``killed``. Either way its ``counts`` are the rows it committed, per table: every write is
    a whole transaction, so those rows are complete and are kept. Calls it left ``pending``
    were in flight and are flagged ``possibly_billed``. Returns the reaped run ids.
    """
    dead = [r[0] for r in con.execute(
        "SELECT run_id FROM runs WHERE status = 'running' ORDER BY run_id").fetchall()]
    if dead:
        counts: dict[str, dict[str, int]] = {rid: {} for rid in dead}
        for table in _run_tables(con):
            for rid, n in con.execute(
                    f'SELECT run_id, count(*) FROM "{table}" WHERE run_id IN '
                    f'(SELECT unnest(?)) GROUP BY run_id', [dead]).fetchall():
                counts[rid][table] = n
        for rid in dead:
            status, error = (last_words or {}).get(rid) or (
                "killed", "process ended without finishing the run; its committed rows are "
                "kept (counts)")
            con.execute(
                "UPDATE runs SET status = ?, finished_at = now(), error = ?, counts = ? "
                "WHERE run_id = ?",
                [status, error, json.dumps(counts[rid], sort_keys=True), rid])
    # A call pending in a batch was handed to the provider on purpose: its batch answers it
    # (once), so it is not a request a dead job left in flight.
    con.execute(
        "UPDATE calls SET possibly_billed = true WHERE status = 'pending' AND "
        "call_id NOT IN (SELECT call_id FROM batch_calls WHERE status = 'pending')")
    return dead


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
