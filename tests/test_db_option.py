"""Every ``--db`` / ``SELFEVO_DB`` value goes through ``StoreSpec.parse`` (one click type).

A ``ducklake:`` spec opens the DuckLake store (``corpus.store.Store`` holds a
``corpus.lake.Lake``); one that cannot be reached fails in one line, password unshown.
"""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from corpus import Store, default_db_path
from corpus.options import StoreSpecType
from selfevo.cli import cli as root
from tests.test_docs import COMMANDS

DB_COMMANDS = [(name, cmd) for name, cmd in COMMANDS
               if isinstance(cmd, click.Command) and any(p.name == "db" for p in cmd.params)]

LAKE_SPECS = [
    "ducklake:team.ducklake",
    "ducklake:team.ducklake data_path=lakedata",
    "DuckLake:postgres:dbname=corpus host=pg.lan user=me data_path=/mnt/lake",
    "ducklake:postgres:dbname='my corpus' port=5433 password=SeCrEt metadata_schema=team_a",
]


def test_the_store_commands_take_db():
    names = {name for name, _ in DB_COMMANDS}
    assert {"init", "sql", "stats", "prompts import", "refine", "train"} <= names


@pytest.mark.parametrize("name, command", DB_COMMANDS, ids=[n for n, _ in DB_COMMANDS])
def test_every_db_option_parses_a_store_spec(name, command):
    (param,) = [p for p in command.params if p.name == "db"]
    assert isinstance(param.type, StoreSpecType), f"selfevo {name} --db bypasses StoreSpec.parse"


#: Lake specs whose catalog cannot be reached (a socket directory that does not exist).
UNREACHABLE = [
    "ducklake:postgres:dbname=corpus host=/nonexistent/socket user=me data_path=/tmp/x",
    "ducklake:postgres:dbname='my corpus' host=/nonexistent/socket password=SeCrEt",
]


@pytest.mark.parametrize("name", [n for n, _ in DB_COMMANDS])
def test_an_unreachable_lake_is_a_one_line_error_in_every_command(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for spec in UNREACHABLE:
        result = CliRunner().invoke(root, [*name.split(), "--db", spec], catch_exceptions=False)
        assert result.exit_code != 0, result.output
        assert "SeCrEt" not in result.output
        assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []  # no file named after the spec


def test_a_catalog_file_lake_is_a_store(tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)
    cli("init", "--db", "ducklake:team.ducklake")
    assert (tmp_path / "team.ducklake").is_file()
    assert "m001_initial" in cli("sql", "--db", "ducklake:team.ducklake",
                                 "SELECT name FROM _migrations").output


def test_selfevo_db_takes_a_lake_spec(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = "ducklake:team.ducklake data_path=lakedata"
    monkeypatch.setenv("SELFEVO_DB", spec)
    assert default_db_path() == spec
    with Store.open() as store:
        assert store.lake is not None
        assert store.query("SELECT count(*) FROM _migrations")[0][0] > 0
    assert (tmp_path / "lakedata").is_dir() or (tmp_path / "team.ducklake").is_file()


@pytest.mark.parametrize("spec, message", [
    ("ducklake:postgres://me@pg.lan/corpus", "not a URI"),
    ("ducklake:postgres:dbname=x hots=pg.lan", "unknown connection option 'hots'"),
    ("ducklake:", "needs a catalog"),
    ("  ", "is empty"),
])
def test_a_malformed_spec_is_a_one_line_usage_error(spec, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(root, ["stats", "--db", spec], catch_exceptions=False)
    assert result.exit_code == 2 and message in result.output, result.output


def test_a_file_spec_still_names_the_file(tmp_path, cli):
    db = tmp_path / "dir with space" / "s.duckdb"
    db.parent.mkdir()
    cli("init", "--db", str(db))
    assert db.is_file()
