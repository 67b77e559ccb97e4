"""Commands of the store: init, prompts, records, sql, stats, show, snapshot."""

from __future__ import annotations

import json

import click

from corpus.errors import CorpusError
from corpus.migrations import MIGRATIONS
from corpus.options import db_option
from corpus.store import Store


@click.command("init")
@db_option
def init_cmd(db: str) -> None:
    """Create a store (or migrate an existing one to this version).

    \b
    Example:
      selfevo init --db work.duckdb
    """
    with Store.open(db, command="init") as store:
        applied = store.query("SELECT count(*) FROM _migrations")[0][0]
    click.echo(f"store {store.spec} ready ({applied}/{len(MIGRATIONS)} migrations applied)")


# -- prompts / records import ------------------------------------------------------------
@click.group("prompts")
def prompts() -> None:
    """Import prompts from files, or generate synthetic word problems.

    \b
    Example:
      selfevo prompts import /data/gsm8k/train.jsonl --preset gsm8k
      selfevo prompts generate --n 200 --seed 1
    """


@prompts.command("import")
@click.argument("file", required=False, type=click.Path(exists=True, path_type=str))
@click.option("--hf", "hf_name", metavar="NAME[:CONFIG]",
              help="Load with datasets.load_dataset instead of FILE (a Hub id or a local "
                   "folder of data files); --split picks the split.")
@click.option("--preset", type=click.Choice(["gsm8k", "svamp"]),
              help="Read a benchmark's own format (see docs/store.md).")
@click.option("--map", "map_spec", metavar="SRC=DST,...",
              help="Rename source fields to text, gold_answer, gold_rationale, source, split, "
                   "meta or meta.NAME.")
@click.option("--source", help="Source label for every prompt (default: the row's, the preset "
                                "or the file name).")
@click.option("--split", help="Split for every prompt, e.g. train or test.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "json", "csv", "parquet", "hf"]),
              help="File format (default: from the name; a directory is a saved HF dataset).")
@db_option
def prompts_import(file: str | None, hf_name: str | None, preset: str | None,
                   map_spec: str | None, source: str | None, split: str | None,
                   fmt: str | None, db: str) -> None:
    """Import prompts from FILE (JSONL, JSON, CSV, Parquet or a saved HF dataset) atomically.

    Re-importing the same rows adds nothing ("0 new").

    \b
    Example:
      selfevo prompts import questions.csv --map question=text,answer=gold_answer --split train
      selfevo prompts import --hf openai/gsm8k:main --split test --preset gsm8k
    """
    from corpus.display import progress
    from corpus.importers import import_hub_prompts, import_prompts, parse_map

    if (file is None) == (hf_name is None):
        raise click.UsageError("give FILE or --hf NAME (exactly one)")
    mapping = parse_map(map_spec)
    with Store.open(db, command="prompts import") as store, progress("import") as bar:
        if hf_name:
            result = import_hub_prompts(store, hf_name, preset=preset, mapping=mapping,
                                        source=source, split=split, progress=bar)
        else:
            result = import_prompts(store, file, fmt=fmt, preset=preset, mapping=mapping,
                                    source=source, split=split, progress=bar)
    click.echo(result.summary("prompts"))


@prompts.command("generate")
@click.option("--n", "n", type=int, default=100, show_default=True, help="How many problems.")
@click.option("--seed", type=int, default=0, show_default=True, help="Generator seed.")
@click.option("--split", help="Split label, e.g. train.")
@db_option
def prompts_generate(n: int, seed: int, split: str | None, db: str) -> None:
    """Generate synthetic grade-school word problems (source 'generated') and import them.

    \b
    Example:
      selfevo prompts generate --n 500 --seed 0 --split train
    """
    from corpus.display import progress
    from corpus.importers import import_generated

    with Store.open(db, command="prompts generate") as store, progress("generate") as bar:
        result = import_generated(store, n, seed=seed, split=split, progress=bar)
    click.echo(result.summary("prompts"))


@click.group("records")
def records() -> None:
    """Import ready-made (p, r, f, r̂) records.

    \b
    Example:
      selfevo records import meta_corpus.jsonl --source teacher-gpt4
    """


@records.command("import")
@click.argument("file", type=click.Path(exists=True, path_type=str))
@click.option("--map", "map_spec", metavar="SRC=DST,...",
              help="Rename source fields to the interchange names (prompt, response, …).")
@click.option("--source", help="Source label for every record and new prompt.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "json", "parquet"]),
              help="File format (default: from the name).")
@db_option
def records_import(file: str, map_spec: str | None, source: str | None, fmt: str | None,
                   db: str) -> None:
    """Import records in the interchange format (JSONL or Parquet), with their prompts.

    Every row is validated first; the file lands whole or not at all.

    \b
    Example:
      selfevo records import exports/meta-ok/data.parquet
    """
    from corpus.display import progress
    from corpus.importers import RECORD_FIELDS, import_records, parse_map

    mapping = parse_map(map_spec, RECORD_FIELDS)
    with Store.open(db, command="records import") as store, progress("import") as bar:
        result = import_records(store, file, fmt=fmt, mapping=mapping, source=source,
                                progress=bar)
    click.echo(result.summary("records"))


