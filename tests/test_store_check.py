"""selfevo store check [--fix]: a store made inconsistent on purpose, on both back ends."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from backends import both_stores, file_store

from corpus import Store
from corpus.lake import Lake
from corpus.lakeschema import duplicate_ids
from corpus.storespec import StoreSpec

RECORDS = [
    {"prompt": "What is 2 + 3?", "response": "5", "verdict": "correct", "kind": "meta"},
    {"prompt": "What is 10 / 4?", "response": "2.5", "kind": "qa", "gold_answer": 2.5},
]


def _import(cli, db: str, tmp_path: Path) -> None:
    f = tmp_path / "records.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in RECORDS), encoding="utf-8")
    cli("records", "import", str(f), "--db", db)


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@both_stores
def test_a_healthy_store_has_no_problems_and_says_what_it_did_not_check(cli, db, tmp_path):
    _import(cli, db, tmp_path)
    out = cli("store", "check", "--db", db).output
    assert out.strip().splitlines()[-1].endswith("no problems found")
    keys_note = ("duplicate ids are checked in prompts and records only: a DuckDB file "
                 "enforces the other tables' keys")
    assert (keys_note in out) == (not StoreSpec.parse(db).is_lake)
    assert "problem:" not in out


@both_stores
def test_a_dead_run_is_reaped_by_fix_and_a_missing_prompt_stays_a_problem(cli, db, tmp_path):
    _import(cli, db, tmp_path)
    dead, live = "r20260101T000000000-dead00", "r20260101T000000000-live00"
    with Store.open(db) as store:  # a crashed job's row, a live job's row, a lost prompt
        store.transact(lambda con: con.execute(
            "INSERT INTO runs (run_id, command, config, code_version, started_at, status, pid,"
            " host, heartbeat_at) SELECT run_id, 'collect', '{}', 'x', now(), 'running', pid,"
            " ?, now() FROM (VALUES (?, ?), (?, ?)) t(run_id, pid)",
            [socket.gethostname(), dead, _dead_pid(), live, os.getpid()]))
        store.transact(lambda con: con.execute(
            "DELETE FROM prompts WHERE text = 'What is 10 / 4?'"))

    # On a lake a live PID on this host is a live run; on a file only the job lock says a
    # job runs, and none holds it: the next writer reaps both, so both are reported.
    lake = StoreSpec.parse(db).is_lake
    found = cli("store", "check", "--db", db, exit_code=1).output
    gone = f"{dead}" if lake else f"{dead}, {live}"
    assert f"problem: dead runs: runs: {1 if lake else 2} running runs whose process is gone: {gone}" in found
    assert ("problem: missing references: records: 1 records whose prompt is missing "
            "(not fixable here)") in found

    fixed = cli("store", "check", "--fix", "--db", db, exit_code=1).output
    assert f"fixed: runs: gave dead run {dead} its final state" in fixed
    assert "dead runs" not in fixed.split("fixed:")[-1].split("\n", 1)[1]
    assert "records whose prompt is missing" in fixed
    with Store.open_readonly(db) as store:
        status = dict(store.query("SELECT run_id, status FROM runs WHERE run_id IN (?, ?)",
                                  [dead, live]))
        checks = store.query("SELECT status, counts FROM runs WHERE command = 'store check'")
    assert status == {dead: "killed", live: "running" if lake else "killed"}
    assert [s for s, _ in checks] == ["ok"]
    # The problem left is said again, and the exit stays non-zero until someone re-imports.
    assert "records whose prompt is missing" in cli("store", "check", "--db", db,
                                                    exit_code=1).output


def test_a_duplicate_record_on_a_file_store_is_found_and_repaired_by_fix(cli, db, tmp_path):
    """prompts and records carry no PRIMARY KEY on a file either (m013): a row that got in
    around corpus.inserts (a bug, a hand-written INSERT) is found, and --fix keeps the
    earliest run's row."""
    _import(cli, db, tmp_path)
    with Store.open(db) as store:
        store.transact(lambda con: con.execute(
            "INSERT INTO records SELECT * REPLACE ('r99991231T000000000-later0' AS run_id) "
            "FROM records WHERE kind = 'qa'"))
    found = cli("store", "check", "--db", db, exit_code=1).output
    assert ("problem: duplicate ids: records: 1 ids with more than one row (--fix repairs it)"
            in found)
    fixed = cli("store", "check", "--fix", "--db", db).output
    assert "fixed: records: removed 1 duplicate rows" in fixed
    with Store.open_readonly(db) as store:
        assert store.query("SELECT count(*), count(DISTINCT record_id), "
                           "count(*) FILTER (run_id LIKE '%later0') FROM records") == [(2, 2, 0)]


