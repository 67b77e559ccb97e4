"""Evaluation: accuracy equals a hand count, Wilson intervals, modes, voting, store rows."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import pytest
from backends import both_stores, writing

from corpus.records import insert_prompts, make_prompt
from corpus.store import Store
from generation.backends.base import Backend, ChatRequest, ChatResult
from schemas.conversation import FEEDBACK_INSTRUCTION, REFINE_INSTRUCTION
from selfevo import SelfevoError
from selfevo.evaluate import (
    BenchItem,
    compare_evals,
    evaluate,
    load_items,
    majority_vote,
    wilson_interval,
)


def stage_of(req: ChatRequest) -> str:
    """Which stage a request asks for, read off its last instruction."""
    last = req.messages[-1]["content"]
    return {FEEDBACK_INSTRUCTION: "feedback", REFINE_INSTRUCTION: "refinement"}.get(last, "answer")


def question_of(req: ChatRequest) -> str:
    """The question: the first user turn (after the response template's system line)."""
    return next(m["content"] for m in req.messages if m["role"] == "user")


# item id -> (question, gold, initial answer, self-feedback verdict, refined answer)
FIXTURE = {
    "q1": ("Ann has 2 apples and gets 3 more. How many?", "5", "The answer is 5.", "correct",
           "The answer is 5."),
    "q2": ("Bo has 10 pens and loses 4. How many?", "6", "The answer is 7.", "incorrect",
           "10 - 4 = 6. The answer is 6."),
    "q3": ("3 boxes of 4 eggs. How many eggs?", "12", "3 * 4 = 12 eggs", "correct",
           "The answer is 12."),
    "q4": ("Half of 30?", "15", "The answer is 16.", "incorrect", "The answer is 16."),
    "q5": ("A book costs $1,200. Price?", "1200", "It costs $1,200.", "correct",
           "The answer is 1200."),
    "q6": ("9 minus 10?", "-1", "The answer is 1.", "correct", "The answer is 1."),
}
# Hand count: direct right = q1, q3, q5 -> 3 / 6; refine (always refines) right = q1, q2, q3,
# q5 -> 4 / 6; refine with stop-on-correct keeps q1, q3, q5, q6 answers and refines q2, q4
# -> q1, q2, q3, q5 -> 4 / 6.


class ScriptedModel(Backend):
    """A deterministic test double of a model, answering per question and stage."""

    def __init__(self, script: Callable[[str, ChatRequest], str | None], spec: str = "test:m"):
        self.script, self.spec, self.requests = script, spec, []

    def generate(self, requests: Sequence[ChatRequest], on_result=None) -> list[ChatResult]:
        out = []
        for i, req in enumerate(requests):
            self.requests.append(req)
            stage = stage_of(req)
            text = self.script(stage, req)
            res = ChatResult(ok=text is not None, text=text, error=None if text else "boom")
            if on_result:
                on_result(i, res)
            out.append(res)
        return out


def fixture_script(stage: str, req: ChatRequest) -> str:
    q = question_of(req)
    _, _, answer, verdict, refined = next(v for v in FIXTURE.values() if v[0] == q)
    if stage == "answer":
        return answer
    if stage == "feedback":
        return f"Checked.\nVerdict: {verdict}"
    return refined


def items() -> list[BenchItem]:
    return [BenchItem(k, v[0], v[1]) for k, v in FIXTURE.items()]


@pytest.fixture
def store(db):
    with Store.open(db) as s:
        yield s


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(4, 6)
    assert lo == pytest.approx(0.3000, abs=1e-3) and hi == pytest.approx(0.9032, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(0, 10)[1] == pytest.approx(
        0.2775, abs=1e-3)
    assert wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 0.0)


def test_accuracy_equals_hand_count_and_rows_are_written(store):
    model = ScriptedModel(fixture_script)
    direct, refine = evaluate(store, model, items(), benchmark="fixture",
                              modes=["direct", "refine"])
    assert (direct.correct, direct.n) == (3, 6) and direct.accuracy == 0.5
    assert (refine.correct, refine.n) == (4, 6)
    assert (refine.ci_low, refine.ci_high) == pytest.approx(wilson_interval(4, 6))
    # direct and refine share the answer call: 6 answers + 6 feedbacks + 6 refinements
    assert len(model.requests) == 18
    rows = store.query_dicts("SELECT * FROM evals ORDER BY mode")
    assert [(r["mode"], r["n"], r["correct"]) for r in rows] == [("direct", 6, 3),
                                                                  ("refine", 6, 4)]
    assert rows[0]["run_id"] == rows[1]["run_id"]
    run = store.query_dicts("SELECT * FROM runs WHERE run_id = ?", [rows[0]["run_id"]])[0]
    assert run["command"] == "eval run" and run["status"] == "ok"
    got = dict(store.query(
        "SELECT item_id, correct FROM eval_items WHERE eval_id = ?", [refine.eval_id]))
    assert got == {"q1": True, "q2": True, "q3": True, "q4": False, "q5": True, "q6": False}
    pred, detail = store.query(
        "SELECT prediction, detail FROM eval_items WHERE eval_id = ? AND item_id = 'q2'",
        [direct.eval_id])[0]
    assert pred == "7"
    item = store.query_dicts(
        "SELECT * FROM eval_items WHERE eval_id = ? AND item_id = 'q2'", [refine.eval_id])[0]
    assert item["prediction"] == "6" and item["response"].startswith("10 - 4 = 6")
    steps = json.loads(item["detail"])["steps"][0]
    assert steps[0]["verdict"] == "incorrect" and steps[0]["feedback"].startswith("Checked.")


def test_progress_draws_each_stage_on_a_terminal(store, tty):
    from selfevo.refine_cli import stage_progress

    with stage_progress(console=tty) as progress:
        evaluate(store, ScriptedModel(fixture_script), items(), benchmark="fixture",
                 modes=["direct", "refine"], progress=progress)
    drawn = tty.file.getvalue()
    for stage in ("answer", "self-feedback", "self-refinement"):
        assert stage in drawn
    assert "6/6" in drawn


def test_stop_on_correct_keeps_accepted_answers(store):
    model = ScriptedModel(fixture_script)
    [refine] = evaluate(store, model, items(), benchmark="fixture", modes=["refine"],
                        stop_on_correct=True)
    assert refine.correct == 4
    refined = [question_of(r) for r in model.requests if stage_of(r) == "refinement"]
    assert refined == [FIXTURE["q2"][0], FIXTURE["q4"][0]]  # only the 'incorrect' ones


def test_self_consistency_majority_vote(store):
    answers = {0: "The answer is 5.", 1: "The answer is 4.", 2: "It is 5.0 apples."}

    def script(stage, req):
        return answers[req.sample_index]

    model = ScriptedModel(script)
    [direct] = evaluate(store, model, [BenchItem("a", "2+3?", "5")], benchmark="sc",
                        self_consistency=3)
    assert direct.correct == 1
    assert {r.sample_index for r in model.requests} == {0, 1, 2}
    assert all(r.params["temperature"] == 0.7 for r in model.requests)
    detail = json.loads(store.query("SELECT detail FROM eval_items")[0][0])
    assert detail["samples"] == ["5", "4", "5"]
    assert majority_vote(["4", "5", "5.0", None]) == "5"
    assert majority_vote(["4", "5"]) == "4"  # ties: first seen
    assert majority_vote([None, None]) is None


def test_failed_requests_are_failures_not_wrong_answers(store):
    """Issue 12, defect 6: nothing answered is an error, and no evaluation is stored."""
    from generation.failures import RequestsFailed

    model = ScriptedModel(lambda stage, req: None)
    with pytest.raises(RequestsFailed, match=r"2 of 2 items \(direct\) failed \(error 2\): boom"):
        evaluate(store, model, items()[:2], benchmark="f")
    assert store.query("SELECT count(*) FROM evals") == [(0,)]
    assert store.query("SELECT status FROM runs WHERE command = 'eval run'") == [("failed",)]


def test_partial_failure_scores_only_the_answered_items(store):
    failing = {("answer", FIXTURE["q1"][0]), ("answer", FIXTURE["q3"][0]),
               ("feedback", FIXTURE["q2"][0])}

    def script(stage: str, req: ChatRequest) -> str | None:
        return None if (stage, question_of(req)) in failing else fixture_script(stage, req)

    direct, refine = evaluate(store, ScriptedModel(script), items(), benchmark="f",
                              modes=["direct", "refine"])
    # direct: q2 q4 q5 q6 answered, q5 right; refine: q2's feedback failed too, q5 right
    assert (direct.n, direct.correct, direct.failed) == (4, 1, 2)
    assert (refine.n, refine.correct, refine.failed) == (3, 1, 3)
    assert direct.failure == "2 of 6 items failed (error 2): boom"
    scored = store.query("SELECT e.mode, list(i.item_id ORDER BY i.item_id) FROM evals e "
                         "JOIN eval_items i USING (eval_id) GROUP BY 1 ORDER BY 1")
    assert scored == [("direct", ["q2", "q4", "q5", "q6"]), ("refine", ["q4", "q5", "q6"])]
    counts = json.loads(store.query("SELECT counts FROM runs WHERE command = 'eval run'")[0][0])
    assert counts["failed_items_direct"] == 2 and counts["failed_items_refine"] == 3


def test_an_empty_answer_is_the_models_answer_and_is_scored(store):
    class Empty(ScriptedModel):
        def generate(self, requests, on_result=None):
            out = [ChatResult(ok=False, error_kind="empty", error="200 with empty content")
                   for _ in requests]
            for i, r in enumerate(out):
                if on_result:
                    on_result(i, r)
            return out

    [direct] = evaluate(store, Empty(fixture_script), items()[:2], benchmark="f")
    assert (direct.n, direct.correct, direct.failed) == (2, 0, 0)


def test_links_registered_model_and_compare(store, tmp_path):
    adapter = tmp_path / "ckpt-r1"
    adapter.mkdir()
    with writing(store) as con:
        con.execute(
            "INSERT INTO models (model_id, base, path, adapter, snapshot_hash, run_id) "
            "VALUES ('h1:model', 'tiny', ?, true, 'h1:snap', 'r0')", [str(adapter)])
    base = ScriptedModel(fixture_script, spec="hf:tiny")
    tuned = ScriptedModel(fixture_script, spec=f"hf:tiny+{adapter}")
    evaluate(store, base, items(), benchmark="fixture", modes=["direct"])
    [s] = evaluate(store, tuned, items(), benchmark="fixture", modes=["direct", "refine"],
                   round=1)[:1]
    assert s.model_id == "h1:model"
    rows = compare_evals(store, "fixture")
    assert [r["model"] for r in rows] == ["hf:tiny", f"hf:tiny+{adapter}"]
    assert rows[0]["model_id"] is None and rows[0]["refine"] is None
    assert rows[1]["snapshot_hash"] == "h1:snap"
    assert (rows[0]["round"], rows[1]["round"]) == (None, 1)
    assert rows[1]["direct"]["accuracy"] == 0.5
    assert rows[1]["refine"]["correct"] == 4
    assert compare_evals(store, "other") == []


def test_load_items_from_file_store_and_presets(store, tmp_path):
    f = tmp_path / "mini.jsonl"
    f.write_text("\n".join(json.dumps({"question": q, "answer": g})
                           for q, g, *_ in FIXTURE.values()) + "\n")
    name, got = load_items(str(f), limit=4)
    assert name == "mini.jsonl" and len(got) == 4
    assert got[1] == BenchItem("mini-1", FIXTURE["q2"][0], "6")
    with writing(store) as con:
        insert_prompts(con, [make_prompt("held out 1", gold_answer="3", split="test"),
                             make_prompt("held out 2", gold_answer="4", split="test"),
                             make_prompt("train one", gold_answer="5", split="train"),
                             make_prompt("unlabelled", split="test")], run_id="r0")
    name, got = load_items("store", store=store, where="split = 'test'")
    assert name == "store:split = 'test'"
    assert sorted(i.question for i in got) == ["held out 1", "held out 2"]
    with pytest.raises(SelfevoError, match="--where"):
        load_items("store", store=store, where="no_such_column = 1")
    with pytest.raises(SelfevoError, match="not found"):
        load_items("gsm8k", path=str(tmp_path / "missing.jsonl"))
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"question": "a?", "answer": "1", "meta": {"id": "x"}}\n'
                   '{"question": "b?", "answer": "2", "meta": {"id": "x"}}\n')
    with pytest.raises(SelfevoError, match="'x' appears twice"):
        load_items(str(dup))


