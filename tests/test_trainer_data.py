"""Export verification: a tampered or mismatched export is refused with a clear message."""

from __future__ import annotations

import json

import pytest
from backends import writing

from trainer.data import load_export
from trainer.errors import TrainerError
from trainer.testing.synthetic import synthetic_records, write_export


@pytest.fixture
def export(tmp_path):
    return write_export(tmp_path / "exp", synthetic_records(6, kinds=("meta", "qa", "self")))


def _manifest(export):
    return json.loads((export / "manifest.json").read_text())


def _write_manifest(export, m):
    (export / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_valid_export_loads(tmp_path, fmt):
    exp = write_export(tmp_path / fmt, synthetic_records(5), fmt=fmt)
    loaded = load_export(exp)
    assert len(loaded.rows) == 5
    assert loaded.content_hash == _manifest(exp)["content_hash"]
    assert loaded.rows[0]["messages"][0]["role"] == "user"


def test_missing_manifest(tmp_path):
    with pytest.raises(TrainerError, match="snapshot export"):
        load_export(tmp_path)


def test_schema_version_mismatch(export):
    m = _manifest(export)
    m["schema_version"] = 99
    _write_manifest(export, m)
    with pytest.raises(TrainerError, match="schema_version 99"):
        load_export(export)


def test_changed_file_is_refused(export):
    data = export / "records.parquet"
    data.write_bytes(data.read_bytes()[:-1] + b"\x00")
    with pytest.raises(TrainerError, match="sha256"):
        load_export(export)


def test_edited_row_is_refused_even_with_fixed_sha(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from schemas.identity import file_sha256

    exp = write_export(tmp_path / "e", synthetic_records(4))
    data = exp / "records.parquet"
    rows = pq.read_table(data).to_pylist()
    rows[2]["refinement"] = "The answer is 1000."  # edited text, old record_id kept
    pq.write_table(pa.Table.from_pylist(rows), data)
    m = _manifest(exp)  # a careless editor even fixes up size and sha256
    m["files"][0].update(bytes=data.stat().st_size, sha256=file_sha256(str(data)))
    _write_manifest(exp, m)
    with pytest.raises(TrainerError, match="row 2 .*record_id .* does not match"):
        load_export(exp)


def test_content_hash_mismatch(export):
    m = _manifest(export)
    m["content_hash"] = "h1:" + "0" * 32
    _write_manifest(export, m)
    with pytest.raises(TrainerError, match="content_hash"):
        load_export(export)


def test_messages_must_match_layout(tmp_path):
    from schemas.identity import canonical_json, file_sha256

    exp = write_export(tmp_path / "j", synthetic_records(3), fmt="jsonl")
    data = exp / "records.jsonl"
    rows = [json.loads(x) for x in data.read_text().splitlines()]
    rows[0]["messages"][1]["train"] = True  # would train on the initial (wrong) answer
    data.write_text("".join(canonical_json(r) + "\n" for r in rows))
    m = _manifest(exp)
    m["files"][0].update(bytes=data.stat().st_size, sha256=file_sha256(str(data)))
    _write_manifest(exp, m)
    with pytest.raises(TrainerError, match="messages do not match"):
        load_export(exp)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "hf"])
def test_real_store_export_verifies_and_builds(tmp_path, db, fmt, tiny_model_dir):
    """An export written by the store (corpus.export) passes verification and trains as-is."""
    from transformers import AutoTokenizer

    from corpus.export import export_snapshot
    from corpus.records import insert_prompts, insert_records, make_prompt, make_record
    from corpus.snapshots import create_snapshot
    from corpus.store import Store
    from trainer.sequences import build_examples
    from trainer.show_masks import trained_texts

    recs = synthetic_records(6, seed=2, kinds=("meta", "qa", "self"))
    with Store.open(db, command="test") as store:
        with store.run("test", {}) as run, writing(store) as con:
            prompts = [make_prompt(r["prompt"]) for r in recs]
            insert_prompts(con, prompts, run.run_id)
            rows = [make_record(prompt_id=p["prompt_id"], kind=r["kind"], round=r.get("round", 0),
                                response=r.get("response"), feedback=r.get("feedback"),
                                verdict=r.get("verdict"), refinement=r.get("refinement"))
                    for p, r in zip(prompts, recs, strict=True)]
            insert_records(con, rows, run.run_id)
        create_snapshot(store, "s1", "true")
        export_snapshot(store, "s1", fmt, tmp_path / "out")
    loaded = load_export(tmp_path / "out")
    assert len(loaded.rows) == 6 and loaded.manifest.format == fmt
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    examples, _ = build_examples(loaded.rows, tok, max_len=4096)
    by_id = {r["record_id"]: r for r in loaded.rows}
    for ex in examples:
        r = by_id[ex.record_id]
        want = [r["response"]] if r["kind"] == "qa" else [r["feedback"], r["refinement"]]
        assert trained_texts(ex, tok) == [w + "<|im_end|>" for w in want]
