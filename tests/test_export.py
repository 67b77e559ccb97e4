"""Snapshot export: the directory contract, messages, reproducibility, refusal, atomicity."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from backends import both_stores, writing
from test_snapshots import build_store

from corpus import CorpusError, Store
from corpus import export as export_mod
from corpus.export import export_snapshot, verify_export
from corpus.snapshots import create_snapshot
from schemas.conversation import CONVERSATION_VERSION, LAYOUTS, record_messages
from schemas.identity import canonical_json, file_sha256
from schemas.records import EXPORT_SCHEMA_VERSION, ExportRow, SnapshotManifest
from trainer.data import load_export
from trainer.errors import TrainerError


def _store_with_snapshot(db: str, where: str = "true") -> dict[str, object]:
    fx = build_store(db)
    with Store.open(db) as store:
        create_snapshot(store, "all", where, note="fixture")
    return fx


def _expected_messages(row: dict) -> list[dict]:
    return record_messages(kind=row["kind"], prompt=row["prompt"], response=row["response"],
                           feedback=row["feedback"], refinement=row["refinement"])


def _tree_bytes(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file()}


@both_stores
def test_parquet_rows_follow_export_row_and_conversation(db, cli, tmp_path):
    fx = _store_with_snapshot(db)
    out = tmp_path / "exp"
    result = cli("snapshot", "export", "all", "--format", "parquet", "--out", str(out),
                 "--db", db)
    assert "exported 6 records of all" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "manifest.json",
                                                     "records.parquet"]
    table = pq.read_table(out / "records.parquet")
    assert table.column_names == list(ExportRow.model_fields)
    rows = table.to_pylist()
    assert [r["record_id"] for r in rows] == sorted(fx["ids"])
    for row in rows:
        ExportRow.model_validate(row)
        assert row["messages"] == _expected_messages(row)
    meta_row = next(r for r in rows if r["meta"])
    assert meta_row["meta"] == canonical_json({"z": 1, "a": "é"})
    assert meta_row["templates"] == canonical_json({"feedback": "h1:aa"})
    assert meta_row["gold_answer"] == "7" and meta_row["source"] == "generated"
    # the meta record with all four texts trains exactly feedback and refinement
    assert [m["train"] for m in meta_row["messages"]] == [False, False, False, True, False, True]


@both_stores
def test_manifest_lists_files_counts_and_provenance(db, tmp_path):
    _store_with_snapshot(db)
    out = tmp_path / "exp"
    with Store.open_readonly(db) as store:
        export_snapshot(store, "all", "parquet", out)
        snap = store.query_dicts("SELECT * FROM snapshots")[0]
        record_runs = {r[0] for r in store.query("SELECT run_id FROM records")}
    m = SnapshotManifest.model_validate_json((out / "manifest.json").read_text())
    assert m.schema_version == EXPORT_SCHEMA_VERSION
    assert m.conversation_version == CONVERSATION_VERSION
    assert (m.name, m.snapshot_id, m.content_hash, m.n) == (
        "all", snap["snapshot_id"], snap["content_hash"], 6)
    assert m.selection == {"where": "true", "from": None, "note": "fixture"}
    assert m.counts["kind"] == {"meta": 2, "qa": 2, "self": 2}
    assert m.counts["verdict"] == {"correct": 2, "incorrect": 1, "null": 3}
    assert set(m.runs) == record_runs
    [f] = m.files
    assert (f.path, f.rows) == ("records.parquet", 6)
    assert f.bytes == (out / f.path).stat().st_size and f.sha256 == file_sha256(str(out / f.path))
    assert verify_export(out) == m
    card = (out / "README.md").read_text()
    assert m.content_hash in card and "load_dataset" in card and "messages" in card


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "hf"])
def test_same_snapshot_exported_twice_gives_identical_bytes(db, tmp_path, fmt):
    _store_with_snapshot(db)
    with Store.open_readonly(db) as store:
        export_snapshot(store, "all", fmt, tmp_path / "one")
        export_snapshot(store, "all", fmt, tmp_path / "two")
        first = _tree_bytes(tmp_path / "one")
        export_snapshot(store, "all", fmt, tmp_path / "one")  # replaces its own export
    assert first == _tree_bytes(tmp_path / "two") == _tree_bytes(tmp_path / "one")
    assert len(first) >= 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


GROWN = 130_002  # rows of the grown store: more than one DuckDB row group (122,880)


@pytest.fixture(scope="module")
def grown_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The fixture's six records 21,667 times over (texts varied per copy) and a snapshot of
    them all: enough rows for DuckDB to scan, sort and write in parallel."""
    db = str(tmp_path_factory.mktemp("grown") / "grown.duckdb")
    build_store(db)
    with Store.open(db) as store:
        with writing(store) as con:
            con.execute(
                "INSERT INTO records SELECT r.* REPLACE ("
                " record_id || '-' || i AS record_id,"
                " response || repeat('é', CAST(i % 7 AS INTEGER)) || i AS response,"
                " CASE WHEN i % 5 = 0 THEN NULL ELSE refinement || ' ' || (i * 31) END"
                "  AS refinement)"
                f" FROM records r, range(1, {GROWN // 6}) t(i)")
        create_snapshot(store, "all", "true")
    return db


