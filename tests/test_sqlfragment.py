"""Every user SQL condition is one checked expression (issue 12, defects 1, 2 and 7).

The reproductions are the issue's own strings; what matters is the store before and after.
"""

from __future__ import annotations

import sys
from pathlib import Path

import duckdb
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from backends import file_store  # noqa: E402
from sqlstore import build_store, recording_server, store_rows  # noqa: E402

from corpus.sqlfragment import SqlCondition, SqlFragmentError, read_only  # noqa: E402
from corpus.store import Store, connect_file  # noqa: E402

DEFECT_1_COLLECT = ("true; DELETE FROM records; DELETE FROM calls; SELECT prompt_id, text, "
                    "gold_answer, gold_rationale, source FROM prompts WHERE false")
DEFECT_1_EVAL = ("true); DELETE FROM prompts WHERE true; SELECT prompt_id, text, gold_answer "
                 "FROM prompts WHERE (true")
DEFECT_2 = "1=1) OR (1=1"


# -- the type ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    "kind = 'meta'",
    "kind = 'meta' AND verdict = 'correct' -- mine",
    "record_id IN (SELECT record_id FROM latest_decisions WHERE step = 'verdict' AND passed)",
    "kept_step(record_id, 'verdict')",
    "a = ')' OR \"we(ird\" = 1 OR b = $$)$$",
    "(((round)) = 1)",
    "x IN (SELECT unnest([1, 2])) OR y IN (SELECT range FROM range(3))",
    "prompt LIKE '%é;ü%'",
])
def test_one_expression_is_accepted_and_composed_in_parentheses(text):
    cond = SqlCondition(text, "--where")
    assert cond.text == text and cond.sql == f"({text}\n)" and str(cond) == cond.sql
    assert SqlCondition.of(cond) is cond and SqlCondition.of(None) is None


@pytest.mark.parametrize(("text", "message"), [
    (DEFECT_1_COLLECT, "without ';'"),
    (DEFECT_1_EVAL, "closes a parenthesis it did not open"),
    (DEFECT_2, "closes a parenthesis it did not open"),
    ("true) UNION (SELECT 'x'", "closes a parenthesis it did not open"),
    ("1) ORDER BY (1", "closes a parenthesis it did not open"),
    ("(kind = 'meta'", "opens 1 more parenthesis"),
    ("kind = 'meta' /* x", "does not parse"),
    ("kind = 'meta", "does not parse"),
    ("DELETE FROM records", "does not parse"),
    ("", "is empty"),
    ("kind = ?", "parameters"),
    ("kind = $1", "parameters"),
    ("x IN (SELECT * FROM read_csv('https://example.com/x.csv'))", "read_csv() is not allowed"),
    ("x IN (SELECT * FROM 'https://example.com/x.csv')", "by plain name"),
    ("x IN (SELECT * FROM '/etc/passwd')", "by plain name"),
    ("x IN (SELECT * FROM sqlite_scan('a.db', 't'))", "sqlite_scan() is not allowed"),
    ("x IN (SELECT * FROM query('DELETE FROM records'))", "query() is not allowed"),
    ("x IN (SELECT * FROM query_table('records'))", "query_table() is not allowed"),
    ("x IN (SELECT * FROM glob('/*'))", "glob() is not allowed"),
    ("x IN (SELECT * FROM other.main.records)", "'other.main.records'"),
    ("getenv('HOME') = 'x'", "getenv()"),
    ("nextval('seq') > 0", "nextval()"),
    ("current_setting('s3_secret_access_key') = 'x'", "current_setting()"),
    ("kind = 'a\x00'", "NUL"),
])
def test_anything_else_is_refused_in_one_line_naming_the_flag(text, message):
    with pytest.raises(SqlFragmentError) as err:
        SqlCondition(text, "--prompts")
    assert message in str(err.value) and str(err.value).startswith("--prompts")
    assert "\n" not in str(err.value)


def test_read_only_evaluation_cannot_write(db):
    build_store(db)
    with Store.open(db) as store, store.connection() as con:
        with read_only(con) as cur, pytest.raises(duckdb.Error, match="read-only"):
            cur.execute("DELETE FROM records")
        assert con.execute("SELECT count(*) FROM records").fetchone()[0] == 12


# -- defect 1: collect / eval / evolve / snapshot --where ran any SQL --------------------------
@pytest.fixture
def collected(db, server, cli, monkeypatch):
    """A store with prompts, records and calls from a real collection."""
    from test_collect import collect_args, seed

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-sqlsafe-0123456789abcdef")
    seed(db, 3)
    cli(*collect_args(db, server))
    server.reset_log()
    return db


@pytest.mark.parametrize("dry", [True, False])
def test_collect_where_with_a_second_statement_is_refused_before_anything_runs(
        collected, server, cli, dry):
    from test_collect import collect_args

    before = store_rows(collected)
    assert before["records"] and before["calls"]
    out = cli(*collect_args(collected, server, "--where", DEFECT_1_COLLECT,
                            *(["--dry-run"] if dry else [])), exit_code=1).output
    assert "--where must be one SQL condition" in out and out.count("\n") == 1
    assert store_rows(collected) == before and server.chat_requests() == []


@pytest.mark.parametrize("where", [DEFECT_1_EVAL, DEFECT_2])
def test_eval_store_where_is_refused_and_prompts_survive(collected, server, cli, where):
    before = store_rows(collected)
    out = cli("eval", "run", "--model", f"openai:m@{server.base_url}", "--bench", "store",
              "--where", where, "--db", collected, exit_code=1).output
    assert "--where closes a parenthesis" in out and "Traceback" not in out
    assert store_rows(collected) == before and server.chat_requests() == []


