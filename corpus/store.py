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
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import duckdb

from corpus.errors import (
    CorpusError,
    StoreBusy,
    arm_stop_watchdog,
    is_interrupt,
    mark_store_stuck,
    storage_error,
)
from corpus.joblock import JobLock
from corpus.migrations import (
    MIGRATIONS,
    foreign_tables,
    migrate,
    pending_migrations,
    unknown_migrations,
)
from corpus.redaction import redact, redact_optional
from corpus.storespec import StoreSpec
from corpus.version import code_version
from corpus.worker import Worker
from schemas.errors import UserError, Waiting
from schemas.identity import canonical_json

if TYPE_CHECKING:
    from corpus.lake import Lake

T = TypeVar("T")

DEFAULT_DB = "selfevo.duckdb"

#: Seconds a run's final status may take to land before it goes to the lock file instead.
FINISH_TIMEOUT_S = 10.0
DB_ENV = "SELFEVO_DB"


#: A run on a lake whose heartbeat is older than this is dead (its machine stopped it).
STALE_AFTER_S = 300.0
#: How often a run on a lake says it is alive (``runs.heartbeat_at``).
HEARTBEAT_S = 60.0
#: DuckLake's own commit retries on the connection of long appends (``Store.transact``).
REBASE_RETRIES = 100


def default_db_path() -> str:
    """``$SELFEVO_DB`` or ``./selfevo.duckdb``, validated by :func:`store_file`."""
    return store_file(os.environ.get(DB_ENV) or DEFAULT_DB)


def store_file(text: str | os.PathLike[str]) -> str:
    """The store a ``--db`` value names, parsed by ``StoreSpec.parse`` (the one choke point
    for every store spec): a DuckDB file's path, or the DuckLake spec as given (it may hold
    a password: show ``StoreSpec.parse(text)`` instead, which prints ``***``)."""
    spec = StoreSpec.parse(text)
    return str(text).strip() if spec.is_lake else spec.target


