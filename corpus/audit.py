"""Reading the store: read-only SQL, stats sections, one record's full story.

Everything here opens the store read-only and is safe while another process runs a job.
Nothing imports torch or the model backends; ``rich`` is imported only to render tables.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb

from corpus.errors import CorpusError
from corpus.store import Store

# Statement types a reader may run. PRAGMA table_info, SHOW, DESCRIBE and SUMMARIZE parse as
# SELECT; anything that can write or load code (INSERT, CREATE, COPY, ATTACH, SET, CALL,
# INSTALL/LOAD, EXPORT, CHECKPOINT …) is another type and refused before it runs.
READ_STATEMENTS = {"SELECT", "EXPLAIN"}
FORMATS = ("table", "csv", "json")


class ReadOnlyViolation(CorpusError):
    """A statement given to ``selfevo sql`` is not a read query."""


# PRAGMAs that only report. Others are refused before parsing: DuckDB's parser expands some
# PRAGMAs (import_database reads files) while it parses.
READ_PRAGMAS = {"table_info", "show_tables", "show_tables_expanded", "database_list",
                "database_size", "storage_info", "version", "functions", "collations",
                "platform", "metadata_info", "user_agent", "show", "show_databases"}
_PRAGMA = re.compile(r"^\s*PRAGMA\s+(\w+)", re.I)
_EXPLAIN = re.compile(r"^\s*EXPLAIN\s+(ANALY[SZ]E\s+)?", re.I)


def _refuse(kind: str) -> ReadOnlyViolation:
    return ReadOnlyViolation(
        f"selfevo sql is read-only: {kind} statements are refused; only SELECT queries "
        "(and EXPLAIN, SHOW, DESCRIBE) run here. Writes go through selfevo commands."
    )


def check_read_only(sql: str) -> None:
    """Refuse (ReadOnlyViolation) anything but one SELECT / EXPLAIN statement, before running it."""
    pragma = _PRAGMA.match(sql)
    if pragma and pragma.group(1).lower() not in READ_PRAGMAS:
        raise _refuse(f"PRAGMA {pragma.group(1)}")
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise CorpusError(f"SQL does not parse: {str(exc).splitlines()[0]}") from None
    if not statements:
        raise CorpusError("no SQL statement given")
    if len(statements) > 1:
        raise ReadOnlyViolation(
            f"one statement at a time please ({len(statements)} given, separated by ';')"
        )
    kind = statements[0].type.name
    if kind not in READ_STATEMENTS:
        raise _refuse(kind)
    if kind == "EXPLAIN":  # EXPLAIN ANALYZE runs its statement: check that one too
        check_read_only(_EXPLAIN.sub("", statements[0].query, count=1))


def run_query(store: Store, sql: str, params: Sequence[Any] | None = None,
              ) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Check ``sql`` is a read query, run it, return ``(columns, rows)``."""
    check_read_only(sql)
    with store.connection() as con:
        try:
            cur = con.execute(sql, list(params or []))
        except duckdb.Error as exc:
            raise CorpusError(f"query failed: {str(exc).splitlines()[0]}") from None
        columns = [d[0] for d in cur.description or []]
        return columns, cur.fetchall()


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)  # datetimes, decimals, UUIDs …


def format_rows(columns: list[str], rows: list[tuple[Any, ...]], fmt: str) -> str:
    """Rows as ``csv`` (header + rows) or ``json`` (an array of objects)."""
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns)
        w.writerows([[_cell(v) for v in row] for row in rows])
        return buf.getvalue()
    if fmt == "json":
        objs = [dict(zip(columns, (_plain(v) for v in row), strict=True)) for row in rows]
        return json.dumps(objs, ensure_ascii=False, indent=1)
    raise CorpusError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return json.dumps(_plain(value), ensure_ascii=False)
    return str(value)


def rich_table(columns: list[str], rows: list[tuple[Any, ...]], title: str | None = None) -> Any:
    """A ``rich.table.Table`` of the rows (NULL shown dim)."""
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_lines=False)
    for c in columns:
        table.add_column(c, overflow="fold")
    for row in rows:
        table.add_row(*("[dim]NULL[/dim]" if v is None else _escape(_cell(v)) for v in row))
    return table


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


