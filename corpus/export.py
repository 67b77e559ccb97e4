"""Exporting a snapshot: a self-describing, byte-reproducible training directory.

Layout (the trainer reads only this; see docs/snapshots.md)::

    DIR/manifest.json      schemas.records.SnapshotManifest (files with rows, bytes, sha256)
    DIR/README.md          dataset card
    DIR/records.parquet    --format parquet
    DIR/records.jsonl      --format jsonl
    DIR/hf/                --format hf (datasets.save_to_disk)

Rows follow :class:`schemas.records.ExportRow`, ordered by ``record_id``. The whole row,
including the ``messages`` column (built in SQL exactly like
:func:`schemas.conversation.record_messages`), is produced by one DuckDB ``COPY`` so an export
costs little more than copying the rows. Reproducibility comes from a fixed order, a fixed
row-group size and compression, and metadata derived only from the snapshot (its creation time
and the code version of the run that created it, never "now"). The COPY runs on all of
DuckDB's threads: with insertion order preserved, DuckDB cuts row groups at exactly
``ROW_GROUP_SIZE`` rows of the ordered stream whatever the scheduling, so the bytes do not
depend on the thread count (tests/test_export.py checks 1 to 4 threads).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import duckdb

from corpus.errors import CorpusError, storage_error
from corpus.snapshots import Snapshot, get_snapshot, sql_literal
from corpus.store import Store
from schemas.conversation import (
    CONVERSATION_VERSION,
    FEEDBACK_INSTRUCTION,
    PLACEHOLDERS,
    REFINE_INSTRUCTION,
    LayoutError,
    record_messages,
    resolve_layouts,
)
from schemas.identity import file_sha256
from schemas.records import (
    EXPORT_SCHEMA_VERSION,
    ExportRow,
    ManifestFile,
    SnapshotManifest,
    current_training_hash,
)

FORMATS = ("parquet", "jsonl", "hf")
DATA_FILES = {"parquet": "records.parquet", "jsonl": "records.jsonl"}
HF_DIR = "hf"
MANIFEST = "manifest.json"
CARD = "README.md"

#: Rows per Parquet row group; with the compression, part of the reproducibility contract
#: (same settings, same bytes). Row groups are cut at this many rows of the ordered stream.
ROW_GROUP_SIZE = 100_000
#: Parquet writer settings (the row-group size is added by copy_rows).
PARQUET_OPTIONS = "FORMAT parquet, COMPRESSION zstd"

#: The texts each layout's messages depend on (a CASE branch per pattern of present ones).
_LAYOUT_FIELDS = {"answer": ("response",), "meta": ("response", "feedback", "refinement")}


def _messages_case(layouts: dict[str, str]) -> str:
    """SQL for the ``messages`` column, derived from ``record_messages`` itself.

    One CASE branch per kind and pattern of present texts (the ones its layout reads), each a
    list literal: record_messages() is called with placeholders and its output translated to
    SQL, so the column cannot drift from the Python layout, and a flat list literal is
    cheaper in DuckDB than concatenating lists.
    """
    placeholders = {PLACEHOLDERS["prompt"]: "p.text", FEEDBACK_INSTRUCTION: "$feedback_instruction",
                    REFINE_INSTRUCTION: "$refine_instruction",
                    **{PLACEHOLDERS[f]: f"r.{f}" for f in ("response", "feedback", "refinement")}}
    columns = {f: PLACEHOLDERS[f] for f in ("response", "feedback", "refinement")}
    branches = []
    for kind, layout in layouts.items():
        fields = _LAYOUT_FIELDS["meta" if layout.startswith("meta") else "answer"]
        if layout == "answer" and kind != "qa":
            fields = ("refinement",)  # a meta/self record's answer is r̂
        for present in itertools.product((True, False), repeat=len(fields)):
            texts = {f: columns[f] if has else None for f, has in zip(fields, present,
                                                                         strict=True)}
            msgs = record_messages(kind=kind, prompt=PLACEHOLDERS["prompt"], layout=layout,
                                   response=texts.get("response"),
                                   feedback=texts.get("feedback"),
                                   refinement=texts.get("refinement"))
            conds = [f"r.kind = '{kind}'"] + [f"r.{f} IS {'NOT ' if has else ''}NULL"
                                              for f, has in zip(fields, present, strict=True)]
            items = ", ".join(
                f"{{'role': '{m['role']}', 'content': {placeholders[m['content']]}, "
                f"'train': {'true' if m['train'] else 'false'}}}" for m in msgs)
            branches.append(f"WHEN {' AND '.join(conds)} THEN [{items}]")
    return "CASE\n        " + "\n        ".join(branches) + "\n    END"


def export_select(layouts: dict[str, str] | None = None) -> str:
    """The export row: ExportRow's columns in order, ``messages`` last (see _messages_case),
    each kind's messages in its layout (``resolve_layouts(layouts)``)."""
    return f"""
SELECT
    r.record_id, r.prompt_id, r.kind, r.round, p.text AS prompt,
    r.response, r.feedback, r.verdict, r.refinement,
    p.gold_answer, coalesce(r.source, p.source) AS source, r.parent_record_id,
    CAST(r.meta AS VARCHAR) AS meta, r.run_id, r.responder, r.teacher,
    r.response_call_id, r.feedback_call_id, r.refinement_call_id,
    CAST(r.templates AS VARCHAR) AS templates,
    {_messages_case(resolve_layouts(layouts))} AS messages
FROM snapshot_records s
JOIN records r ON r.record_id = s.record_id
JOIN prompts p ON p.prompt_id = r.prompt_id
WHERE s.snapshot_id = $snapshot_id
ORDER BY r.record_id
"""