def _shown_path(spec: StoreSpec) -> Path:
    """A path naming the store in messages and beside which its files go (batch shards):
    the file; a lake's catalog file, or its data directory."""
    if not spec.is_lake:
        return Path(spec.target)
    if spec.catalog == "duckdb":
        return Path(spec.target)
    return Path((spec.data_path or "ducklake").rstrip("/"))


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
    try:
        con.execute(f"SET disabled_filesystems = '{','.join(NETWORK_FILESYSTEMS)}'")
    except BaseException:  # a Ctrl-C here must not leave an open connection behind: the
        con.close()  # next connect of this process waited on it forever
        raise
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
        self.spec = StoreSpec.parse(path)
        self.path = _shown_path(self.spec)
        self.lake: Lake | None = None  # set for a DuckLake store (corpus.lake)
        self._cursors = threading.local()  # a lake's per-thread connection and its depth
        self._heartbeats: dict[str, threading.Event] = {}
        self.write = write
        self.wait = wait
        self._con: duckdb.DuckDBPyConnection | None = None
        self._depth = 0
        self._lock: JobLock | None = None
        self._warned = False
        self._migrated = False
        self._rebasing: Lake | None = None  # a lake's connection for long appends (transact)
        self._open_runs: list[Run] = []  # runs this Store has started and not finished
        self.reaped: list[str] = []  # the dead runs this writer gave a final state on opening
        self.command = "selfevo"  # the command that opened it for writing (lake commit messages)

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def open(
        cls, path: str | os.PathLike[str] | None = None, *, command: str = "selfevo",
        wait: float = 120.0,
    ) -> Store:
        """Open (creating if needed) for writing: take the job lock, migrate, reap dead runs.

        On a DuckLake: attach it, create or migrate its schema, reap stale runs by liveness
        (other machines may be writing: no job lock)."""
        store = cls(path or default_db_path(), write=True, wait=wait)
        store.command = command
        if store.spec.is_lake:
            store._open_lake()
            return store
        if store.path.parent and not store.path.parent.exists():
            raise CorpusError(f"directory {store.path.parent} does not exist; create it first "
                              "or pass --db (SELFEVO_DB) a file in another")
        store._lock = JobLock(store.path, command)
        with store._closed_on_failure():
            store._lock.acquire()
            with store.transaction():
                pass  # the file is checked and migrated on connect
            store._lock.acquire_identity()  # a new store exists only now
            with store.transaction() as con:
                store.reaped = reap_dead_runs(con, store._lock.last_words)
        return store

    @contextlib.contextmanager
    def _closed_on_failure(self) -> Iterator[None]:
        """Opening: on any failure close what was opened; storage errors become one line."""
        try:
            yield
        except BaseException as exc:
            self.close()
            converted = storage_error(exc)
            if converted is not None:
                raise converted from exc
            raise

    @classmethod
    def open_readonly(cls, path: str | os.PathLike[str] | None = None, wait: float = 30.0,
                      *, at: int | None = None) -> Store:
        """Open an existing store for reading; works while another process runs a job.

        ``at``: a DuckLake store as of that DuckLake snapshot (time travel); a file store
        has no history, so ``at`` is refused there in one line.
        """
        store = cls(path or default_db_path(), write=False, wait=wait)
        if at is not None and not store.spec.is_lake:
            raise CorpusError(f"--at {at}: time travel needs a DuckLake store; {store.path} is "
                              "a DuckDB file (it keeps no history)")
        if store.spec.is_lake:
            store._open_lake(at)
            return store
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

    def _open_lake(self, version: int | None = None) -> None:
        """Attach the lake (read-only for a reader, at ``version`` for time travel); a writer
        prepares its schema and reaps stale runs."""
        from corpus.lake import Lake
        from corpus.lakeschema import prepare_lake

        self.lake = Lake(self.spec, read_only=not self.write, version=version)
        with self._closed_on_failure():
            if self.write:
                prepare_lake(self.transact, lambda con: check_writable_store(con, self.spec))
                self.reaped = self.transact(reap_stale_runs)
            else:
                with self.connection() as con:
                    self._check_readable(con, current=version is None)

    def _check_readable(self, con: duckdb.DuckDBPyConnection, *, current: bool = True) -> None:
        if not con.execute("SELECT count(*) FROM duckdb_tables() WHERE database_name = "
                           "current_database()").fetchone()[0]:
            raise CorpusError(f"no store in {self.spec}; create one with 'selfevo init --db …'")
        if foreign_tables(con):
            raise CorpusError(f"{self.spec} is a DuckLake but not a selfevo store; "
                              "pass --db a selfevo store")
        if current and pending_migrations(con):  # the past of a lake may be older
            raise CorpusError(f"store {self.spec} was made by an older selfevo; run "
                              "'selfevo init --db …' once to migrate it")

    def close(self) -> None:
        """Close any open connection and release the job lock (a lake: detach it)."""
        for stop in self._heartbeats.values():
            stop.set()
        self._heartbeats.clear()
        if self._rebasing is not None:
            self._rebasing.close()
            self._rebasing = None
        if self.lake is not None:
            self.lake.close()
            self.lake = None
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
        try:  # whatever ends this (a refusal, a Ctrl-C mid-migration), the connection is closed:
            self._check_and_migrate(con)  # a live one left behind hung the next connect
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                con.close()
            raise
        self._migrated = True
        return con

    def _check_and_migrate(self, con: duckdb.DuckDBPyConnection) -> None:
        """Refuse a file that is no (current) selfevo store; migrate it when writing."""
        if self.write:
            check_writable_store(con, self.path)
            migrate(con)
        elif foreign_tables(con):
            raise CorpusError(f"{self.path} is a DuckDB database but not a selfevo store; "
                              "pass --db a selfevo store")
        elif pending_migrations(con):
            raise CorpusError(
                f"store {self.path} was made by an older selfevo; run 'selfevo init --db "
                f"{self.path}' once to migrate it"
            )

    @contextlib.contextmanager
    def connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection, opened on entry and closed when the outermost block exits.

        Nest it (or wrap a whole job in it) to keep one connection open, at the price of
        keeping readers out meanwhile. On a lake: a cursor per thread (readers are never
        kept out there).
        """
        if self.spec.is_lake:
            with self._lake_cursor() as cur:
                yield cur
            return
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

    def _attached(self) -> Lake:
        """The attached lake; a closed lake store is an error (never a file of that name)."""
        if self.lake is None:
            raise CorpusError(f"store {self.spec} is closed")
        return self.lake

    @contextlib.contextmanager
    def _lake_cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        lake = self._attached()
        local = self._cursors
        if getattr(local, "depth", 0) == 0:
            local.cur = lake.cursor()
        local.depth = getattr(local, "depth", 0) + 1
        try:
            yield local.cur
        finally:
            local.depth -= 1
            if local.depth == 0:
                local.cur.close()
                local.cur = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One write transaction: all of it lands, or (on any exception) none of it.

        File stores only: on a lake a commit may lose to another writer and must be re-run,
        which a ``with`` body cannot be; write through :meth:`transact` there.
        """
        if not self.write:
            raise CorpusError("this store was opened read-only")
        if self.spec.is_lake:
            raise CorpusError("internal: a DuckLake store writes through Store.transact(fn)")
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

    def transact(self, fn: Callable[[duckdb.DuckDBPyConnection], T], *,
                 appends: Sequence[str] = (), run_id: str | None = None) -> T:
        """Run ``fn(con)`` as one write transaction and return its result.

        The callable form of :meth:`transaction`, for a store on a DuckLake where a commit that
        lost to another writer is re-run: ``fn`` must do database work only (no ``run.add``,
        no progress, no files), so running it again is harmless. On a file store it runs once.
        On a lake conflicts are re-run with backoff and jitter (``corpus.lake.Lake.transact``).

        ``appends``: ``fn`` is a long bulk append (an import) of run ``run_id``'s rows to these
        id-keyed tables. On a Postgres lake it then commits on a rebasing connection, which
        busy writers cannot starve, and the ids it wrote are reconciled right after
        (``corpus.lake.transact_appending``). Elsewhere it is an ordinary
        transaction (a file store or a DuckDB-file catalog has one writer).
        """
        if self.spec.is_lake:
            if not self.write:
                raise CorpusError("this store was opened read-only")
            fn = self._signed(fn)
            if appends and self.spec.catalog == "postgres":
                if run_id is None:
                    raise CorpusError("internal: Store.transact(appends=…) needs the run_id")
                from corpus.lake import Lake, transact_appending

                if self._rebasing is None:
                    self._rebasing = Lake(self.spec, ducklake_retries=REBASE_RETRIES)
                return transact_appending(self._rebasing, self._attached(), fn,
                                          tables=appends, run_id=run_id)
            return self._attached().transact(fn)
        with self.transaction() as con:
            return fn(con)

    def _signed(self, fn: Callable[[duckdb.DuckDBPyConnection], T]
                ) -> Callable[[duckdb.DuckDBPyConnection], T]:
        """``fn``, then the lake commit's message: the command and run that made it, so
        ``lake.snapshots()`` answers "which run wrote this version" without a join."""
        from corpus.lake import set_commit_message

        def signed(con: duckdb.DuckDBPyConnection) -> T:
            result = fn(con)
            run = self._open_runs[-1] if self._open_runs else None
            run_id, command = (run.run_id, run.command) if run else (None, self.command)
            host = socket.gethostname()
            info = {"run_id": run_id, "command": command, "host": host, "pid": os.getpid()}
            user = os.environ.get("USER") or os.environ.get("LOGNAME") or "unknown"
            set_commit_message(con, f"{user}@{host}",
                               " ".join(filter(None, (command, run_id))) or "selfevo",
                               canonical_json(info))
            return result

        return signed

    @property
    def open_run_id(self) -> str | None:
        """The run this Store started last and has not finished (None outside a run)."""
        return self._open_runs[-1].run_id if self._open_runs else None

    def commit_version(self, con: duckdb.DuckDBPyConnection) -> int | None:
        """Inside a :meth:`transact` body on a lake: the DuckLake snapshot its commit will
        make (None on a file store). Call it first in the body.

        A lake transaction commits only when no other commit landed since its first
        statement (``Lake`` turns DuckLake's rebasing off), and snapshot ids count up by
        one, so the commit of a transaction that reads snapshot v makes v + 1.
        """
        if not self.spec.is_lake:
            return None
        from corpus.lake import current_snapshot

        return current_snapshot(con) + 1

    @contextlib.contextmanager
    def reading_at(self, version: int | None) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read connection to the store as of DuckLake snapshot ``version`` (``None``: now;
        a file store has only now)."""
        if version is None or not self.spec.is_lake:
            with self.connection() as con:
                yield con
            return
        from corpus.lake import Lake

        with Lake(self.spec, version=version) as old:
            cur = old.cursor()
            try:
                yield cur
            finally:
                cur.close()

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
        config = redact(canonical_json(run.config))
        self._open_runs.append(run)  # before the INSERT: a lake signs its commit with the run
        try:
            self.transact(lambda con: con.execute(
                "INSERT INTO runs (run_id, command, config, code_version, started_at, status,"
                " pid, parent_run_id, host, heartbeat_at) "
                "VALUES (?, ?, ?, ?, now(), 'running', ?, ?, ?, now())",
                [run.run_id, run.command, config, code_version(), os.getpid(), parent_run_id,
                 socket.gethostname()]))
        except BaseException:
            self._open_runs.remove(run)
            raise
        if self.spec.is_lake:
            self._start_heartbeat(run.run_id)

    def _start_heartbeat(self, run_id: str) -> None:
        """Update the run's ``heartbeat_at`` every :data:`HEARTBEAT_S` until it finishes, so
        writers on other machines can tell it from a dead one (:func:`reap_stale_runs`)."""
        stop = threading.Event()
        self._heartbeats[run_id] = stop

        def beat() -> None:
            while not stop.wait(HEARTBEAT_S):
                with contextlib.suppress(Exception):  # a missed beat is retried next minute
                    self.transact(lambda con: con.execute(
                        "UPDATE runs SET heartbeat_at = now() WHERE run_id = ? "
                        "AND status = 'running'", [run_id]))

        threading.Thread(target=beat, name=f"selfevo-heartbeat-{run_id}", daemon=True).start()

    def finish_run(self, run: Run, status: str = "ok", error: str | None = None) -> None:
        """Mark a run finished with its counts."""
        counts = json.dumps(run.counts, sort_keys=True)
        stop = self._heartbeats.pop(run.run_id, None)
        if stop is not None:
            stop.set()
        try:
            self.transact(lambda con: con.execute(
                "UPDATE runs SET status = ?, finished_at = now(), counts = ?, error = ? "
                "WHERE run_id = ?", [status, counts, redact_optional(error), run.run_id]))
        finally:  # after the UPDATE: a lake signs that commit with the run too
            if run in self._open_runs:
                self._open_runs.remove(run)

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
                _release_interrupted_work(exc)
                self._finish_anyway(run, "interrupted", "interrupted by the user (Ctrl-C)")
                if isinstance(exc, KeyboardInterrupt):
                    raise
                raise KeyboardInterrupt from exc
            converted = storage_error(exc)
            self._finish_anyway(run, "failed", run_error(converted or exc))
            if converted is not None:
                raise converted from exc
            raise
        # The work is done: a Ctrl-C now must not leave it 'running'; the command then ends.
        with _deferred_sigint(redeliver=False):
            self.finish_run(run, "ok")

    def _finish_anyway(self, run: Run, status: str, error: str) -> None:
        """finish_run, deaf to a second Ctrl-C; if the store refuses the UPDATE, or does not
        answer within :data:`FINISH_TIMEOUT_S`, the final state is left in the lock file and
        the next writer applies it.

        The wait is bounded because DuckDB, interrupted at some points of a query, left its
        database instance so that the next connect of this process never returned: the
        command hung after Ctrl-C. When that happens the store is marked stuck
        (:func:`corpus.errors.mark_store_stuck`) and the CLI ends the process after its line.
        """
        recorded = threading.Event()

        def attempt() -> None:
            for _attempt in range(2):
                try:
                    self.finish_run(run, status, error)
                    recorded.set()
                    return
                except Exception:
                    # The interrupted job may have left its connection inside an aborted
                    # transaction: drop it and try once more on a fresh one.
                    self._discard_connection()

        with _deferred_sigint(redeliver=False):  # the interrupt or failure is already raised
            worker = Worker(attempt, "selfevo-finish-run")
            worker.start()
            worker.wait(FINISH_TIMEOUT_S)
            if recorded.is_set():
                return
            if worker.running:
                mark_store_stuck()
            if self._lock is None or not self._lock.leave_last_word(run.run_id, status, error):
                print(f"warning: could not record run {run.run_id} as {status}", file=sys.stderr)

    def _discard_connection(self) -> None:
        if self._con is not None:
            with contextlib.suppress(duckdb.Error):
                self._con.close()
            self._con = None
            self._depth = 0


def _release_interrupted_work(exc: BaseException) -> None:
    """Drop what the interrupted code still holds through the traceback's frames (a DuckDB
    connection or result cut off mid-call) before the store is used again, so that nothing
    of the cut-off work stays open meanwhile. The traceback keeps its lines for ``--debug``."""
    import gc
    import traceback

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        exc = exc.__context__  # type: ignore[assignment]
    gc.collect()


@contextlib.contextmanager
def _deferred_sigint(redeliver: bool = True) -> Iterator[None]:
    """Hold off SIGINT for the block (main thread only; elsewhere Python gets no signals).

    A Ctrl-C held off is delivered when the block ends (``redeliver``), never lost: a command
    must stop after it. ``redeliver=False`` only where the block itself ends the command's
    work (its final status). Either way the CLI's stop watchdog is armed at once.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hits: list[int] = []

    def hold(*_: object) -> None:
        hits.append(1)
        arm_stop_watchdog()

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if hits and redeliver:
        signal.raise_signal(signal.SIGINT)


