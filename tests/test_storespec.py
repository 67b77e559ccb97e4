"""Store specs (--db / SELFEVO_DB): parsing, one-line errors, secrets never shown."""

from __future__ import annotations

import random
import string
from pathlib import Path

import duckdb
import pytest

from corpus.extensions import DUCKLAKE, POSTGRES, load_extension, offline_config
from corpus.storespec import (
    LIBPQ_KEYS,
    SERVICE_FILE_KEYS,
    StoreSpec,
    StoreSpecError,
    format_conninfo,
    parse_conninfo,
)

# Characters that stress libpq quoting: spaces, quotes, backslashes, '=', non-ASCII.
VALUE_CHARS = string.ascii_letters + string.digits + " '\\=/.:-_é€"


def _value(rng: random.Random) -> str:
    return "".join(rng.choice(VALUE_CHARS) for _ in range(rng.randint(0, 12)))


def _conninfo(rng: random.Random) -> dict[str, str]:
    keys = rng.sample(sorted(LIBPQ_KEYS - SERVICE_FILE_KEYS - {"dbname", "password"}), rng.randint(0, 4))
    pairs = {"dbname": _value(rng) or "x"} | {k: _value(rng) for k in keys}
    return dict(rng.sample(list(pairs.items()), len(pairs)))


def lake_connection(spec: StoreSpec) -> duckdb.DuckDBPyConnection:
    """An offline connection with the spec's lake attached as ``lake``."""
    con = duckdb.connect(config=offline_config())
    load_extension(con, DUCKLAKE)
    if spec.catalog == "postgres":
        load_extension(con, POSTGRES)
    if spec.secret_sql():
        con.execute(spec.secret_sql())
    con.execute(spec.attach_sql())
    return con


def test_the_three_forms(tmp_path: Path) -> None:
    file = StoreSpec.parse("selfevo.duckdb")
    assert (file.kind, file.target, file.is_lake, str(file)) == (
        "file", "selfevo.duckdb", False, "selfevo.duckdb")

    cat = StoreSpec.parse(f"ducklake:{tmp_path}/my lake/c.ducklake data_path='{tmp_path}/p q'")
    assert (cat.catalog, cat.target, cat.data_path) == (
        "duckdb", f"{tmp_path}/my lake/c.ducklake", f"{tmp_path}/p q/")

    pg = StoreSpec.parse("ducklake:postgres:dbname=corpus host=pg.lan port=5433 user=me "
                         "data_path=/mnt/lake metadata_schema=team_a")
    assert (pg.catalog, pg.target, pg.data_path, pg.metadata_schema) == (
        "postgres", "dbname=corpus host=pg.lan port=5433 user=me", "/mnt/lake/", "team_a")
    assert pg.attach_sql() == ("ATTACH 'ducklake:postgres:dbname=corpus host=pg.lan port=5433 "
                               "user=me' AS lake (DATA_PATH '/mnt/lake/', METADATA_SCHEMA 'team_a')")
    for spec in (file, cat, pg):  # what str() shows parses back to the same spec
        assert StoreSpec.parse(str(spec)) == spec


