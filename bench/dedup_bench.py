"""Near-dedup benchmark: selfevo's vectorised MinHash LSH versus datasketch at its best.

A synthetic corpus of N texts (60-150 words from a Zipf-weighted vocabulary of 30,000
pseudo-words) with planted near-duplicate clusters: a fraction of the texts are variants of a
base text with a known word 3-gram Jaccard (target levels 0.5 ... 0.95, exact value computed
and recorded). Ground truth = planted pairs whose true Jaccard >= threshold (a predicted pair
outside the planted ones is judged by its true Jaccard too).

Contenders, all at the same threshold, num_perm and LSH bands/rows (both tools choose b and r
with the same rule and the same weights; the bench checks they agree):

* ``selfevo``: ``curation.dedup.near_duplicates`` (the library function behind ``selfevo
  curate dedup --near``), polars Series of texts in, verified pairs out, with its defaults
  (one thread per CPU, at most 4, for the chunked signature and verification passes).
* ``selfevo, 1 thread``: the same with ``workers=1`` and ``POLARS_MAX_THREADS=1``: the
  per-core comparison with datasketch, which is single-threaded.
* ``datasketch``: datasketch's fastest documented path. ``MinHash.generator`` (one MinHash
  initialised, copied per text: no per-text permutation set-up) with an xxhash
  ``hashfunc`` (``xxh32_intdigest``, instead of the default SHA1), ``MinHashLSH.insert`` with
  ``check_duplication=False``, and the candidate pairs listed once from the LSH band buckets
  (``lsh.hashtables``) instead of one ``query`` per text. Its pairs are the LSH candidates.
* ``datasketch + MinHash estimate``: the same, candidates kept when the MinHash Jaccard
  estimate (``MinHash.jaccard``'s share of equal minima) is >= threshold (datasketch's own
  post-filter; the filter's time is added to the same process's LSH time).
* ``datasketch + exact verification``: the same LSH path, then the shingle sets of the
  texts that have a candidate rebuilt and each candidate kept when its exact Jaccard (Python
  set operations) is >= threshold: the verification selfevo does.
* ``datasketch, Python GC off``: the first path with Python's cyclic garbage collector
  disabled while it runs. Not in datasketch's docs, but the index holds millions of small
  sets that every full collection walks; shown so the best case of the peer is on the table.

Timing boundaries are identical: each timer starts from the texts in the tool's own input
container (a polars Series for selfevo, a Python list of str for datasketch; the corpus is
built before) and stops at the final pairs, so tokenising (lowercase, ``\\w+`` words) and
word ``ngram`` shingling are INCLUDED on both sides. Each measurement is its own process
(peak RSS sampled every 20 ms during the call is that run's alone); contenders are
interleaved (A B C A B C ...) over ``--repeat`` rounds and the table gives the median and
the range of each, each speed-up as the median of the per-round ratios (wall time against
selfevo and against selfevo on 1 thread, CPU time against selfevo), and the 1-minute load
average seen before each run. ``--f1-seeds K`` also scores F1 (untimed) over MinHash seeds
1..K for selfevo and datasketch + exact verification: with the same b, r and verification,
their F1 differs only by which hash family lets a pair meet. ``--cli-n`` also times ``selfevo curate dedup --near``
end to end on a store. Everything temporary lives under one folder, removed at the end.

Run (the machine is shared: compare ratios, look at the load column):

    flock /tmp/selfevo-bench.lock .venv/bin/python bench/dedup_bench.py \\
        --sizes 100000,20000 --repeat 3 --f1-seeds 10
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import re
import resource
import shutil
import statistics
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


def _timed(fn):  # type: ignore[no-untyped-def]
    """``(result, wall s, CPU s, peak RSS bytes)`` of ``fn()``."""
    cpu0, t0 = time.process_time(), time.perf_counter()
    with PeakRSS() as mem:
        result = fn()
    return result, time.perf_counter() - t0, time.process_time() - cpu0, mem.peak


def worker_selfevo(args: argparse.Namespace) -> dict:
    """Time the library function on a corpus of ``args.n`` texts."""
    from curation.dedup import near_duplicates

    texts, planted = make_corpus(args.n, seed=args.seed, dup_frac=args.dup_frac,
                                 ngram=args.ngram)
    one = args.worker == "selfevo-1-thread"
    res, wall, cpu, peak = _timed(lambda: near_duplicates(
        texts, threshold=args.threshold, num_perm=args.num_perm, ngram=args.ngram,
        fn_weight=args.fn_weight, workers=1 if one else None))
    pairs = set(zip(res.left.tolist(), res.right.tolist(), strict=True))
    out = {"wall": wall, "cpu": cpu, "peak_rss": peak, "candidates": res.candidates,
           "bands": res.bands, "rows": res.rows, "timings": res.timings}
    out.update(score(pairs, planted, texts, args.threshold, args.ngram))
    return {"selfevo, 1 thread" if one else "selfevo": out}


def datasketch_shingles(text: str, ngram: int) -> list[bytes]:
    """Word ``ngram``-shingles of a text as bytes (a short text is one shingle), as a
    datasketch user writes it: str regex (Unicode ``\\w`` like selfevo), zip, join, encode
    (the fastest of the variants measured)."""
    words = _WORD.findall(text.lower())
    if len(words) < ngram:
        return [" ".join(words).encode()] if words else []
    grams = zip(*(words[k:] for k in range(ngram)), strict=False)  # stops at the shortest
    return list(map(str.encode, map(" ".join, grams)))


_WORD = re.compile(r"\w+")


def datasketch_lsh(texts: list[str], args: argparse.Namespace,  # type: ignore[no-untyped-def]
                   hash_seed: int = 1):
    """datasketch's fastest documented path: ``(lsh, signatures, candidate pairs)``."""
    from datasketch import MinHash, MinHashLSH
    from xxhash import xxh32_intdigest

    lsh = MinHashLSH(threshold=args.threshold, num_perm=args.num_perm,
                     weights=(1 - args.fn_weight, args.fn_weight))
    shingles = (datasketch_shingles(t, args.ngram) for t in texts)
    signatures = []  # hash value arrays only (no MinHash objects kept alive)
    gen = MinHash.generator(shingles, num_perm=args.num_perm, hashfunc=xxh32_intdigest,
                            seed=hash_seed)
    for key, m in enumerate(gen):
        lsh.insert(key, m, check_duplication=False)
        signatures.append(m.hashvalues)
    candidates: set[tuple[int, int]] = set()
    for table in lsh.hashtables:  # every bucket once, instead of a query per text
        for bucket in table.keys():
            members = table.get(bucket)
            if len(members) > 1:
                candidates.update(itertools.combinations(sorted(members), 2))
    return lsh, signatures, candidates


