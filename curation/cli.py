"""Commands of curation: templates, collect, curate (filter, dedup, decontam, steps)."""

from __future__ import annotations

import click


@click.group("templates")
def templates() -> None:
    """List and show the versioned prompt templates.

    \b
    Example:
      selfevo templates list
    """


@click.group("curate")
def curate() -> None:
    """Filter, deduplicate and decontaminate records; every decision is a row.

    \b
    Example:
      selfevo curate filter --step verdict --step length:field=refinement,max_chars=4000
    """
