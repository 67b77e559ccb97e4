"""``insert_absent``: the anti-join insert that replaces INSERT OR IGNORE on both back ends."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corpus.inserts import insert_absent
from corpus.lake import Lake
from corpus.store import connect_file
from corpus.storespec import StoreSpec

KEYS = st.sampled_from(["a", "b", "c", "d", "e", "é", "a b", ""])
BATCH = st.lists(st.tuples(KEYS, st.integers(0, 2), st.integers(-5, 5)), max_size=12)


def _table(rows: list[tuple[str, int, int]]) -> pa.Table:
    return pa.table({"k": pa.array([r[0] for r in rows], pa.string()),
                     "n": pa.array([r[1] for r in rows], pa.int32()),
                     "v": pa.array([r[2] for r in rows], pa.int64())})


def _check(con, batches: list[list[tuple[str, int, int]]], key: tuple[str, ...]) -> None:
    """Apply ``batches`` in turn and compare with a model: each key keeps its first batch's
    row, a batch adds one row per new key, and the count returned is what was added."""
    width = len(key)
    kept: dict[tuple, set[int]] = {}  # key -> values its first batch offered
    for batch in batches:
        offered: dict[tuple, set[int]] = {}
        for r in batch:
            offered.setdefault(r[:width], set()).add(r[2])
        new = {k: vs for k, vs in offered.items() if k not in kept}
        assert insert_absent(con, "t", key[0] if width == 1 else key, _table(batch)) == len(new)
        kept.update(new)
    cols = ", ".join(key)
    got = con.execute(f"SELECT {cols}, v FROM t ORDER BY {cols}").fetchall()
    assert [g[:width] for g in got] == sorted(kept)
    assert all(g[width] in kept[g[:width]] for g in got)


@pytest.mark.parametrize("key", [("k",), ("k", "n")])
@given(batches=st.lists(BATCH, max_size=5))
def test_insert_absent_on_a_keyed_file_store_table(tmp_path_factory, key, batches):
    con = connect_file(tmp_path_factory.mktemp("f") / "s.duckdb", read_only=False)
    try:
        con.execute(f"CREATE TABLE t (k VARCHAR, n INTEGER, v BIGINT, PRIMARY KEY ({', '.join(key)}))")
        _check(con, batches, key)
    finally:
        con.close()


@pytest.fixture(scope="module")
def file_lake(tmp_path_factory):
    """A DuckDB-file-catalog lake (no Postgres needed): its tables have no keys at all."""
    root = tmp_path_factory.mktemp("lake")
    with Lake(StoreSpec.parse(f"ducklake:{root / 'c.ducklake'}")) as lake:
        yield lake


@pytest.mark.parametrize("key", [("k",), ("k", "n")])
@settings(max_examples=15)
@given(batches=st.lists(BATCH, max_size=4))
def test_insert_absent_on_a_lake_table_without_keys(file_lake, key, batches):
    con = file_lake.cursor()
    try:
        con.execute("CREATE OR REPLACE TABLE t (k VARCHAR, n INTEGER, v BIGINT)")
        _check(con, batches, key)
    finally:
        con.close()


def test_the_old_statement_fails_on_a_lake(file_lake):
    con = file_lake.cursor()
    con.execute("CREATE OR REPLACE TABLE t (k VARCHAR, n INTEGER, v BIGINT)")
    with pytest.raises(duckdb.BinderException, match="UNIQUE/PRIMARY KEY"):
        con.execute("INSERT OR IGNORE INTO t VALUES ('a', 0, 1)")
    assert insert_absent(con, "t", "k", _table([("a", 0, 1), ("a", 0, 2)])) == 1


def test_an_empty_batch_adds_nothing(file_lake):
    con = file_lake.cursor()
    con.execute("CREATE OR REPLACE TABLE t (k VARCHAR, n INTEGER, v BIGINT)")
    assert insert_absent(con, "t", "k", _table([])) == 0


# -- RowGroupInserter: the import's inserts within one long transaction ---------------------

ROWS = st.lists(st.tuples(KEYS, st.integers(-5, 5)), max_size=8)


@settings(max_examples=60)
@given(stored=st.lists(KEYS, max_size=3, unique=True), batches=st.lists(ROWS, max_size=6),
       group=st.integers(1, 4))
def test_row_group_inserter_keeps_the_first_row_of_each_new_key_in_order(
        tmp_path_factory, stored, batches, group):
    """Against a model: a stored key is never inserted again; of a new key, the first row of
    the first batch offering it lands; rows land in the order offered, whatever the row
    group size (small here, so batches straddle row groups)."""
    from corpus import inserts

    con = connect_file(tmp_path_factory.mktemp("g") / "s.duckdb", read_only=False)
    try:
        con.execute("CREATE TABLE t (k VARCHAR PRIMARY KEY, v BIGINT, note VARCHAR DEFAULT 'd')")
        for k in stored:
            con.execute("INSERT INTO t (k, v) VALUES (?, 99)", [k])
        expected, seen = [], set(stored)
        for batch in batches:
            for k, v in batch:
                if k not in seen:
                    seen.add(k)
                    expected.append((k, v, "d"))
        con.execute("BEGIN")
        writer = inserts.RowGroupInserter(con, "t", "k", row_group=group)
        for batch in batches:
            writer.add(pa.table({"k": pa.array([k for k, _ in batch], pa.string()),
                                 "v": pa.array([v for _, v in batch], pa.int64())}))
        assert writer.close() == len(expected)
        con.execute("COMMIT")
        got = con.execute("SELECT k, v, note FROM t ORDER BY rowid").fetchall()
        assert got[len(stored):] == expected
        assert [g[:2] for g in got[:len(stored)]] == [(k, 99) for k in stored]
    finally:
        con.close()


def _in_memory_rows_bytes(con) -> int:
    return con.execute("SELECT sum(memory_usage_bytes) FROM duckdb_memory() "
                       "WHERE tag = 'IN_MEMORY_TABLE'").fetchone()[0]


def test_row_group_inserter_lets_duckdb_write_a_long_transaction_as_it_goes(tmp_path):
    """Why it exists: the same 400k rows offered in batches of 100k stay in the open
    transaction's memory when each batch is one INSERT, and mostly go to the file when whole
    row groups are inserted (DuckDB writes a transaction's rows early only in whole row
    groups of one INSERT)."""
    from corpus.inserts import RowGroupInserter

    def batches():
        for lo in range(0, 400_000, 100_000):
            ids = pa.array([f"id-{i:08d}" for i in range(lo, lo + 100_000)])
            yield pa.table({"k": ids, "text": pc.binary_join_element_wise(
                ids, "a long enough text to weigh something in memory", " ")})

    held = {}
    for how in ("per batch", "row groups"):
        con = connect_file(tmp_path / f"{how}.duckdb", read_only=False)
        con.execute("CREATE TABLE t (k VARCHAR PRIMARY KEY, text VARCHAR)")
        con.execute("BEGIN")
        if how == "per batch":
            for b in batches():
                insert_absent(con, "t", "k", b)
        else:
            writer = RowGroupInserter(con, "t", "k")
            for b in batches():
                writer.add(b)
            writer.close()
        assert con.execute("SELECT count(*) FROM t").fetchone()[0] == 400_000
        held[how] = _in_memory_rows_bytes(con)
        con.execute("COMMIT")
        con.close()
    assert held["row groups"] * 4 < held["per batch"], held