# -- stats -------------------------------------------------------------------------------------


@dataclass
class StatsSection:
    """One table of ``selfevo stats``."""

    title: str
    columns: list[str]
    rows: list[tuple[Any, ...]] = field(default_factory=list)


def _section(store: Store, title: str, sql: str) -> StatsSection:
    cols, rows = run_query(store, sql)
    return StatsSection(title, cols, rows)


def totals(store: Store) -> StatsSection:
    """Row counts of the main tables."""
    tables = ["prompts", "records", "calls", "decisions", "snapshots", "models", "evals", "runs"]
    sql = " UNION ALL ".join(f"SELECT '{t}' AS \"table\", count(*) AS n FROM {t}" for t in tables)
    return _section(store, "Tables", sql)


def prompts_by_source(store: Store) -> StatsSection:
    """Prompts by source and split, with how many are labelled."""
    return _section(store, "Prompts by source and split", """
        SELECT source, split, count(*) AS prompts, count(gold_answer) AS labelled
        FROM prompts GROUP BY ALL ORDER BY source NULLS LAST, split NULLS LAST""")


def records_by_kind_round(store: Store) -> StatsSection:
    """Records by kind and round, with verdict counts."""
    return _section(store, "Records by kind, round and verdict", """
        SELECT kind, round, count(*) AS records,
               count(*) FILTER (WHERE verdict = 'correct') AS correct,
               count(*) FILTER (WHERE verdict = 'incorrect') AS incorrect,
               count(*) FILTER (WHERE verdict IS NULL) AS no_verdict
        FROM records GROUP BY ALL ORDER BY kind, round""")


def records_by_source(store: Store) -> StatsSection:
    """Records by their source (the import file, the collector, the evolve round …)."""
    return _section(store, "Records by source", """
        SELECT coalesce(source, '(none)') AS source, count(*) AS records,
               count(DISTINCT prompt_id) AS prompts
        FROM records GROUP BY ALL ORDER BY records DESC, source""")


def runs_table(store: Store, limit: int = 15) -> StatsSection:
    """The most recent runs with their status, duration and counts."""
    return _section(store, f"Runs (latest {limit})", f"""
        SELECT run_id, command, status,
               round(epoch(coalesce(finished_at, now()) - started_at), 1) AS seconds,
               counts, error
        FROM runs ORDER BY started_at DESC LIMIT {int(limit)}""")


def curation_funnels(store: Store, limit: int = 3) -> StatsSection:
    """Funnels of the latest runs that wrote decisions (see corpus.funnel)."""
    from corpus.funnel import FUNNEL_COLUMNS, funnel_rows

    with store.connection() as con:
        return StatsSection(f"Curation funnels (latest {limit} runs)", FUNNEL_COLUMNS,
                            funnel_rows(con, limit))


#: The sections of ``selfevo stats`` in order; other packages append their own functions.
STATS_SECTIONS: list[Callable[[Store], StatsSection]] = [
    totals, prompts_by_source, records_by_kind_round, records_by_source, runs_table,
    curation_funnels,
]


def collect_stats(store: Store) -> list[StatsSection]:
    """Every section of :data:`STATS_SECTIONS`, computed on one read connection."""
    with store.connection():
        return [section(store) for section in STATS_SECTIONS]


# -- show ----------------------------------------------------------------------------------------


def resolve_record_id(store: Store, ident: str) -> str:
    """The full record id for ``ident``: an id or a unique prefix (``h1:`` optional)."""
    ident = ident.strip()
    if not ident.startswith("h1:") and ":" not in ident:
        ident = "h1:" + ident
    if len(ident) < 7:
        raise CorpusError("give at least 4 characters of the record id")
    rows = store.query(
        "SELECT record_id FROM records WHERE starts_with(record_id, ?) ORDER BY record_id LIMIT 6",
        [ident],
    )
    if not rows:
        raise CorpusError(f"no record with id {ident}…; list some with: selfevo sql "
                          "\"SELECT record_id, kind FROM records LIMIT 10\"")
    if len(rows) > 1:
        shown = ", ".join(r[0] for r in rows[:5])
        raise CorpusError(f"id prefix {ident} is ambiguous ({shown}…); give more characters")
    return rows[0][0]


