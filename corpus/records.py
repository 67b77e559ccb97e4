"""Writing prompts and records: content-addressed, insert-or-ignore, in bulk.

These are the only functions that insert into ``prompts`` and ``records``; importers, the
collector and the evolve loop all call them inside their own transaction, so a batch lands
whole or not at all. Rows are inserted through an Arrow table (one statement per batch), which
is what makes a million-row import take seconds instead of minutes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import duckdb
import pyarrow as pa

from corpus.inserts import insert_absent
from schemas.identity import canonical_json, prompt_id, record_id

PROMPT_COLUMNS = ["prompt_id", "text", "gold_answer", "gold_rationale", "source", "split", "meta"]

RECORD_COLUMNS = [
    "record_id", "prompt_id", "kind", "round", "response", "feedback", "verdict",
    "verdict_error", "refinement", "responder", "teacher", "response_call_id",
    "feedback_call_id", "refinement_call_id", "templates", "parent_record_id", "source", "meta",
    "refined_feedback", "refined_verdict", "refined_verdict_error", "refined_feedback_call_id",
]

_JSON_COLUMNS = {"meta", "templates"}


def make_prompt(
    text: str,
    *,
    gold_answer: str | None = None,
    gold_rationale: str | None = None,
    source: str | None = None,
    split: str | None = None,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``prompts`` row (without ``run_id``) with its content id."""
    return {
        "prompt_id": prompt_id(text), "text": text, "gold_answer": gold_answer,
        "gold_rationale": gold_rationale, "source": source, "split": split,
        "meta": dict(meta) if meta else None,
    }


def make_record(
    *,
    prompt_id: str,
    kind: str,
    round: int = 0,
    response: str | None = None,
    feedback: str | None = None,
    verdict: str | None = None,
    refinement: str | None = None,
    parent_record_id: str | None = None,
    **provenance: Any,
) -> dict[str, Any]:
    """A ``records`` row (without ``run_id``) with its content id.

    ``provenance`` takes the remaining columns: verdict_error, responder, teacher,
    response_call_id, feedback_call_id, refinement_call_id, templates (dict), source, meta,
    and the feedback on r̂ (refined_feedback, refined_verdict, refined_verdict_error,
    refined_feedback_call_id; not part of the identity).
    """
    unknown = set(provenance) - set(RECORD_COLUMNS)
    if unknown:
        raise TypeError(f"unknown record columns: {sorted(unknown)}")
    row = {c: None for c in RECORD_COLUMNS}
    row.update(provenance)
    row.update(
        prompt_id=prompt_id, kind=kind, round=round, response=response, feedback=feedback,
        verdict=verdict, refinement=refinement, parent_record_id=parent_record_id,
        record_id=record_id(
            prompt_id=prompt_id, kind=kind, round=round, response=response, feedback=feedback,
            verdict=verdict, refinement=refinement, parent_record_id=parent_record_id,
        ),
    )
    return row


def arrow_rows(rows: list[Mapping[str, Any]], columns: list[str], run_id: str) -> pa.Table:
    """Rows as an Arrow table of ``columns`` (JSON columns as canonical text) plus run_id."""
    data: dict[str, list[Any]] = {c: [] for c in columns}
    for row in rows:
        for c in columns:
            v = row.get(c)
            if c in _JSON_COLUMNS and v is not None and not isinstance(v, str):
                v = canonical_json(v)
            data[c].append(v)
    types = {c: pa.string() for c in columns}
    if "round" in types:
        types["round"] = pa.int32()
    table = pa.table({c: pa.array(data[c], type=types[c]) for c in columns})
    return table.append_column("run_id", pa.array([run_id] * len(rows), type=pa.string()))


_KEYS = {"prompts": "prompt_id", "records": "record_id"}


def _insert_or_ignore(
    con: duckdb.DuckDBPyConnection, table: str, key: str, rows: pa.Table
) -> int:
    # Kept by name for callers on other branches; the work is corpus.inserts.insert_absent.
    return insert_absent(con, table, key, rows)


def insert_prompts(
    con: duckdb.DuckDBPyConnection, prompts: Iterable[Mapping[str, Any]], run_id: str
) -> int:
    """Insert ``make_prompt`` rows not already present; returns how many were new."""
    rows = list(prompts)
    if not rows:
        return 0
    return _insert_or_ignore(con, "prompts", "prompt_id", arrow_rows(rows, PROMPT_COLUMNS, run_id))


def insert_records(
    con: duckdb.DuckDBPyConnection, records: Iterable[Mapping[str, Any]], run_id: str
) -> int:
    """Insert ``make_record`` rows not already present; returns how many were new."""
    rows = list(records)
    if not rows:
        return 0
    return _insert_or_ignore(con, "records", "record_id", arrow_rows(rows, RECORD_COLUMNS, run_id))


def insert_table(con: duckdb.DuckDBPyConnection, table: str, rows: pa.Table) -> int:
    """Insert Arrow rows (``arrow_rows`` layout) into prompts or records where their id is not
    present yet; of several rows with one id the first wins. Returns how many were new."""
    key = _KEYS[table]
    seen: set[str] = set()
    first = [not (k in seen or seen.add(k)) for k in rows.column(key).to_pylist()]  # type: ignore[func-returns-value]
    if not all(first):
        rows = rows.filter(pa.array(first))
    return _insert_or_ignore(con, table, key, rows)