@pytest.mark.parametrize("flag", ["--prompts", "--eval"])
def test_evolve_conditions_are_refused_before_the_store_is_opened(collected, server, cli, flag):
    args = {"--prompts": "split = 'train'", "--eval": "store:split = 'test'"}
    args[flag] = DEFECT_1_EVAL if flag == "--prompts" else f"store:{DEFECT_1_EVAL}"
    before = store_rows(collected)
    out = cli("evolve", "--db", collected, "--student", f"openai:m@{server.base_url}",
              "--base", "b", "--prompts", args["--prompts"], "--eval", args["--eval"],
              exit_code=1).output
    assert "closes a parenthesis it did not open" in out and out.count("\n") == 1
    assert (flag if flag == "--prompts" else "--eval store:SQL") in out
    assert store_rows(collected) == before and server.chat_requests() == []


def test_snapshot_where_is_refused(db, cli):
    build_store(db)
    before = store_rows(db)
    for where in (DEFECT_1_COLLECT, DEFECT_1_EVAL, DEFECT_2):
        out = cli("snapshot", "create", "s", "--where", where, "--db", db, exit_code=1).output
        assert out.startswith("Error: --where") and out.count("\n") == 1
    assert store_rows(db) == before


# -- defect 2: curate --where escaped the composition and looped ------------------------------
@pytest.mark.parametrize("command", [
    ["curate", "filter", "--step", "verdict"],
    ["curate", "dedup", "--exact"],
    ["curate", "decontam", "--against", "FILE"],
])
def test_curate_where_that_closes_a_parenthesis_is_refused(db, cli, tmp_path, command):
    build_store(db)
    bench = tmp_path / "bench.jsonl"
    bench.write_text('{"question": "Who?", "answer": "1"}\n')
    command = [str(bench) if c == "FILE" else c for c in command]
    before = store_rows(db)
    out = cli(*command, "--where", DEFECT_2, "--db", db, exit_code=1).output
    assert "--where closes a parenthesis it did not open" in out and out.count("\n") == 1
    assert store_rows(db) == before


def test_curate_where_with_or_stays_inside_the_selection(db):
    """An accepted OR is one predicate: ANDed with --kind and the keyset key, never around."""
    from curation.selection import Selection, count_selected, iter_selected

    ids = build_store(db)
    with Store.open_readonly(db) as store:
        sel = Selection(where="1=1 OR 1=1", kind="meta")
        chunks = list(iter_selected(store, sel, ["kind"], chunk_size=2))
        got = [r["record_id"] for c in chunks for r in c]
        assert len(got) == count_selected(store, sel) == 4 and set(got) < set(ids)
        assert got == sorted(got) and {r["kind"] for c in chunks for r in c} == {"meta"}
        assert len(chunks) == 2


# -- defect 7: no extension is ever fetched or loaded on its own ------------------------------
@pytest.fixture
def recorder():
    """A local HTTP server that records every request it gets (and answers 404)."""
    with recording_server() as server:
        yield server


@file_store("the file connection's settings (a lake's extensions: test_extensions)")
def test_store_connections_never_download_an_extension(db, tmp_path, recorder):
    url, hits = recorder
    build_store(db)
    # The control: DuckDB's defaults fetch sqlite_scanner from the repository on first use.
    control = duckdb.connect(config={"extension_directory": str(tmp_path / "control"),
                                     "custom_extension_repository": url})
    with pytest.raises(duckdb.Error):
        control.execute("SELECT * FROM sqlite_scan('x.db', 't')")
    control.close()
    assert hits, "the control should have tried to download"
    hits.clear()
    ours = tmp_path / "ours"
    con = connect_file(db, read_only=True)
    con.execute(f"SET extension_directory = '{ours}'")
    con.execute(f"SET custom_extension_repository = '{url}'")
    for sql in ("SELECT * FROM sqlite_scan('x.db', 't')", f"SELECT * FROM read_csv('{url}/x.csv')",
                f"SELECT * FROM '{url}/x.parquet'", "SELECT * FROM read_json('s3://b/k.json')",
                "SELECT st_area(NULL)"):
        with pytest.raises(duckdb.Error):
            con.execute(sql)
    settings = dict(con.execute(
        "SELECT name, value FROM duckdb_settings() WHERE name IN ('autoinstall_known_extensions', "
        "'autoload_known_extensions', 'python_enable_replacements')").fetchall())
    con.close()
    assert hits == [] and not ours.exists()
    assert set(settings.values()) == {"false"}


@pytest.mark.parametrize("sql", ["SELECT * FROM sqlite_scan('{db}', 'runs')",
                                 "SELECT * FROM read_csv('{url}/x.csv')",
                                 "SELECT * FROM '{url}/x.csv'"])
def test_sql_command_fails_in_one_line_without_fetching(db, cli, recorder, tmp_path, monkeypatch,
                                                        sql):
    url, hits = recorder
    build_store(db)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    out = cli("sql", sql.format(db=db, url=url), "--db", db, exit_code=1).output
    assert out.startswith("Error: query failed:") and out.count("\n") == 1
    assert hits == [] and not (tmp_path / "home" / ".duckdb").exists()


def test_a_sqlite_file_as_the_store_is_refused_in_one_line(cli, tmp_path, monkeypatch):
    import sqlite3

    path = tmp_path / "other.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t (a)")
    con.commit()
    con.close()
    before = path.read_bytes()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for args in (["sql", "SELECT 1"], ["stats"], ["init"]):
        out = cli(*args, "--db", str(path), exit_code=1).output
        assert "is not a DuckDB file" in out and out.count("\n") == 1, out
    assert path.read_bytes() == before and not (tmp_path / "home" / ".duckdb").exists()