def check_writable_store(con: duckdb.DuckDBPyConnection, path: Path | StoreSpec) -> None:
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
        counts = _committed_counts(con, dead)
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
        "call_id NOT IN (SELECT call_id FROM batch_calls WHERE status = 'pending')"
    )
    return dead


def reap_stale_runs(con: duckdb.DuckDBPyConnection) -> list[str]:
    """On a lake, give a final state to the ``running`` runs that are dead: their heartbeat
    is older than :data:`STALE_AFTER_S`, or they ran on this host under a PID that is gone.

    Other machines' live runs are left alone (a PID means nothing across hosts). The
    ``pending`` calls of runs that are no longer running (reaped now, or ended ``failed`` /
    ``interrupted`` by an exception while calls were in flight) are flagged
    ``possibly_billed``, as the file store's next writer flags every pending call. Runs in
    one transaction (re-runnable); returns the reaped run ids.

    A call's sender is ``calls.sent_by`` (the run that last set it pending), else the run
    that registered it (``run_id``): a call a live run is re-sending for a finished one is
    the live run's, and is not flagged.
    """
    dead = stale_runs(con)
    if dead:
        counts = _committed_counts(con, dead)
        for rid in dead:
            con.execute(
                "UPDATE runs SET status = 'killed', finished_at = now(), error = ?, counts = ? "
                "WHERE run_id = ?",
                ["process stopped sending heartbeats (or ended) without finishing the run; "
                 "its committed rows are kept (counts)",
                 json.dumps(counts[rid], sort_keys=True), rid])
    con.execute(
        "UPDATE calls SET possibly_billed = true WHERE status = 'pending' AND NOT "
        "coalesce(possibly_billed, false) AND coalesce(sent_by, run_id) IN "
        "(SELECT run_id FROM runs WHERE status <> 'running') AND "
        "call_id NOT IN (SELECT call_id FROM batch_calls WHERE status = 'pending')")
    return dead


