"""``selfevo batches list | show | cancel | poll | ingest``: the library behind the commands.

``poll`` and ``cancel`` reach the provider a batch went to (its stored base URL) with the
key from the variable named when it was submitted (``--api-key-env`` overrides it);
``ingest`` settles result files of any engine with the settling checks of
:mod:`generation.batches.settle` (no re-submission: a failed row is a failed call, which
the next run of the command sends again).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corpus.store import Store
from generation.batches import tables
from generation.batches.drive import Driver
from generation.batches.options import BatchesOpen, BatchOptions
from generation.batches.provider import FINAL_STATES, OPEN_STATES
from generation.batches.settle import SettleCounts, Settler
from generation.errors import GenerationError
from generation.ledger import Ledger
from generation.prices import PriceTable


def list_batches(db: str, everything: bool = False, state: str | None = None
                 ) -> list[dict[str, Any]]:
    """The store's batches, oldest first: the unsettled ones, or ``everything``."""
    with Store.open_readonly(db) as store, store.connection() as con:
        rows = tables.batch_rows(con, where="? IS NULL OR state = ?", params=[state, state],
                                 unsettled=not everything and state is None)
    return rows


def show_batch(db: str, ref: str) -> tuple[dict[str, Any], dict[str, int]]:
    """One batch (by key, provider id, or a prefix of either) and its links per status."""
    with Store.open_readonly(db) as store, store.connection() as con:
        row = _one(tables.find_batches(con, ref), ref)
        return row, tables.link_counts(con, row["batch_key"])


@dataclass
class PollResult:
    """What ``batches poll`` did."""

    rows: list[dict[str, Any]] = field(default_factory=list)  # the batches polled, as they are now
    settled: SettleCounts = field(default_factory=SettleCounts)
    waiting: str | None = None  # the waiting line when some are not settled


def poll_batches(db: str, refs: Sequence[str] = (), *, wait: bool = False,
                 poll_interval: float = 30.0, max_attempts: int = 3,
                 api_key_env: str | None = None, prices: str | None = None,
                 display: Any = None) -> PollResult:
    """Poll open provider batches (all, or ``refs``); settle and re-submit finished ones."""
    options = BatchOptions(wait=wait, poll_interval=poll_interval, max_attempts=max_attempts,
                           display=display)
    result = PollResult()
    with Store.open(db, command="batches poll") as store, \
            store.run("batches poll", {"refs": list(refs), "wait": wait}) as run, \
            Ledger(store, run.run_id) as ledger:
        keys = _keys(ledger, refs, provider="openai")
        driver = Driver(ledger, options, prices=PriceTable.load(prices), api_key_env=api_key_env)
        try:
            driver.run(keys)
        except BatchesOpen as exc:
            result.waiting = str(exc)
        finally:
            driver.close()
        result.settled = driver.settled
        result.rows = ledger.writer.call(lambda con: tables.batch_rows(con, sorted(keys)))
        run.counts.update({"batches": len(keys), **driver.settled.as_dict()})
    return result


def cancel_batches(db: str, refs: Sequence[str], *, api_key_env: str | None = None
                   ) -> list[dict[str, Any]]:
    """Cancel batches: at the provider (then settled as they end), or locally (settled now).

    A batch that never reached the provider (``prepared``, ``uploaded``, a ``written``
    file shard) is cancelled at once: its pending calls become ``failed`` (``cancelled``),
    so the next run of the command sends them again, in whatever mode it runs.
    """
    if not refs:
        raise GenerationError("name the batches to cancel (keys or batch ids; see 'selfevo batches list')")
    options = BatchOptions(wait=False)
    with Store.open(db, command="batches cancel") as store, \
            store.run("batches cancel", {"refs": list(refs)}) as run, \
            Ledger(store, run.run_id) as ledger:
        keys = _keys(ledger, refs)
        driver = Driver(ledger, options, api_key_env=api_key_env)
        try:
            for row in driver.rows(keys):
                _cancel(driver, row)
        finally:
            driver.close()
        run.counts["batches"] = len(keys)
        return ledger.writer.call(lambda con: tables.batch_rows(con, sorted(keys)))


