"""The store: migrations, runs, job lock, readers alongside a writer."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import duckdb
import pytest

from corpus import CorpusError, Store, StoreBusy
from corpus.migrations import MIGRATIONS, migrate


def test_open_creates_all_tables_and_records_migrations(db):
    with Store.open(db) as store:
        tables = {r[0] for r in store.query("SELECT table_name FROM information_schema.tables")}
        applied = [r[0] for r in store.query("SELECT name FROM _migrations ORDER BY name")]
    for t in ["runs", "prompts", "calls", "attempts", "records", "decisions", "snapshots",
              "snapshot_records", "models", "evals", "eval_items"]:
        assert t in tables
    assert applied == [m.__name__ for m in MIGRATIONS]


def test_old_store_migrates_forward_on_open(db):
    con = duckdb.connect(db)
    migrate(con, upto=1)  # a store frozen at m001
    con.execute("INSERT INTO runs (run_id, command, config, code_version, started_at, status) "
                "VALUES ('r0', 'old', '{}', '0.0.1', now(), 'ok')")
    con.close()
    with pytest.raises(CorpusError, match="older selfevo"):
        Store.open_readonly(db).query("SELECT 1")
    with Store.open(db) as store:
        names = [r[0] for r in store.query("SELECT name FROM _migrations ORDER BY name")]
        assert names == [m.__name__ for m in MIGRATIONS]
        assert store.query("SELECT command FROM runs WHERE run_id = 'r0'") == [("old",)]


def test_m006_names_old_models_and_moves_their_base_folder_to_base_path(db):
    con = duckdb.connect(db)
    migrate(con, upto=5)  # a store frozen at m005: models rows keyed by path, base a folder
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


def test_run_rows_hold_status_config_and_counts(db):
    with Store.open(db) as store:
        with store.run("unit", {"k": 1}) as run:
            run.add("things", 2)
        with pytest.raises(ValueError), store.run("unit-fail", {}):
            raise ValueError("boom")
        rows = store.query_dicts("SELECT command, status, config, counts, error FROM runs "
                                 "ORDER BY started_at")
    assert rows[0]["status"] == "ok" and rows[0]["counts"] == '{"things": 2}'
    assert rows[0]["config"] == '{"k":1}'
    assert rows[1]["status"] == "failed" and rows[1]["error"] == "boom"


def test_failed_transaction_leaves_nothing(db):
    with Store.open(db) as store:
        with pytest.raises(RuntimeError), store.transaction() as con:
            con.execute("INSERT INTO prompts (prompt_id, text, run_id) VALUES ('p', 't', 'r')")
            raise RuntimeError("crash mid-import")
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


def test_second_writer_is_refused_and_readers_work_during_a_long_job(db):
    Store.open(db).close()
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, db], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        with pytest.raises(StoreBusy, match=r"in use by PID \d+ \(long job\)"):
            Store.open(db)
        seen = []
        for _ in range(5):
            seen.append(Store.open_readonly(db).query("SELECT count(*) FROM prompts")[0][0])
        assert seen == sorted(seen) and seen[-1] >= 1
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
