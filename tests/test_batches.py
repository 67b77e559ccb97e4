"""Batch generation (``--mode batch|file``) against the local server's Batch API."""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from backends import file_store  # noqa: E402
from openai_batches import BatchPlan  # noqa: E402
from openai_server import completion_data, default_answer, request_key  # noqa: E402
from test_collect import query, seed  # noqa: E402

FAST = ("--poll-interval", "0.01")


def batch_args(db: str, server, *extra: str, mode: str = "batch") -> list[str]:
    return ["collect", "--db", db, "--teacher", f"openai:teacher@{server.base_url}",
            "--responder", f"openai:student@{server.base_url}", "--max-tokens", "64",
            "--mode", mode, *FAST, *extra]


def submitted_ids(server) -> Counter[str]:
    """custom_id -> how many batches the server created with it in their input file."""
    ids: Counter[str] = Counter()
    for b in server.batches.batches.values():
        for line in server.batches.contents[b.input_file_id].splitlines():
            ids[json.loads(line)["custom_id"]] += 1
    return ids


def assert_exactly_once(db: str, server, n_calls: int) -> None:
    """Every call ok, submitted in one batch only, answered once, one attempt row."""
    assert dict(query(db, "SELECT status, count(*) FROM calls GROUP BY 1")) == {"ok": n_calls}
    assert set(submitted_ids(server).values()) == {1}
    assert len(server.batches.answered) == n_calls
    assert set(server.batches.answered.values()) == {1}
    per_call = query(db, "SELECT count(*) FROM attempts GROUP BY call_id")
    assert {n for (n,) in per_call} == {1}
    assert query(db, "SELECT count(*) FROM calls WHERE possibly_billed")[0][0] == 0


# -- the round trip ------------------------------------------------------------------------
def test_batch_mode_makes_the_records_the_online_path_makes(db, tmp_path, server, cli):
    seed(db, 6)
    online = str(tmp_path / "online.duckdb")
    seed(online, 6)
    cli(*batch_args(online, server, mode="online"))
    server.reset_log()
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"models": {"teacher": {"input": 2.0, "output": 8.0},
                                             "student": {"input": 1.0, "output": 4.0}}}))
    result = cli(*batch_args(db, server, "--prices", str(prices)))
    assert "6 (6 new)" in result.output and "correct 6" in result.output
    assert server.chat_requests() == []  # nothing went online
    assert server.batches.creates() == 3  # one batch a stage
    assert_exactly_once(db, server, 18)
    # Same call ids (the cache key), same answers, same records as online.
    sql = "SELECT call_id, response, prompt_tokens, completion_tokens FROM calls ORDER BY 1"
    assert query(db, sql) == query(online, sql)
    rsql = "SELECT record_id FROM records ORDER BY 1"
    assert query(db, rsql) == query(online, rsql)
    # custom_id is the call id; the body is the online request's.
    for b in server.batches.batches.values():
        for line in server.batches.contents[b.input_file_id].splitlines():
            req = json.loads(line)
            assert req["method"] == "POST" and req["url"] == "/v1/chat/completions"
    # Cost at the batch price: half the online price of the same tokens.
    for model, pt, ct, cost in query(db, "SELECT model, prompt_tokens, completion_tokens, cost "
                                         "FROM calls"):
        p = {"openai:teacher": (2.0, 8.0), "openai:student": (1.0, 4.0)}[model]
        assert cost == pytest.approx((p[0] * pt + p[1] * ct) / 2e6)
    states = query(db, "SELECT state, provider, batch_id IS NOT NULL FROM batches")
    assert set(states) == {("settled", "openai", True)}
    assert query(db, "SELECT status FROM runs WHERE command = 'collect'") == [("ok",)]


def test_a_call_already_ok_is_never_put_in_a_batch(db, server, cli):
    seed(db, 6)
    cli(*batch_args(db, server, "--limit", "2", mode="online"))
    online = {request_key(r.body) for r in server.chat_requests()}
    cli(*batch_args(db, server))
    batched = set(server.batches.answered)
    assert len(online) == 6 and len(batched) == 12 and not online & batched
    assert query(db, "SELECT count(*) FROM records")[0][0] == 6


