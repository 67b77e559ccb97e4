"""``selfevo evolve``: self-evolution rounds (see :mod:`selfevo.evolve`)."""

from __future__ import annotations

import click

from corpus.options import db_option
from generation.batches.options import BatchOptions, mode_options
from selfevo import SelfevoError


@click.command("evolve")
@click.option("--student", required=True, help="M_1 spec, e.g. hf:BASE+ADAPTER or openai:M@URL.")
@click.option("--base", required=True, help="Base model folder (or smollm2-135m) for training.")
@click.option("--prompts", "prompts_where", required=True,
              help="The unlabeled pool: a condition, one SQL expression over prompts.")
@click.option("--rounds", default=1, show_default=True, help="Self-evolution rounds T.")
@click.option("--meta", help="Meta-skill snapshot replayed in every round's training data.")
@click.option("--strategy", type=click.Choice(["restart", "continual"]), default="restart",
              show_default=True, help="Train M_{t+1} from the base or from M_t.")
@click.option("--filter", "filters", multiple=True,
              help="Curation step NAME[:k=v,...] (repeatable; default: verdict). An oracle "
                   "round: --filter gold-match (keeps r̂ that match the gold answer).")
@click.option("--verdict-on", type=click.Choice(["refined", "response", "both"]),
              default="refined", show_default=True,
              help="Which self-verdict the verdict filter reads: on the refinement r̂ (the "
                   "paper: the student also gives feedback on r̂), on the first answer r, or "
                   "both correct.")
@click.option("--self-layout", type=click.Choice(["answer", "meta+answer", "meta"]),
              default="answer", show_default=True,
              help="What kept self records train: answer = p -> r̂ (the paper's D_self), "
                   "meta+answer = also the feedback and refinement turns, meta = only those.")
@click.option("--samples", default=1, show_default=True, help="Answers per prompt.")
@click.option("--prompts-per-round", type=int, help="A fresh sample of the pool per round.")
@click.option("--generate-prompts", default=0, show_default=True,
              help="New questions the student writes per round.")
@click.option("--eval", "evals", multiple=True,
              help="Benchmark after each round: gsm8k:PATH, svamp:PATH, FILE or store:SQL "
                   "(a condition over prompts).")
@click.option("--eval-mode", type=click.Choice(["direct", "refine", "both"]), default="both",
              show_default=True)
@click.option("--eval-limit", type=int, help="Items per benchmark.")
@click.option("--temperature", default=0.0, show_default=True)
@click.option("--max-tokens", default=256, show_default=True)
@click.option("--train", "train_opts", multiple=True,
              help="Trainer option KEY=VALUE (repeatable), e.g. max_steps=20 lr=1e-4.")
@click.option("--out", default="evolve-out", show_default=True, help="Exports and checkpoints.")
@click.option("--name", help="Evolve name (default: a hash of the options; reuse to resume).")
@click.option("--seed", default=0, show_default=True)
@click.option("--serve", metavar="URL",
              help="vLLM server (runtime LoRA loading) serving --base: each round's adapter is "
                   "loaded there and used as openai:NAME@URL.")
@mode_options(out=False)
@db_option
def evolve(student: str, base: str, prompts_where: str, rounds: int, meta: str | None,
           strategy: str, filters: tuple[str, ...], verdict_on: str, self_layout: str,
           samples: int,
           prompts_per_round: int | None, generate_prompts: int, evals: tuple[str, ...],
           eval_mode: str, eval_limit: int | None, temperature: float, max_tokens: int,
           train_opts: tuple[str, ...], out: str, name: str | None, seed: int, serve: str | None,
           batch: BatchOptions | None, db: str) -> None:
    """Run SELF self-evolution rounds: generate, filter, snapshot, export, train, eval.

    The defaults are the paper's round: the student answers (r), criticises (f), refines (r̂)
    and criticises r̂; records whose verdict on r̂ is correct are kept (--verdict-on
    refined); the next student trains on their (p, r̂) (--self-layout answer) plus the
    --meta replay, from the base (--strategy restart). Each alternative is one flag,
    recorded in the evolve run's config. Re-running the same command resumes a killed run
    at its first unfinished stage.
    --mode batch sends the generate stage through the provider's Batch API.

    \b
    Example:
      selfevo evolve --student hf:smollm2-135m+out/meta/final --base smollm2-135m \\
        --prompts "split = 'train' AND source = 'gsm8k'" --rounds 2 --meta meta-v1 \\
        --filter verdict --eval store:"split = 'test'" --eval-limit 50 --train max_steps=50
      # students served by vLLM (started with --enable-lora and
      # VLLM_ALLOW_RUNTIME_LORA_UPDATING=True) instead of loaded in process:
      selfevo evolve --student openai:meta@http://127.0.0.1:8000/v1 --base ./base \\
        --serve http://127.0.0.1:8000/v1 --prompts "split = 'train'" --rounds 2 --meta meta-v1
    """
    from corpus.display import progress
    from selfevo.evolve import EvolveConfig
    from selfevo.evolve import evolve as run_evolve
    from trainer.config import parse_overrides

    def train_settings(items: tuple[str, ...]) -> dict[str, object]:
        try:
            return parse_overrides(items)
        except ValueError as exc:
            raise SelfevoError(f"--train {exc}") from None

    config = EvolveConfig(
        student=student, base=base, prompts=prompts_where, rounds=rounds, meta=meta,
        strategy=strategy, filters=list(filters) or ["verdict"], verdict_on=verdict_on,
        self_layout=self_layout, samples=samples,
        prompts_per_round=prompts_per_round, generate_prompts=generate_prompts,
        evals=list(evals), eval_modes=["direct", "refine"] if eval_mode == "both" else [eval_mode],
        eval_limit=eval_limit, gen={"temperature": temperature, "max_tokens": max_tokens},
        train=train_settings(train_opts), out=out, name=name, seed=seed, serve=serve)
    with progress() as display:
        if batch is not None:
            batch.display = display  # one task per batch while the generate stage polls
        results = run_evolve(db, config, log=lambda m: click.echo(m, err=True), display=display,
                             batch=batch)
    print_rounds(results)


def print_rounds(results: list) -> None:
    """One table row per round: records, kept, snapshot size, model, accuracies."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="self-evolution")
    for col in ("round", "self records", "kept", "snapshot", "model", "accuracy"):
        table.add_column(col)
    for r in results:
        acc = ", ".join(f"{e['benchmark']} {e['mode']} {e['accuracy']:.1%}" for e in r.evals)
        table.add_row(str(r.round), str(r.records), str(r.kept),
                      f"{r.snapshot or '-'} ({r.snapshot_n})" if r.snapshot else "-",
                      (r.model_id or "-")[:14], acc or "-")
    Console().print(table)
