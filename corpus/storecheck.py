"""Whether a store can be trusted, and repairing what can be repaired: ``selfevo store check``.

A DuckDB file enforces its keys (PRIMARY KEY, UNIQUE) except on the bulk tables ``prompts``
and ``records`` (``corpus.migrations.UNKEYED_IDENTITY``, kept by ``corpus.inserts`` under the
file's one-writer lock); a DuckLake enforces none, and a rebased bulk append
(``Store.transact(appends=…)``) can leave an id with two rows until its writer reconciles,
forever if that writer died in between. What is checked:

* **duplicate ids** per id-keyed table, on a file the bulk tables only
  (``corpus.lakeschema.duplicate_ids``);
  ``--fix`` keeps one row per id (``reconcile``: the smallest run_id, then the first
  committed). **duplicate snapshot names** (lake only) are reported; which to rename is the
  team's call.
* **dead runs**: ``running`` rows whose process is gone (on a lake: no heartbeat for
  ``STALE_AFTER_S`` or a dead PID on this host; on a file: every one while no job holds the
  store's job lock, else those with a dead PID on this host).
  ``--fix`` gives them their final state, as the next writer would (``killed``, their
  committed rows kept, their in-flight calls flagged ``possibly_billed``).
* **orphan files** (lake only): Parquet files under the data path that no snapshot lists
  and older than :data:`ORPHAN_AFTER` (a writer killed mid-commit leaves one; a younger one
  may be a live writer's file not committed yet). ``--fix`` deletes them
  (``ducklake_delete_orphaned_files``).
* **missing references** (both): records whose prompt is missing, snapshot members and
  decisions whose record is missing. Reported only: the rows they need are not in the store
  (re-import them).
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass, field

import duckdb

from corpus.store import Store, stale_runs

#: (table, column, referenced table, referenced column, what a row missing its target is).
REFERENCES = (
    ("records", "prompt_id", "prompts", "prompt_id", "records whose prompt is missing"),
    ("snapshot_records", "record_id", "records", "record_id",
     "snapshot members whose record is missing"),
    ("decisions", "record_id", "records", "record_id", "decisions whose record is missing"),
)


#: How old a Parquet file no snapshot lists must be to count as an orphan (SQL interval).
ORPHAN_AFTER = "1 DAY"


@dataclass(frozen=True)
class Finding:
    """One kind of problem in one place: e.g. 3 ids of ``prompts`` with several rows."""

    check: str     # "duplicate ids", "duplicate snapshot names", "dead runs", "missing references"
    subject: str   # the table (or runs)
    count: int
    detail: str    # what it is, in words
    fixable: bool  # whether --fix repairs it

    def line(self) -> str:
        """The finding in one line."""
        how = "--fix repairs it" if self.fixable else "not fixable here"
        return f"{self.check}: {self.subject}: {self.count:,} {self.detail} ({how})"


@dataclass
class CheckReport:
    """What ``store check`` found (after ``--fix``: what is left) and what it did."""

    store: str
    lake: bool
    findings: list[Finding] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No problem is left."""
        return not self.findings

    def lines(self) -> list[str]:
        """The report: what was fixed, what remains, what was not checked and why."""
        out = [f"fixed: {f}" for f in self.fixed]
        out += [f"problem: {f.line()}" for f in self.findings]
        out += [f"note: {n}" for n in self.notes]
        kind = "DuckLake" if self.lake else "DuckDB file"
        out.append(f"store {self.store} ({kind}): " + (
            "no problems found" if self.ok else f"{len(self.findings)} problem(s) left"))
        return out


def find_problems(con: duckdb.DuckDBPyConnection, *, lake: bool,
                  job_running: bool = True) -> list[Finding]:
    """Every problem of the store ``con`` reads (see the module docstring). Reads only.

    ``job_running``: on a file store, whether a job holds its job lock; while none does,
    every ``running`` run is dead (the next writer reaps them all)."""
    found: list[Finding] = _duplicates(con, lake)
    if lake or job_running:
        dead = stale_runs(con, heartbeats=lake)
    else:
        dead = [r[0] for r in con.execute(
            "SELECT run_id FROM runs WHERE status = 'running' ORDER BY run_id").fetchall()]
    if dead:
        found.append(Finding("dead runs", "runs", len(dead),
                             "running runs whose process is gone: " + _ids(dead), True))
    found += _missing_references(con)
    return found


