"""Commands of generation: ``selfevo templates``, ``selfevo collect`` and ``selfevo batches``."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from corpus.options import db_option
from generation.batches.options import BatchOptions, mode_options


@click.group("templates")
def templates() -> None:
    """List and show the versioned prompt templates.

    \b
    Example:
      selfevo templates list
    """


@templates.command("list")
@click.option("--set", "template_set", default="default", show_default=True,
              help="Template set: a built-in name or a folder of NAME.j2 files.")
def templates_list(template_set: str) -> None:
    """List the templates of a set with their content hashes and variables.

    \b
    Example:
      selfevo templates list --set default
    """
    from generation.templates import list_templates

    table = Table()
    table.add_column("name", no_wrap=True)
    table.add_column("set")
    table.add_column("hash", no_wrap=True, min_width=35)  # ids are copied, never truncated
    table.add_column("variables")
    for t in list_templates(template_set):
        table.add_row(t.name, t.template_set, t.hash, ", ".join(t.variables))
    Console().print(table)


@templates.command("show")
@click.argument("name")
@click.option("--set", "template_set", default="default", show_default=True,
              help="Template set: a built-in name or a folder of NAME.j2 files.")
def templates_show(name: str, template_set: str) -> None:
    """Print a template's file, path and hash.

    \b
    Example:
      selfevo templates show feedback
    """
    from generation.templates import get_template

    t = get_template(name, template_set)
    click.echo(f"# {t.name} (set {t.template_set})  {t.hash}\n# {t.path}")
    click.echo(t.text, nl=not t.text.endswith("\n"))


@click.command("collect")
@click.option("--teacher", required=True, metavar="SPEC",
              help="Who writes feedback and refinements: openai:MODEL[@URL,...], hf:PATH, or an "
                   "offline grader: reference (answer key) or verifying (re-derives the steps).")
@click.option("--responder", metavar="SPEC",
              help="Who writes the initial responses; default: existing self/meta record responses.")
@click.option("--where", metavar="SQL",
              help="A condition: one SQL expression over prompts, e.g. \"split = 'train'\".")
@click.option("--limit", type=int, help="At most this many prompts.")
@click.option("--template-set", default="default", show_default=True, help="Template set name or folder.")
@click.option("--samples", default=1, show_default=True, help="Responses per prompt (use --temperature > 0).")
@click.option("--temperature", default=0.0, show_default=True, help="The responder's sampling temperature.")
@click.option("--max-tokens", default=1024, show_default=True, help="Completion tokens per call, at most.")
@click.option("--gold/--no-gold", default=True, show_default=True, help="Show the teacher the gold answer.")
@click.option("--concurrency", default=16, show_default=True, help="Requests in flight, at most.")
@click.option("--rpm", type=float, help="Requests per minute, at most.")
@click.option("--tpm", type=float, help="Tokens per minute, at most (prompt estimate + max tokens).")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds per attempt.")
@click.option("--max-attempts", default=6, show_default=True,
              help="Attempts per request (--mode batch: submissions of a request).")
@click.option("--budget", type=float, metavar="USD", help="Stop before this run's spend could exceed it.")
@click.option("--api-key-env", default="OPENAI_API_KEY", show_default=True,
              help="Environment variable holding the API key (the key is never stored).")
@click.option("--prices", type=click.Path(dir_okay=False), help="Price table overriding generation/prices.json.")
@click.option("--dry-run", is_flag=True, help="Count calls, tokens and cost; send nothing.")
@mode_options(attempts=False)
@db_option
def collect(teacher: str, responder: str | None, where: str | None, limit: int | None,
            template_set: str, samples: int, temperature: float, max_tokens: int, gold: bool,
            concurrency: int, rpm: float | None, tpm: float | None, timeout: float,
            max_attempts: int, budget: float | None, api_key_env: str, prices: str | None,
            dry_run: bool, batch: BatchOptions | None, db: str) -> None:
    """Collect responses, teacher feedback (with a verdict) and refinements as meta records.

    Every call goes through the ledger: cached when done before, written as pending before
    it is sent, resumable after Ctrl-C or a crash (see docs/collect.md). --mode batch sends
    each stage through the provider's Batch API at the batch price (--max-attempts then
    counts submissions of a request); --mode file writes Batch JSONL shards for any engine.

    \b
    Example:
      selfevo collect --teacher reference --responder hf:smollm2-135m --limit 100
      selfevo collect --teacher verifying --where "source = 'generated'"
      selfevo collect --teacher openai:gpt-4o-mini --responder openai:my-student@http://localhost:8000/v1 \\
          --where "split = 'train'" --concurrency 32 --budget 5
      selfevo collect --teacher openai:gpt-4o --mode batch --no-wait --budget 50
    """
    from generation.backends.openai_backend import OpenAIOptions
    from generation.collect import CollectConfig, run_collect
    from generation.estimate import DryRun, dry_run_table

    if batch is not None:
        batch.max_attempts = max_attempts
    options = OpenAIOptions(concurrency=concurrency, rpm=rpm, tpm=tpm, timeout=timeout,
                            max_attempts=max_attempts, budget=budget, api_key_env=api_key_env,
                            prices=prices, require_key=batch is None or batch.mode != "file")
    config = CollectConfig(teacher=teacher, responder=responder, where=where, limit=limit,
                           template_set=template_set, samples=samples, temperature=temperature,
                           max_tokens=max_tokens, use_gold=gold, options=options, batch=batch)
    result = run_collect(db, config, dry=dry_run)
    if isinstance(result, DryRun):
        Console().print(dry_run_table(result))


# -- selfevo batches ----------------------------------------------------------------------
@click.group("batches")
def batches() -> None:
    """List, poll, cancel and ingest batch generation jobs (--mode batch / --mode file).

    \b
    Example:
      selfevo batches list
      selfevo batches poll --wait
      selfevo batches ingest results.jsonl
    """


@batches.command("list")
@click.option("--all", "everything", is_flag=True, help="Settled batches too.")
@click.option("--state", help="Only batches in this state (e.g. in_progress, settled).")
@db_option
def batches_list(everything: bool, state: str | None, db: str) -> None:
    """List the batches not settled yet (or --all): state, counts, provider id.

    \b
    Example:
      selfevo batches list --all
    """
    from generation.batches.commands import list_batches

    rows = list_batches(db, everything, state)
    Console().print(_batch_table(rows, "selfevo batches" + (" (all)" if everything else "")))


@batches.command("show")
@click.argument("ref")
@db_option
def batches_show(ref: str, db: str) -> None:
    """Show one batch (its key, provider batch id, or a prefix) and its rows by status.

    \b
    Example:
      selfevo batches show b3f9
    """
    from corpus.display import summary_table
    from generation.batches.commands import show_batch

    row, links = show_batch(db, ref)
    shown = {k: v for k, v in row.items() if v is not None}
    shown.update({f"rows {k}": v for k, v in sorted(links.items())})
    Console().print(summary_table(f"batch {row['batch_key']}", {k: str(v) for k, v in shown.items()}))


@batches.command("poll")
@click.argument("refs", nargs=-1)
@click.option("--wait", is_flag=True, help="Keep polling until every batch is settled.")
@click.option("--poll-interval", default=30.0, show_default=True, metavar="S")
@click.option("--max-attempts", default=3, show_default=True,
              help="Submissions per request: rows of expired or failed batches go into a new one.")
@click.option("--api-key-env", help="Key variable (default: the one named at submission).")
@click.option("--prices", type=click.Path(dir_okay=False), help="Price table overriding generation/prices.json.")
@db_option
def batches_poll(refs: tuple[str, ...], wait: bool, poll_interval: float, max_attempts: int,
                 api_key_env: str | None, prices: str | None, db: str) -> None:
    """Poll open batches (all, or REFS); settle finished ones into the ledger.

    Settled answers are in the calls cache: run the command that submitted them again to
    turn them into records and go on to its next stage.

    \b
    Example:
      selfevo batches poll --wait --poll-interval 60
    """
    from corpus.display import progress, summary_line
    from generation.batches.commands import poll_batches

    with progress() as display:
        result = poll_batches(db, refs, wait=wait, poll_interval=poll_interval,
                              max_attempts=max_attempts, api_key_env=api_key_env, prices=prices,
                              display=display)
    Console().print(_batch_table(result.rows, "selfevo batches poll"))
    click.echo(summary_line("settled rows", result.settled.as_dict() or {"none": 0}))
    if result.waiting:
        click.echo(result.waiting, err=True)


@batches.command("cancel")
@click.argument("refs", nargs=-1, required=True)
@click.option("--api-key-env", help="Key variable (default: the one named at submission).")
@db_option
def batches_cancel(refs: tuple[str, ...], api_key_env: str | None, db: str) -> None:
    """Cancel batches: at the provider, or (not submitted yet, or a file shard) at once.

    Their unanswered requests become failed calls, sent again by the next run.

    \b
    Example:
      selfevo batches cancel batch_abc123
    """
    from generation.batches.commands import cancel_batches

    rows = cancel_batches(db, refs, api_key_env=api_key_env)
    Console().print(_batch_table(rows, "selfevo batches cancel"))


@batches.command("ingest")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--prices", type=click.Path(dir_okay=False), help="Price table overriding generation/prices.json.")
@db_option
def batches_ingest(files: tuple[str, ...], prices: str | None, db: str) -> None:
    """Settle result files of vllm run-batch, SGLang, Ray Data LLM or a provider's console.

    Lines are matched to requests by custom_id (the call id); unknown, duplicated and
    unreadable lines are counted and reported, never recorded.

    \b
    Example:
      vllm run-batch -i selfevo.batches/b1234.jsonl -o out.jsonl --model Qwen/Qwen2.5-7B-Instruct
      selfevo batches ingest out.jsonl
    """
    from corpus.display import summary_line
    from generation.batches.commands import ingest_files

    result = ingest_files(db, files, prices=prices)
    for path, counts in result.files:
        click.echo(summary_line(f"ingested {path}", counts.as_dict() or {"lines": 0}))
    if result.total.rejected:
        click.echo(f"not recorded: {result.total.unknown} unknown custom_id, "
                   f"{result.total.duplicates} duplicated, {result.total.unreadable} unreadable",
                   err=True)
    click.echo(summary_line("batches", {"settled": result.settled_batches,
                                        "requests still pending": result.still_pending}))


def _batch_table(rows: list[dict], title: str) -> Table:
    """One row per batch: key, provider id, purpose, attempt, state, requests, done / failed."""
    table = Table(title=title)
    widths = {"batch": 21, "provider id": 12, "state": 11}  # ids are copied, never truncated
    for col in ("batch", "provider id", "purpose", "try", "state", "requests", "done", "failed"):
        table.add_column(col, no_wrap=col != "purpose", min_width=widths.get(col),
                         justify="right" if col in ("try", "requests", "done", "failed") else "left")
    for r in rows:
        table.add_row(r["batch_key"], r["batch_id"] or f"({r['provider']})", r["purpose"] or "",
                      str(r["attempt"]), r["state"], f"{r['n_requests']:,}",
                      str(r["n_completed"] or 0), str(r["n_failed"] or 0))
    return table
