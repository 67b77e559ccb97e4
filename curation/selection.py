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

from corpus.store import Store
from curation.errors import CurationError


@dataclass(frozen=True)
class Selection:
    """A record selection; every part is optional and they combine with AND."""

    where: str | None = None  # SQL condition over the records_full view
    snapshot: str | None = None  # name of a snapshot whose records to take
    kind: str | None = None  # meta | self | qa
    round: int | None = None  # self-evolution round

    def as_dict(self) -> dict[str, Any]:
        """For ``runs.config``: only the parts given."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def sql(self) -> tuple[str, list[Any]]:
        """A WHERE condition over ``records_full`` and its parameters."""
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
        if self.where:
            # The newline ends a trailing "--" comment inside the user's condition.
            conds.append(f"({self.where}\n)")
        return " AND ".join(conds), params


def count_selected(store: Store, selection: Selection) -> int:
    """Number of records selected; a bad ``--where`` or unknown snapshot is a CurationError."""
    if selection.where is not None:
        from corpus.snapshots import check_where

        check_where(selection.where)  # one condition: no ';', no second statement
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
            return con.execute(f"SELECT count(*) FROM records_full WHERE {cond}",
                               params).fetchone()[0]
        except duckdb.Error as exc:
            first = str(exc).splitlines()[0]
            raise CurationError(f"bad --where {selection.where!r}: {first} (columns of "
                                "records_full: record_id, kind, round, prompt, response, "
                                "feedback, verdict, refinement, gold_answer, source, split, …)"
                                ) from None


def iter_selected(
    store: Store, selection: Selection, columns: Sequence[str], chunk_size: int = 50_000
) -> Iterator[list[dict[str, Any]]]:
    """Yield the selected records (``record_id`` plus ``columns``) in chunks of dicts."""
    cond, params = selection.sql()
    cols = ", ".join(["record_id", *[c for c in dict.fromkeys(columns) if c != "record_id"]])
    last = ""
    while True:
        with store.connection() as con:
            table = con.execute(
                f"SELECT {cols} FROM records_full WHERE {cond} AND record_id > ? "
                f"ORDER BY record_id LIMIT {int(chunk_size)}", [*params, last]
            ).to_arrow_table()
        if table.num_rows == 0:
            return
        rows = table.to_pylist()
        last = rows[-1]["record_id"]
        yield rows


def selection_options(f: Any) -> Any:
    """``--where``, ``--snapshot``, ``--kind``, ``--round``: click options building a Selection.

    The decorated command receives one ``selection`` argument.
    """
    import functools

    import click

    @click.option("--where", default=None, help="SQL condition over the records_full view.")
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
