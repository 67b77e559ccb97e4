"""Running a store-level test on both back ends: a DuckDB file and a DuckLake on Postgres.

Decorate a test that takes the ``db`` fixture with :data:`both_stores`: it then runs once with
a fresh store file and once with a fresh DuckLake (a new Postgres database from the session's
server, Parquet under the test's tmp_path; ``conftest.lake_db``). The test body is the same:
every command takes either spec as ``--db``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

both_stores = pytest.mark.parametrize("db", ["file", "lake"], indirect=True)


def store_examples() -> int:
    """Examples for a property test whose every example writes a file and imports it into a
    store (about 0.3 s each): in the fast profile (`make test`) a quarter of its examples
    (10), in the thorough one (`make test-all`) all of them."""
    from hypothesis import settings

    if os.environ.get("HYPOTHESIS_PROFILE", "fast") == "fast":
        return max(10, settings.default.max_examples // 4)
    return settings.default.max_examples


def file_store(why: str) -> pytest.MarkDecorator:
    """Mark a test of the DuckDB file itself (``why``: its lock, its bytes, DuckDB's own
    refusal): its ``db`` is a file even under ``make test-lake`` (which leaves it out), as
    a lake has no such file; its lake counterpart, where there is one, is in
    ``tests/test_lake_*.py``."""
    return pytest.mark.file_store(why)


def store_records(db: str, pairs: list[tuple[dict, dict]], command: str = "test") -> None:
    """Write hand-made (prompt, record) pairs (``corpus.records.make_prompt`` /
    ``make_record``) to the store ``db`` under one run, in one transaction on either back
    end (a lake writes through ``Store.transact`` only)."""
    from corpus.records import insert_prompts, insert_records
    from corpus.store import Store

    with Store.open(db, command=command) as store, store.run(command, {}) as run:
        def write(con) -> None:
            for p, r in pairs:
                insert_prompts(con, [p], run.run_id)
                insert_records(con, [r], run.run_id)

        store.transact(write)


@contextlib.contextmanager
def writing(store) -> Iterator:
    """``with writing(store) as con:`` a write transaction for a test's hand-made rows, on
    either back end. A file store's :meth:`Store.transaction`; on a lake, where production
    code writes only through ``Store.transact(fn)`` (a commit that loses is re-run), one try
    of BEGIN … COMMIT on the store's cursor: a fixture has no other writer to lose to."""
    if not store.spec.is_lake:
        with store.transaction() as con:
            yield con
        return
    with store.connection() as cur:
        cur.execute("BEGIN TRANSACTION")
        try:
            yield cur
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")
