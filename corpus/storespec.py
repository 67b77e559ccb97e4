"""Where a store lives: the one validated type behind ``--db`` and ``SELFEVO_DB``.

Three forms (docs/store.md, "Teams"):

* ``PATH`` — a DuckDB file, one writer at a time (the default ``selfevo.duckdb``).
* ``ducklake:CATALOG [data_path=DIR]`` — a DuckLake whose catalog is a DuckDB file; its
  Parquet files go to ``DIR`` (default: DuckLake's own ``CATALOG.files/`` beside it).
* ``ducklake:postgres:CONNINFO`` — a DuckLake whose catalog is a Postgres database, for
  teams. ``CONNINFO`` is a libpq ``key=value`` string (``dbname=corpus host=pg.lan
  user=me``) plus two selfevo keys: ``data_path=DIR`` (where the Parquet files go; needed
  when the lake is created, read from the catalog after) and ``metadata_schema=NAME`` (the
  Postgres schema of the catalog tables, to keep several lakes in one database).

A password may be given as ``password=…`` but is better left to ``PGPASSWORD`` or
``~/.pgpass``. Either way it never appears in ``str()``/``repr()`` of a spec, nor in the
ATTACH statement: DuckDB repeats the connection string in its error messages, so the
password travels in a temporary DuckDB secret instead (:meth:`StoreSpec.secret_sql`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from corpus.errors import CorpusError

LAKE_PREFIX = "ducklake:"
POSTGRES_PREFIX = "postgres:"
LAKE_ALIAS = "lake"

# libpq's connection keywords (PostgreSQL 18, fe-connect.c); a typo fails here, in one line,
# instead of in an error from inside the DuckLake extension.
LIBPQ_KEYS = frozenset("""
    host hostaddr port dbname user password passfile require_auth channel_binding
    connect_timeout client_encoding options application_name fallback_application_name
    keepalives keepalives_idle keepalives_interval keepalives_count tcp_user_timeout
    replication gssencmode sslmode sslnegotiation requiressl sslcompression sslcert sslkey
    sslkeylogfile sslpassword sslcertmode sslrootcert sslcrl sslcrldir sslsni requirepeer
    ssl_min_protocol_version ssl_max_protocol_version min_protocol_version
    max_protocol_version krbsrvname gsslib gssdelegation service target_session_attrs
    load_balance_hosts scram_client_key scram_server_key oauth_issuer oauth_client_id
    oauth_client_secret oauth_scope