def _gc_off(fn, off: bool):  # type: ignore[no-untyped-def]
    """``fn`` with Python's cyclic garbage collector disabled while it runs (when ``off``)."""
    def run():  # type: ignore[no-untyped-def]
        if not off:
            return fn()
        gc.disable()
        try:
            return fn()
        finally:
            gc.enable()
    return run


def worker_datasketch(args: argparse.Namespace) -> dict:
    """datasketch best path (LSH candidates), then + MinHash-estimate filter (timed apart)."""
    texts, planted = make_corpus(args.n, seed=args.seed, dup_frac=args.dup_frac,
                                 ngram=args.ngram)
    texts_list = texts.to_list()
    off = args.worker == "datasketch-gc-off"
    (lsh, sigs, cand), wall, cpu, peak = _timed(
        _gc_off(lambda: datasketch_lsh(texts_list, args), off))
    base = {"peak_rss": peak, "candidates": len(cand), "bands": lsh.b, "rows": lsh.r}
    lsh_row = {**base, "wall": wall, "cpu": cpu, **score(cand, planted, texts, args.threshold,
                                                          args.ngram)}
    if off:
        return {"datasketch, Python GC off (not in its docs)": lsh_row}
    # MinHash.jaccard's formula on the kept hash values: the share of equal minima.
    est, est_wall, est_cpu, _ = _timed(lambda: {
        (i, j) for i, j in cand
        if np.count_nonzero(sigs[i] == sigs[j]) / args.num_perm >= args.threshold})
    est_row = {**base, "wall": wall + est_wall, "cpu": cpu + est_cpu,
               **score(est, planted, texts, args.threshold, args.ngram)}
    return {"datasketch": lsh_row, "datasketch + MinHash estimate": est_row}


