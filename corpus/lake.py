"""A DuckLake attached in this process: commit-conflict retries, identity, schema.

Building blocks for the team store (docs/store.md, "Teams"); ``corpus.store`` wires them in.
Facts they rest on, all checked against duckdb 1.5.5 + ducklake 1.5.5 on PostgreSQL 18:

* DuckLake tables take no PRIMARY KEY, UNIQUE, CHECK, index or sequence; NOT NULL, DEFAULT
  (``now()`` too), JSON, TIMESTAMPTZ, UPDATE/DELETE (… FROM), ALTER TABLE, views and macros
  work. ``INSERT OR IGNORE/REPLACE`` and ``ON CONFLICT`` need a key, so they fail.
* With ``ducklake_max_retry_count = 0`` a commit fails when ANY other commit landed after
  the transaction's first statement: first committer wins, over the whole lake. Re-running
  the transaction then makes read-dependent writes (anti-join inserts) exact. With DuckLake's
  own retries (the default, 10) a commit is rebased onto newer snapshots without re-running
  its reads: two anti-join inserts of the same id both land. The setting is per DuckDB
  instance, not per connection, hence one :class:`Lake` per retry policy.
* A failed COMMIT has already ended the transaction; ROLLBACK then raises.
* Loading the two extensions costs about 0.5 s per DuckDB instance; a cursor costs 1 ms.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import duckdb

from corpus.errors import CorpusError
from corpus.extensions import DUCKLAKE, POSTGRES, load_extension, offline_config
from corpus.storespec import LAKE_ALIAS, StoreSpec, sql_literal

T = TypeVar("T")
#: ATTACHes of a new lake that lost the race to create its catalog, before giving up.
CREATE_RACE_ATTEMPTS = 5
_CONFLICT_MARKS = ("Failed to commit DuckLake transaction", "Transaction conflict")


class CommitConflict(CorpusError):
    """A DuckLake transaction kept losing to other writers' commits."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: attempt k sleeps U(0, min(cap, base * 2**k))."""

    attempts: int = 12
    base: float = 0.02  # seconds
    cap: float = 2.0    # seconds

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed attempt ``attempt`` (0-based)."""
        return rng.uniform(0, min(self.cap, self.base * 2 ** attempt))


def is_commit_conflict(exc: BaseException) -> bool:
    """Whether ``exc`` is DuckLake refusing a commit because another writer got there first."""
    return isinstance(exc, duckdb.TransactionException) and any(
        m in str(exc) for m in _CONFLICT_MARKS)


class Lake:
    """One DuckDB instance with the spec's lake attached as ``lake``; hand out cursors.

    ``ducklake_retries=0`` (the default) makes every transaction first-committer-wins, which
    :meth:`transact` turns into "re-run until it commits". A bulk append too long to ever win
    that race (a big import) uses a second Lake with DuckLake's own rebasing retries, then
    :func:`reconcile` for the ids it wrote.
    """

    def __init__(self, spec: StoreSpec, *, read_only: bool = False, version: int | None = None,
                 ducklake_retries: int = 0) -> None:
        if not spec.is_lake:
            raise CorpusError(f"{spec} is a DuckDB file, not a DuckLake")
        self.spec = spec
        self._db = duckdb.connect(":memory:", config=offline_config())
        try:
            load_extension(self._db, DUCKLAKE)
            if spec.catalog == "postgres":
                load_extension(self._db, POSTGRES)
            secret = spec.secret_sql()
            if secret:
                self._db.execute(secret)
            self._attach(read_only=read_only or version is not None, version=version)
            self._db.execute(f"SET ducklake_max_retry_count = {int(ducklake_retries)}")
        except duckdb.Error as exc:
            self._db.close()
            raise CorpusError(f"cannot open {spec}: {spec.redact(str(exc).splitlines()[0])}"
                              ) from None

    def _attach(self, *, read_only: bool, version: int | None) -> None:
        """ATTACH the lake; when two processes attach a new Postgres lake at once, both
        create DuckLake's catalog tables and the loser's CREATE fails on Postgres' unique
        index of type names: attach again (the catalog exists by then), a few times."""
        sql = self.spec.attach_sql(read_only=read_only, version=version)
        for attempt in range(CREATE_RACE_ATTEMPTS):
            try:
                self._db.execute(sql)
                return
            except duckdb.Error as exc:
                if attempt + 1 == CREATE_RACE_ATTEMPTS or not _lost_creation_race(exc):
                    raise
            time.sleep(0.05 * (attempt + 1))

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A new connection to the instance, with ``lake`` as the default database."""
        cur = self._db.cursor()
        cur.execute(f"USE {LAKE_ALIAS}")
        return cur

    def close(self) -> None:
        """Detach the lake and close the instance."""
        self._db.close()

    def __enter__(self) -> Lake:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def transact(self, fn: Callable[[duckdb.DuckDBPyConnection], T], *,
                 policy: RetryPolicy = RetryPolicy(), rng: random.Random | None = None) -> T:
        """Run ``fn(con)`` in one transaction, re-running it (backoff + jitter) on conflicts.

        ``fn`` may run several times: it must only read and write the lake, with no other
        side effect, and return what the caller needs.
        """
        rng = rng or random.Random()
        cur = self.cursor()
        last: BaseException | None = None
        try:
            for attempt in range(policy.attempts):
                cur.execute("BEGIN TRANSACTION")
                try:
                    result = fn(cur)
                    cur.execute("COMMIT")
                    return result
                except BaseException as exc:
                    _rollback(cur)
                    if not is_commit_conflict(exc):
                        raise
                    last = exc
                time.sleep(policy.delay(attempt, rng))
            raise CommitConflict(
                f"{self.spec}: gave up after {policy.attempts} commit conflicts with other "
                f"writers ({str(last).splitlines()[0]})")
        finally:
            cur.close()