def test_relative_paths_become_absolute(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = StoreSpec.parse("ducklake:c.ducklake data_path=parquet")
    assert (spec.target, spec.data_path) == (f"{tmp_path}/c.ducklake", f"{tmp_path}/parquet/")


@pytest.mark.parametrize("seed", range(200))
def test_conninfo_round_trips(seed: int) -> None:
    pairs = _conninfo(random.Random(seed))
    assert parse_conninfo(format_conninfo(pairs)) == pairs
    spec = StoreSpec.parse("ducklake:postgres:" + format_conninfo(pairs))
    assert parse_conninfo(spec.target) == pairs
    assert StoreSpec.parse(str(spec)) == spec


@pytest.mark.parametrize("seed", range(100))
def test_secrets_never_shown(seed: int) -> None:
    rng = random.Random(seed)
    password = "pw" + _value(rng) + rng.choice("!#%&")  # never a substring of the rest
    pairs = _conninfo(rng) | {"password": password, "data_path": "/mnt/lake"}
    pairs = dict(rng.sample(list(pairs.items()), len(pairs)))
    spec = StoreSpec.parse("ducklake:postgres:" + format_conninfo(pairs))
    for shown in (str(spec), repr(spec), spec.attach_sql(), spec.target, f"{spec}"):
        assert password not in shown
    assert "password=***" in str(spec)
    assert spec.redact(f"connection failed for {password}") == "connection failed for ***"
    assert dict(spec.secrets) == {"password": password}
    assert duckdb.extract_statements(spec.secret_sql())[0].type.name == "CREATE"


MALFORMED = {
    "": "empty",
    "   ": "empty",
    "ducklake:": "needs a catalog",
    "ducklake:sqlite:meta.sqlite": "unsupported DuckLake catalog 'sqlite:'",
    "ducklake:postgres://me@pg.lan/corpus": "key=value pairs, not a URI",
    "ducklake:postgres:": "needs dbname",
    "ducklake:postgres:host=pg.lan": "needs dbname",
    "ducklake:postgres:dbname": 'missing "=" after "dbname"',
    "ducklake:postgres:dbname=a dbname=b": '"dbname" is given twice',
    "ducklake:postgres:dbname='corpus": "unterminated quoted value",
    "ducklake:postgres:dbname=c data_path=s3://bucket/lake": "object stores are not supported",
    "ducklake:postgres:dbname=c data_path=''": "data_path is empty",
    "ducklake:postgres:dbname=c metadata_schema=team-a": "not a plain Postgres identifier",
    "ducklake: data_path=/x": "catalog file before data_path",
    "ducklake:postgres:dbname=c sslpassword=x": "'sslpassword' cannot be given",
    "ducklake:c.ducklake data_path=/x host=h": "only data_path=DIR may follow",
}


@pytest.mark.parametrize("text", MALFORMED)
def test_malformed_specs_fail_in_one_line(text: str) -> None:
    with pytest.raises(StoreSpecError) as err:
        StoreSpec.parse(text)
    assert MALFORMED[text] in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("seed", range(50))
def test_unknown_keys_are_named(seed: int) -> None:
    rng = random.Random(seed)
    key = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 9)))
    if key in LIBPQ_KEYS or key in ("data_path", "metadata_schema"):
        key += "x"
    with pytest.raises(StoreSpecError, match=f"unknown connection option '{key}'"):
        StoreSpec.parse(f"ducklake:postgres:dbname=c {key}=1")


def test_a_catalog_file_lake_attaches(tmp_path: Path) -> None:
    odd = tmp_path / "it's a lake"  # a quote and a space in both paths
    spec = StoreSpec.parse(f"ducklake:{odd}/c.ducklake {format_conninfo({'data_path': f'{odd}/data'})}")
    odd.mkdir()
    con = lake_connection(spec)
    con.execute("CREATE TABLE lake.t AS SELECT range AS i FROM range(5)")
    assert con.execute("SELECT sum(i) FROM lake.t").fetchone() == (10,)
    assert con.execute("SELECT value FROM ducklake_options('lake') "
                       "WHERE option_name = 'data_path'").fetchone() == (spec.data_path,)


def test_a_postgres_lake_is_shared_by_two_connections(lake_db: str) -> None:
    spec = StoreSpec.parse(lake_db)
    writer, reader = lake_connection(spec), lake_connection(StoreSpec.parse(lake_db))
    writer.execute("CREATE TABLE lake.t (id VARCHAR NOT NULL)")
    writer.execute("INSERT INTO lake.t VALUES ('a'), ('b')")
    assert reader.execute("SELECT count(*) FROM lake.t").fetchone() == (2,)


def test_a_password_travels_in_a_secret(postgres, tmp_path: Path) -> None:
    password = "s3cr'et pass\\word"
    postgres.create_password_role("alice", password)
    postgres.create_database("alice_lake", owner="alice")
    base = f"ducklake:postgres:{postgres.conninfo('alice_lake', 'alice')} data_path={tmp_path}"
    good = StoreSpec.parse(f"{base} password={format_conninfo({'p': password})[2:]}")
    assert dict(good.secrets)["password"] == password
    con = lake_connection(good)
    con.execute("CREATE TABLE lake.t (i INTEGER)")
    assert con.execute("SELECT count(*) FROM lake.t").fetchone() == (0,)

    with pytest.raises(duckdb.Error) as err:
        lake_connection(StoreSpec.parse(f"{base} password=Wr0ngPassw0rd"))
    assert "password authentication failed" in str(err.value)
    assert "Wr0ngPassw0rd" not in str(err.value)
