"""The funnel of a curation run: how many records each step checked, passed and dropped.

Computed from ``decisions`` alone, so it works for any command that writes decisions (filter,
dedup, decontam). A record is *dropped by* the first step, in run order, that it failed; the
*remaining* column is the number of records that passed every step up to and including that
row. Step order comes from ``runs.config.steps`` (a list of ``{"step": label, …}``) when the
run recorded one, else from the order in which the steps' decisions were written. Step times
come from ``runs.counts.seconds`` (``{label: seconds}``) when present.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import duckdb


@dataclass
class FunnelRow:
    """One step of a run's funnel."""

    step: str
    checked: int  # records with a decision of this step
    passed: int  # of those, passed this step (whatever earlier steps said)
    dropped: int  # records whose first failed step (in run order) is this one
    remaining: int  # records that passed this step and every earlier one
    seconds: float | None  # time the step took, when the run recorded it


@dataclass
class Funnel:
    """A run's funnel: the run, how many records it saw, and one row per step."""

    run_id: str
    command: str
    status: str
    started_at: Any
    selected: int
    rows: list[FunnelRow]

    @property
    def kept(self) -> int:
        """Records that passed every step."""
        return self.rows[-1].remaining if self.rows else self.selected


def _json(value: Any) -> Any:
    if value is None or isinstance(value, dict | list):
        return value
    return json.loads(value)


def run_funnel(con: duckdb.DuckDBPyConnection, run_id: str) -> Funnel:
    """The funnel of one run (an empty one when it wrote no decisions)."""
    run = con.execute(
        "SELECT command, status, started_at, config, counts FROM runs WHERE run_id = ?", [run_id]
    ).fetchone()
    if run is None:
        raise KeyError(run_id)
    command, status, started_at, config, counts = run
    config, counts = _json(config) or {}, _json(counts) or {}
    per_step = con.execute(
        "SELECT step, count(*), count(*) FILTER (WHERE passed), min(created_at) "
        "FROM decisions WHERE run_id = ? GROUP BY step", [run_id]
    ).fetchall()
    stats = {s: (n, p) for s, n, p, _ in per_step}
    written = [s for s, *_ in sorted(per_step, key=lambda r: (r[3], r[0]))]
    declared = [s["step"] for s in config.get("steps", []) if isinstance(s, dict) and "step" in s]
    order = [s for s in declared if s in stats] + [s for s in written if s not in declared]
    selected = con.execute(
        "SELECT count(DISTINCT record_id) FROM decisions WHERE run_id = ?", [run_id]
    ).fetchone()[0]
    first_fail: dict[int, int] = {}
    if order:
        first_fail = dict(con.execute(
            """
            SELECT first_fail, count(*) FROM (
                SELECT d.record_id, min(o.ord) FILTER (WHERE NOT d.passed) AS first_fail
                FROM decisions d
                JOIN (SELECT unnest(?::VARCHAR[]) AS step,
                             unnest(?::INTEGER[]) AS ord) o USING (step)
                WHERE d.run_id = ? GROUP BY d.record_id)
            WHERE first_fail IS NOT NULL GROUP BY first_fail
            """,
            [order, list(range(len(order))), run_id],
        ).fetchall())
    seconds = counts.get("seconds", {}) if isinstance(counts.get("seconds"), dict) else {}
    rows, remaining = [], selected
    for i, step in enumerate(order):
        dropped = first_fail.get(i, 0)
        remaining -= dropped
        n, p = stats[step]
        rows.append(FunnelRow(step, n, p, dropped, remaining, seconds.get(step)))
    return Funnel(run_id, command, status, started_at, selected, rows)


def latest_curation_funnels(con: duckdb.DuckDBPyConnection, limit: int = 3) -> list[Funnel]:
    """Funnels of the most recent runs that wrote decisions, newest first."""
    ids = con.execute(
        "SELECT r.run_id FROM runs r WHERE EXISTS (SELECT 1 FROM decisions d "
        "WHERE d.run_id = r.run_id) ORDER BY r.started_at DESC, r.run_id DESC LIMIT ?", [limit]
    ).fetchall()
    return [run_funnel(con, i) for (i,) in ids]


def funnel_table(funnel: Funnel) -> Any:
    """A rich Table of a funnel (title: run id, command, status)."""
    from rich import box
    from rich.table import Table

    table = Table(title=f"{funnel.command} {funnel.run_id} ({funnel.status})",
                  title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("step", no_wrap=True)
    for col in ("checked", "passed", "dropped", "remaining", "kept%", "seconds"):
        table.add_column(col, justify="right", no_wrap=True, min_width=len(col))
    table.add_row("(selected)", "", "", "", f"{funnel.selected:,}", "100.0" if funnel.selected
                  else "-", "")
    for r in funnel.rows:
        pct = f"{100 * r.remaining / funnel.selected:.1f}" if funnel.selected else "-"
        secs = f"{r.seconds:.2f}" if r.seconds is not None else ""
        table.add_row(r.step, f"{r.checked:,}", f"{r.passed:,}", f"{r.dropped:,}",
                      f"{r.remaining:,}", pct, secs)
    return table


def funnel_rows(con: duckdb.DuckDBPyConnection, limit: int = 3) -> list[tuple[Any, ...]]:
    """The latest curation runs' funnels as flat rows (for ``selfevo stats``)."""
    rows: list[tuple[Any, ...]] = []
    for f in latest_curation_funnels(con, limit):
        rows.append((f.run_id, f.command, "(selected)", None, None, None, f.selected))
        rows += [(f.run_id, f.command, r.step, r.checked, r.passed, r.dropped, r.remaining)
                 for r in f.rows]
    return rows


FUNNEL_COLUMNS = ["run_id", "command", "step", "checked", "passed", "dropped", "remaining"]
