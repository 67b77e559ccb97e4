"""Reading the store: read-only `selfevo sql`, `stats`, `show`, readers during a long job."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from backends import both_stores, file_store

from corpus import Store
from corpus.audit import ReadOnlyViolation, check_read_only
from corpus.decisions import insert_decisions
from corpus.records import insert_prompts, insert_records, make_prompt, make_record

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def filled(db: str) -> dict[str, str]:
    """A store with 2 prompts, 3 records, one call, and decisions of two steps."""
    with Store.open(db) as store, store.run("test fill", {}) as run:
        p1, p2 = make_prompt("What is 2 + 2?", gold_answer="4", source="unit"), \
            make_prompt("What is 3 * 3?", gold_answer="9", source="unit", split="train")
        r1 = make_record(prompt_id=p1["prompt_id"], kind="meta", response="5",
                         feedback="Wrong. Verdict: incorrect", verdict="incorrect",
                         refinement="2 + 2 = 4", feedback_call_id="c1", source="unit")
        r2 = make_record(prompt_id=p2["prompt_id"], kind="self", round=1, response="9",
                         feedback="Verdict: correct", verdict="correct", refinement="9")
        r3 = make_record(prompt_id=p2["prompt_id"], kind="qa", response="9")
        def fill(con):
            insert_prompts(con, [p1, p2], run.run_id)
            insert_records(con, [r1, r2, r3], run.run_id)
            con.execute("INSERT INTO calls (call_id, model, messages, params, status, response, "
                        "purpose, prompt_tokens, completion_tokens, run_id) VALUES ('c1', "
                        "'reference', '[]', '{}', 'ok', 'Wrong.', 'feedback', 10, 3, ?)",
                        [run.run_id])
            insert_decisions(con, [{"record_id": r1["record_id"], "passed": False,
                                    "reason": "verdict is incorrect"},
                                   {"record_id": r2["record_id"], "passed": True}],
                             run_id=run.run_id, step="verdict")
            insert_decisions(con, [{"record_id": r2["record_id"], "passed": True, "score": 0.1,
                                    "detail": {"cluster": 7}}],
                             run_id=run.run_id, step="dedup-near")

        store.transact(fill)
    return {"meta": r1["record_id"], "self": r2["record_id"], "qa": r3["record_id"]}


# -- sql -------------------------------------------------------------------------------------


@both_stores
def test_sql_formats(cli, db, filled):
    q = "SELECT kind, round FROM records ORDER BY kind"
    assert cli("sql", q, "--db", db, "--format", "csv").output == (
        "kind,round\nmeta,0\nqa,0\nself,1\n")
    rows = json.loads(cli("sql", q, "--db", db, "--format", "json").output)
    assert rows == [{"kind": "meta", "round": 0}, {"kind": "qa", "round": 0},
                    {"kind": "self", "round": 1}]
    table = cli("sql", "SELECT text, gold_answer, split FROM prompts ORDER BY text", "--db",
                db).output
    assert "What is 2 + 2?" in table and "NULL" in table and "2 rows" in table


@both_stores
def test_sql_views_answer_why_a_record_was_dropped(cli, db, filled):
    out = cli("sql", f"SELECT step, passed, reason, command FROM decision_log "
                     f"WHERE record_id = '{filled['meta']}'", "--db", db, "--format", "json")
    assert json.loads(out.output) == [{"step": "verdict", "passed": False,
                                       "reason": "verdict is incorrect", "command": "test fill"}]
    runs = json.loads(cli("sql", "SELECT command, status, seconds >= 0 AS done FROM run_summary",
                          "--db", db, "--format", "json").output)
    assert runs == [{"command": "test fill", "status": "ok", "done": True}]


@pytest.mark.parametrize("statement", [
    "INSERT INTO prompts (prompt_id, text, run_id) VALUES ('x', 'y', 'z')",
    "DELETE FROM records",
    "UPDATE records SET verdict = NULL",
    "DROP TABLE records",
    "CREATE TABLE t AS SELECT 1",
    "ALTER TABLE records ADD COLUMN x INT",
    "COPY records TO '{tmp}/leak.csv'",
    "ATTACH '{tmp}/other.duckdb' AS other",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET threads = 1",
    "CHECKPOINT",
    "EXPORT DATABASE '{tmp}/dump'",
    "SELECT 1; DROP TABLE records",
    "EXPLAIN ANALYZE DELETE FROM records",
    "explain UPDATE records SET round = 9",
    "PRAGMA force_checkpoint",
    "PRAGMA import_database('{tmp}')",
    "VACUUM",
    "DETACH other",
    "BEGIN TRANSACTION",
])
def test_sql_refuses_anything_but_reads_before_running_it(cli, db, filled, tmp_path, statement):
    statement = statement.format(tmp=tmp_path)
    out = cli("sql", statement, "--db", db, exit_code=1).output
    assert "read-only" in out or "one statement" in out, out
    assert out.count("\n") == 1 and out.startswith("Error:")
    assert not any(p.name in {"leak.csv", "other.duckdb", "dump"} for p in tmp_path.iterdir())
    assert Store.open_readonly(db).query("SELECT count(*) FROM records") == [(3,)]


def test_refusal_happens_before_the_store_is_opened(cli, tmp_path):
    out = cli("sql", "DROP TABLE records", "--db", str(tmp_path / "nope.duckdb"),
              exit_code=1).output
    assert "read-only" in out and "no store" not in out
    with pytest.raises(ReadOnlyViolation):
        check_read_only("PRAGMA threads=1; SELECT 1")
    check_read_only("DESCRIBE records")
    check_read_only("PRAGMA table_info('records')")
    check_read_only("EXPLAIN SELECT * FROM records")


@both_stores
def test_sql_errors_are_one_line(cli, db, filled):
    assert "does not parse" in cli("sql", "SELEC 1", "--db", db, exit_code=1).output
    assert "query failed" in cli("sql", "SELECT nope FROM records", "--db", db,
                                 exit_code=1).output


def test_sql_starts_without_torch_and_fast(db, filled):
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "selfevo", "sql", "SELECT count(*) AS n "
         "FROM records", "--db", db, "--format", "csv"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "n\n3\n"
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    for heavy in ("torch", "transformers", "datasets", "peft", "openai"):
        assert heavy not in imported, f"selfevo sql imported {heavy}"


# -- stats -----------------------------------------------------------------------------------


@both_stores
def test_stats_counts_by_kind_round_source_verdict_and_runs(cli, db, filled):
    out = cli("stats", "--db", db, "--format", "json").output
    stats = json.loads(out)
    kinds = {(r["kind"], r["round"]): r for r in stats["Records by kind, round and verdict"]}
    assert kinds[("meta", 0)]["incorrect"] == 1 and kinds[("self", 1)]["correct"] == 1
    assert kinds[("qa", 0)]["no_verdict"] == 1
    tables = {r["table"]: r["n"] for r in stats["Tables"]}
    assert tables["records"] == 3 and tables["prompts"] == 2 and tables["decisions"] == 3
    sources = {r["source"]: r["records"] for r in stats["Records by source"]}
    assert sources == {"unit": 1, "(none)": 2}
    assert [r["command"] for r in stats["Runs (latest 15)"]] == ["test fill"]
    table = cli("stats", "--db", db).output
    assert "Records by kind, round and verdict" in table and "test fill" in table


def test_stats_of_a_missing_store_says_how_to_make_one(cli, tmp_path):
    out = cli("stats", "--db", str(tmp_path / "none.duckdb"), exit_code=1).output
    assert "selfevo init" in out


# -- show ------------------------------------------------------------------------------------


def test_show_by_prefix_with_calls_and_decisions(cli, db, filled):
    rid = filled["self"]
    details = json.loads(cli("show", rid[3:12], "--db", db, "--json").output)
    assert details["record"]["record_id"] == rid
    assert details["record"]["prompt"] == "What is 3 * 3?"
    assert [d["step"] for d in details["decisions"]] == ["verdict", "dedup-near"]
    assert details["run"]["command"] == "test fill"
    meta = json.loads(cli("show", filled["meta"], "--db", db, "--json").output)
    assert meta["calls"][0]["call_id"] == "c1" and meta["calls"][0]["prompt_tokens"] == 10
    text = cli("show", filled["meta"][:10], "--db", db).output
    for part in ("What is 2 + 2?", "Wrong. Verdict: incorrect", "2 + 2 = 4",
                 "verdict is incorrect", "Decisions", "c1"):
        assert part in text, part


def test_show_unknown_or_ambiguous_id(cli, db, filled):
    assert "no record" in cli("show", "h1:ffffffffffff", "--db", db, exit_code=1).output
    # Every id starts with h1: so a bare 'h1:' prefix is too short to be useful.
    assert "at least" in cli("show", "h1:", "--db", db, exit_code=1).output


# -- readers while a long job writes (CLI level) ------------------------------------------

LONG_JOB = textwrap.dedent(
    """
    import os, sys, time
    from corpus import Store
    from corpus.records import insert_prompts, make_prompt
    store = Store.open(sys.argv[1], command="long job")
    with store.run("long job", {}) as run:
        print("ready", flush=True)
        i = 0
        # Short write transactions, like a collector, until the test says stop.
        while not os.path.exists(sys.argv[2]) and i < 3000:
            with store.transaction() as con:
                insert_prompts(con, [make_prompt(f"job question {i}?")], run.run_id)
            i += 1
            time.sleep(0.02)
    store.close()
    print(i, flush=True)
    """
)


@file_store("readers while a job holds the file's writer lock (a lake's readers: test_lake_store)")
def test_sql_and_stats_work_while_another_process_runs_a_long_job(cli, db, tmp_path):
    Store.open(db).close()
    stop = tmp_path / "stop"
    proc = subprocess.Popen([sys.executable, "-c", LONG_JOB, db, str(stop)],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == "ready"
        seen = []
        for _ in range(4):
            # .stdout: a reader that had to wait says so on stderr.
            out = cli("sql", "SELECT count(*) AS n FROM prompts", "--db", db, "--format", "csv")
            seen.append(int(out.stdout.splitlines()[1]))
            stats = json.loads(cli("stats", "--db", db, "--format", "json").stdout)
            assert any(r["status"] == "running" for r in stats["Runs (latest 15)"])
        assert proc.poll() is None, "the job ended before the readers were done"
        assert seen == sorted(seen), seen
        # The job keeps writing between reads (readers never hold the file for long).
        deadline = time.monotonic() + 30
        while Store.open_readonly(db).query("SELECT count(*) FROM prompts")[0][0] <= seen[-1]:
            assert time.monotonic() < deadline, "the job made no progress after the reads"
            time.sleep(0.1)
    finally:
        stop.touch()
        assert proc.wait(timeout=60) == 0
    written = int(proc.stdout.readline())
    assert cli("sql", "SELECT count(*) FROM prompts", "--db", db, "--format",
               "csv").output == f"count_star()\n{written}\n"