""".split())
# Keys selfevo reads and removes before the rest goes to libpq.
LAKE_KEYS = frozenset({"data_path", "metadata_schema"})
# The password goes to DuckDB as a secret; other secrets have no such route (DuckDB would repeat
# them in its errors), so they are refused in favour of a libpq service file.
SECRET_KEYS = frozenset({"password"})
SERVICE_FILE_KEYS = frozenset({"sslpassword", "oauth_client_secret", "scram_client_key",
                               "scram_server_key"})
REDACTED = "***"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_NEEDS_QUOTES = re.compile(r"[\s'\\]")


class StoreSpecError(CorpusError):
    """A ``--db`` / ``SELFEVO_DB`` value that is not a store spec."""


def parse_conninfo(text: str) -> dict[str, str]:
    """Parse a libpq ``key=value`` string as libpq does (quotes, backslash escapes)."""
    out: dict[str, str] = {}
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i == n:
            return out
        start = i
        while i < n and text[i] != "=" and not text[i].isspace():
            i += 1
        key = text[start:i]
        while i < n and text[i].isspace():
            i += 1
        if i == n or text[i] != "=":
            raise StoreSpecError(f'missing "=" after "{key}" in the connection string; '
                                 "write key=value pairs, e.g. dbname=corpus host=pg.lan")
        i += 1
        while i < n and text[i].isspace():
            i += 1
        value, i = _read_value(text, i, key)
        if key in out:
            raise StoreSpecError(f'"{key}" is given twice in the connection string')
        out[key] = value
    return out


def _read_value(text: str, i: int, key: str) -> tuple[str, int]:
    chars: list[str] = []
    quoted = i < len(text) and text[i] == "'"
    i += quoted
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            chars.append(text[i + 1])
            i += 2
            continue
        if (quoted and c == "'") or (not quoted and c.isspace()):
            return "".join(chars), i + quoted
        chars.append(c)
        i += 1
    if quoted:
        raise StoreSpecError(f'unterminated quoted value of "{key}" in the connection string')
    return "".join(chars), i


def format_conninfo(pairs: dict[str, str]) -> str:
    """The inverse of :func:`parse_conninfo`: quote values that need it."""
    return " ".join(f"{k}={_quote(v)}" for k, v in pairs.items())


def _quote(value: str) -> str:
    if value and not _NEEDS_QUOTES.search(value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def sql_literal(value: str) -> str:
    """``value`` as a SQL string literal (quotes doubled).

    Reads inline their few string values instead of binding parameters: DuckDB's Python
    client imports pandas (0.3-0.8 s) on the first execute() that binds a parameter, which
    would dominate the start-up of read-only commands.
    """
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True)
class StoreSpec:
    """A parsed store location: a DuckDB file or a DuckLake (DuckDB-file or Postgres catalog).

    ``catalog`` is the DuckLake catalog kind (None for a plain file); ``target`` the file
    path, the catalog file, or the libpq conninfo without selfevo keys and without secrets.
    """

    kind: Literal["file", "ducklake"]
    target: str
    catalog: Literal["duckdb", "postgres"] | None = None
    data_path: str | None = None
    metadata_schema: str | None = None
    secrets: tuple[tuple[str, str], ...] = field(default=(), repr=False, compare=False)

    # -- reading a spec ------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str | Path) -> StoreSpec:
        """Validate a ``--db`` value; raise :class:`StoreSpecError` with a one-line reason."""
        raw = str(text).strip()
        if not raw:
            raise StoreSpecError("the store spec (--db / SELFEVO_DB) is empty")
        if not raw.lower().startswith(LAKE_PREFIX):
            return cls(kind="file", target=raw)
        rest = raw[len(LAKE_PREFIX):].strip()
        if not rest:
            raise StoreSpecError(
                "'ducklake:' needs a catalog: ducklake:postgres:dbname=… host=… data_path=DIR "
                "or ducklake:CATALOG_FILE")
        scheme = _SCHEME.match(rest)
        if scheme and rest[scheme.end():].startswith("//"):
            raise StoreSpecError(
                "write the Postgres connection as key=value pairs, not a URI: "
                "ducklake:postgres:dbname=NAME host=HOST user=USER data_path=DIR")
        if scheme and scheme.group(1).lower() == "postgres":
            return cls._postgres(rest[scheme.end():])
        if scheme:
            raise StoreSpecError(
                f"unsupported DuckLake catalog '{scheme.group(1)}:'; selfevo supports "
                "ducklake:postgres:KEY=VALUE… and ducklake:CATALOG_FILE")
        return cls._catalog_file(rest)

    @classmethod
    def _postgres(cls, conninfo: str) -> StoreSpec:
        pairs = parse_conninfo(conninfo)
        unknown = sorted(set(pairs) - LIBPQ_KEYS - LAKE_KEYS)
        if unknown:
            raise StoreSpecError(
                f"unknown connection option '{unknown[0]}' in the DuckLake spec; use libpq "
                "keys (dbname, host, port, user, sslmode, …) plus data_path and metadata_schema")
        inline = sorted(SERVICE_FILE_KEYS & set(pairs))
        if inline:
            raise StoreSpecError(
                f"'{inline[0]}' cannot be given in the DuckLake spec; put it in a libpq service "
                "file (~/.pg_service.conf) and write service=NAME")
        if not pairs.get("dbname") and not pairs.get("service"):
            raise StoreSpecError("the Postgres catalog needs dbname=NAME (or service=NAME)")
        lake = {k: pairs.pop(k) for k in sorted(LAKE_KEYS & set(pairs))}
        secrets = tuple((k, pairs.pop(k)) for k in sorted(SECRET_KEYS & set(pairs)))
        return cls(kind="ducklake", catalog="postgres", target=format_conninfo(pairs),
                   data_path=_data_path(lake.get("data_path")),
                   metadata_schema=_schema_name(lake.get("metadata_schema")), secrets=secrets)

    @classmethod
    def _catalog_file(cls, rest: str) -> StoreSpec:
        path, lake = _split_data_path(rest)
        # Absolute: DuckLake places the default data directory beside the catalog path.
        return cls(kind="ducklake", catalog="duckdb",
                   target=str(Path(path).expanduser().absolute()),
                   data_path=_data_path(lake.get("data_path")))

    # -- showing a spec ------------------------------------------------------------------
    def __str__(self) -> str:
        """The spec as a user would write it, with every secret replaced by ``***``."""
        if self.kind == "file":
            return self.target
        extra = {k: v for k, v in (("data_path", self.data_path),
                                   ("metadata_schema", self.metadata_schema)) if v}
        if self.catalog == "duckdb":
            tail = f" {format_conninfo(extra)}" if extra else ""
            return f"{LAKE_PREFIX}{self.target}{tail}"
        hidden = dict.fromkeys((k for k, _ in self.secrets), REDACTED)
        parts = " ".join(p for p in (self.target, format_conninfo(hidden),
                                     format_conninfo(extra)) if p)
        return f"{LAKE_PREFIX}{POSTGRES_PREFIX}{parts}"

    def redact(self, text: str) -> str:
        """``text`` (e.g. an error from DuckDB or libpq) with this spec's secrets removed."""
        for _, value in self.secrets:
            if value:
                text = text.replace(value, REDACTED)
        return text

    @property
    def is_lake(self) -> bool:
        """True for a DuckLake, False for a plain DuckDB file."""
        return self.kind == "ducklake"

    # -- attaching -----------------------------------------------------------------------
    def secret_sql(self) -> str | None:
        """``CREATE TEMPORARY SECRET`` giving DuckDB the Postgres password, or None."""
        password = dict(self.secrets).get("password")
        if self.catalog != "postgres" or password is None:
            return None
        return f"CREATE OR REPLACE TEMPORARY SECRET (TYPE postgres, PASSWORD {sql_literal(password)})"

    def attach_sql(self, alias: str = LAKE_ALIAS, *, read_only: bool = False,
                   version: int | None = None) -> str:
        """The ``ATTACH`` statement for a DuckLake (run :meth:`secret_sql` first).

        ``version`` attaches the lake as it was at that DuckLake snapshot, read-only.
        """
        if not self.is_lake:
            raise StoreSpecError(f"{self} is a DuckDB file, not a DuckLake")
        target = self.target if self.catalog == "duckdb" else POSTGRES_PREFIX + self.target
        options = []
        if self.data_path:
            options.append(f"DATA_PATH {sql_literal(self.data_path)}")
        if self.metadata_schema:
            options.append(f"METADATA_SCHEMA {sql_literal(self.metadata_schema)}")
        if version is not None:
            options.append(f"SNAPSHOT_VERSION {int(version)}")
        if read_only or version is not None:
            options.append("READ_ONLY")
        opts = f" ({', '.join(options)})" if options else ""
        return f"ATTACH {sql_literal(LAKE_PREFIX + target)} AS {alias}{opts}"


