"""Snapshots: selection by SQL over records and decisions, immutability, list and diff."""

from __future__ import annotations

import json

import pytest
from backends import both_stores, file_store

from corpus import CorpusError, Store
from corpus.decisions import insert_decisions
from corpus.records import insert_prompts, insert_records, make_prompt, make_record
from corpus.snapshots import create_snapshot, diff_snapshots, snapshot_record_ids
from schemas.identity import selection_hash


def build_store(db: str) -> dict[str, object]:
    """Six records over three prompts, and a curation run with two steps of decisions."""
    prompts = [
        make_prompt("Tom has 3 apples and buys 4 more. How many?", gold_answer="7",
                    source="generated", split="train"),
        make_prompt("A café sells 5 cakes a day. How many in 3 days?", gold_answer="15",
                    source="generated", split="train"),
        make_prompt("Sam reads 2 pages an hour for 6 hours. Pages?", gold_answer="12",
                    source="generated", split="test"),
    ]
    p = [x["prompt_id"] for x in prompts]
    records = [
        make_record(prompt_id=p[0], kind="qa", response="3 + 4 = 7. The answer is 7."),
        make_record(prompt_id=p[0], kind="meta", response="3 + 4 = 8", verdict="incorrect",
                    feedback="3 + 4 is 7, not 8.\nVerdict: incorrect",
                    refinement="3 + 4 = 7. The answer is 7.", teacher="reference",
                    templates={"feedback": "h1:aa"}, meta={"z": 1, "a": "é"}),
        make_record(prompt_id=p[1], kind="meta", response="5 * 3 = 15", verdict="correct",
                    feedback="Right.\nVerdict: correct", refinement=None),
        make_record(prompt_id=p[1], kind="self", round=1, response="15",
                    feedback="Fine.\nVerdict: correct", verdict="correct",
                    refinement="5 * 3 = 15. The answer is 15."),
        make_record(prompt_id=p[2], kind="self", round=1, response=None, feedback=None,
                    refinement="2 * 6 = 12. The answer is 12."),
        make_record(prompt_id=p[2], kind="qa", response=None),
    ]
    with Store.open(db) as store:
        with store.run("fixture", {}) as run:
            store.transact(lambda con: (insert_prompts(con, prompts, run.run_id),
                                        insert_records(con, records, run.run_id)))
        ids = [r["record_id"] for r in records]

        def decide(con):
            insert_decisions(con, [{"record_id": i, "passed": True} for i in ids[:4]],
                             run_id=curate.run_id, step="verdict")
            insert_decisions(con, [{"record_id": ids[0], "passed": True},
                                   {"record_id": ids[1], "passed": False, "reason": "long"},
                                   {"record_id": ids[2], "passed": True}],
                             run_id=curate.run_id, step="length")

        with store.run("curate filter", {}) as curate:
            store.transact(decide)
    return {"ids": ids, "curate_run": curate.run_id, "prompts": p}


@both_stores
def test_create_freezes_ids_hash_and_provenance(db, cli):
    fx = build_store(db)
    result = cli("snapshot", "create", "all-meta", "--where", "kind = 'meta'", "--note", "hi",
                 "--db", db)
    expected = sorted(fx["ids"][1:3])
    assert f"snapshot all-meta: 2 records, {selection_hash(expected)}" in result.output
    with Store.open_readonly(db) as store:
        row = store.query_dicts("SELECT * FROM snapshots")[0]
        runs = store.query("SELECT command, status FROM runs WHERE run_id = ?", [row["run_id"]])
    assert row["n"] == 2 and row["content_hash"] == selection_hash(expected)
    assert json.loads(row["selection"]) == {"where": "kind = 'meta'", "from": None, "note": "hi"}
    assert runs == [("snapshot create", "ok")]
    assert snapshot_record_ids(Store.open_readonly(db), "all-meta") == expected


@both_stores
def test_where_sees_prompt_columns_and_from_intersects(db, cli):
    fx = build_store(db)
    cli("snapshot", "create", "train", "--where", "split = 'train'", "--db", db)
    cli("snapshot", "create", "train-qa", "--from", "train", "--where", "kind = 'qa'",
        "--db", db)
    store = Store.open_readonly(db)
    assert snapshot_record_ids(store, "train") == sorted(fx["ids"][:4])
    assert snapshot_record_ids(store, "train-qa") == [fx["ids"][0]]  # ids[5] is qa but test
    assert store.query("SELECT parent FROM snapshots WHERE name = 'train-qa'") == [("train",)]


@both_stores
def test_select_records_that_passed_every_step_of_a_run(db, cli):
    fx = build_store(db)
    where = (
        f"record_id IN (SELECT record_id FROM decisions WHERE run_id = '{fx['curate_run']}' "
        "GROUP BY record_id HAVING bool_and(passed))"
    )
    cli("snapshot", "create", "kept", "--where", where, "--db", db)
    ids = fx["ids"]
    assert snapshot_record_ids(Store.open_readonly(db), "kept") == sorted(
        [ids[0], ids[2], ids[3]])