def test_gsm8k_and_svamp_presets():
    from conftest import shared_data

    name, got = load_items("gsm8k", path=str(shared_data("gsm8k", "test.jsonl")), limit=3)
    assert name == "gsm8k" and len(got) == 3 and got[0].gold == "18"
    name, got = load_items("svamp", path=str(shared_data("svamp", "SVAMP.json")), limit=2)
    assert name == "svamp" and got[0].item_id == "chal-1" and got[0].gold == "51"


def test_bad_mode_and_empty_benchmark(store):
    with pytest.raises(SelfevoError, match="mode"):
        evaluate(store, ScriptedModel(fixture_script), items(), benchmark="x", modes=["best"])
    with pytest.raises(SelfevoError, match="no items"):
        evaluate(store, ScriptedModel(fixture_script), [], benchmark="x")


def test_compare_cli_on_empty_and_filled_store(cli, db):
    with Store.open(db) as s:
        pass
    assert "no evaluations yet" in cli("eval", "compare", "--db", db).output
    with Store.open(db) as s:
        evaluate(s, ScriptedModel(fixture_script), items(), benchmark="fixture",
                 modes=["direct", "refine"])
    out = cli("eval", "compare", "--db", db, "--bench", "fixture").output
    assert "50.0%" in out and "66.7%" in out and "+16.7" in out and "[30.0, 90.3]" in out