def test_shards_respect_the_request_limit(db, server, cli):
    seed(db, 5)
    cli(*batch_args(db, server, "--shard-requests", "2"))
    rows = query(db, "SELECT purpose, n_requests FROM batches ORDER BY purpose, n_requests")
    assert [n for p, n in rows if p == "response"] == [1, 2, 2]
    assert_exactly_once(db, server, 15)


# -- leaving and resuming ------------------------------------------------------------------
def test_no_wait_stops_with_a_line_and_the_next_run_picks_the_batch_up(db, server, cli):
    seed(db, 4)
    server.batches.default_plan = BatchPlan(("validating", "in_progress", "in_progress",
                                             "finalizing", "completed"))
    first = cli(*batch_args(db, server, "--no-wait"), exit_code=3)
    assert "4 requests in batch batch_" in first.output and "state in_progress" in first.output
    assert "run 'selfevo batches poll' or the same command again" in first.output
    assert "Error" not in first.output
    assert query(db, "SELECT status FROM runs WHERE command = 'collect'") == [("waiting",)]
    runs = 1
    while True:
        out = cli(*batch_args(db, server, "--no-wait"), exit_code=None)
        runs += 1
        assert runs < 20 and out.exit_code in (0, 3), out.output
        if out.exit_code == 0:
            break
    assert server.batches.creates() == 3  # never submitted twice
    assert query(db, "SELECT count(*) FROM records")[0][0] == 4
    assert_exactly_once(db, server, 12)


def test_batches_poll_settles_and_the_rerun_goes_on_to_the_next_stage(db, server, cli):
    seed(db, 3)
    cli(*batch_args(db, server, "--no-wait"), exit_code=3)
    polled = cli("batches", "poll", "--wait", "--poll-interval", "0.01", "--db", db)
    assert "settled rows: 3 ok" in polled.output
    assert dict(query(db, "SELECT purpose, status FROM calls")) == {"response": "ok"}
    rerun = cli(*batch_args(db, server))
    assert "3 (3 new)" in rerun.output
    assert query(db, "SELECT count(*) FROM batches WHERE purpose = 'response'")[0][0] == 1


def test_online_mode_refuses_requests_that_are_in_an_open_batch(db, server, cli):
    seed(db, 2)
    cli(*batch_args(db, server, "--no-wait"), exit_code=3)
    out = cli(*batch_args(db, server, mode="online"), exit_code=1)
    assert "in open batches" in out.output and "batches cancel" in out.output
    assert server.chat_requests() == []


# -- what the provider does ----------------------------------------------------------------
def test_expired_rows_are_resubmitted_in_a_new_batch(db, server, cli):
    seed(db, 6)
    server.batches.plans.append(BatchPlan.expiring(answered=2))
    cli(*batch_args(db, server))
    rows = query(db, "SELECT purpose, attempt, n_requests, parent_key IS NOT NULL, settled "
                     "FROM batches WHERE purpose = 'response' ORDER BY attempt")
    assert [r[:4] for r in rows] == [("response", 1, 6, False), ("response", 2, 4, True)]
    assert json.loads(rows[0][4]) == {"ok": 2, "retry": 4, "resubmitted": 4, "from": "expired"}
    assert query(db, "SELECT count(*) FROM records")[0][0] == 6
    assert set(server.batches.answered.values()) == {1}
    tries = query(db, "SELECT a.status, a.error_kind, a.attempt FROM attempts a JOIN calls c "
                      "USING (call_id) WHERE c.n_attempts = 2 ORDER BY a.attempt")
    assert Counter(tries) == {("retry", "batch_expired", 1): 4, ("ok", None, 2): 4}


def test_rows_still_unanswered_after_max_attempts_are_failed_then_sent_by_the_next_run(
        db, server, cli):
    seed(db, 4)
    server.batches.plans.append(BatchPlan.expiring(answered=1))
    cli(*batch_args(db, server, "--max-attempts", "1"))
    failed = query(db, "SELECT error_kind, error FROM calls WHERE status = 'failed'")
    assert len(failed) == 3 and {k for k, _ in failed} == {"batch_expired"}
    assert query(db, "SELECT count(*) FROM records")[0][0] == 1
    cli(*batch_args(db, server, "--max-attempts", "1"))
    assert query(db, "SELECT count(*) FROM records")[0][0] == 4
    assert set(server.batches.answered.values()) == {1}


