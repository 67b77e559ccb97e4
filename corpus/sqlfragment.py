"""A user's SQL condition (``--where``, ``--prompts``, ``store:SQL`` …): one checked expression.

Every flag and API that takes a SQL condition from a user goes through :class:`SqlCondition`.
A condition is accepted only when DuckDB's own lexer and parser agree that it is exactly one
expression:

* its tokens (DuckDB's tokenizer, the lexer its parser uses) hold no ``;`` and never close a
  parenthesis they did not open, and every one they open is closed — so, composed as
  ``(condition\\n)``, it is one parenthesised predicate that nothing around it can be escaped
  from (the newline ends a trailing ``--`` comment);
* ``SELECT 1 WHERE (condition\\n)`` parses (``json_serialize_sql``) as one SELECT with that
  WHERE clause and nothing else: no ORDER BY / LIMIT / GROUP BY / UNION leaking out;
* what it reads is the store. Its syntax tree may hold read-only subqueries over the store's
  tables and views (``record_id IN (SELECT record_id FROM latest_decisions WHERE …)``), but:

  - **table functions: an allow-list** (:data:`TABLE_FUNCTIONS`: ``unnest``, ``range`` …).
    Every other one reads outside the store (``read_csv``, ``read_text``, ``glob``,
    ``sqlite_scan``, ``query``/``query_table`` that run SQL text, ``duckdb_secrets`` …);
  - **tables: plain names only** — no catalog (another attached database), no quoted file
    name or URL (``FROM 'https://…'`` is a replacement scan that reads the network);
  - **scalar functions: a deny-list** (:data:`DENIED_FUNCTIONS`) of those that change or
    reveal state outside the query: sequences, settings, the random seed, sleeping, the log,
    the environment. Everything else only computes over values;
  - **no parameters** (``?``, ``$1``): they would shift the bound values of the query the
    condition is composed into.

  Functions of extensions that are not loaded cannot be reached at all: every store
  connection has extension auto-install and auto-load off (``corpus.store``).

Conditions are then evaluated in a ``READ ONLY`` transaction on a cursor of their own
(:func:`read_only`), so even a condition that got past the checks could not write.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Iterator
from typing import Any

import duckdb

from corpus.errors import CorpusError
from corpus.extensions import offline_config

#: Table functions a condition may use in a subquery: they only compute over their arguments.
TABLE_FUNCTIONS = frozenset({"unnest", "range", "generate_series", "json_each", "json_tree"})
#: Scalar functions a condition may not call: they touch state outside the query.
DENIED_FUNCTIONS = frozenset({
    "nextval", "currval", "setseed", "current_setting", "getenv", "getvariable",
    "pg_sleep", "sleep_ms", "write_log",
})
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_EXAMPLE = "e.g. \"kind = 'meta' AND verdict = 'correct'\""


class SqlFragmentError(CorpusError):
    """A SQL condition that is not exactly one expression over the store."""


class SqlCondition:
    """A checked SQL condition; ``str()`` (and :attr:`sql`) is the parenthesised predicate.

    Constructing one checks it; ``text`` is what the user wrote (stripped),
    ``flag`` names where it came from in error messages (``--where``, ``--prompts`` …).
    """

    __slots__ = ("flag", "text")

    def __init__(self, text: str, flag: str = "--where"):
        """Check ``text`` (see the module docstring); a one-line SqlFragmentError if it is not
        one expression over the store."""
        if not isinstance(text, str):
            raise SqlFragmentError(f"{flag} must be SQL text, not {type(text).__name__}")
        text = text.strip()
        if not text:
            raise SqlFragmentError(f"{flag} is empty; give a SQL condition, {_EXAMPLE}")
        if "\x00" in text:
            raise SqlFragmentError(f"{flag} contains a NUL character")
        _check_tokens(text, flag)
        _check_tree(_parse_where(text, flag), flag)
        self.text = text
        self.flag = flag

    @classmethod
    def of(cls, value: str | SqlCondition | None, flag: str = "--where") -> SqlCondition | None:
        """``value`` as a checked condition (None stays None; a condition is kept as is)."""
        if value is None or isinstance(value, SqlCondition):
            return value
        return cls(value, flag)

    @property
    def sql(self) -> str:
        """The condition as one parenthesised predicate, safe to AND with anything."""
        return f"({self.text}\n)"

    def __str__(self) -> str:
        return self.sql

    def __repr__(self) -> str:
        return f"SqlCondition({self.text!r}, flag={self.flag!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SqlCondition) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


def _check_tokens(text: str, flag: str) -> None:
    """No ``;`` and balanced parentheses, by DuckDB's own tokens (strings, quoted names and
    comments are single tokens or skipped, so a ``)`` inside them does not count)."""
    raw = text.encode("utf-8")
    depth = 0
    for pos, kind in duckdb.tokenize(text):
        if kind != duckdb.token_type.operator:
            continue
        char = raw[pos:pos + 1]
        if char == b";":
            raise SqlFragmentError(
                f"{flag} must be one SQL condition, without ';' (it would start another "
                f"statement); {_EXAMPLE}")
        if char == b"(":
            depth += 1
        elif char == b")":
            depth -= 1
            if depth < 0:
                raise SqlFragmentError(
                    f"{flag} closes a parenthesis it did not open (at character "
                    f"{len(raw[:pos].decode('utf-8', 'replace')) + 1}); give one condition")
    if depth > 0:
        raise SqlFragmentError(f"{flag} opens {depth} more parenthesis than it closes")


_parser_lock = threading.Lock()
_parser: duckdb.DuckDBPyConnection | None = None


def _serialize(sql: str) -> dict[str, Any]:
    """DuckDB's parse of ``sql`` as JSON, from an in-memory connection that loads nothing."""
    global _parser
    with _parser_lock:
        if _parser is None:
            _parser = duckdb.connect(":memory:", config=offline_config())
        out = _parser.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()
    return json.loads(out[0])