def transact_appending(rebasing: Lake, serial: Lake,
                       fn: Callable[[duckdb.DuckDBPyConnection], T], *,
                       tables: Sequence[str], run_id: str) -> T:
    """Run the long bulk append ``fn`` of run ``run_id`` on ``rebasing`` (a Lake with
    DuckLake's own retries on), then reconcile the ids that run wrote to ``tables``; returns
    what ``fn`` returned. ``serial`` (the store's first-committer-wins Lake) only reads.

    In serial mode a transaction that takes a second never commits while another writer
    commits every 0.1 s; rebased, it commits at once, but its anti-join inserts did not see
    rows committed meanwhile, so an id may now have two rows. Then, per table: a plain read
    (no transaction to lose) looks for duplicate ids, and only a table that has some is
    reconciled (``corpus.lakeschema.reconcile``: per id the row of the smallest run_id, then
    rowid, survives), on the rebasing Lake too: a serial reconcile, which scans the table,
    starved as the append did against a writer committing every 50 ms. Rebased, it can miss
    a row that another run appended meanwhile; that run reconciles its own ids after its
    append and sees ours, and the survivor of an id is the same whoever reconciles (a total
    order), so once every writer has returned no id has two rows. ``fn``'s counts may
    include rows that went to an earlier run.
    """
    from corpus.lakeschema import duplicate_ids, identity_keys, reconcile

    if rebasing.spec != serial.spec:
        raise CorpusError("internal: the rebasing and the serial Lake must be one lake")
    result = rebasing.transact(fn)
    keys = identity_keys()
    cur = serial.cursor()
    try:
        dirty = duplicate_ids(cur, {t: keys[t] for t in dict.fromkeys(tables)})
    finally:
        cur.close()
    for table in sorted(dirty):
        rebasing.transact(lambda con, t=table: reconcile(con, t, run_id=run_id))
    return result


def _lost_creation_race(exc: BaseException) -> bool:
    """Whether an ATTACH failed because another process was creating the same catalog."""
    text = str(exc)
    return "Failed to initialize DuckLake" in text and (
        "duplicate key value violates unique constraint" in text or "already exists" in text)


def _rollback(cur: duckdb.DuckDBPyConnection) -> None:
    try:
        cur.execute("ROLLBACK")
    except duckdb.TransactionException:
        pass  # a failed COMMIT has ended the transaction already


def set_commit_message(con: duckdb.DuckDBPyConnection, author: str, message: str,
                       extra_info: str) -> None:
    """Inside a lake transaction: what its DuckLake snapshot says made it
    (``lake.snapshots()``: ``author``, ``commit_message``, ``commit_extra_info``)."""
    # Literals, not bound parameters: binding one imports pandas (0.3-0.8 s) in DuckDB 1.5.
    con.execute(f"CALL {LAKE_ALIAS}.set_commit_message({sql_literal(author)}, "
                f"{sql_literal(message)}, extra_info => {sql_literal(extra_info)})")


def current_snapshot(con: duckdb.DuckDBPyConnection) -> int:
    """The DuckLake snapshot id this connection's transaction reads."""
    return int(con.execute(f"SELECT id FROM {LAKE_ALIAS}.current_snapshot()").fetchone()[0])