def stale_runs(con: duckdb.DuckDBPyConnection, *, heartbeats: bool = True) -> list[str]:
    """The ``running`` runs that are dead: their heartbeat is older than
    :data:`STALE_AFTER_S` (``heartbeats``: a lake's runs beat; a file store's do not), or they
    ran on this host under a PID that is gone. Reads only."""
    host = socket.gethostname()
    rows = con.execute(
        "SELECT run_id, host, pid, coalesce(heartbeat_at, started_at) < now() - "
        f"INTERVAL {int(STALE_AFTER_S)} SECOND FROM runs WHERE status = 'running'"
        " ORDER BY run_id").fetchall()
    return [rid for rid, h, pid, stale in rows
            if (stale and heartbeats)
            or (h == host and pid is not None and not _pid_alive(int(pid)))]


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _committed_counts(con: duckdb.DuckDBPyConnection, runs: list[str]) -> dict[str, dict[str, int]]:
    """Per run, the rows it committed in each table that names its run."""
    counts: dict[str, dict[str, int]] = {rid: {} for rid in runs}
    for table in _run_tables(con):
        for rid, n in con.execute(
                f'SELECT run_id, count(*) FROM "{table}" WHERE run_id IN '
                f'(SELECT unnest(?)) GROUP BY run_id', [runs]).fetchall():
            counts[rid][table] = n
    return counts


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
