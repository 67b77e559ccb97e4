"""The ``selfevo`` command: a root group that imports each command's module only when used.

Each package owns a ``cli.py`` with its commands; this file only maps names to them, so
``selfevo --help`` and ``selfevo sql`` start without importing torch or the model backends.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any

import click

from schemas.errors import UserError, Waiting

# name -> ("module:attribute", one-line help shown by `selfevo --help` without importing).
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("corpus.cli:init_cmd", "Create or migrate a store."),
    "prompts": ("corpus.cli:prompts", "Import prompts (JSONL, CSV, Parquet, HF datasets)."),
    "records": ("corpus.cli:records", "Import ready-made (p, r, f, r̂) records."),
    "sql": ("corpus.cli:sql", "Run a read-only SQL query against the store."),
    "stats": ("corpus.cli:stats", "Counts by kind, round, source, verdict and run."),
    "show": ("corpus.cli:show", "Show one record with its calls and decisions."),
    "snapshot": ("corpus.cli:snapshot", "Create, list, diff and export snapshots."),
    "templates": ("generation.cli:templates", "List and show prompt templates."),
    "collect": ("generation.cli:collect", "Collect responses, teacher feedback and refinements."),
    "batches": ("generation.cli:batches", "List, poll, cancel and ingest batch generation jobs."),
    "curate": ("curation.cli:curate", "Filter, dedup and decontaminate records."),
    "train": ("selfevo.train_cli:train", "Fine-tune a student on a snapshot export."),
    "evolve": ("selfevo.evolve_cli:evolve", "Run self-evolution rounds."),
    "refine": ("selfevo.refine_cli:refine", "Answer, criticise and refine at inference time."),
    "eval": ("selfevo.eval_cli:eval_group", "Evaluate models on GSM8K, SVAMP or a file."),
    "report": ("selfevo.report_cli:report", "Write a self-contained HTML audit report."),
    "demo": ("selfevo.demo:demo", "Run the pipeline on the embedded default data."),
}


def _available(name: str) -> bool:
    module = COMMANDS[name][0].split(":")[0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def debug_enabled(ctx: click.Context | None = None) -> bool:
    """``--debug`` (or ``SELFEVO_DEBUG=1`` in the environment): tracebacks, library warnings.

    Read from the root command's parameters, never written anywhere: library code that needs
    it gets it passed.
    """
    ctx = ctx or click.get_current_context(silent=True)
    root = ctx.find_root() if ctx is not None else None
    if root is not None and root.params.get("debug"):
        return True
    return os.environ.get("SELFEVO_DEBUG", "") not in ("", "0")


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [n for n in COMMANDS if _available(n)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS or not _available(cmd_name):
            return None
        module, attr = COMMANDS[cmd_name][0].split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(n, COMMANDS[n][1]) for n in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Waiting as exc:  # not an error: say what waits and how to go on
            click.echo(str(exc), err=True)
            raise click.exceptions.Exit(exc.exit_code) from exc
        except UserError as exc:
            if debug_enabled(ctx):
                raise
            from corpus.redaction import redact

            line = str(exc).splitlines()[0] if str(exc) else repr(exc)
            raise click.ClickException(redact(line)) from exc


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="selfevo")
def cli(debug: bool) -> None:
    """Build, curate, version and train on SELF data, all in one DuckDB store.

    \b
    Example:
      selfevo prompts import train.jsonl --preset gsm8k
      selfevo sql "SELECT kind, count(*) FROM records GROUP BY kind"
    """
    from corpus.display import quiet_libraries

    quiet_libraries(enabled=not debug_enabled())


def main() -> None:
    """Console-script entry point. An unexpected error's traceback is printed redacted
    (:func:`corpus.redaction.redact`): no secret reaches the terminal, even from a bug."""
    try:
        cli(prog_name="selfevo")
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:
        import traceback

        from corpus.redaction import redact

        sys.stderr.write(redact(traceback.format_exc()))
        sys.exit(1)


if __name__ == "__main__":
    sys.exit(main())
