"""Moving batches through their states until every row is in the ledger.

::

    prepared ──upload──▶ uploaded ──create──▶ validating ▶ in_progress ▶ finalizing ▶ completed
       (shard written           (file id        (the provider's states, polled)        expired
        and registered)          recorded)                                              failed
                                                                           cancelling ▶ cancelled
    written (--mode file: waits for 'selfevo batches ingest')                               │
                                                                          settle ◀──────────┘
    settled ◀── every result line in the ledger; leftovers re-submitted as a new
                 'prepared' batch (attempt + 1, up to --max-attempts) or failed

Each step is recorded before the next starts, and each is safe to repeat after a kill:
an upload whose file id was not recorded is simply uploaded again (files cost nothing);
a batch created but not recorded is found again by its input file (:meth:`BatchAPI.find`)
instead of being created twice; settling skips what an earlier pass recorded; and a
re-submission's shards are content-addressed, so writing them again gives the same batch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from generation.backends.openai_backend import OpenAIBackend, OpenAIOptions, strip_credentials
from generation.batches import tables
from generation.batches.options import BatchesOpen, BatchOptions
from generation.batches.provider import FINAL_STATES, OPEN_STATES, BatchAPI, RemoteBatch
from generation.batches.settle import SettleCounts, Settler
from generation.batches.shards import request_line, write_shards
from generation.ledger import Ledger
from generation.prices import PriceTable

#: Why the rows of a finished batch that got no result line get none: (error_kind,
#: message, whether a new batch may answer them).
LEFTOVER = {
    "completed": ("missing", "the batch completed without a result line for this request", True),
    "expired": ("batch_expired", "the batch expired before this request ran", True),
    "failed": ("batch_failed", "the batch failed", True),
    "cancelled": ("cancelled", "the batch was cancelled", False),
}


class Driver:
    """Uploads, creates, polls and settles batches (module docstring) for one ledger.

    Results are downloaded, and re-submissions written, next to each batch's shard file.
    """

    def __init__(self, ledger: Ledger, options: BatchOptions,
                 backend: OpenAIBackend | None = None, prices: PriceTable | None = None,
                 api_key_env: str | None = None):
        self.ledger = ledger
        self.options = options
        self.backend = backend
        self.api_key_env = api_key_env  # overrides the variable recorded with a batch
        self.prices = prices or (backend.prices if backend is not None else PriceTable.load())
        self.settler = Settler(ledger, self.prices, chunk=options.settle_chunk)
        self.settled = SettleCounts()  # over every batch settled by this driver
        self.open: set[str] = set()  # the batches left unsettled when run() raised
        self._apis: dict[tuple[str, str], tuple[BatchAPI, OpenAIBackend | None]] = {}
        self._bars: dict[str, tuple[Any, int]] = {}  # key -> (progress task, requests)

    def close(self) -> None:
        """Release the clients this driver made."""
        for api, made in self._apis.values():
            api.close()
            if made is not None:
                made.close()
        self._apis.clear()

    # -- the loop --------------------------------------------------------------------------
    def run(self, keys: Iterable[str]) -> None:
        """Drive ``keys`` (and their re-submissions) until settled.

        Raises :class:`BatchesOpen` when some cannot settle now: file shards waiting for
        ``ingest``, or provider batches still running without ``wait``.
        """
        keys = set(keys)
        while True:
            rows = self.rows(keys)
            progressed = False
            for row in rows:
                new = self.advance(row)
                keys |= new
                progressed |= bool(new)
            rows = self.rows(keys)
            self.draw(rows)
            if not rows:
                return
            if progressed:
                continue  # re-submissions to upload now
            if not self.options.wait or all(r["provider"] == "file" for r in rows):
                self.open = {r["batch_key"] for r in rows}
                raise BatchesOpen(waiting_message(rows))
            time.sleep(self.options.poll_interval)

    def rows(self, keys: Iterable[str]) -> list[dict[str, Any]]:
        """The unsettled ``batches`` rows among ``keys``."""
        keys = sorted(keys)
        return self.ledger.writer.call(lambda con: tables.batch_rows(con, keys, unsettled=True))

    def advance(self, row: dict[str, Any]) -> set[str]:
        """One step for one batch; returns the keys of the batches re-submitting its rows."""
        state = row["state"]
        if state == "written":
            return set()
        if state == "prepared":
            row = self.upload(row)
        if row["state"] == "uploaded":
            row = self.create(row)
        if row["state"] in OPEN_STATES:
            row = self.poll(row)
        if row["state"] in FINAL_STATES:
            return self.settle(row)
        return set()

    # -- steps -----------------------------------------------------------------------------
    def upload(self, row: dict[str, Any]) -> dict[str, Any]:
        """prepared → uploaded (the shard file on the provider)."""
        path = Path(row["path"])
        if not path.exists():
            self.rewrite(row, path)
        file_id = self.api(row).upload(path)
        return self.update(row, {"state": "uploaded", "input_file_id": file_id})

    def create(self, row: dict[str, Any]) -> dict[str, Any]:
        """uploaded → the provider's first state; adopts a batch a lost answer created."""
        api = self.api(row)
        since = row["created_at"].timestamp() if row.get("created_at") else None
        remote = api.find(row["input_file_id"], since) or api.create(
            row["input_file_id"], row["batch_key"], self.options.completion_window, since)
        return self.update(row, self.remote_fields(remote), ["submitted_at"])

    def poll(self, row: dict[str, Any]) -> dict[str, Any]:
        """Ask the provider how the batch is doing; record it."""
        remote = self.api(row).retrieve(row["batch_id"])
        stamps = ["polled_at"] + (["completed_at"] if remote.status in FINAL_STATES else [])
        return self.update(row, self.remote_fields(remote), stamps)

    def settle(self, row: dict[str, Any]) -> set[str]:
        """A finished batch: its output and error files into the ledger, then its leftovers."""
        counts = SettleCounts()
        api = self.api(row) if row["provider"] != "file" else None
        for kind in ("output", "error"):
            file_id = row.get(f"{kind}_file_id")
            if not file_id or api is None:
                continue
            path = Path(row["path"]).with_name(f"{row['batch_key']}.{kind}.jsonl")
            if not path.exists():
                api.download(file_id, path)
            counts.add(self.settler.settle_file(path, row["batch_key"]))
        self.settled.add(counts)
        return self.finish(row, counts)

    def finish(self, row: dict[str, Any], counts: SettleCounts) -> set[str]:
        """Re-submit (or fail) what has no answer yet, and mark the batch settled."""
        kind, message, retryable = LEFTOVER.get(row["state"], LEFTOVER["completed"])
        if row["state"] == "failed" and row.get("error"):
            message = f"the batch failed: {row['error']}"
        resubmit = retryable and int(row["attempt"]) < self.options.max_attempts
        key = row["batch_key"]
        shards = self.write_resubmission(row) if resubmit else []
        summary = {**counts.as_dict(), "from": row["state"]}

        def run(con: Any) -> int:
            con.execute("UPDATE batch_calls SET status = 'retry', error_kind = ?, error = ?, "
                        "settled_run = ? WHERE batch_key = ? AND status = 'pending'",
                        [kind, message, self.ledger.run_id, key])
            n = con.execute("SELECT count(*) FROM batch_calls WHERE batch_key = ? "
                            "AND status = 'retry'", [key]).fetchone()[0]
            _attempt_rows(con, key, int(row["attempt"]), "retry" if resubmit else "failed",
                          self.ledger.run_id)
            if resubmit:
                for shard in shards:
                    tables.insert_batch(con, {**self.child_row(row, shard)})
                    con.execute("INSERT OR IGNORE INTO batch_calls (batch_key, call_id, status) "
                                "SELECT ?, call_id, 'pending' FROM batch_calls WHERE "
                                "batch_key = ? AND status = 'retry' AND call_id BETWEEN ? AND ?",
                                [shard.key, key, shard.first, shard.last])
                con.execute("UPDATE calls SET n_attempts = n_attempts + 1 FROM batch_calls l "
                            "WHERE l.batch_key = ? AND l.status = 'retry' "
                            "AND calls.call_id = l.call_id", [key])
                con.execute("UPDATE batch_calls SET status = 'resubmitted' WHERE batch_key = ? "
                            "AND status = 'retry'", [key])
            else:
                con.execute(
                    "UPDATE calls SET status = 'failed', error_kind = l.error_kind, "
                    "error = l.error, n_attempts = n_attempts + 1, completed_at = now() "
                    "FROM batch_calls l WHERE l.batch_key = ? AND l.status = 'retry' "
                    "AND calls.call_id = l.call_id AND calls.status = 'pending'", [key])
                con.execute("UPDATE batch_calls SET status = 'failed' WHERE batch_key = ? "
                            "AND status = 'retry'", [key])
            if n and resubmit:
                summary["resubmitted"] = n
            elif n:
                summary["failed"] = summary.get("failed", 0) + n
            tables.update_batch(con, key, {"state": "settled", "settled": json.dumps(summary)},
                                ["settled_at"])
            return n

        n = self.ledger.writer.call(run)
        if not resubmit:
            self.ledger.counts.failed += n
        return {s.key for s in shards}

    # -- re-submission ---------------------------------------------------------------------
    def write_resubmission(self, row: dict[str, Any]) -> list[Any]:
        """Shard files for the rows of ``row`` still to answer (none are registered yet)."""
        model = row["model"].removeprefix("openai:")
        key = row["batch_key"]

        def write(con: Any) -> list[Any]:
            return list(write_shards(
                Path(row["path"]).parent, _lines(con, key, model, ("pending", "retry")), model=row["model"], endpoint=row["endpoint"],
                max_requests=self.options.max_requests, max_bytes=self.options.max_bytes,
                attempt=int(row["attempt"]) + 1, salt=key, keep_ids=False))

        return self.ledger.writer.call(write)

    def rewrite(self, row: dict[str, Any], path: Path) -> None:
        """Write a registered shard's file again from its calls (it was deleted)."""
        model = row["model"].removeprefix("openai:")

        def write(con: Any) -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as f:
                for _, _, line in _lines(con, row["batch_key"], model):
                    f.write(line)

        self.ledger.writer.call(write)

    def child_row(self, row: dict[str, Any], shard: Any) -> dict[str, Any]:
        """The ``batches`` row of a shard re-submitting ``row``'s leftovers."""
        return {"batch_key": shard.key, "provider": row["provider"], "model": row["model"],
                "endpoint": row["endpoint"], "base_url": row["base_url"],
                "api_key_env": row["api_key_env"], "purpose": row["purpose"],
                "attempt": int(row["attempt"]) + 1, "parent_key": row["batch_key"],
                "shard": shard.index, "path": str(shard.path), "n_requests": shard.n,
                "bytes": shard.bytes, "state": "prepared", "run_id": self.ledger.run_id}

    # -- helpers ---------------------------------------------------------------------------
    def update(self, row: dict[str, Any], fields: dict[str, Any], stamps: list[str] | None = None
               ) -> dict[str, Any]:
        """Record new columns of a batch; the row with them."""
        key = row["batch_key"]
        self.ledger.writer.call(lambda con: tables.update_batch(con, key, fields, stamps or []))
        return {**row, **fields}

    @staticmethod
    def remote_fields(remote: RemoteBatch) -> dict[str, Any]:
        """The columns a provider's answer updates."""
        return {"batch_id": remote.id, "state": remote.status,
                "output_file_id": remote.output_file_id, "error_file_id": remote.error_file_id,
                "n_completed": remote.completed, "n_failed": remote.failed,
                "error": remote.errors}

    def api(self, row: dict[str, Any]) -> BatchAPI:
        """The Batch API a batch went to (the run's backend when it is the same endpoint)."""
        env = self.api_key_env or row["api_key_env"] or "OPENAI_API_KEY"
        ident = (row["base_url"], env)
        if ident not in self._apis:
            b = self.backend
            if b is not None and strip_credentials(b.base_urls[0]) == row["base_url"] and (
                    self.api_key_env is None or b.options.api_key_env == env):
                self._apis[ident] = (BatchAPI.for_backend(b), None)
            else:
                made = OpenAIBackend(row["model"].removeprefix("openai:"), [row["base_url"]],
                                     OpenAIOptions(api_key_env=env))
                self._apis[ident] = (BatchAPI.for_backend(made), made)
        return self._apis[ident][0]

    def draw(self, rows: list[dict[str, Any]]) -> None:
        """One progress task per batch: its state, completed and failed counts."""
        display = self.options.display
        if display is None:
            return
        for r in rows:
            key = r["batch_key"]
            if key not in self._bars:
                self._bars[key] = (display.task(f"batch {key} {r['purpose'] or ''}".strip(),
                                                int(r["n_requests"])), int(r["n_requests"]))
            done, failed = r.get("n_completed") or 0, r.get("n_failed") or 0
            self._bars[key][0].update(
                completed=done + failed, force=True,
                info=f"{r['state']} [green]done {done}[/] [red]failed {failed}[/]")
        live = {r["batch_key"] for r in rows}
        for key, (bar, total) in self._bars.items():
            if key not in live:
                bar.update(completed=total, info="settled", force=True)