# -- store copy ---------------------------------------------------------------------------
@click.group("store")
def store() -> None:
    """Move a whole store between a DuckDB file and a DuckLake; check it.

    \b
    Example:
      selfevo store copy selfevo.duckdb "ducklake:team.ducklake data_path=/mnt/lake/"
    """


@store.command("copy")
@click.argument("src")
@click.argument("dst")
def store_copy(src: str, dst: str) -> None:
    """Copy every table of store SRC into the empty store DST, verified.

    SRC and DST are --db specs: a DuckDB file, ``ducklake:CATALOG.ducklake`` or
    ``ducklake:postgres:CONNINFO data_path=…``. DST must be new or empty. Row counts and
    content hashes of every table are checked before the copy commits; DST gets one run row.

    \b
    Example:
      selfevo store copy selfevo.duckdb "ducklake:postgres:dbname=corpus host=pg data_path=/mnt/lake/"
      selfevo store copy "ducklake:postgres:dbname=corpus host=pg" backup.duckdb
    """
    from corpus.display import progress
    from corpus.storecopy import copy_store

    with progress("copy") as bar:
        result = copy_store(src, dst, progress=bar)
    click.echo(result.summary())


@store.command("check")
@db_option
@click.option("--fix", is_flag=True,
              help="Repair what can be repaired: keep one row per duplicate id, give dead "
                   "runs their final state, delete orphan files.")
def store_check(db: str, fix: bool) -> None:
    """Check that the store can be trusted; exit 1 while problems remain.

    On a DuckLake: ids with more than one row (a lake has no keys), duplicate snapshot names,
    orphan Parquet files older than a day, ``running`` runs whose process is gone, records
    whose prompt is missing (and snapshot members or decisions whose record is). On a DuckDB
    file the same but keys and files (DuckDB enforces its keys). ``--fix`` reconciles
    duplicates (per id the row of the smallest run_id survives), reaps dead runs and deletes
    orphan files, printing what it did.

    \b
    Example:
      selfevo store check --db "ducklake:postgres:dbname=corpus host=pg data_path=/mnt/lake/"
      selfevo store check --fix
    """
    from corpus.storecheck import check_store

    report = check_store(db, fix=fix)
    for line in report.lines():
        click.echo(line)
    if not report.ok:
        raise SystemExit(1)


# -- audit: sql / stats / show -----------------------------------------------------------
@click.command("sql")
@click.argument("query")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True, help="Output format.")
@click.option("--at", "at", type=click.IntRange(min=0), default=None, metavar="VERSION",
              help="Read a DuckLake store as it was at DuckLake snapshot VERSION "
                   "(snapshots.lake_version, ducklake_snapshots()).")
@db_option
def sql(query: str, fmt: str, db: str, at: int | None) -> None:
    """Run a read-only SQL QUERY (one SELECT) against the store; writes are refused.

    Works while another selfevo process is running a job.

    \b
    Example:
      selfevo sql "SELECT step, reason, count(*) FROM decisions WHERE NOT passed GROUP BY ALL"
      selfevo sql "SELECT * FROM prompts LIMIT 5" --format json
      selfevo sql "SELECT count(*) FROM records" --at 42 --db ducklake:team.ducklake
    """
    from corpus.audit import check_read_only, format_rows, rich_table, run_query

    check_read_only(query)  # before the store is even opened
    columns, rows = run_query(Store.open_readonly(db, at=at), query)
    if fmt == "table":
        from rich.console import Console

        Console().print(rich_table(columns, rows))
        click.echo(f"{len(rows)} row{'s' if len(rows) != 1 else ''}", err=True)
    else:
        click.echo(format_rows(columns, rows, fmt), nl=fmt == "json")


@click.command("stats")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="Output format.")
@db_option
def stats(fmt: str, db: str) -> None:
    """Counts by kind, round, source and verdict, and the latest runs.

    \b
    Example:
      selfevo stats --db work.duckdb
    """
    from corpus.audit import collect_stats, format_rows, rich_table

    sections = collect_stats(Store.open_readonly(db))
    if fmt == "json":
        click.echo("{" + ",".join(
            f"{json.dumps(s.title)}:{format_rows(s.columns, s.rows, 'json')}" for s in sections
        ) + "}")
        return
    from rich.console import Console

    console = Console()
    for s in sections:
        console.print(rich_table(s.columns, s.rows, s.title))


@click.command("show")
@click.argument("record_id")
@click.option("--json", "as_json", is_flag=True, help="Print the details as JSON.")
@db_option
def show(record_id: str, as_json: bool, db: str) -> None:
    """Show one record (RECORD_ID or a unique prefix) with its prompt, calls and decisions.

    \b
    Example:
      selfevo show h1:3f2a9c
    """
    from corpus.audit import record_details, render_details

    details = record_details(Store.open_readonly(db), record_id)
    if as_json:
        click.echo(json.dumps(details, default=str, ensure_ascii=False, indent=1))
        return
    from rich.console import Console

    console = Console()
    for part in render_details(details):
        console.print(part)