def test_a_failed_batch_is_resubmitted(db, server, cli):
    seed(db, 3)
    server.batches.plans.append(BatchPlan(("validating", "failed")))
    cli(*batch_args(db, server))
    rows = query(db, "SELECT state, attempt, error FROM batches WHERE purpose = 'response' "
                     "ORDER BY attempt")
    assert [r[:2] for r in rows] == [("settled", 1), ("settled", 2)]
    assert "scripted validation failure" in rows[0][2]
    assert query(db, "SELECT count(*) FROM records")[0][0] == 3


@pytest.mark.parametrize("vllm_errors", [False, True], ids=["openai-errors", "vllm-errors"])
def test_partial_error_file_retries_5xx_and_keeps_4xx_errors(db, server, cli, vllm_errors):
    seed(db, 4)
    row = {0: "error:500", 1: "error:400"}
    server.batches.plans.append(BatchPlan(row=lambda _c, _b, k: row.get(k, "ok"),
                                          vllm_errors=vllm_errors))
    cli(*batch_args(db, server))
    failed = query(db, "SELECT error_kind, error, n_attempts FROM calls WHERE status = 'failed'")
    assert len(failed) == 1
    kind, error, n = failed[0]
    assert kind == "client" and "scripted 400" in error and n == 1
    retried = query(db, "SELECT count(*) FROM calls WHERE status = 'ok' AND n_attempts = 2")
    assert retried[0][0] == 1  # the 500 went into a second batch and was answered
    assert query(db, "SELECT count(*) FROM records")[0][0] == 3


def test_unknown_duplicate_and_unreadable_lines_are_counted_not_recorded(db, server, cli):
    seed(db, 3)
    unknown = {"custom_id": "h1:not-a-call", "response": {"status_code": 200, "body": {}}}
    server.batches.plans.append(BatchPlan(row=lambda _c, _b, k: "duplicate" if k == 0 else "ok",
                                          extra_lines=[unknown, {"no": "id"}]))
    cli(*batch_args(db, server))
    settled = json.loads(query(db, "SELECT settled FROM batches WHERE purpose = 'response'")[0][0])
    assert settled == {"ok": 3, "unknown": 1, "duplicates": 1, "unreadable": 1,
                       "from": "completed"}
    assert query(db, "SELECT count(*) FROM calls WHERE call_id = 'h1:not-a-call'")[0][0] == 0
    assert {n for (n,) in query(db, "SELECT count(*) FROM attempts GROUP BY call_id")} == {1}


def test_a_lost_create_answer_is_adopted_not_submitted_twice(db, server, cli):
    seed(db, 3)
    server.batches.lose_create_answers = 1
    cli(*batch_args(db, server))
    assert server.batches.creates() == 3
    assert_exactly_once(db, server, 9)


def test_empty_answers_in_a_batch_are_failures_never_successes(db, server, cli):
    seed(db, 2)
    server.batches.plans.append(BatchPlan(row=lambda _c, _b, k: "empty" if k == 0 else "ok"))
    cli(*batch_args(db, server))
    assert query(db, "SELECT error_kind FROM calls WHERE status = 'failed'") == [("empty",)]


# -- cancel, list, show ---------------------------------------------------------------------
def test_cancel_settles_the_batch_and_the_next_run_sends_the_rest(db, server, cli):
    seed(db, 4)
    server.batches.default_plan = BatchPlan(("validating",) * 50 + ("completed",))
    cli(*batch_args(db, server, "--no-wait"), exit_code=3)
    listed = cli("batches", "list", "--db", db)
    key = query(db, "SELECT batch_key FROM batches")[0][0]
    assert key in listed.output and "validating" in listed.output
    cli("batches", "cancel", key[:8], "--db", db)
    cli("batches", "poll", "--wait", "--poll-interval", "0.01", "--db", db)
    assert query(db, "SELECT state FROM batches") == [("settled",)]
    statuses = dict(query(db, "SELECT status, count(*) FROM calls GROUP BY 1"))
    assert statuses == {"ok": 2, "failed": 2}  # half answered before the cancel
    shown = cli("batches", "show", key, "--db", db)
    assert "rows ok" in shown.output and "rows failed" in shown.output
    server.batches.default_plan = BatchPlan()
    cli(*batch_args(db, server))
    assert query(db, "SELECT count(*) FROM records")[0][0] == 4