def _lines(con: Any, key: str, model: str, statuses: tuple[str, ...] | None = None
           ) -> Iterator[tuple[int, str, bytes]]:
    """The request lines of a batch's calls (links in ``statuses``), in call id order.

    Rebuilt from the ``calls`` rows (the messages and params their call id hashes), fetched
    a thousand at a time.
    """
    cur = con.execute(
        "SELECT l.call_id, c.messages, c.params FROM batch_calls l JOIN calls c USING (call_id) "
        "WHERE l.batch_key = ? AND (? IS NULL OR list_contains(?, l.status)) ORDER BY l.call_id",
        [key, None if statuses is None else list(statuses),
         None if statuses is None else list(statuses)])
    n = 0
    while True:
        rows = cur.fetchmany(1000)
        if not rows:
            return
        for cid, messages, params in rows:
            yield n, cid, request_line(cid, model, json.loads(messages), json.loads(params))
            n += 1


def _attempt_rows(con: Any, key: str, attempt: int, status: str, run_id: str) -> None:
    """An ``attempts`` row for each ``retry`` link of a batch (its row failed or went missing)."""
    con.execute("INSERT INTO attempts (call_id, attempt, status, http_status, error_kind, error, "
                "latency, run_id) SELECT call_id, ?, ?, http_status, error_kind, error, NULL, ? "
                "FROM batch_calls WHERE batch_key = ? AND status = 'retry'",
                [attempt, status, run_id, key])


