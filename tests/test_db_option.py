"""Every ``--db`` / ``SELFEVO_DB`` value goes through ``StoreSpec.parse`` (one click type).

Until the store runs on a DuckLake, a ``ducklake:`` spec is refused in one line by every
command, before any work and without creating a file of that name.
"""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from corpus import CorpusError, Store, default_db_path
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


@pytest.mark.parametrize("name", [n for n, _ in DB_COMMANDS])
def test_a_lake_spec_is_refused_in_one_line_by_every_command(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for spec in LAKE_SPECS:
        result = CliRunner().invoke(root, [*name.split(), "--db", spec], catch_exceptions=False)
        assert result.exit_code == 2, result.output
        assert "not supported yet" in result.output
        assert "SeCrEt" not in result.output
        assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("spec", LAKE_SPECS)
def test_selfevo_db_is_parsed_too(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SELFEVO_DB", spec)
    with pytest.raises(CorpusError, match="not supported yet"):
        default_db_path()
    result = CliRunner().invoke(root, ["stats"], catch_exceptions=False)
    assert result.exit_code == 2 and "not supported yet" in result.output
    with pytest.raises(CorpusError, match="not supported yet"):
        Store.open(spec)
    assert list(tmp_path.iterdir()) == []


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
