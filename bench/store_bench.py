"""Store benchmark: import, snapshot export vs plain COPY, SQL over decisions, start-up.

On N synthetic (p, r, f, r̂) records (default 1,000,000; half as many distinct prompts):

* import rate (records/s) from JSONL and from Parquet through ``corpus.importers.import_records``
  (validation + content ids + one atomic write), each in a fresh process and store;
* ``snapshot create`` of all records, then ``snapshot export --format parquet`` (library call:
  destination lock + one COPY (zstd, 100k-row groups, DuckDB's default threads) + counts +
  manifest sha256 + dataset card) against plain DuckDB ``COPY … TO (FORMAT parquet)`` with
  DuckDB defaults (all threads, snappy), in the same process, store connection and run, each
  timed from the call to the file on disk:
  - the records joined to their prompt text (no messages column, no ORDER BY);
  - the export's rows and columns (messages included), no ORDER BY;
  - the export's own SELECT as is (same rows, same order): what the export costs over
    writing exactly the same bytes' worth of rows;
  each timed best of ``--repeat``, interleaved; the export is also checked to give the same
  bytes every time and rows sorted by record_id;
* ``selfevo sql`` aggregate over N ``decisions`` rows as a subprocess, process start included;
* start-up of ``selfevo --help`` and ``selfevo sql "select 1"``, and which heavy modules
  (torch, transformers, datasets, peft, pandas) they import (must be none);
* peak RSS of every phase (each heavy phase runs in its own process).

Usage:
  flock /tmp/selfevo-bench.lock .venv/bin/python bench/store_bench.py            # 1M records
  flock /tmp/selfevo-bench.lock .venv/bin/python bench/store_bench.py --n 100000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SELFEVO = str(Path(sys.executable).with_name("selfevo"))
HEAVY = ("torch", "transformers", "datasets", "peft", "pandas")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- data ------------------------------------------------------------------------------------
def make_inputs(work: Path, n: int) -> None:
    """Write N records in the interchange format as records.jsonl and records.parquet."""
    import duckdb

    con = duckdb.connect()
    select = f"""
        SELECT
          'Problem ' || (i // 2) || ': ' || name || ' has ' || (i // 2) % 97 || ' apples and buys '
            || (i // 2) % 13 || ' bags of ' || (i // 2) % 7 + 2 || ' apples each. How many apples does '
            || name || ' have now?' AS prompt,
          name || ' buys ' || i % 13 || ' * ' || i % 7 + 2 || ' = ' || (i % 13) * (i % 7 + 2)
            || ' apples. Then ' || i % 97 || ' + ' || (i % 13) * (i % 7 + 2) || ' = '
            || i % 97 + (i % 13) * (i % 7 + 2) || '. The answer is '
            || i % 97 + (i % 13) * (i % 7 + 2) || '. (attempt ' || i || ')' AS response,
          CASE WHEN i % 3 = 2 THEN NULL ELSE
            'The multiplication step is ' || CASE WHEN i % 2 = 0 THEN 'right' ELSE 'wrong' END
            || ': check ' || i % 13 || ' * ' || i % 7 + 2 || ' again and add the apples '
            || name || ' already had. Verdict: '
            || CASE WHEN i % 2 = 0 THEN 'correct' ELSE 'incorrect' END END AS feedback,
          CASE WHEN i % 3 = 2 THEN NULL WHEN i % 2 = 0 THEN 'correct' ELSE 'incorrect' END
            AS verdict,
          CASE WHEN i % 3 = 2 THEN NULL ELSE
            name || ' buys ' || i % 13 || ' bags of ' || i % 7 + 2 || ' apples, so '
            || (i % 13) * (i % 7 + 2) || ' apples. Adding the ' || i % 97 || ' apples gives '
            || i % 97 + (i % 13) * (i % 7 + 2) || '. The answer is '
            || i % 97 + (i % 13) * (i % 7 + 2) || '.' END AS refinement,
          CASE i % 3 WHEN 0 THEN 'meta' WHEN 1 THEN 'self' ELSE 'qa' END AS kind,
          CASE WHEN i % 3 = 1 THEN 1 + i % 3 ELSE 0 END AS round,
          CAST((i // 2) % 97 + ((i // 2) % 13) * ((i // 2) % 7 + 2) AS VARCHAR) AS gold_answer,
          'bench' AS source,
          {{'i': i, 'template': 'apples'}} AS meta
        FROM (SELECT i, ['Ava', 'Ben', 'Chloé', 'Dev', 'Emre', 'Fatima'][1 + i % 6] AS name
              FROM range({n}) t(i))
    """
    con.execute(f"COPY ({select}) TO '{work / 'records.jsonl'}' (FORMAT json)")
    con.execute(f"COPY ({select}) TO '{work / 'records.parquet'}' (FORMAT parquet)")
    con.close()


# -- phases (each runs in its own process; prints one JSON line) -------------------------------
def phase_import(work: Path, fmt: str) -> dict:
    from corpus.importers import import_records
    from corpus.store import Store

    db = work / f"import-{fmt}.duckdb"
    t = time.perf_counter()
    with Store.open(db, command="bench import") as store:
        result = import_records(store, work / f"records.{fmt}")
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "records": result.new_records, "rss_mb": _peak_rss_mb()}


def _timed(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def phase_export(work: Path, repeat: int) -> dict:
    from corpus.export import export_snapshot, export_sql
    from corpus.snapshots import create_snapshot, sql_literal
    from corpus.store import Store

    db = work / "import-parquet.duckdb"
    store = Store.open(db, command="bench export")
    t = time.perf_counter()
    snap = create_snapshot(store, f"all-{os.getpid()}", "true")
    snapshot_s = time.perf_counter() - t
    same_rows = export_sql(snap.snapshot_id)
    baselines = {
        # the records and their prompt text: no messages column, no order
        "plain": "SELECT r.*, p.text AS prompt, p.gold_answer FROM snapshot_records s "
                 "JOIN records r ON r.record_id = s.record_id "
                 "JOIN prompts p ON p.prompt_id = r.prompt_id "
                 f"WHERE s.snapshot_id = {sql_literal(snap.snapshot_id)}",
        # exactly the export's rows and columns (messages included), in any order
        "same_unordered": same_rows.replace("ORDER BY r.record_id", ""),
        # exactly the export's rows, columns and order
        "same": same_rows,
    }
    hashes: set[str] = set()

    def export() -> None:
        m = export_snapshot(store, snap.name, "parquet", work / "export")
        hashes.add(m.files[0].sha256)

    def copy(sql: str) -> None:
        with store.connection() as con:  # DuckDB defaults: all threads, snappy
            con.execute(f"COPY ({sql}) TO '{work / 'copy.parquet'}' (FORMAT parquet)")

    best = {k: float("inf") for k in [*baselines, "export"]}
    for _ in range(repeat):  # interleaved, so background load hits all of them alike
        for name, sql in baselines.items():
            best[name] = min(best[name], _timed(lambda sql=sql: copy(sql), 1))
        best["export"] = min(best["export"], _timed(export, 1))
    import pyarrow.parquet as pq

    ids = pq.read_table(work / "export" / "records.parquet", columns=["record_id"])
    ids = ids.column("record_id").to_pylist()
    store.close()
    return {"snapshot_s": snapshot_s, "n": snap.n, "export_s": best["export"],
            "plain_copy_s": best["plain"], "same_unordered_copy_s": best["same_unordered"],
            "same_rows_copy_s": best["same"], "reproducible": len(hashes) == 1,
            "sorted": ids == sorted(ids),
            "export_mb": (work / "export" / "records.parquet").stat().st_size / 1e6,
            "rss_mb": _peak_rss_mb()}


def phase_decisions(work: Path, n: int) -> dict:
    import pyarrow as pa

    from corpus.store import Store

    db = work / "import-parquet.duckdb"
    with Store.open(db, command="bench decisions") as store:
        with store.run("bench decisions", {"n": n}) as run, store.transaction() as con:
            ids = con.execute(f"SELECT record_id FROM records LIMIT {n}").to_arrow_table()
            k = ids.num_rows
            steps = ["verdict", "length", "dedup-near", "decontam"]
            table = pa.table({
                "run_id": pa.array([run.run_id] * k),
                "record_id": ids.column("record_id"),
                "step": pa.array([steps[i % 4] for i in range(k)]),
                "passed": pa.array([i % 5 != 0 for i in range(k)]),
                "score": pa.array([(i % 100) / 100 for i in range(k)], pa.float64()),
            })
            con.register("_d", table)
            con.execute("INSERT INTO decisions (run_id, record_id, step, passed, score) "
                        "SELECT * FROM _d")
            con.unregister("_d")
    return {"decisions": k, "rss_mb": _peak_rss_mb()}


def run_phase(args: list[str]) -> dict:
    """Run a phase of this script in a fresh process; returns its JSON line."""
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                         cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"phase {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_command(cmd: list[str], repeat: int) -> tuple[float, float]:
    """(min, median) wall seconds of a command, process start included."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


def heavy_imports(argv: list[str]) -> list[str]:
    """Heavy modules imported by running ``selfevo ARGV`` (in a fresh interpreter)."""
    code = (
        "import sys\nfrom selfevo.cli import cli\n"
        f"try:\n    cli.main({argv!r}, prog_name='selfevo')\nexcept SystemExit:\n    pass\n"
        f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    line = [ln for ln in out.stderr.splitlines() if ln.startswith("HEAVY=")][-1]
    return [m for m in line[len("HEAVY="):].split(",") if m]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=float, default=1e6, help="records (default 1e6)")
    ap.add_argument("--repeat", type=int, default=3, help="timings per measurement")
    ap.add_argument("--work", help="work directory (default: a temp dir, removed after)")
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    args = ap.parse_args()
    n = int(args.n)
    if args.phase:
        work = Path(args.work)
        kind, _, arg = args.phase.partition(":")
        result = {"import": lambda: phase_import(work, arg),
                  "export": lambda: phase_export(work, args.repeat),
                  "decisions": lambda: phase_decisions(work, n)}[kind]()
        print(json.dumps(result))
        return

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="selfevo-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    common = ["--work", str(work), "--n", str(n), "--repeat", str(args.repeat)]
    rows: list[tuple[str, str, str]] = []
    try:
        t = time.perf_counter()
        make_inputs(work, n)
        print(f"inputs: {n} records in {time.perf_counter() - t:.1f}s "
              f"(jsonl {(work / 'records.jsonl').stat().st_size / 1e6:.0f} MB, parquet "
              f"{(work / 'records.parquet').stat().st_size / 1e6:.0f} MB)", flush=True)
        for fmt in ("jsonl", "parquet"):
            r = run_phase(["--phase", f"import:{fmt}", *common])
            rows.append((f"import {fmt} (import_records)",
                         f"{r['records'] / r['seconds']:,.0f} records/s ({r['seconds']:.1f} s)",
                         f"peak RSS {r['rss_mb']:,.0f} MB"))
            print(rows[-1], flush=True)
        e = run_phase(["--phase", "export", *common])
        rows.append(("snapshot create (all records)", f"{e['snapshot_s']:.2f} s", f"n={e['n']}"))
        ex = e["export_s"]
        rows.append(("plain COPY: records + prompt text", f"{e['plain_copy_s']:.2f} s",
                     "no messages, no order, DuckDB defaults"))
        rows.append(("plain COPY: same rows, any order", f"{e['same_unordered_copy_s']:.2f} s",
                     "export columns incl. messages, defaults"))
        rows.append(("plain COPY: same rows, same order", f"{e['same_rows_copy_s']:.2f} s",
                     "export SELECT as is, defaults"))
        rows.append(("snapshot export --format parquet", f"{ex:.2f} s",
                     f"{e['export_mb']:.0f} MB, reproducible={e['reproducible']}, "
                     f"sorted={e['sorted']}"))
        for label, key in (("same rows, same order", "same_rows_copy_s"),
                           ("same rows, any order", "same_unordered_copy_s"),
                           ("records + prompt text", "plain_copy_s")):
            rows.append((f"  ratio export / COPY {label}", f"{ex / e[key]:.2f}x",
                         "goal <= 1.25x" if key == "same_rows_copy_s" else ""))
        rows.append(("export phase peak RSS", f"{e['rss_mb']:,.0f} MB", ""))
        print(rows[-1], flush=True)
        d = run_phase(["--phase", "decisions", *common])
        db = str(work / "import-parquet.duckdb")
        agg = ("SELECT step, passed, count(*) AS n, round(avg(score), 3) AS mean_score "
               "FROM decisions GROUP BY ALL ORDER BY ALL")
        lo, med = time_command([SELFEVO, "sql", "--db", db, agg], args.repeat)
        rows.append((f"selfevo sql aggregate over {d['decisions']:,} decisions",
                     f"{med:.2f} s median ({lo:.2f} min)", "goal < 1 s, process start incl."))
        lo, med = time_command([SELFEVO, "--help"], 5)
        rows.append(("selfevo --help", f"{med:.3f} s median ({lo:.3f} min)",
                     f"heavy imports: {heavy_imports(['--help']) or 'none'}"))
        small = work / "small.duckdb"
        subprocess.run([SELFEVO, "init", "--db", str(small)], check=True, capture_output=True)
        lo, med = time_command([SELFEVO, "sql", "--db", str(small), "select 1"], 5)
        rows.append(('selfevo sql "select 1"', f"{med:.3f} s median ({lo:.3f} min)",
                     "heavy imports: "
                     f"{heavy_imports(['sql', '--db', str(small), 'select 1']) or 'none'}"))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    width = max(len(r[0]) for r in rows)
    print(f"\nstore benchmark, n={n:,} records, {os.cpu_count()} CPUs")
    print(f"{'measure':<{width}} | {'result':<34} | note")
    print(f"{'-' * width}-|-{'-' * 34}-|-----")
    for name, result, note in rows:
        print(f"{name:<{width}} | {result:<34} | {note}")


if __name__ == "__main__":
    main()
