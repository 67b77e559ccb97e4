"""``selfevo store copy SRC DST``: move a whole store between a DuckDB file and a DuckLake.

Both stores are attached to one in-memory DuckDB instance (``src`` read-only, ``dst``); the
extensions load from their packages (``corpus.extensions``), never from the network. DST must
be empty: a new file (created and migrated as ``Store.open`` does), an existing store with no
rows, or a lake with no tables (its schema is created by ``corpus.lakeschema``). Every table is
copied in ONE transaction on DST, verified inside it (per table: row count and a content hash
computed by the same SQL on both sides), and closed by one ``runs`` row for the copy; so a
failed or refused copy leaves DST as it was.

Content hash of a table: sha256 over the sorted sha256 of each row's JSON (the columns of the
source, in order), so it is independent of row order and of the back end that stores it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from corpus.errors import CorpusError
from corpus.extensions import DUCKLAKE, POSTGRES, load_extension, offline_config
from corpus.storespec import StoreSpec, sql_literal
from corpus.version import code_version
from schemas.identity import canonical_json

if TYPE_CHECKING:
    from corpus.display import Tracker

COMMAND = "store copy"


@dataclass
class CopyResult:
    """What a copy moved: rows per table, and the run row written in DST."""

    src: str
    dst: str
    run_id: str
    rows: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for the CLI."""
        return (f"copied {sum(self.rows.values())} rows in {len(self.rows)} tables from "
                f"{self.src} to {self.dst}, counts and content hashes verified (run {self.run_id})")


def tables(con: duckdb.DuckDBPyConnection, db: str) -> list[str]:
    """The base tables of attached database ``db``, by name."""
    return [r[0] for r in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = ? AND NOT internal "
        "ORDER BY table_name", [db]).fetchall()]


def columns(con: duckdb.DuckDBPyConnection, db: str, table: str) -> list[str]:
    """The columns of ``db.table`` in their order."""
    return [r[0] for r in con.execute(
        "SELECT column_name FROM duckdb_columns() WHERE database_name = ? AND table_name = ? "
        "ORDER BY column_index", [db, table]).fetchall()]


def table_hash(con: duckdb.DuckDBPyConnection, db: str, table: str, cols: list[str],
               where: str = "true") -> tuple[int, str]:
    """(row count, content hash) of ``db.table`` over ``cols`` (see the module docstring)."""
    row = ", ".join(f'{sql_literal(c)}: "{c}"' for c in cols)
    count, digest = con.execute(
        f"SELECT count(*), coalesce(sha256(string_agg(h, '' ORDER BY h)), '') FROM "
        f'(SELECT sha256(CAST(to_json({{{row}}}) AS VARCHAR)) AS h FROM {db}."{table}" '
        f"WHERE {where})").fetchone()
    return int(count), str(digest)


def _attach(con: duckdb.DuckDBPyConnection, spec: StoreSpec, alias: str, *, read_only: bool
            ) -> None:
    try:
        if spec.is_lake:
            load_extension(con, DUCKLAKE)
            if spec.catalog == "postgres":
                load_extension(con, POSTGRES)
            secret = spec.secret_sql()
            if secret:
                con.execute(secret)
            con.execute(spec.attach_sql(alias, read_only=read_only))
        else:
            opts = " (READ_ONLY)" if read_only else ""
            con.execute(f"ATTACH {sql_literal(spec.target)} AS {alias}{opts}")
    except duckdb.Error as exc:
        raise CorpusError(f"cannot open {spec}: {spec.redact(str(exc).splitlines()[0])}"
                          ) from None


def _prepare_file(spec: StoreSpec) -> None:
    """Create and migrate a DST file the way every writer does (refusing a foreign file)."""
    from corpus.store import Store

    path = Path(spec.target)
    if path.exists() and path.stat().st_size > 0:
        with Store.open_readonly(path) as store:  # an older store: refuse before migrating
            for (t,) in store.query("SELECT table_name FROM duckdb_tables() "
                                    "WHERE NOT internal AND table_name <> '_migrations'"):
                if store.query(f'SELECT count(*) FROM "{t}"')[0][0]:
                    raise CorpusError(f"{spec} is not empty (table {t} has rows); copy into "
                                      "a new file or an empty lake")
    Store.open(path, command=COMMAND).close()


