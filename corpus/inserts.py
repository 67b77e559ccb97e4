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

    ``first_wins``: of several rows with one key the first of ``rows`` is inserted (else an
    arbitrary one, which is cheaper)."""
    if rows.num_rows == 0:
        return 0
    name = f"_absent_{table}"
    columns = rows.column_names
    if isinstance(key, str) and _distinct(rows.column(key)):
        first_by, dedup = None, False  # one row per key already: no aggregate needed
    elif first_wins:
        rows = rows.append_column(ORDINAL, pa.array(range(rows.num_rows), pa.int64()))
        first_by, dedup = ORDINAL, True
    else:
        first_by, dedup = None, True
    con.register(name, rows)
    try:
        return insert_absent_from(con, table, key, name, columns, first_by=first_by,
                                  dedup=dedup)
    finally:
        con.unregister(name)


def _distinct(keys: pa.ChunkedArray) -> bool:
    """Whether no key repeats (and none is null) in ``keys``."""
    return keys.null_count == 0 and pc.count_distinct(keys).as_py() == len(keys)


def insert_absent_from(con: Any, table: str, key: str | Sequence[str], source: str,
                       columns: Sequence[str], *, first_by: str | None = None,
                       dedup: bool = True) -> int:
    """:func:`insert_absent` of the rows of ``source``, a relation in SQL (a registered
    table, ``read_parquet('…')``); returns how many rows were added.

    ``first_by``: a column of ``source`` that orders its rows; of several rows with one key
    the one with the least value is inserted (deterministic, where ``DISTINCT ON`` keeps an
    arbitrary one), through an aggregate of the keys only, not of whole rows. ``dedup=False``:
    the caller knows no key repeats in ``source``.
    """
    keys = [key] if isinstance(key, str) else list(key)
    cols = ", ".join(columns)
    on = ", ".join(keys)
    if not dedup:
        select = f"SELECT {cols} FROM {source}"
    elif first_by is None:
        select = f"SELECT DISTINCT ON ({on}) {cols} FROM {source}"
    else:
        select = (f"SELECT {cols} FROM {source} SEMI JOIN (SELECT {on}, min({first_by}) AS "
                  f"{first_by} FROM {source} GROUP BY ALL) USING ({on}, {first_by})")
    added = con.execute(
        f"INSERT INTO {table} ({cols}) SELECT * FROM ({select}) ANTI JOIN {table} USING ({on})"
    ).fetchone()
    return int(added[0]) if added else 0
