"""``selfevo store copy SRC DST`` (issue 15, point 6): file -> DuckLake -> file, verified.

A real Postgres catalog (``lake_db``, tests/postgres.py) and a DuckDB-file catalog; the round
trip must give identical per-table content hashes, and a non-empty DST is refused in one line
with nothing written.
"""

from __future__ import annotations

import json

import duckdb
import pytest

from corpus import Store
from corpus.importers import import_records
from corpus.snapshots import create_snapshot
from corpus.storecopy import COMMAND, columns, copy_store, table_hash, tables

ROWS = [{"prompt": f"What is {i} + {i}?", "kind": ["meta", "self", "qa"][i % 3],
         "round": i % 2, "response": f"It is {2 * i}.", "feedback": "Verdict: correct",
         "verdict": "correct", "gold_answer": str(2 * i), "meta": {"i": i, "é": [1.5, None]}}
        for i in range(25)]


def _source(tmp_path) -> str:
    db = str(tmp_path / "src.duckdb")
    f = tmp_path / "r.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    with Store.open(db) as store:
        import_records(store, f)
        create_snapshot(store, "all", "true")
    return db


def _hashes(db: str) -> dict[str, tuple[int, str]]:
    """Per-table (count, hash) of a file store, leaving out the copies' own run rows."""
    con = duckdb.connect(":memory:")
    con.execute(f"ATTACH '{db}' AS s (READ_ONLY)")
    out = {}
    for t in tables(con, "s"):
        where = f"command <> '{COMMAND}'" if t == "runs" else "true"
        out[t] = table_hash(con, "s", t, columns(con, "s", t), where)
    con.close()
    return out


def test_file_to_postgres_lake_and_back_is_identical(lake_db, tmp_path):
    src = _source(tmp_path)
    there = copy_store(src, lake_db)
    assert there.rows["records"] == 25 and there.rows["prompts"] == 25
    back = tmp_path / "back.duckdb"
    again = copy_store(lake_db, str(back))
    assert again.rows == there.rows | {"runs": there.rows["runs"] + 1}  # + the first copy's
    before, after = _hashes(src), _hashes(str(back))
    assert before == after and before["records"][0] == 25
    with Store.open_readonly(back) as store:  # one run row per copy, each ok
        assert store.query("SELECT status, counts->>'records' FROM runs WHERE command = ? "
                           "ORDER BY run_id", [COMMAND]) == [("ok", "25"), ("ok", "25")]


def test_duckdb_catalog_lake_round_trip(tmp_path):
    src = _source(tmp_path)
    lake = f"ducklake:{tmp_path / 'c.ducklake'} data_path={tmp_path / 'data'}"
    copy_store(src, lake)
    copy_store(lake, str(tmp_path / "back.duckdb"))
    assert _hashes(src) == _hashes(str(tmp_path / "back.duckdb"))


def test_a_non_empty_destination_is_refused_in_one_line(cli, lake_db, tmp_path):
    src = _source(tmp_path)
    cli("store", "copy", src, lake_db)
    for dst in (lake_db, src):
        out = cli("store", "copy", src, dst, exit_code=1).output
        lines = out.strip().splitlines()
        assert len(lines) == 1 and "is not empty" in out, out
    back = tmp_path / "back.duckdb"
    cli("store", "copy", lake_db, str(back))
    assert _hashes(src) == _hashes(str(back))  # the refused copy added nothing to the lake


def test_a_missing_source_is_one_line(cli, tmp_path):
    out = cli("store", "copy", str(tmp_path / "nope.duckdb"), str(tmp_path / "d.duckdb"),
              exit_code=1).output
    assert out.strip().count("\n") == 0 and "no store at" in out


@pytest.mark.parametrize("table", ["prompts", "records", "runs", "snapshots"])
def test_the_hash_sees_any_change_of_a_row(tmp_path, table):
    src = _source(tmp_path)
    before = _hashes(src)[table]
    con = duckdb.connect(src)
    col = {"prompts": "gold_answer", "records": "feedback", "runs": "error",
           "snapshots": "note"}[table]
    con.execute(f"UPDATE {table} SET {col} = 'changed' WHERE rowid = (SELECT min(rowid) FROM {table})")
    con.close()
    after = _hashes(src)[table]
    assert before[0] == after[0] and before[1] != after[1]
