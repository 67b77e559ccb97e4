"""An edited export never trains under a genuine hash (issue 12, defect 3).

The chain: each row's messages must equal the layout rebuilt from the row's texts, the texts
are covered by the record id, the record ids by ``content_hash``, and ``content_hash`` plus
the schema version, conversation version and layout hash by ``training_hash``. The trainer
recomputes all of it from the rows it reads and refuses any mismatch with one line.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from test_export import _store_with_snapshot

from corpus import CorpusError, Store
from corpus.export import export_snapshot, verify_export
from schemas.conversation import layout_hash
from schemas.identity import canonical_json, file_sha256
from schemas.records import current_training_hash
from trainer.data import load_export
from trainer.errors import TrainerError


def _jsonl_export(db: str, out: Path) -> Path:
    _store_with_snapshot(db)
    with Store.open(db) as store:
        export_snapshot(store, "all", "jsonl", out)
    return out


def _rows(exp: Path) -> list[dict]:
    return [json.loads(x) for x in (exp / "records.jsonl").read_text().splitlines()]


def _rewrite(exp: Path, rows: list[dict], **manifest_edits: object) -> None:
    """Write edited rows and fix up the manifest's size and sha256, as a careful forger would."""
    data = exp / "records.jsonl"
    data.write_text("".join(canonical_json(r) + "\n" for r in rows), encoding="utf-8")
    m = json.loads((exp / "manifest.json").read_text())
    m["files"][0].update(bytes=data.stat().st_size, sha256=file_sha256(str(data)))
    m.update(manifest_edits)
    (exp / "manifest.json").write_text(json.dumps(m, indent=2))


def _trained_turn(rows: list[dict]) -> tuple[dict, int]:
    """A row with a trained assistant turn, and that turn's index."""
    return next((r, i) for r in rows for i, m in enumerate(r["messages"]) if m["train"])


def test_the_issue_reproduction_is_refused(db, tmp_path):
    """conversation_version edited, a turn's train flag flipped and its text changed, the
    file's sha256 fixed: refused, with one line saying to re-export."""
    exp = _jsonl_export(db, tmp_path / "exp")
    genuine = json.loads((exp / "manifest.json").read_text())["content_hash"]
    rows = _rows(exp)
    row, i = _trained_turn(rows)
    row["messages"][i]["train"] = False
    row["messages"][i]["content"] = "The answer is 1000000."
    _rewrite(exp, rows, conversation_version="meta-v0")
    with pytest.raises(TrainerError) as err:
        load_export(exp)
    msg = str(err.value)
    assert "conversation_version 'meta-v0'" in msg and "re-export" in msg
    assert len(msg.splitlines()) == 1 and genuine not in msg


def test_a_message_edit_is_refused_even_with_the_genuine_conversation_version(db, tmp_path):
    exp = _jsonl_export(db, tmp_path / "exp")
    rows = _rows(exp)
    row, i = _trained_turn(rows)
    row["messages"][i]["content"] += " (edited)"
    _rewrite(exp, rows)
    with pytest.raises(TrainerError, match="messages do not match"):
        load_export(exp)


def _edits(rng: random.Random, row: dict) -> list[tuple[str, object]]:
    """Ways to change what a row trains on without touching its ids."""
    msgs = row["messages"]
    i = rng.randrange(len(msgs))
    return [
        ("flip", lambda m: m[i].__setitem__("train", not m[i]["train"])),
        ("text", lambda m: m[i].__setitem__("content", m[i]["content"] + rng.choice("x .\n"))),
        ("role", lambda m: m[i].__setitem__("role", "user" if m[i]["role"] != "user" else "assistant")),
        ("drop", lambda m: m.pop(i)),
        ("dup", lambda m: m.insert(i, dict(m[i]))),
        ("swap", lambda m: m.reverse()),
        ("extra", lambda m: m.append({"role": "assistant", "content": "more", "train": True})),
    ]


