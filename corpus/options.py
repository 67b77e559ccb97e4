"""Reusable click options shared by every command group."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from corpus.store import DB_ENV, DEFAULT_DB


def db_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--db PATH`` (env ``SELFEVO_DB``, default ``./selfevo.duckdb``)."""
    return click.option(
        "--db",
        type=click.Path(dir_okay=False),
        envvar=DB_ENV,
        default=DEFAULT_DB,
        show_default=True,
        help=f"Store file (or set {DB_ENV}).",
    )(f)