def test_cancel_of_a_file_shard_fails_its_calls_at_once(db, tmp_path, server, cli):
    seed(db, 2)
    cli(*batch_args(db, server, "--out", str(tmp_path / "shards"), mode="file"), exit_code=3)
    key = query(db, "SELECT batch_key FROM batches")[0][0]
    cli("batches", "cancel", key, "--db", db)
    assert query(db, "SELECT state FROM batches") == [("settled",)]
    assert query(db, "SELECT DISTINCT status, error_kind FROM calls") == [("failed", "cancelled")]


# -- dry run and budget --------------------------------------------------------------------
def test_dry_run_counts_shards_and_prices_at_the_batch_price(db, tmp_path, server, cli):
    seed(db, 5)
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"models": {"teacher": {"input": 2.0, "output": 8.0},
                                             "student": {"input": 1.0, "output": 4.0}}}))

    def cost(*extra: str) -> float:
        out = cli(*batch_args(db, server, "--prices", str(prices), "--dry-run", *extra)).output
        return float(out.split("$")[-1].split()[0])

    out = cli(*batch_args(db, server, "--dry-run", "--shard-requests", "2")).output
    for stage in ("response", "feedback", "refinement"):  # 5 requests, 2 a shard
        assert re.search(rf"{stage} shards\s*│\s*3 ", out), out
    # both costs are printed to 4 decimals: half the online price, within that rounding
    assert cost() == pytest.approx(cost("--mode", "online") / 2, abs=1e-4)
    assert server.batches.creates() == 0 and server.chat_requests() == []


def test_budget_caps_what_is_submitted(db, tmp_path, server, cli):
    seed(db, 10)
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"models": {"student": {"input": 10.0, "output": 10.0},
                                             "teacher": {"input": 10.0, "output": 10.0}}}))
    out = cli(*batch_args(db, server, "--prices", str(prices), "--budget", "0.004"), exit_code=1)
    assert "--budget" in out.output
    submitted = query(db, "SELECT sum(n_requests) FROM batches")[0][0]
    assert 0 < submitted < 10
    assert query(db, "SELECT count(*) FROM calls")[0][0] == submitted  # the rest never registered


# -- offline files: vllm run-batch and friends ---------------------------------------------
def fake_vllm_run_batch(shard: Path, out: Path, fail: int = -1) -> None:
    """What ``vllm run-batch -i shard -o out`` writes (vLLM's BatchRequestOutput lines)."""
    lines = []
    for k, raw in enumerate(shard.read_text().splitlines()):
        req = json.loads(raw)
        if k == fail:
            lines.append({"id": f"vllm-{k}", "custom_id": req["custom_id"],
                          "response": {"status_code": 400, "request_id": f"vllm-batch-{k}"},
                          "error": "scripted vLLM error"})
            continue
        body = completion_data(req["body"], k, default_answer(req["body"], k))
        lines.append({"id": f"vllm-{k}", "custom_id": req["custom_id"],
                      "response": {"status_code": 200, "request_id": f"vllm-batch-{k}",
                                   "body": body}, "error": None})
    out.write_text("".join(json.dumps(x) + "\n" for x in reversed(lines)))


