"""Near-dedup benchmark: selfevo's vectorised MinHash LSH versus datasketch MinHashLSH.

A synthetic corpus of N texts (60-150 words from a Zipf-weighted vocabulary of 30,000
pseudo-words) with planted near-duplicate clusters: a fraction of the texts are variants of a
base text with a known word 3-gram Jaccard (target levels 0.5 ... 0.95, exact value computed
and recorded). Ground truth = planted pairs whose true Jaccard >= threshold (a predicted pair
outside the planted ones is checked with its true Jaccard too).

Each measurement runs in its own subprocess so peak RSS (psutil, sampled every 20 ms during
the call) belongs to that run alone. selfevo: ``curation.dedup.near_duplicates`` (the
library function, everything from raw text to verified pairs). datasketch: the same
shingles (word 3-grams of the same tokens), num_perm, threshold (hence the same b and r),
MinHash + MinHashLSH insert + query, on a subsample corpus of ``--datasketch-n`` texts
(same generator), its time extrapolated linearly to N (per-text cost of insert/query is
constant). ``--cli-n`` also times ``selfevo curate dedup --near`` end to end on a store.

Run (one core's worth of contention from other users is normal here; compare ratios):

    flock /tmp/selfevo-bench.lock .venv/bin/python bench/dedup_bench.py \\
        --sizes 100000,300000 --datasketch-n 20000 --cli-n 100000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

LEVELS = (0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.9, 0.95)


# -- corpus -------------------------------------------------------------------------------


def vocabulary(rng: np.random.Generator, size: int = 30_000) -> tuple[np.ndarray, np.ndarray]:
    """Pseudo-words from syllables and Zipf-like sampling weights."""
    syll = np.array([c + v for c in "bcdfghjklmnprstvz" for v in "aeiou"])
    words: set[str] = set()
    while len(words) < size:
        k = rng.integers(1, 4)
        words.add("".join(rng.choice(syll, k)))
    vocab = np.array(sorted(words))
    rng.shuffle(vocab)
    weights = 1.0 / (np.arange(size) + 10.0)
    return vocab, weights / weights.sum()


def shingle_set(words: list[str], ngram: int) -> set[tuple[str, ...]]:
    """Independent reference: word n-gram set (a short text is one shingle)."""
    if len(words) < ngram:
        return {tuple(words)} if words else set()
    return {tuple(words[i: i + ngram]) for i in range(len(words) - ngram + 1)}


def jaccard(a: set, b: set) -> float:
    """Exact Jaccard of two sets."""
    return len(a & b) / len(a | b) if a or b else 0.0


def make_corpus(n: int, *, seed: int, dup_frac: float, ngram: int):  # type: ignore[no-untyped-def]
    """``(texts as a polars Series, planted pairs {(i, j): true Jaccard})``, built in chunks."""
    import polars as pl

    rng = np.random.default_rng(seed)
    vocab, weights = vocabulary(np.random.default_rng(0))
    cdf = np.cumsum(weights)
    chunks: list[pl.Series] = []
    buf: list[str] = []
    planted: dict[tuple[int, int], float] = {}
    i = 0
    while i < n:
        length = int(rng.integers(60, 151))
        base = vocab[np.searchsorted(cdf, rng.random(length))].tolist()
        if rng.random() < dup_frac / 3.5:  # clusters of 2-5 (mean 3.5 texts)
            size = min(int(rng.integers(2, 6)), n - i)
            members = [base]
            for _ in range(size - 1):
                target = LEVELS[rng.integers(len(LEVELS))]
                s = max(length - ngram + 1, 1)
                m = max(1, round(s * (1 - target) / (ngram * (1 + target))))
                variant = list(base)
                for p in rng.choice(length, min(m, length), replace=False):
                    variant[p] = vocab[np.searchsorted(cdf, rng.random())]
                members.append(variant)
            sets = [shingle_set(w, ngram) for w in members]
            for a in range(size):
                for b in range(a + 1, size):
                    planted[(i + a, i + b)] = jaccard(sets[a], sets[b])
            buf.extend(" ".join(w) for w in members)
            i += size
        else:
            buf.append(" ".join(base))
            i += 1
        if len(buf) >= 50_000:
            chunks.append(pl.Series("text", buf, dtype=pl.String))
            buf = []
    if buf:
        chunks.append(pl.Series("text", buf, dtype=pl.String))
    texts = pl.concat(chunks, rechunk=True)
    return texts, planted


def score(pairs: set[tuple[int, int]], planted: dict[tuple[int, int], float], texts,  # type: ignore[no-untyped-def]
          threshold: float, ngram: int) -> dict[str, float]:
    """Precision, recall and F1 of predicted pairs against the true-Jaccard ground truth."""
    truth = {p for p, j in planted.items() if j >= threshold}
    tp = len(pairs & truth)
    extra_true = 0
    for i, j in pairs - set(planted):  # unplanted: judge by true Jaccard
        wi = re.findall(r"\w+", texts[i].lower())
        wj = re.findall(r"\w+", texts[j].lower())
        if jaccard(shingle_set(wi, ngram), shingle_set(wj, ngram)) >= threshold:
            extra_true += 1
    tp_all = tp + extra_true
    precision = tp_all / len(pairs) if pairs else 1.0
    recall = tp / len(truth) if truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"pairs": len(pairs), "true_pairs": len(truth), "precision": precision,
            "recall": recall, "f1": f1, "unplanted_true": extra_true}


# -- measurement --------------------------------------------------------------------------


class PeakRSS:
    """Samples this process's RSS every 20 ms in a thread; ``peak`` in bytes."""

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def worker_selfevo(args: argparse.Namespace) -> dict:
    """Time the library function on a corpus of ``args.n`` texts."""
    import psutil

    from curation.dedup import near_duplicates

    texts, planted = make_corpus(args.n, seed=args.seed, dup_frac=args.dup_frac,
                                 ngram=args.ngram)
    rss_before = psutil.Process().memory_info().rss
    cpu0, t0 = time.process_time(), time.perf_counter()
    with PeakRSS() as mem:
        res = near_duplicates(texts, threshold=args.threshold, num_perm=args.num_perm,
                              ngram=args.ngram, fn_weight=args.fn_weight)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    pairs = set(zip(res.left.tolist(), res.right.tolist(), strict=True))
    out = {"engine": "selfevo", "n": args.n, "wall": wall, "cpu": cpu, "peak_rss": mem.peak,
           "rss_before": rss_before, "candidates": res.candidates, "bands": res.bands,
           "rows": res.rows, "timings": res.timings}
    out.update(score(pairs, planted, texts, args.threshold, args.ngram))
    return out