def _parquet_layout(path: Path) -> list[int]:
    meta = pq.ParquetFile(path).metadata
    return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]


def test_parquet_bytes_do_not_depend_on_the_thread_count(grown_db, tmp_path):
    # Cut into many Parquet row groups, the ordered parallel writer must give the same bytes
    # at any thread count, run after run (the export runs at the connection's threads).
    with Store.open_readonly(grown_db) as store:
        snap_id = store.query("SELECT snapshot_id FROM snapshots")[0][0]
        blobs, layouts = set(), set()
        with store.connection() as con:
            for threads in (1, 4, 2, 4):
                con.execute(f"SET threads = {threads}")
                path = tmp_path / f"t{threads}.parquet"
                export_mod.copy_rows(con, snap_id, path, "parquet", row_group_size=20_000)
                blobs.add(path.read_bytes())
                layouts.add(tuple(_parquet_layout(path)))
        ids = pq.read_table(path, columns=["record_id"]).column("record_id").to_pylist()
    assert len(blobs) == 1 and len(layouts) == 1
    [layout] = layouts
    assert len(layout) > 5 and sum(layout) == GROWN == len(ids)
    assert ids == sorted(ids)


def test_exports_at_the_default_threads_are_byte_identical(grown_db, tmp_path):
    # The export with its own settings (the store's default threads), twice.
    with Store.open_readonly(grown_db) as store:
        first = export_snapshot(store, "all", "parquet", tmp_path / "one")
        second = export_snapshot(store, "all", "parquet", tmp_path / "two")
    assert first.files == second.files and first.n == GROWN
    assert _tree_bytes(tmp_path / "one") == _tree_bytes(tmp_path / "two")


def test_datasets_loads_the_parquet_export(db, tmp_path):
    datasets = pytest.importorskip("datasets")
    _store_with_snapshot(db)
    out = tmp_path / "exp"
    with Store.open_readonly(db) as store:
        export_snapshot(store, "all", "parquet", out)
    ds = datasets.load_dataset("parquet", data_files=str(out / "records.parquet"),
                               split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.num_rows == 6 and ds.column_names == list(ExportRow.model_fields)
    for row in ds:
        assert row["messages"] == _expected_messages(row)
    # the dataset card's YAML header names the data file, so the directory loads as is
    by_dir = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "cache"))
    assert by_dir.to_list() == ds.to_list()