@pytest.mark.parametrize("seed", range(12))
def test_any_message_edit_under_any_manifest_is_refused(db, tmp_path, seed):
    """Random edits of the messages (flags, texts, roles, order, count), with a random
    conversation_version or training_hash claim, never load."""
    rng = random.Random(seed)
    exp = _jsonl_export(db, tmp_path / "exp")
    rows = _rows(exp)
    row = rng.choice(rows)
    name, edit = rng.choice(_edits(rng, row))
    before = [dict(m) for m in row["messages"]]
    edit(row["messages"])
    if row["messages"] == before:  # e.g. reversing a one-turn conversation
        row["messages"].append({"role": "assistant", "content": "x", "train": True})
    manifest = rng.choice([{}, {"conversation_version": rng.choice(["meta-v0", "meta-v2", ""])},
                           {"training_hash": "h1:" + "0" * 32}])
    _rewrite(exp, rows, **manifest)
    with pytest.raises(TrainerError) as err:
        load_export(exp)
    assert len(str(err.value).splitlines()) == 1 and "re-export" in str(err.value), (name, err)


@pytest.mark.parametrize("field,value", [
    ("training_hash", "h1:" + "1" * 32),
    ("conversation_version", "meta-v2"),
    ("schema_version", 1),
    ("schema_version", 3),
])
def test_a_manifest_edit_alone_is_refused(db, tmp_path, field, value):
    exp = _jsonl_export(db, tmp_path / "exp")
    _rewrite(exp, _rows(exp), **{field: value})
    with pytest.raises(TrainerError, match=f"{field}|schema_version") as err:
        load_export(exp)
    assert "re-export" in str(err.value)
    if field == "training_hash":
        with pytest.raises(CorpusError, match="training_hash"):
            verify_export(exp)


def test_training_hash_covers_records_version_and_layout(db, tmp_path):
    exp = _jsonl_export(db, tmp_path / "exp")
    m = json.loads((exp / "manifest.json").read_text())
    assert m["training_hash"] == current_training_hash(m["content_hash"])
    assert load_export(exp).manifest.training_hash == m["training_hash"]
    from schemas.identity import content_id, training_hash

    layout = content_id({"layouts": m["layouts"], "patterns": layout_hash()})
    base = dict(schema_version=m["schema_version"],
                conversation_version=m["conversation_version"], layout=layout)
    assert training_hash(m["content_hash"], **base) == m["training_hash"]
    # the layouts each kind trains in are covered too (SELF's p -> r̂ vs the meta layout)
    assert current_training_hash(m["content_hash"], {"self": "answer"}) != m["training_hash"]
    for key, other in [("schema_version", 99), ("conversation_version", "x"), ("layout", "h1:0")]:
        assert training_hash(m["content_hash"], **{**base, key: other}) != m["training_hash"]


@pytest.mark.parametrize("missing", ["prompt", "kind", "messages", "record_id"])
def test_a_row_without_a_field_is_one_line_not_a_keyerror(db, tmp_path, missing):
    """Defect 11: an export row without ``prompt`` raised KeyError inside train."""
    exp = _jsonl_export(db, tmp_path / "exp")
    rows = _rows(exp)
    del rows[0][missing]
    _rewrite(exp, rows)
    with pytest.raises(TrainerError, match=f"field '{missing}'.*re-export") as err:
        load_export(exp)
    assert len(str(err.value).splitlines()) == 1


def test_train_cli_refuses_the_tampered_export_in_one_line(cli, db, tmp_path):
    exp = _jsonl_export(db, tmp_path / "exp")
    rows = _rows(exp)
    row, i = _trained_turn(rows)
    row["messages"][i]["train"] = False
    _rewrite(exp, rows, conversation_version="meta-v0")
    out = cli("train", "--data", str(exp), "--base", "unused", "--out", str(tmp_path / "ck"),
              exit_code=1).output
    assert out.startswith("Error: ") and "conversation_version" in out
    assert len(out.strip().splitlines()) == 1 and "Traceback" not in out
    assert not (tmp_path / "ck").exists() or not any((tmp_path / "ck").iterdir())
