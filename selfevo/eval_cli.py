"""``selfevo eval run|compare``: benchmark accuracy, direct and with self-refinement."""

from __future__ import annotations

import click

from corpus.options import db_option


@click.group("eval")
def eval_group() -> None:
    """Evaluate models on GSM8K, SVAMP, a file or held-out store prompts.

    \b
    Example:
      selfevo eval run --model hf:smollm2-135m --bench gsm8k --limit 50 --mode both
      selfevo eval compare --bench gsm8k
    """


@eval_group.command("run")
@click.option("--model", required=True, help="Model spec, e.g. hf:BASE+ADAPTER or openai:M@URL.")
@click.option("--bench", required=True,
              help="gsm8k, svamp, store (prompts in the store, see --where) or a JSONL file.")
@click.option("--path", type=click.Path(dir_okay=False),
              help="Benchmark file for gsm8k/svamp (default: the shared test files).")
@click.option("--where", help="With --bench store: SQL condition over prompts, e.g. split='test'.")
@click.option("--limit", type=int, help="Evaluate the first N items only.")
@click.option("--mode", type=click.Choice(["direct", "refine", "both"]), default="direct",
              show_default=True)
@click.option("--steps", default=1, show_default=True, help="Refinement steps in refine mode.")
@click.option("--stop-on-correct", is_flag=True, help="Refine mode: stop on a 'correct' verdict.")
@click.option("--self-consistency", "self_consistency", default=1, show_default=True,
              help="Sample K answers (temperature 0.7) and take the majority answer.")
@click.option("--max-tokens", default=512, show_default=True, help="New tokens per call.")
@click.option("--temperature", type=float, help="Sampling temperature (default 0, or 0.7 with K>1).")
@click.option("--template-set", default="default", show_default=True,
              help="Template set of the answer/self-feedback/self-refinement requests.")
@click.option("--plain-answer", is_flag=True, help="Ask the bare question (no response template).")
@click.option("--model-id", help="models.model_id this spec serves (e.g. a vLLM-served checkpoint).")
@db_option
def run_cmd(model: str, bench: str, path: str | None, where: str | None, limit: int | None,
            mode: str, steps: int, stop_on_correct: bool, self_consistency: int,
            max_tokens: int, temperature: float | None, template_set: str, plain_answer: bool,
            model_id: str | None, db: str) -> None:
    """Score MODEL on a benchmark; writes evals (one per mode) and eval_items rows.

    \b
    Example:
      selfevo eval run --model hf:smollm2-135m --bench svamp --limit 100 --mode both
      selfevo eval run --model hf:smollm2-135m+out/r1 --bench store --where "split='test'"
    """
    from corpus.store import Store
    from generation.backends import load_backend
    from selfevo.evaluate import evaluate, load_items, print_summaries
    from selfevo.refine import RefinePrompts
    from selfevo.refine_cli import stage_progress

    params: dict[str, object] = {"max_tokens": max_tokens}
    if temperature is not None:
        params["temperature"] = temperature
    modes = ["direct", "refine"] if mode == "both" else [mode]
    with Store.open(db, command="eval run") as store:
        name, items = load_items(bench, path=path, limit=limit, store=store, where=where)
        backend = load_backend(model)
        try:
            with stage_progress() as progress:
                summaries = evaluate(store, backend, items, benchmark=name, modes=modes,
                                     steps=steps, stop_on_correct=stop_on_correct,
                                     self_consistency=self_consistency, params=params,
                                     model_id=model_id, progress=progress,
                                     prompts=RefinePrompts(template_set, plain_answer))
        finally:
            backend.close()
    print_summaries(summaries)


@eval_group.command("compare")
@click.option("--bench", help="Only this benchmark (as stored in evals.benchmark).")
@db_option
def compare_cmd(bench: str | None, db: str) -> None:
    """Table of accuracy ± 95% CI across models and rounds, direct vs refine.

    \b
    Example:
      selfevo eval compare --bench gsm8k
    """
    from corpus.store import Store
    from selfevo.evaluate import compare_evals, print_comparison

    with Store.open_readonly(db) as store:
        rows = compare_evals(store, bench)
    print_comparison(rows)
