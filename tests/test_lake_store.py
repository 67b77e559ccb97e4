"""The Store on a DuckLake: schema and migrations, liveness reaping, read-only readers,
concurrent writer processes, snapshots cut at a DuckLake version, time travel."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import given
from hypothesis import strategies as st

import corpus.store as store_module
from corpus.errors import CorpusError, StoreBusy
from corpus.joblock import take_lake_lease
from corpus.lake import Lake
from corpus.lakeschema import create_schema, duplicate_ids, lake_ddl
from corpus.migrations import MIGRATIONS, migrate
from corpus.store import Store
from corpus.storespec import StoreSpec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_faults import check_invariants  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _described(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    return con.execute(
        "SELECT table_name, column_name, data_type, is_nullable, "
        "trim(coalesce(column_default, 'NULL'), '''') FROM duckdb_columns() "
        "WHERE database_name = current_database() ORDER BY ALL").fetchall()


# -- schema and migrations ------------------------------------------------------------------
@pytest.mark.parametrize("catalog", ["postgres", "duckdb"])
def test_a_lake_of_an_older_selfevo_is_migrated_in_lake_form(catalog, request, tmp_path):
    spec = (request.getfixturevalue("lake_db") if catalog == "postgres"
            else f"ducklake:{tmp_path}/c.ducklake")
    with Lake(StoreSpec.parse(spec)) as lake:  # the schema of m001..m005: before the keys
        lake.transact(lambda con: create_schema(con, upto=5))   # of m007 (batches)
    with Store.open(spec) as store:
        with store.connection() as con:
            migrated = _described(con)
        assert store.query("SELECT name FROM _migrations ORDER BY name") == sorted(
            (m.__name__,) for m in MIGRATIONS)
    file = duckdb.connect(str(tmp_path / "f.duckdb"))
    migrate(file)
    assert migrated == _described(file)


_COLUMN = st.tuples(st.from_regex(r"[a-z][a-z_]{0,8}", fullmatch=True),
                    st.sampled_from(["VARCHAR", "INTEGER", "BIGINT", "JSON", "TIMESTAMPTZ"]),
                    st.sampled_from(["", " NOT NULL", " PRIMARY KEY", " UNIQUE",
                                     " NOT NULL DEFAULT 0", " NOT NULL UNIQUE"]),
                    st.sampled_from(["", " -- a note (with, commas)", " -- PRIMARY KEY (x)"]))


@given(st.lists(_COLUMN, min_size=1, max_size=6, unique_by=lambda c: c[0]), st.booleans())
def test_the_lake_form_of_a_table_has_its_columns_and_no_keys(columns, table_key):
    keyed = [i for i, (_, _, c, _) in enumerate(columns) if "PRIMARY" in c][1:]
    columns = [(f"c_{n}", "INTEGER" if "DEFAULT 0" in c else t,
                " NOT NULL" if i in keyed else c, note)  # one PRIMARY KEY per table
               for i, (n, t, c, note) in enumerate(columns)]
    lines = [f"{n} {t}{c},{note}" for n, t, c, note in columns]
    if table_key and not any("PRIMARY" in c for _, _, c, _ in columns):
        lines.append(f"PRIMARY KEY ({columns[0][0]})")
    else:
        lines[-1] = lines[-1].replace(",", "", 1) if "," in lines[-1].split("--")[0] else lines[-1]
    sql = "CREATE TABLE t (\n" + "\n".join(lines) + "\n)"
    file = duckdb.connect()
    file.execute(sql)
    lake = duckdb.connect()
    lake.execute(lake_ddl(sql))
    assert _described(lake) == _described(file)
    assert lake.execute("SELECT count(*) FROM duckdb_constraints() WHERE constraint_type IN "
                        "('PRIMARY KEY', 'UNIQUE')").fetchone() == (0,)


def test_ddl_a_lake_refuses_needs_a_hand_written_lake_form():
    with pytest.raises(CorpusError, match="DDL a DuckLake refuses"):
        lake_ddl("CREATE TABLE t (a INTEGER, CHECK (a > 0))")
    with pytest.raises(CorpusError, match="DDL a DuckLake refuses"):
        lake_ddl("CREATE INDEX i ON t (a)")


# -- readers and writers --------------------------------------------------------------------
def test_a_reader_of_a_lake_cannot_write(lake_db, cli):
    Store.open(lake_db).close()
    reader = Store.open_readonly(lake_db)
    try:
        with pytest.raises(CorpusError, match="read-only"):
            reader.transact(lambda con: con.execute("DELETE FROM runs"))
        with reader.connection() as con, pytest.raises(duckdb.Error, match="read-only|read only"):
            con.execute("INSERT INTO runs (run_id) VALUES ('x')")
    finally:
        reader.close()
    result = cli("sql", "--db", lake_db, "DELETE FROM runs", exit_code=None)
    assert result.exit_code != 0 and "read" in result.output.lower()


def test_a_lake_store_never_writes_through_a_with_transaction(lake_db):
    with Store.open(lake_db) as store, pytest.raises(CorpusError, match="Store.transact"):
        with store.transaction():
            pass


def _run_row(con, run_id: str, host: str, pid: int, age_s: int) -> None:
    con.execute("INSERT INTO runs (run_id, command, config, code_version, started_at, status,"
                " pid, host, heartbeat_at) VALUES (?, 'collect', '{}', 'v', now(), 'running',"
                f" ?, ?, now() - INTERVAL {int(age_s)} SECOND)", [run_id, pid, host])
    con.execute("INSERT INTO calls (call_id, model, messages, params, status, run_id) "
                "VALUES (?, 'm', '[]', '{}', 'pending', ?)", [f"call-{run_id}", run_id])


def test_reaping_on_a_lake_goes_by_liveness_not_by_pid(lake_db):
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout.strip()
    here = socket.gethostname()
    with Store.open(lake_db) as store:
        store.transact(lambda con: [
            _run_row(con, "r-live-elsewhere", "other-machine", 1, 10),
            _run_row(con, "r-silent-elsewhere", "other-machine", 1, 3600),
            _run_row(con, "r-dead-here", here, int(dead_pid), 10),
            _run_row(con, "r-live-here", here, os.getpid(), 10)])
    with Store.open(lake_db) as store:  # a second writer arrives
        rows = dict(store.query("SELECT run_id, status FROM runs"))
        billed = dict(store.query("SELECT run_id, possibly_billed FROM calls"))
    assert rows == {"r-live-elsewhere": "running", "r-silent-elsewhere": "killed",
                    "r-dead-here": "killed", "r-live-here": "running"}
    assert billed == {"r-live-elsewhere": False, "r-silent-elsewhere": True,
                      "r-dead-here": True, "r-live-here": False}


def test_a_call_resent_by_a_live_run_is_its_own_and_not_flagged_when_its_first_run_died(
        lake_db):
    """possibly_billed goes by the run that last set a call pending (``sent_by``, m014)."""
    from generation.ledger import mark_resend

    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout.strip()
    here = socket.gethostname()
    with Store.open(lake_db) as store:
        store.transact(lambda con: [
            _run_row(con, "r-first", here, int(dead_pid), 10),  # registered both, then died
            _run_row(con, "r-resender", here, os.getpid(), 10),  # alive, re-sends one
            _run_row(con, "r-dies-resending", here, int(dead_pid), 10),
            con.execute("INSERT INTO calls (call_id, model, messages, params, status, run_id) "
                        "VALUES ('call-2', 'm', '[]', '{}', 'failed', 'r-resender')"),
            mark_resend(con, ["call-r-first"], "r-resender"),
            mark_resend(con, ["call-2"], "r-dies-resending")])
    with Store.open(lake_db) as store:  # a second writer arrives and reaps
        billed = dict(store.query("SELECT call_id, possibly_billed FROM calls"))
    assert billed == {"call-r-first": False, "call-r-resender": False,
                      "call-r-dies-resending": True, "call-2": True}


def test_a_run_on_a_lake_sends_heartbeats(lake_db, monkeypatch):
    monkeypatch.setattr(store_module, "HEARTBEAT_S", 0.05)
    with Store.open(lake_db) as store, store.run("collect", {}) as run:
        first = store.query("SELECT heartbeat_at FROM runs WHERE run_id = ?", [run.run_id])
        deadline = time.monotonic() + 30
        while store.query("SELECT heartbeat_at FROM runs WHERE run_id = ?",
                          [run.run_id]) == first and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.query("SELECT heartbeat_at > started_at, host FROM runs WHERE run_id = ?",
                           [run.run_id]) == [(True, socket.gethostname())]


def _run_together(commands: list[list[str]], db: str, meanwhile: Any = None
                  ) -> tuple[list[int], list[str], Any]:
    """Start every command at once against store ``db``; their exit codes and outputs, and
    what ``meanwhile(processes)`` returned (it runs while they do)."""
    env = {**os.environ, "SELFEVO_DB": db, "OPENAI_API_KEY": "sk-test"}
    procs = [subprocess.Popen(c, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for c in commands]
    try:
        extra = meanwhile(procs) if meanwhile is not None else None
        outs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [p.returncode for p in procs], outs, extra


def _prompts_file(path: Path, ids: range, shared: int) -> Path:
    rows = [{"text": f"Question number {i}: what is {i} + 1?", "gold_answer": str(i + 1)}
            for i in ids]
    rows += [{"text": f"Shared question {i}?", "gold_answer": str(i)} for i in range(shared)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_two_writer_processes_on_one_lake_lose_and_duplicate_nothing(lake_db, tmp_path):
    Store.open(lake_db).close()
    files = [_prompts_file(tmp_path / f"w{w}.jsonl", range(w * 1000, w * 1000 + 60), 25)
             for w in range(2)]
    selfevo = str(Path(sys.executable).parent / "selfevo")
    commands = [[selfevo, "prompts", "import", str(f)]
                for f in files for _ in range(2)]  # each file twice: four writers
    commands.append([selfevo, "prompts", "generate", "--n", "30"])
    codes, outs, _ = _run_together(commands, lake_db)
    assert codes == [0] * len(commands), outs
    with Store.open_readonly(lake_db) as store:
        assert store.query("SELECT count(*) FROM prompts") == [(2 * 60 + 25 + 30,)]
        assert store.query("SELECT status, count(*) FROM runs GROUP BY ALL") == [
            ("ok", len(commands))]
        with store.connection() as con:
            assert duplicate_ids(con) == {}


def _reads_while(procs: list[subprocess.Popen], db: str) -> list[tuple[int, bool]]:
    """``selfevo sql`` and ``selfevo stats`` on ``db``, one after the other, until every
    process in ``procs`` ended; per read its exit code and whether a writer was still
    running when it finished."""
    selfevo = str(Path(sys.executable).parent / "selfevo")
    reads = [[selfevo, "sql", "--db", db, "SELECT count(*) FROM records"],
             [selfevo, "stats", "--db", db]]
    done = []
    while any(p.poll() is None for p in procs):
        r = subprocess.run(reads[len(done) % 2], cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
        done.append((r.returncode, any(p.poll() is None for p in procs)))
    return done


def test_two_collects_a_curate_and_a_snapshot_write_at_once_while_readers_read(
        lake_db, server, tmp_path):
    from corpus.records import insert_prompts, make_prompt

    rows = [make_prompt(f"Ann has {i} apples and gets {i + 1} more. How many?",
                        gold_answer=str(2 * i + 1), source="t", split="ab"[i % 2])
            for i in range(16)]
    with Store.open(lake_db) as store, store.run("seed", {}) as run:
        store.transact(lambda con: insert_prompts(con, rows, run.run_id))
    seeded = [{"prompt": f"What is {i} + {i}?", "response": f"The answer is {2 * i}.",
               "kind": "qa", "gold_answer": str(2 * i)} for i in range(40)]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in seeded))
    selfevo = str(Path(sys.executable).parent / "selfevo")
    env = {**os.environ, "SELFEVO_DB": lake_db, "OPENAI_API_KEY": "sk-test"}
    subprocess.run([selfevo, "records", "import", str(tmp_path / "r.jsonl")], env=env,
                   cwd=ROOT, check=True, capture_output=True)
    server.latency = 0.01
    commands = [[selfevo, "collect", "--teacher", f"openai:teacher@{server.base_url}",
                 "--responder", f"openai:student@{server.base_url}", "--max-tokens", "64",
                 "--where", f"split = '{split}'"] for split in "ab"]
    commands += [[selfevo, "curate", "filter", "--step", "format", "--step", "gold-match"],
                 [selfevo, "snapshot", "create", "qa", "--where", "kind = 'qa'"]]
    codes, outs, reads = _run_together(commands, lake_db,
                                       meanwhile=lambda procs: _reads_while(procs, lake_db))
    assert codes == [0] * len(commands), outs
    assert reads and all(code == 0 for code, _ in reads), reads
    assert any(during for _, during in reads)  # a reader finished while writers wrote
    counts = check_invariants(lake_db)  # snapshot hashes, orphans, counts of runs
    assert counts["records"] == 40 + 16 and counts["calls"] == 48
    with Store.open_readonly(lake_db) as store:
        assert store.query("SELECT count(*), count(DISTINCT prompt_id) FROM records "
                           "WHERE kind <> 'qa'") == [(16, 16)]
        assert store.query("SELECT count(*), count(DISTINCT call_id) FROM calls "
                           "WHERE status = 'ok'") == [(48, 48)]
        assert store.query("SELECT DISTINCT status FROM runs") == [("ok",)]
        (selected, decided, distinct), = store.query(
            "SELECT any_value(r.counts->>'selected')::INTEGER, count(*), "
            "count(DISTINCT (d.record_id, d.step)) FROM runs r JOIN decisions d USING (run_id) "
            "WHERE r.command = 'curate filter'")
        assert 40 <= selected <= 56 and decided == distinct == 2 * selected
        assert store.query("SELECT n FROM snapshots WHERE name = 'qa'") == [(40,)]
        with store.connection() as con:
            assert duplicate_ids(con) == {}
    assert len(server.chat_requests()) == 48  # nothing sent twice


# -- leases: one collect per prompt across machines ------------------------------------------
def _holders(store: Store) -> dict[str, str]:
    return dict(store.query("SELECT lock_key, held_by FROM job_locks"))


def test_a_lease_has_one_live_holder_and_a_dead_one_is_taken_over(lake_db):
    import threading

    from corpus.joblock import lake_lease

    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout.strip()
    with Store.open(lake_db) as store:
        store.transact(lambda con: [
            _run_row(con, "r-live-elsewhere", "other-machine", 1, 10),
            _run_row(con, "r-silent-elsewhere", "other-machine", 1, 3600),
            _run_row(con, "r-dead-here", socket.gethostname(), int(dead_pid), 10),
            con.execute("INSERT INTO job_locks (lock_key, held_by) VALUES ('k1', "
                        "'r-live-elsewhere'), ('k2', 'r-silent-elsewhere'), ('k3', 'r-dead-here')")])
        with store.run("collect", {}) as run:
            with lake_lease(store, ["k2", "k3", "k4"], run.run_id, "prompts"):
                assert _holders(store) == {"k1": "r-live-elsewhere", "k2": run.run_id,
                                           "k3": run.run_id, "k4": run.run_id}
                assert dict(store.query("SELECT run_id, status FROM runs WHERE run_id IN "
                                        "('r-silent-elsewhere', 'r-dead-here')")) == {
                    "r-silent-elsewhere": "killed", "r-dead-here": "killed"}
            assert _holders(store) == {"k1": "r-live-elsewhere"}  # released at the end
            with pytest.raises(StoreBusy) as refused, \
                    lake_lease(store, ["k1", "k5"], run.run_id, "prompts"):
                pass
            assert str(refused.value) == (
                "1 of the prompts are in use by run r-live-elsewhere on other-machine (PID 1); "
                "wait for it to finish or choose others")
            assert _holders(store) == {"k1": "r-live-elsewhere"}  # nothing of it landed

    # Two takers at once (two attached lakes, as two machines): exactly one wins.
    stores = [Store.open(lake_db) for _ in range(2)]
    try:
        runs = [s.start_run("collect", {}) for s in stores]
        keys = [f"p{i}" for i in range(50)]
        barrier, outcome = threading.Barrier(2), {}

        def take(i: int) -> None:
            barrier.wait()
            try:
                stores[i].transact(lambda con: take_lake_lease(con, keys, runs[i].run_id, "p"))
                outcome[i] = "won"
            except StoreBusy as exc:
                outcome[i] = str(exc)

        threads = [threading.Thread(target=take, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        winner = [i for i in range(2) if outcome[i] == "won"]
        assert len(winner) == 1, outcome
        assert f"50 of the p are in use by run {runs[winner[0]].run_id}" in outcome[1 - winner[0]]
        holders = _holders(stores[0])
        assert len(holders) == 51 and {holders[k] for k in keys} == {runs[winner[0]].run_id}
    finally:
        for s in stores:
            s.close()


SECOND_JOBS = {
    # what a second machine runs meanwhile: its arguments, the items of its lease, and the
    # requests one whole job sends (4 questions)
    "collect": (["collect", "--teacher", "openai:teacher@{url}", "--responder",
                 "openai:student@{url}", "--max-tokens", "16"], "selected prompts", 12),
    "eval run": (["eval", "run", "--model", "openai:student@{url}", "--bench", "{bench}",
                  "--mode", "both", "--max-tokens", "16"],
                 "questions asked of openai:student", 12),
}


@pytest.mark.parametrize("command", sorted(SECOND_JOBS))
def test_a_second_job_asking_the_same_questions_on_a_lake_is_refused(lake_db, server, tmp_path,
                                                                      command):
    """collect leases its prompts; eval, refine and evolve rounds lease (model, question):
    a second machine asking the same is refused at once and sends nothing."""
    from openai_server import Behaviour

    from corpus.records import insert_prompts, make_prompt

    rows = [make_prompt(f"Bob has {i} pens. How many?", gold_answer=str(i), source="t")
            for i in range(4)]
    with Store.open(lake_db) as store, store.run("seed", {}) as run:
        store.transact(lambda con: insert_prompts(con, rows, run.run_id))
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({"question": r["text"], "answer": r["gold_answer"]})
                             + "\n" for r in rows))
    server.handler = lambda body, n: Behaviour(kind="hang", hang=120)  # until released
    args, what, requests = SECOND_JOBS[command]
    url = server.base_url
    job = [str(Path(sys.executable).parent / "selfevo")] + [
        a.format(url=url, bench=bench) for a in args]
    env = {**os.environ, "SELFEVO_DB": lake_db, "OPENAI_API_KEY": "sk-test"}
    first = subprocess.Popen(job, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not server.chat_requests() and first.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.05)  # it holds the lease before it sends anything
        second = subprocess.run(job, env=env, cwd=ROOT, capture_output=True, text=True,
                                timeout=300)
        server.release()
        out = first.communicate(timeout=300)[0]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, out
    with Store.open_readonly(lake_db) as store:
        (holder,), = store.query("SELECT run_id FROM runs WHERE command = ? AND status = 'ok'",
                                 [command])
        assert store.query("SELECT count(*) FROM job_locks") == [(0,)]  # released
    message = (second.stdout + second.stderr).strip().splitlines()
    assert second.returncode != 0 and len(message) == 1, message
    assert message[0] == (f"Error: 4 of the {what} are in use by run {holder} "
                          f"on {socket.gethostname()} (PID {first.pid}); wait for it to finish "
                          "or choose others")
    assert len(server.chat_requests()) == requests  # the refused one sent nothing
    again = subprocess.run(job, env=env, cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(server.chat_requests()) == requests  # all answered in the ledger: nothing re-sent
    with Store.open_readonly(lake_db) as store:
        assert [s for (s,) in store.query("SELECT status FROM runs WHERE command = ? "
                                          "ORDER BY run_id", [command])] == ["ok", "failed", "ok"]


# -- snapshots and time travel --------------------------------------------------------------
def test_an_old_snapshot_exports_the_same_bytes_after_later_writes(lake_db, cli, tmp_path):
    cli("prompts", "generate", "--n", "20", "--seed", "1", "--db", lake_db)
    rows = [{"prompt": f"What is {i} + {i}?", "response": str(2 * i), "kind": "qa"}
            for i in range(12)]
    f = tmp_path / "r.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cli("records", "import", str(f), "--db", lake_db)
    cli("snapshot", "create", "s1", "--where", "kind = 'qa'", "--db", lake_db)
    cli("snapshot", "export", "s1", "--out", str(tmp_path / "a"), "--db", lake_db)
    before = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    with Store.open(lake_db) as store:  # later writes touch what the snapshot holds
        store.transact(lambda con: con.execute(
            "UPDATE prompts SET gold_answer = 'changed', text = text || ' (edited)'"))
        version = store.query("SELECT lake_version FROM snapshots WHERE name = 's1'")[0][0]
    assert version is not None
    cli("snapshot", "export", "s1", "--out", str(tmp_path / "b"), "--db", lake_db)
    assert {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()} == before
    with Lake(StoreSpec.parse(lake_db), version=version) as at, \
            Lake(StoreSpec.parse(lake_db), version=version - 1) as just_before:
        count = "SELECT count(*) FROM snapshot_records"
        assert at.cursor().execute(count).fetchone() == (12,)  # its own commit made `version`
        assert just_before.cursor().execute(count).fetchone() == (0,)


def test_sql_at_reads_the_lake_as_it_was(lake_db, cli, tmp_path):
    db = str(tmp_path / "file.duckdb")  # a file store keeps no history
    cli("prompts", "generate", "--n", "5", "--seed", "1", "--db", lake_db)
    with Store.open(lake_db) as store:
        with store.connection() as con:
            then = con.execute("SELECT id FROM lake.current_snapshot()").fetchone()[0]
    cli("prompts", "generate", "--n", "9", "--seed", "2", "--db", lake_db)
    now = cli("sql", "--db", lake_db, "--format", "csv", "SELECT count(*) AS n FROM prompts")
    old = cli("sql", "--db", lake_db, "--at", str(then), "--format", "csv",
              "SELECT count(*) AS n FROM prompts")
    assert old.output.split() == ["n", "5"] and now.output.split() == ["n", "14"]
    cli("init", "--db", db)
    refused = cli("sql", "--db", db, "--at", "1", "SELECT 1", exit_code=None)
    assert refused.exit_code != 0 and "time travel needs a DuckLake store" in refused.output
    assert len(refused.output.strip().splitlines()) == 1


def test_a_closed_lake_store_never_falls_back_to_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = Store.open("ducklake:c.ducklake")
    store.close()
    catalog = (tmp_path / "c.ducklake").read_bytes()
    with pytest.raises(CorpusError, match="is closed"):
        store.transact(lambda con: con.execute("SELECT 1"))
    with pytest.raises(CorpusError, match="is closed"):
        store.query("SELECT 1")
    assert (tmp_path / "c.ducklake").read_bytes() == catalog


def test_every_lake_commit_names_the_command_and_run_that_made_it(lake_db, cli):
    Store.open(lake_db).close()
    with Store.open(lake_db) as store, store.connection() as con:
        before = con.execute("SELECT id FROM lake.current_snapshot()").fetchone()[0]
    cli("prompts", "generate", "--n", "5", "--seed", "3", "--db", lake_db)
    with Store.open_readonly(lake_db) as store, store.connection() as con:
        (run_id,) = con.execute("SELECT run_id FROM runs WHERE command = 'prompts generate'"
                                ).fetchone()
        made = con.execute(
            "SELECT author, commit_message, commit_extra_info, changes FROM lake.snapshots() "
            f"WHERE snapshot_id > {before} ORDER BY snapshot_id").fetchall()
    assert made, "the command committed nothing"
    for author, message, extra, _ in made:
        info = json.loads(extra)
        assert info["command"] == "prompts generate" and message.startswith("prompts generate")
        assert info["host"] == socket.gethostname() and author.endswith("@" + info["host"])
        assert info["pid"] == os.getpid()  # the cli fixture runs the command in this process
    # From the runs row going in to its final UPDATE, every commit is signed with the run.
    assert [json.loads(extra)["run_id"] for _, _, extra, _ in made] == [run_id] * len(made)
    assert all(message == f"prompts generate {run_id}" for _, message, _, _ in made)