def test_file_mode_round_trip_with_vllm_run_batch_output(db, tmp_path, cli, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # nothing is sent: no key needed
    seed(db, 3)
    shards = tmp_path / "shards"
    args = ["collect", "--db", db, "--teacher", "openai:Qwen/Qwen2.5-7B-Instruct",
            "--responder", "openai:Qwen/Qwen2.5-0.5B-Instruct", "--max-tokens", "64",
            "--mode", "file", "--out", str(shards)]
    rounds = 0
    while (out := cli(*args, exit_code=None)).exit_code == 3:
        assert "shard file(s)" in out.output and "selfevo batches ingest" in out.output
        rounds += 1
        assert rounds < 6, out.output
        for key, path in query(db, "SELECT batch_key, path FROM batches WHERE state = 'written'"):
            assert Path(path).parent == shards
            result = tmp_path / f"{key}.out.jsonl"
            fake_vllm_run_batch(Path(path), result, fail=0 if rounds == 1 else -1)
            assert "ingested" in cli("batches", "ingest", str(result), "--db", db).output
    assert out.exit_code == 0, out.output
    # Round 1: responses (one fails); 2: that response again, feedback of the others; 3-4:
    # the rest. Every prompt ends with its record; the failure was sent again, once.
    assert rounds == 4
    assert query(db, "SELECT count(*) FROM records")[0][0] == 3
    assert query(db, "SELECT count(*) FROM calls WHERE status <> 'ok'")[0][0] == 0
    tries = query(db, "SELECT a.status, a.error FROM attempts a WHERE a.status <> 'ok'")
    assert tries == [("failed", "400 client error: scripted vLLM error")]
    assert set(r for (r,) in query(db, "SELECT state FROM batches")) == {"settled"}


def test_ingest_reads_flat_rows_and_reports_what_it_does_not_record(db, tmp_path, server, cli):
    seed(db, 2)
    cli(*batch_args(db, server, mode="file"), exit_code=3)
    ids = [c for (c,) in query(db, "SELECT call_id FROM calls ORDER BY 1")]
    out = tmp_path / "ray.jsonl"
    out.write_text("".join(json.dumps(x) + "\n" for x in [
        {"custom_id": ids[0], "generated_text": "The answer is 4.", "num_input_tokens": 30,
         "num_generated_tokens": 5},
        {"custom_id": ids[0], "generated_text": "again"},
        {"custom_id": "h1:unknown", "generated_text": "x"},
    ]) + "not json\n")
    result = cli("batches", "ingest", str(out), "--db", db)
    assert "1 ok" in result.output and "1 unknown" in result.output
    assert "not recorded: 1 unknown custom_id, 1 duplicated, 1 unreadable" in result.output
    assert "1 requests still pending" in result.output
    row = query(db, f"SELECT status, response, prompt_tokens FROM calls WHERE call_id = '{ids[0]}'")
    assert row == [("ok", "The answer is 4.", 30)]


# -- the other commands --------------------------------------------------------------------
def test_refine_and_eval_run_in_batch_mode(db, tmp_path, server, cli):
    spec = f"openai:student@{server.base_url}"
    out = cli("refine", "--model", spec, "--db", db, "--mode", "batch", *FAST,
              "Tom has 3 pens and buys 4. How many?")
    assert "stopped" in out.output
    assert [p for (p,) in query(db, "SELECT purpose FROM batches ORDER BY created_at")] == [
        "answer", "self-feedback", "self-refinement"]
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({"question": f"What is 6 * 7 + {i} - {i}?",
                                         "answer": "42"}) + "\n" for i in range(3)))
    cli("eval", "run", "--model", spec, "--bench", str(bench), "--mode", "both", "--db", db,
        "--gen-mode", "batch", *FAST)
    assert query(db, "SELECT mode, accuracy FROM evals ORDER BY mode") == [
        ("direct", 1.0), ("refine", 1.0)]
    assert server.chat_requests() == []
    assert set(server.batches.answered.values()) == {1}


def test_batch_mode_needs_an_openai_model(db, cli, tiny_model_dir):
    out = cli("refine", "--model", f"hf:{tiny_model_dir}", "--db", db, "--mode", "batch",
              "question?", exit_code=1)
    assert "needs an openai: model" in out.output


def test_settling_is_one_transaction_per_chunk_and_memory_stays_flat(db, tmp_path):
    """A settle of many lines in small chunks: every row once, and memory bounded by a chunk."""
    import tracemalloc

    from corpus.store import Store
    from generation.batches import tables
    from generation.batches.settle import Settler
    from generation.ledger import Ledger
    from generation.prices import PriceTable

    n = int(os.environ.get("SELFEVO_TEST_SETTLE_ROWS", "5000"))
    path = tmp_path / "out.jsonl"
    with Store.open(db) as store, store.run("t", {}) as run, Ledger(store, run.run_id) as ledger:
        ids = [f"h1:{i:032x}" for i in range(n)]
        _register_fake_batch(ledger, ids)
        with open(path, "w") as f:
            for cid in reversed(ids):
                body = completion_data({"messages": [{"content": cid}]}, 0, f"answer {cid}")
                f.write(json.dumps({"custom_id": cid, "response": {"status_code": 200,
                                                                   "body": body}}) + "\n")
        tracemalloc.start()
        counts = Settler(ledger, PriceTable.load(), chunk=500).settle_file(path, "bfake")
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert counts.ok == n
        assert ledger.writer.call(lambda con: tables.link_counts(con, "bfake")) == {"ok": n}
    # ~1 KB a line: the file is n KB; a chunk of 500 lines is what settling may hold.
    assert peak < 8_000_000, peak
    assert query(db, "SELECT count(*) FROM calls WHERE status = 'ok'")[0][0] == n


