"""Reusable click options shared by every command group."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from corpus.errors import CorpusError
from corpus.store import DB_ENV, DEFAULT_DB, store_file


class StoreSpecType(click.ParamType):
    """A ``--db`` value: every store spec on the command line goes through
    ``StoreSpec.parse`` (via :func:`corpus.store.store_file`); errors are click usage errors."""

    name = "SPEC"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        """The store file ``value`` names, or a one-line usage error."""
        try:
            return store_file(value)
        except CorpusError as exc:
            self.fail(str(exc), param, ctx)


#: The type of every ``--db`` option (``db_option`` and the commands with their own ``--db``).
STORE_SPEC = StoreSpecType()


def db_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--db SPEC`` (env ``SELFEVO_DB``, default ``./selfevo.duckdb``)."""
    return click.option(
        "--db",
        type=STORE_SPEC,
        envvar=DB_ENV,
        default=DEFAULT_DB,
        show_default=True,
        help=f"Store file (or set {DB_ENV}).",
    )(f)
