"""Inference-time self-refinement: answer, criticise, refine — with the training layout.

Each step asks the model with exactly the turns of :mod:`schemas.conversation` (the layout the
meta-skill trainer teaches), so what the student learned is what it is asked::

    user p → assistant r                                   (the answer; step 0)
    user p, assistant r, user FEEDBACK_INSTRUCTION → f     (self-feedback, ends "Verdict: …")
    … assistant f, user REFINE_INSTRUCTION → r̂             (self-refinement)

Step k > 1 repeats the feedback/refinement pair with r̂ of step k-1 in the place of r: every
request is a record-shaped conversation the model has seen in training. With
``stop_on_correct`` a question stops as soon as its self-feedback says ``correct`` (the
current answer is kept and no refinement is requested).

Requests are batched across questions (one ``generate`` call per stage), and go through the
call ledger when a store is given, so a rerun sends nothing already answered.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from generation.backends.base import Backend, ChatRequest, ChatResult
from schemas.conversation import CONVERSATION_VERSION, record_messages

if TYPE_CHECKING:
    from corpus.store import Store

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

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (eval_items.detail, ``--json`` output)."""
        return asdict(self)


# generate(requests, purpose, template hash) -> [(result, call_id)]: ledger-backed or plain.
Generate = Callable[[list[ChatRequest], str, str | None], list[tuple[ChatResult, str | None]]]


