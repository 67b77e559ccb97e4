"""Property suite: random expressions and adversarial strings as SQL conditions (issue 12).

Whatever the text, either :class:`corpus.sqlfragment.SqlCondition` refuses it in one line, or
every path that evaluates a condition (curation's keyset pagination and count, snapshot
selection, ``eval --bench store``) terminates, returns only records of the store in order,
and leaves the store as it was: its file's bytes (read-only store) or every row (a store
opened for writing), with no extension installed and no request to the network.

``make test`` runs a modest number of examples; ``make test-all`` (the slow marker) many more.
"""

from __future__ import annotations

import sys
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sqlstore import build_store, file_digest, recording_server, store_rows  # noqa: E402

from corpus.snapshots import select_record_ids  # noqa: E402
from corpus.sqlfragment import SqlCondition, SqlFragmentError  # noqa: E402
from corpus.store import Store  # noqa: E402
from curation.selection import Selection, count_selected, iter_selected  # noqa: E402
from schemas.errors import UserError  # noqa: E402

COLUMNS = ["kind", "round", "verdict", "response", "prompt", "record_id", "split", "source",
           "gold_answer", "feedback", "refinement", "prompt_id", "created_at"]
DANGEROUS = [
    "x IN (SELECT * FROM read_csv('{url}/x.csv'))", "x IN (SELECT * FROM '{url}/y.parquet')",
    "x IN (SELECT * FROM sqlite_scan('{db}', 'runs'))", "getenv('HOME') IS NULL",
    "x IN (SELECT * FROM query('DELETE FROM records'))", "nextval('s') > 0",
    "x IN (SELECT * FROM read_text('/etc/hostname'))", "st_area(NULL) IS NULL",
    "x IN (SELECT * FROM query_table('records'))", "x IN (SELECT * FROM glob('/*'))",
]
PIECES = [
    ";", "--", "/*", "*/", "(", ")", "'", '"', "$$", "\\", "\n", " ", "1=1", " OR ", " AND ",
    "NOT ", "true", "kind", "= 'meta'", "record_id", "DELETE FROM records", "DROP TABLE prompts",
    "INSERT INTO runs VALUES (1)", "UPDATE calls SET status = 'x'", "COPY records TO 'x.csv'",
    "ATTACH ':memory:' AS m", "INSTALL sqlite", "LOAD httpfs", "SET autoload_known_extensions=1",
    "CALL checkpoint()", "PRAGMA version", "SELECT", " UNION ", " ORDER BY 1", " LIMIT 1",
    "read_csv('{url}/z.csv')", "sqlite_scan('x', 'y')", "getenv('HOME')", "query('SELECT 1')",
    "'é\u202eü'", "\x00", "?", "$1", "E'\\''", "(SELECT 1)", "records", "FROM", "WHERE",
]


def _literal(value: object) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def expressions(url: str, db: str) -> st.SearchStrategy[str]:
    """Random, mostly well-formed conditions over records_full (and some that read outside)."""
    leaf = st.one_of(
        st.sampled_from(COLUMNS), st.integers(-5, 5).map(str), st.just("NULL"),
        st.sampled_from(["true", "false"]), st.text(max_size=6).map(_literal),
    )

    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.one_of(
            st.tuples(inner, st.sampled_from(["=", "<>", "<", ">=", "LIKE", "||"]), inner)
            .map(lambda t: f"{t[0]} {t[1]} {t[2]}"),
            st.tuples(inner, st.sampled_from(["AND", "OR"]), inner)
            .map(lambda t: f"{t[0]} {t[1]} {t[2]}"),
            inner.map(lambda e: f"NOT ({e})"), inner.map(lambda e: f"({e})"),
            inner.map(lambda e: f"{e} IS NULL"),
            st.tuples(st.sampled_from(["length", "lower", "coalesce", "abs"]), inner)
            .map(lambda t: f"{t[0]}({t[1]})"),
            inner.map(lambda e: f"record_id IN (SELECT record_id FROM latest_decisions "
                                f"WHERE {e})"),
            inner.map(lambda e: f"prompt_id IN (SELECT prompt_id FROM prompts WHERE {e})"),
        )

    safe = st.recursive(leaf, extend, max_leaves=8)
    bad = st.sampled_from(DANGEROUS).map(lambda d: d.format(url=url, db=db))
    return st.one_of(safe, safe, st.tuples(safe, bad).map(lambda t: f"({t[0]}) OR {t[1]}"))


def adversarial(url: str) -> st.SearchStrategy[str]:
    """Strings glued from statement separators, comments, quotes, parentheses, DML, table
    functions and unicode."""
    piece = st.one_of(st.sampled_from(PIECES).map(lambda p: p.format(url=url)),
                      st.text(max_size=4))
    return st.lists(piece, min_size=1, max_size=12).map("".join)


def evaluate_everywhere(store: Store, text: str, ids: list[str]) -> None:
    """Refused, or evaluated by every path: bounded, in order, only the store's records."""
    from selfevo.evaluate import _store_items

    try:
        cond = SqlCondition(text)
    except SqlFragmentError as exc:
        assert "\n" not in str(exc)
        return
    sel = Selection(where=cond)
    try:
        n = count_selected(store, sel)
    except UserError:
        return  # a binder error in the user's SQL, said in one line
    seen: list[str] = []
    try:
        for pages, chunk in enumerate(iter_selected(store, sel, ["kind"], chunk_size=3), 1):
            assert pages <= len(ids) // 3 + 1, "keyset pagination did not terminate"
            seen += [r["record_id"] for r in chunk]
    except duckdb.Error:
        pass  # a run-time error of the user's SQL (a bad cast …) on some page
    assert seen == sorted(set(seen)) and set(seen) <= set(ids) and len(seen) <= n
    with _anything(), store.connection() as con:
        assert set(select_record_ids(con, cond)) <= set(ids)
    with _anything():
        _store_items(store, cond, None)


class _anything:
    """Expected failures of evaluating a user's condition: a one-line user error or DuckDB's."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: object) -> bool:
        if exc is None:
            return False
        if isinstance(exc, UserError | duckdb.Error):
            assert "\n" not in str(exc) or isinstance(exc, duckdb.Error)
            return True
        return False


@pytest.fixture
def world(tmp_path, monkeypatch):
    """(db, record ids, url of a recording HTTP server) for one property."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    db = str(tmp_path / "props.duckdb")
    ids = build_store(db)
    with recording_server() as (url, hits):
        yield db, ids, url
    assert hits == [], "a condition reached the network"
    assert not (home / ".duckdb").exists(), "an extension was installed"


def _run(world, examples: int) -> None:
    db, ids, url = world
    texts = st.one_of(expressions(url, db), adversarial(url))

    def check(store: Store) -> None:
        @settings(max_examples=examples, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow])
        @given(texts)
        def condition(text: str) -> None:
            evaluate_everywhere(store, text, ids)

        condition()

    digest = file_digest(db)  # a read-only store: its file's bytes must not change
    with Store.open_readonly(db) as store:
        check(store)
    assert file_digest(db) == digest
    rows = store_rows(db)  # opened for writing (as curate, collect, snapshot open it)
    with Store.open(db, command="props") as store:
        check(store)
    assert store_rows(db) == rows


def test_conditions_never_change_the_store(world):
    _run(world, examples=30)


@pytest.mark.slow
def test_conditions_never_change_the_store_many_examples(world):
    _run(world, examples=1500)
