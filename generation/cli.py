"""Commands of generation: ``selfevo templates list | show`` and ``selfevo collect``."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from corpus.options import db_option


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
@click.option("--max-attempts", default=6, show_default=True, help="Attempts per request.")
@click.option("--budget", type=float, metavar="USD", help="Stop before this run's spend could exceed it.")
@click.option("--api-key-env", default="OPENAI_API_KEY", show_default=True,
              help="Environment variable holding the API key (the key is never stored).")
@click.option("--prices", type=click.Path(dir_okay=False), help="Price table overriding generation/prices.json.")
@click.option("--dry-run", is_flag=True, help="Count calls, tokens and cost; send nothing.")
@db_option
def collect(teacher: str, responder: str | None, where: str | None, limit: int | None,
            template_set: str, samples: int, temperature: float, max_tokens: int, gold: bool,
            concurrency: int, rpm: float | None, tpm: float | None, timeout: float,
            max_attempts: int, budget: float | None, api_key_env: str, prices: str | None,
            dry_run: bool, db: str) -> None:
    """Collect responses, teacher feedback (with a verdict) and refinements as meta records.

    Every call goes through the ledger: cached when done before, written as pending before
    it is sent, resumable after Ctrl-C or a crash (see docs/collect.md).

    \b
    Example:
      selfevo collect --teacher reference --responder hf:smollm2-135m --limit 100
      selfevo collect --teacher verifying --where "source = 'generated'"
      selfevo collect --teacher openai:gpt-4o-mini --responder openai:my-student@http://localhost:8000/v1 \\
          --where "split = 'train'" --concurrency 32 --budget 5
    """
    from generation.backends.openai_backend import OpenAIOptions
    from generation.collect import CollectConfig, run_collect
    from generation.estimate import DryRun, dry_run_table

    options = OpenAIOptions(concurrency=concurrency, rpm=rpm, tpm=tpm, timeout=timeout,
                            max_attempts=max_attempts, budget=budget, api_key_env=api_key_env,
                            prices=prices)
    config = CollectConfig(teacher=teacher, responder=responder, where=where, limit=limit,
                           template_set=template_set, samples=samples, temperature=temperature,
                           max_tokens=max_tokens, use_gold=gold, options=options)
    result = run_collect(db, config, dry=dry_run)
    if isinstance(result, DryRun):
        Console().print(dry_run_table(result))