@dataclass(frozen=True)
class RefinePrompts:
    """How each stage's request is built, from a template set (``curation/templates``).

    ``response`` asks for the answer (default set: a system line asking for "The answer is
    N", which answer extraction relies on); ``self_feedback`` and ``self_refinement`` render
    the meta-skill turns of :mod:`schemas.conversation` verbatim, so the student is asked
    exactly what it was trained on. ``plain_answer`` asks the bare question instead (the
    layout's own first turn), e.g. for a student trained on ``p → r̂``.
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


def chat_messages(
    question: str, response: str | None = None, feedback: str | None = None
) -> list[dict[str, str]]:
    """The meta-skill layout's request of one stage, straight from :mod:`schemas.conversation`.

    ``chat_messages(p)`` is the bare question; ``chat_messages(p, r)`` asks for self-feedback;
    ``chat_messages(p, r, f)`` for the refinement. The templates must render exactly these
    (tested), so this is the reference the default template set is checked against.
    """
    if response is None:
        return [{"role": "user", "content": question}]
    # Ask record_messages for one more turn than we need and drop it, so the request is
    # always exactly a prefix of the training layout (instructions included).
    if feedback is None:
        msgs = record_messages(kind="self", prompt=question, response=response, feedback="",
                               refinement=None)
    else:
        msgs = record_messages(kind="self", prompt=question, response=response,
                               feedback=feedback, refinement="")
    return [{"role": m["role"], "content": m["content"]} for m in msgs[:-1]]


# progress(stage, advance, total): called with advance=0 when a stage starts, 1 per result.
Progress = Callable[[str, int, int], None]


def ledger_generate(
    backend: Backend, store: Store | None = None, run_id: str | None = None,
    progress: Progress | None = None,
) -> Generate:
    """A ``Generate`` that writes every call to the store's ledger when ``store`` is given.

    Without a store (or when the ledger is unavailable) requests go straight to the backend
    and call ids are None. ``progress`` hears about every finished request.
    """
    ledger = _ledger(store, run_id, backend)

    def generate(requests: list[ChatRequest], purpose: str, template: str | None
                 ) -> list[tuple[ChatResult, str | None]]:
        if not requests:
            return []
        total = len(requests)
        if progress:
            progress(purpose, 0, total)

        def on_result(_i: int, _res: ChatResult) -> None:
            if progress:
                progress(purpose, 1, total)

        if ledger is not None:
            return ledger(requests, purpose, template, on_result)
        return [(r, None) for r in backend.generate(requests, on_result)]

    return generate


def _ledger(store: Store | None, run_id: str | None, backend: Backend) -> Any:
    """``ledger(requests, purpose, template, on_result)`` through curation's call ledger.

    Each stage's batch runs under its own short-lived :class:`generation.ledger.Ledger`, so its
    writer thread has committed every call before the next stage (or an eval's result rows)
    opens the store. None without a store: calls go straight to the backend.
    """
    if store is None or run_id is None:
        return None
    from generation.ledger import Call, Ledger

    def run(requests: list[ChatRequest], purpose: str, template: str | None,
            on_result: Callable[[int, ChatResult], None]) -> list[tuple[ChatResult, str | None]]:
        def on_outcome(i: int, _o: Any) -> None:
            on_result(i, None)  # type: ignore[arg-type]  # progress only counts

        with Ledger(store, run_id) as ledger:
            outcomes = ledger.complete(backend, [Call(r, purpose, template) for r in requests],
                                       on_outcome)
        return [(ChatResult(ok=o.ok, text=o.text, finish_reason=o.finish_reason,
                            prompt_tokens=o.prompt_tokens, completion_tokens=o.completion_tokens,
                            cost=o.cost, error_kind=o.error_kind, error=o.error), o.call_id)
                for o in outcomes]

    return run


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
) -> list[RefineResult]:
    """Answer each question, then ``steps`` rounds of self-feedback and self-refinement.

    ``answers`` skips step 0 where given (e.g. to refine existing responses). ``params`` are
    the generation parameters of every request (default greedy, 512 new tokens);
    ``sample_indices`` distinguishes samples of the same question (self-consistency).
    ``prompts`` picks the template set (default: ``default``). Calls go to the store's
    ledger when ``store`` and ``run_id`` are given; ``progress(stage, advance, total)`` hears
    about each finished request (see :func:`rich_progress`).
    """
    if steps < 0:
        raise ValueError("steps must be >= 0")
    gen = generate or ledger_generate(backend, store, run_id, progress)
    p = _params(params)
    tp = prompts or RefinePrompts()
    hashes = tp.hashes()
    idx = list(sample_indices) if sample_indices is not None else [0] * len(questions)
    results = [RefineResult(question=q, answer=None, sample_index=i) for q, i in zip(
        questions, idx, strict=True)]

    # Step 0: the answer (only for questions without a given one).
    todo = [i for i in range(len(results)) if answers is None or answers[i] is None]
    if answers is not None:
        for i, a in enumerate(answers):
            results[i].answer = a
    out = gen([ChatRequest(tp.answer(results[i].question), p, results[i].sample_index)
               for i in todo], "answer", hashes["answer"])
    for i, (res, call_id) in zip(todo, out, strict=True):
        results[i].answer_call_id = call_id
        if res.ok and res.text is not None:
            results[i].answer = res.text
        else:
            results[i].stopped, results[i].error = "failed", res.error or "no answer"
    current = {i: results[i].answer for i in range(len(results)) if results[i].stopped != "failed"}
    for i in current:
        results[i].final = current[i]

    for _ in range(steps):
        active = [i for i in current if results[i].stopped == "steps"]
        if not active:
            break
        fb = gen([ChatRequest(tp.feedback(results[i].question, current[i]), p,
                              results[i].sample_index) for i in active], "self-feedback",
                 hashes["self_feedback"])
        to_refine = []
        for i, (res, call_id) in zip(active, fb, strict=True):
            step = RefineStep(feedback=None, verdict=None, feedback_call_id=call_id)
            results[i].steps.append(step)
            if not res.ok or res.text is None:
                step.error = res.error or "no feedback"
                results[i].stopped, results[i].error = "failed", step.error
                continue
            step.feedback = res.text
            step.verdict, step.verdict_error = _verdict(res.text)
            if stop_on_correct and step.verdict == "correct":
                results[i].stopped = "correct"
                continue
            to_refine.append(i)
        rf = gen([ChatRequest(tp.refinement(results[i].question, current[i],
                                            results[i].steps[-1].feedback), p,
                              results[i].sample_index) for i in to_refine], "self-refinement",
                 hashes["self_refinement"])
        for i, (res, call_id) in zip(to_refine, rf, strict=True):
            step = results[i].steps[-1]
            step.refinement_call_id = call_id
            if not res.ok or res.text is None:
                step.error = res.error or "no refinement"
                results[i].stopped, results[i].error = "failed", step.error
                continue
            step.refinement = res.text
            current[i] = res.text
            results[i].final = res.text
    return results


@contextlib.contextmanager
def rich_progress(enabled: bool = True) -> Iterator[Progress | None]:
    """A rich progress display with one bar per stage (answer, self-feedback, …)."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bars

    # stderr: stdout stays clean for results (``--json``)
    bars = Bars(TextColumn("{task.description:>16}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=Console(stderr=True))
    tasks: dict[str, Any] = {}

    def progress(stage: str, advance: int, total: int) -> None:
        if stage not in tasks or advance == 0:
            if stage in tasks:  # a later step of the same stage: a fresh bar
                bars.update(tasks[stage], visible=False)
            tasks[stage] = bars.add_task(stage, total=total)
        if advance:
            bars.advance(tasks[stage], advance)

    with bars:
        yield progress


def load_model(spec: str) -> Backend:
    """The backend of a model spec (``hf:…``, ``openai:…``), via curation's loader."""
    from generation.backends import load_backend

    return load_backend(spec)


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
) -> list[RefineResult]:
    """Load ``model``, self-refine ``questions``; with ``db`` the calls land in its ledger."""
    prompts = prompts or RefinePrompts()
    kwargs: dict[str, Any] = {"steps": steps, "stop_on_correct": stop_on_correct,
                              "params": params, "prompts": prompts, "progress": progress}
    backend = load_model(model)
    try:
        if db is None:
            return self_refine(backend, questions, **kwargs)
        from corpus.store import Store

        config = {"model": model, "steps": steps, "stop_on_correct": stop_on_correct,
                  "params": _params(params), "n_questions": len(questions),
                  "template_set": prompts.template_set, "templates": prompts.hashes()}
        with Store.open(db, command="refine") as store, store.run("refine", config) as run:
            results = self_refine(backend, questions, store=store, run_id=run.run_id, **kwargs)
            run.add("questions", len(results))
            return results
    finally:
        backend.close()


def render_results(results: Sequence[RefineResult]) -> None:
    """Print each question's answer, feedback steps and final answer with rich panels."""
    from rich.console import Console
    from rich.panel import Panel

    console = Console()
    for r in results:
        console.rule(f"[bold]{_short(r.question)}")
        console.print(Panel(_text(r.answer, r.error), title="answer"))
        for k, s in enumerate(r.steps, 1):
            colour = {"correct": "green", "incorrect": "yellow"}.get(s.verdict or "", "red")
            console.print(Panel(_text(s.feedback, s.error),
                                title=f"feedback {k} — verdict [{colour}]{s.verdict}[/]"))
            if s.refinement is not None:
                console.print(Panel(_text(s.refinement, None), title=f"refined answer {k}"))
        console.print(f"[bold]stopped:[/] {r.stopped}")


def _text(text: str | None, error: str | None) -> Any:
    """Model output as literal text (never parsed as rich markup); the error when missing."""
    from rich.text import Text

    return Text(text) if text is not None else Text(f"failed: {error}", style="red")


def _short(text: str, n: int = 70) -> str:
    from rich.markup import escape

    one = " ".join(text.split())
    return escape(one if len(one) <= n else one[: n - 1] + "…")


def _verdict(feedback: str) -> tuple[str | None, str | None]:
    """(verdict, parse error) of a feedback text via curation's tolerant parser."""
    from curation.verdicts import parse_verdict

    parsed = parse_verdict(feedback)
    if isinstance(parsed, tuple):
        return parsed[0], parsed[1] if len(parsed) > 1 else None
    verdict = getattr(parsed, "verdict", parsed)
    error = getattr(parsed, "error", None) or getattr(parsed, "reason", None)
    return verdict, (error if verdict is None else None)


__all__ = [
    "CONVERSATION_VERSION", "RefinePrompts", "RefineResult", "RefineStep", "chat_messages",
    "ledger_generate",
    "self_refine",
]
