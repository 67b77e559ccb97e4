"""The store: migrations, runs, job lock, readers alongside a writer."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest
from backends import both_stores, file_store, writing

from corpus import CorpusError, Store, StoreBusy
from corpus.migrations import MIGRATIONS


def test_open_creates_all_tables_and_records_migrations(db):
    with Store.open(db) as store:
        tables = {r[0] for r in store.query("SELECT table_name FROM information_schema.tables")}
        applied = [r[0] for r in store.query("SELECT name FROM _migrations ORDER BY name")]
    for t in ["runs", "prompts", "calls", "attempts", "records", "decisions", "snapshots",
              "snapshot_records", "models", "evals", "eval_items"]:
        assert t in tables
    assert applied == [m.__name__ for m in MIGRATIONS]


FIXTURES = Path(__file__).resolve().parent / "fixtures"
#: The columns that must survive every migration, per table of the first release's store.
V1_ROWS = {
    "prompts": "prompt_id, text, gold_answer, gold_rationale, source, split, run_id",
    "calls": "call_id, messages, status, response, prompt_tokens, completion_tokens, run_id",
    "attempts": "call_id, attempt, status",
    "records": "record_id, prompt_id, kind, round, response, feedback, verdict, refinement, "
               "response_call_id, run_id",
    "decisions": "run_id, record_id, step, passed, score, reason",
    "snapshots": "snapshot_id, name, n, content_hash",
    "snapshot_records": "snapshot_id, record_id",
    "runs": "run_id, command, status",
}


def v1_store(tmp_path: Path) -> str:
    """A copy of the store made by the first release (see tests/fixtures/README.md)."""
    db = tmp_path / "v1.duckdb"
    with gzip.open(FIXTURES / "store-v1.duckdb.gz") as src, open(db, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return str(db)


def v1_rows(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple]]:
    return {t: con.execute(f"SELECT {cols} FROM {t} ORDER BY ALL").fetchall()
            for t, cols in V1_ROWS.items()}


def test_a_first_release_store_migrates_on_open_and_keeps_its_rows(tmp_path):
    db = v1_store(tmp_path)
    con = duckdb.connect(db, read_only=True)
    applied = [r[0] for r in con.execute("SELECT name FROM _migrations ORDER BY name").fetchall()]
    before = v1_rows(con)
    con.close()
    assert applied == ["m001_initial", "m002_views"]  # really the first schema
    assert {t: len(r) for t, r in before.items() if t != "runs"} == {
        "prompts": 5, "calls": 5, "attempts": 5, "records": 10, "decisions": 10,
        "snapshots": 1, "snapshot_records": 5}
    with pytest.raises(CorpusError, match="older selfevo"):
        Store.open_readonly(db).query("SELECT 1")
    with Store.open(db) as store:
        names = [r[0] for r in store.query("SELECT name FROM _migrations ORDER BY name")]
        assert names == [m.__name__ for m in MIGRATIONS]
        with store.connection() as con:
            assert v1_rows(con) == before
        # later migrations' views read the old rows: 3 correct meta + 5 qa records passed
        assert store.query("SELECT count(*) FROM record_latest_passed WHERE passed_all") == [(8,)]


def test_m013_drops_only_the_bulk_tables_keys_and_keeps_their_checks_and_defaults(tmp_path):
    db = v1_store(tmp_path)
    Store.open(db).close()
    con = duckdb.connect(db, read_only=True)
    keys = dict(con.execute("SELECT table_name, list_sort(list(constraint_type)) FROM "
                            "duckdb_constraints() GROUP BY 1").fetchall())
    ddl = dict(con.execute("SELECT table_name, sql FROM duckdb_tables()").fetchall())
    con.close()
    assert "PRIMARY KEY" not in keys["prompts"] and "PRIMARY KEY" not in keys["records"]
    assert keys["records"].count("CHECK") == 2 and "NOT NULL" in keys["records"]
    assert "PRIMARY KEY" in keys["calls"] and "PRIMARY KEY" in keys["snapshot_records"]
    assert "record_id VARCHAR NOT NULL" in ddl["records"]
    assert "DEFAULT(now())" in ddl["prompts"]
    with Store.open(db) as store, pytest.raises(duckdb.ConstraintException):
        store.transact(lambda con: con.execute(
            "INSERT INTO records (record_id, prompt_id, kind, run_id) VALUES ('r', 'p', 'x', 'r')"))


def test_todays_commands_work_on_a_first_release_store(cli, tmp_path):
    from corpus.export import verify_export

    db = v1_store(tmp_path)
    refused = cli("stats", "--db", db, exit_code=1).output  # a reader never migrates
    assert f"run 'selfevo init --db {db}' once" in refused
    cli("init", "--db", db)
    stats = json.loads(cli("stats", "--db", db, "--format", "json").output)
    rows = [row for section in stats.values() for row in section]
    for table, n in {"prompts": 5, "records": 10, "calls": 5, "decisions": 10}.items():
        assert {"table": table, "n": n} in rows
    got = cli("sql", "--db", db, "SELECT kind, verdict, count(*) AS n FROM records_full "
              "GROUP BY ALL ORDER BY ALL", "--format", "json").output
    assert json.loads(got) == [{"kind": "meta", "verdict": "correct", "n": 3},
                               {"kind": "meta", "verdict": "incorrect", "n": 2},
                               {"kind": "qa", "verdict": None, "n": 5}]
    out = tmp_path / "export"
    cli("snapshot", "export", "v1-meta", "--format", "jsonl", "--out", str(out), "--db", db)
    manifest = verify_export(out)
    rows = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert manifest.n == len(rows) == 5 and {r["kind"] for r in rows} == {"meta"}
    assert all(r["messages"] for r in rows)
    cli("show", "--db", db, rows[0]["record_id"])


def test_m006_names_old_models_and_moves_their_base_folder_to_base_path(tmp_path):
    db = v1_store(tmp_path)  # the first release's store: models rows keyed by path
    con = duckdb.connect(db)
    con.execute(
        "INSERT INTO models (model_id, base, path, adapter, run_id) VALUES "
        "('h1:a', '/home/u/.cache/selfevo/models/smollm2-135m', '/runs/e1/r1/model/final',"
        " true, 'r0'), ('h1:b', 'org/hub-model', '/ckpt/full/', false, 'r0')")
    con.close()
    with Store.open(db) as store:
        rows = store.query("SELECT model_id, name, base, base_path, path, weights FROM models "
                           "ORDER BY model_id")
    assert rows == [
        ("h1:a", "final", "smollm2-135m", "/home/u/.cache/selfevo/models/smollm2-135m",
         "/runs/e1/r1/model/final", None),
        ("h1:b", "full", "org/hub-model", None, "/ckpt/full/", None)]


def test_m009_the_verdict_on_the_refinement_is_columns_outside_the_identity(tmp_path):
    """Old rows get NULLs; new rows keep the feedback on r̂ with its call id, readable through
    records_full; two records differing only there have one id (the first one written stays)."""
    from corpus.records import insert_records, make_record

    db = v1_store(tmp_path)
    with Store.open(db) as store:
        assert store.query("SELECT count(*) FROM records_full WHERE refined_verdict IS NULL "
                           "AND refined_feedback_call_id IS NULL") == [(10,)]
        pid = store.query("SELECT prompt_id FROM prompts LIMIT 1")[0][0]
        texts = {"prompt_id": pid, "kind": "self", "round": 1, "response": "r", "feedback": "f",
                 "verdict": "incorrect", "refinement": "r2"}
        first = make_record(**texts, refined_feedback="ok\nVerdict: correct",
                            refined_verdict="correct", refined_feedback_call_id="h1:c")
        second = make_record(**texts, refined_feedback="no", refined_verdict=None,
                             refined_verdict_error="no verdict line")
        assert first["record_id"] == second["record_id"]
        with store.run("fixture", {}) as run, writing(store) as con:
            assert insert_records(con, [first], run.run_id) == 1
            assert insert_records(con, [second], run.run_id) == 0
        got = store.query("SELECT verdict, refined_verdict, refined_feedback_call_id "
                          "FROM records_full WHERE record_id = ?", [first["record_id"]])
    assert got == [("incorrect", "correct", "h1:c")]


@both_stores
def test_run_rows_hold_status_config_and_counts(db):
    with Store.open(db) as store:
        with store.run("unit", {"k": 1}) as run:
            run.add("things", 2)
        with pytest.raises(CorpusError), store.run("user-error", {}):
            raise CorpusError("no such file x.jsonl\nsecond line")
        with pytest.raises(KeyError), store.run("bug", {}):
            {}["missing"]
        rows = store.query_dicts("SELECT command, status, config, counts, error FROM runs "
                                 "ORDER BY started_at")
    assert rows[0]["status"] == "ok" and rows[0]["counts"] == '{"things": 2}'
    assert rows[0]["config"] == '{"k":1}'
    # one line each: a user error's message; a bug's type, message and where it broke
    assert rows[1]["status"] == "failed" and rows[1]["error"] == "no such file x.jsonl"
    assert re.fullmatch(r"KeyError: 'missing' \(at test_store\.py:\d+\)", rows[2]["error"])


def test_a_failed_runs_error_does_not_depend_on_the_environment(db, monkeypatch):
    """--debug is passed, never read from os.environ: SELFEVO_DEBUG changes no stored row."""
    errors = []
    for env in (None, "1"):
        if env:
            monkeypatch.setenv("SELFEVO_DEBUG", env)
        with Store.open(db) as store:
            with pytest.raises(ValueError), store.run("fail", {}):
                raise ValueError("boom")
            errors.append(store.query("SELECT error FROM runs ORDER BY started_at DESC")[0][0])
    assert errors[0] == errors[1] and "\n" not in errors[0] and "Traceback" not in errors[0]


@both_stores
def test_failed_transaction_leaves_nothing(db):
    with Store.open(db) as store:
        def crash(con):
            con.execute("INSERT INTO prompts (prompt_id, text, run_id) VALUES ('p', 't', 'r')")
            raise RuntimeError("crash mid-import")

        with pytest.raises(RuntimeError):
            store.transact(crash)
        assert store.query("SELECT count(*) FROM prompts") == [(0,)]


HOLDER = textwrap.dedent(
    """
    import sys, time
    from corpus import Store
    store = Store.open(sys.argv[1], command="long job")
    with store.run("long job", {}) as run:
        print("ready", flush=True)
        for i in range(40):  # short write transactions, like a collector
            with store.transaction() as con:
                con.execute("INSERT INTO prompts (prompt_id, text, run_id) VALUES (?, ?, ?)",
                            [f"p{i}", "t", run.run_id])
            time.sleep(0.05)
    store.close()
    """
)


@file_store("the file's writer lock")
def test_second_writer_is_refused_and_readers_work_during_a_long_job(db):
    Store.open(db).close()
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, db], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        with pytest.raises(StoreBusy, match=r"in use by PID \d+ \(long job\)"):
            Store.open(db)
        # Readers get in while the job runs and see its commits as they land (on a loaded
        # machine the job may not have committed yet at the first reads: read until it has).
        seen, deadline = [], time.monotonic() + 30
        while (not seen or seen[-1] < 2) and time.monotonic() < deadline and proc.poll() is None:
            seen.append(Store.open_readonly(db).query("SELECT count(*) FROM prompts")[0][0])
        assert seen == sorted(seen) and seen[-1] >= 2, seen
    finally:
        assert proc.wait(timeout=60) == 0
    with Store.open(db) as store:
        assert store.query("SELECT count(*) FROM prompts") == [(40,)]


def test_killed_job_is_marked_killed_and_lock_released(db):
    Store.open(db).close()
    code = ("import os, sys\nfrom corpus import Store\ns = Store.open(sys.argv[1])\n"
            "s.start_run('doomed', {})\nos.kill(os.getpid(), 9)\n")
    assert subprocess.run([sys.executable, "-c", code, db]).returncode == -9
    with Store.open(db) as store:
        assert store.query("SELECT command, status FROM runs") == [("doomed", "killed")]


def typos(word: str) -> list[str]:
    """Each letter dropped, and each adjacent pair swapped."""
    drops = [word[:i] + word[i + 1:] for i in range(len(word))]
    swaps = [word[:i] + word[i + 1] + word[i] + word[i + 2:] for i in range(len(word) - 1)]
    return sorted({t for t in drops + swaps if t.upper() not in ("SELECT", "ELECT")})


#: User SQL that is wrong in every way a reader can get it wrong, including an error whose
#: text quotes DuckDB's own lock message.
BAD_SQL = [f"{t} 1" for t in typos("SELECT")] + [
    "SELECT * FROM no_such_table", "SELECT no_such_column FROM prompts", "SELECT 1 +",
    "SELECT count( FROM runs", "SELECT * FROM prompts WHERE", "SELECT 'a' - 1",
    "SELECT * FROM read_csv('missing.csv')",
    "SELECT * FROM read_csv('Could not set lock on file \"x\": Conflicting lock is held')",
]

LOCK_HOLDER = textwrap.dedent(
    """
    import sys, time, duckdb
    con = duckdb.connect(sys.argv[1])  # a writer inside a long transaction: the file is locked
    print("ready", flush=True)
    time.sleep(60)
    """
)


@pytest.fixture
def locked_db(db):
    """A store whose DuckDB file another process holds open for writing."""
    Store.open(db).close()
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, db], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "ready"
    yield db
    holder.kill()
    holder.wait()


@pytest.mark.parametrize("sql", BAD_SQL)
def test_wrong_sql_is_reported_as_wrong_sql_not_as_a_busy_store(cli, db, sql):
    Store.open(db).close()
    out = cli("sql", "--db", db, sql, exit_code=1).output.strip()
    assert len(out.splitlines()) == 1 and "Traceback" not in out, out
    assert out.startswith(("Error: SQL does not parse", "Error: query failed")), out
    assert "busy" not in out and "in use" not in out


@file_store("DuckDB's own lock on the file")
def test_a_real_lock_conflict_says_busy_and_wrong_sql_still_says_wrong(cli, locked_db):
    from corpus.audit import run_query

    with pytest.raises(StoreBusy, match=r"stayed busy for 0s: .*Conflicting lock") as err:
        run_query(Store.open_readonly(locked_db, wait=0.3), "SELECT count(*) FROM prompts")
    assert "SQL" not in str(err.value) and "query failed" not in str(err.value)
    for sql in BAD_SQL:  # what can be judged without the store is judged at once
        if sql.split()[0] != "SELECT" or sql.endswith(("+", "WHERE")) or "count(" in sql:
            out = cli("sql", "--db", locked_db, sql, exit_code=1).output
            assert "SQL does not parse" in out and "busy" not in out, (sql, out)


@file_store("DuckDB's own lock on the file")
def test_only_duckdbs_lock_refusal_counts_as_a_lock_conflict(locked_db):
    from corpus.store import is_lock_conflict

    with pytest.raises(duckdb.IOException) as real:
        duckdb.connect(locked_db, read_only=True)
    assert is_lock_conflict(real.value)
    con = duckdb.connect()
    for sql in BAD_SQL:
        try:
            con.execute(sql)
        except duckdb.Error as exc:
            assert not is_lock_conflict(exc), sql
    assert not is_lock_conflict(CorpusError("Could not set lock on file"))