def worker_datasketch_verified(args: argparse.Namespace) -> dict:
    """datasketch best path + exact Jaccard of shingle sets for every candidate pair
    (sets rebuilt for the texts that have a candidate, as selfevo does: keeping every
    text's set measured slower and 2.3x the memory)."""
    texts, planted = make_corpus(args.n, seed=args.seed, dup_frac=args.dup_frac,
                                 ngram=args.ngram)
    texts_list = texts.to_list()

    def run():  # type: ignore[no-untyped-def]
        lsh, _, cand = datasketch_lsh(texts_list, args)
        return lsh, cand, exact_verification(texts_list, cand, args)

    (lsh, cand, pairs), wall, cpu, peak = _timed(run)
    out = {"wall": wall, "cpu": cpu, "peak_rss": peak, "candidates": len(cand),
           "bands": lsh.b, "rows": lsh.r}
    out.update(score(pairs, planted, texts, args.threshold, args.ngram))
    return {"datasketch + exact verification": out}


def exact_verification(texts: list[str], cand: set[tuple[int, int]],
                       args: argparse.Namespace) -> set[tuple[int, int]]:
    """The candidates whose exact shingle-set Jaccard is >= threshold (Python sets)."""
    involved = {i for pair in cand for i in pair}
    sets = {i: set(datasketch_shingles(texts[i], args.ngram)) for i in involved}
    return {(i, j) for i, j in cand
            if len(sets[i] & sets[j]) >= args.threshold * len(sets[i] | sets[j])}


def worker_f1_seeds(args: argparse.Namespace) -> dict:
    """F1 of selfevo and of datasketch + exact verification for MinHash seeds
    ``1..args.f1_seeds`` (untimed): both verify exactly and use the same b and r, so their
    F1 differs only by which pairs each hash family lets meet in a band."""
    from curation.dedup import near_duplicates

    texts, planted = make_corpus(args.n, seed=args.seed, dup_frac=args.dup_frac,
                                 ngram=args.ngram)
    texts_list = texts.to_list()
    f1: dict[str, list[float]] = {"selfevo": [], "datasketch + exact verification": []}
    for hash_seed in range(1, args.f1_seeds + 1):
        res = near_duplicates(texts, threshold=args.threshold, num_perm=args.num_perm,
                              ngram=args.ngram, fn_weight=args.fn_weight, seed=hash_seed)
        pairs = set(zip(res.left.tolist(), res.right.tolist(), strict=True))
        f1["selfevo"].append(score(pairs, planted, texts, args.threshold, args.ngram)["f1"])
        _, _, cand = datasketch_lsh(texts_list, args, hash_seed)
        keep = exact_verification(texts_list, cand, args)
        f1["datasketch + exact verification"].append(
            score(keep, planted, texts, args.threshold, args.ngram)["f1"])
    return {"f1-seeds": dict(f1)}


def worker_cli(args: argparse.Namespace) -> dict:
    """Load the corpus into a store as responses and time ``selfevo curate dedup --near``."""
    from corpus.records import insert_prompts, insert_records, make_prompt, make_record
    from corpus.store import Store

    texts, _ = make_corpus(args.n, seed=args.seed, dup_frac=args.dup_frac, ngram=args.ngram)
    with tempfile.TemporaryDirectory() as tmp:  # under the bench's own TMPDIR
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
    return {"selfevo curate dedup --near (CLI)": {
        "wall": wall, "peak_rss": peak, "kept": kept.group(1) if kept else "?"}}


