"""Writing curation decisions: one row per record per step, kept or dropped (drops are data)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import duckdb
import pyarrow as pa

from schemas.identity import canonical_json


def insert_decisions(
    con: duckdb.DuckDBPyConnection,
    decisions: Iterable[Mapping[str, Any]],
    *,
    run_id: str,
    step: str,
    params: Mapping[str, Any] | None = None,
) -> int:
    """Append decisions of one step in bulk; returns the number written.

    Each decision is a mapping with ``record_id``, ``passed`` and optional ``score``,
    ``reason`` and ``detail`` (a dict: cluster id, keeper, matched n-gram …).
    """
    rows = list(decisions)
    if not rows:
        return 0
    table = pa.table(
        {
            "run_id": pa.array([run_id] * len(rows), pa.string()),
            "record_id": pa.array([r["record_id"] for r in rows], pa.string()),
            "step": pa.array([step] * len(rows), pa.string()),
            "params": pa.array([canonical_json(dict(params or {}))] * len(rows), pa.string()),
            "passed": pa.array([bool(r["passed"]) for r in rows], pa.bool_()),
            "score": pa.array([r.get("score") for r in rows], pa.float64()),
            "reason": pa.array([r.get("reason") for r in rows], pa.string()),
            "detail": pa.array(
                [canonical_json(r["detail"]) if r.get("detail") is not None else None
                 for r in rows],
                pa.string(),
            ),
        }
    )
    con.register("_decisions_in", table)
    try:
        con.execute(
            "INSERT INTO decisions (run_id, record_id, step, params, passed, score, reason,"
            " detail) SELECT * FROM _decisions_in"
        )
    finally:
        con.unregister("_decisions_in")
    return len(rows)
