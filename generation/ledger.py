"""The call ledger: every model request written ahead, completed after, never sent twice.

``call_id`` is the content hash of ``{model, endpoint (no credentials), messages, params,
sample_index}`` — the cache key and the resume key. The life of a call:

1. **Cached?** A call_id already ``ok`` in ``calls`` is answered from the store; nothing is
   sent. ``sample_index`` makes N samples of one request N distinct cached calls.
2. **Pending before sent.** Its ``calls`` row is committed as ``pending`` before the request
   leaves. Backends that announce each send (``before_send``, the OpenAI backend) get rows
   registered in a window a few hundred requests ahead of the sender, so a job that dies
   leaves at most that window (plus what was in flight) pending; other backends get the
   whole batch registered first.
3. **Completed.** ``ok`` with response, finish_reason, usage, cost and latency, or ``failed``
   with the last error; each attempt is a row in ``attempts``.
4. **Resume.** Opening the store for writing marks rows still ``pending`` (their job died)
   ``possibly_billed``; the next run re-sends them (they may have been answered and billed
   before the job died — the flag stays, so the ledger can account for it). Failed calls are
   re-sent too; a call not sent after all (budget, Ctrl-C) is removed again or restored.

Writes are batched by one writer thread: it flushes every ``interval`` seconds (sooner when
the sender needs pending rows) in short transactions and holds the DuckDB connection for at
most ``hold`` seconds before closing it for at least ``gap`` seconds, so readers (``selfevo
sql``, ``stats``) get in while a long collection runs. It never waits on the network.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa

from corpus.records import insert_records
from corpus.store import Store
from generation.backends.base import Backend, ChatRequest, ChatResult
from generation.errors import GenerationError
from schemas.identity import canonical_json, content_id

#: Results that mean "never sent" (no attempt was made).
UNSENT_KINDS = {"budget", "interrupted"}


def call_id(model: str, endpoint: str | None, request: ChatRequest) -> str:
    """The content id of one request (its cache and resume key)."""
    return content_id({
        "model": model, "endpoint": endpoint, "messages": request.messages,
        "params": request.params, "sample_index": request.sample_index,
    })


@dataclass
class Call:
    """A request the ledger should get answered, with what made it."""

    request: ChatRequest
    purpose: str  # response | feedback | refinement | …
    template: str | None = None  # hash of the template that made the messages


@dataclass
class Outcome:
    """The answer to one :class:`Call`: from the cache or from the backend."""

    call_id: str
    ok: bool
    text: str | None = None
    finish_reason: str | None = None
    cached: bool = False
    error_kind: str | None = None
    error: str | None = None
    cost: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass
class LedgerCounts:
    """What the ledger did so far (shown by the progress bar and saved in ``runs.counts``)."""

    cached: int = 0
    ok: int = 0
    failed: int = 0
    unsent: int = 0
    resent_possibly_billed: int = 0
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """Counts as a plain dict (``cost`` rounded to 1e-6 USD)."""
        d = dict(self.__dict__)
        d["cost"] = round(self.cost, 6)
        return d


_CALL_ROW = ["call_id", "model", "endpoint", "messages", "params", "sample_index", "template",
             "purpose", "status", "run_id"]
_DONE_ROW = ["call_id", "status", "response", "finish_reason", "prompt_tokens",
             "completion_tokens", "cost", "latency", "n_attempts", "error_kind", "error"]
_ATTEMPT_ROW = ["call_id", "attempt", "status", "http_status", "error_kind", "error", "latency",
                "run_id"]
_TYPES = {"sample_index": pa.int32(), "prompt_tokens": pa.int32(), "completion_tokens": pa.int32(),
          "n_attempts": pa.int32(), "attempt": pa.int32(), "http_status": pa.int32(),
          "cost": pa.float64(), "latency": pa.float64()}


def _table(rows: list[dict[str, Any]], columns: list[str]) -> pa.Table:
    return pa.table({c: pa.array([r.get(c) for r in rows], type=_TYPES.get(c, pa.string()))
                     for c in columns})


@dataclass
class _Batch:
    new_calls: list[dict[str, Any]] = field(default_factory=list)
    resend: list[str] = field(default_factory=list)
    done: list[dict[str, Any]] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    unsent_new: list[str] = field(default_factory=list)
    unsent_failed: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    seq: int = 0

    def __len__(self) -> int:
        return (len(self.new_calls) + len(self.resend) + len(self.done) + len(self.attempts)
                + len(self.unsent_new) + len(self.unsent_failed) + len(self.records))


class Writer:
    """The one thread that touches the store while a collection runs."""

    def __init__(self, store: Store, run_id: str, *, interval: float = 0.2, hold: float = 1.0,
                 gap: float = 0.1, max_rows: int = 5000):
        self.store = store
        self.run_id = run_id
        self.interval = interval
        self.hold = hold
        self.gap = gap
        self.max_rows = max_rows
        self._cond = threading.Condition()
        self._batch = _Batch()
        self._seq = 0  # last sequence number handed out
        self._committed = 0  # last sequence number committed
        self._urgent = False
        self._jobs: list[tuple[Callable[[duckdb.DuckDBPyConnection], Any], Future[Any]]] = []
        self._stopping = False
        self.error: BaseException | None = None
        self.flushes = 0
        self._thread = threading.Thread(target=self._loop, name="selfevo-ledger-writer",
                                        daemon=True)
        self._thread.start()

    # -- producers (any thread) ----------------------------------------------------------
    def _add(self, urgent: bool, **parts: list[Any]) -> int:
        with self._cond:
            self._raise()
            for name, rows in parts.items():
                getattr(self._batch, name).extend(rows)
            self._seq += 1
            self._batch.seq = self._seq
            if urgent or len(self._batch) >= self.max_rows:
                self._urgent = True
                # Wake the writer only when it must act now: a wake-up per result would
                # bounce the GIL between threads hundreds of times a second.
                self._cond.notify_all()
            return self._seq

    def register(self, new_calls: list[dict[str, Any]], resend: list[str]) -> int:
        """Queue pending rows (flushed at once); returns a ticket for :meth:`wait`."""
        return self._add(True, new_calls=new_calls, resend=resend)

    def complete(self, done: dict[str, Any], attempts: list[dict[str, Any]]) -> None:
        """Queue a completed (ok or failed) call and its attempts."""
        self._add(False, done=[done], attempts=attempts)

    def unsent(self, new: list[str], failed: list[str]) -> None:
        """Queue removal (new) or restoration (previously failed) of calls never sent."""
        self._add(False, unsent_new=new, unsent_failed=failed)

    def records(self, rows: list[dict[str, Any]]) -> None:
        """Queue ``make_record`` rows."""
        self._add(False, records=rows)

    def wait(self, ticket: int) -> None:
        """Block until everything queued up to ``ticket`` is committed."""
        with self._cond:
            self._urgent = True
            self._cond.notify_all()
            while self._committed < ticket:
                self._raise()
                self._cond.wait(0.05)
            self._raise()

    def committed(self, ticket: int) -> bool:
        """Whether ``ticket`` is committed (no waiting)."""
        return self._committed >= ticket

    def flush(self) -> None:
        """Commit everything queued so far."""
        with self._cond:
            ticket = self._seq
        self.wait(ticket)

    def call(self, fn: Callable[[duckdb.DuckDBPyConnection], Any]) -> Any:
        """Run ``fn(con)`` on the writer thread, in its own transaction, after queued rows."""
        fut: Future[Any] = Future()
        with self._cond:
            self._raise()
            self._jobs.append((fn, fut))
            self._urgent = True
            self._cond.notify_all()
        return fut.result()

    def close(self) -> None:
        """Flush, release the connection and stop the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()
        if self.error is not None:
            raise self.error

    def _raise(self) -> None:
        if self.error is not None:
            raise GenerationError(f"the ledger writer stopped: {self.error}") from self.error

    # -- the writer thread ---------------------------------------------------------------
    def _loop(self) -> None:
        conn_cm = None
        con: duckdb.DuckDBPyConnection | None = None
        opened = closed = 0.0
        try:
            while True:
                with self._cond:
                    deadline = time.monotonic() + self.interval
                    while not (self._stopping or self._urgent or self._jobs):
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                    batch, self._batch = self._batch, _Batch()
                    jobs, self._jobs = self._jobs, []
                    self._urgent = False
                    stopping = self._stopping
                if len(batch) or jobs:
                    if con is None:
                        # Leave readers a gap after the last close, even when urgent.
                        wait = closed + self.gap - time.monotonic()
                        if wait > 0:
                            time.sleep(wait)
                        conn_cm = self.store.connection()
                        con = conn_cm.__enter__()
                        opened = time.monotonic()
                    self._write(con, batch)
                    with self._cond:
                        self._committed = max(self._committed, batch.seq)
                        self.flushes += 1
                        self._cond.notify_all()
                    for fn, fut in jobs:
                        self._run_job(con, fn, fut)
                if con is not None and (stopping or time.monotonic() - opened > self.hold):
                    assert conn_cm is not None
                    conn_cm.__exit__(None, None, None)
                    con, conn_cm = None, None
                    closed = time.monotonic()
                if stopping:
                    with self._cond:
                        if not len(self._batch) and not self._jobs:
                            return
        except BaseException as exc:
            with self._cond:
                self.error = exc
                for _, fut in self._jobs:
                    fut.set_exception(exc)
                self._jobs = []
                self._cond.notify_all()
            if conn_cm is not None:
                conn_cm.__exit__(None, None, None)

    def _run_job(self, con: duckdb.DuckDBPyConnection, fn: Callable[[duckdb.DuckDBPyConnection], Any],
                 fut: Future[Any]) -> None:
        con.execute("BEGIN TRANSACTION")
        try:
            result = fn(con)
        except BaseException as exc:
            con.execute("ROLLBACK")
            fut.set_exception(exc)
            return
        con.execute("COMMIT")
        fut.set_result(result)

    def _write(self, con: duckdb.DuckDBPyConnection, b: _Batch) -> None:
        if not len(b):
            return
        con.execute("BEGIN TRANSACTION")
        try:
            if b.new_calls:
                con.register("_new_calls", _table(b.new_calls, _CALL_ROW))
                con.execute(
                    f"INSERT OR IGNORE INTO calls ({', '.join(_CALL_ROW)}) "
                    f"SELECT DISTINCT ON (call_id) {', '.join(_CALL_ROW)} FROM _new_calls")
                con.unregister("_new_calls")
            if b.resend:
                con.register("_resend", pa.table({"call_id": pa.array(b.resend, pa.string())}))
                con.execute(
                    "UPDATE calls SET status = 'pending', completed_at = NULL "
                    "WHERE call_id IN (SELECT call_id FROM _resend) AND status <> 'ok'")
                con.unregister("_resend")
            if b.done:
                con.register("_done", _table(b.done, _DONE_ROW))
                con.execute(
                    "UPDATE calls SET status = d.status, response = d.response, "
                    "finish_reason = d.finish_reason, prompt_tokens = d.prompt_tokens, "
                    "completion_tokens = d.completion_tokens, cost = d.cost, latency = d.latency, "
                    "n_attempts = calls.n_attempts + d.n_attempts, error_kind = d.error_kind, "
                    "error = d.error, completed_at = now() "
                    "FROM _done d WHERE calls.call_id = d.call_id")
                con.unregister("_done")
            if b.attempts:
                con.register("_attempts", _table(b.attempts, _ATTEMPT_ROW))
                con.execute(f"INSERT INTO attempts ({', '.join(_ATTEMPT_ROW)}) "
                            f"SELECT {', '.join(_ATTEMPT_ROW)} FROM _attempts")
                con.unregister("_attempts")
            if b.unsent_new:
                con.register("_unsent", pa.table({"call_id": pa.array(b.unsent_new, pa.string())}))
                con.execute("DELETE FROM calls WHERE status = 'pending' "
                            "AND call_id IN (SELECT call_id FROM _unsent)")
                con.unregister("_unsent")
            if b.unsent_failed:
                con.register("_unsent", pa.table({"call_id": pa.array(b.unsent_failed, pa.string())}))
                con.execute("UPDATE calls SET status = 'failed' WHERE status = 'pending' "
                            "AND call_id IN (SELECT call_id FROM _unsent)")
                con.unregister("_unsent")
            if b.records:
                insert_records(con, b.records, self.run_id)
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")