def _register_fake_batch(ledger, ids: list[str]) -> None:
    from generation.batches import tables
    from generation.ledger import insert_pending

    def run(con):
        rows = [{"call_id": c, "model": "openai:m", "endpoint": "e", "messages": "[]",
                 "params": "{}", "sample_index": 0, "purpose": "t", "status": "pending",
                 "run_id": ledger.run_id} for c in ids]
        insert_pending(con, rows)
        tables.insert_batch(con, {"batch_key": "bfake", "provider": "file", "model": "openai:m",
                                  "attempt": 1, "shard": 0, "path": "x", "n_requests": len(ids),
                                  "bytes": 0, "state": "written", "run_id": ledger.run_id})
        tables.insert_links(con, "bfake", ids)

    ledger.writer.call(run)


def ledger_round_trip(db: str, server, n: int) -> dict:
    """``n`` distinct requests through the ledger in batch mode (shards of 50,000)."""
    from corpus.store import Store
    from generation.backends.base import ChatRequest
    from generation.backends.openai_backend import OpenAIBackend
    from generation.batches import BatchOptions
    from generation.ledger import Call, Ledger

    backend = OpenAIBackend.from_spec(f"openai:m@{server.base_url}")
    calls = [Call(ChatRequest([{"role": "user", "content": f"What is {i} + 1?"}],
                              {"temperature": 0.0, "max_tokens": 16}), "response")
             for i in range(n)]
    try:
        with Store.open(db) as store, store.run("t", {}) as run, \
                Ledger(store, run.run_id, batch=BatchOptions(poll_interval=0.01)) as ledger:
            outcomes = ledger.complete(backend, calls)
            counts = ledger.counts.as_dict()
    finally:
        backend.close()
    assert sum(o.ok for o in outcomes) == n and not any(o.cached for o in outcomes)
    return counts


def test_round_trip_through_the_ledger(db, server):
    counts = ledger_round_trip(db, server, 2000)
    assert counts["ok"] == 2000 and counts["attempts"] == 2000
    assert_exactly_once(db, server, 2000)


@pytest.mark.slow
def test_100k_rows_round_trip(db, server):
    counts = ledger_round_trip(db, server, 100_000)
    assert counts["ok"] == 100_000
    assert query(db, "SELECT count(*), sum(n_requests) FROM batches") == [(2, 100_000)]
    assert_exactly_once(db, server, 100_000)


@pytest.mark.slow
def test_settling_100k_lines_holds_one_chunk_in_memory(db, tmp_path, monkeypatch):
    monkeypatch.setenv("SELFEVO_TEST_SETTLE_ROWS", "100000")
    test_settling_is_one_transaction_per_chunk_and_memory_stays_flat(db, tmp_path)


@file_store("builds an old store file with DuckDB directly (old lakes: test_lake_store)")
def test_a_store_from_before_batches_migrates_and_keeps_flagging_dead_online_calls(db):
    import duckdb

    from corpus.migrations import MIGRATIONS, migrate
    from corpus.store import Store

    con = duckdb.connect(db)
    migrate(con, upto=MIGRATIONS.index(next(m for m in MIGRATIONS
                                            if m.__name__ == "m007_batches")))
    con.execute("INSERT INTO calls (call_id, model, messages, params, status, run_id) "
                "VALUES ('h1:dead', 'openai:m', '[]', '{}', 'pending', 'r0')")
    con.close()
    with Store.open(db) as store:
        assert store.query("SELECT count(*) FROM batches") == [(0,)]
        assert store.query("SELECT possibly_billed FROM calls") == [(True,)]
        with pytest.raises(Exception, match="wait"), store.run("unit", {}):
            from generation.batches import BatchesOpen

            raise BatchesOpen("3 requests wait")
        assert store.query("SELECT status, error FROM runs") == [("waiting", "3 requests wait")]


