"""Inference-time self-refinement: the request layout, stopping, multi-step and failures."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import pytest

from generation.backends.base import Backend, ChatRequest, ChatResult
from schemas.conversation import FEEDBACK_INSTRUCTION, REFINE_INSTRUCTION, record_messages
from selfevo.refine import RefinePrompts, self_refine


def chat_messages(question: str, response: str | None = None,
                  feedback: str | None = None) -> list[dict[str, str]]:
    """The reference the templates are checked against: a stage's request in the layout.

    Straight from :mod:`schemas.conversation`: ask ``record_messages`` for one more turn than
    needed and drop it, so the request is exactly a prefix of the training layout.
    """
    if response is None:
        return [{"role": "user", "content": question}]
    msgs = record_messages(kind="self", prompt=question, response=response,
                           feedback="" if feedback is None else feedback,
                           refinement=None if feedback is None else "")
    return [{"role": m["role"], "content": m["content"]} for m in msgs[:-1]]


def stage_of(req: ChatRequest) -> str:
    """Which stage a request asks for, read off its last instruction."""
    last = req.messages[-1]["content"]
    return {FEEDBACK_INSTRUCTION: "feedback", REFINE_INSTRUCTION: "refinement"}.get(last, "answer")


def question_of(req: ChatRequest) -> str:
    """The question: the first user turn."""
    return next(m["content"] for m in req.messages if m["role"] == "user")


class ScriptedModel(Backend):
    """A deterministic test double of a MODEL: ``script(stage, request) -> text | None``.

    ``stage`` is read off the request layout: 1 message = answer, 3 = feedback, 5 = refinement.
    None plays a failed generation. Every request received is kept for assertions.
    """

    def __init__(self, script: Callable[[str, ChatRequest], str | None], spec: str = "test:model"):
        self.script = script
        self.spec = spec
        self.requests: list[ChatRequest] = []

    def generate(self, requests: Sequence[ChatRequest], on_result=None) -> list[ChatResult]:
        out = []
        for i, req in enumerate(requests):
            self.requests.append(req)
            stage = stage_of(req)
            text = self.script(stage, req)
            res = (ChatResult(ok=True, text=text, finish_reason="stop", prompt_tokens=10,
                              completion_tokens=5) if text is not None
                   else ChatResult(ok=False, error_kind="server", error="scripted failure"))
            if on_result:
                on_result(i, res)
            out.append(res)
        return out


def test_requests_are_prefixes_of_the_training_layout():
    msgs = record_messages(kind="self", prompt="Q?", response="R", feedback="F",
                           refinement="R2")
    plain = [{"role": m["role"], "content": m["content"]} for m in msgs]
    assert chat_messages("Q?") == plain[:1]
    assert chat_messages("Q?", "R") == plain[:3]
    assert chat_messages("Q?", "R")[-1]["content"] == FEEDBACK_INSTRUCTION
    assert chat_messages("Q?", "R", "F") == plain[:5]
    assert chat_messages("Q?", "R", "F")[-1]["content"] == REFINE_INSTRUCTION


def test_default_templates_render_the_training_layout():
    tp = RefinePrompts()
    assert tp.feedback("Q?", "R") == chat_messages("Q?", "R")
    assert tp.refinement("Q?", "R", "F") == chat_messages("Q?", "R", "F")
    # the answer request is the training layout's first turn, nothing more (no system line)
    assert tp.answer("Q?") == chat_messages("Q?")
    assert RefinePrompts(plain_answer=True).answer("Q?") == chat_messages("Q?")
    hashes = tp.hashes()
    assert all(h and h.startswith("h1:") for h in hashes.values())
    assert RefinePrompts(plain_answer=True).hashes()["answer"] is None


def test_stop_on_correct_skips_the_refinement():
    def script(stage, req):
        return {"answer": "2 + 2 = 4. The answer is 4.",
                "feedback": "All steps are right.\nVerdict: correct",
                "refinement": "should never be asked"}[stage]

    model = ScriptedModel(script)
    [res] = self_refine(model, ["What is 2 + 2?"], steps=3, stop_on_correct=True)
    assert res.stopped == "correct"
    assert [stage_of(r) for r in model.requests] == ["answer", "feedback"]  # no refinement
    assert res.final == res.answer == "2 + 2 = 4. The answer is 4."
    assert res.steps[0].verdict == "correct" and res.steps[0].refinement is None


def test_without_stop_every_step_refines_and_feeds_the_next():
    calls: list[str] = []

    def script(stage, req):
        calls.append(stage)
        if stage == "answer":
            return "The answer is 5."
        if stage == "feedback":
            # the answer under review is the assistant turn; step 2 reviews refinement 1
            return f"Reviewed: {req.messages[1]['content']}\nVerdict: incorrect"
        return f"Refined #{calls.count('refinement')}. The answer is 6."

    model = ScriptedModel(script)
    [res] = self_refine(model, ["Q"], steps=2)
    assert calls == ["answer", "feedback", "refinement", "feedback", "refinement"]
    assert res.stopped == "steps" and len(res.steps) == 2
    assert res.steps[1].feedback.startswith("Reviewed: Refined #1.")
    assert res.final == "Refined #2. The answer is 6."
    assert all(s.verdict == "incorrect" for s in res.steps)


def test_correct_verdict_without_stop_flag_still_refines():
    model = ScriptedModel(lambda stage, req: {"answer": "A", "feedback": "fine\nVerdict: correct",
                                              "refinement": "B"}[stage])
    [res] = self_refine(model, ["Q"], steps=1, stop_on_correct=False)
    assert res.final == "B" and res.steps[0].verdict == "correct"


def test_batches_questions_and_stops_each_on_its_own_verdict():
    def script(stage, req):
        q = question_of(req)
        if stage == "answer":
            return f"answer to {q}"
        if stage == "feedback":
            return "Verdict: correct" if q == "easy" else "wrong.\nVerdict: incorrect"
        return f"refined {q}"

    model = ScriptedModel(script)
    results = self_refine(model, ["easy", "hard"], steps=1, stop_on_correct=True)
    assert [r.stopped for r in results] == ["correct", "steps"]
    assert [r.final for r in results] == ["answer to easy", "refined hard"]
    assert sum(stage_of(r) == "refinement" for r in model.requests) == 1


def test_unparseable_verdict_and_failed_call_are_recorded_not_raised():
    def script(stage, req):
        q = question_of(req)
        if stage == "answer":
            return None if q == "broken" else "The answer is 1."
        return "I am not sure." if stage == "feedback" else "The answer is 2."

    model = ScriptedModel(script)
    ok, broken = self_refine(model, ["fine", "broken"], steps=1, stop_on_correct=True)
    assert broken.stopped == "failed" and broken.error == "scripted failure"
    assert broken.final is None and broken.steps == []
    assert ok.steps[0].verdict is None and ok.steps[0].verdict_error
    assert ok.final == "The answer is 2."  # no 'correct' verdict: it refines


def test_sample_indices_and_params_reach_the_requests():
    model = ScriptedModel(lambda stage, req: "x")
    self_refine(model, ["Q", "Q"], steps=0, sample_indices=[0, 1],
                params={"temperature": 0.7})
    assert [r.sample_index for r in model.requests] == [0, 1]
    assert all(r.params["temperature"] == 0.7 and r.params["max_tokens"] == 512
               for r in model.requests)


def test_negative_steps_rejected():
    with pytest.raises(ValueError):
        self_refine(ScriptedModel(lambda s, r: "x"), ["Q"], steps=-1)


def test_refine_cli_shows_answer_feedback_and_refinement(cli, db, monkeypatch, tmp_path):
    import generation.backends as backends

    if not hasattr(backends, "load_backend"):
        pytest.skip("generation.backends.load_backend is not available in this tree yet")
    from openai_server import Behaviour, OpenAIServer

    def handler(body, n):
        req = ChatRequest(messages=body["messages"])
        return Behaviour(content={"answer": "3 + 4 = 8. The answer is 8.",
                                  "feedback": "3 + 4 is 7, not 8.\nVerdict: incorrect",
                                  "refinement": "3 + 4 = 7. The answer is 7."}[stage_of(req)])

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-secret")
    with OpenAIServer(handler=handler) as srv:
        out = cli("refine", "--model", f"openai:test-model@{srv.base_url}", "--db", db,
                  "--steps", "1", "Tom has 3 apples and buys 4. How many?").output
        assert len(srv.chat_requests()) == 3
        questions = tmp_path / "q.jsonl"
        questions.write_text('{"question": "Q one"}\nQ two\n')
        js = cli("refine", "--model", f"openai:test-model@{srv.base_url}", "--input",
                 str(questions), "--json").stdout  # the progress bars go to stderr
    assert "The answer is 8." in out and "Verdict: incorrect" in out
    assert "The answer is 7." in out and "incorrect" in out
    lines = [json.loads(x) for x in js.splitlines() if x.strip()]
    assert [x["question"] for x in lines] == ["Q one", "Q two"]
    assert lines[0]["final"] == "3 + 4 = 7. The answer is 7."
    from corpus.store import Store

    with Store.open_readonly(db) as s:
        assert s.query("SELECT command, status FROM runs") == [("refine", "ok")]


def test_refine_cli_needs_one_question_source(cli):
    res = cli("refine", "--model", "openai:x", exit_code=1)
    assert "QUESTION" in res.output
    assert "Example:" in cli("refine", "--help").output


def test_progress_hears_every_request_per_stage():
    events: list[tuple[str, int, int]] = []
    model = ScriptedModel(lambda stage, req: {"answer": "A", "feedback": "Verdict: incorrect",
                                              "refinement": "B"}[stage])
    self_refine(model, ["Q1", "Q2"], steps=2, progress=lambda *e: events.append(e))
    starts = [(s, t) for s, a, t in events if a == 0]
    assert starts == [("answer", 2), ("self-feedback", 2), ("self-refinement", 2),
                      ("self-feedback", 2), ("self-refinement", 2)]
    assert sum(a for _, a, _ in events) == 10 == len(model.requests)


def test_stage_progress_draws_one_task_per_stage_and_step():
    import io

    from rich.console import Console

    from selfevo.refine_cli import stage_progress

    tty = Console(file=io.StringIO(), force_terminal=True, width=120)
    model = ScriptedModel(lambda stage, req: {"answer": "A", "feedback": "Verdict: incorrect",
                                              "refinement": "B"}[stage])
    with stage_progress(console=tty) as progress:
        self_refine(model, ["Q1", "Q2", "Q3"], steps=2, progress=progress)
    drawn = tty.file.getvalue()
    for label in ("answer", "self-feedback", "self-refinement", "self-feedback (step 2)",
                  "self-refinement (step 2)"):
        assert label in drawn
    last_frame = drawn[drawn.rindex("answer"):]
    assert last_frame.count("3/3") == 5  # every task full at the end
    with stage_progress(enabled=False) as nothing:
        assert nothing is None


def test_failed_refinement_stops_the_question_and_keeps_the_last_answer():
    def script(stage, req):
        return {"answer": "The answer is 1.", "feedback": "wrong\nVerdict: incorrect",
                "refinement": None}[stage]

    model = ScriptedModel(script)
    [res] = self_refine(model, ["Q"], steps=3)
    assert res.stopped == "failed" and res.error == "scripted failure"
    assert res.final == "The answer is 1." and len(res.steps) == 1
    assert res.steps[0].refinement is None and res.steps[0].error == "scripted failure"
    assert [stage_of(r) for r in model.requests] == ["answer", "feedback", "refinement"]


@pytest.mark.slow
def test_refine_with_smollm2(cli, db):
    """The real SmolLM2-135M-Instruct answers, criticises and refines one question."""
    from generation.backends import smollm2

    try:
        smollm2.gguf_path()
    except Exception as exc:  # noqa: BLE001 - any reason the weights are missing
        pytest.skip(f"SmolLM2 weights unavailable: {exc}")
    out = cli("refine", "--model", "hf:smollm2-135m", "--max-tokens", "64", "--db", db,
              "Tom has 3 apples and buys 4 more. How many apples does he have?").output
    assert "answer" in out and "feedback 1" in out and "stopped:" in out
    from corpus.store import Store

    with Store.open_readonly(db) as s:
        assert s.query("SELECT count(*) FROM calls WHERE status = 'ok'")[0][0] >= 2


def test_given_answers_are_refined_without_asking_again():
    model = ScriptedModel(lambda stage, req: {"answer": "new", "feedback": "Verdict: incorrect",
                                              "refinement": "fixed"}[stage])
    a, b = self_refine(model, ["Q1", "Q2"], steps=1, answers=["existing", None])
    assert (a.answer, b.answer) == ("existing", "new")
    assert [stage_of(r) for r in model.requests].count("answer") == 1
    assert model.requests[1].messages[1]["content"] == "existing"  # feedback on the given one
    assert a.final == b.final == "fixed"


def test_judge_gives_feedback_on_the_refined_answer_in_the_feedback_layout():
    """judge: one more self-feedback, on r̂ in the place of r (the request the trainer's
    feedback turn was trained on); not for a question whose refinement failed or that
    stopped on a correct verdict (its final answer is unrefined)."""
    def script(stage, req):
        q = question_of(req)
        if stage == "answer":
            return f"first answer to {q}"
        if stage == "feedback":
            judged = req.messages[1]["content"]
            if q == "stops" and judged.startswith("first"):
                return "Verdict: correct"
            return f"on {judged}\nVerdict: " + ("correct" if judged.startswith("refined")
                                                else "incorrect")
        return None if q == "breaks" else f"refined {q}. The answer is 3."

    model = ScriptedModel(script)
    events: list[tuple[str, int, int]] = []
    ok, breaks, stops = self_refine(model, ["ok", "breaks", "stops"], steps=1,
                                    stop_on_correct=True, judge=True,
                                    progress=lambda *e: events.append(e))
    assert ok.steps[0].verdict == "incorrect" and ok.final == "refined ok. The answer is 3."
    assert ok.judgement is not None and ok.judgement.verdict == "correct"
    assert ok.judgement.feedback == "on refined ok. The answer is 3.\nVerdict: correct"
    judged = model.requests[-1]
    assert judged.messages == chat_messages("ok", "refined ok. The answer is 3.")
    assert breaks.judgement is None and breaks.stopped == "failed"
    assert stops.judgement is None and stops.stopped == "correct"
    assert [(s, t) for s, a, t in events if a == 0][-1] == ("refined-feedback", 1)
    assert ok.to_dict()["judgement"]["verdict"] == "correct"
    without = ScriptedModel(script)
    [plain] = self_refine(without, ["ok"], steps=1)
    assert plain.judgement is None and len(without.requests) == 3