def _parse_where(text: str, flag: str) -> dict[str, Any]:
    """The WHERE clause of ``SELECT 1 WHERE (text\\n)``, refused unless that is all there is."""
    parsed = _serialize(f"SELECT 1 WHERE ({text}\n)")
    if parsed.get("error"):
        message = str(parsed.get("error_message") or "syntax error").splitlines()[0]
        raise SqlFragmentError(f"{flag} does not parse as a SQL condition: {message}")
    statements = parsed.get("statements") or []
    node = statements[0].get("node", {}) if len(statements) == 1 else {}
    alone = (
        node.get("type") == "SELECT_NODE" and not node.get("modifiers")
        and (node.get("from_table") or {}).get("type") == "EMPTY"
        and len(node.get("select_list") or []) == 1
        and not node.get("group_expressions") and not node.get("group_sets")
        and node.get("having") is None and node.get("qualify") is None
        and node.get("sample") is None and not (node.get("cte_map") or {}).get("map")
        and node.get("where_clause") is not None
    )
    if not alone:
        raise SqlFragmentError(f"{flag} must be exactly one SQL condition (no second statement, "
                               f"ORDER BY, LIMIT, UNION …); {_EXAMPLE}")
    return node["where_clause"]


def _nodes(tree: Any) -> Iterator[dict[str, Any]]:
    stack = [tree]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            yield x
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)


def _check_tree(where: dict[str, Any], flag: str) -> None:
    """Refuse parameters, table functions outside the allow-list, tables that are not plain
    names, and the denied scalar functions anywhere in the condition."""
    for node in _nodes(where):
        kind = node.get("type")
        if node.get("class") == "PARAMETER":
            raise SqlFragmentError(f"{flag} cannot hold parameters (?, $1 …); write the value")
        if kind == "TABLE_FUNCTION":
            name = str((node.get("function") or {}).get("function_name", "")).lower()
            if name not in TABLE_FUNCTIONS:
                raise SqlFragmentError(
                    f"{flag} may read only the store's tables: table function {name}() is not "
                    f"allowed (allowed: {', '.join(sorted(TABLE_FUNCTIONS))})")
        elif kind == "BASE_TABLE":
            name = str(node.get("table_name", ""))
            catalog, schema = node.get("catalog_name") or "", node.get("schema_name") or ""
            if catalog or schema not in ("", "main") or not _TABLE_NAME.match(name):
                full = ".".join(p for p in (catalog, schema, name) if p)
                raise SqlFragmentError(
                    f"{flag} may read only the store's tables by plain name: {full!r} is not "
                    "one (no files, URLs or other databases)")
        if node.get("class") == "FUNCTION":
            name = str(node.get("function_name", "")).lower()
            if name in DENIED_FUNCTIONS:
                raise SqlFragmentError(
                    f"{flag} cannot call {name}(): it reads or changes state outside the store")


@contextlib.contextmanager
def read_only(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """A cursor of ``con``'s database inside a ``READ ONLY`` transaction, for evaluating a
    user's condition: any write fails, whatever the condition is. The cursor has its own
    transaction, so this works beside a transaction open on ``con`` (it sees committed rows)."""
    cur = con.cursor()
    try:
        # A new cursor starts in the instance's default database: on a lake, ``con`` uses
        # the attached lake instead (``corpus.lake.Lake.cursor``), and so must the cursor.
        database = con.execute("SELECT current_database()").fetchone()[0]
        if cur.execute("SELECT current_database()").fetchone()[0] != database:
            cur.execute(f'USE "{database}"')
        cur.execute("BEGIN TRANSACTION READ ONLY")
        yield cur
    finally:
        with contextlib.suppress(duckdb.Error):
            cur.execute("ROLLBACK")
        cur.close()


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an error (DuckDB's carry a multi-line context)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__