def record_details(store: Store, ident: str) -> dict[str, Any]:
    """One record with its prompt, run, calls, decisions and snapshots (for ``selfevo show``)."""
    with store.connection():
        rid = resolve_record_id(store, ident)
        record = store.query_dicts("SELECT * FROM records_full WHERE record_id = ?", [rid])[0]
        run = store.query_dicts(
            "SELECT run_id, command, status, code_version, started_at FROM runs "
            "WHERE run_id = ?", [record["run_id"]])
        call_ids = [record[c] for c in ("response_call_id", "feedback_call_id",
                                        "refinement_call_id") if record.get(c)]
        calls = store.query_dicts(
            "SELECT call_id, purpose, model, status, prompt_tokens, completion_tokens, cost, "
            "latency, n_attempts, error FROM calls WHERE list_contains(?, call_id) "
            "ORDER BY created_at", [call_ids]) if call_ids else []
        decisions = store.query_dicts(
            "SELECT d.created_at, d.run_id, r.command, d.step, d.passed, d.score, d.reason, "
            "d.detail FROM decisions d LEFT JOIN runs r USING (run_id) "
            "WHERE d.record_id = ? ORDER BY d.created_at, d.rowid", [rid])
        snapshots = [r[0] for r in store.query(
            "SELECT s.name FROM snapshot_records sr JOIN snapshots s USING (snapshot_id) "
            "WHERE sr.record_id = ? ORDER BY s.created_at", [rid])]
    return {"record": record, "run": run[0] if run else None, "calls": calls,
            "decisions": decisions, "snapshots": snapshots}


def render_details(details: dict[str, Any]) -> list[Any]:
    """Rich renderables for :func:`record_details` (panels for the texts, tables for the rest)."""
    from rich.panel import Panel
    from rich.text import Text

    rec = details["record"]
    head = (f"{rec['record_id']}  kind={rec['kind']}  round={rec['round']}  "
            f"verdict={rec['verdict']}  source={rec['source']}")
    prov = (f"run {rec['run_id']}"
            + (f" ({details['run']['command']}, {details['run']['code_version']})"
               if details["run"] else "")
            + f"; responder={rec['responder']}; teacher={rec['teacher']}"
            + f"; templates={rec['templates']}; parent={rec['parent_record_id']}")
    out: list[Any] = [Text(head, style="bold"), Text(prov, style="dim")]
    if rec.get("meta"):
        out.append(Text(f"meta: {rec['meta']}", style="dim"))
    prompt_title = f"prompt {rec['prompt_id']}  gold={rec['gold_answer']}  split={rec['split']}"
    for title, text in [(prompt_title, rec["prompt"]), ("response r", rec["response"]),
                        ("feedback f", rec["feedback"]), ("refinement r̂", rec["refinement"])]:
        if text is not None:
            out.append(Panel(Text(text), title=title, title_align="left"))
    if rec.get("verdict_error"):
        out.append(Text(f"verdict_error: {rec['verdict_error']}", style="yellow"))
    # One line per call and per decision: readable at any terminal width.
    calls = [f"  {c['call_id']}  {c['purpose']}  {c['model']}  {c['status']}  tokens "
             f"{c['prompt_tokens']}+{c['completion_tokens']}  cost {c['cost']}  "
             f"latency {c['latency']}  attempts {c['n_attempts']}"
             + (f"  error: {c['error']}" if c["error"] else "") for c in details["calls"]]
    out.append(Text("Calls:" + ("\n" + "\n".join(calls) if calls else " none")))
    lines = []
    for d in details["decisions"]:
        mark = "kept   " if d["passed"] else "DROPPED"
        line = f"  {mark} {d['step']}: {d['reason'] or ''}"
        if d["score"] is not None:
            line += f"  score={d['score']:g}"
        if d["detail"]:
            line += f"  detail={d['detail']}"
        lines.append(line + f"  ({d['command']}, run {d['run_id']}, {d['created_at']})")
    out.append(Text("Decisions:" + ("\n" + "\n".join(lines) if lines else " none")))
    out.append(Text("Snapshots: " + (", ".join(details["snapshots"]) or "none"), style="dim"))
    return out