def _cancel(driver: Driver, row: dict[str, Any]) -> None:
    if row["state"] == "uploaded" and row["provider"] == "openai":
        found = driver.api(row).find(row["input_file_id"])  # created, answer lost?
        if found is not None:
            row = driver.update(row, driver.remote_fields(found), ["submitted_at"])
    if row["state"] in OPEN_STATES and row["batch_id"]:
        remote = driver.api(row).cancel(row["batch_id"])
        row = driver.update(row, driver.remote_fields(remote))
    elif row["state"] in ("prepared", "uploaded", "written"):
        row = driver.update(row, {"state": "cancelled"}, ["completed_at"])
    if row["state"] in FINAL_STATES:
        driver.settle(row)


@dataclass
class IngestResult:
    """What ``batches ingest`` did, per file and over all."""

    files: list[tuple[str, SettleCounts]] = field(default_factory=list)
    total: SettleCounts = field(default_factory=SettleCounts)
    settled_batches: int = 0  # batches with every row answered now
    still_pending: int = 0  # requests of the ingested batches still without a result


def ingest_files(db: str, paths: Sequence[str], *, prices: str | None = None,
                 chunk: int | None = None) -> IngestResult:
    """Settle result files (OpenAI / vLLM / SGLang batch output, or flat rows) into the store."""
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise GenerationError(f"no such file: {missing[0]}")
    result = IngestResult()
    with Store.open(db, command="batches ingest") as store, \
            store.run("batches ingest", {"files": [str(p) for p in paths]}) as run, \
            Ledger(store, run.run_id) as ledger:
        settler = Settler(ledger, PriceTable.load(prices),
                          chunk=chunk or BatchOptions().settle_chunk, resubmit=False)
        for p in paths:
            counts = settler.settle_file(Path(p))
            result.files.append((str(p), counts))
            result.total.add(counts)
        result.settled_batches, result.still_pending = ledger.writer.call(
            lambda con: _close_ingested(con, run.run_id))
        run.counts.update({**result.total.as_dict(), "batches_settled": result.settled_batches})
    return result


def _close_ingested(con: Any, run_id: str) -> tuple[int, int]:
    """Mark settled the batches this run answered completely; (settled, rows still pending)."""
    touched = "SELECT DISTINCT batch_key FROM batch_calls WHERE settled_run = ?"
    pending = con.execute(f"SELECT count(*) FROM batch_calls WHERE status = 'pending' AND "
                          f"batch_key IN ({touched})", [run_id]).fetchone()[0]
    done = [k for (k,) in con.execute(
        f"SELECT batch_key FROM batches WHERE state <> 'settled' AND batch_key IN ({touched}) "
        "AND batch_key NOT IN (SELECT batch_key FROM batch_calls WHERE status = 'pending')",
        [run_id]).fetchall()]
    for key in done:
        counts = tables.link_counts(con, key)
        tables.update_batch(con, key, {"state": "settled",
                                       "settled": json.dumps({**counts, "from": "ingest"})},
                            ["settled_at"])
    return len(done), pending


def _keys(ledger: Ledger, refs: Sequence[str], provider: str | None = None) -> list[str]:
    """Batch keys named by ``refs`` (each must match one), else every unsettled batch."""
    def find(con: Any) -> list[str]:
        if refs:
            return [_one(tables.find_batches(con, r), r)["batch_key"] for r in refs]
        return [r["batch_key"] for r in tables.batch_rows(con, unsettled=True)
                if provider is None or r["provider"] == provider]
    return ledger.writer.call(find)


def _one(rows: list[dict[str, Any]], ref: str) -> dict[str, Any]:
    if not rows:
        raise GenerationError(f"no batch {ref!r}; see 'selfevo batches list --all'")
    if len(rows) > 1:
        raise GenerationError(f"{ref!r} names {len(rows)} batches; give more of the key")
    return rows[0]
