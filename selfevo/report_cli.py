"""``selfevo report``: write the self-contained HTML audit report of a store."""

from __future__ import annotations

import click

from corpus.options import db_option


@click.command("report")
@click.option("--out", default="report.html", show_default=True,
              type=click.Path(dir_okay=False), help="HTML file to write.")
@db_option
def report(out: str, db: str) -> None:
    """Write ONE self-contained HTML file (inline CSS and SVG, no network) auditing the store.

    Sections: corpus at a glance, curation funnel, verdict agreement, dedup clusters,
    decontamination hits, accuracy per model/round, tokens and cost, length histograms.
    A section that fails says so in the page; with --debug its traceback is shown instead.

    \b
    Example:
      selfevo report --out report.html --db selfevo.duckdb
      xdg-open report.html
    """
    from selfevo.cli import debug_enabled
    from selfevo.report import write_report

    path = write_report(db, out, debug=debug_enabled())
    click.echo(f"wrote {path} ({path.stat().st_size:,} bytes); open it in any browser")
