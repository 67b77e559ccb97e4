"""The ledger's send step in batch mode: :class:`BatchCompletion`.

Steps 1-2 (look up, plan) are :class:`~generation.ledger.Completion`'s: a call already
``ok`` is answered from the store and never put in a batch. Then:

3. **register** happens per shard: the misses are written as Batch JSONL shards, and each
   shard's pending call rows, its ``batches`` row and its ``batch_calls`` links are
   committed in one transaction once its file is complete — so a kill while writing shards
   leaves no pending call without its batch, and the next run shards those calls again;
   a miss already pending in an open batch is not written again, its batch is awaited;
4. **send** drives the shards (:class:`~generation.batches.drive.Driver`): upload, create,
   poll, settle (results go into the ledger as they would online), re-submit leftovers;
   ``--mode file`` stops after writing, ``--no-wait`` after submitting: the batches left
   open are added to ``Ledger.waiting`` (the caller ends the command with
   :func:`~generation.batches.drive.stop_if_waiting`, and the next run picks them up);
5. **outcomes** are read back from the settled ``calls`` rows; a call still in an open
   batch gets an outcome ``waiting`` (not a failure: the caller goes on with the others).

``--budget`` reserves each request's cost bound at batch prices before it goes into a
shard; the first that does not fit stops the submission (those left are reported unsent).
"""

from __future__ import annotations

from typing import Any

from generation.backends.base import ChatResult
from generation.backends.openai_backend import strip_credentials, upper_bound_tokens
from generation.batches import tables
from generation.batches.drive import Driver
from generation.batches.options import BatchesOpen
from generation.batches.shards import Shard, request_line, write_shards
from generation.ledger import Completion, Outcome, insert_pending, mark_resend

REGISTER_CHUNK = 5000  # pending call rows per insert while registering a shard


class BatchCompletion(Completion):
    """A :class:`~generation.ledger.Completion` whose misses go out as batches."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.options = self.ledger.batch
        self.directory = self.options.directory(self.ledger.store.path)

    def run(self) -> list[Outcome]:
        """Completion's steps; unsettled batches of these calls are driven even with no miss."""
        self.look_up()
        self.plan()
        unsettled = self.ledger.writer.call(lambda con: tables.unsettled_keys(con, self.ids))
        if self.misses or unsettled:
            self.send(set(unsettled))
        return [o for o in self.outcomes if o is not None]

    def register(self) -> None:
        """Nothing up front: each shard registers its calls when it is written."""

    def send(self, unsettled: set[str] | None = None) -> None:
        """Shard the new misses, then drive them and the ``unsettled`` batches until settled."""
        waiting = set(self.in_batch)
        fresh = self.within_budget([j for j in range(len(self.misses)) if j not in waiting])
        keys = (unsettled or set()) | self.write(fresh)
        driver = Driver(self.ledger, self.options, self.backend)  # type: ignore[arg-type]
        try:
            driver.run(keys)
        except BatchesOpen:
            self.ledger.waiting |= driver.open
        finally:
            driver.close()
        self.deliver()

    def within_budget(self, js: list[int]) -> list[int]:
        """The misses ``js`` that fit ``--budget`` at batch prices; the rest are reported unsent."""
        backend: Any = self.backend
        budget = getattr(backend, "budget", None)
        if budget is None or budget.limit is None:
            return js
        price = backend.prices.price(backend.model, batch=True) or (0.0, 0.0)
        for n, j in enumerate(js):
            pt, ct = upper_bound_tokens(self.calls[self.misses[j]].request)
            if not budget.try_reserve((price[0] * pt + price[1] * ct) / 1e6):
                backend.request_stop("budget")
                for k in js[n:]:
                    self.on_result(k, ChatResult(
                        ok=False, error_kind="budget",
                        error=f"not submitted: the budget ${budget.limit} would be exceeded"))
                return js[:n]
        return js

    # -- 3. shards, registered one by one --------------------------------------------------
    def write(self, js: list[int]) -> set[str]:
        """Write ``misses[j]`` for j in ``js`` as shards, registering each; their keys."""
        backend: Any = self.backend
        lines = ((j, self.ids[self.misses[j]], self._line(j)) for j in js)
        keys = set()
        for shard in write_shards(self.directory, lines, model=backend.spec,
                                  endpoint=backend.endpoint, max_requests=self.options.max_requests,
                                  max_bytes=self.options.max_bytes, salt=f"run:{self.ledger.run_id}"):
            self.ledger.writer.call(lambda con, s=shard: self._register(con, s))
            keys.add(shard.key)
        return keys

    def _line(self, j: int) -> bytes:
        i = self.misses[j]
        request = self.calls[i].request
        return request_line(self.ids[i], self.backend.model, request.messages,  # type: ignore[attr-defined]
                            request.params)

    def _register(self, con: Any, shard: Shard) -> None:
        """One transaction: the shard's pending calls, its ``batches`` row and its links."""
        for start in range(0, shard.n, REGISTER_CHUNK):
            new, resend = self.pending_rows(shard.positions[start:start + REGISTER_CHUNK])
            if new:
                insert_pending(con, new)
            if resend:
                mark_resend(con, resend, self.ledger.run_id)
        backend: Any = self.backend
        first = self.calls[self.misses[shard.positions[0]]]
        tables.insert_batch(con, {
            "batch_key": shard.key, "provider": "file" if self.options.mode == "file" else "openai",
            "model": backend.spec, "endpoint": backend.endpoint,
            "base_url": strip_credentials(backend.base_urls[0]),
            "api_key_env": backend.options.api_key_env, "purpose": first.purpose, "attempt": 1,
            "shard": shard.index, "path": str(shard.path), "n_requests": shard.n,
            "bytes": shard.bytes, "state": "written" if self.options.mode == "file" else "prepared",
            "run_id": self.ledger.run_id})
        tables.insert_links(con, shard.key, shard.call_ids)

    # -- 5. outcomes -----------------------------------------------------------------------
    def deliver(self) -> None:
        """Each miss's outcome from its settled ``calls`` row, to every call it answers."""
        todo = [i for i in self.misses if self.outcomes[i] is None]
        rows = self.ledger.lookup([self.ids[i] for i in todo])
        for i in todo:
            cid = self.ids[i]
            row = rows.get(cid) or {"status": "pending"}
            if row.get("in_batch"):
                outcome = Outcome(cid, False, error_kind="waiting",
                                  error="in a batch that is not settled yet")
            elif row["status"] == "ok":
                outcome = Outcome(cid, True, row["response"], row["finish_reason"],
                                  cost=row["cost"], prompt_tokens=row["prompt_tokens"],
                                  completion_tokens=row["completion_tokens"])
            else:
                outcome = Outcome(cid, False, error_kind=row.get("error_kind") or row["status"],
                                  error=row.get("error") or f"not answered ({row['status']})")
            for p in self.positions[cid]:
                self._deliver(p, outcome)
