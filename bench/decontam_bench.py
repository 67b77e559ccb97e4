"""Decontamination benchmark.

Two parts (both print a table):

* ``--choose``: why the default n-gram length and overlap threshold. For each n and
  threshold, the share of *planted* GSM8K test questions detected (verbatim, numbers changed,
  numbers as words, case/whitespace noise, embedded in a longer prompt, names swapped) and the
  share of *clean* questions wrongly flagged (GSM8K train questions; generated problems).
* default: ``selfevo curate decontam`` over N synthetic records (generated word problems with
  planted test questions) against GSM8K test, through the real store: wall time, records/s,
  detection rate per planting kind and false positives. Baseline in the same run: the
  "any shared 13-gram" rule (GPT-3 style) on the same records, with no number normalisation.

* ``--filters N``: ``curate filter`` with all seven built-in steps over N records.

Usage:
  flock /tmp/selfevo-bench.lock .venv/bin/python bench/decontam_bench.py --choose
  flock /tmp/selfevo-bench.lock .venv/bin/python bench/decontam_bench.py --n 1000000
  flock /tmp/selfevo-bench.lock .venv/bin/python bench/decontam_bench.py --filters 200000
"""

from __future__ import annotations

import argparse
import json
import random
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from corpus.presets import require_data_file  # noqa: E402
from curation.decontam import BenchmarkIndex, load_benchmark, ngrams  # noqa: E402

WORDS = "zero one two three four five six seven eight nine ten eleven twelve".split()
NAMES = ["Priya", "Tomasz", "Aiyana", "Oluwaseun", "Greta", "Mateo", "Yuki", "Fatima"]


def renumber(q: str, rng: random.Random) -> str:
    """Every number replaced by a different one."""
    return re.sub(r"\d+(?:\.\d+)?", lambda m: str(int(float(m.group()) + rng.randint(1, 9))), q)


def numwords(q: str, rng: random.Random) -> str:
    """Numbers changed, the small ones written as words."""
    def sub(m: re.Match[str]) -> str:
        v = rng.randint(0, 12)
        return WORDS[v] if rng.random() < 0.7 else str(v + 13)
    return re.sub(r"\d+(?:\.\d+)?", sub, q)


