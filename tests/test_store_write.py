"""``Store.transact(fn)``: the callable, re-runnable form of a write transaction."""

from __future__ import annotations

import pytest

from corpus import Store
from corpus.records import insert_prompts, make_prompt


def _count(store: Store) -> int:
    return store.query("SELECT count(*) FROM prompts")[0][0]


def test_write_returns_what_the_body_returns(db):
    with Store.open(db) as store, store.run("test", {}) as run:
        rows = [make_prompt(f"q{i}") for i in range(5)]
        assert store.transact(lambda con: insert_prompts(con, rows, run.run_id)) == 5
        assert store.transact(lambda con: insert_prompts(con, rows, run.run_id)) == 0
        assert _count(store) == 5


def test_a_failing_body_leaves_nothing(db):
    with Store.open(db) as store, store.run("test", {}) as run:

        def body(con):
            insert_prompts(con, [make_prompt("kept out")], run.run_id)
            raise ValueError("late failure")

        with pytest.raises(ValueError, match="late failure"):
            store.transact(body)
        assert _count(store) == 0


def test_a_read_only_store_refuses_transact(db):
    Store.open(db).close()
    with pytest.raises(Exception, match="read-only"):
        Store.open_readonly(db).transact(lambda con: None)