def test_duplicates_and_orphan_files_on_a_lake_are_repaired_by_fix(cli, lake_db, tmp_path):
    cli("init", "--db", lake_db)
    spec = StoreSpec.parse(lake_db)
    row = ("SELECT ?, 'What is 1 + 1?', '2', NULL, 'mine', 'train', '{}', ?, now() "
           "WHERE ? NOT IN (SELECT prompt_id FROM prompts)")

    def insert(con: duckdb.DuckDBPyConnection, run_id: str) -> None:
        con.execute(f"INSERT INTO prompts {row}", ["h1:p", run_id, "h1:p"])

    # A rebasing writer's anti-join did not see the other writer's commit: both rows land.
    with Lake(spec, ducklake_retries=10) as a, Lake(spec) as b:
        def body(con: duckdb.DuckDBPyConnection) -> None:
            con.execute("SELECT count(*) FROM prompts").fetchall()
            b.transact(lambda c: insert(c, "r2"))
            insert(con, "r1")

        a.transact(body)
        assert duplicate_ids(a.cursor()) == {"prompts": 1}

    # A writer killed mid-commit leaves a Parquet file no snapshot lists; a live writer's
    # file not committed yet looks the same but is young: it is left alone.
    folder = tmp_path / "lake" / "main" / "prompts"
    folder.mkdir(parents=True, exist_ok=True)
    for name, age_s in (("orphan.parquet", 3 * 86400), ("in-flight.parquet", 0)):
        pq.write_table(pa.table({"x": [1]}), folder / name)
        os.utime(folder / name, (time.time() - age_s, time.time() - age_s))

    found = cli("store", "check", "--db", lake_db, exit_code=1).output
    assert ("problem: duplicate ids: prompts: 1 ids with more than one row (--fix repairs it)"
            in found)
    assert "problem: orphan files: data path: 1 Parquet files older than 1 day" in found
    assert "in-flight" not in found
    fixed = cli("store", "check", "--fix", "--db", lake_db).output
    assert "fixed: prompts: removed 1 duplicate rows" in fixed
    assert f"fixed: data path: deleted orphan file {folder / 'orphan.parquet'}" in fixed
    assert sorted(p.name for p in folder.iterdir()) == ["in-flight.parquet"]
    assert fixed.strip().splitlines()[-1].endswith("no problems found")
    with Store.open_readonly(lake_db) as store:
        assert store.query("SELECT prompt_id, run_id FROM prompts") == [("h1:p", "r1")]
    assert "no problems found" in cli("store", "check", "--db", lake_db).output


@file_store("the file's writer lock")
def test_on_a_file_a_job_holding_the_lock_keeps_its_live_runs_and_fix_waits_for_it(
        cli, db, tmp_path):
    from corpus.joblock import JobLock

    _import(cli, db, tmp_path)
    dead, live = "r20260101T000000000-dead00", "r20260101T000000000-live00"
    with Store.open(db) as store:
        store.transact(lambda con: con.execute(
            "INSERT INTO runs (run_id, command, config, code_version, started_at, status, pid,"
            " host) SELECT run_id, 'collect', '{}', 'x', now(), 'running', pid, ? "
            "FROM (VALUES (?, ?), (?, ?)) t(run_id, pid)",
            [socket.gethostname(), dead, _dead_pid(), live, os.getpid()]))
    lock = JobLock(db, "collect")
    lock.acquire()
    try:
        found = cli("store", "check", "--db", db, exit_code=1).output
        assert f"runs: 1 running runs whose process is gone: {dead} (" in found
        busy = cli("store", "check", "--fix", "--db", db, exit_code=1).output
        assert "is in use by PID" in busy
    finally:
        lock.release()
    with Store.open_readonly(db) as store:  # nothing was reaped while the job held the lock
        assert store.query("SELECT count(*) FROM runs WHERE status = 'running'") == [(2,)]
