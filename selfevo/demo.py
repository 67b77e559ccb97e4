"""``selfevo demo``: the store end to end on embedded data, no network, no model.

A short sequence of library calls (later stages of the SELF pipeline slot in between):
generate word problems → qa records from their gold rationales → snapshot → export. Re-running
it is a no-op on the store (content ids, insert-or-ignore, the snapshot is reused) and
rewrites the export with identical bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import click

from corpus.store import Store

DB_NAME = "selfevo.duckdb"
SNAPSHOT = "demo-qa"
SNAPSHOT_WHERE = "kind = 'qa' AND source = 'generated' AND split = 'train'"
_FINAL_LINE = re.compile(r"^\s*####\s*(.*?)\s*$", re.MULTILINE)


@dataclass
class DemoResult:
    """Where the demo put things and what it counted."""

    db: Path
    prompts: int
    records: int
    snapshot: str
    content_hash: str
    export_dir: Path


def qa_answer(gold_rationale: str, gold_answer: str) -> str:
    """A GSM8K-style rationale as a trained answer: the ``#### N`` line becomes ``The answer is N.``."""
    steps = _FINAL_LINE.sub("", gold_rationale).rstrip()
    final = f"The answer is {gold_answer}."
    return f"{steps}\n{final}" if steps else final


def add_qa_records(store: Store, n: int, seed: int) -> int:
    """qa records (prompt → gold rationale) for the generated problems ``(n, seed)``."""
    from corpus.records import insert_records, make_record
    from corpus.wordproblems import generate_problems
    from schemas.identity import prompt_id

    records = [
        make_record(prompt_id=prompt_id(p["text"]), kind="qa",
                    response=qa_answer(p["gold_rationale"], p["gold_answer"]),
                    responder="gold", source="generated", meta={"from": "gold_rationale"})
        for p in generate_problems(n, seed)
    ]
    with store.run("demo qa records", {"n": n, "seed": seed}) as run:
        with store.transaction() as con:
            new = insert_records(con, records, run.run_id)
        run.add("records", new)
    return len(records)


def ensure_snapshot(store: Store, name: str, where: str) -> tuple[str, str]:
    """Create snapshot ``name``, or reuse it when it already holds exactly these records.

    A store that already has ``name`` with other content (e.g. a re-run with a larger
    ``--n``) gets ``name-<hash prefix>`` instead, since snapshots are immutable.
    """
    from corpus.snapshots import create_snapshot, find_snapshot, select_record_ids
    from schemas.identity import selection_hash

    with store.connection() as con:
        content_hash = selection_hash(select_record_ids(con, where))
        for candidate in (name, f"{name}-{content_hash[3:11]}"):
            existing = find_snapshot(con, candidate)
            if existing is None:
                break
            if existing.content_hash == content_hash:
                return candidate, content_hash
    snap = create_snapshot(store, candidate, where, note="selfevo demo")
    return snap.name, snap.content_hash


def run_demo(out: str | Path, n: int = 40, seed: int = 0, quick: bool = False) -> DemoResult:
    """Run the demo into directory ``out`` (created if missing); returns what it made."""
    from corpus.export import export_snapshot
    from corpus.importers import import_generated

    if quick:
        n = min(n, 20)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    db = out / DB_NAME
    with Store.open(db, command="demo") as store:
        import_generated(store, n, seed=seed, split="train")
        add_qa_records(store, n, seed)
        name, content_hash = ensure_snapshot(store, SNAPSHOT, SNAPSHOT_WHERE)
        export_dir = out / "exports" / name
        export_dir.parent.mkdir(exist_ok=True)
        export_snapshot(store, name, "parquet", export_dir)
        prompts, records = store.query(
            "SELECT (SELECT count(*) FROM prompts), (SELECT count(*) FROM records)")[0]
    return DemoResult(db, prompts, records, name, content_hash, export_dir)


@click.command("demo")
@click.option("--out", default="demo-out", show_default=True, type=click.Path(file_okay=False),
              help="Directory for the store and the exports (re-running reuses it).")
@click.option("--n", "n", type=int, default=40, show_default=True,
              help="How many word problems to generate.")
@click.option("--seed", type=int, default=0, show_default=True, help="Generator seed.")
@click.option("--quick", is_flag=True, help="Smallest useful run (at most 20 problems).")
def demo(out: str, n: int, seed: int, quick: bool) -> None:
    """Run the pipeline on embedded word problems: store, records, snapshot, export.

    \b
    Example:
      selfevo demo --out demo-out
      selfevo sql --db demo-out/selfevo.duckdb "SELECT kind, count(*) FROM records GROUP BY 1"
    """
    r = run_demo(out, n=n, seed=seed, quick=quick)
    db = r.db.as_posix()
    click.echo(f"store      {db}  ({r.prompts} prompts, {r.records} records)")
    click.echo(f"snapshot   {r.snapshot}  ({r.content_hash})")
    click.echo(f"export     {r.export_dir.as_posix()}/  (manifest.json, README.md, "
               "records.parquet)")
    click.echo("\nTry:")
    for q in (
        "SELECT kind, round, count(*) AS n FROM records GROUP BY ALL",
        "SELECT command, status, counts FROM runs ORDER BY started_at",
        "SELECT meta->>'template' AS template, count(*) FROM prompts GROUP BY 1",
        "SELECT name, n, content_hash FROM snapshots",
    ):
        click.echo(f'  selfevo sql --db {db} "{q}"')
