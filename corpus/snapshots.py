"""Snapshots: named, immutable selections of records.

A snapshot freezes the record ids matched by a SQL WHERE expression over the ``records_full``
view (records joined to their prompt: ``prompt``, ``gold_answer``, ``split`` …; decisions are
reachable through subqueries such as ``record_id IN (SELECT record_id FROM latest_decisions
WHERE step = 'verdict' AND passed)``), optionally intersected with an earlier snapshot. The
row in ``snapshots`` keeps the selection spec, the count and a content hash
(:func:`schemas.identity.selection_hash` of the ids), so the same records always give the
same hash whatever the name. Snapshots are never changed or deleted by selfevo.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import duckdb
import pyarrow as pa

from corpus.errors import CorpusError
from corpus.sqlfragment import SqlCondition, first_line, read_only
from corpus.store import Store
from corpus.storespec import sql_literal
from schemas.identity import content_id, selection_hash

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class Snapshot:
    """One row of ``snapshots``."""

    snapshot_id: str
    name: str
    parent: str | None
    selection: dict[str, Any]
    n: int
    content_hash: str
    note: str | None
    run_id: str
    created_at: datetime
    #: the DuckLake snapshot whose commit made it (None on a file store): export reads there
    lake_version: int | None = None


@dataclass(frozen=True)
class SnapshotDiff:
    """What changed from snapshot ``a`` to snapshot ``b`` (ids listed up to ``show``)."""

    a: str
    b: str
    added: int
    removed: int
    common: int
    added_ids: list[str] = field(default_factory=list)
    removed_ids: list[str] = field(default_factory=list)


def selection_query(where: SqlCondition, base_snapshot_id: str | None = None) -> str:
    """The SELECT that yields the record ids of a selection (within the base snapshot).

    The condition sits, parenthesised, in an ``IN (…)`` subquery over ``records_full``, so
    it can only narrow the records it is given.
    """
    sql = (
        "SELECT record_id FROM records WHERE record_id IN ("
        f"SELECT record_id FROM records_full WHERE {where.sql})"
    )
    if base_snapshot_id is not None:
        sql += (" AND record_id IN (SELECT record_id FROM snapshot_records WHERE snapshot_id = "
                f"{sql_literal(base_snapshot_id)})")
    return sql


def check_where(where: str | SqlCondition, flag: str = "--where") -> SqlCondition:
    """``where`` as a checked :class:`~corpus.sqlfragment.SqlCondition` (one expression over
    the store, see that module); a one-line CorpusError naming ``flag`` otherwise."""
    condition = SqlCondition.of(where, flag)
    assert condition is not None
    return condition


def _row_to_snapshot(row: dict[str, Any]) -> Snapshot:
    return Snapshot(
        snapshot_id=row["snapshot_id"], name=row["name"], parent=row["parent"],
        selection=json.loads(row["selection"]), n=row["n"], content_hash=row["content_hash"],
        note=row["note"], run_id=row["run_id"], created_at=row["created_at"],
        lake_version=row["lake_version"],
    )


_COLUMNS = ("snapshot_id, name, parent, selection, n, content_hash, note, run_id, created_at, "
            "lake_version")


def find_snapshot(con: duckdb.DuckDBPyConnection, name: str) -> Snapshot | None:
    """The snapshot called ``name``, or None."""
    cur = con.execute(f"SELECT {_COLUMNS} FROM snapshots WHERE name = {sql_literal(name)}")
    row = cur.fetchone()
    if row is None:
        return None
    cols = [d[0] for d in cur.description]
    return _row_to_snapshot(dict(zip(cols, row, strict=True)))


def get_snapshot(store: Store, name: str) -> Snapshot:
    """The snapshot called ``name``; a CorpusError naming the known ones if there is none."""
    with store.connection() as con:
        snap = find_snapshot(con, name)
        if snap is None:
            known = [r[0] for r in con.execute(
                "SELECT name FROM snapshots ORDER BY created_at DESC LIMIT 5").fetchall()]
    if snap is None:
        hint = f" (recent: {', '.join(known)})" if known else " (the store has none yet)"
        raise CorpusError(f"no snapshot named '{name}'{hint}; see 'selfevo snapshot list'")
    return snap


def list_snapshots(store: Store) -> list[Snapshot]:
    """All snapshots, oldest first."""
    rows = store.query_dicts(f"SELECT {_COLUMNS} FROM snapshots ORDER BY created_at, name")
    return [_row_to_snapshot(r) for r in rows]


def select_record_ids(
    con: duckdb.DuckDBPyConnection, where: str | SqlCondition, base: Snapshot | None = None
) -> list[str]:
    """Record ids matching ``where`` (and in ``base`` when given), sorted; read-only."""
    condition = check_where(where)
    sql = selection_query(condition, base.snapshot_id if base else None)
    try:
        with read_only(con) as cur:
            table = cur.execute(sql).to_arrow_table()
    except duckdb.Error as exc:
        raise CorpusError(f"{condition.flag} failed: {first_line(exc)}") from None
    return sorted(table.column("record_id").to_pylist())


def create_snapshot(
    store: Store,
    name: str,
    where: str | SqlCondition,
    *,
    base: str | None = None,
    note: str | None = None,
) -> Snapshot:
    """Freeze the records matching ``where`` (within snapshot ``base``) as snapshot ``name``.

    Errors (as CorpusError, before anything is written): a name already taken, a bad or
    multi-statement ``where``, an unknown base, an empty selection.
    """
    if not _NAME.match(name):
        raise CorpusError(
            f"snapshot name '{name}' is not allowed; use letters, digits, '.', '_' or '-' "
            "(starting with a letter or digit)"
        )
    condition = check_where(where)
    with store.connection() as con:
        existing = find_snapshot(con, name)
        if existing is not None:
            raise CorpusError(
                f"snapshot '{name}' already exists ({existing.n} records, "
                f"{existing.content_hash}); snapshots are immutable: choose another name"
            )
        base_snap = None
        if base is not None:
            base_snap = find_snapshot(con, base)
            if base_snap is None:
                raise CorpusError(f"--from: no snapshot named '{base}'; see 'selfevo snapshot list'")
        ids = select_record_ids(con, condition, base_snap)
    if not ids:
        within = f" within snapshot '{base}'" if base else ""
        raise CorpusError(
            f"no records match --where{within}; check the condition with "
            f"selfevo sql \"SELECT count(*) FROM records_full WHERE {condition.text}\""
        )
    content_hash = selection_hash(ids)
    snapshot_id = content_id({"name": name, "content_hash": content_hash})
    selection = {"where": condition.text, "from": base, "note": note}
    with store.run("snapshot create", {"name": name, **selection}) as run:
        def write(con: duckdb.DuckDBPyConnection) -> None:
            version = store.commit_version(con)  # first: it fixes the transaction's snapshot
            if find_snapshot(con, name) is not None:  # a lake has no UNIQUE (name)
                raise CorpusError(f"snapshot '{name}' was just created by another writer; "
                                  "snapshots are immutable: choose another name")
            con.execute(
                "INSERT INTO snapshots (snapshot_id, name, parent, selection, n, content_hash,"
                " note, run_id, lake_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [snapshot_id, name, base, json.dumps(selection, sort_keys=True), len(ids),
                 content_hash, note, run.run_id, version],
            )
            con.register("_snapshot_ids", pa.table({"record_id": pa.array(ids, pa.string())}))
            try:
                con.execute(
                    "INSERT INTO snapshot_records (snapshot_id, record_id) "
                    "SELECT ?, record_id FROM _snapshot_ids", [snapshot_id],
                )
            finally:
                con.unregister("_snapshot_ids")

        store.transact(write)
        run.add("snapshot_records", len(ids))
    return get_snapshot(store, name)


def diff_snapshots(store: Store, a: str, b: str, show: int = 0) -> SnapshotDiff:
    """Counts of records added (in ``b`` only), removed (in ``a`` only) and common."""
    sa, sb = get_snapshot(store, a), get_snapshot(store, b)
    a_id, b_id = sql_literal(sa.snapshot_id), sql_literal(sb.snapshot_id)
    sql = f"""
        WITH a AS (SELECT record_id FROM snapshot_records WHERE snapshot_id = {a_id}),
             b AS (SELECT record_id FROM snapshot_records WHERE snapshot_id = {b_id})
        SELECT (SELECT count(*) FROM b ANTI JOIN a USING (record_id)),
               (SELECT count(*) FROM a ANTI JOIN b USING (record_id)),
               (SELECT count(*) FROM a SEMI JOIN b USING (record_id))
    """

    def ids_sql(x: str, y: str) -> str:
        return (f"SELECT record_id FROM snapshot_records WHERE snapshot_id = {x} EXCEPT "
                f"SELECT record_id FROM snapshot_records WHERE snapshot_id = {y} "
                f"ORDER BY record_id LIMIT {int(show)}")

    with store.connection() as con:
        added, removed, common = con.execute(sql).fetchone()
        added_ids: list[str] = []
        removed_ids: list[str] = []
        if show > 0:
            added_ids = [r[0] for r in con.execute(ids_sql(b_id, a_id)).fetchall()]
            removed_ids = [r[0] for r in con.execute(ids_sql(a_id, b_id)).fetchall()]
    return SnapshotDiff(a, b, added, removed, common, added_ids, removed_ids)


def snapshot_record_ids(store: Store, name: str) -> list[str]:
    """The record ids of a snapshot, sorted."""
    snap = get_snapshot(store, name)
    rows = store.query(
        "SELECT record_id FROM snapshot_records WHERE snapshot_id = "
        f"{sql_literal(snap.snapshot_id)} ORDER BY record_id")
    return [r[0] for r in rows]
