"""``selfevo refine``: answer, self-feedback and self-refinement of questions at inference time."""

from __future__ import annotations

import json
from pathlib import Path

import click

from selfevo import SelfevoError


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
def refine(question: str | None, model: str, input_file: str | None, steps: int,
           stop_on_correct: bool, max_tokens: int, temperature: float, template_set: str,
           plain_answer: bool, db: str | None, as_json: bool) -> None:
    """Answer QUESTION, criticise the answer and refine it, in the meta-skill layout.

    \b
    Example:
      selfevo refine --model hf:smollm2-135m --steps 2 --stop-on-correct \\
          "Tom has 3 apples and buys 4 more. How many apples does he have?"
    """
    from selfevo.refine import RefinePrompts, refine_and_store, render_results, rich_progress

    questions = read_questions(question, input_file)
    with rich_progress(len(questions) > 1) as progress:
        results = refine_and_store(
            model, questions, steps=steps, stop_on_correct=stop_on_correct,
            params={"max_tokens": max_tokens, "temperature": temperature}, db=db,
            prompts=RefinePrompts(template_set, plain_answer), progress=progress,
        )
    if as_json:
        for r in results:
            click.echo(json.dumps(r.to_dict(), ensure_ascii=False))
    else:
        render_results(results)