WORKERS = {"selfevo": worker_selfevo, "datasketch": worker_datasketch,
           "datasketch-verified": worker_datasketch_verified,
           "datasketch-gc-off": worker_datasketch, "selfevo-1-thread": worker_selfevo,
           "cli": worker_cli, "f1-seeds": worker_f1_seeds}


def load_average() -> float:
    """The 1-minute load average (other users of the shared cores show up here)."""
    return os.getloadavg()[0]


def spawn(kind: str, n: int, args: argparse.Namespace, tmp: str) -> dict:
    """Run one worker in a fresh interpreter (TMPDIR inside ``tmp``); its rows, load noted."""
    cmd = [sys.executable, __file__, "--worker", kind, "--n", str(n),
           "--fn-weight", str(args.fn_weight), "--threshold", str(args.threshold),
           "--num-perm", str(args.num_perm), "--ngram", str(args.ngram),
           "--seed", str(args.seed), "--dup-frac", str(args.dup_frac),
           "--f1-seeds", str(args.f1_seeds)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": tmp}
    if kind == "selfevo-1-thread":
        env["POLARS_MAX_THREADS"] = "1"
    load = load_average()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"worker {kind} n={n} failed:\n{proc.stderr[-3000:]}")
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    for row in rows.values():
        row["load"] = load
    print(f"  {kind} n={n:,}: " + ", ".join(f"{k} {r['wall']:.2f}s" if "wall" in r else k
                                          for k, r in rows.items())
          + f" (load {load:.2f})", file=sys.stderr, flush=True)
    return rows


CONTENDERS = ("selfevo", "selfevo, 1 thread", "datasketch", "datasketch + MinHash estimate",
              "datasketch + exact verification", "datasketch, Python GC off (not in its docs)")


