"""Commands of curation: ``selfevo curate filter | steps | decontam | dedup``."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from corpus.display import progress
from corpus.options import db_option
from corpus.store import Store
from curation.selection import Selection, selection_options


@click.group("curate")
def curate() -> None:
    """Filter, deduplicate and decontaminate records; every decision is a row.

    \b
    Example:
      selfevo curate filter --step verdict --step length:field=refinement,max_chars=4000
    """


@curate.command("filter")
@click.option("--step", "steps", multiple=True, required=True, metavar="NAME[:k=v,...]",
              help="A filter step; repeat for several (run in the order given).")
@click.option("--chunk-size", default=50_000, show_default=True, help="Records per batch.")
@selection_options
@db_option
def filter_cmd(steps: tuple[str, ...], chunk_size: int, selection: Selection, db: str) -> None:
    """Run filter steps; every record gets one decision per step, kept or not.

    Prints the funnel: per step how many records passed, how many it dropped first, and how
    many remain. See 'selfevo curate steps' for the steps and their parameters.

    \b
    Example:
      selfevo curate filter --kind self --round 1 --step verdict:null=drop \\
          --step gold-match --step length:field=refinement,max_chars=4000
    """
    from corpus.funnel import funnel_table, run_funnel
    from curation.curate import run_filters
    from curation.filters import parse_step

    parsed = [parse_step(s) for s in steps]
    with Store.open(db, command="curate filter") as store, progress("filter") as bar:
        result = run_filters(store, parsed, selection, chunk_size=chunk_size, progress=bar)
        with store.connection() as con:
            funnel = run_funnel(con, result.run_id)
    Console().print(funnel_table(funnel))
    click.echo(f"run {result.run_id}: kept {result.kept:,} of {result.selected:,} records")


@curate.command("steps")
def steps_cmd() -> None:
    """List the filter steps with their parameters, types and defaults.

    \b
    Example:
      selfevo curate steps
    """
    from curation.filters import param_specs, registry

    console = Console()
    for name, cls in registry().items():
        table = Table(title=f"{name}: {cls.description}", title_justify="left",
                      show_header=bool(param_specs(cls)))
        for col in ("parameter", "type", "default", "help"):
            table.add_column(col, overflow="fold")
        for p in param_specs(cls):
            choices = f" ({'|'.join(p['choices'])})" if p["choices"] else ""
            default = p["default"] if len(repr(p["default"])) < 40 else "(see docs)"
            table.add_row(p["name"], p["type"], str(default), p["help"] + choices)
        console.print(table)
    click.echo("Any step also takes as=LABEL (the decisions.step name; needed to use a step "
               "twice).")


@curate.command("decontam")
@click.option("--against", required=True, metavar="gsm8k-test|svamp|FILE",
              help="Benchmark to check against: a name (needs --path) or a JSONL/JSON file.")
@click.option("--path", default=None, type=click.Path(dir_okay=False),
              help="The benchmark's file, e.g. data/gsm8k/test.jsonl or data/svamp/SVAMP.json.")
@click.option("--field", "fields", multiple=True, default=("prompt",), show_default=True,
              type=click.Choice(["prompt", "response", "feedback", "refinement"]),
              help="Record text to check; repeat for several.")
@click.option("--ngram", default=8, show_default=True, help="N-gram length (tokens).")
@click.option("--min-overlap", default=0.5, show_default=True,
              help="Flag when a record holds this share of one item's n-grams.")
@selection_options
@db_option
def decontam_cmd(against: str, path: str | None, fields: tuple[str, ...], ngram: int,
                 min_overlap: float, selection: Selection, db: str) -> None:
    """Flag records that contain benchmark test items (n-gram overlap, normalised text).

    Numbers, case, whitespace and punctuation are normalised, so a test question with its
    numbers changed still matches. Writes one decontam-<benchmark> decision per record; the
    detail names the benchmark item id and a shared n-gram.

    \b
    Example:
      selfevo curate decontam --against gsm8k-test --path data/gsm8k/test.jsonl
      selfevo curate decontam --against svamp --path data/svamp/SVAMP.json --field prompt \\
          --field refinement
    """
    import time

    from corpus.funnel import funnel_table, run_funnel
    from curation.decontam import BenchmarkIndex, decontaminate, load_benchmark

    t0 = time.perf_counter()
    name, items, sha = load_benchmark(against, path)
    index = BenchmarkIndex.build(name, items, ngram)
    built = time.perf_counter() - t0
    with Store.open(db, command="curate decontam") as store, \
            progress(f"decontam-{name}") as bar:
        result = decontaminate(store, index, selection, fields=fields, min_overlap=min_overlap,
                               source={"path": str(path or against), "sha256": sha},
                               index_seconds=built, progress=bar)
        with store.connection() as con:
            funnel = run_funnel(con, result.run_id)
    Console().print(funnel_table(funnel))
    click.echo(f"run {result.run_id}: {result.flagged:,} of {result.selected:,} records share "
               f">= {min_overlap:.0%} of a {name} item's {ngram}-grams ({len(items)} items)")


@curate.command("dedup")
@click.option("--exact", is_flag=True, help="Exact duplicates of the normalised text.")
@click.option("--near", is_flag=True, help="Near duplicates: MinHash LSH + true Jaccard.")
@click.option("--semantic", is_flag=True, help="Embedding cosine (offline MiniLM; slow).")
@click.option("--field", "field_", type=click.Choice(["prompt", "response", "refinement",
              "feedback"]), default="prompt", show_default=True, help="Text to compare.")
@click.option("--threshold", type=float, default=0.7, show_default=True,
              help="Near: Jaccard of word n-gram sets.")
@click.option("--num-perm", type=int, default=128, show_default=True,
              help="Near: MinHash permutations.")
@click.option("--bands", type=int, default=None,
              help="Near: LSH bands (default: chosen from --threshold).")
@click.option("--fn-weight", type=float, default=0.8, show_default=True,
              help="Near: weight of missed duplicates (vs extra candidates) when choosing bands.")
@click.option("--ngram", type=int, default=3, show_default=True, help="Near: words per shingle.")
@click.option("--semantic-threshold", type=float, default=0.9, show_default=True,
              help="Semantic: cosine similarity.")
@click.option("--keep", type=click.Choice(["first", "verdict-then-shortest", "shortest",
              "longest"]), default="first", show_default=True,
              help="Which member of a cluster is kept (ties: record id).")
@selection_options
@db_option
def dedup_cmd(exact: bool, near: bool, semantic: bool, field_: str, threshold: float,
              num_perm: int, bands: int | None, fn_weight: float, ngram: int,
              semantic_threshold: float, keep: str, selection: Selection, db: str) -> None:
    """Cluster duplicate records and keep one per cluster; one decision per record per step.

    Steps run in the order exact, near, semantic (default: --exact --near), each over every
    selected record, writing decisions 'dedup-exact', 'dedup-near', 'dedup-semantic' whose
    detail holds the cluster id, keeper id, cluster size and similarity to the keeper.

    \b
    Example:
      selfevo curate dedup --exact --near --field prompt --threshold 0.7 \\
          --keep verdict-then-shortest --kind self --round 1
    """
    from corpus.funnel import funnel_table, run_funnel
    from curation.dedup import DedupConfig, dedup_records

    methods = tuple(m for m, on in (("exact", exact), ("near", near), ("semantic", semantic))
                    if on) or ("exact", "near")
    config = DedupConfig(methods=methods, field=field_, keep=keep, threshold=threshold,
                         num_perm=num_perm, bands=bands, fn_weight=fn_weight, ngram=ngram,
                         semantic_threshold=semantic_threshold)
    config.validate()
    with Store.open(db, command="curate dedup") as store, progress("dedup") as bar:
        result = dedup_records(store, config, selection, progress=bar)
        with store.connection() as con:
            funnel = run_funnel(con, result.run_id)
    Console().print(funnel_table(funnel))
    for out in result.steps:
        extra = ", ".join(f"{k}={v}" for k, v in out.params.items()
                          if k in ("bands", "rows", "threshold"))
        click.echo(f"{out.step}: {out.clusters.n_clusters:,} clusters"
                   + (f" ({extra})" if extra else ""))
    click.echo(f"run {result.run_id}: kept {result.kept:,} of {result.selected:,} records")