def test_help_has_examples(cli):
    for args in (["eval", "--help"], ["eval", "run", "--help"], ["eval", "compare", "--help"]):
        assert "Example:" in cli(*args).output


# -- the CLI against a real local OpenAI-compatible server ------------------------------------
def _needs_backends() -> None:
    import generation.backends as backends

    if not hasattr(backends, "load_backend"):
        pytest.skip("generation.backends.load_backend is not available in this tree yet")


def fixture_server():
    """A local OpenAI-compatible server answering FIXTURE's scripted predictions."""
    from openai_server import Behaviour, OpenAIServer

    def handler(body, n):
        req = ChatRequest(messages=body["messages"], sample_index=0)
        return Behaviour(content=fixture_script(stage_of(req), req))

    return OpenAIServer(handler=handler)


@both_stores
def test_eval_run_cli_hand_count_and_cache(cli, db, tmp_path, monkeypatch):
    _needs_backends()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-secret")
    f = tmp_path / "fixture.jsonl"
    f.write_text("\n".join(json.dumps({"question": q, "answer": g})
                           for q, g, *_ in FIXTURE.values()) + "\n")
    with fixture_server() as srv:
        args = ["eval", "run", "--model", f"openai:test-model@{srv.base_url}", "--bench",
                str(f), "--mode", "both", "--db", db]
        out = cli(*args).output
        assert "3 / 6" in out and "4 / 6" in out
        first = len(srv.chat_requests())
        assert first == 18  # 6 answers, 6 feedbacks, 6 refinements
        cli(*args)
        resent = len(srv.chat_requests()) - first
    with Store.open_readonly(db) as s:
        purposes = dict(s.query("SELECT purpose, count(*) FROM calls GROUP BY 1"))
        assert purposes == {"answer": 6, "self-feedback": 6, "self-refinement": 6}
        linked = s.query("SELECT count(*) FROM eval_items i, calls c WHERE c.call_id ="
                         " json_extract_string(i.detail, '$.answer_call_ids[0]')")[0][0]
        assert linked == 24  # every item names the call that answered it
        rows = s.query("SELECT mode, n, correct FROM evals ORDER BY run_id, mode")
        assert rows == [("direct", 6, 3), ("refine", 6, 4)] * 2
        calls = s.query("SELECT count(*), count(*) FILTER (WHERE status = 'ok') FROM calls")[0]
        items = s.query("SELECT count(*) FROM eval_items")[0][0]
    assert items == 24
    # the call ledger: every request stored once, a rerun answers from it and sends nothing
    assert calls == (18, 18) and resent == 0