def worker_datasketch(args: argparse.Namespace) -> dict:
    """Time datasketch MinHash + MinHashLSH (insert all, query all) on the same shingles."""
    import psutil
    from datasketch import MinHash, MinHashLSH

    texts, planted = make_corpus(args.n, seed=args.seed, dup_frac=args.dup_frac,
                                 ngram=args.ngram)
    texts_list = texts.to_list()
    rss_before = psutil.Process().memory_info().rss
    cpu0, t0 = time.process_time(), time.perf_counter()
    with PeakRSS() as mem:
        lsh = MinHashLSH(threshold=args.threshold, num_perm=args.num_perm,
                         weights=(1 - args.fn_weight, args.fn_weight))
        sigs = []
        for k, text in enumerate(texts_list):
            words = re.findall(r"\w+", text.lower())
            m = MinHash(num_perm=args.num_perm, seed=1)
            m.update_batch([" ".join(s).encode() for s in shingle_set(words, args.ngram)])
            lsh.insert(k, m)
            sigs.append(m)
        raw: set[tuple[int, int]] = set()
        for k, m in enumerate(sigs):
            for other in lsh.query(m):
                if other != k:
                    raw.add((min(k, other), max(k, other)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    t1 = time.perf_counter()
    est = {(i, j) for i, j in raw if sigs[i].jaccard(sigs[j]) >= args.threshold}
    est_wall = time.perf_counter() - t1
    out = {"engine": "datasketch", "n": args.n, "wall": wall, "cpu": cpu,
           "peak_rss": mem.peak, "rss_before": rss_before, "candidates": len(raw),
           "bands": lsh.b, "rows": lsh.r, "est_filter_wall": est_wall}
    out.update(score(raw, planted, texts, args.threshold, args.ngram))
    out["est"] = score(est, planted, texts, args.threshold, args.ngram)
    return out


def worker_cli(args: argparse.Namespace) -> dict:
    """Load the corpus into a store as responses and time ``selfevo curate dedup --near``."""
    import resource

    from corpus.records import insert_prompts, insert_records, make_prompt, make_record
    from corpus.store import Store

    texts, _ = make_corpus(args.n, seed=args.seed, dup_frac=args.dup_frac, ngram=args.ngram)
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "bench.duckdb")
        p = make_prompt("bench prompt")
        with Store.open(db) as store, store.run("bench setup", {}) as run:
            with store.transaction() as con:
                insert_prompts(con, [p], run.run_id)
            for s in range(0, args.n, 50_000):
                recs = [make_record(prompt_id=p["prompt_id"], kind="self", response=t)
                        for t in texts.slice(s, 50_000).to_list()]
                with store.transaction() as con:
                    insert_records(con, recs, run.run_id)
        del texts
        cmd = [str(REPO / ".venv/bin/selfevo"), "curate", "dedup", "--db", db, "--near",
               "--field", "response", "--threshold", str(args.threshold),
               "--num-perm", str(args.num_perm), "--ngram", str(args.ngram),
               "--fn-weight", str(args.fn_weight)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    kept = re.search(r"kept ([\d,]+) of ([\d,]+)", proc.stdout)
    return {"engine": "selfevo CLI", "n": args.n, "wall": wall, "peak_rss": peak,
            "kept": kept.group(1) if kept else "?", "stdout_tail": proc.stdout[-400:]}


WORKERS = {"selfevo": worker_selfevo, "datasketch": worker_datasketch, "cli": worker_cli}


def spawn(kind: str, n: int, args: argparse.Namespace, fn_weight: float | None = None) -> dict:
    """Run one worker in a fresh interpreter and return its JSON result."""
    fnw = args.fn_weight if fn_weight is None else fn_weight
    cmd = [sys.executable, __file__, "--worker", kind, "--n", str(n), "--fn-weight", str(fnw),
           "--threshold", str(args.threshold), "--num-perm", str(args.num_perm),
           "--ngram", str(args.ngram), "--seed", str(args.seed), "--dup-frac", str(args.dup_frac)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ,
                          "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"worker {kind} n={n} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  done: {kind} n={n:,} fn_weight={fnw} wall={result['wall']:.1f}s",
          file=sys.stderr, flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,300000", help="Corpus sizes for selfevo.")
    ap.add_argument("--datasketch-n", type=int, default=20_000,
                    help="Corpus size datasketch runs on (extrapolated linearly).")
    ap.add_argument("--cli-n", type=int, default=0, help="Also time the CLI at this size.")
    ap.add_argument("--threshold", type=float, default=0.7)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--ngram", type=int, default=3)
    ap.add_argument("--fn-weight", type=float, default=0.8,
                    help="LSH b/r choice weight of false negatives (both tools use it).")
    ap.add_argument("--dup-frac", type=float, default=0.2,
                    help="Fraction of texts that belong to planted clusters.")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return

    sizes = [int(s) for s in args.sizes.split(",") if s]
    ds = spawn("datasketch", args.datasketch_n, args)
    ds_default = spawn("datasketch", args.datasketch_n, args, fn_weight=0.5)
    same = spawn("selfevo", args.datasketch_n, args)
    same_default = spawn("selfevo", args.datasketch_n, args, fn_weight=0.5)
    results = [same] + [spawn("selfevo", n, args) for n in sizes if n != args.datasketch_n]
    cli = spawn("cli", args.cli_n, args) if args.cli_n else None

    mb = 1024 * 1024
    print(f"\nnear dedup: threshold {args.threshold}, num_perm {args.num_perm}, word "
          f"{args.ngram}-grams, {args.dup_frac:.0%} of texts in planted clusters; "
          f"fn_weight {args.fn_weight}: b={same['bands']} r={same['rows']} (datasketch "
          f"b={ds['bands']} r={ds['rows']}); fn_weight 0.5 (datasketch's default): "
          f"b={ds_default['bands']} r={ds_default['rows']}\n")
    head = (f"{'engine':<26}{'N':>10}{'wall s':>9}{'cpu s':>8}{'us/text':>9}{'peak RSS MB':>13}"
            f"{'candidates':>12}{'pairs':>9}{'P':>7}{'R':>7}{'F1':>7}")
    print(head)
    print("-" * len(head))

    def row(name: str, r: dict, s: dict | None = None) -> None:
        s = s or r
        print(f"{name:<26}{r['n']:>10,}{r['wall']:>9.1f}{r.get('cpu', float('nan')):>8.1f}"
              f"{1e6 * r['wall'] / r['n']:>9.1f}{r['peak_rss'] / mb:>13,.0f}"
              f"{r.get('candidates', 0):>12,}{s.get('pairs', 0):>9,}{s.get('precision', 0):>7.3f}"
              f"{s.get('recall', 0):>7.3f}{s.get('f1', 0):>7.3f}")

    row("datasketch w=.5 (cand.)", ds_default)
    row("datasketch w=.5 (+est J)", ds_default, ds_default["est"])
    row("selfevo w=.5", same_default)
    row(f"datasketch w={args.fn_weight} (cand.)", ds)
    row(f"datasketch w={args.fn_weight} (+est J)", ds, ds["est"])
    for r in results:
        row(f"selfevo w={args.fn_weight}", r)
    if cli:
        print(f"{'selfevo curate dedup CLI':<26}{cli['n']:>10,}{cli['wall']:>9.1f}{'':>8}"
              f"{1e6 * cli['wall'] / cli['n']:>9.1f}{cli['peak_rss'] / mb:>13,.0f}"
              f"   kept {cli['kept']}")
    per_text_ds, cpu_ds = ds["wall"] / ds["n"], ds["cpu"] / ds["n"]
    print(f"\nspeed-up vs datasketch with the same b/r (fn_weight {args.fn_weight}), datasketch "
          f"extrapolated linearly from {ds['n']:,} texts ({1e6 * per_text_ds:.0f} us/text "
          f"wall, {1e6 * cpu_ds:.0f} us/text CPU):")
    for r in results:
        print(f"  N={r['n']:>9,}: datasketch ~{per_text_ds * r['n']:,.0f} s vs selfevo "
              f"{r['wall']:.1f} s -> {per_text_ds * r['n'] / r['wall']:.1f}x wall, "
              f"{cpu_ds * r['n'] / r['cpu']:.1f}x CPU; phases "
              + ", ".join(f"{k} {v:.1f}s" for k, v in r["timings"].items()))
    print("true pairs at the datasketch size:", ds["true_pairs"], "| selfevo",
          same["true_pairs"])


if __name__ == "__main__":
    main()
