"""The team store's schema and identity: the file store's schema without its constraints.

DuckLake takes no PRIMARY KEY, UNIQUE or CHECK. :func:`schema_statements` therefore runs the
migrations (``corpus.migrations``, the one source of truth) on an in-memory DuckDB and
replays what they built (every table's columns, types, NOT NULL and DEFAULTs, then the views
and macros verbatim, in creation order) as DDL a lake accepts. The keys the constraints
enforced on a file become :func:`identity_keys`: a lake keeps them by anti-join inserts in
first-committer-wins transactions, and :func:`reconcile` restores them deterministically
where a rebased bulk append raced another writer.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import duckdb

from corpus.errors import CorpusError
from corpus.extensions import offline_config
from corpus.migrations import (
    MIGRATIONS,
    UNKEYED_IDENTITY,
    Migration,
    applied_migrations,
    migrate,
)
from corpus.storespec import sql_literal

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _reference(upto: int | None = None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:", config=offline_config())
    migrate(con, upto)
    return con


def schema_statements(upto: int | None = None) -> list[str]:
    """DDL creating the current schema (or the one after ``upto`` migrations) on a DuckLake:
    tables, then views and macros."""
    con = _reference(upto)
    out = []
    for name, oid in con.execute("SELECT table_name, table_oid FROM duckdb_tables() "
                                 "WHERE NOT internal ORDER BY table_oid").fetchall():
        cols = con.execute(
            "SELECT column_name, data_type, is_nullable, column_default FROM duckdb_columns() "
            f"WHERE table_oid = {int(oid)} ORDER BY column_index").fetchall()
        out.append(f'CREATE TABLE "{name}" (' + ", ".join(
            f'"{c}" {t}' + ("" if nullable else " NOT NULL")
            + ("" if default is None else f" DEFAULT {default}")
            for c, t, nullable, default in cols) + ")")
    # Views and macros in creation order, so each one's dependencies exist before it.
    objects = con.execute("""
        SELECT oid, sql, name, params, body FROM (
            SELECT view_oid AS oid, sql, NULL AS name, NULL AS params, NULL AS body
            FROM duckdb_views() WHERE NOT internal
            UNION ALL
            SELECT function_oid, NULL, function_name, parameters, macro_definition
            FROM duckdb_functions() WHERE function_type = 'macro' AND NOT internal
                AND database_name = 'memory')
        ORDER BY oid""").fetchall()
    for _, sql, name, params, body in objects:
        out.append(sql if sql else f"CREATE MACRO {name}({', '.join(params)}) AS {body}")
    return out


def identity_keys() -> dict[str, tuple[str, ...]]:
    """Each table's identity, e.g. prompts → (prompt_id,): its PRIMARY KEY on the file store,
    or, for the bulk tables no constraint keys on either back end, ``UNKEYED_IDENTITY``."""
    return dict(_identity_keys()) | UNKEYED_IDENTITY


@functools.cache
def _identity_keys() -> tuple[tuple[str, tuple[str, ...]], ...]:
    rows = _reference().execute(
        "SELECT table_name, constraint_column_names FROM duckdb_constraints() "
        "WHERE constraint_type = 'PRIMARY KEY'").fetchall()
    return tuple((table, tuple(cols)) for table, cols in rows)


def create_schema(con: duckdb.DuckDBPyConnection, upto: int | None = None) -> list[str]:
    """Create the current schema in the (empty) lake ``con`` uses; record the migrations.

    Run it inside a transaction. Returns the migration names recorded as applied. ``upto``
    makes the schema of an older selfevo (the first ``upto`` migrations): tests migrate it.
    """
    if con.execute("SELECT count(*) FROM duckdb_tables() WHERE database_name = "
                   "current_database()").fetchone()[0]:
        raise CorpusError("the lake already has tables; create the schema in an empty lake")
    for sql in schema_statements(upto):
        con.execute(sql)
    names = [m.__name__ for m in MIGRATIONS[:upto]]
    con.executemany("INSERT INTO _migrations (name) VALUES (?)", [[n] for n in names])
    return names


_COMMENT = re.compile(r"--[^\n]*")
_TABLE_KEY = re.compile(r",\s*PRIMARY\s+KEY\s*\(([^)]*)\)", re.IGNORECASE)
_COLUMN_KEY = re.compile(r"\s+PRIMARY\s+KEY\b(?!\s*\()", re.IGNORECASE)
_COLUMN_UNIQUE = re.compile(r"\s+UNIQUE\b(?!\s*\()", re.IGNORECASE)
_UNSUPPORTED = re.compile(r"\b(?:PRIMARY\s+KEY|UNIQUE|CHECK|CREATE\s+(?:UNIQUE\s+)?INDEX|"
                          r"CREATE\s+SEQUENCE)\b", re.IGNORECASE)


def lake_ddl(sql: str) -> str:
    """A migration's SQL in its lake form: comments, PRIMARY KEY and UNIQUE dropped (the
    NOT NULL a key implies is kept).

    The keys are kept on a lake by :func:`corpus.inserts.insert_absent` (and
    :func:`identity_keys` still reads them from the file store's schema). Anything else a
    lake refuses (CHECK, indexes, sequences) is an error here: such a migration needs a
    hand-written lake form. Migration SQL is selfevo's own text: no ``--`` inside strings.
    """
    out = _COMMENT.sub("", sql)
    for key in _TABLE_KEY.findall(out):  # a key's columns are NOT NULL: keep that
        for col in (c.strip() for c in key.split(",")):
            out = re.sub(rf"(^[ \t(]*{re.escape(col)}\s[^,\n]*?)(\s*(?:,|\n|\)\s*$))",
                         r"\1 NOT NULL\2", out, count=1, flags=re.MULTILINE)
    out = _COLUMN_UNIQUE.sub("", _COLUMN_KEY.sub(" NOT NULL", _TABLE_KEY.sub("", out)))
    if _UNSUPPORTED.search(out):
        raise CorpusError(f"a migration uses DDL a DuckLake refuses: {out.strip()[:120]}")
    return out


class _LakeForm:
    """A connection whose ``execute`` runs :func:`lake_ddl` of the SQL (migrations only)."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self._con = con

    def execute(self, sql: str, *args: Any) -> Any:
        """Run the lake form of ``sql``."""
        return self._con.execute(lake_ddl(sql), *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


def apply_on_lake(con: duckdb.DuckDBPyConnection, migration: Migration) -> bool:
    """Apply ``migration`` in its lake form unless the lake has it; run it in a transaction.

    It reads ``_migrations`` first, so a re-run after a lost commit (another process
    migrated meanwhile) does nothing. Returns whether it applied the migration.
    """
    if migration.__name__ in applied_migrations(con):
        return False
    migration(_LakeForm(con))  # type: ignore[arg-type]
    con.execute("INSERT INTO _migrations (name) VALUES (?)", [migration.__name__])
    return True


def prepare_lake(transact: Callable[[Callable[[duckdb.DuckDBPyConnection], Any]], Any],
                 check: Callable[[duckdb.DuckDBPyConnection], None]) -> list[str]:
    """Give a lake the current schema: create it when the lake is empty, else apply the
    migrations it lacks in their lake form, each in its own re-runnable transaction.

    ``check(con)`` refuses a lake that is not (or no longer) this selfevo's to write.
    Returns the migration names applied or recorded.
    """
    def create(con: duckdb.DuckDBPyConnection) -> tuple[list[str], list[str]]:
        check(con)
        if con.execute("SELECT count(*) FROM duckdb_tables() WHERE database_name = "
                       "current_database()").fetchone()[0]:
            return [], applied_migrations(con)
        names = create_schema(con)
        return names, names

    names, applied = transact(create)
    for m in MIGRATIONS:
        if m.__name__ not in applied and transact(lambda con, m=m: apply_on_lake(con, m)):
            names.append(m.__name__)
    return names


def _check(*names: str) -> None:
    for n in names:
        if not _IDENT.fullmatch(n):
            raise CorpusError(f"not a plain identifier: {n!r}")


def winners_order(columns: set[str]) -> str:
    """The documented tie-break among rows of one id: the smallest run_id, then rowid.

    ``run_id`` starts with the run's UTC start time, so the earliest run keeps the row; rowid
    (assigned by DuckLake at commit, never reused) settles rows of one run.
    """
    return "run_id, rowid" if "run_id" in columns else "rowid"


def reconcile(con: duckdb.DuckDBPyConnection, table: str, *, run_id: str | None = None,
              keys: dict[str, tuple[str, ...]] | None = None) -> int:
    """Delete duplicate rows of ``table`` (same identity), keeping one per id; returns how many.

    ``run_id`` limits the work to ids that run wrote (a writer reconciles after its own
    append). The result does not depend on the order in which writers committed.
    """
    key = (keys or identity_keys()).get(table)
    if not key:
        raise CorpusError(f"table {table!r} has no identity to reconcile")
    _check(table, *key)
    cols = {r[0] for r in con.execute(
        "SELECT column_name FROM duckdb_columns() WHERE database_name = current_database() "
        f"AND table_name = '{table}'").fetchall()}
    ids = ", ".join(key)
    scope = ""
    if run_id is not None:
        if "run_id" not in cols:
            raise CorpusError(f"table {table!r} has no run_id to scope reconciliation by")
        scope = (f"SEMI JOIN (SELECT {ids} FROM {table} WHERE run_id = {sql_literal(run_id)}) "
                 f"USING ({ids})")
    row = con.execute(f"""
        DELETE FROM {table} WHERE rowid IN (
            SELECT rowid FROM (
                SELECT rowid, row_number() OVER (
                    PARTITION BY {ids} ORDER BY {winners_order(cols)}) AS k
                FROM {table} {scope})
            WHERE k > 1)""").fetchone()
    return int(row[0]) if row else 0


def duplicate_ids(con: duckdb.DuckDBPyConnection,
                  keys: dict[str, tuple[str, ...]] | None = None) -> dict[str, int]:
    """Per table, how many ids have more than one row (empty when the lake is consistent)."""
    out = {}
    for table, key in (keys or identity_keys()).items():
        _check(table, *key)
        ids = ", ".join(key)
        n = con.execute(f"SELECT count(*) FROM (SELECT {ids} FROM {table} GROUP BY ALL "
                        "HAVING count(*) > 1)").fetchone()[0]
        if n:
            out[table] = int(n)
    return out