def case_ws(q: str, rng: random.Random) -> str:
    """Case flipped and whitespace scrambled (double spaces, line breaks, tabs)."""
    words = q.split(" ")
    out = [w.upper() if rng.random() < 0.2 else w.lower() if rng.random() < 0.5 else w
           for w in words]
    return "  ".join(out[: len(out) // 2]) + "\n\t" + " ".join(out[len(out) // 2:]) + "  "


def embedded(q: str, rng: random.Random) -> str:
    """The question inside a longer prompt."""
    return (f"Solve the following problem carefully and explain each step.\n\nQuestion: {q}\n"
            "Give the final answer after '####'.")


def names(q: str, rng: random.Random) -> str:
    """Capitalised names (not sentence starts) swapped and numbers changed: a light paraphrase."""
    caps = sorted({m.group() for m in re.finditer(r"(?<=[a-z,] )[A-Z][a-z]+", q)})
    for c in caps:
        q = re.sub(rf"\b{c}\b", rng.choice(NAMES), q)
    return renumber(q, rng)


PLANTS = {"verbatim": lambda q, r: q, "renumber": renumber, "numwords": numwords,
          "case_ws": case_ws, "embedded": embedded, "names": names}


def plant(sample: list[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """kind -> [(item_id, disguised text)]; a disguise that changes nothing (no digits to
    renumber, no name to swap) or repeats an earlier kind's text is left out, so every planted
    text is distinct and each kind measures its own disguise."""
    out: dict[str, list[tuple[str, str]]] = {k: [] for k in PLANTS}
    for i, (item_id, q) in enumerate(sample):
        seen = {q}
        for kind, f in PLANTS.items():
            text = f(q, random.Random(i))
            if kind == "verbatim":
                out[kind].append((item_id, text))
            elif text not in seen and not (kind == "names" and text == renumber(
                    q, random.Random(i))):
                out[kind].append((item_id, text))
                seen.add(text)
    return out


def read_questions(path: Path) -> list[str]:
    return [json.loads(line)["question"] for line in path.open()]


def choose(args: argparse.Namespace) -> None:
    """Detection and false-positive rates per n and threshold."""
    _, test, _ = load_benchmark("gsm8k-test", str(require_data_file("gsm8k", "test.jsonl")))
    train = read_questions(require_data_file("gsm8k", "train.jsonl"))
    from corpus.wordproblems import generate_problems

    generated = [p["text"] for p in generate_problems(args.generated, seed=7)]
    rng = random.Random(0)
    sample = rng.sample(test, args.planted)
    planted = {k: [t for _, t in v] for k, v in plant(sample).items()}
    thresholds = [float(t) for t in args.thresholds.split(",")]
    print(f"GSM8K test items {len(test)}; planted per kind (of {args.planted} sampled): "
          + ", ".join(f"{k} {len(v)}" for k, v in planted.items()) + "; clean: "
          f"{len(train)} GSM8K train questions, {len(generated)} generated problems")
    head = ["n", "min_overlap", *PLANTS, "FP train", "FP generated"]
    print(" | ".join(head))
    print(" | ".join("---" for _ in head))
    for n in [int(x) for x in args.ngrams.split(",")]:
        index = BenchmarkIndex.build("gsm8k-test", test, n)
        scores = {k: [index.match(t)[0] for t in v] for k, v in planted.items()}
        fp_train = [index.match(t)[0] for t in train]
        fp_gen = [index.match(t)[0] for t in generated]
        for th in thresholds:
            # th == 0 means "any shared n-gram" (the GPT-3 rule).
            def hit(s: float, th: float = th) -> bool:
                return s > 0 if th == 0 else s >= th
            row = [str(n), "any" if th == 0 else f"{th:g}"]
            row += [f"{100 * sum(map(hit, scores[k])) / len(scores[k]):.1f}%" for k in PLANTS]
            row += [f"{100 * sum(map(hit, fp_train)) / len(fp_train):.2f}%",
                    f"{100 * sum(map(hit, fp_gen)) / len(fp_gen):.2f}%"]
            print(" | ".join(row))
    if args.show_fp:
        index = BenchmarkIndex.build("gsm8k-test", test, args.show_fp)
        texts = dict(test)
        flagged = sorted(((index.match(t), t) for t in train), key=lambda x: -x[0][0])[:8]
        for (cov, d), t in flagged:
            if d:
                print(f"\n{cov:.2f} train: {t[:150]}\n     test {d['item_id']}: "
                      f"{texts[d['item_id']][:150]}")


def corpus_rows(n: int, test: list[tuple[str, str]], per_kind: int, seed: int = 0):
    """n synthetic prompts: generated problems plus per_kind planted test items per kind."""
    from corpus.wordproblems import generate_problems

    rng = random.Random(seed)
    sample = rng.sample(test, per_kind)
    planted = [(k, item_id, t) for k, v in plant(sample).items() for item_id, t in v]
    base = generate_problems(min(n, 20_000), seed=seed)
    rows = []
    for i in range(n - len(planted)):
        # Distinct texts: a generated problem plus a record number (a different "student").
        p = base[i % len(base)]
        rows.append((p["text"] + f" (Problem {i}.)", None, None))
    rows += [(t, k, item_id) for k, item_id, t in planted]
    return rows


def run_store(args: argparse.Namespace) -> None:
    """curate decontam over N records through the store, with the GPT-3 rule as baseline."""
    from corpus.records import insert_prompts, insert_records, make_prompt, make_record
    from corpus.store import Store
    from curation.decontam import decontaminate
    from curation.selection import Selection

    name, test, sha = load_benchmark("gsm8k-test", str(require_data_file("gsm8k", "test.jsonl")))
    rows = corpus_rows(args.n, test, args.per_kind)
    truth = {}
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "bench.duckdb")
        t0 = time.perf_counter()
        with Store.open(db, command="bench") as store, store.run("bench load", {}) as run:
            for start in range(0, len(rows), 100_000):
                batch = rows[start:start + 100_000]
                prompts = [make_prompt(t) for t, _, _ in batch]
                recs = [make_record(prompt_id=p["prompt_id"], kind="self", round=1,
                                    response="#### 1", refinement="#### 1") for p in prompts]
                for r, (_, kind, item) in zip(recs, batch, strict=True):
                    if kind:
                        truth[r["record_id"]] = (kind, item)
                with store.transaction() as con:
                    insert_prompts(con, prompts, run.run_id)
                    insert_records(con, recs, run.run_id)
        load_s = time.perf_counter() - t0
        with Store.open(db, command="bench") as store:
            t0 = time.perf_counter()
            index = BenchmarkIndex.build(name, test, args.ngram)
            index_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            result = decontaminate(store, index, Selection(), min_overlap=args.min_overlap,
                                   index_seconds=index_s)
            wall = time.perf_counter() - t0 + index_s
            flagged = dict(store.query(
                "SELECT record_id, detail->>'item_id' FROM decisions WHERE NOT passed"))
            texts = store.query("SELECT record_id, prompt FROM records_full")
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        # Baseline: any shared 13-gram of plain lower-cased word tokens, same records.
        t0 = time.perf_counter()
        plain = set()
        for _, q in test:
            toks = re.findall(r"\w+", q.lower())
            plain |= ngrams(toks, 13)
        base_flag = {rid for rid, t in texts
                     if ngrams(re.findall(r"\w+", t.lower()), 13) & plain}
        base_s = time.perf_counter() - t0
    kinds = {k: sum(1 for kind, _ in truth.values() if kind == k) for k in PLANTS}
    print("planted: " + ", ".join(f"{k} {n}" for k, n in kinds.items()))
    print(f"records {args.n:,} (load into store {load_s:.1f}s); GSM8K test items {len(test)}; "
          f"n={args.ngram}, min_overlap={args.min_overlap}; peak RSS {rss:,.0f} MB")
    print("method | wall s | records/s | " + " | ".join(PLANTS) + " | false positives")
    print(" | ".join("---" for _ in range(4 + len(PLANTS))))
    for label, secs, got in [("selfevo curate decontam (store, end to end)", wall,
                              set(flagged)),
                             ("selfevo matcher only (normalise + index lookups, in memory)",
                              result.match_seconds + index_s, set(flagged)),
                             ("baseline: any shared 13-gram, no normalisation (in memory)",
                              base_s, base_flag)]:
        rates = []
        for k in PLANTS:
            ids = [rid for rid, (kind, _) in truth.items() if kind == k]
            rates.append(f"{100 * sum(r in got for r in ids) / len(ids):.1f}%")
        fps = len(got - set(truth))
        print(f"{label} | {secs:.1f} | {args.n / secs:,.0f} | " + " | ".join(rates)
              + f" | {fps}")
    wrong_item = sum(1 for rid, (_, item) in truth.items()
                     if rid in flagged and flagged[rid] != item)
    print(f"flagged {result.flagged:,}; planted items matched to the wrong test item: "
          f"{wrong_item}; index {index_s:.2f}s, matching {result.match_seconds:.1f}s")


def run_filters_bench(args: argparse.Namespace) -> None:
    """``curate filter`` with every built-in over N records: per-step time, end-to-end time."""
    from corpus.funnel import run_funnel
    from corpus.records import insert_prompts, insert_records, make_prompt, make_record
    from corpus.store import Store
    from corpus.wordproblems import generate_problems
    from curation.curate import run_filters
    from curation.filters import parse_step
    from curation.selection import Selection

    problems = generate_problems(min(args.filters, 20_000), seed=1)
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "filters.duckdb")
        with Store.open(db, command="bench") as store, store.run("bench load", {}) as run:
            for start in range(0, args.filters, 100_000):
                prompts, recs = [], []
                for i in range(start, min(start + 100_000, args.filters)):
                    p = problems[i % len(problems)]
                    prompt = make_prompt(f"{p['text']} (#{i})", gold_answer=p["gold_answer"])
                    verdict = rng.choice(["correct", "correct", "incorrect", None])
                    prompts.append(prompt)
                    recs.append(make_record(
                        prompt_id=prompt["prompt_id"], kind="self", round=1,
                        response=p["gold_rationale"], verdict=verdict,
                        feedback=f"Checked each step.\nVerdict: {verdict or 'unsure'}",
                        refinement=p["gold_rationale"] if rng.random() < 0.9 else "I'm sorry, but"))
                with store.transaction() as con:
                    insert_prompts(con, prompts, run.run_id)
                    insert_records(con, recs, run.run_id)
        steps = [parse_step(s) for s in ("verdict", "gold-match", "length:max_chars=4000",
                                         "empty", "refusal", "repetition", "format")]
        with Store.open(db, command="bench") as store:
            t0 = time.perf_counter()
            result = run_filters(store, steps, Selection())
            wall = time.perf_counter() - t0
            with store.connection() as con:
                funnel = run_funnel(con, result.run_id)
    checks = sum(result.seconds.values())
    print(f"curate filter, 7 built-in steps, {args.filters:,} records: wall {wall:.1f}s "
          f"({args.filters / wall:,.0f} records/s); checks {checks:.1f}s, store read + "
          f"{7 * args.filters:,} decision rows written {wall - checks:.1f}s; kept {result.kept:,}")
    print("step | seconds | records/s | passed")
    print("--- | --- | --- | ---")
    for r in funnel.rows:
        print(f"{r.step} | {r.seconds:.2f} | {r.checked / max(r.seconds, 1e-9):,.0f} | "
              f"{r.passed:,}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--choose", action="store_true", help="sweep n and threshold")
    ap.add_argument("--ngrams", default="5,6,7,8,10,13")
    ap.add_argument("--thresholds", default="0,0.3,0.5,0.7")
    ap.add_argument("--planted", type=int, default=300)
    ap.add_argument("--generated", type=int, default=10_000)
    ap.add_argument("--show-fp", type=int, default=0, help="print top train overlaps at this n")
    ap.add_argument("--n", type=int, default=1_000_000, help="records in the store run")
    ap.add_argument("--per-kind", type=int, default=200, help="planted items per kind")
    ap.add_argument("--ngram", type=int, default=8)
    ap.add_argument("--min-overlap", type=float, default=0.5)
    ap.add_argument("--filters", type=int, default=0,
                    help="instead: time curate filter (all built-ins) over this many records")
    args = ap.parse_args()
    if args.filters:
        run_filters_bench(args)
    elif args.choose:
        choose(args)
    else:
        run_store(args)


if __name__ == "__main__":
    main()
