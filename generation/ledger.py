"""The call ledger: every model request written ahead, completed after, never sent twice.

``call_id`` is the content hash of ``{model, endpoint (no credentials), messages, params,
sample_index}`` — the cache key and the resume key. The life of a call:

1. **Cached?** A call_id already ``ok`` in ``calls`` is answered from the store; nothing is
   sent. ``sample_index`` makes N samples of one request N distinct cached calls.
2. **Pending before sent.** Its ``calls`` row is committed as ``pending`` before the request
   leaves. Backends that announce each send (``Backend.announces_sends``: they call
   ``before_send(i)``, e.g. the OpenAI backend) get rows registered in a window of
   ``max(512, 8 × Backend.concurrency)`` requests ahead of the sender, so a job that dies
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

:meth:`Ledger.complete` runs the steps of one batch (:class:`Completion`);
:func:`ledger_generate` wraps it as the plain ``generate(requests, purpose, template)``
function that refine, eval and evolve's new-question stage call.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

import duckdb
import pyarrow as pa

from corpus.inserts import insert_absent
from corpus.records import insert_records
from corpus.redaction import redact_optional
from corpus.store import Store
from corpus.worker import Worker
from generation.backends.base import Backend, ChatRequest, ChatResult
from generation.errors import GenerationError
from generation.failures import UNSENT_KINDS  # results that mean "never sent" (re-exported)
from schemas.identity import canonical_json, content_id


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

    @classmethod
    def from_row(cls, cid: str, row: dict[str, Any]) -> Outcome:
        """The cached answer of an ``ok`` ``calls`` row."""
        return cls(cid, True, row["response"], row["finish_reason"], cached=True,
                   cost=row["cost"], prompt_tokens=row["prompt_tokens"],
                   completion_tokens=row["completion_tokens"])

    def to_result(self) -> ChatResult:
        """The outcome as a backend result (for callers that speak :class:`ChatResult`)."""
        return ChatResult(ok=self.ok, text=self.text, finish_reason=self.finish_reason,
                          prompt_tokens=self.prompt_tokens,
                          completion_tokens=self.completion_tokens, cost=self.cost,
                          error_kind=self.error_kind, error=self.error)


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

    def add(self, r: ChatResult) -> None:
        """Count a sent call's result (its attempts, and usage and cost when ok)."""
        self.attempts += len(r.attempts)
        if r.ok:
            self.ok += 1
            self.prompt_tokens += r.prompt_tokens or 0
            self.completion_tokens += r.completion_tokens or 0
            self.cost += r.cost or 0.0
        else:
            self.failed += 1

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
    # Every ledger row reaches the store through here: no error text lands unredacted.
    def column(c: str) -> list[Any]:
        values = [r.get(c) for r in rows]
        return [redact_optional(v) for v in values] if c == "error" else values

    return pa.table({c: pa.array(column(c), type=_TYPES.get(c, pa.string())) for c in columns})


def redact_result(result: ChatResult) -> ChatResult:
    """``result`` with its error texts redacted (:func:`corpus.redaction.redact`): a server
    may echo the request's ``Authorization`` header in any answer. Responses are model output
    and stay as they are."""
    if result.error is None and not any(a.error for a in result.attempts):
        return result
    return replace(result, error=redact_optional(result.error), attempts=[
        replace(a, error=redact_optional(a.error)) for a in result.attempts])