def _split_data_path(rest: str) -> tuple[str, dict[str, str]]:
    # The catalog path runs up to an optional " data_path=…" (a path may contain spaces).
    found = re.search(r"(?:^|\s)data_path=", rest)
    head = (rest[:found.start()] if found else rest).strip()
    if not head:
        raise StoreSpecError("'ducklake:' needs the catalog file before data_path=")
    if not found:
        return head, {}
    pairs = parse_conninfo("data_path=" + rest[found.end():])
    if set(pairs) != {"data_path"}:
        raise StoreSpecError("after the catalog file only data_path=DIR may follow")
    return head, pairs


def _data_path(value: str | None) -> str | None:
    if value is None:
        return None
    if not value.strip():
        raise StoreSpecError("data_path is empty; give the directory for the Parquet files")
    if _SCHEME.match(value) and "://" in value:
        raise StoreSpecError(
            f"data_path {value!r}: object stores are not supported yet; give a directory "
            "every writer can reach (a shared mount)")
    # Absolute: DuckLake stores it in the catalog, and every machine must find the same place.
    return str(Path(value).expanduser().absolute()) + "/"


def _schema_name(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", value):
        raise StoreSpecError(
            f"metadata_schema {value!r} is not a plain Postgres identifier (letters, digits, _)")
    return value