def test_eval_run_cli_on_store_prompts(cli, db, monkeypatch):
    _needs_backends()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-secret")
    with Store.open(db) as s, writing(s) as con:
        insert_prompts(con, [make_prompt(v[0], gold_answer=v[1], split="test")
                             for v in FIXTURE.values()]
                       + [make_prompt("not held out", gold_answer="1", split="train")], "r0")
    with fixture_server() as srv:
        cli("eval", "run", "--model", f"openai:test-model@{srv.base_url}", "--bench", "store",
            "--where", "split = 'test'", "--limit", "6", "--db", db)
    with Store.open_readonly(db) as s:
        assert s.query("SELECT benchmark, n, correct FROM evals") == [
            ("store:split = 'test'", 6, 3)]


def test_eval_run_cli_user_errors(cli, db, tmp_path):
    res = cli("eval", "run", "--model", "openai:x", "--bench", str(tmp_path / "none.jsonl"),
              "--db", db, exit_code=1)
    assert "not found" in res.output and "Traceback" not in res.output


@pytest.mark.slow
def test_eval_run_with_a_tiny_hf_model_links_the_checkpoint(cli, db, tiny_model_dir, tmp_path):
    """A real in-process model end to end: rows written, accuracy = count of correct items."""
    f = tmp_path / "three.jsonl"
    f.write_text("\n".join(json.dumps({"question": q, "answer": g})
                           for q, g, *_ in list(FIXTURE.values())[:3]) + "\n")
    with Store.open(db) as s, writing(s) as con:
        con.execute("INSERT INTO models (model_id, base, path, adapter, snapshot_hash, run_id)"
                    " VALUES ('h1:tiny', 'tiny', ?, false, 'h1:snap', 'r0')",
                    [str(tiny_model_dir)])
    cli("eval", "run", "--model", f"hf:{tiny_model_dir}", "--bench", str(f), "--mode", "both",
        "--max-tokens", "8", "--db", db)
    with Store.open_readonly(db) as s:
        evals = s.query_dicts("SELECT * FROM evals ORDER BY mode")
        assert [e["mode"] for e in evals] == ["direct", "refine"]
        assert all(e["model_id"] == "h1:tiny" and e["n"] == 3 for e in evals)
        for e in evals:
            k = s.query("SELECT count(*) FILTER (WHERE correct) FROM eval_items WHERE eval_id = ?",
                        [e["eval_id"]])[0][0]
            assert e["correct"] == k and e["accuracy"] == k / 3
        assert s.query("SELECT count(*) FROM calls WHERE status = 'ok'")[0][0] == 9