def _lookup(ids: list[str]) -> Callable[[duckdb.DuckDBPyConnection], dict[str, dict[str, Any]]]:
    def run(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, Any]]:
        con.register("_ids", pa.table({"call_id": pa.array(ids, pa.string())}))
        try:
            cur = con.execute(
                "SELECT call_id, status, response, finish_reason, prompt_tokens, "
                "completion_tokens, cost, possibly_billed FROM calls "
                "WHERE call_id IN (SELECT call_id FROM _ids)")
            cols = [d[0] for d in cur.description]
            return {r[0]: dict(zip(cols, r, strict=True)) for r in cur.fetchall()}
        finally:
            con.unregister("_ids")
    return run


class Ledger:
    """Answers :class:`Call` batches through a backend, with the store as cache and log."""

    def __init__(self, store: Store, run_id: str, *, interval: float = 0.2, hold: float = 1.0,
                 gap: float = 0.1, window: int | None = None):
        self.store = store
        self.run_id = run_id
        self.window = window
        self.counts = LedgerCounts()
        self.writer = Writer(store, run_id, interval=interval, hold=hold, gap=gap)

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Commit everything and stop the writer."""
        self.writer.close()

    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        """A statement run on the writer thread (the store's only user during a collection)."""
        return self.writer.call(lambda con: con.execute(sql, params or []).fetchall())

    def add_records(self, rows: list[dict[str, Any]]) -> None:
        """Queue ``make_record`` rows; they are committed with the next flush."""
        if rows:
            self.writer.records(rows)

    def complete(self, backend: Backend, calls: Sequence[Call],
                 on_outcome: Callable[[int, Outcome], None] | None = None) -> list[Outcome]:
        """Answer every call: cached ones from the store, the rest through ``backend``.

        ``on_outcome(i, outcome)`` is called for each answer as it arrives (cached ones
        first). Outcomes of calls never sent (budget, Ctrl-C) have ``error_kind`` ``budget``
        or ``interrupted``.
        """
        model, endpoint = backend.spec, backend.endpoint
        ids = [call_id(model, endpoint, c.request) for c in calls]
        existing = self.writer.call(_lookup(sorted(set(ids)))) if ids else {}
        outcomes: list[Outcome | None] = [None] * len(calls)
        # One request per distinct call_id; duplicates share its outcome.
        positions: dict[str, list[int]] = {}
        misses: list[int] = []
        for i, cid in enumerate(ids):
            row = existing.get(cid)
            if row is not None and row["status"] == "ok":
                outcomes[i] = Outcome(cid, True, row["response"], row["finish_reason"], cached=True,
                                      cost=row["cost"], prompt_tokens=row["prompt_tokens"],
                                      completion_tokens=row["completion_tokens"])
                self.counts.cached += 1
                if on_outcome is not None:
                    on_outcome(i, outcomes[i])
                continue
            if cid not in positions:
                positions[cid] = []
                misses.append(i)
            positions[cid].append(i)
        if not misses:
            return [o for o in outcomes if o is not None]

        prior = {ids[i]: (existing[ids[i]]["status"] if ids[i] in existing else None) for i in misses}
        self.counts.resent_possibly_billed += sum(
            1 for i in misses if existing.get(ids[i], {}).get("possibly_billed"))

        def pending_rows(js: range) -> tuple[list[dict[str, Any]], list[str]]:
            new, resend = [], []
            for j in js:
                i = misses[j]
                cid = ids[i]
                if prior[cid] is None:
                    c = calls[i]
                    new.append({
                        "call_id": cid, "model": model, "endpoint": endpoint,
                        "messages": canonical_json(c.request.messages),
                        "params": canonical_json(c.request.params),
                        "sample_index": c.request.sample_index, "template": c.template,
                        "purpose": c.purpose, "status": "pending", "run_id": self.run_id,
                    })
                else:
                    resend.append(cid)
            return new, resend

        registered = 0  # misses[:registered] are queued as pending
        tickets: list[tuple[int, int]] = []  # (registered upto, ticket)
        lock = threading.Lock()

        def register_upto(n: int) -> None:
            nonlocal registered
            with lock:
                n = min(n, len(misses))
                if n <= registered:
                    return
                new, resend = pending_rows(range(registered, n))
                tickets.append((n, self.writer.register(new, resend)))
                registered = n

        def before_send(j: int) -> Callable[[], None] | None:
            # Keep the window ahead of the sender. If the sender caught up, hand back the
            # wait: the backend runs it off its event loop, so only this request waits.
            if j + window // 2 >= registered:
                register_upto(j + window)
            for upto, ticket in tickets:
                if upto > j:
                    if not self.writer.committed(ticket):
                        return lambda: self.writer.wait(ticket)
                    break
            return None

        use_window = getattr(backend, "supports_before_send", False)
        concurrency = getattr(getattr(backend, "options", None), "concurrency", 16)
        window = self.window or max(512, 8 * concurrency)
        register_upto(window if use_window else len(misses))
        self.writer.wait(tickets[-1][1])

        def on_result(j: int, result: ChatResult) -> None:
            i = misses[j]
            cid = ids[i]
            if not result.attempts and result.error_kind in UNSENT_KINDS:
                outcome = Outcome(cid, False, error_kind=result.error_kind, error=result.error)
                self._unsent(cid, prior[cid], j < registered)
            else:
                outcome = self._record(cid, result)
            for k in positions[cid]:
                outcomes[k] = outcome
                if on_outcome is not None:
                    on_outcome(k, outcome)

        requests = [calls[i].request for i in misses]
        # No flush at the end: the writer keeps order (a later lookup runs after these
        # rows) and close() commits the rest. Calls registered but never reported (an
        # exception, a second Ctrl-C) stay pending; the next open marks them possibly billed.
        if use_window:
            backend.generate(requests, on_result, before_send=before_send)  # type: ignore[call-arg]
        else:
            backend.generate(requests, on_result)
        return [o for o in outcomes if o is not None]

    def _unsent(self, cid: str, prior: str | None, registered: bool) -> None:
        self.counts.unsent += 1
        if not registered:
            return
        if prior is None:
            self.writer.unsent([cid], [])
        elif prior == "failed":
            self.writer.unsent([], [cid])

    def _record(self, cid: str, r: ChatResult) -> Outcome:
        c = self.counts
        c.attempts += len(r.attempts)
        if r.ok:
            c.ok += 1
            c.prompt_tokens += r.prompt_tokens or 0
            c.completion_tokens += r.completion_tokens or 0
            c.cost += r.cost or 0.0
        else:
            c.failed += 1
        self.writer.complete(
            {"call_id": cid, "status": "ok" if r.ok else "failed",
             "response": r.text if r.ok else None, "finish_reason": r.finish_reason,
             "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
             "cost": r.cost, "latency": r.latency, "n_attempts": len(r.attempts),
             "error_kind": None if r.ok else r.error_kind, "error": None if r.ok else r.error},
            [{"call_id": cid, "attempt": a.attempt, "status": a.status,
              "http_status": a.http_status, "error_kind": a.error_kind, "error": a.error,
              "latency": a.latency, "run_id": self.run_id} for a in r.attempts],
        )
        return Outcome(cid, r.ok, r.text, r.finish_reason, error_kind=r.error_kind, error=r.error,
                       cost=r.cost, prompt_tokens=r.prompt_tokens,
                       completion_tokens=r.completion_tokens)


def bind_for_refine(store: Store, run_id: str, backend: Backend
                    ) -> Callable[[list[ChatRequest], str, str | None], list[tuple[ChatResult, str]]]:
    """``generate(requests, purpose, template) -> [(result, call_id)]`` through the ledger.

    For callers that work request batch by batch (``selfevo refine``, ``eval``): each batch
    runs under its own short-lived ledger (writer thread started and stopped per batch).
    """

    def generate(requests: list[ChatRequest], purpose: str, template: str | None
                 ) -> list[tuple[ChatResult, str]]:
        with Ledger(store, run_id) as ledger:
            outcomes = ledger.complete(backend, [Call(r, purpose, template) for r in requests])
        return [(ChatResult(ok=o.ok, text=o.text, finish_reason=o.finish_reason,
                            prompt_tokens=o.prompt_tokens, completion_tokens=o.completion_tokens,
                            cost=o.cost, error_kind=o.error_kind, error=o.error), o.call_id)
                for o in outcomes]

    return generate
