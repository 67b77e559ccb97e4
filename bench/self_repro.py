"""A small-scale SELF replication on CPU (results in docs/experiments.md).

SmolLM2-135M-Instruct; generated word problems (train for the meta-skill corpus, held-out
test); GSM8K train questions as the unlabeled self-evolution pool; base → meta-skill
(reference teacher) → self-evolution rounds (verdict filter, restart); accuracy on the
held-out generated problems and a GSM8K test subset, direct and with self-refinement, with
95% Wilson intervals, plus the filter funnel of every round. Whatever it shows is reported.

    make experiment                                     # docs/experiments.md run 3, ~35 min
    python bench/self_repro.py --out /tmp/sr --quick                 # tiny model, a minute
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/out/self-repro")
    ap.add_argument("--quick", action="store_true", help="tiny random model, tiny sizes")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--n-train", type=int, default=48)
    ap.add_argument("--per-round", type=int, default=32, help="GSM8K pool prompts per round")
    ap.add_argument("--n-test", type=int, default=24, help="held-out generated problems")
    ap.add_argument("--gsm8k-test", type=int, default=24, help="GSM8K test items")
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--steps", type=int, default=12, help="LoRA steps per round's training")
    ap.add_argument("--meta-steps", type=int, help="LoRA steps on the meta-skill snapshot "
                    "(default: --steps)")
    ap.add_argument("--lr", type=float, default=3e-4, help="LoRA learning rate")
    ap.add_argument("--correct-meta", action="store_true",
                    help="also grade each gold rationale as an answer (verdict correct), so the "
                    "meta-skill corpus holds both verdicts")
    args = ap.parse_args()

    from corpus.importers import import_prompts
    from corpus.presets import require_data_file
    from corpus.store import Store
    from selfevo.evaluate import evaluate, load_items
    from selfevo.pipeline import TEST, Pipeline, PipelineConfig

    gsm8k_train = require_data_file("gsm8k", "train.jsonl")
    gsm8k_test = require_data_file("gsm8k", "test.jsonl")
    quick = args.quick
    cfg = PipelineConfig(
        out=Path(args.out), model="tiny" if quick else "smollm2-135m",
        n_train=8 if quick else args.n_train, n_pool=0,
        n_test=6 if quick else args.n_test,
        pool_where="source = 'gsm8k' AND split = 'train'",
        prompts_per_round=4 if quick else args.per_round, rounds=args.rounds,
        max_tokens=16 if quick else args.max_tokens,
        meta_steps=2 if quick else (args.meta_steps or args.steps),
        round_steps=2 if quick else args.steps,
        evals=[f"gsm8k:{gsm8k_test}"], eval_limit=6 if quick else None)
    cfg.train = {**cfg.train, "lr": args.lr}
    cfg.correct_meta = args.correct_meta
    # One limit for both benchmarks: the held-out generated set and the GSM8K subset.
    cfg.eval_limit = cfg.eval_limit or max(args.n_test, args.gsm8k_test)
    p = Pipeline(cfg)
    t0 = time.monotonic()
    cfg.out.mkdir(parents=True, exist_ok=True)
    base = p.step("base model", p.base_model)
    p.step("prompts", p.prompts)
    with Store.open(p.db, command="self_repro") as store:
        import_prompts(store, gsm8k_train, preset="gsm8k", split="train", source="gsm8k")
    # The base model's accuracy, before any meta-skill training (round -1 in the tables).
    from generation.backends import load_backend

    def base_eval() -> None:
        backend = load_backend(f"hf:{base}")
        try:
            with Store.open(p.db, command="self_repro") as store:
                if store.query("SELECT count(*) FROM evals WHERE model = ?",
                               [backend.spec])[0][0]:
                    return
                for bench, path, where in (("store", None, TEST),
                                           ("gsm8k", str(gsm8k_test), None)):
                    _, items = load_items(bench, path=path, where=where, store=store,
                                          limit=cfg.eval_limit)
                    evaluate(store, backend, items, benchmark=bench if bench == "gsm8k" else
                             f"store:{TEST}", modes=("direct", "refine"), round=-1,
                             params={"temperature": 0.0, "max_tokens": cfg.max_tokens})
        finally:
            backend.close()

    p.step("base eval", base_eval)
    p.step("collect", lambda: p.collect(base))
    p.step("curate", p.curate)
    export = p.step("meta snapshot", p.meta_snapshot)
    student = p.step("meta training", lambda: p.train_meta(base, export))
    p.step("self-evolution", lambda: p.evolve(base, student))
    p.step("report", p.report)
    print_tables(p.db)
    print(f"\ntotal {time.monotonic() - t0:.0f}s; steps: {json.dumps(p.result.seconds)}")


def print_tables(db: str) -> None:
    """Accuracy per round and benchmark, and the filter funnel per round."""
    from corpus.store import Store

    s = Store.open_readonly(db)
    rows = s.query(
        "SELECT CAST(json_extract(config, '$.round') AS INT) AS r, benchmark, mode, n, correct,"
        " accuracy, ci_low, ci_high FROM evals ORDER BY benchmark, r, mode")
    print("\n| round | model | benchmark | mode | n | accuracy | 95% CI |\n|---|---|---|---|---|---|---|")
    names = {-1: "base", 0: "meta-skill"}
    for r, bench, mode, n, correct, acc, lo, hi in rows:
        print(f"| {r} | {names.get(r, f'after round {r}')} | {bench} | {mode} | {n} | "
              f"{acc:.1%} ({correct}) | [{lo:.1%}, {hi:.1%}] |")
    funnel = s.query(
        "SELECT r.round, count(*) AS records, count(*) FILTER (WHERE r.verdict = 'correct') "
        "AS self_correct, count(*) FILTER (WHERE r.verdict IS NULL) AS unparsed, "
        "count(*) FILTER (WHERE d.passed) AS kept, "
        "count(*) FILTER (WHERE d.passed AND p.gold_answer IS NOT NULL) AS kept_labelled "
        "FROM records r JOIN prompts p USING (prompt_id) "
        "LEFT JOIN latest_decisions d ON d.record_id = r.record_id AND d.step = 'verdict' "
        "WHERE r.kind = 'self' GROUP BY 1 ORDER BY 1")
    print("\n| round | self records | self-verdict correct | unparsed | kept |\n|---|---|---|---|---|")
    for rnd, n, correct, unparsed, kept, _ in funnel:
        print(f"| {rnd} | {n} | {correct} | {unparsed} | {kept} |")
    # How good is the self-verdict? The pool is GSM8K train, so the gold answer is known.
    from curation.answers import answers_match, extract_answer

    rows = s.query_dicts(
        "SELECT r.round, r.response, r.refinement, r.verdict, p.gold_answer, d.passed "
        "FROM records r JOIN prompts p USING (prompt_id) LEFT JOIN latest_decisions d "
        "ON d.record_id = r.record_id AND d.step = 'verdict' "
        "WHERE r.kind = 'self' AND p.gold_answer IS NOT NULL")
    print("\n| round | answers right (gold) | refinements right | self-verdict accuracy "
          "| kept that are right |\n|---|---|---|---|---|")
    for rnd in sorted({r["round"] for r in rows}):
        rs = [r for r in rows if r["round"] == rnd]

        def right(text: str | None, gold: str) -> bool:
            pred = extract_answer(text or "")
            return pred is not None and answers_match(pred, gold)

        ans = [right(r["response"], r["gold_answer"]) for r in rs]
        ref = [right(r["refinement"], r["gold_answer"]) for r in rs]
        parsed = [(r, a) for r, a in zip(rs, ans, strict=True) if r["verdict"] is not None]
        verdict_ok = [(r["verdict"] == "correct") == a for r, a in parsed]
        kept = [f for r, f in zip(rs, ref, strict=True) if r["passed"]]
        print(f"| {rnd} | {sum(ans)}/{len(rs)} | {sum(ref)}/{len(rs)} | "
              f"{sum(verdict_ok)}/{len(parsed)} parsed | {sum(kept)}/{len(kept)} |")


if __name__ == "__main__":
    main()