def job_running(store: Store) -> bool:
    """Whether a writing job holds the file store's job lock now (a lake has none: False).

    Probes with a shared ``flock`` on a read-only descriptor and lets go at once, so the
    lock file (and the last words a failed job left in it) is not written."""
    if store.spec.is_lake:
        return False
    try:
        fd = os.open(store.lock_path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing the descriptor drops the probe's lock
    return False


def _ids(ids: list[str], shown: int = 3) -> str:
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    return ", ".join(ids[:shown]) + more


def _unenforced_keys(lake: bool) -> dict[str, tuple[str, ...]]:
    """The identities no constraint enforces: all of them on a lake, the bulk tables' on a file."""
    from corpus.lakeschema import identity_keys
    from corpus.migrations import UNKEYED_IDENTITY

    return identity_keys() if lake else UNKEYED_IDENTITY


def _duplicates(con: duckdb.DuckDBPyConnection, lake: bool) -> list[Finding]:
    from corpus.lakeschema import duplicate_ids

    found = [Finding("duplicate ids", table, n, "ids with more than one row", True)
             for table, n in sorted(duplicate_ids(con, _unenforced_keys(lake)).items())]
    if not lake:
        return found  # snapshot names are UNIQUE on a file
    names = [r[0] for r in con.execute(
        "SELECT name FROM snapshots GROUP BY name HAVING count(*) > 1 ORDER BY 1").fetchall()]
    if names:
        found.append(Finding("duplicate snapshot names", "snapshots", len(names),
                             "names given to more than one snapshot: " + _ids(names), False))
    return found


def _missing_references(con: duckdb.DuckDBPyConnection) -> list[Finding]:
    found = []
    for table, col, target, key, what in REFERENCES:
        n = con.execute(
            f"SELECT count(*) FROM {table} WHERE {col} IS NOT NULL AND {col} NOT IN "
            f"(SELECT {key} FROM {target} WHERE {key} IS NOT NULL)").fetchone()[0]
        if n:
            found.append(Finding("missing references", table, int(n), what, False))
    return found


def orphan_files(con: duckdb.DuckDBPyConnection, *, delete: bool = False) -> list[str]:
    """The lake's orphan Parquet files (see :data:`ORPHAN_AFTER`); ``delete`` removes them.
    DuckLake lists them only on a writable attachment, even as a dry run."""
    from corpus.storespec import LAKE_ALIAS

    return [r[0] for r in con.execute(
        f"SELECT path FROM ducklake_delete_orphaned_files('{LAKE_ALIAS}', dry_run => ?, "
        f"older_than => now() - INTERVAL {ORPHAN_AFTER}) ORDER BY 1", [not delete]).fetchall()]


def _orphans(con: duckdb.DuckDBPyConnection) -> list[Finding]:
    found = orphan_files(con)
    if not found:
        return []
    return [Finding("orphan files", "data path", len(found),
                    f"Parquet files older than {ORPHAN_AFTER.lower()} that no snapshot lists: "
                    + _ids(found, 1), True)]


def _orphans_if_writable(store: Store, report: CheckReport) -> list[Finding]:
    """:func:`_orphans` through a writable attachment of the lake; a note instead where this
    user cannot attach it for writing (a read-only role)."""
    from corpus.errors import CorpusError
    from corpus.lake import Lake

    try:
        with Lake(store.spec) as lake:
            return _orphans(lake.cursor())
    except (CorpusError, duckdb.Error) as exc:
        report.notes.append(f"orphan files are not checked: {str(exc).splitlines()[0]}")
        return []


def fix_duplicates(store: Store) -> list[str]:
    """Reconcile every id-keyed table that has duplicate ids, one serial transaction each;
    returns what was done, a line per table."""
    from corpus.lakeschema import duplicate_ids, reconcile

    with store.connection() as con:
        tables = sorted(duplicate_ids(con, _unenforced_keys(store.spec.is_lake)))
    done = []
    for table in tables:
        removed = store.transact(lambda con, t=table: reconcile(con, t))
        done.append(f"{table}: removed {removed:,} duplicate rows (kept per id the row of the "
                    "smallest run_id, then the first committed)")
    return done


def check_store(db: str, *, fix: bool = False) -> CheckReport:
    """Check the store ``db`` (a ``--db`` spec); with ``fix``, repair what can be repaired
    (under a ``store check`` run) and check again."""
    with Store.open_readonly(db) as store:  # refuses a missing store: nothing is created
        report = CheckReport(str(store.spec), store.spec.is_lake)
        running = job_running(store)
        with store.connection() as con:
            report.findings = find_problems(con, lake=report.lake, job_running=running)
        if report.lake:  # a writable attachment that writes nothing (a dry run)
            report.findings += _orphans_if_writable(store, report)
    if not report.lake:
        report.notes.append("duplicate ids are checked in prompts and records only: a DuckDB "
                            "file enforces the other tables' keys")
    if not fix or not any(f.fixable for f in report.findings):
        return report
    with Store.open(db, command="store check --fix") as store:  # reaps dead runs on opening
        report.fixed += [f"runs: gave dead run {r} its final state (killed; its committed "
                         "rows are kept)" for r in store.reaped]
        with store.run("store check", {"fix": True}) as run:
            report.fixed += fix_duplicates(store)
            if report.lake:
                with store.connection() as con:
                    report.fixed += [f"data path: deleted orphan file {p}"
                                     for p in orphan_files(con, delete=True)]
            run.add("fixed", len(report.fixed))
        with store.connection() as con:  # a file: we hold the job lock, no other job runs
            report.findings = find_problems(con, lake=report.lake, job_running=False)
            if report.lake:
                report.findings += _orphans(con)
    return report