@dataclass
class _Batch:
    new_calls: list[dict[str, Any]] = field(default_factory=list)
    resend: list[str] = field(default_factory=list)
    done: list[dict[str, Any]] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    unsent_new: list[str] = field(default_factory=list)
    unsent_failed: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    #: statements run last in the same transaction (e.g. the batch tables' rows)
    then: list[Callable[[duckdb.DuckDBPyConnection], None]] = field(default_factory=list)
    seq: int = 0

    def __len__(self) -> int:
        return (len(self.new_calls) + len(self.resend) + len(self.done) + len(self.attempts)
                + len(self.unsent_new) + len(self.unsent_failed) + len(self.records)
                + len(self.then))


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
        self._worker = Worker(self._loop, "selfevo-ledger-writer")  # corpus.worker: why
        self._worker.start()

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

    def write(self, *, urgent: bool = False,
              then: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
              **parts: list[Any]) -> int:
        """Queue rows that must land in one transaction, with ``then(con)`` run last in it.

        ``parts`` are the queues of :meth:`register` / :meth:`complete` (``new_calls``,
        ``resend``, ``done``, ``attempts``); batch settling queues a chunk's answers and its
        ``batch_calls`` rows this way, so a kill never leaves one without the other.
        Returns a ticket for :meth:`wait`.
        """
        if then is not None:
            parts["then"] = [then]
        return self._add(urgent, **parts)

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
        self._worker.wait_through_interrupts()
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
        # ``con`` (held by the loop) keeps a file store's connection open between jobs;
        # Store.transact runs on it there, and re-runs ``fn`` after a lost commit on a lake.
        try:
            result = self.store.transact(fn)
        except BaseException as exc:
            fut.set_exception(exc)
            return
        fut.set_result(result)

    def _write(self, con: duckdb.DuckDBPyConnection, b: _Batch) -> None:
        if len(b):
            self.store.transact(lambda c: self._write_batch(c, b))

    def _write_batch(self, con: duckdb.DuckDBPyConnection, b: _Batch) -> None:
        """One batch's statements; a lake re-runs them all when its commit lost a race."""
        if b.new_calls:
            insert_pending(con, b.new_calls)
        if b.resend:
            mark_resend(con, b.resend, self.run_id)
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
        for fn in b.then:
            fn(con)


def insert_pending(con: duckdb.DuckDBPyConnection, rows: list[dict[str, Any]]) -> None:
    """Insert ``pending`` rows of new calls (ones already there are left as they are)."""
    insert_absent(con, "calls", "call_id", _table(rows, _CALL_ROW))


def mark_resend(con: duckdb.DuckDBPyConnection, ids: list[str], run_id: str) -> None:
    """Set known calls (failed, or pending from a dead job) back to ``pending`` as run
    ``run_id``'s (``sent_by``); never an ok one."""
    con.register("_resend", pa.table({"call_id": pa.array(ids, pa.string())}))
    try:
        con.execute("UPDATE calls SET status = 'pending', completed_at = NULL, sent_by = ? "
                    "WHERE call_id IN (SELECT call_id FROM _resend) AND status <> 'ok'",
                    [run_id])
    finally:
        con.unregister("_resend")


def _lookup(ids: list[str]) -> Callable[[duckdb.DuckDBPyConnection], dict[str, dict[str, Any]]]:
    def run(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, Any]]:
        con.register("_ids", pa.table({"call_id": pa.array(ids, pa.string())}))
        try:
            cur = con.execute(
                "SELECT call_id, status, response, finish_reason, prompt_tokens, "
                "completion_tokens, cost, possibly_billed, error_kind, error, "
                "status = 'pending' AND call_id IN (SELECT call_id FROM batch_calls "
                "WHERE status = 'pending') AS in_batch FROM calls "
                "WHERE call_id IN (SELECT call_id FROM _ids)")
            cols = [d[0] for d in cur.description]
            return {r[0]: dict(zip(cols, r, strict=True)) for r in cur.fetchall()}
        finally:
            con.unregister("_ids")
    return run


