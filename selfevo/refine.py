"""Inference-time self-refinement: answer, criticise, refine — with the training layout.

Each step asks the model with exactly the turns of :mod:`schemas.conversation` (the layout the
meta-skill trainer teaches), so what the student learned is what it is asked::

    user p → assistant r                                   (the answer; step 0)
    user p, assistant r, user FEEDBACK_INSTRUCTION → f     (self-feedback, ends "Verdict: …")
    … assistant f, user REFINE_INSTRUCTION → r̂             (self-refinement)

Step k > 1 repeats the feedback/refinement pair with r̂ of step k-1 in the place of r: every
request is a record-shaped conversation the model has seen in training. With
``stop_on_correct`` a question stops as soon as its self-feedback says ``correct`` (the
current answer is kept and no refinement is requested). With ``judge`` the model finally
gives feedback on its final answer too (the same feedback request with r̂ in the place of r):
that verdict on r̂ is what SELF's self-evolution filter keeps records by.

Requests are batched across questions (one ``generate`` call per stage), and go through the
call ledger when a store is given (:func:`generation.ledger.ledger_generate`), so a rerun
sends nothing already answered. The command and its display live in
:mod:`selfevo.refine_cli`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from generation.backends.base import Backend, ChatRequest, ChatResult

if TYPE_CHECKING:
    from corpus.store import Store
    from generation.batches import BatchOptions
    from generation.failures import Failures
    from generation.ledger import Generate, Progress

DEFAULT_PARAMS: dict[str, Any] = {"temperature": 0.0, "max_tokens": 512}


@dataclass
class RefineStep:
    """One self-feedback (and, unless stopped, self-refinement) of one answer."""

    feedback: str | None
    verdict: str | None  # correct | incorrect | None when unparsed / failed
    verdict_error: str | None = None
    refinement: str | None = None
    feedback_call_id: str | None = None
    refinement_call_id: str | None = None
    error: str | None = None


@dataclass
class RefineResult:
    """A question's answer, its self-feedback/refinement steps and the final answer."""

    question: str
    answer: str | None  # the initial answer r
    steps: list[RefineStep] = field(default_factory=list)
    final: str | None = None  # last refinement, or the answer the feedback accepted
    stopped: str = "steps"  # steps | correct | failed
    answer_call_id: str | None = None
    error: str | None = None
    sample_index: int = 0
    judgement: RefineStep | None = None  # with ``judge``: the feedback on the final answer
    error_kind: str | None = None  # of the failed request (connection, timeout, auth, empty …)

    @property
    def request_failed(self) -> bool:
        """Whether a request failed (transport, not the model's own empty answer): the result
        is then no answer of the model's (:mod:`generation.failures`)."""
        from generation.failures import is_request_failure

        return self.stopped == "failed" and is_request_failure(False, self.error_kind)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (eval_items.detail, ``--json`` output)."""
        return asdict(self)


@dataclass(frozen=True)
class RefinePrompts:
    """How each stage's request is built, from a template set (``curation/templates``).

    In the default set all three render the turns of :mod:`schemas.conversation` verbatim:
    ``response`` the question alone (the first turn of every training layout),
    ``self_feedback`` and ``self_refinement`` the meta-skill turns, so the student is asked
    exactly what it was trained on. ``plain_answer`` asks the bare question whatever the
    set's ``response`` template says (with the default set the two are the same request).
    """

    template_set: str = "default"
    plain_answer: bool = False

    def _template(self, name: str) -> Any:
        from generation.templates import get_template

        return get_template(name, self.template_set)

    def answer(self, question: str) -> list[dict[str, str]]:
        """The answer request."""
        if self.plain_answer:
            return [{"role": "user", "content": question}]
        return self._template("response").render(question=question)

    def feedback(self, question: str, response: str) -> list[dict[str, str]]:
        """The self-feedback request: p, r, then the feedback instruction."""
        return self._template("self_feedback").render(question=question, response=response)

    def refinement(self, question: str, response: str, feedback: str) -> list[dict[str, str]]:
        """The self-refinement request: p, r, instruction, f, then the refine instruction."""
        return self._template("self_refinement").render(
            question=question, response=response, feedback=feedback)

    def hashes(self) -> dict[str, str | None]:
        """Template hash per stage (stored with calls and in eval configs)."""
        return {
            "answer": None if self.plain_answer else self._template("response").hash,
            "self_feedback": self._template("self_feedback").hash,
            "self_refinement": self._template("self_refinement").hash,
        }


def _params(params: dict[str, Any] | None) -> dict[str, Any]:
    out = dict(DEFAULT_PARAMS)
    out.update(params or {})
    return out


def self_refine(
    backend: Backend,
    questions: Sequence[str],
    *,
    steps: int = 1,
    stop_on_correct: bool = False,
    params: dict[str, Any] | None = None,
    sample_indices: Sequence[int] | None = None,
    answers: Sequence[str | None] | None = None,
    prompts: RefinePrompts | None = None,
    store: Store | None = None,
    run_id: str | None = None,
    progress: Progress | None = None,
    generate: Generate | None = None,
    judge: bool = False,
    batch: BatchOptions | None = None,
) -> list[RefineResult]:
    """Answer each question, then ``steps`` rounds of self-feedback and self-refinement.

    ``answers`` skips step 0 where given (e.g. to refine existing responses). ``params`` are
    the generation parameters of every request (default greedy, 512 new tokens);
    ``sample_indices`` distinguishes samples of the same question (self-consistency).
    ``prompts`` picks the template set (default: ``default``). Calls go to the store's
    ledger when ``store`` and ``run_id`` are given; ``progress(stage, advance, total)`` hears
    about each finished request (advance 0 when a stage starts; see
    :func:`selfevo.refine_cli.stage_progress`). ``generate`` replaces the ledger adapter.
    ``judge`` adds a last self-feedback on each refined final answer (``judgement``; stage
    ``refined-feedback``), for questions that refined without failing.
    ``batch`` sends each stage as batches (``--mode batch|file``; needs the store).
    """
    from generation.ledger import ledger_generate

    if steps < 0:
        raise ValueError("steps must be >= 0")
    tp = prompts or RefinePrompts()
    stages = _Stages(generate or ledger_generate(backend, store, run_id, progress, batch),
                     _params(params), tp, tp.hashes())
    idx = list(sample_indices) if sample_indices is not None else [0] * len(questions)
    results = [RefineResult(question=q, answer=None, sample_index=i) for q, i in zip(
        questions, idx, strict=True)]
    with _answer_lease(backend, questions, store, run_id if generate is None else None):
        stages.answer(results, answers)
        for _ in range(steps):
            active = [r for r in results if r.stopped == "steps"]
            if not active:
                break
            stages.refine(stages.feedback(active, stop_on_correct))
        if judge:
            stages.judge([r for r in results if r.stopped == "steps" and r.steps
                          and r.steps[-1].refinement is not None])
    return results


def _answer_lease(backend: Backend, questions: Sequence[str], store: Store | None,
                  run_id: str | None) -> contextlib.AbstractContextManager[None]:
    """While the ledger of run ``run_id`` sends ``backend`` these questions: on a lake,
    another machine may be asking this model the same ones (an eval, a refine, an evolve
    round), so refuse (StoreBusy) rather than send those calls twice. A file store's job
    lock already keeps every other writer out; without a store nothing is shared."""
    if store is None or run_id is None:
        return contextlib.nullcontext()
    from corpus.joblock import lake_lease

    return lake_lease(store, answer_keys(backend, questions), run_id,
                      f"questions asked of {backend.spec}")


def answer_keys(backend: Backend, questions: Sequence[str]) -> list[str]:
    """Lease keys of ``backend`` answering ``questions``: one per distinct question, with
    the model and endpoint as the ledger keeps them (two servers' models are two)."""
    from schemas.identity import content_id

    model = content_id({"model": backend.spec, "endpoint": backend.endpoint})
    return sorted({f"answer:{model}:{content_id(q)}" for q in questions})


@dataclass
class _Stages:
    """The three requests of self-refinement, each batched over the questions it concerns."""

    gen: Generate
    params: dict[str, Any]
    prompts: RefinePrompts
    hashes: dict[str, str | None]

    def _ask(self, results: list[RefineResult], messages: list[list[dict[str, str]]],
             stage: str, template: str) -> list[tuple[ChatResult, str | None]]:
        return self.gen([ChatRequest(m, self.params, r.sample_index)
                         for r, m in zip(results, messages, strict=True)],
                        stage, self.hashes[template])

    def answer(self, results: list[RefineResult], answers: Sequence[str | None] | None) -> None:
        """Step 0: the answer of each question without a given one."""
        if answers is not None:
            for r, a in zip(results, answers, strict=True):
                r.answer = a
        todo = [r for r in results if r.answer is None]
        out = self._ask(todo, [self.prompts.answer(r.question) for r in todo], "answer", "answer")
        for r, (res, call_id) in zip(todo, out, strict=True):
            r.answer_call_id = call_id
            if res.ok and res.text is not None:
                r.answer = res.text
            else:
                r.stopped, r.error, r.error_kind = "failed", res.error or "no answer", res.error_kind
        for r in results:
            if r.stopped != "failed":
                r.final = r.answer

    def _feedback(self, todo: list[RefineResult], stage: str
                  ) -> list[tuple[RefineStep, str | None]]:
        """Self-feedback on each current answer, as steps (verdict parsed, failures kept),
        each with the error kind of its failed request."""
        from curation.verdicts import parse_verdict

        out = self._ask(todo, [self.prompts.feedback(r.question, r.final) for r in todo],
                        stage, "self_feedback")
        steps = []
        for res, call_id in out:
            step = RefineStep(feedback=None, verdict=None, feedback_call_id=call_id)
            if res.ok and res.text is not None:
                step.feedback = res.text
                step.verdict, step.verdict_error = parse_verdict(res.text)
            else:
                step.error = res.error or "no feedback"
            steps.append((step, res.error_kind))
        return steps

    def feedback(self, active: list[RefineResult], stop_on_correct: bool) -> list[RefineResult]:
        """Self-feedback on each current answer; returns those to refine."""
        to_refine = []
        for r, (step, kind) in zip(active, self._feedback(active, "self-feedback"),
                                   strict=True):
            r.steps.append(step)
            if step.error is not None:
                r.stopped, r.error, r.error_kind = "failed", step.error, kind
            elif stop_on_correct and step.verdict == "correct":
                r.stopped = "correct"
            else:
                to_refine.append(r)
        return to_refine

    def judge(self, todo: list[RefineResult]) -> None:
        """Self-feedback on each final (refined) answer: its ``judgement``."""
        for r, (step, _) in zip(todo, self._feedback(todo, "refined-feedback"), strict=True):
            r.judgement = step

    def refine(self, todo: list[RefineResult]) -> None:
        """Self-refinement of each answer with its latest feedback; it becomes the final."""
        out = self._ask(todo, [self.prompts.refinement(r.question, r.final, r.steps[-1].feedback)
                               for r in todo], "self-refinement", "self_refinement")
        for r, (res, call_id) in zip(todo, out, strict=True):
            step = r.steps[-1]
            step.refinement_call_id = call_id
            if not res.ok or res.text is None:
                step.error = res.error or "no refinement"
                r.stopped, r.error, r.error_kind = "failed", step.error, res.error_kind
                continue
            step.refinement = res.text
            r.final = res.text


def request_failures(results: Sequence[RefineResult]) -> Failures:
    """The results whose requests failed (:mod:`generation.failures`), by kind."""
    from generation.failures import Failures

    failures = Failures()
    for r in results:
        failures.add(not r.request_failed, r.error_kind, r.error)
    return failures


def _check_any_answered(results: Sequence[RefineResult], model: str) -> None:
    from generation.backends.openai_backend import public_spec

    failures = request_failures(results)
    failures.check_any_succeeded("questions", failures.total - failures.failed,
                                 f"Is {public_spec(model)} reachable?")


def refine_and_store(
    model: str,
    questions: Sequence[str],
    *,
    steps: int = 1,
    stop_on_correct: bool = False,
    params: dict[str, Any] | None = None,
    prompts: RefinePrompts | None = None,
    db: str | None = None,
    progress: Progress | None = None,
    batch: BatchOptions | None = None,
) -> list[RefineResult]:
    """Load ``model``, self-refine ``questions``; with ``db`` the calls land in its ledger.

    When every question's requests failed this raises
    :class:`generation.failures.RequestsFailed` (the run row, with ``db``, is ``failed``)."""
    prompts = prompts or RefinePrompts()
    kwargs: dict[str, Any] = {"steps": steps, "stop_on_correct": stop_on_correct,
                              "params": params, "prompts": prompts, "progress": progress,
                              "batch": batch}
    from generation.batches import load_backend_for

    backend = load_backend_for(model, batch)
    try:
        if db is None:
            results = self_refine(backend, questions, **kwargs)
            _check_any_answered(results, model)
            return results
        from corpus.store import Store

        config = {"model": model, "steps": steps, "stop_on_correct": stop_on_correct,
                  "params": _params(params), "n_questions": len(questions),
                  "template_set": prompts.template_set, "templates": prompts.hashes(),
                  "batch": batch.as_config() if batch else None}
        with Store.open(db, command="refine") as store, store.run("refine", config) as run:
            results = self_refine(backend, questions, store=store, run_id=run.run_id, **kwargs)
            run.add("questions", len(results))
            _check_any_answered(results, model)
            return results
    finally:
        backend.close()


__all__ = ["RefinePrompts", "RefineResult", "RefineStep", "refine_and_store", "self_refine"]
