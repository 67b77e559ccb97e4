"""``selfevo collect`` end to end against the local OpenAI-compatible server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from backends import both_stores, file_store, writing  # noqa: E402
from children import child, reap, spawn  # noqa: E402
from openai_server import Behaviour, OpenAIServer, request_key  # noqa: E402

from corpus.records import insert_prompts, make_prompt  # noqa: E402
from corpus.store import Store  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
KEY = "sk-selfevo-collect-SECRET-9f8e7d6c5b4a"


def seed(db: str, n: int, split: str = "train", start: int = 0) -> list[str]:
    """n labelled prompts; returns their ids."""
    rows = [make_prompt(f"Tom has {i} pens and buys {i + 2} more. How many pens?",
                        gold_answer=str(2 * i + 2), gold_rationale=f"{i} + {i + 2} = {2 * i + 2}\n#### {2 * i + 2}",
                        source="test", split=split) for i in range(start, start + n)]
    with Store.open(db, command="test") as store, store.run("test", {}) as run:
        store.transact(lambda con: insert_prompts(con, rows, run.run_id))
    return [r["prompt_id"] for r in rows]


def collect_args(db: str, server: OpenAIServer, *extra: str) -> list[str]:
    return ["collect", "--db", db, "--teacher", f"openai:teacher@{server.base_url}",
            "--responder", f"openai:student@{server.base_url}", "--max-tokens", "64", *extra]


def query(db: str, sql: str):
    with Store.open_readonly(db) as store:
        return store.query(sql)


@both_stores
def test_collect_writes_meta_records_linked_to_calls(db, server, cli):
    seed(db, 6)
    result = cli(*collect_args(db, server))
    assert "6 (6 new)" in result.output and "correct 6" in result.output
    assert len(server.chat_requests()) == 18  # response, feedback, refinement per prompt
    rows = query(db, "SELECT kind, verdict, verdict_error, response_call_id, feedback_call_id, "
                     "refinement_call_id, templates, responder, teacher FROM records")
    assert len(rows) == 6
    call_ids = {r[0] for r in query(db, "SELECT call_id FROM calls WHERE status = 'ok'")}
    for kind, verdict, verr, rc, fc, rfc, templates, responder, teacher in rows:
        assert (kind, verdict, verr) == ("meta", "correct", None)
        assert {rc, fc, rfc} <= call_ids
        t = json.loads(templates)
        assert set(t) >= {"response", "feedback", "refinement"} and t["set"] == "default"
        assert responder == "openai:student" and teacher == "openai:teacher"
    # The template hash of each call is the one recorded with the record.
    hashes = dict(query(db, "SELECT purpose, any_value(template) FROM calls GROUP BY 1"))
    assert hashes["feedback"] == t["feedback"] and hashes["refinement"] == t["refinement"]
    runs = query(db, "SELECT status, config, counts FROM runs WHERE command = 'collect'")
    assert runs[0][0] == "ok" and json.loads(runs[0][1])["teacher"] == f"openai:teacher@{server.base_url}"
    assert json.loads(runs[0][2])["records_new"] == 6


@both_stores
def test_cached_rerun_sends_nothing(db, server, cli):
    seed(db, 5)
    cli(*collect_args(db, server))
    server.reset_log()
    result = cli(*collect_args(db, server))
    assert server.chat_requests() == []
    assert "5 (0 new)" in result.output
    assert query(db, "SELECT count(*) FROM records")[0][0] == 5


@both_stores
def test_where_limit_and_in_flight_bound(db, server, cli):
    seed(db, 8, split="train")
    seed(db, 4, split="test", start=100)
    server.latency = 0.03
    cli(*collect_args(db, server, "--where", "split = 'test'", "--limit", "3", "--concurrency", "2"))
    assert query(db, "SELECT count(*) FROM records")[0][0] == 3
    assert server.max_in_flight == 2
    result = cli(*collect_args(db, server, "--where", "no_such_column = 1"), exit_code=1)
    assert "--where" in result.output


def test_reference_teacher_makes_no_teacher_calls(db, server, cli):
    seed(db, 4)
    cli("collect", "--db", db, "--teacher", "reference", "--responder",
        f"openai:student@{server.base_url}")
    assert len(server.chat_requests()) == 4  # responses only
    rows = query(db, "SELECT verdict, feedback, refinement, feedback_call_id, templates FROM records")
    # The server's answer is always 42; gold answers are 2, 4, 6, 8: all wrong.
    assert {r[0] for r in rows} == {"incorrect"} and len(rows) == 4
    assert all(r[1].endswith("Verdict: incorrect") and r[2].endswith(".") and r[3] is None for r in rows)
    assert "teacher" in json.loads(rows[0][4])


def test_unparseable_verdict_is_null_with_reason(db, server, cli):
    seed(db, 3)

    def handler(body, n):
        text = json.dumps(body["messages"])
        if "Verdict" in text and "Feedback on the student" not in text:
            return Behaviour(content="Looks plausible to me, I guess.")
        return None

    server.handler = handler
    cli(*collect_args(db, server))
    rows = query(db, "SELECT verdict, verdict_error FROM records")
    assert len(rows) == 3 and all(v is None and err for v, err in rows)


def test_existing_responses_without_responder(db, server, cli):
    from corpus.records import insert_records, make_record

    ids = seed(db, 3)
    with Store.open(db, command="test") as store, store.run("test", {}) as run:
        with writing(store) as con:
            insert_records(con, [make_record(prompt_id=ids[0], kind="self", response="It is 2."),
                                 make_record(prompt_id=ids[1], kind="qa", response="gold")], run.run_id)
    result = cli("collect", "--db", db, "--teacher", f"openai:teacher@{server.base_url}")
    assert len(server.chat_requests()) == 2  # feedback + refinement for the one self response
    assert "2 without a response" in result.output
    assert query(db, "SELECT count(*) FROM records WHERE kind = 'meta'")[0][0] == 1


def test_dry_run_sends_nothing(db, server, cli):
    seed(db, 7)
    result = cli(*collect_args(db, server, "--dry-run"))
    assert server.chat_requests() == []
    assert "calls to send" in result.output and "21" in result.output
    assert query(db, "SELECT count(*) FROM calls")[0][0] == 0


def test_dry_run_needs_no_key_and_counts_cached_responses(db, server, cli, monkeypatch):
    seed(db, 4)
    cli(*collect_args(db, server, "--limit", "2"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server.reset_log()
    result = cli("collect", "--db", db, "--teacher", "openai:gpt-4o-mini", "--responder",
                 f"openai:student@{server.base_url}", "--max-tokens", "64", "--dry-run")
    assert server.chat_requests() == []
    lines = {line.split("│")[1].strip(): line.split("│")[2].strip()
             for line in result.output.splitlines() if line.count("│") == 3}
    assert lines["responses already cached"] == "2"
    assert lines["feedback calls"] == lines["refinement calls"] == "4"
    assert lines["cost (at most, USD)"].startswith("$0.0")  # gpt-4o-mini has a price
    assert "openai:student@" in lines["no price (not in the cost)"]


def _config(server: OpenAIServer, **kw):
    from generation.collect import CollectConfig

    return CollectConfig(teacher=f"openai:teacher@{server.base_url}",
                         responder=f"openai:student@{server.base_url}", max_tokens=64, **kw)


def test_dry_run_call_ids_are_the_ones_the_run_sends(db, server, cli):
    from generation.collect import run_collect

    seed(db, 4)
    dry = run_collect(db, _config(server, samples=2, temperature=0.8), dry=True)
    assert server.chat_requests() == [] and dry.calls == {"response": 8, "feedback": 8,
                                                          "refinement": 8}
    cli(*collect_args(db, server, "--samples", "2", "--temperature", "0.8"))
    sent = {r[0] for r in query(db, "SELECT call_id FROM calls WHERE purpose = 'response'")}
    assert len(dry.call_ids["response"]) == 8 and set(dry.call_ids["response"]) == sent
    assert len(server.chat_requests()) == sum(dry.calls.values())
    # Run again, the dry run sees it all cached: nothing left to send.
    again = run_collect(db, _config(server, samples=2, temperature=0.8), dry=True)
    assert again.calls == {} and again.cached == {"response": 8, "feedback": 8, "refinement": 8}


def test_no_gold_leaves_the_gold_answer_out_of_the_run_and_the_dry_run(db, server, cli):
    from generation.collect import Item, load_templates, run_collect, stage_calls

    config = _config(server, use_gold=False)
    prompt = {"text": "How many?", "gold_answer": "7319"}
    item = Item(prompt, response="It is 5.", feedback="Wrong.\nVerdict: incorrect")
    for stage in ("feedback", "refinement"):
        for use_gold in (True, False):
            config.use_gold = use_gold
            [call] = stage_calls(stage, config, load_templates(config), [item])
            assert ("7319" in json.dumps(call.request.messages)) is use_gold
    seed(db, 3)
    cli(*collect_args(db, server))  # with the gold answer: responses are now cached
    gold_ids = {r[0] for r in query(db, "SELECT call_id FROM calls WHERE purpose = 'feedback'")}
    dry = run_collect(db, _config(server, use_gold=False), dry=True)
    assert dry.cached == {"response": 3} and dry.calls["feedback"] == 3
    assert not set(dry.call_ids["feedback"]) & gold_ids  # different prompts: no gold in them
    server.reset_log()
    cli(*collect_args(db, server, "--no-gold"))
    no_gold = query(db, "SELECT call_id, messages FROM calls WHERE purpose = 'feedback' "
                        "AND run_id = (SELECT max_by(run_id, started_at) FROM runs)")
    assert {cid for cid, _ in no_gold} == set(dry.call_ids["feedback"])
    golds = [g for (g,) in query(db, "SELECT gold_answer FROM prompts")]
    assert all(f"#### {g}" not in m and "gold" not in m.lower() for _, m in no_gold for g in golds)


def test_collect_progress_has_one_task_per_stage_with_counts(db, server):
    import io

    from rich.console import Console

    from corpus.display import progress
    from generation.collect import Collector
    from generation.ledger import Ledger

    seed(db, 3)
    tty = Console(file=io.StringIO(), force_terminal=True, width=200)
    with Store.open(db, command="collect") as store, store.run("collect", {}) as run:
        collector = Collector(store, _config(server), run.run_id)
        try:
            with Ledger(store, run.run_id) as ledger, progress(console=tty) as display:
                summary = collector.run(ledger, display)
        finally:
            collector.close()
    assert summary.calls == {s: {"ok": 3, "failed": 0, "cached": 0}
                             for s in ("response", "feedback", "refinement")}
    last_frame = tty.file.getvalue()
    last_frame = last_frame[last_frame.rindex("response"):]
    for stage in ("response", "feedback", "refinement"):
        assert stage in last_frame
    assert last_frame.count("3/3") == 3 and last_frame.count("done 3") == 3
    assert "req/s" in last_frame and "tok $" in last_frame


def test_budget_stops_before_exceeding(db, server, cli, tmp_path):
    seed(db, 10)
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"models": {"student": {"input": 100.0, "output": 100.0},
                                             "teacher": {"input": 100.0, "output": 100.0}}}))
    result = cli(*collect_args(db, server, "--budget", "0.2", "--prices", str(prices),
                               "--concurrency", "2"), exit_code=1)
    assert "budget" in result.output
    spent = query(db, "SELECT sum(cost), count(*) FROM calls")[0]
    assert 0 < spent[0] <= 0.2
    assert query(db, "SELECT count(*) FROM calls WHERE status = 'pending'")[0][0] == 0
    assert len(server.chat_requests()) == spent[1]
    assert query(db, "SELECT status FROM runs WHERE command = 'collect'")[0][0] == "failed"


@file_store("reads the store file's bytes")
def test_api_key_never_stored_or_printed(db, server, cli, monkeypatch):
    seed(db, 4)
    monkeypatch.setenv("SELFEVO_TEST_KEY", KEY)
    # One request fails with an error that echoes the key (as real 401s do, partly).
    server.push(Behaviour("status", 401, content=f"Incorrect API key provided: {KEY}"))
    result = cli(*collect_args(db, server, "--api-key-env", "SELFEVO_TEST_KEY"))
    assert all(r.headers.get("authorization") == f"Bearer {KEY}" for r in server.chat_requests())
    assert KEY not in result.output
    errors = query(db, "SELECT error FROM attempts WHERE error IS NOT NULL")
    assert errors and all(KEY not in e for (e,) in errors)
    for path in Path(db).parent.iterdir():  # the store, its WAL and lock file
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
            assert b"SECRET-9f8e" not in path.read_bytes(), path


def _collect_cmd(db: str, server: OpenAIServer, concurrency: int = 4) -> list[str]:
    return [sys.executable, "-m", "selfevo.cli", *collect_args(db, server, "--concurrency",
                                                               str(concurrency))]


def _wait(cond, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_kill_9_then_resume_answers_every_request_exactly_once(db, server):
    """SIGKILL mid-run loses only what was in flight; the rerun re-sends just that."""
    n = 8
    seed(db, n)
    answered = 5

    def handler(body, k):
        # The first requests are answered; later ones hang until the job is killed.
        return None if k < answered else Behaviour("hang", hang=60)

    server.handler = handler
    env = {**os.environ, "SELFEVO_DB": db}
    proc = spawn(_collect_cmd(db, server), cwd=REPO, env=env,
                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait(lambda: sum(server.successes.values()) >= answered and server.in_flight >= 3)
        time.sleep(1.5)  # the ledger flushes every 0.2 s: answered calls are committed
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        reap(proc)
    hung = {request_key(r.body) for r in server.chat_requests() if r.behaviour.startswith("hang")}
    server.handler = None
    server.release()
    _wait(lambda: server.in_flight == 0)
    before = query(db, "SELECT status, count(*) FROM calls GROUP BY ALL")
    assert dict(before).get("ok") == answered and dict(before).get("pending", 0) >= len(hung)

    cp = subprocess.run(_collect_cmd(db, server), cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr[-3000:]
    # Every prompt has its record; every distinct request was answered exactly once.
    assert query(db, "SELECT count(DISTINCT prompt_id) FROM records WHERE kind = 'meta'")[0][0] == n
    assert set(server.successes.values()) == {1}
    assert len(server.successes) == 3 * n
    # Requests in flight at the kill were re-sent and are flagged possibly billed.
    billed = {json.dumps({"max_tokens": 64, "messages": json.loads(m), "model": model.split(":")[1],
                          "temperature": 0.0}, sort_keys=True, separators=(",", ":"))
              for m, model in query(db, "SELECT messages, model FROM calls WHERE possibly_billed")}
    assert hung and hung <= billed
    assert query(db, "SELECT count(*) FROM calls WHERE status <> 'ok'")[0][0] == 0
    statuses = [s for (s,) in query(db, "SELECT status FROM runs WHERE command = 'collect' ORDER BY started_at")]
    assert statuses == ["killed", "ok"]


def test_ctrl_c_keeps_in_flight_results(db, server):
    seed(db, 12)
    server.latency = 0.4
    env = {**os.environ, "SELFEVO_DB": db}
    with child(_collect_cmd(db, server, concurrency=3), cwd=REPO, env=env,
               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        _wait(lambda: len(server.chat_requests()) >= 4 and server.in_flight >= 3)
        at_sigint = len(server.chat_requests())
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    requests = server.chat_requests()
    # Nothing new was sent after Ctrl-C (bar a request already being handed to the client);
    # what was in flight finished and was stored.
    assert len(requests) <= at_sigint + 1
    assert all(r.finished is not None and r.success for r in requests)
    stored = query(db, "SELECT count(*) FROM calls WHERE status = 'ok'")[0][0]
    assert stored == sum(1 for r in requests if r.success)
    assert query(db, "SELECT count(*) FROM calls WHERE status = 'pending'")[0][0] == 0
    assert query(db, "SELECT status FROM runs WHERE command = 'collect'")[0][0] == "interrupted"
    assert "interrupted" in err


def test_samples_give_distinct_cached_records(db, server, cli):
    seed(db, 2)
    cli(*collect_args(db, server, "--samples", "3", "--temperature", "0.8"))
    rows = query(db, "SELECT prompt_id, response, json_extract(meta, '$.sample_index') FROM records")
    assert len(rows) == 6 and len({r[1] for r in rows}) == 6  # 3 distinct samples per prompt
    assert sorted(int(r[2]) for r in rows) == [0, 0, 1, 1, 2, 2]
    server.reset_log()
    cli(*collect_args(db, server, "--samples", "3", "--temperature", "0.8"))
    assert server.chat_requests() == []  # every sample is cached under its sample_index


def test_kill_9_at_full_speed_every_duplicate_is_flagged_possibly_billed(db, server):
    """Killed while answers stream in: whatever the server answered twice is flagged."""
    n = 12
    seed(db, n)
    server.latency = 0.05
    env = {**os.environ, "SELFEVO_DB": db}
    proc = spawn(_collect_cmd(db, server), cwd=REPO, env=env,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(lambda: sum(server.successes.values()) >= 14)
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: requests in flight, results unflushed
        proc.wait(10)
    finally:
        reap(proc)
    _wait(lambda: server.in_flight == 0)
    cp = subprocess.run(_collect_cmd(db, server), cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr[-3000:]
    assert query(db, "SELECT count(DISTINCT prompt_id) FROM records WHERE kind = 'meta'")[0][0] == n
    assert len(server.successes) == 3 * n
    billed = {json.dumps({"max_tokens": 64, "messages": json.loads(m), "model": model.split(":")[1],
                          "temperature": 0.0}, sort_keys=True, separators=(",", ":"))
              for m, model in query(db, "SELECT messages, model FROM calls WHERE possibly_billed")}
    twice = {k for k, v in server.successes.items() if v > 1}
    assert twice <= billed  # a request paid twice is never unaccounted for
    assert all(v <= 2 for v in server.successes.values())
