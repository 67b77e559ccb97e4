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


def insert_absent(con: Any, table: str, key: str | Sequence[str], rows: pa.Table) -> int:
    """Insert the ``rows`` whose ``key`` (a column or columns) is not in ``table`` yet, one
    row per key; returns how many rows were added."""
    if rows.num_rows == 0:
        return 0
    keys = [key] if isinstance(key, str) else list(key)
    cols = ", ".join(rows.column_names)
    on = ", ".join(keys)
    name = f"_absent_{table}"
    con.register(name, rows)
    try:
        added = con.execute(
            f"INSERT INTO {table} ({cols}) SELECT DISTINCT ON ({on}) {cols} "
            f"FROM {name} ANTI JOIN {table} USING ({on})").fetchone()
    finally:
        con.unregister(name)
    return int(added[0]) if added else 0

