"""Commands of the store: init, prompts, records, sql, stats, show, snapshot."""

from __future__ import annotations

import click

from corpus.migrations import MIGRATIONS
from corpus.options import db_option
from corpus.store import Store


@click.command("init")
@db_option
def init_cmd(db: str) -> None:
    """Create a store (or migrate an existing one to this version).

    \b
    Example:
      selfevo init --db work.duckdb
    """
    with Store.open(db, command="init") as store:
        applied = store.query("SELECT count(*) FROM _migrations")[0][0]
    click.echo(f"store {db} ready ({applied}/{len(MIGRATIONS)} migrations applied)")
