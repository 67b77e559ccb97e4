"""``selfevo refine``: answer, self-feedback and self-refinement of questions at inference time.

Also the display of self-refinement: :func:`stage_progress` (one progress task per stage,
for ``refine`` and ``eval run``) and :func:`render_results`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from generation.batches.options import BatchOptions, mode_options
from selfevo import SelfevoError

if TYPE_CHECKING:
    from generation.ledger import Progress
    from selfevo.refine import RefineResult


def read_questions(question: str | None, input_file: str | None) -> list[str]:
    """Questions from the argument or a file (JSONL with ``question``/``text``, or plain lines)."""
    if bool(question) == bool(input_file):
        raise SelfevoError("give either a QUESTION argument or --input FILE (not both)")
    if question:
        return [question]
    out = []
    for n, line in enumerate(Path(input_file).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SelfevoError(f"{input_file}:{n}: invalid JSON ({exc.msg})") from None
            text = obj.get("question") or obj.get("text") or obj.get("prompt")
            if not text:
                raise SelfevoError(f"{input_file}:{n}: no 'question', 'text' or 'prompt' field")
            out.append(text)
        else:
            out.append(line.strip())
    return out


@click.command("refine")
@click.argument("question", required=False)
@click.option("--model", "model", required=True, help="Model spec, e.g. hf:PATH+ADAPTER.")
@click.option("--input", "input_file", type=click.Path(exists=True, dir_okay=False),
              help="Questions: JSONL (question/text/prompt) or one per line.")
@click.option("--steps", default=1, show_default=True, help="Feedback/refinement rounds.")
@click.option("--stop-on-correct", is_flag=True,
              help="Stop once the self-feedback's verdict is 'correct'.")
@click.option("--max-tokens", default=512, show_default=True, help="New tokens per call.")
@click.option("--temperature", default=0.0, show_default=True)
@click.option("--template-set", default="default", show_default=True,
              help="Template set for the response/self_feedback/self_refinement requests.")
@click.option("--plain-answer", is_flag=True,
              help="Ask the bare question for the answer (no response template).")
@click.option("--db", default=None, type=click.Path(dir_okay=False), envvar="SELFEVO_DB",
              help="Store the calls in this store's ledger (default: nothing is stored).")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON lines.")
@mode_options()
def refine(question: str | None, model: str, input_file: str | None, steps: int,
           stop_on_correct: bool, max_tokens: int, temperature: float, template_set: str,
           plain_answer: bool, db: str | None, as_json: bool, batch: BatchOptions | None) -> None:
    """Answer QUESTION, criticise the answer and refine it, in the meta-skill layout.

    \b
    Example:
      selfevo refine --model hf:smollm2-135m --steps 2 --stop-on-correct \\
          "Tom has 3 apples and buys 4 more. How many apples does he have?"
    """
    from generation.batches import batch_display
    from selfevo.refine import RefinePrompts, refine_and_store, request_failures

    questions = read_questions(question, input_file)
    with batch_display(batch), stage_progress(len(questions) > 1 and batch is None) as progress:
        results = refine_and_store(
            model, questions, steps=steps, stop_on_correct=stop_on_correct,
            params={"max_tokens": max_tokens, "temperature": temperature}, db=db,
            prompts=RefinePrompts(template_set, plain_answer), progress=progress, batch=batch,
        )
    if as_json:
        for r in results:
            click.echo(json.dumps(r.to_dict(), ensure_ascii=False))
    else:
        render_results(results)
    failures = request_failures(results)
    if failures.failed:  # some answered (none answered is an error): say so with counts
        click.echo(f"warning: {failures.describe('questions')}", err=True)


@contextlib.contextmanager
def stage_progress(enabled: bool = True, console: Any = None) -> Iterator[Progress | None]:
    """A ``progress(stage, advance, total)`` for :func:`selfevo.refine.self_refine`.

    Drawn with :func:`corpus.display.progress` (on stderr unless ``console`` is given, on a
    terminal only): one task per stage batch — answer, self-feedback, self-refinement, and
    ``… (step k)`` for the later steps.
    """
    if not enabled:
        yield None
        return
    from corpus.display import progress

    with progress(console=console) as display:
        tasks: dict[str, Any] = {}
        starts: dict[str, int] = {}

        def on_progress(stage: str, advance: int, total: int) -> None:
            if advance == 0 or stage not in tasks:  # a stage's batch starts
                starts[stage] = starts.get(stage, 0) + 1
                label = stage if starts[stage] == 1 else f"{stage} (step {starts[stage]})"
                tasks[stage] = display.task(label, total)
            if advance:
                tasks[stage].advance(advance)

        yield on_progress


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
