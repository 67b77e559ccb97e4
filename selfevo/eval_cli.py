"""``selfevo eval run|compare``: benchmark accuracy, direct and with self-refinement."""

from __future__ import annotations

import click

from corpus.options import db_option
from generation.batches.options import BatchOptions, mode_options


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
@click.option("--where", help="With --bench store: a condition, one SQL expression over prompts, "
                              "e.g. split='test'.")
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
@mode_options(flag="--gen-mode")
@db_option
def run_cmd(model: str, bench: str, path: str | None, where: str | None, limit: int | None,
            mode: str, steps: int, stop_on_correct: bool, self_consistency: int,
            max_tokens: int, temperature: float | None, template_set: str, plain_answer: bool,
            model_id: str | None, batch: BatchOptions | None, db: str) -> None:
    """Score MODEL on a benchmark; writes evals (one per mode) and eval_items rows.

    --gen-mode batch sends each stage through the provider's Batch API (--mode is taken:
    it picks direct / refine scoring).

    \b
    Example:
      selfevo eval run --model hf:smollm2-135m --bench svamp --limit 100 --mode both
      selfevo eval run --model hf:smollm2-135m+out/r1 --bench store --where "split='test'"
      selfevo eval run --model openai:gpt-4o-mini --bench gsm8k --mode both --gen-mode batch
    """
    from corpus.sqlfragment import SqlCondition
    from corpus.store import Store
    from generation.batches import batch_display, load_backend_for
    from selfevo.evaluate import evaluate, load_items, print_summaries
    from selfevo.refine import RefinePrompts
    from selfevo.refine_cli import stage_progress

    params: dict[str, object] = {"max_tokens": max_tokens}
    if temperature is not None:
        params["temperature"] = temperature
    modes = ["direct", "refine"] if mode == "both" else [mode]
    condition = SqlCondition.of(where, "--where")  # refused before the store is opened
    with Store.open(db, command="eval run") as store:
        name, items = load_items(bench, path=path, limit=limit, store=store, where=condition)
        backend = load_backend_for(model, batch)
        try:
            with batch_display(batch), stage_progress(batch is None) as progress:
                summaries = evaluate(store, backend, items, benchmark=name, modes=modes,
                                     steps=steps, stop_on_correct=stop_on_correct,
                                     self_consistency=self_consistency, params=params,
                                     model_id=model_id, progress=progress, batch=batch,
                                     prompts=RefinePrompts(template_set, plain_answer))
        finally:
            backend.close()
    print_summaries(summaries)


@eval_group.command("compare")
@click.option("--bench", help="Only this benchmark (as stored in evals.benchmark).")
@click.option("--a", "a", metavar="EVAL_OR_MODEL",
              help="Paired comparison: A is an eval_id (or its start) or a model spec (its "
                   "latest evaluation in --mode). Alone: its direct vs refine evaluations.")
@click.option("--b", "bs", multiple=True, metavar="EVAL_OR_MODEL",
              help="Compare A with this evaluation (repeat for several; p-values Holm-adjusted).")
@click.option("--mode", type=click.Choice(["direct", "refine"]), default="direct",
              show_default=True, help="The mode a model spec in --a/--b stands for.")
@db_option
def compare_cmd(bench: str | None, a: str | None, bs: tuple[str, ...], mode: str,
                db: str) -> None:
    """Accuracy ± 95% CI across models and rounds; with --a, a paired comparison.

    Without --a: one row per evaluation run, direct and refine accuracy side by side.
    With --a (and --b): both accuracies on the items both answered, the discordant counts,
    the exact McNemar p-value, refine-vs-direct transitions and the critic's sensitivity and
    specificity (see docs/evaluate.md).

    \b
    Example:
      selfevo eval compare --bench gsm8k
      selfevo eval compare --a hf:smollm2-135m --b hf:smollm2-135m+out/r1 --bench gsm8k
      selfevo eval compare --a hf:smollm2-135m+out/r1 --bench gsm8k   # direct vs refine
    """
    from corpus.store import Store

    if bs and not a:
        raise click.UsageError("--b needs --a (the evaluation to compare with)")
    with Store.open_readonly(db) as store:
        if a:
            from selfevo.comparison import compare_evaluations, print_paired

            print_paired(compare_evaluations(store, a, bs, bench=bench, mode=mode))
            return
        from selfevo.evaluate import compare_evals, print_comparison

        rows = compare_evals(store, bench)
    print_comparison(rows)
