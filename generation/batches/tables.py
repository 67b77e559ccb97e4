"""The batch tables (``batches``, ``batch_calls``; migration ``m007_batches``) in SQL.

Every function takes an open connection: the ledger's writer runs them in its own
transactions (:meth:`generation.ledger.Writer.call` / ``write(then=…)``), so a shard, its
calls and their links land together or not at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import duckdb
import pyarrow as pa

from corpus.redaction import redact_optional

Con = duckdb.DuckDBPyConnection

#: Where a batch is not finished with: it still needs uploading, creating, polling or settling.
UNSETTLED = ("prepared", "written", "uploaded", "validating", "in_progress", "finalizing",
             "cancelling", "completed", "expired", "failed", "cancelled")

_BATCH_COLUMNS = ["batch_key", "provider", "model", "endpoint", "base_url", "api_key_env",
                  "purpose", "attempt", "parent_key", "shard", "path", "n_requests", "bytes",
                  "state", "run_id"]
_LINK_COLUMNS = ["batch_key", "call_id", "status", "http_status", "error_kind", "error",
                 "settled_run"]
_INT = {"attempt", "shard", "n_requests", "http_status"}


def _arrow(rows: Sequence[dict[str, Any]], columns: list[str]) -> pa.Table:
    # error texts pass the one redaction, as the ledger's own rows do
    return pa.table({c: pa.array([redact_optional(r.get(c)) if c == "error" else r.get(c)
                                  for r in rows],
                                 type=pa.int64() if c in _INT or c == "bytes" else pa.string())
                     for c in columns})


def insert_batch(con: Con, row: dict[str, Any]) -> None:
    """Insert a shard's ``batches`` row (a shard already there is left as it is)."""
    cols = [c for c in _BATCH_COLUMNS if c in row]
    con.execute(f"INSERT OR IGNORE INTO batches ({', '.join(cols)}) VALUES "
                f"({', '.join('?' for _ in cols)})", [row[c] for c in cols])


def insert_links(con: Con, key: str, call_ids: Sequence[str]) -> None:
    """Link calls to the batch that will answer them (``pending``)."""
    con.register("_links", pa.table({"call_id": pa.array(list(call_ids), pa.string())}))
    try:
        con.execute("INSERT OR IGNORE INTO batch_calls (batch_key, call_id, status) "
                    "SELECT ?, call_id, 'pending' FROM _links", [key])
    finally:
        con.unregister("_links")


def update_batch(con: Con, key: str, fields: dict[str, Any], stamps: Sequence[str] = ()) -> None:
    """Set columns of a batch (``stamps``: timestamp columns set to now())."""
    if fields.get("error"):  # a provider's message: the one redaction
        fields = {**fields, "error": redact_optional(fields["error"])}
    sets = [f"{c} = ?" for c in fields] + [f"{c} = now()" for c in stamps]
    con.execute(f"UPDATE batches SET {', '.join(sets)} WHERE batch_key = ?",
                [*fields.values(), key])


def batch_rows(con: Con, keys: Sequence[str] | None = None, unsettled: bool = False,
               where: str = "true", params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """``batches`` rows (of ``keys``; only the unsettled ones), oldest first."""
    sql = f"SELECT * FROM batches WHERE ({where})"
    args: list[Any] = list(params)
    if keys is not None:
        sql += " AND batch_key IN (SELECT unnest(?))"
        args.append(list(keys))
    if unsettled:
        sql += " AND state <> 'settled'"
    cur = con.execute(sql + " ORDER BY created_at, shard, batch_key", args)
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def find_batches(con: Con, ref: str) -> list[dict[str, Any]]:
    """Batches named by ``ref``: a batch key, a provider batch id, or a prefix of either."""
    return batch_rows(con, where="batch_key = ? OR batch_id = ? OR starts_with(batch_key, ?) "
                      "OR starts_with(batch_id, ?)", params=[ref] * 4)


def unsettled_keys(con: Con, call_ids: Sequence[str]) -> list[str]:
    """The batches not settled yet that hold any of ``call_ids``.

    Those with the calls pending, and those a kill left half-settled (their calls may all
    be answered already: the batch still needs its leftovers handled and its mark).
    """
    con.register("_ids", pa.table({"call_id": pa.array(list(call_ids), pa.string())}))
    try:
        return [k for (k,) in con.execute(
            "SELECT DISTINCT l.batch_key FROM batch_calls l JOIN batches b USING (batch_key) "
            "WHERE b.state <> 'settled' AND l.call_id IN (SELECT call_id FROM _ids) "
            "ORDER BY 1").fetchall()]
    finally:
        con.unregister("_ids")


def links_of(con: Con, call_ids: Sequence[str], key: str | None = None
             ) -> dict[str, dict[str, Any]]:
    """The link each call id's result line settles: its pending one, else its latest.

    With ``key``, only links to that batch. Each value has ``batch_key``, ``status``,
    ``settled_run``, and the batch's ``model`` and ``attempt``.
    """
    con.register("_ids", pa.table({"call_id": pa.array(list(call_ids), pa.string())}))
    try:
        cur = con.execute(
            "SELECT l.call_id, l.batch_key, l.status, l.settled_run, b.model, b.attempt "
            "FROM batch_calls l JOIN batches b USING (batch_key) "
            "WHERE l.call_id IN (SELECT call_id FROM _ids) AND (? IS NULL OR l.batch_key = ?) "
            "ORDER BY l.status = 'pending', b.attempt, b.created_at", [key, key])
        # Later rows win: a pending link, else the newest attempt.
        return {r[0]: {"batch_key": r[1], "status": r[2], "settled_run": r[3], "model": r[4],
                       "attempt": r[5]} for r in cur.fetchall()}
    finally:
        con.unregister("_ids")


def set_links(rows: list[dict[str, Any]]) -> Callable[[Con], None]:
    """A statement for the writer: give these links their settled status and error."""
    def run(con: Con) -> None:
        if not rows:
            return
        con.register("_set_links", _arrow(rows, _LINK_COLUMNS))
        try:
            con.execute(
                "UPDATE batch_calls SET status = s.status, http_status = s.http_status, "
                "error_kind = s.error_kind, error = s.error, settled_run = s.settled_run "
                "FROM _set_links s WHERE batch_calls.batch_key = s.batch_key "
                "AND batch_calls.call_id = s.call_id")
        finally:
            con.unregister("_set_links")
    return run


def link_counts(con: Con, key: str) -> dict[str, int]:
    """How many of a batch's links are in each status."""
    return dict(con.execute("SELECT status, count(*) FROM batch_calls WHERE batch_key = ? "
                            "GROUP BY 1", [key]).fetchall())
