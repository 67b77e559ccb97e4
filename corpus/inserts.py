"""Identity-keyed inserts that need no key constraint: the one way selfevo adds rows by id.

DuckLake tables have no PRIMARY KEY/UNIQUE, so ``INSERT OR IGNORE``, ``INSERT OR REPLACE``
and ``ON CONFLICT`` fail there ("There are no UNIQUE/PRIMARY KEY constraints that refer to
this table"). :func:`insert_absent` is an anti-join insert that means the same on both back
ends: rows whose key is already in the table are skipped, and duplicates inside one batch
collapse to one row (``DISTINCT ON``). ``ANTI JOIN`` rather than ``NOT IN``: ``NOT IN`` returns
nothing when the subquery holds a NULL.

In a serial transaction (the file store, or a ``Lake`` with DuckLake's own retries off) this
is exact: a commit that lost a race re-runs and its anti-join sees the winner's rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

ORDINAL = "file_row_number"  # the column that orders a source's rows for ``first_by``


def insert_absent(con: Any, table: str, key: str | Sequence[str], rows: pa.Table, *,
                  first_wins: bool = False) -> int:
    """Insert the ``rows`` whose ``key`` (a column or columns) is not in ``table`` yet, one
    row per key; returns how many rows were added.

    ``first_wins`` (one key column): of several rows with one key the first of ``rows`` is
    inserted (else an arbitrary one), and the rows reach DuckDB as a relation, not as a
    registered view: a view dropped inside a transaction keeps its Arrow table alive until
    the commit, so a long transaction of many inserts would hold every batch it inserted."""
    if rows.num_rows == 0:
        return 0
    if first_wins:
        assert isinstance(key, str)
        keys = rows.column(key)
        if not _distinct(keys):
            rows = rows.take(pc.index_in(pc.unique(keys), value_set=keys))  # each key's first
        return _insert_relation(con, table, key, con.from_arrow(rows), rows.column_names)
    name = f"_absent_{table}"
    con.register(name, rows)
    try:
        return insert_absent_from(con, table, key, name, rows.column_names)
    finally:
        con.unregister(name)


def _distinct(keys: pa.ChunkedArray) -> bool:
    """Whether no key repeats (and none is null) in ``keys``."""
    return keys.null_count == 0 and pc.count_distinct(keys).as_py() == len(keys)


def insert_absent_from(con: Any, table: str, key: str | Sequence[str], source: str,
                       columns: Sequence[str], *, first_by: str | None = None) -> int:
    """:func:`insert_absent` of the rows of ``source``, a relation in SQL (a registered
    table, ``read_parquet('…')``); returns how many rows were added.

    ``first_by``: a column of ``source`` that orders its rows; of several rows with one key
    the one with the least value is inserted (deterministic, where ``DISTINCT ON`` keeps an
    arbitrary one), through an aggregate of the keys only, not of whole rows.
    """
    keys = [key] if isinstance(key, str) else list(key)
    cols = ", ".join(columns)
    on = ", ".join(keys)
    if first_by is None:
        select = f"SELECT DISTINCT ON ({on}) {cols} FROM {source}"
    else:
        select = (f"SELECT {cols} FROM {source} SEMI JOIN (SELECT {on}, min({first_by}) AS "
                  f"{first_by} FROM {source} GROUP BY ALL) USING ({on}, {first_by})")
    added = con.execute(
        f"INSERT INTO {table} ({cols}) SELECT * FROM ({select}) ANTI JOIN {table} USING ({on})"
    ).fetchone()
    return int(added[0]) if added else 0


def _insert_relation(con: Any, table: str, key: str, rows: Any, columns: Sequence[str]) -> int:
    """Insert the rows of the relation ``rows`` (one per key) whose key is not in ``table``,
    through the relational API; returns how many were added.

    ``insert_into`` takes every column of the table in order, so the ones ``rows`` lacks get
    their default (``now()`` is the transaction's start, as for a plain INSERT) or NULL."""
    have = set(columns)
    exprs = []
    for name, type_, default in con.execute(
            "SELECT column_name, data_type, column_default FROM duckdb_columns() "
            "WHERE table_name = ? AND schema_name = current_schema() ORDER BY column_index",
            [table]).fetchall():
        quoted = '"' + name.replace('"', '""') + '"'
        exprs.append(quoted if name in have
                     else f"CAST({default or 'NULL'} AS {type_}) AS {quoted}")
    stored = con.table(table).select(f"{key} AS _stored_{key}")
    new = rows.join(stored, f"{key} = _stored_{key}", how="anti").project(", ".join(exprs))
    before = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    new.insert_into(table)
    return int(con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]) - int(before)