def test_jsonl_and_hf_exports_carry_the_same_rows(db, tmp_path):
    datasets = pytest.importorskip("datasets")
    _store_with_snapshot(db)
    with Store.open_readonly(db) as store:
        export_snapshot(store, "all", "parquet", tmp_path / "pq")
        export_snapshot(store, "all", "jsonl", tmp_path / "js")
        m = export_snapshot(store, "all", "hf", tmp_path / "hf")
    expected = pq.read_table(tmp_path / "pq" / "records.parquet").to_pylist()
    lines = (tmp_path / "js" / "records.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == expected
    ds = datasets.load_from_disk(str(tmp_path / "hf" / "hf"))
    assert ds.to_list() == expected
    assert {f.path for f in m.files} >= {"hf/data-00000-of-00001.arrow", "hf/state.json"}
    verify_export(tmp_path / "hf")


def test_refuses_a_foreign_non_empty_directory(db, cli, tmp_path):
    _store_with_snapshot(db)
    with Store.open(db) as store:
        create_snapshot(store, "qa", "kind = 'qa'")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    result = cli("snapshot", "export", "all", "--out", str(busy), "--db", db, exit_code=1)
    assert "is not empty and is not an export of snapshot 'all'" in result.output
    assert _tree_bytes(busy) == {"notes.txt": b"mine"}
    cli("snapshot", "export", "qa", "--out", str(tmp_path / "qa"), "--db", db)
    before = _tree_bytes(tmp_path / "qa")
    cli("snapshot", "export", "all", "--out", str(tmp_path / "qa"), "--db", db, exit_code=1)
    assert _tree_bytes(tmp_path / "qa") == before
    # an existing empty directory is fine
    (tmp_path / "empty").mkdir()
    cli("snapshot", "export", "all", "--out", str(tmp_path / "empty"), "--db", db)
    result = cli("snapshot", "export", "nope", "--out", str(tmp_path / "x"), "--db", db,
                 exit_code=1)
    assert "no snapshot named 'nope'" in result.output


def test_a_crash_mid_export_leaves_nothing_half_written(db, tmp_path, monkeypatch):
    _store_with_snapshot(db)
    out = tmp_path / "exp"

    def crash(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(export_mod, "dataset_card", crash)
    before = sorted(tmp_path.iterdir())  # the store's own files (a file, or a lake's Parquet)
    with Store.open_readonly(db) as store, pytest.raises(KeyboardInterrupt):
        export_snapshot(store, "all", "parquet", out)
    assert sorted(tmp_path.iterdir()) == before
    # a partial directory left by a killed process is cleaned up by the next export
    stale = tmp_path / ".exp.partial-999999999"
    stale.mkdir()
    monkeypatch.undo()
    with Store.open_readonly(db) as store:
        export_snapshot(store, "all", "parquet", out)
    assert not stale.exists() and (out / "manifest.json").exists()


def test_verify_detects_a_changed_file(db, tmp_path):
    _store_with_snapshot(db)
    out = tmp_path / "exp"
    with Store.open_readonly(db) as store:
        export_snapshot(store, "all", "jsonl", out)
    with open(out / "records.jsonl", "ab") as f:
        f.write(b"\n")
    with pytest.raises(CorpusError, match="does not match its manifest"):
        verify_export(out)
    assert os.path.exists(out / "README.md")


def test_messages_match_record_messages_for_every_pattern_of_present_texts(db, tmp_path):
    import itertools

    from corpus.records import insert_prompts, insert_records, make_prompt, make_record

    prompt = make_prompt("Ann has 2 pens; she gets 3 more. How many?", gold_answer="5")
    records = [
        make_record(prompt_id=prompt["prompt_id"], kind=kind, round=1 if kind == "self" else 0,
                    response="r: 2 + 3 = 5" if r else None,
                    feedback="f: fine.\nVerdict: correct" if f else None,
                    refinement="r̂: The answer is 5." if rr else None)
        for kind in ("qa", "meta", "self")
        for r, f, rr in itertools.product((True, False), repeat=3)
    ]
    with Store.open(db) as store:
        with store.run("fixture", {}) as run, writing(store) as con:
            insert_prompts(con, [prompt], run.run_id)
            assert insert_records(con, records, run.run_id) == 24
        create_snapshot(store, "patterns", "true")
        export_snapshot(store, "patterns", "jsonl", tmp_path / "exp")
        # every layout a meta or self record can take, each kind its own (qa: only answer)
        layouts = [{"meta": a, "self": b} for a, b in itertools.product(LAYOUTS, repeat=2)]
        for i, chosen in enumerate(layouts):
            m = export_snapshot(store, "patterns", "jsonl", tmp_path / f"exp{i}", chosen)
            assert m.layouts == {**chosen, "qa": "answer"}
    for i, chosen in enumerate([{}, *layouts]):
        out = tmp_path / ("exp" if not chosen else f"exp{i - 1}")
        rows = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
        assert len(rows) == 24
        for row in rows:
            assert row["messages"] == record_messages(
                kind=row["kind"], prompt=row["prompt"], response=row["response"],
                feedback=row["feedback"], refinement=row["refinement"],
                layout=chosen.get(row["kind"])), (chosen, row)
        load_export(out)  # the trainer checks the messages against the manifest's layouts


def test_self_records_in_the_answer_layout_train_p_to_the_refinement(db, tmp_path):
    """SELF's D_self: a self record exported with layout answer is user p -> assistant r̂,
    trained; the manifest says so, the trainer builds exactly that example, and a manifest
    whose layouts were edited no longer verifies (the messages disagree with it)."""
    from transformers import AutoTokenizer

    from corpus.records import insert_prompts, insert_records, make_prompt, make_record
    from trainer.sequences import build_examples
    from trainer.testing.tiny import build_tiny_model

    prompt = make_prompt("Ann has 2 pens; she gets 3 more. How many?", gold_answer="5")
    rec = make_record(prompt_id=prompt["prompt_id"], kind="self", round=1,
                      response="2 * 3 = 6. The answer is 6.", feedback="No.\nVerdict: incorrect",
                      verdict="incorrect", refinement="2 + 3 = 5. The answer is 5.")
    with Store.open(db) as store:
        with store.run("fixture", {}) as run, writing(store) as con:
            insert_prompts(con, [prompt], run.run_id)
            insert_records(con, [rec], run.run_id)
        create_snapshot(store, "self", "true")
        for name, layout in (("answer", "answer"), ("both", "meta+answer")):
            export_snapshot(store, "self", "parquet", tmp_path / name, {"self": layout})
        with pytest.raises(CorpusError, match="layout 'sideways' for self"):
            export_snapshot(store, "self", "parquet", tmp_path / "bad", {"self": "sideways"})
    export = load_export(tmp_path / "answer")
    assert export.manifest.layouts["self"] == "answer"
    [row] = export.rows
    assert row["messages"] == [
        {"role": "user", "content": prompt["text"], "train": False},
        {"role": "assistant", "content": rec["refinement"], "train": True}]
    tok = AutoTokenizer.from_pretrained(build_tiny_model(tmp_path / "tiny"))
    [ex], _ = build_examples(export.rows, tok, max_len=512, layouts=export.manifest.layouts)
    trained = tok.decode([t for t in ex.labels if t != -100], skip_special_tokens=True)
    assert trained == rec["refinement"] and ex.part == "self"
    both = load_export(tmp_path / "both")
    examples, stats = build_examples(both.rows, tok, max_len=512, layouts=both.manifest.layouts)
    assert [e.part for e in examples] == ["self", "direct"] and stats.by_part == {
        "self": 1, "direct": 1}
    assert examples[1].labels == ex.labels and examples[1].input_ids == ex.input_ids
    manifest = json.loads((tmp_path / "answer" / "manifest.json").read_text())
    manifest["layouts"]["self"] = "meta"
    (tmp_path / "answer" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TrainerError, match="messages do not match"):
        load_export(tmp_path / "answer")