def test_where_can_use_the_decision_macros(db, cli):
    fx = build_store(db)
    cli("snapshot", "create", "kept", "--where",
        f"kept_by(record_id, '{fx['curate_run']}') AND kind = 'meta'", "--db", db)
    cli("snapshot", "create", "latest", "--where", "kept_step(record_id, 'length')", "--db", db)
    store = Store.open_readonly(db)
    ids = fx["ids"]
    assert snapshot_record_ids(store, "kept") == [ids[2]]
    assert snapshot_record_ids(store, "latest") == sorted([ids[0], ids[2]])


def test_same_content_same_hash_whatever_the_name(db):
    build_store(db)
    with Store.open(db) as store:
        a = create_snapshot(store, "a", "kind = 'self'")
        b = create_snapshot(store, "b", "round = 1")
    assert a.content_hash == b.content_hash and a.snapshot_id != b.snapshot_id


@both_stores
def test_existing_name_is_an_error_and_nothing_changes(db, cli):
    build_store(db)
    cli("snapshot", "create", "s", "--where", "kind = 'qa'", "--db", db)
    result = cli("snapshot", "create", "s", "--where", "true", "--db", db, exit_code=1)
    assert "already exists" in result.output and "immutable" in result.output
    store = Store.open_readonly(db)
    assert store.query("SELECT n FROM snapshots") == [(2,)]
    assert store.query("SELECT count(*) FROM snapshot_records") == [(2,)]


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("kind = 'qa'; DROP TABLE records", "without ';'"),
        ("true) ; DROP TABLE records; SELECT (1", "closes a parenthesis it did not open"),
        ("DROP TABLE records", "does not parse"),
        ("kind = ", "does not parse"),
        ("no_such_column = 1", "--where failed: Binder Error"),
        ("   ", "--where is empty"),
    ],
)
def test_bad_where_gives_one_line_error(db, cli, where, message):
    build_store(db)
    result = cli("snapshot", "create", "x", "--where", where, "--db", db, exit_code=1)
    assert message in result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    with Store.open_readonly(db) as store:
        assert store.query("SELECT count(*) FROM records") == [(6,)]
        assert store.query("SELECT count(*) FROM snapshots") == [(0,)]
        assert store.query("SELECT count(*) FROM runs WHERE command = 'snapshot create'") == [(0,)]


def test_a_union_in_where_is_refused_before_anything_is_written(db):
    build_store(db)
    with Store.open(db) as store:
        for where in ("true) UNION (SELECT 'not-a-record'", "false) UNION (SELECT 'not-a-record'"):
            with pytest.raises(CorpusError, match="closes a parenthesis it did not open"):
                create_snapshot(store, "u", where)
        assert store.query("SELECT count(*) FROM snapshots") == [(0,)]
        assert store.query("SELECT count(*) FROM runs WHERE command = 'snapshot create'") == [(0,)]


def test_empty_selection_and_unknown_from_are_errors(db, cli):
    build_store(db)
    result = cli("snapshot", "create", "e", "--where", "kind = 'nothing'", "--db", db,
                 exit_code=1)
    assert "no records match" in result.output and "selfevo sql" in result.output
    result = cli("snapshot", "create", "e", "--from", "nope", "--where", "true", "--db", db,
                 exit_code=1)
    assert "no snapshot named 'nope'" in result.output
    result = cli("snapshot", "create", "bad name", "--where", "true", "--db", db, exit_code=1)
    assert "not allowed" in result.output


@both_stores
def test_list_and_diff(db, cli):
    fx = build_store(db)
    assert "no snapshots yet" in cli("snapshot", "list", "--db", db).output
    cli("snapshot", "create", "a", "--where", "kind = 'meta'", "--db", db)
    cli("snapshot", "create", "b", "--where", "verdict = 'correct'", "--db", db)
    listing = cli("snapshot", "list", "--db", db).output
    assert "│ a " in listing and "│ b " in listing and "verdict" in listing
    out = cli("snapshot", "diff", "a", "b", "--show", "5", "--db", db).output
    assert "+1 added, -1 removed, 1 common" in out
    ids = fx["ids"]
    assert f"added   {ids[3]}" in out and f"removed {ids[1]}" in out
    d = diff_snapshots(Store.open_readonly(db), "b", "b")
    assert (d.added, d.removed, d.common) == (0, 0, 2)
    result = cli("snapshot", "diff", "a", "zzz", "--db", db, exit_code=1)
    assert "no snapshot named 'zzz'" in result.output and "recent: " in result.output


@file_store("the file's writer lock")
def test_create_needs_a_store_writer_lock(db):
    build_store(db)
    with Store.open(db, command="long job"), pytest.raises(CorpusError, match="in use by"):
        Store.open(db, command="snapshot create")
