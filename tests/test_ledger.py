"""The call ledger: cache, pending-before-send, attempts, resume, possibly-billed, readers."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from backends import both_stores  # noqa: E402
from openai_server import Behaviour  # noqa: E402

from corpus.store import Store  # noqa: E402
from generation.backends.base import (  # noqa: E402
    AttemptInfo,
    Backend,
    BeforeSend,
    ChatRequest,
    ChatResult,
    OnResult,
)
from generation.backends.openai_backend import OpenAIBackend, OpenAIOptions  # noqa: E402
from generation.ledger import Call, Completion, Ledger, call_id, ledger_generate  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("close_openai_backends")


def opts(**kw) -> OpenAIOptions:
    base = dict(concurrency=4, timeout=5.0, backoff_base=0.01, backoff_max=0.05, max_attempts=3)
    base.update(kw)
    return OpenAIOptions(**base)


def calls(n: int, **params) -> list[Call]:
    return [Call(ChatRequest([{"role": "user", "content": f"question {i}"}], params), "response",
                 "h1:tpl") for i in range(n)]


def run_ledger(db: str, backend: Backend, cs: Sequence[Call]):
    with Store.open(db, command="collect") as store, store.run("collect", {}) as run:
        with Ledger(store, run.run_id) as ledger:
            out = ledger.complete(backend, cs)
        return out, ledger.counts


@both_stores
def test_completed_calls_are_stored_and_cached(db, server):
    b = OpenAIBackend.from_spec(f"openai:test-model@{server.base_url}", opts())
    out, counts = run_ledger(db, b, calls(20, temperature=0.0, max_tokens=64))
    assert all(o.ok and not o.cached for o in out) and counts.ok == 20
    assert len(server.chat_requests()) == 20
    with Store.open_readonly(db) as store:
        rows = store.query_dicts("SELECT * FROM calls ORDER BY call_id")
        assert len(rows) == 20 and {r["status"] for r in rows} == {"ok"}
        assert all(r["response"] and r["latency"] > 0 and r["n_attempts"] == 1 for r in rows)
        assert {r["template"] for r in rows} == {"h1:tpl"} and {r["purpose"] for r in rows} == {"response"}
        assert store.query("SELECT count(*) FROM attempts WHERE status = 'ok'")[0][0] == 20
        # call_id is the documented content hash
        expected = call_id(b.spec, b.endpoint, calls(1, temperature=0.0, max_tokens=64)[0].request)
        assert expected in {r["call_id"] for r in rows}
    # A re-run sends nothing and returns the same texts.
    out2, counts2 = run_ledger(db, b, calls(20, temperature=0.0, max_tokens=64))
    assert len(server.chat_requests()) == 20
    assert counts2.cached == 20 and counts2.ok == 0
    assert [o.text for o in out2] == [o.text for o in out] and all(o.cached for o in out2)


def test_samples_are_distinct_cached_calls(db, server):
    b = OpenAIBackend.from_spec(f"openai:test-model@{server.base_url}", opts())
    req = [{"role": "user", "content": "tell me a number"}]
    cs = [Call(ChatRequest(req, {"temperature": 0.8}, s), "response") for s in range(3)]
    out, _ = run_ledger(db, b, cs)
    assert len({o.call_id for o in out}) == 3 and len({o.text for o in out}) == 3
    out2, counts = run_ledger(db, b, cs)
    assert counts.cached == 3 and len(server.chat_requests()) == 3
    assert [o.text for o in out2] == [o.text for o in out]


def test_duplicate_requests_in_a_batch_are_sent_once(db, server):
    b = OpenAIBackend.from_spec(f"openai:test-model@{server.base_url}", opts())
    out, _ = run_ledger(db, b, calls(1) * 5)
    assert len(server.chat_requests()) == 1 and len({o.call_id for o in out}) == 1 and len(out) == 5


@both_stores
def test_failed_calls_are_retried_next_run_and_attempts_accumulate(db, server):
    server.push(*[Behaviour.error(500)] * 3)
    b = OpenAIBackend.from_spec(f"openai:test-model@{server.base_url}", opts(concurrency=1))
    out, counts = run_ledger(db, b, calls(1))
    assert not out[0].ok and counts.failed == 1
    with Store.open_readonly(db) as store:
        assert store.query("SELECT status, n_attempts, error_kind FROM calls") == [("failed", 3, "server")]
    out, counts = run_ledger(db, b, calls(1))
    assert out[0].ok and counts.ok == 1
    with Store.open_readonly(db) as store:
        assert store.query("SELECT status, n_attempts, error_kind FROM calls") == [("ok", 4, None)]
        assert dict(store.query("SELECT status, count(*) FROM attempts GROUP BY ALL")) == {
            "retry": 2, "failed": 1, "ok": 1}
        kinds = store.query("SELECT error_kind, count(*) FROM attempts GROUP BY ALL ORDER BY 1")
        assert dict(kinds) == {"server": 3, None: 1}


class DyingBackend(Backend):
    """Answers ``survive`` requests, then the process 'dies' (an exception mid-batch)."""

    spec = "test:dying"
    endpoint = None

    def __init__(self, survive: int):
        self.survive = survive
        self.sent: list[int] = []

    def generate(self, requests: Sequence[ChatRequest], on_result: OnResult | None = None
                 ) -> list[ChatResult]:
        out = []
        for i, _ in enumerate(requests):
            if i == self.survive:
                raise SystemExit("killed")
            self.sent.append(i)
            r = ChatResult(ok=True, text=f"answer {i}", finish_reason="stop")
            if on_result:
                on_result(i, r)
            out.append(r)
        return out


@both_stores
def test_pending_rows_of_a_dead_job_are_possibly_billed_and_resent(db):
    with pytest.raises(SystemExit):
        run_ledger(db, DyingBackend(survive=3), calls(10))
    with Store.open_readonly(db) as store:
        # Everything was registered before sending (a non-windowed backend): 3 ok, 7 pending.
        assert dict(store.query("SELECT status, count(*) FROM calls GROUP BY ALL")) == {
            "ok": 3, "pending": 7}
    ok_backend = DyingBackend(survive=100)
    out, counts = run_ledger(db, ok_backend, calls(10))
    assert all(o.ok for o in out)
    assert counts.cached == 3 and counts.ok == 7 and counts.resent_possibly_billed == 7
    assert len(ok_backend.sent) == 7
    with Store.open_readonly(db) as store:
        assert store.query("SELECT status, possibly_billed, count(*) FROM calls GROUP BY ALL "
                           "ORDER BY 2") == [("ok", False, 3), ("ok", True, 7)]


def test_budget_stop_leaves_no_pending_rows(db, server, tmp_path):
    prices = tmp_path / "p.json"
    prices.write_text('{"models": {"test-model": {"input": 1000, "output": 1000}}}')
    b = OpenAIBackend.from_spec(f"openai:test-model@{server.base_url}",
                                opts(budget=0.3, prices=str(prices), concurrency=2))
    out, counts = run_ledger(db, b, calls(30, max_tokens=40))
    sent = len(server.chat_requests())
    assert 0 < sent < 30 and counts.unsent == 30 - sent
    with Store.open_readonly(db) as store:
        assert store.query("SELECT status, count(*) FROM calls GROUP BY ALL") == [("ok", sent)]
        assert store.query("SELECT sum(cost) FROM calls")[0][0] <= 0.3


def test_pending_window_stays_ahead_of_the_sender(db, server):
    """With a windowed backend only about a window of calls is pending at any time."""
    server.latency = 0.01
    seen: list[int] = []

    def handler(body, n):
        seen.append(n)
        return None

    server.handler = handler
    b = OpenAIBackend.from_spec(f"openai:test-model@{server.base_url}", opts(concurrency=2))
    with Store.open(db, command="collect") as store, store.run("collect", {}) as run:
        with Ledger(store, run.run_id, window=8) as ledger:
            out = ledger.complete(b, calls(40))
            flushes = ledger.writer.flushes
    assert all(o.ok for o in out) and len(seen) == 40
    assert flushes < 40  # batched: far fewer transactions than results


def test_writer_batches_writes(db, server):
    b = OpenAIBackend.from_spec(f"openai:test-model@{server.base_url}", opts(concurrency=8))
    with Store.open(db, command="collect") as store, store.run("collect", {}) as run:
        with Ledger(store, run.run_id, interval=0.2) as ledger:
            ledger.complete(b, calls(200))
            assert ledger.writer.flushes < 60


def test_readers_get_in_while_a_collection_runs(db, server):
    server.latency = 0.05
    # After 10 answers the server holds the rest until the reader is done: the collection
    # is certainly still running (and writing) while the reader opens the store.
    server.handler = lambda body, n: Behaviour("hang", hang=60) if n >= 10 else None
    b = OpenAIBackend.from_spec(f"openai:test-model@{server.base_url}",
                                opts(concurrency=2, timeout=90))
    done = threading.Event()

    def collect():
        try:
            run_ledger(db, b, calls(60))
        finally:
            done.set()

    with Store.open(db, command="init"):
        pass
    t = threading.Thread(target=collect)
    t.start()
    time.sleep(0.5)
    start = time.monotonic()
    cp = subprocess.run([sys.executable, "-m", "selfevo.cli", "sql", "--db", db, "--format",
                         "csv", "SELECT count(*) AS n FROM calls"], cwd=REPO, capture_output=True,
                        text=True, timeout=60)
    waited = time.monotonic() - start
    assert not done.is_set(), "the reader should have run during the collection"
    server.release()
    t.join()
    assert cp.returncode == 0, cp.stderr
    # It saw the committed ledger: all 60 calls registered (pending or already ok).
    assert cp.stdout.split()[:2] == ["n", "60"], cp.stdout
    assert waited < 20


def test_malformed_200s_are_never_stored_as_success(db, server):
    server.push(Behaviour("html"), Behaviour("wrong_shape"), Behaviour("malformed"),
                Behaviour("empty"))
    b = OpenAIBackend.from_spec(f"openai:test-model@{server.base_url}", opts(concurrency=1))
    out, counts = run_ledger(db, b, calls(2))
    # call 1: html, wrong shape, malformed (3 attempts, the last failed); call 2: empty.
    assert [o.ok for o in out] == [False, False] and counts.failed == 2
    with Store.open_readonly(db) as store:
        assert store.query("SELECT status, response, error_kind FROM calls ORDER BY n_attempts") == [
            ("failed", None, "empty"), ("failed", None, "malformed")]
        assert store.query("SELECT count(*) FROM attempts WHERE error_kind = 'malformed'")[0][0] == 3


# -- the steps of Ledger.complete, one by one ---------------------------------------------
class EchoBackend(Backend):
    """Answers ``echo: <question>`` in-process; fails the questions in ``fail``.

    ``announces`` makes it a backend that announces its sends (calls ``before_send``);
    ``on_send(j)`` runs right before request ``j`` is sent.
    """

    spec = "test:echo"
    endpoint = None

    def __init__(self, announces: bool = False, fail: Sequence[str] = (), in_flight: int = 1):
        self.announces_sends = announces
        self.fail = set(fail)
        self.in_flight = in_flight
        self.sent: list[str] = []
        self.on_send = None

    @property
    def concurrency(self) -> int:
        return self.in_flight

    def generate(self, requests: Sequence[ChatRequest], on_result: OnResult | None = None,
                 before_send: BeforeSend | None = None) -> list[ChatResult]:
        out = []
        for j, r in enumerate(requests):
            wait = before_send(j) if before_send is not None else None
            if wait is not None:
                wait()
            if self.on_send is not None:
                self.on_send(j)
            question = r.messages[-1]["content"]
            self.sent.append(question)
            ok = question not in self.fail
            res = ChatResult(ok=ok, text=f"echo: {question}" if ok else None,
                             finish_reason="stop" if ok else None, prompt_tokens=3 if ok else None,
                             completion_tokens=2 if ok else None, error_kind=None if ok else "server",
                             error=None if ok else "scripted", attempts=[
                                 AttemptInfo(1, "ok" if ok else "failed", 0.01)])
            if on_result is not None:
                on_result(j, res)
            out.append(res)
        return out


@pytest.fixture
def ledger(db):
    with Store.open(db, command="collect") as store, store.run("collect", {}) as run:
        with Ledger(store, run.run_id, window=4) as led:
            yield led


def statuses(ledger: Ledger) -> dict[str, str]:
    """call_id -> status, read through the writer (so after everything queued before)."""
    return dict(ledger.query("SELECT call_id, status FROM calls"))


@both_stores
def test_look_up_answers_ok_calls_from_the_store_and_plan_sends_each_missing_id_once(ledger):
    ledger.complete(EchoBackend(fail=["question 1"]), calls(3))  # 0, 2 ok; 1 failed
    backend = EchoBackend()
    cs = calls(4)
    c = Completion(ledger, backend, [cs[0], cs[1], cs[2], cs[3], cs[1], cs[3]])
    c.look_up()
    assert [o is not None and o.cached for o in c.outcomes] == [True, False, True, False,
                                                                False, False]
    assert c.outcomes[0].text == "echo: question 0" and ledger.counts.cached == 2
    c.plan()
    assert c.misses == [1, 3] and c.positions == {c.ids[1]: [1, 4], c.ids[3]: [3, 5]}
    assert c.prior(c.ids[1]) == "failed" and c.prior(c.ids[3]) is None
    assert backend.sent == []  # looking up and planning send nothing


@pytest.mark.parametrize("announces, pending", [(True, 4), (False, 10)])
def test_register_commits_a_window_only_for_a_backend_that_announces(ledger, announces, pending):
    c = Completion(ledger, EchoBackend(announces=announces), calls(10))
    c.look_up()
    c.plan()
    c.register()
    assert c.registered == pending
    assert list(statuses(ledger).values()) == ["pending"] * pending


def test_before_send_moves_the_window_along_and_waits_only_for_uncommitted_rows(ledger):
    c = Completion(ledger, EchoBackend(announces=True), calls(10))
    c.look_up()
    c.plan()
    c.register()
    assert c.before_send(1) is None and c.registered == 4  # committed; half a window left
    wait = c.before_send(2)  # half the window used: register up to 2 + 4
    assert c.registered == 6
    if wait is not None:
        wait()
    assert len(statuses(ledger)) == 6 and c.before_send(5) is None


def test_window_size_follows_the_declared_concurrency(db):
    with Store.open(db, command="collect") as store, store.run("collect", {}) as run:
        with Ledger(store, run.run_id) as led:
            assert Completion(led, EchoBackend(in_flight=100), calls(1)).window == 800
            assert Completion(led, EchoBackend(), calls(1)).window == 512


@both_stores
def test_every_request_is_committed_pending_before_it_is_sent(ledger):
    backend = EchoBackend(announces=True)
    c = Completion(ledger, backend, calls(20))
    seen_pending: list[int] = []

    def check(j: int) -> None:
        rows = statuses(ledger)
        assert rows[c.ids[c.misses[j]]] == "pending"
        seen_pending.append(sum(s == "pending" for s in rows.values()))

    backend.on_send = check
    out = c.run()
    assert [o.text for o in out] == [f"echo: question {i}" for i in range(20)]
    assert len(seen_pending) == 20 and max(seen_pending) <= 4  # never more than the window
    assert set(statuses(ledger).values()) == {"ok"}


@both_stores
def test_on_result_records_answers_for_every_duplicate(ledger):
    c = Completion(ledger, EchoBackend(), calls(1) * 3)
    c.look_up()
    c.plan()
    c.register()
    seen = []
    c.on_outcome = lambda i, o: seen.append((i, o.text))
    c.on_result(0, ChatResult(ok=True, text="hi", finish_reason="stop", prompt_tokens=5,
                              completion_tokens=7, cost=0.5,
                              attempts=[AttemptInfo(1, "retry", 0.1), AttemptInfo(2, "ok", 0.1)]))
    assert seen == [(0, "hi"), (1, "hi"), (2, "hi")]
    counts = ledger.counts
    assert (counts.ok, counts.attempts, counts.prompt_tokens, counts.completion_tokens,
            counts.cost) == (1, 2, 5, 7, 0.5)
    assert ledger.query("SELECT status, response, n_attempts FROM calls") == [("ok", "hi", 2)]


@both_stores
def test_on_result_of_an_unsent_call_removes_or_restores_its_row(ledger):
    ledger.complete(EchoBackend(fail=["question 1"]), calls(2))  # 0 ok, 1 failed
    c = Completion(ledger, EchoBackend(), calls(3))
    c.look_up()
    c.plan()
    c.register()
    assert statuses(ledger) == {c.ids[0]: "ok", c.ids[1]: "pending", c.ids[2]: "pending"}
    for j in range(2):
        c.on_result(j, ChatResult(ok=False, error_kind="budget", error="not sent (budget)"))
    assert statuses(ledger) == {c.ids[0]: "ok", c.ids[1]: "failed"}  # new row gone
    assert ledger.counts.unsent == 2 and ledger.counts.failed == 1  # the first run's failure
    assert [o.error_kind for o in c.outcomes[1:]] == ["budget", "budget"]


def test_backends_that_do_not_announce_sends_are_not_handed_before_send(ledger):
    """A backend written to the old two-argument generate still works through the ledger."""
    out = ledger.complete(DyingBackend(survive=100), calls(3))
    assert [o.text for o in out] == ["answer 0", "answer 1", "answer 2"]


# -- ledger_generate: the ledger as a plain generate function -----------------------------
@both_stores
def test_ledger_generate_caches_and_reports_progress(db):
    events: list[tuple[str, int, int]] = []
    backend = EchoBackend()
    requests = [c.request for c in calls(3)]
    with Store.open(db, command="refine") as store, store.run("refine", {}) as run:
        gen = ledger_generate(backend, store, run.run_id, lambda *e: events.append(e))
        first = gen(requests, "answer", "h1:tpl")
        again = gen(requests, "answer", "h1:tpl")
        assert gen([], "answer", None) == []
        purposes = store.query("SELECT DISTINCT purpose, template FROM calls")
    assert [r.text for r, _ in first] == [r.text for r, _ in again] == [
        "echo: question 0", "echo: question 1", "echo: question 2"]
    assert [cid for _, cid in first] == [cid for _, cid in again]
    assert all(cid is not None for _, cid in first) and len(backend.sent) == 3  # 2nd: cached
    assert purposes == [("answer", "h1:tpl")]
    assert events == [("answer", 0, 3)] + [("answer", 1, 3)] * 3 + [("answer", 0, 3)] + [
        ("answer", 1, 3)] * 3


def test_ledger_generate_without_a_store_goes_straight_to_the_backend():
    backend = EchoBackend()
    out = ledger_generate(backend)([c.request for c in calls(2)], "answer", None)
    assert [(r.text, cid) for r, cid in out] == [("echo: question 0", None),
                                                 ("echo: question 1", None)]
