"""Which records a curation command works on: ``--where``, ``--snapshot``, ``--kind``, ``--round``.

Shared by ``curate filter``, ``curate decontam`` and ``curate dedup``. Records are read from
the ``records_full`` view (records plus ``prompt``, ``gold_answer``, ``split`` …) in chunks
ordered by ``record_id`` (keyset pagination), so memory stays bounded and each chunk opens
the store only briefly: readers get in between.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import duckdb
import pyarrow as pa

from corpus.sqlfragment import SqlCondition, first_line, read_only
from corpus.store import Store
from curation.errors import CurationError


@dataclass(frozen=True)
class Selection:
    """A record selection; every part is optional and they combine with AND.

    ``where`` is checked on construction (:class:`corpus.sqlfragment.SqlCondition`): one
    expression over the store, or a one-line error naming ``--where``.
    """

    where: SqlCondition | None = None  # SQL condition over the records_full view
    snapshot: str | None = None  # name of a snapshot whose records to take
    kind: str | None = None  # meta | self | qa
    round: int | None = None  # self-evolution round

    def __post_init__(self) -> None:
        object.__setattr__(self, "where", SqlCondition.of(self.where, "--where"))

    def as_dict(self) -> dict[str, Any]:
        """For ``runs.config``: only the parts given (the condition as written)."""
        d = {k: v for k, v in asdict(self).items() if v is not None}
        if self.where is not None:
            d["where"] = self.where.text
        return d

    def sql(self) -> tuple[str, list[Any]]:
        """One parenthesised WHERE condition over ``records_full`` and its parameters."""
        conds, params = ["true"], []
        if self.snapshot is not None:
            conds.append("record_id IN (SELECT sr.record_id FROM snapshot_records sr "
                         "JOIN snapshots s USING (snapshot_id) WHERE s.name = ?)")
            params.append(self.snapshot)
        if self.kind is not None:
            conds.append("kind = ?")
            params.append(self.kind)
        if self.round is not None:
            conds.append("round = ?")
            params.append(self.round)
        if self.where is not None:
            conds.append(self.where.sql)
        return "(" + " AND ".join(conds) + ")", params


def count_selected(store: Store, selection: Selection) -> int:
    """Number of records selected; a bad ``--where`` or unknown snapshot is a CurationError."""
    cond, params = selection.sql()
    with store.connection() as con:
        if selection.snapshot is not None and not con.execute(
            "SELECT count(*) FROM snapshots WHERE name = ?", [selection.snapshot]
        ).fetchone()[0]:
            names = [r[0] for r in con.execute("SELECT name FROM snapshots ORDER BY name")
                     .fetchall()]
            raise CurationError(f"no snapshot named {selection.snapshot!r}; snapshots: "
                                f"{', '.join(names) or '(none yet)'}")
        try:
            with read_only(con) as cur:
                return cur.execute(f"SELECT count(*) FROM records_full WHERE {cond}",
                                   params).fetchone()[0]
        except duckdb.Error as exc:
            raise CurationError(f"bad --where {selection.where.text if selection.where else ''!r}"
                                f": {first_line(exc)} (columns of records_full: record_id, kind, "
                                "round, prompt, response, feedback, verdict, refinement, "
                                "gold_answer, source, split, …)") from None


def iter_selected_tables(
    store: Store, selection: Selection, columns: str, chunk_size: int = 50_000
) -> Iterator[pa.Table]:
    """The selected records' ``columns`` (SQL select list, starting with ``record_id``) as
    Arrow tables of up to ``chunk_size`` rows, in ``record_id`` order.

    Keyset pagination: each chunk asks for ``record_id`` greater than the last one seen, so
    the loop ends after at most (selected / chunk_size) + 1 queries whatever the condition
    is (it is one parenthesised predicate, ANDed with the key). Each chunk is read in a
    read-only transaction and opens the store only briefly: readers get in between.
    """
    cond, params = selection.sql()
    last = ""
    while True:
        with store.connection() as con, read_only(con) as cur:
            table = cur.execute(
                f"SELECT {columns} FROM records_full WHERE {cond} AND record_id > ? "
                f"ORDER BY record_id LIMIT {int(chunk_size)}", [*params, last]
            ).to_arrow_table()
        if table.num_rows == 0:
            return
        nxt = table.column("record_id")[-1].as_py()
        if nxt <= last:  # cannot happen with the key above; never loop if it ever did
            raise CurationError(f"record selection did not advance past {last!r}")
        last = nxt
        yield table


def iter_selected(
    store: Store, selection: Selection, columns: Sequence[str], chunk_size: int = 50_000
) -> Iterator[list[dict[str, Any]]]:
    """Yield the selected records (``record_id`` plus ``columns``) in chunks of dicts."""
    cols = ", ".join(["record_id", *[c for c in dict.fromkeys(columns) if c != "record_id"]])
    for table in iter_selected_tables(store, selection, cols, chunk_size):
        yield table.to_pylist()


def selection_options(f: Any) -> Any:
    """``--where``, ``--snapshot``, ``--kind``, ``--round``: click options building a Selection.

    The decorated command receives one ``selection`` argument.
    """
    import functools

    import click

    @click.option("--where", default=None,
                  help="A condition: one SQL expression over the records_full view.")
    @click.option("--snapshot", default=None, help="Only records of this snapshot.")
    @click.option("--kind", type=click.Choice(["meta", "self", "qa"]), default=None,
                  help="Only records of this kind.")
    @click.option("--round", "round_", type=int, default=None,
                  help="Only records of this self-evolution round.")
    @functools.wraps(f)
    def wrapper(*args: Any, where: str | None, snapshot: str | None, kind: str | None,
                round_: int | None, **kwargs: Any) -> Any:
        return f(*args, selection=Selection(where, snapshot, kind, round_), **kwargs)

    return wrapper
