"""How long `selfevo report` takes on a large store, per section and for the template.

Builds a store of N meta records (with gold answers) and 2N decisions (a verdict filter and a
near-dedup step with clusters), then renders the report twice in the same run: with the
verdict-agreement sample cap (the default) and without it (every record scored: the
baseline). Prints seconds per section and the total.

    flock /tmp/selfevo-bench.lock .venv/bin/python bench/report_bench.py --n 100000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from corpus.decisions import insert_decisions
from corpus.records import insert_prompts, insert_records, make_prompt, make_record
from corpus.store import Store


def build(db: Path, n: int) -> None:
    """N labelled prompts with one meta record each, a verdict step and a dedup step."""
    prompts = [make_prompt(f"Q{i}: what is {i} + {i % 7}?", gold_answer=str(i + i % 7),
                           source="generated", split="train") for i in range(n)]
    recs = [make_record(
        prompt_id=p["prompt_id"], kind="meta",
        response=f"{i} + {i % 7} = {i + i % 7 + (i % 5 == 0)}. The answer is "
                 f"{i + i % 7 + (i % 5 == 0)}.",
        feedback="Checked.\nVerdict: " + ("correct" if i % 3 else "incorrect"),
        verdict="correct" if i % 3 else "incorrect",
        refinement=f"{i} + {i % 7} = {i + i % 7}. The answer is {i + i % 7}.",
        teacher="reference") for i, p in enumerate(prompts)]
    with Store.open(db) as store:
        with store.run("import", {}) as run, store.transaction() as con:
            insert_prompts(con, prompts, run.run_id)
            insert_records(con, recs, run.run_id)
        with store.run("curate filter", {}) as run, store.transaction() as con:
            insert_decisions(con, [{"record_id": r["record_id"], "passed": r["verdict"] ==
                                    "correct"} for r in recs], run_id=run.run_id, step="verdict")
            insert_decisions(con, [{"record_id": r["record_id"], "passed": i % 10 != 0,
                                    "detail": {"cluster": recs[i - i % 10]["record_id"],
                                               "cluster_size": 10}}
                                   for i, r in enumerate(recs)],
                             run_id=run.run_id, step="dedup-near")


def timed_sections(db: Path) -> dict[str, float]:
    """Seconds per report section (one read-only connection, as render_report does), and
    of rendering the template over what they gathered."""
    from selfevo import report

    out, sections = {}, []
    with Store.open_readonly(db) as store, store.connection():
        for sid, heading in report.SECTIONS:
            t = time.perf_counter()
            data = report.GATHERERS[sid](store)
            out[sid] = time.perf_counter() - t
            sections.append({"id": sid, "heading": heading, "data": data, "error": None})
    t = time.perf_counter()
    report.render_page(sections, store_path=db)
    out["template"] = time.perf_counter() - t
    return out


def main() -> None:
    """Build the store, time both variants, print the table."""
    from selfevo import report

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.duckdb"
        t = time.perf_counter()
        build(db, args.n)
        print(f"built {args.n:,} records + {2 * args.n:,} decisions in "
              f"{time.perf_counter() - t:.1f}s")
        sampled = timed_sections(db)
        cap = report.AGREEMENT_LIMIT
        report.AGREEMENT_LIMIT = 10**12  # baseline: score every record
        full = timed_sections(db)
        report.AGREEMENT_LIMIT = cap
    print(f"\n{'section':<12} {'all records (s)':>16} {'sampled (s)':>12}")
    for sid in full:
        print(f"{sid:<12} {full[sid]:>16.2f} {sampled[sid]:>12.2f}")
    tf, ts = sum(full.values()), sum(sampled.values())
    print(f"{'total':<12} {tf:>16.2f} {ts:>12.2f}   speed-up {tf / ts:.1f}x")


if __name__ == "__main__":
    main()