def stop_if_waiting(ledger: Ledger) -> None:
    """Raise :class:`BatchesOpen` naming the ledger's waiting batches that are still open."""
    keys = sorted(ledger.waiting)
    rows = ledger.writer.call(lambda con: tables.batch_rows(con, keys, unsettled=True))
    if rows:
        raise BatchesOpen(waiting_message(rows))


def waiting_message(rows: list[dict[str, Any]]) -> str:
    """The line a command ends with while batches are not settled: what, and what to do."""
    remote = [r for r in rows if r["provider"] != "file"]
    files = [r for r in rows if r["provider"] == "file"]
    parts = []
    if len(remote) == 1:
        r = remote[0]
        parts.append(f"{r['n_requests']:,} requests in batch {r['batch_id'] or r['batch_key']}, "
                     f"state {r['state']}")
    elif remote:
        states: dict[str, int] = {}
        for r in remote:
            states[r["state"]] = states.get(r["state"], 0) + 1
        parts.append(f"{sum(r['n_requests'] for r in remote):,} requests in {len(remote)} "
                     f"batches ({', '.join(f'{k} {v}' for k, v in sorted(states.items()))})")
    if remote:
        parts.append("run 'selfevo batches poll' or the same command again")
    if files:
        parts.append(
            f"{sum(r['n_requests'] for r in files):,} requests in {len(files)} shard file(s) "
            f"under {Path(files[0]['path']).parent} wait for results: run them (e.g. vllm run-batch -i SHARD.jsonl "
            "-o OUT.jsonl --model MODEL), then 'selfevo batches ingest OUT.jsonl…' and the same "
            "command again")
    return "; ".join(parts)