# -- snapshot ----------------------------------------------------------------------------
@click.group("snapshot")
def snapshot() -> None:
    """Create, list, diff and export immutable snapshots of records.

    \b
    Example:
      selfevo snapshot create meta-ok --where "kind = 'meta' AND verdict = 'correct'"
      selfevo snapshot export meta-ok --format parquet --out exports/meta-ok
    """


@snapshot.command("create")
@click.argument("name")
@click.option("--where", "where", required=True,
              help="A condition: one SQL expression over records_full (records + prompt, "
                   "gold_answer, split …).")
@click.option("--from", "base", metavar="SNAPSHOT", help="Select only within this snapshot.")
@click.option("--note", help="Free text kept with the snapshot.")
@db_option
def snapshot_create(name: str, where: str, base: str | None, note: str | None, db: str) -> None:
    """Freeze the records matching --where as snapshot NAME (immutable).

    \b
    Example:
      selfevo snapshot create round1-kept --where "round = 1 AND record_id IN
        (SELECT record_id FROM latest_decisions WHERE step = 'verdict' AND passed)"
      selfevo snapshot create train-qa --from all --where "kind = 'qa' AND split = 'train'"
    """
    from corpus.snapshots import create_snapshot

    with Store.open(db, command=f"snapshot create {name}") as store:
        snap = create_snapshot(store, name, where, base=base, note=note)
    click.echo(f"snapshot {snap.name}: {snap.n} records, {snap.content_hash}")


@snapshot.command("list")
@db_option
def snapshot_list(db: str) -> None:
    """List snapshots with their size, content hash and selection.

    \b
    Example:
      selfevo snapshot list --db work.duckdb
    """
    from rich.console import Console
    from rich.table import Table

    from corpus.snapshots import list_snapshots

    snaps = list_snapshots(Store.open_readonly(db))
    table = Table()
    for col in ("name", "n", "content hash", "created"):
        table.add_column(col, no_wrap=True)
    for col, width in (("from", 6), ("where", 24), ("note", 6)):
        table.add_column(col, overflow="fold", min_width=width)
    for s in snaps:
        # 64 bits of the hash are plenty to tell snapshots apart on screen.
        table.add_row(s.name, str(s.n), s.content_hash[:19], f"{s.created_at:%Y-%m-%d %H:%M}",
                      s.parent or "", s.selection["where"], s.note or "")
    Console().print(table if snaps else "no snapshots yet; create one with 'selfevo snapshot create'")


@snapshot.command("diff")
@click.argument("a")
@click.argument("b")
@click.option("--show", type=int, default=0, show_default=True,
              help="List up to N record ids added and removed.")
@db_option
def snapshot_diff(a: str, b: str, show: int, db: str) -> None:
    """Compare snapshot A with B: records added (only in B), removed (only in A), common.

    \b
    Example:
      selfevo snapshot diff round1 round2 --show 5
    """
    from corpus.snapshots import diff_snapshots

    d = diff_snapshots(Store.open_readonly(db), a, b, show=show)
    click.echo(f"{a} -> {b}: +{d.added} added, -{d.removed} removed, {d.common} common")
    for label, ids in (("added", d.added_ids), ("removed", d.removed_ids)):
        for rid in ids:
            click.echo(f"  {label:7} {rid}")


@snapshot.command("export")
@click.argument("name")
@click.option("--format", "fmt", type=click.Choice(["parquet", "jsonl", "hf"]),
              default="parquet", show_default=True, help="Data file format.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="New or empty directory (or an identical export of NAME, rewritten).")
@click.option("--layout", "layouts", multiple=True, metavar="KIND=LAYOUT",
              help="How records of KIND train: meta, answer (p -> r̂ for meta/self) or "
                   "meta+answer; repeatable (default: meta and self meta, qa answer).")
@db_option
def snapshot_export(name: str, fmt: str, out: str, layouts: tuple[str, ...], db: str) -> None:
    """Export snapshot NAME with manifest.json and a dataset card (byte-reproducible).

    \b
    Example:
      selfevo snapshot export meta-ok --format parquet --out exports/meta-ok
      selfevo train --data exports/meta-ok --base HuggingFaceTB/SmolLM2-135M-Instruct --out ckpt
      selfevo snapshot export round-1 --layout self=answer --out exports/r1   # SELF's (p, r̂)
    """
    from corpus.export import export_snapshot

    chosen = {}
    for item in layouts:
        kind, eq, layout = item.partition("=")
        if not eq:
            raise CorpusError(f"--layout {item!r}: expected KIND=LAYOUT, e.g. self=answer")
        chosen[kind.strip()] = layout.strip()
    m = export_snapshot(Store.open_readonly(db), name, fmt, out, chosen)
    click.echo(f"exported {m.n} records of {m.name} ({m.content_hash}) to {out}")
    for f in m.files:
        click.echo(f"  {f.path}  {f.bytes} bytes  sha256 {f.sha256[:16]}…")