def test_a_prepared_shard_whose_file_is_gone_is_rebuilt_from_its_calls(db, tmp_path, server):
    from corpus.store import Store
    from generation.batches import BatchOptions, tables
    from generation.batches.drive import Driver
    from generation.batches.shards import request_line
    from generation.ledger import Ledger, insert_pending

    ids = [f"h1:{i:032x}" for i in range(3)]
    with Store.open(db) as store, store.run("t", {}) as run, Ledger(store, run.run_id) as ledger:
        def register(con):
            insert_pending(con, [{"call_id": c, "model": "openai:m", "endpoint": "e",
                                  "messages": json.dumps([{"role": "user", "content": c}]),
                                  "params": '{"max_tokens":8}', "sample_index": 0,
                                  "purpose": "t", "status": "pending", "run_id": run.run_id}
                                 for c in ids])
            tables.insert_batch(con, {
                "batch_key": "bgone", "provider": "openai", "model": "openai:m",
                "base_url": server.base_url, "api_key_env": "OPENAI_API_KEY", "attempt": 1,
                "shard": 0, "path": str(tmp_path / "gone" / "bgone.jsonl"), "n_requests": 3,
                "bytes": 0, "state": "prepared", "run_id": run.run_id})
            tables.insert_links(con, "bgone", ids)

        ledger.writer.call(register)
        driver = Driver(ledger, BatchOptions(poll_interval=0.01))
        driver.run({"bgone"})
        driver.close()
    (uploaded,) = [server.batches.contents[b.input_file_id] for b in server.batches.batches.values()]
    assert uploaded == b"".join(request_line(c, "m", [{"role": "user", "content": c}],
                                             {"max_tokens": 8}) for c in ids)
    assert dict(query(db, "SELECT status, count(*) FROM calls GROUP BY 1")) == {"ok": 3}


def test_evolve_generate_stage_waits_for_its_batches_then_resumes(db, server):
    from corpus.store import Store
    from generation.batches import BatchesOpen, BatchOptions
    from selfevo.evolve import Evolution, EvolveConfig

    seed(db, 3)
    config = EvolveConfig(student=f"openai:m@{server.base_url}", base="b", prompts="true",
                          name="ev", gen={"temperature": 0.0, "max_tokens": 32})
    with Store.open(db) as store:
        evo = Evolution(store, config, log=lambda _m: None,
                        batch=BatchOptions(wait=False, poll_interval=0.01))
        with pytest.raises(BatchesOpen, match="requests in batch"):
            evo.stage("generate", 1, lambda run: evo.generate(run, 1, config.student))
        evo.batch = BatchOptions(poll_interval=0.01)
        counts = evo.stage("generate", 1, lambda run: evo.generate(run, 1, config.student))
        evo.close()
    assert counts["records"] == 3
    assert query(db, "SELECT status FROM runs WHERE command = 'evolve generate' "
                     "ORDER BY started_at") == [("waiting",), ("ok",)]
    # the paper's round: the feedback on r̂ goes as batches too
    assert [p for (p,) in query(db, "SELECT DISTINCT purpose FROM batches ORDER BY 1")] == [
        "answer", "refined-feedback", "self-feedback", "self-refinement"]
    assert server.chat_requests() == [] and set(server.batches.answered.values()) == {1}


def test_polling_shows_each_batch_with_its_state_and_counts(db, server):
    import io

    from rich.console import Console

    from corpus.display import progress
    from corpus.store import Store
    from generation.backends.openai_backend import OpenAIOptions
    from generation.batches import BatchOptions
    from generation.collect import CollectConfig, Collector
    from generation.ledger import Ledger

    seed(db, 3)
    batch = BatchOptions(poll_interval=0.01)
    config = CollectConfig(teacher=f"openai:teacher@{server.base_url}",
                           responder=f"openai:student@{server.base_url}", max_tokens=32,
                           options=OpenAIOptions(), batch=batch)
    tty = Console(file=io.StringIO(), force_terminal=True, width=200)
    with Store.open(db) as store, store.run("collect", {}) as run:
        collector = Collector(store, config, run.run_id)
        try:
            with Ledger(store, run.run_id, batch=batch) as ledger, \
                    progress(console=tty) as display:
                batch.display = display
                collector.run(ledger, display)
        finally:
            collector.close()
    frames = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", tty.file.getvalue())
    keys = [k for (k,) in query(db, "SELECT batch_key FROM batches")]
    assert len(keys) == 3
    for key in keys:  # the batch's line in the last frame drawn
        line = [x for x in re.split(r"[\r\n]", frames) if f"batch {key}" in x][-1]
        assert "3/3" in line and "settled" in line, line