class Ledger:
    """Answers :class:`Call` batches through a backend, with the store as cache and log.

    With ``batch`` (a :class:`generation.batches.BatchOptions`), the misses of a batchable
    backend go out as Batch API / JSONL shards instead of one request each
    (:class:`generation.batches.completion.BatchCompletion`); other backends answer online.
    """

    def __init__(self, store: Store, run_id: str, *, interval: float = 0.2, hold: float = 1.0,
                 gap: float = 0.1, window: int | None = None, batch: Any = None):
        self.store = store
        self.run_id = run_id
        self.window = window  # pending rows ahead of an announcing sender (None: by concurrency)
        self.batch = batch  # BatchOptions, or None: online
        #: batches whose calls this ledger's completions left waiting (``--no-wait``, files)
        self.waiting: set[str] = set()
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

    def lookup(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The ``calls`` rows of ``ids`` by call_id (status, response, usage, possibly_billed)."""
        return self.writer.call(_lookup(sorted(set(ids)))) if ids else {}

    def add_records(self, rows: list[dict[str, Any]]) -> None:
        """Queue ``make_record`` rows; they are committed with the next flush."""
        if rows:
            self.writer.records(rows)

    def complete(self, backend: Backend, calls: Sequence[Call],
                 on_outcome: Callable[[int, Outcome], None] | None = None) -> list[Outcome]:
        """Answer every call: cached ones from the store, the rest through ``backend``.

        ``on_outcome(i, outcome)`` is called for each answer as it arrives (cached ones
        first). Outcomes of calls never sent (budget, Ctrl-C) have ``error_kind`` ``budget``
        or ``interrupted``. The steps are those of :class:`Completion`; in batch mode
        those of its subclass :class:`generation.batches.completion.BatchCompletion`.
        """
        if self.batch is not None and backend.batchable:
            from generation.batches.completion import BatchCompletion

            return BatchCompletion(self, backend, calls, on_outcome).run()
        return Completion(self, backend, calls, on_outcome).run()


class Completion:
    """One :meth:`Ledger.complete`, step by step (each step a method, testable alone).

    1. :meth:`look_up` — calls already ``ok`` in the store are answered from it;
    2. :meth:`plan` — one request per distinct call_id still missing (``misses``); its
       duplicates share its outcome;
    3. :meth:`register` — pending rows committed before anything is sent: the whole batch,
       or, for a backend that announces its sends, a window ahead of the sender
       (:meth:`before_send` keeps it ahead);
    4. :meth:`send` — the backend answers the misses;
    5. :meth:`on_result` — each result is recorded (:meth:`record`), or, for a request
       never sent (budget, Ctrl-C), its row is removed or restored (:meth:`restore`).
    """

    def __init__(self, ledger: Ledger, backend: Backend, calls: Sequence[Call],
                 on_outcome: Callable[[int, Outcome], None] | None = None):
        self.ledger = ledger
        self.backend = backend
        self.calls = list(calls)
        self.on_outcome = on_outcome
        self.ids = [call_id(backend.spec, backend.endpoint, c.request) for c in self.calls]
        self.outcomes: list[Outcome | None] = [None] * len(self.calls)
        self.existing: dict[str, dict[str, Any]] = {}  # the store's rows of these calls
        self.misses: list[int] = []  # position of the one call sent per missing call_id
        self.positions: dict[str, list[int]] = {}  # missing call_id -> positions it answers
        self.registered = 0  # misses[:registered] are queued as pending
        self.tickets: list[tuple[int, int]] = []  # (registered up to, writer ticket), ascending
        self.window = ledger.window or max(512, 8 * backend.concurrency)
        self._lock = threading.Lock()

    def run(self) -> list[Outcome]:
        """All the steps; one outcome per call, in order (unless the backend raised)."""
        self.look_up()
        self.plan()
        if self.misses:
            self.register()
            self.send()
        return [o for o in self.outcomes if o is not None]

    # -- 1. cached -------------------------------------------------------------------------
    def look_up(self) -> None:
        """Read the store's rows of these calls; answer the ``ok`` ones from them."""
        self.existing = self.ledger.lookup(self.ids)
        for i, cid in enumerate(self.ids):
            row = self.existing.get(cid)
            if row is not None and row["status"] == "ok":
                self.ledger.counts.cached += 1
                self._deliver(i, Outcome.from_row(cid, row))

    # -- 2. plan ---------------------------------------------------------------------------
    def plan(self) -> None:
        """One request per distinct call_id not answered yet; duplicates wait for it."""
        for i, cid in enumerate(self.ids):
            if self.outcomes[i] is not None:
                continue
            if cid not in self.positions:
                self.positions[cid] = []
                self.misses.append(i)
            self.positions[cid].append(i)
        self.ledger.counts.resent_possibly_billed += sum(
            1 for i in self.misses if self.existing.get(self.ids[i], {}).get("possibly_billed"))
        #: misses[j] still pending in a provider's batch (answered when it is settled)
        self.in_batch = [j for j, i in enumerate(self.misses)
                         if self.existing.get(self.ids[i], {}).get("in_batch")]

    def prior(self, cid: str) -> str | None:
        """The status ``cid`` had in the store before this run (None: a new call)."""
        row = self.existing.get(cid)
        return None if row is None else row["status"]

    # -- 3. pending before sent ------------------------------------------------------------
    def register(self) -> None:
        """Queue the first pending rows and wait until they are committed.

        A backend that announces its sends gets a window of rows (:meth:`before_send`
        moves it along); any other backend the whole batch, as it may send in any order.
        """
        if self.in_batch:  # sending them again would pay twice
            raise GenerationError(
                f"{len(self.in_batch)} of these requests are in open batches (see 'selfevo "
                "batches list'): finish them with --mode batch or 'selfevo batches poll', or "
                "give them up with 'selfevo batches cancel', before sending them online")
        self.register_upto(self.window if self.backend.announces_sends else len(self.misses))
        self.ledger.writer.wait(self.tickets[-1][1])

    def register_upto(self, n: int) -> None:
        """Queue pending rows for ``misses[:n]`` (those not queued yet)."""
        with self._lock:
            n = min(n, len(self.misses))
            if n <= self.registered:
                return
            new, resend = self.pending_rows(range(self.registered, n))
            self.tickets.append((n, self.ledger.writer.register(new, resend)))
            self.registered = n

    def pending_rows(self, js: Iterable[int]) -> tuple[list[dict[str, Any]], list[str]]:
        """For ``misses[j]``, j in ``js``: rows of new calls, and known call_ids to re-send."""
        new, resend = [], []
        for j in js:
            i = self.misses[j]
            if self.prior(self.ids[i]) is None:
                new.append(self._call_row(i))
            else:
                resend.append(self.ids[i])
        return new, resend

    def _call_row(self, i: int) -> dict[str, Any]:
        c = self.calls[i]
        return {"call_id": self.ids[i], "model": self.backend.spec,
                "endpoint": self.backend.endpoint, "messages": canonical_json(c.request.messages),
                "params": canonical_json(c.request.params),
                "sample_index": c.request.sample_index, "template": c.template,
                "purpose": c.purpose, "status": "pending", "run_id": self.ledger.run_id}

    def before_send(self, j: int) -> Callable[[], None] | None:
        """The backend is about to send ``misses[j]``: keep the window ahead of it.

        Returns None when j's pending row is committed, else the wait for it: the backend
        runs it off its event loop, so only this request waits.
        """
        if j + self.window // 2 >= self.registered:
            self.register_upto(j + self.window)
        k = bisect.bisect_right(self.tickets, j, key=lambda t: t[0])  # first batch holding j
        ticket = self.tickets[k][1]
        writer = self.ledger.writer
        return None if writer.committed(ticket) else (lambda: writer.wait(ticket))

    # -- 4. send ---------------------------------------------------------------------------
    def send(self) -> None:
        """The backend answers the misses; ``before_send`` only if it announces sends.

        No flush at the end: the writer keeps order (a later lookup runs after these rows)
        and close() commits the rest. Calls registered but never reported (an exception, a
        second Ctrl-C) stay pending; the next open marks them possibly billed.
        """
        requests = [self.calls[i].request for i in self.misses]
        if self.backend.announces_sends:
            self.backend.generate(requests, self.on_result, self.before_send)
        else:
            self.backend.generate(requests, self.on_result)

    # -- 5. results ------------------------------------------------------------------------
    def on_result(self, j: int, result: ChatResult) -> None:
        """``misses[j]`` is answered (or was never sent): store it, tell every duplicate."""
        cid = self.ids[self.misses[j]]
        result = redact_result(result)  # the one way a backend's text enters the ledger
        if not result.attempts and result.error_kind in UNSENT_KINDS:
            outcome = Outcome(cid, False, error_kind=result.error_kind, error=result.error)
            self.restore(cid, registered=j < self.registered)
        else:
            outcome = self.record(cid, result)
        for i in self.positions[cid]:
            self._deliver(i, outcome)

    def restore(self, cid: str, registered: bool) -> None:
        """A call never sent: drop its new pending row, or put a failed one back."""
        self.ledger.counts.unsent += 1
        if not registered:
            return
        prior = self.prior(cid)
        if prior is None:
            self.ledger.writer.unsent([cid], [])
        elif prior == "failed":
            self.ledger.writer.unsent([], [cid])

    def record(self, cid: str, r: ChatResult) -> Outcome:
        """Count a sent call's result and queue its row and attempts."""
        self.ledger.counts.add(r)
        self.ledger.writer.complete(done_row(cid, r), attempt_rows(cid, r, self.ledger.run_id))
        return Outcome(cid, r.ok, r.text, r.finish_reason, error_kind=r.error_kind, error=r.error,
                       cost=r.cost, prompt_tokens=r.prompt_tokens,
                       completion_tokens=r.completion_tokens)

    def _deliver(self, i: int, outcome: Outcome) -> None:
        self.outcomes[i] = outcome
        if self.on_outcome is not None:
            self.on_outcome(i, outcome)


def done_row(cid: str, r: ChatResult) -> dict[str, Any]:
    """The ``calls`` update of a completed call (ok or failed)."""
    return {"call_id": cid, "status": "ok" if r.ok else "failed",
            "response": r.text if r.ok else None, "finish_reason": r.finish_reason,
            "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
            "cost": r.cost, "latency": r.latency, "n_attempts": len(r.attempts),
            "error_kind": None if r.ok else r.error_kind, "error": None if r.ok else r.error}


def attempt_rows(cid: str, r: ChatResult, run_id: str) -> list[dict[str, Any]]:
    """The ``attempts`` rows of a result."""
    return [{"call_id": cid, "attempt": a.attempt, "status": a.status,
             "http_status": a.http_status, "error_kind": a.error_kind, "error": a.error,
             "latency": a.latency, "run_id": run_id} for a in r.attempts]


# -- the ledger as a plain generate function (refine, eval, evolve) -----------------------
#: ``progress(stage, advance, total)``: advance=0 when a stage's batch starts, 1 per result.
Progress = Callable[[str, int, int], None]
#: ``generate(requests, purpose, template hash) -> [(result, call_id)]`` (call_id None
#: when no store keeps the calls).
Generate = Callable[[list[ChatRequest], str, str | None], list[tuple[ChatResult, str | None]]]


def ledger_generate(backend: Backend, store: Store | None = None, run_id: str | None = None,
                    progress: Progress | None = None, batch: Any = None) -> Generate:
    """A :data:`Generate` over ``backend`` that keeps every call in the store's ledger.

    Each batch (one stage of ``self_refine``, evolve's new questions) runs under its own
    short-lived :class:`Ledger`, so its writer has committed every call before the next
    stage (or an eval's result rows) opens the store. Without ``store``/``run_id`` requests
    go straight to the backend and call ids are None. ``progress`` hears every result.
    ``batch`` (:class:`generation.batches.BatchOptions`) sends each stage as batches.
    """
    if batch is not None:
        from generation.batches import check_batchable

        check_batchable(backend, store)

    def generate(requests: list[ChatRequest], purpose: str, template: str | None
                 ) -> list[tuple[ChatResult, str | None]]:
        if not requests:
            return []
        total = len(requests)
        if progress is not None:
            progress(purpose, 0, total)

        def tick(_i: int, _answer: object) -> None:
            if progress is not None:
                progress(purpose, 1, total)

        if store is None or run_id is None:
            return [(redact_result(r), None) for r in backend.generate(requests, tick)]
        with Ledger(store, run_id, batch=batch) as ledger:
            outcomes = ledger.complete(backend, [Call(r, purpose, template) for r in requests],
                                       tick)
            if ledger.waiting:  # a stage is answered whole or not at all
                from generation.batches.drive import stop_if_waiting

                stop_if_waiting(ledger)
        return [(o.to_result(), o.call_id) for o in outcomes]

    return generate
