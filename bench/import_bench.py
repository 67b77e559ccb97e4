"""Import benchmark (issue 15, point 8): records/s and peak RSS of ``records import``.

On N synthetic (p, r, f, r̂) records (``store_bench.make_inputs``: half as many distinct
prompts, a meta object per record), from JSONL and from Parquet, into a fresh file store,
each import in its own process (peak RSS is per process):

* ``before``: the importer as it was at ``--baseline-rev`` (default ``integrity``: every row
  validated by pydantic and held until one transaction), loaded from git — the baseline;
* ``stream``: the first streaming importer, at ``--stream-rev`` (default ``a0bb0f8``: batches
  of row dicts, column checks in Python lists, meta walked by ``check_json_value``), loaded
  from git with its ``corpus.importbatch``;
* ``prev``: the columnar importer before the Arrow path and the writer thread, at
  ``--prev-rev`` (default ``7daa9ce``: Parquet batches as Python column lists, staged as
  Parquet, one transaction at the end), loaded from git with its ``corpus.importbatch``;
* ``rows``: the importer as shipped with the per-row reference validation only (``fast=False``);
* ``fast``: the importer as shipped (Parquet batches checked, canonicalised and hashed over
  whole Arrow arrays; JSONL as column lists; a writer thread inserting into the one open
  transaction while the next batches are validated; falling back to the reference per batch).

Ratios are against ``before`` and ``prev`` in the same run; records per CPU-second (all
threads) is the steadier figure on a shared machine, records/s the one that counts when
idle. Every variant must store the same rows (the bench checks the counts of new prompts
and records agree).

Usage:
  flock /tmp/selfevo-bench.lock .venv/bin/python bench/import_bench.py --n 100000 --repeat 3
  flock /tmp/selfevo-bench.lock .venv/bin/python bench/import_bench.py --n 1000000 --skip stream
  flock /tmp/selfevo-bench.lock .venv/bin/python bench/import_bench.py --n 3000000 --skip before --skip stream --skip rows
  flock /tmp/selfevo-bench.lock .venv/bin/python bench/import_bench.py --n 6000000 --skip before --skip stream --skip rows --skip prev
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
VARIANTS = ("before", "stream", "prev", "rows", "fast")
BASES = ("before", "prev")  # the ratio columns


def _load_at(rev: str, path: str, name: str, work: Path):
    """The module at ``path`` as it was at ``rev``, registered as ``name`` (this process only)."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{path}"],
                            check=True, capture_output=True, text=True).stdout
    file = work / f"{name.replace('.', '_')}_{rev}.py"
    file.write_text(source)
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


def _old_importer(rev: str, work: Path):
    """``corpus.importers`` as it was at ``rev``, with its ``corpus.importbatch`` where it had
    one and its ``schemas.identity`` (they use only ``corpus.records``' and ``schemas``'
    public API)."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "--name-only", rev, "corpus/"],
                            check=True, capture_output=True, text=True).stdout.split()
    # its bulk id and JSON helpers as they were too (modules imported before keep theirs)
    _load_at(rev, "schemas/identity.py", "schemas.identity", work)
    if "corpus/importbatch.py" in listed:
        _load_at(rev, "corpus/importbatch.py", "corpus.importbatch", work)
    return _load_at(rev, "corpus/importers.py", "corpus._importers_before", work)


def phase(work: Path, fmt: str, variant: str, revs: dict[str, str]) -> dict:
    """One import in this process; prints its seconds, counts and peak RSS."""
    from corpus.store import Store

    if variant in revs:
        run = _old_importer(revs[variant], work).import_records
    else:
        from corpus.importers import import_records

        def run(store, path):
            return import_records(store, path, fast=variant == "fast")

    db = work / f"{variant}-{fmt}.duckdb"
    t, cpu = time.perf_counter(), _cpu()
    with Store.open(db, command="bench import") as store:
        result = run(store, work / f"records.{fmt}")
    seconds, cpu = time.perf_counter() - t, _cpu() - cpu
    db.unlink()
    return {"seconds": seconds, "cpu": cpu, "rows": result.rows, "prompts": result.new_prompts,
            "records": result.new_records,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _cpu() -> float:
    """CPU seconds of this process, all threads (DuckDB's too), user and system."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _load() -> str:
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def _run(work: Path, fmt: str, variant: str, args: argparse.Namespace) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--baseline-rev", args.baseline_rev,
         "--stream-rev", args.stream_rev, "--prev-rev", args.prev_rev,
         "--phase", str(work), fmt, variant],
        check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _table_for(fmt: str, variants: list[str], work: Path, args: argparse.Namespace) -> None:
    """Every variant ``--repeat`` times, rounds interleaved (a load change hits all variants
    alike); rows: the median rate and the largest peak RSS of each."""
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for _ in range(args.repeat):
        for variant in variants:
            runs[variant].append(_run(work, fmt, variant, args))
    rates = {v: statistics.median(r["rows"] / r["seconds"] for r in rs) for v, rs in runs.items()}
    per_cpu = {v: statistics.median(r["rows"] / r["cpu"] for r in rs) for v, rs in runs.items()}
    counts = {(r["prompts"], r["records"]) for rs in runs.values() for r in rs}
    for variant, rate in rates.items():
        ratios = [f"{rate / rates[b]:.2f}" if b in rates else "-" for b in BASES]
        cpu_ratios = [f"{per_cpu[variant] / per_cpu[b]:.2f}" if b in per_cpu else "-"
                      for b in BASES]
        rss = max(r["rss_mb"] for r in runs[variant])
        print(f"{fmt:8} {variant:8} {rate:10,.0f} {ratios[0]:>9} {ratios[1]:>9}"
              f" {per_cpu[variant]:10,.0f} {cpu_ratios[0]:>9} {cpu_ratios[1]:>9} {rss:12,.0f}"
              f" {runs[variant][0]['records']:12,}", flush=True)
    assert len(counts) == 1, f"variants stored different counts: {counts}"


def main() -> None:
    """Run every variant on both formats and print a table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--baseline-rev", default="integrity")
    ap.add_argument("--stream-rev", default="a0bb0f8")
    ap.add_argument("--prev-rev", default="7daa9ce")
    ap.add_argument("--skip", action="append", default=[], choices=VARIANTS)
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs of each variant, interleaved; the table gives the median")
    ap.add_argument("--phase", nargs=3, metavar=("WORK", "FMT", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    revs = {"before": args.baseline_rev, "stream": args.stream_rev, "prev": args.prev_rev}
    if args.phase:
        print(json.dumps(phase(Path(args.phase[0]), args.phase[1], args.phase[2], revs)))
        return
    from store_bench import make_inputs

    with tempfile.TemporaryDirectory(prefix="selfevo-import-bench-") as d:
        work = Path(d)
        make_inputs(work, args.n)
        print(f"records import, n={args.n:,}, {args.repeat} run(s) each, load before: {_load()}"
              " (1-min load average)")
        print(f"{'format':8} {'variant':8} {'records/s':>10} {'x before':>9} {'x prev':>9}"
              f" {'rec/CPU-s':>10} {'x before':>9} {'x prev':>9} {'peak RSS MB':>12}"
              f" {'new records':>12}")
        for fmt in ("jsonl", "parquet"):
            _table_for(fmt, [v for v in VARIANTS if v not in args.skip], work, args)
        print(f"load after: {_load()}")


if __name__ == "__main__":
    main()