def _spread(values: list[float], fmt: str = "{:.2f}") -> str:
    """``median (min-max)`` of repeated measurements."""
    med = statistics.median(values)
    if len(values) == 1:
        return fmt.format(med)
    return f"{fmt.format(med)} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def print_table(n: int, rounds: list[dict[str, dict]]) -> None:
    """Markdown table of one corpus size over all rounds."""
    mb = 1024 * 1024
    print(f"\nN = {n:,}, {len(rounds)} rounds (median, range in brackets)\n")
    print("| contender | wall s | CPU s | peak RSS MB | candidates | pairs | precision | "
          "recall | F1 | wall / selfevo's | wall / selfevo 1 thread's | CPU / selfevo's | load |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for name in CONTENDERS:
        rs = [r[name] for r in rounds]
        ratios = [r[name]["wall"] / r["selfevo"]["wall"] for r in rounds]
        one_ratios = [r[name]["wall"] / r["selfevo, 1 thread"]["wall"] for r in rounds]
        cpu_ratios = [r[name]["cpu"] / r["selfevo"]["cpu"] for r in rounds]
        last = rs[-1]
        print(f"| {name} | {_spread([r['wall'] for r in rs])} | "
              f"{_spread([r['cpu'] for r in rs])} | "
              f"{statistics.median(r['peak_rss'] for r in rs) / mb:,.0f} | "
              f"{last['candidates']:,} | {last['pairs']:,} | {last['precision']:.3f} | "
              f"{last['recall']:.3f} | {last['f1']:.3f} | "
              f"{_spread(ratios, '{:.1f}x')} | {_spread(one_ratios, '{:.1f}x')} | "
              f"{_spread(cpu_ratios, '{:.1f}x')} | "
              f"{', '.join(format(r['load'], '.1f') for r in rs)} |")


def print_f1_seeds(n: int, f1: dict[str, list[float]]) -> None:
    """F1 over MinHash seeds: mean, spread, and how often selfevo is at least as good."""
    ours, peer = f1["selfevo"], f1["datasketch + exact verification"]
    print(f"\nF1 over MinHash seeds 1-{len(ours)} at N = {n:,} (same corpus, same b and r):")
    for name, vals in f1.items():
        if isinstance(vals, list):
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            print(f"- {name}: mean {statistics.mean(vals):.4f}, sd {sd:.4f}, "
                  f"range {min(vals):.4f}-{max(vals):.4f}")
    diffs = [a - b for a, b in zip(ours, peer, strict=True)]
    print(f"- selfevo minus datasketch per seed: mean {statistics.mean(diffs):+.4f}, "
          f"selfevo >= datasketch on {sum(d >= 0 for d in diffs)} of {len(diffs)} seeds")


def run_all(args: argparse.Namespace, tmp: str) -> None:
    """Interleaved rounds over every size; tables; the CLI timing if asked."""
    sizes = [int(s) for s in args.sizes.split(",") if s]
    results: dict[int, list[dict[str, dict]]] = {n: [] for n in sizes}
    for _ in range(args.repeat):
        for n in sizes:
            rows: dict[str, dict] = {}
            for kind in ("selfevo", "datasketch", "selfevo-1-thread", "datasketch-verified",
                         "datasketch-gc-off"):
                rows.update(spawn(kind, n, args, tmp))
            results[n].append(rows)
    first = results[sizes[0]][0]
    if {(r["bands"], r["rows"]) for r in first.values()} != {
            (first["selfevo"]["bands"], first["selfevo"]["rows"])}:
        raise SystemExit(f"bands/rows differ between contenders: {first}")
    print(f"\nnear dedup: threshold {args.threshold}, num_perm {args.num_perm}, word "
          f"{args.ngram}-grams, fn_weight {args.fn_weight} -> b={first['selfevo']['bands']} "
          f"r={first['selfevo']['rows']} for every contender; {args.dup_frac:.0%} of texts in "
          f"planted clusters; true pairs: "
          + ", ".join(f"{results[n][0]['selfevo']['true_pairs']:,} at {n:,}" for n in sizes))
    for n in sizes:
        print_table(n, results[n])
        phases = [r["selfevo"]["timings"] for r in results[n]]
        print("\nselfevo phases (median s): " + ", ".join(
            f"{k} {statistics.median(p[k] for p in phases):.2f}" for k in phases[0]))
    if args.f1_seeds:
        print_f1_seeds(sizes[0], spawn("f1-seeds", sizes[0], args, tmp)["f1-seeds"])
    if args.cli_n:
        cli = spawn("cli", args.cli_n, args, tmp)["selfevo curate dedup --near (CLI)"]
        print(f"\nselfevo curate dedup --near, {args.cli_n:,} records: {cli['wall']:.1f} s, "
              f"peak RSS {cli['peak_rss'] / 2**20:,.0f} MB, kept {cli['kept']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000", help="Corpus sizes (all contenders).")
    ap.add_argument("--repeat", type=int, default=3, help="Interleaved rounds per size.")
    ap.add_argument("--cli-n", type=int, default=0, help="Also time the CLI at this size.")
    ap.add_argument("--threshold", type=float, default=0.7)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--ngram", type=int, default=3)
    ap.add_argument("--fn-weight", type=float, default=0.8,
                    help="LSH b/r choice weight of false negatives (both tools use it).")
    ap.add_argument("--dup-frac", type=float, default=0.2,
                    help="Fraction of texts that belong to planted clusters.")
    ap.add_argument("--seed", type=int, default=7, help="Corpus seed.")
    ap.add_argument("--f1-seeds", type=int, default=0,
                    help="Also score F1 (untimed) over this many MinHash seeds at the first "
                         "size, selfevo against datasketch + exact verification.")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return
    tmp = tempfile.mkdtemp(prefix="selfevo-dedup-bench-")
    try:
        run_all(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