def _refuse_non_empty(con: duckdb.DuckDBPyConnection, spec: StoreSpec) -> bool:
    """Whether DST needs its schema created (an empty lake); raise if it holds rows."""
    names = tables(con, "dst")
    for t in names:
        if t != "_migrations" and con.execute(f'SELECT count(*) FROM dst."{t}"').fetchone()[0]:
            raise CorpusError(f"{spec} is not empty (table {t} has rows); copy into a new "
                              "file or an empty lake")
    return not names


def _same_schema(con: duckdb.DuckDBPyConnection, src: StoreSpec) -> list[str]:
    have = {r[0] for r in con.execute("SELECT name FROM src._migrations").fetchall()}
    want = {r[0] for r in con.execute("SELECT name FROM dst._migrations").fetchall()}
    if have != want:
        raise CorpusError(f"{src} and the destination are at different migrations "
                          f"({', '.join(sorted(have ^ want))}); open SRC with this selfevo "
                          "for writing first (e.g. selfevo init --db SRC)")
    con.execute("DELETE FROM dst._migrations")  # copied with the rest: their applied_at too
    return tables(con, "src")


def _copy_tables(con: duckdb.DuckDBPyConnection, names: list[str], progress: Tracker | None
                 ) -> dict[str, int]:
    rows = {}
    for t in names:
        cols = columns(con, "src", t)
        missing = set(cols) - set(columns(con, "dst", t))
        if missing:
            raise CorpusError(f"table {t}: the destination lacks columns {sorted(missing)}")
        quoted = ", ".join(f'"{c}"' for c in cols)
        con.execute(f'INSERT INTO dst."{t}" ({quoted}) SELECT {quoted} FROM src."{t}"')
        src_hash, dst_hash = (table_hash(con, db, t, cols) for db in ("src", "dst"))
        if src_hash != dst_hash:
            raise CorpusError(f"table {t}: the copy does not verify (source {src_hash[0]} "
                              f"rows, {src_hash[1][:12]}; copy {dst_hash[0]} rows, "
                              f"{dst_hash[1][:12]}); nothing was written")
        rows[t] = src_hash[0]
        if progress is not None:
            progress.advance(1)
    return rows


def copy_store(src: str, dst: str, *, progress: Tracker | None = None) -> CopyResult:
    """Copy every table of store SRC into the empty store DST, verified, in one transaction."""
    from corpus.lakeschema import create_schema
    from corpus.store import new_run_id

    src_spec, dst_spec = StoreSpec.parse(src), StoreSpec.parse(dst)
    if not src_spec.is_lake and not Path(src_spec.target).exists():
        raise CorpusError(f"no store at {src_spec}; pass an existing SRC")
    if not dst_spec.is_lake:
        _prepare_file(dst_spec)
    con = duckdb.connect(":memory:", config=offline_config())
    try:
        _attach(con, src_spec, "src", read_only=True)
        _attach(con, dst_spec, "dst", read_only=False)
        run_id = new_run_id()
        con.execute("BEGIN TRANSACTION")
        if _refuse_non_empty(con, dst_spec):
            con.execute("USE dst")
            create_schema(con)
            con.execute("USE memory")
        names = _same_schema(con, src_spec)
        if progress is not None:
            progress.restart(f"copy to {dst_spec}", len(names))
        rows = _copy_tables(con, names, progress)
        config = {"src": str(src_spec), "dst": str(dst_spec)}
        con.execute(
            "INSERT INTO dst.runs (run_id, command, config, code_version, started_at, "
            "finished_at, status, counts, pid) VALUES (?, ?, ?, ?, now(), now(), 'ok', ?, ?)",
            [run_id, COMMAND, canonical_json(config), code_version(), canonical_json(rows),
             os.getpid()])
        con.execute("COMMIT")
    finally:
        con.close()
    return CopyResult(str(src_spec), str(dst_spec), run_id, rows)
