"""Settling result files into the ledger: each answer recorded once, whatever the file holds.

A result file is read line by line (:func:`generation.batches.results.read_line`), in chunks
of ``chunk`` lines. For each chunk the links of its ``custom_id`` s are looked up (the
writer runs the look-up after every chunk queued before it, so it sees them), and:

* a line whose call has a **pending** link (to this batch, or, for ``ingest``, to any
  batch) is settled: an answer becomes an ``ok`` call exactly as online (the ledger's own
  ``calls`` update and ``attempts`` row, tokens, cost at the batch price); a permanent
  failure a ``failed`` call with its error; a retryable one (expired, 5xx, 429) a ``retry``
  link, re-submitted when the batch is finished (:mod:`generation.batches.drive`);
* a line whose custom_id has no link is **unknown**; a second line for a call settled in
  this run is a **duplicate**; a line for a call settled by an earlier, interrupted pass is
  **already** settled — all counted and reported, none recorded;
* the chunk's call rows, attempt rows and link statuses land in **one transaction**, so a
  kill mid-file leaves whole chunks settled and the next pass skips exactly those.

Memory is one chunk: lines are streamed from disk.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from generation.backends.base import ChatResult
from generation.batches import tables
from generation.batches.results import LineResult, read_line
from generation.ledger import Ledger, attempt_rows, done_row
from generation.prices import PriceTable


@dataclass
class SettleCounts:
    """What settling found (stored in ``batches.settled``)."""

    ok: int = 0
    failed: int = 0
    retry: int = 0  # retryable failures, re-submitted (or failed) when the batch is finished
    unknown: int = 0  # custom_id of no call in the batch
    duplicates: int = 0  # a second line for a call settled in this run
    already: int = 0  # a call settled by an earlier pass (a resumed settle)
    unreadable: int = 0  # not JSON, or no custom_id

    def add(self, other: SettleCounts) -> None:
        """Add another count in."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, int]:
        """The non-zero counts."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}

    @property
    def rejected(self) -> int:
        """Lines counted but not recorded because they should not be."""
        return self.unknown + self.duplicates + self.unreadable


class Settler:
    """Writes result lines into a :class:`~generation.ledger.Ledger` (module docstring)."""

    def __init__(self, ledger: Ledger, prices: PriceTable, *, chunk: int = 2000,
                 resubmit: bool = True):
        self.ledger = ledger
        self.prices = prices
        self.chunk = chunk
        self.resubmit = resubmit  # False (ingest): a retryable failure is a failed call
        self._prices: dict[str, tuple[float, float] | None] = {}  # batch price per model

    def settle_file(self, path: Path, key: str | None = None) -> SettleCounts:
        """Settle every line of ``path`` (``key``: only calls of that batch count as known)."""
        counts = SettleCounts()
        lines: list[bytes] = []
        with open(path, "rb") as f:
            for raw in f:
                if raw.strip():
                    lines.append(raw)
                if len(lines) >= self.chunk:
                    self._chunk(lines, key, counts)
                    lines = []
        if lines:
            self._chunk(lines, key, counts)
        return counts

    def _chunk(self, raw: list[bytes], key: str | None, counts: SettleCounts) -> None:
        parsed = [read_line(r) for r in raw]
        ids = list({p.custom_id for p in parsed if p.custom_id is not None})
        links = self.ledger.writer.call(lambda con: tables.links_of(con, ids, key))
        done: list[dict[str, Any]] = []
        attempts: list[dict[str, Any]] = []
        settled: list[dict[str, Any]] = []
        seen: set[str] = set()
        run_id = self.ledger.run_id
        for line in parsed:
            link = links.get(line.custom_id) if line.custom_id is not None else None
            if line.custom_id is None or line.result is None:
                counts.unreadable += 1
            elif link is None:
                counts.unknown += 1
            elif line.custom_id in seen or link["status"] != "pending":
                if line.custom_id in seen or link["settled_run"] == run_id:
                    counts.duplicates += 1
                else:
                    counts.already += 1
            else:
                seen.add(line.custom_id)
                result = self._priced(line.result, link)
                status = self._status(line, counts)
                if status != "retry":
                    self.ledger.counts.add(result)
                    done.append(done_row(line.custom_id, result))
                    attempts += attempt_rows(line.custom_id, result, run_id)
                settled.append({"batch_key": link["batch_key"], "call_id": line.custom_id,
                                "status": status, "http_status": _http(result),
                                "error_kind": result.error_kind, "error": result.error,
                                "settled_run": run_id})
        self.ledger.writer.write(done=done, attempts=attempts, then=tables.set_links(settled))

    def _status(self, line: LineResult, counts: SettleCounts) -> str:
        assert line.result is not None
        if line.result.ok:
            counts.ok += 1
            return "ok"
        if line.retryable and self.resubmit:
            counts.retry += 1
            return "retry"
        counts.failed += 1
        return "failed"

    def _priced(self, r: ChatResult, link: dict[str, Any]) -> ChatResult:
        """The result with its batch's attempt number and its cost at the batch price."""
        for a in r.attempts:
            a.attempt = int(link["attempt"] or 1)
        if r.ok:
            model = str(link["model"]).removeprefix("openai:")
            if model not in self._prices:
                self._prices[model] = self.prices.price(model, batch=True)
            p = self._prices[model]
            if p is not None and r.prompt_tokens is not None and r.completion_tokens is not None:
                r.cost = (p[0] * r.prompt_tokens + p[1] * r.completion_tokens) / 1e6
        return r


def _http(r: ChatResult) -> int | None:
    return r.attempts[-1].http_status if r.attempts else None
