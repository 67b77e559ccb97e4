"""DuckLake building blocks on a real Postgres: schema parity, retries, identity, time travel."""

from __future__ import annotations

import multiprocessing
import random
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from corpus.errors import CorpusError
from corpus.lake import CommitConflict, Lake, RetryPolicy, current_snapshot, is_commit_conflict
from corpus.lakeschema import (
    create_schema,
    duplicate_ids,
    identity_keys,
    reconcile,
    schema_statements,
)
from corpus.migrations import MIGRATIONS, migrate
from corpus.storespec import StoreSpec

FAST = RetryPolicy(attempts=30, base=0.005, cap=0.2)


@pytest.fixture(params=["postgres", "duckdb"])
def spec(request, tmp_path: Path) -> StoreSpec:
    """A new lake on each catalog kind: a Postgres database, or a DuckDB catalog file."""
    if request.param == "postgres":
        return StoreSpec.parse(request.getfixturevalue("lake_db"))
    return StoreSpec.parse(f"ducklake:{tmp_path}/catalog.ducklake")


def _described(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    # DuckLake reports a missing default as 'NULL' and a literal one quoted ('0'): same meaning.
    return con.execute(
        "SELECT table_name, column_name, data_type, is_nullable, "
        "trim(coalesce(column_default, 'NULL'), '''') FROM duckdb_columns() "
        "WHERE database_name = current_database() ORDER BY ALL").fetchall()


def test_the_lake_schema_matches_the_file_store(spec: StoreSpec, tmp_path: Path) -> None:
    file = duckdb.connect(str(tmp_path / "file.duckdb"))
    migrate(file)
    with Lake(spec) as lake:
        assert lake.transact(create_schema) == [m.__name__ for m in MIGRATIONS]
        con = lake.cursor()
        assert _described(con) == _described(file)  # every table and view, column by column
        macros = "SELECT function_name FROM duckdb_functions() WHERE function_type = 'macro' " \
                 "AND database_name = current_database() ORDER BY 1"
        assert con.execute(macros).fetchall() == file.execute(macros).fetchall()
        con.execute("INSERT INTO runs (run_id, command, config, code_version, started_at, "
                    "status) VALUES ('r1', 'curate', '{}', 'v', now(), 'ok')")
        assert con.execute("SELECT latest_run('curate'), kept_latest('h1:x')").fetchone() == (
            "r1", False)
        with pytest.raises(CorpusError, match="already has tables"):
            lake.transact(create_schema)


def test_identity_keys_are_the_file_stores_primary_keys_and_the_bulk_tables_ids() -> None:
    keys = identity_keys()
    assert keys["prompts"] == ("prompt_id",)
    assert keys["records"] == ("record_id",)
    assert keys["calls"] == ("call_id",)
    assert keys["snapshot_records"] == ("snapshot_id", "record_id")
    assert keys["evolve_prompts"] == ("evolve", "round", "prompt_id")
    assert not any("PRIMARY KEY" in s or "UNIQUE" in s for s in schema_statements())


def _prompt_rows(rng: random.Random, n: int) -> list[tuple[str, str]]:
    """(prompt_id, run_id) rows with many repeated ids across runs."""
    return [(f"p{rng.randrange(n // 3 + 1)}", f"r{rng.randrange(5)}") for _ in range(n)]


@pytest.mark.parametrize("seed", range(3))
def test_reconcile_keeps_the_smallest_run_per_id_whatever_the_commit_order(
        seed: int, tmp_path: Path) -> None:
    rng = random.Random(seed)
    rows = _prompt_rows(rng, 60)
    expected = {}
    for pid, run in rows:
        expected[pid] = min(run, expected.get(pid, run))
    results = []
    for order in range(2):  # the same rows, committed in two different orders and groupings
        shuffled = rows[:]
        random.Random(order).shuffle(shuffled)
        with Lake(StoreSpec.parse(f"ducklake:{tmp_path}/c{order}.ducklake")) as lake:
            lake.transact(create_schema)
            for i in range(0, len(shuffled), 7):
                lake.transact(lambda c, part=shuffled[i:i + 7]: c.executemany(
                    "INSERT INTO prompts (prompt_id, text, run_id) VALUES (?, 'same text', ?)",
                    [list(r) for r in part]))
            con = lake.cursor()
            assert duplicate_ids(con)  # the rows above repeat ids
            removed = lake.transact(lambda c: reconcile(c, "prompts"))
            assert removed == len(rows) - len(expected)
            assert duplicate_ids(con) == {}
            results.append(dict(con.execute("SELECT prompt_id, run_id FROM prompts").fetchall()))
    assert results[0] == results[1] == expected


def test_reconcile_scoped_to_a_run_touches_only_its_ids(tmp_path: Path) -> None:
    with Lake(StoreSpec.parse(f"ducklake:{tmp_path}/c.ducklake")) as lake:
        lake.transact(create_schema)
        con = lake.cursor()
        con.execute("INSERT INTO prompts (prompt_id, text, run_id) VALUES "
                    "('a', 't', 'r1'), ('a', 't', 'r2'), ('b', 't', 'r1'), ('b', 't', 'r3')")
        assert lake.transact(lambda c: reconcile(c, "prompts", run_id="r2")) == 1
        assert sorted(con.execute("SELECT prompt_id, run_id FROM prompts").fetchall()) == [
            ("a", "r1"), ("b", "r1"), ("b", "r3")]
        with pytest.raises(CorpusError, match="no run_id"):
            reconcile(con, "snapshot_records", run_id="r1")


def _insert_absent(con: duckdb.DuckDBPyConnection, ids: list[str], run: str) -> None:
    con.register("_in", pa.table({"id": ids}))
    con.execute("INSERT INTO prompts (prompt_id, text, run_id) SELECT id, 'text', ? FROM _in "
                "WHERE id NOT IN (SELECT prompt_id FROM prompts)", [run])
    con.unregister("_in")


def test_a_lost_commit_is_rerun_and_its_anti_join_sees_the_winner(lake_db: str) -> None:
    spec = StoreSpec.parse(lake_db)
    with Lake(spec) as a, Lake(spec) as b:
        a.transact(create_schema)
        calls = []

        def body(con: duckdb.DuckDBPyConnection) -> None:
            calls.append(1)
            con.execute("SELECT count(*) FROM prompts").fetchall()  # the transaction reads
            if len(calls) == 1:  # another writer commits the same id meanwhile
                b.transact(lambda c: _insert_absent(c, ["x"], "rB"))
            _insert_absent(con, ["x", "y"], "rA")

        a.transact(body, policy=FAST)
        assert len(calls) == 2
        rows = a.cursor().execute("SELECT prompt_id, run_id FROM prompts ORDER BY 1").fetchall()
        assert rows == [("x", "rB"), ("y", "rA")]


def test_rebasing_retries_let_a_duplicate_in_and_reconcile_removes_it(lake_db: str) -> None:
    # The DuckLake behaviour the design rests on: its own retries re-commit without re-reading.
    spec = StoreSpec.parse(lake_db)
    with Lake(spec, ducklake_retries=10) as a, Lake(spec) as b:
        a.transact(create_schema)

        def body(con: duckdb.DuckDBPyConnection) -> None:
            con.execute("SELECT count(*) FROM prompts").fetchall()
            b.transact(lambda c: _insert_absent(c, ["x"], "r2"))
            _insert_absent(con, ["x"], "r1")

        a.transact(body)
        con = a.cursor()
        assert duplicate_ids(con) == {"prompts": 1}
        assert a.transact(lambda c: reconcile(c, "prompts", run_id="r1")) == 1
        assert con.execute("SELECT prompt_id, run_id FROM prompts").fetchall() == [("x", "r1")]


def test_endless_conflicts_end_in_one_clear_error(lake_db: str) -> None:
    spec = StoreSpec.parse(lake_db)
    with Lake(spec) as a, Lake(spec) as b:
        a.transact(create_schema)

        def body(con: duckdb.DuckDBPyConnection) -> None:
            con.execute("SELECT count(*) FROM runs").fetchall()
            b.transact(lambda c: _insert_absent(c, [f"id{random.random()}"], "rB"))
            _insert_absent(con, ["mine"], "rA")

        with pytest.raises(CommitConflict, match="gave up after 3 commit conflicts") as err:
            a.transact(body, policy=RetryPolicy(attempts=3, base=0.001, cap=0.01))
        assert "\n" not in str(err.value)
        assert a.cursor().execute("SELECT count(*) FROM prompts WHERE prompt_id = 'mine'"
                                  ).fetchone() == (0,)


def test_other_errors_are_not_retried(tmp_path: Path) -> None:
    with Lake(StoreSpec.parse(f"ducklake:{tmp_path}/c.ducklake")) as lake:
        calls = []

        def body(con: duckdb.DuckDBPyConnection) -> None:
            calls.append(1)
            con.execute("SELECT * FROM no_such_table")

        with pytest.raises(duckdb.CatalogException):
            lake.transact(body)
        assert calls == [1]
        assert not is_commit_conflict(duckdb.TransactionException("cannot rollback"))


def test_time_travel_sees_the_lake_as_it_was(spec: StoreSpec) -> None:
    with Lake(spec) as lake:
        lake.transact(create_schema)
        lake.transact(lambda c: _insert_absent(c, ["a", "b"], "r1"))
        then = lake.transact(current_snapshot)
        lake.transact(lambda c: _insert_absent(c, ["c"], "r2"))
        lake.transact(lambda c: c.execute("DELETE FROM prompts WHERE prompt_id = 'a'"))
        now = lake.cursor().execute("SELECT prompt_id FROM prompts ORDER BY 1").fetchall()
        assert now == [("b",), ("c",)]
    with Lake(spec, version=then) as old:
        con = old.cursor()
        assert con.execute("SELECT prompt_id FROM prompts ORDER BY 1").fetchall() == [("a",),
                                                                                     ("b",)]
        assert con.execute("SELECT count(*) FROM records_full").fetchone() == (0,)  # views too
        with pytest.raises(duckdb.Error, match="read-only"):
            con.execute("INSERT INTO runs (run_id) VALUES ('x')")


def _writer(lake_db: str, w: int, batches: int) -> None:
    with Lake(StoreSpec.parse(lake_db)) as lake:
        for b in range(batches):
            ids = [f"shared-{b}-{i}" for i in range(20)] + [f"own-{w}-{b}-{i}" for i in range(20)]

            def batch(con: duckdb.DuckDBPyConnection, ids: list[str] = ids, b: int = b) -> None:
                _insert_absent(con, ids, f"r{w}")
                con.execute("INSERT INTO attempts (call_id, attempt, status, run_id) "
                            "VALUES (?, ?, 'ok', ?)", [f"w{w}", b, f"r{w}"])

            lake.transact(batch, policy=FAST)


def test_concurrent_writers_lose_nothing_and_duplicate_nothing(lake_db: str) -> None:
    writers, batches = 3, 4
    with Lake(StoreSpec.parse(lake_db)) as lake:
        lake.transact(create_schema)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(lake_db, w, batches)) for w in range(writers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0] * writers
    with Lake(StoreSpec.parse(lake_db), read_only=True) as lake:
        con = lake.cursor()
        assert duplicate_ids(con) == {}
        assert con.execute("SELECT count(*) FROM prompts").fetchone() == (
            batches * 20 + writers * batches * 20,)
        assert con.execute("SELECT count(*) FROM attempts").fetchone() == (writers * batches,)


def test_a_lake_that_cannot_open_says_so_in_one_line_without_the_password(
        postgres, tmp_path: Path) -> None:
    spec = StoreSpec.parse(f"ducklake:postgres:{postgres.conninfo('no_such_db')} "
                           f"password=S3cret-pw data_path={tmp_path}")
    with pytest.raises(CorpusError) as err:
        Lake(spec)
    assert "cannot open ducklake:postgres:dbname=no_such_db" in str(err.value)
    assert 'database "no_such_db" does not exist' in str(err.value)
    assert "S3cret-pw" not in str(err.value) and "\n" not in str(err.value)


def test_writers_opening_a_new_lake_at_the_same_moment_all_get_in(lake_db: str) -> None:
    # Each one's ATTACH creates DuckLake's catalog tables in Postgres; the losers of that
    # race saw "duplicate key value violates unique constraint" and failed to open.
    import threading

    from corpus import Store

    start, errors, opened = threading.Barrier(3), [], []

    def open_store() -> None:
        try:
            start.wait()
            with Store.open(lake_db, command="init") as store:
                opened.append(store.query("SELECT count(*) FROM _migrations")[0][0])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(opened) == 3 and len(set(opened)) == 1