#: The export row with every kind in its natural layout.
EXPORT_SELECT = export_select()


def export_params(snapshot_id: str) -> dict[str, str]:
    """Parameters of :func:`export_select`'s SQL."""
    return {
        "snapshot_id": snapshot_id,
        "feedback_instruction": FEEDBACK_INSTRUCTION,
        "refine_instruction": REFINE_INSTRUCTION,
    }


def export_sql(snapshot_id: str, layouts: dict[str, str] | None = None) -> str:
    """:func:`export_select` with its parameters inlined as literals (see sql_literal)."""
    params = export_params(snapshot_id)
    return re.sub(r"\$(\w+)", lambda m: sql_literal(params[m.group(1)]), export_select(layouts))


def _sql_path(path: Path) -> str:
    return sql_literal(str(path))


@contextlib.contextmanager
def _ordered(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    # Without insertion order DuckDB writes rows (and cuts row groups) as threads finish.
    order = con.execute("SELECT current_setting('preserve_insertion_order')").fetchone()[0]
    con.execute("SET preserve_insertion_order = true")
    try:
        yield
    finally:
        con.execute(f"SET preserve_insertion_order = {'true' if order else 'false'}")


def copy_rows(con: duckdb.DuckDBPyConnection, snapshot_id: str, path: Path, fmt: str,
              layouts: dict[str, str] | None = None,
              row_group_size: int = ROW_GROUP_SIZE) -> None:
    """Write the export rows of a snapshot to ``path`` (parquet or jsonl) with one COPY.

    Runs at the connection's thread count; the bytes depend only on the rows and the
    settings (``row_group_size`` is a parameter for tests that need many row groups).
    """
    options = (f"{PARQUET_OPTIONS}, ROW_GROUP_SIZE {int(row_group_size)}" if fmt == "parquet"
               else "FORMAT json")
    with _ordered(con):
        con.execute(
            f"COPY ({export_sql(snapshot_id, layouts)}) TO {_sql_path(path)} ({options})")


def _check_out(out: Path, snap: Snapshot, fmt: str, layouts: dict[str, str]) -> None:
    """Refuse an output that exists and is not an identical export (same snapshot, format and
    training hash, which covers the layouts: the bytes it would be rewritten with are the
    bytes it has)."""
    if not out.exists():
        if not out.parent.exists():
            raise CorpusError(f"--out {out}: parent directory {out.parent} does not exist")
        return
    if not out.is_dir():
        raise CorpusError(f"--out {out} is a file; give a directory")
    if not any(out.iterdir()):
        return
    previous: dict[str, object] = {}
    with contextlib.suppress(OSError, ValueError, AttributeError):
        previous = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    if previous.get("snapshot_id") != snap.snapshot_id:
        raise CorpusError(
            f"--out {out} is not empty and is not an export of snapshot '{snap.name}'; "
            "choose a new or empty directory"
        )
    if (previous.get("format") != fmt
            or previous.get("training_hash") != current_training_hash(snap.content_hash, layouts)):
        raise CorpusError(
            f"--out {out} holds an export of '{snap.name}' as {previous.get('format')} "
            f"(schema {previous.get('schema_version')}), not the {fmt} export this would "
            "write; choose a new or empty directory"
        )


@contextlib.contextmanager
def _destination_lock(out: Path, wait: float = 600.0) -> Iterator[None]:
    """Exclusive hold on ``out``'s parent directory (its inode, whatever path names it) from
    the check of ``out`` to the rename into it, so a concurrent export cannot slip in between
    and be silently replaced; a second export waits, then finds the first one's result."""
    fd = os.open(out.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        deadline = time.monotonic() + wait
        said = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise CorpusError(
                        f"another export into {out.parent} ran for {wait:.0f}s; wait for it "
                        "to finish, or choose another --out") from None
                if not said:
                    print(f"waiting for another export into {out.parent} …", file=sys.stderr)
                    said = True
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # drops the lock


def _remove_stale_partials(out: Path) -> None:
    # A SIGKILLed export leaves '.NAME.partial-PID'; remove those whose process is gone.
    for path in out.parent.glob(f".{out.name}.partial-*"):
        try:
            os.kill(int(path.name.rsplit("-", 1)[1]), 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass


def _counts_and_runs(
    con: duckdb.DuckDBPyConnection, snapshot_id: str, parquet: Path | None = None
) -> tuple[dict[str, dict[str, int]], list[str]]:
    """Rows by kind, round and verdict, and the runs that made the records: one pass.

    Read from the written Parquet file when there is one (four small dictionary-encoded
    columns: ~10x cheaper than joining the store again), else from the store.
    """
    if parquet is not None:
        source = f"read_parquet({_sql_path(parquet)}) r"
    else:
        source = ("snapshot_records s JOIN records r ON r.record_id = s.record_id "
                  f"WHERE s.snapshot_id = {sql_literal(snapshot_id)}")
    rows = con.execute(
        "SELECT GROUPING(r.kind), GROUPING(r.round), GROUPING(r.verdict), r.kind, "
        "CAST(r.round AS VARCHAR), r.verdict, r.run_id, count(*) "
        f"FROM {source} "
        "GROUP BY GROUPING SETS ((r.kind), (r.round), (r.verdict), (r.run_id))"
    ).fetchall()
    counts: dict[str, dict[str, int]] = {"kind": {}, "round": {}, "verdict": {}}
    runs = []
    for g_kind, g_round, g_verdict, kind, rnd, verdict, run_id, n in rows:
        if not g_kind:
            counts["kind"][kind] = n
        elif not g_round:
            counts["round"][rnd] = n
        elif not g_verdict:
            counts["verdict"]["null" if verdict is None else verdict] = n
        else:
            runs.append(run_id)
    # Sorted keys (rounds numerically, "null" last) so the manifest text is stable.
    counts["kind"] = dict(sorted(counts["kind"].items()))
    counts["round"] = dict(sorted(counts["round"].items(), key=lambda kv: int(kv[0])))
    counts["verdict"] = dict(sorted(counts["verdict"].items(),
                                    key=lambda kv: (kv[0] == "null", kv[0])))
    return counts, sorted(runs)


def _write_hf(tmp: Path, snap: Snapshot) -> None:
    """Turn ``tmp/records.parquet`` into a ``datasets`` directory ``tmp/hf``."""
    try:
        import datasets
        import pyarrow.parquet as pq
    except ImportError:
        from schemas.install import install_hint

        raise CorpusError(
            f"--format hf needs the 'datasets' package: {install_hint('datasets')}"
        ) from None
    parquet = tmp / DATA_FILES["parquet"]
    table = pq.read_table(parquet)
    # A fixed fingerprint (from the content hash) instead of a random one keeps state.json
    # reproducible; nothing else in the saved directory depends on time or randomness.
    fingerprint = snap.content_hash.split(":", 1)[1][:16]
    ds = datasets.Dataset(table, fingerprint=fingerprint)
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        ds.save_to_disk(str(tmp / HF_DIR), num_shards=1)
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()
    parquet.unlink()


def _file_entries(tmp: Path, fmt: str, n: int) -> list[ManifestFile]:
    if fmt == "hf":
        paths = sorted(p for p in (tmp / HF_DIR).rglob("*") if p.is_file())
    else:
        paths = [tmp / DATA_FILES[fmt]]
    entries = []
    for p in paths:
        rel = p.relative_to(tmp).as_posix()
        rows = n if p.suffix in (".parquet", ".jsonl", ".arrow") else 0
        entries.append(ManifestFile(path=rel, rows=rows, bytes=p.stat().st_size,
                                    sha256=file_sha256(str(p))))
    return entries


def manifest_json(manifest: SnapshotManifest) -> str:
    """The exact text of ``manifest.json`` (sorted keys, two-space indent, final newline)."""
    return json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True,
                      ensure_ascii=False) + "\n"


def export_snapshot(store: Store, name: str, fmt: str, out: str | os.PathLike[str],
                    layouts: dict[str, str] | None = None) -> SnapshotManifest:
    """Export snapshot ``name`` as ``fmt`` (parquet, jsonl or hf) into directory ``out``.

    ``layouts`` sets how records of a kind train (:mod:`schemas.conversation`), e.g.
    ``{"self": "answer"}`` for SELF's (p, r̂); the others keep their natural layout. The
    resolved layouts are written into the manifest, where the trainer reads them, and are
    covered by its ``training_hash``.

    ``out`` must be new, empty, or an identical export (same snapshot, format, layouts and
    training hash), which is rewritten with the same bytes. Everything is written into a
    hidden sibling directory first and renamed into place, so a crash never leaves a
    half-written export at ``out``; the check and the rename happen under an exclusive lock of
    ``out``'s parent directory, so of two exports racing to one ``out`` the second either finds
    the first's identical result or is refused. A full disk is a one-line CorpusError.
    """
    if fmt not in FORMATS:
        raise CorpusError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    try:
        layouts = resolve_layouts(layouts)
    except LayoutError as exc:
        raise CorpusError(f"--layout: {exc}") from None
    out = Path(out).absolute()
    snap = get_snapshot(store, name)
    _check_out(out, snap, fmt, layouts)  # at once, before waiting for the lock; again under it
    try:
        with _destination_lock(out):
            _check_out(out, snap, fmt, layouts)
            return _export_into(store, snap, fmt, out, layouts)
    except (OSError, duckdb.Error) as exc:
        converted = storage_error(exc)
        if converted is None:
            raise
        raise converted from None


def _export_into(store: Store, snap: Snapshot, fmt: str, out: Path,
                 layouts: dict[str, str]) -> SnapshotManifest:
    _remove_stale_partials(out)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        data_fmt = "jsonl" if fmt == "jsonl" else "parquet"  # hf is made from parquet
        data = tmp / DATA_FILES[data_fmt]
        # On a lake, the store as the snapshot's commit left it: later writes (or a
        # reconciliation) cannot change an old snapshot's bytes.
        with store.reading_at(snap.lake_version) as con:
            copy_rows(con, snap.snapshot_id, data, data_fmt, layouts)
            counts, runs = _counts_and_runs(
                con, snap.snapshot_id, data if data_fmt == "parquet" else None)
            version = con.execute(
                f"SELECT code_version FROM runs WHERE run_id = {sql_literal(snap.run_id)}"
            ).fetchone()
        if fmt == "hf":
            _write_hf(tmp, snap)
        manifest = SnapshotManifest(
            schema_version=EXPORT_SCHEMA_VERSION, conversation_version=CONVERSATION_VERSION,
            layouts=layouts,
            name=snap.name, snapshot_id=snap.snapshot_id, content_hash=snap.content_hash,
            training_hash=current_training_hash(snap.content_hash, layouts),
            parent=snap.parent, selection=snap.selection, format=fmt, n=snap.n, counts=counts,
            files=_file_entries(tmp, fmt, snap.n), runs=runs,
            code_version=version[0] if version else "unknown",
            created_at=snap.created_at.astimezone(UTC),
        )
        (tmp / MANIFEST).write_text(manifest_json(manifest), encoding="utf-8")
        (tmp / CARD).write_text(dataset_card(manifest), encoding="utf-8")
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _replace_dir(tmp: Path, out: Path) -> None:
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)


def read_manifest(directory: str | os.PathLike[str]) -> SnapshotManifest:
    """Load and validate ``DIR/manifest.json``."""
    path = Path(directory) / MANIFEST
    try:
        return SnapshotManifest.model_validate_json(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CorpusError(f"{path}: cannot read manifest ({exc.strerror})") from None
    except ValueError as exc:
        raise CorpusError(f"{path}: not a valid manifest: {str(exc).splitlines()[0]}") from None


def verify_export(directory: str | os.PathLike[str]) -> SnapshotManifest:
    """Check an export's manifest (its training_hash) and every file (size and sha256)."""
    manifest = read_manifest(directory)
    if manifest.training_hash != current_training_hash(manifest.content_hash, manifest.layouts):
        raise CorpusError(
            f"{Path(directory) / MANIFEST}: training_hash does not match its content_hash and "
            "this selfevo's layout; the manifest was edited (or made by another version) — "
            "re-export the snapshot"
        )
    for f in manifest.files:
        path = Path(directory) / f.path
        if not path.is_file():
            raise CorpusError(f"{path}: listed in the manifest but missing")
        if path.stat().st_size != f.bytes or file_sha256(str(path)) != f.sha256:
            raise CorpusError(f"{path}: does not match its manifest entry (size or sha256)")
    return manifest


_COLUMN_DOCS: dict[str, str] = {
    "record_id": "Content id of the record (h1 hash of prompt id, kind, round, texts, parent).",
    "prompt_id": "Content id of the prompt text.",
    "kind": "meta (teacher feedback), self (own feedback) or qa.",
    "round": "Self-evolution round; 0 for meta and qa data.",
    "prompt": "The prompt text p.",
    "response": "Initial response r (qa: the answer).",
    "feedback": "Feedback f, ending with a verdict line.",
    "verdict": "correct, incorrect or null.",
    "refinement": "Refined response r̂.",
    "gold_answer": "Gold answer of the prompt, if known.",
    "source": "Where the record came from (else its prompt's source).",
    "parent_record_id": "Record this one is an edited version of.",
    "meta": "The record's meta object as canonical JSON text.",
    "run_id": "The run that created the record.",
    "responder": "Model spec that wrote the response.",
    "teacher": "Model spec that wrote feedback and refinement.",
    "response_call_id": "calls.call_id of the response.",
    "feedback_call_id": "calls.call_id of the feedback.",
    "refinement_call_id": "calls.call_id of the refinement.",
    "templates": "Template hashes used, as canonical JSON text.",
    "messages": "Chat turns {role, content, train} in the meta-skill layout (below).",
}


def dataset_card(m: SnapshotManifest) -> str:
    """The ``README.md`` of an export: deterministic, from the manifest only."""
    data = [f.path for f in m.files if f.rows]
    fence = "```"
    if m.format == "hf":
        yaml_head = ""
        load = (f'{fence}python\nfrom datasets import load_from_disk\n'
                f'ds = load_from_disk("DIR/{HF_DIR}")\n{fence}')
    else:
        builder = "parquet" if m.format == "parquet" else "json"
        yaml_head = (
            f"---\npretty_name: selfevo snapshot {m.name}\nconfigs:\n- config_name: default\n"
            f"  data_files:\n  - split: train\n    path: {data[0]}\n---\n\n"
        )
        load = (f'{fence}python\nfrom datasets import load_dataset\n'
                f'ds = load_dataset("{builder}", data_files="DIR/{data[0]}", split="train")\n'
                f'{fence}')
    counts = "\n".join(
        f"- {key}: " + ", ".join(f"{k} {v}" for k, v in vals.items())
        for key, vals in m.counts.items()
    )
    columns = "\n".join(
        f"| `{name}` | {_COLUMN_DOCS.get(name, '')} |" for name in ExportRow.model_fields
    )
    files = "\n".join(f"| `{f.path}` | {f.rows} | {f.bytes} | `{f.sha256}` |" for f in m.files)
    selection = json.dumps(m.selection, sort_keys=True, ensure_ascii=False)
    runs = ", ".join(m.runs[:20]) + (f" and {len(m.runs) - 20} more (manifest.json)"
                                     if len(m.runs) > 20 else "")
    return f"""{yaml_head}# selfevo snapshot `{m.name}`

Records for SELF (Self-Evolution with Language Feedback) training, exported by selfevo from an
immutable snapshot of its store. Each row is a prompt p with a response r, language feedback
f and a refinement r̂ (kind meta / self), or a prompt with its answer (kind qa).

- records: {m.n}
- format: {m.format} (export schema version {m.schema_version})
- content hash: `{m.content_hash}` (hash of the sorted record ids; the same records always
  give the same hash)
- snapshot id: `{m.snapshot_id}`, created {m.created_at.isoformat()}
- parent snapshot: {m.parent or "none"}
- selection: `{selection}`
- code version: {m.code_version}
- runs that created the records: {runs}

## Counts

{counts}

## Files

| path | rows | bytes | sha256 |
|---|---|---|---|
{files}

`manifest.json` lists the same files; check them before training.

## Columns

Rows are ordered by `record_id`.

| column | meaning |
|---|---|
{columns}

## The `messages` column ({m.conversation_version})

Each message is `{{role, content, train}}`; `train` marks the turns to put loss on:

    user:       p                       train=false
    assistant:  r                       train=false  (qa records: the answer, train=true)
    user:       feedback instruction    train=false
    assistant:  f (ends "Verdict: …")   train=true
    user:       refine instruction      train=false
    assistant:  r̂                       train=true

Turns whose text is missing are left out. The layout and instructions are defined in
`schemas/conversation.py` of selfevo. With TRL, pass the `messages` column to `SFTTrainer`
(assistant-only loss trains every assistant turn; use the `train` flags for exact masks); with
axolotl, use `type: chat_template`, `field_messages: messages`,
`message_field_training: train`.

## Loading

{load}
"""
