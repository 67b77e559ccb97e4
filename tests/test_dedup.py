"""Dedup: exact, near (MinHash LSH) and semantic; clusters, keepers, decisions in the store."""

from __future__ import annotations

import json

import numpy as np
import pytest
from backends import both_stores, writing
from hypothesis import given, settings
from hypothesis import strategies as st

from corpus.records import insert_prompts, insert_records, make_prompt, make_record
from corpus.store import Store
from curation.dedup import (
    DedupConfig,
    assign_keepers,
    connected_components,
    dedup_records,
    keeper_rank,
    near_duplicates,
    normalize_text,
    optimal_bands,
)
from curation.dedup.minhash import jaccard_of_pairs, permutations, shingle_hashes, signatures
from curation.selection import Selection

VOCAB = [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ro", "su", "ti", "va", "ze")
         for b in ("ba", "de", "fi", "go", "hu", "ja", "ko", "le", "mo", "ne", "po", "ri")]


def random_text(rng: np.random.Generator, n_words: int = 80) -> str:
    """A text of random vocabulary words: unrelated texts share almost no 3-grams."""
    return " ".join(rng.choice(VOCAB, n_words))


def mutate(text: str, rng: np.random.Generator, n: int, lo: int = 0, hi: int | None = None) -> str:
    """Replace ``n`` distinct words (positions in [lo, hi)) by a word outside the vocabulary."""
    words = text.split()
    for i, p in enumerate(rng.choice(np.arange(lo, hi or len(words)), n, replace=False)):
        words[p] = f"zz{i}"
    return " ".join(words)


def make_store(db: str, responses: list[str], verdicts: list[str | None] | None = None) -> list[str]:
    """A store with one prompt and one record per response; returns the record ids in order."""
    p = make_prompt("What is 2 + 2?", gold_answer="4")
    recs = [make_record(prompt_id=p["prompt_id"], kind="self", round=1, response=r,
                        verdict=(verdicts[i] if verdicts else None))
            for i, r in enumerate(responses)]
    with Store.open(db) as store, store.run("test setup", {}) as run:
        store.transact(lambda con: (insert_prompts(con, [p], run.run_id),
                                    insert_records(con, recs, run.run_id)))
    return [r["record_id"] for r in recs]


def decisions(db: str, step: str, run_id: str | None = None) -> dict[str, dict]:
    """record_id -> decision row (detail parsed) of ``step`` (latest run unless given)."""
    with Store.open_readonly(db) as store:
        rows = store.query_dicts(
            "SELECT * FROM decisions WHERE step = ? AND run_id = coalesce(?, "
            "(SELECT max(run_id) FROM decisions WHERE step = ?))", [step, run_id, step])
    return {r["record_id"]: {**r, "detail": json.loads(r["detail"])} for r in rows}


def test_normalisation_policy():
    assert normalize_text("  Hello,   WORLD!\n") == "hello world"
    assert normalize_text("(3 apples) cost $3.50.") == "3 apples cost 3.50"
    assert normalize_text("ＡＢＣ　１２３") == "abc 123"  # full-width forms fold (NFKC)
    assert normalize_text("don't re-use 3.5") == "don't re-use 3.5"  # inner punctuation kept
    assert normalize_text("3.5") != normalize_text("35")
    assert normalize_text("!!! ...") == ""


def test_planted_exact_and_near_duplicates(db, cli):
    rng = np.random.default_rng(0)
    distinct = [random_text(rng) for _ in range(30)]
    exact_dup = "  " + distinct[0].upper().replace(" ", "  ") + " !"
    near_dup = mutate(distinct[1], rng, 3)  # Jaccard about 0.8 on word 3-grams
    ids = make_store(db, [*distinct, exact_dup, near_dup])
    out = cli("curate", "dedup", "--db", db, "--field", "response", "--exact", "--near").output
    assert "dedup-exact" in out and "dedup-near" in out and "kept 30 of 32" in out

    ex = decisions(db, "dedup-exact")
    assert len(ex) == 32  # one row per record, kept or not
    # --keep first: same insertion time, so the smaller record id is kept.
    dup0, keep0 = max(ids[0], ids[30]), min(ids[0], ids[30])
    dup1, keep1 = max(ids[1], ids[31]), min(ids[1], ids[31])
    assert [r for r in ids if not ex[r]["passed"]] == [dup0]
    d = ex[dup0]["detail"]
    assert d["cluster_size"] == 2 and d["similarity"] == 1.0
    assert d["keeper"] == keep0 and d["cluster"] == keep0
    assert ex[keep0]["passed"] and ex[keep0]["reason"] == "keeper of a cluster of 2"

    near = decisions(db, "dedup-near")
    assert len(near) == 32
    dropped = {r for r in ids if not near[r]["passed"]}
    assert dropped == {dup0, dup1}  # the exact duplicate is a near one as well
    d = near[dup1]["detail"]
    assert d["keeper"] == keep1 and d["cluster_size"] == 2 and 0.7 <= d["similarity"] < 1
    assert near[dup1]["score"] == d["similarity"]
    for r in ids[2:30]:  # distinct texts are left alone
        assert near[r]["passed"] and near[r]["detail"]["cluster_size"] == 1
        assert near[r]["reason"] == "singleton"


@both_stores
def test_decisions_carry_run_and_parameters(db, cli):
    rng = np.random.default_rng(1)
    base = random_text(rng)
    make_store(db, [base, mutate(base, rng, 2), random_text(rng)])
    cli("curate", "dedup", "--db", db, "--field", "response", "--near", "--threshold", "0.6",
        "--num-perm", "64", "--ngram", "2", "--keep", "longest")
    with Store.open_readonly(db) as store:
        run = store.query_dicts("SELECT * FROM runs WHERE command = 'curate dedup'")[0]
        rows = store.query_dicts("SELECT DISTINCT run_id, params FROM decisions")
    config = json.loads(run["config"])
    assert run["status"] == "ok"
    assert config["dedup"]["threshold"] == 0.6 and config["dedup"]["keep"] == "longest"
    step = config["steps"][0]
    assert step["step"] == "dedup-near"
    assert (step["params"]["bands"], step["params"]["rows"]) == optimal_bands(0.6, 64, 0.2, 0.8)
    assert len(rows) == 1 and rows[0]["run_id"] == run["run_id"]
    params = json.loads(rows[0]["params"])
    assert params["num_perm"] == 64 and params["ngram"] == 2 and params["threshold"] == 0.6
    counts = json.loads(run["counts"])
    assert counts["kept"] == 2 and counts["clusters"]["dedup-near"] == 1


def test_clusters_are_transitive():
    rng = np.random.default_rng(2)
    a = random_text(rng, 60)
    b = mutate(a, rng, 4, 0, 30)  # changes only in the first half
    words = b.split()
    c = " ".join(words[:30] + mutate(" ".join(words[30:]), rng, 4).split())  # second half
    texts = [a, b, c] + [random_text(rng, 60) for _ in range(5)]
    sims = jaccard_of_pairs(texts, np.array([0, 1, 0]), np.array([1, 2, 2]), ngram=3)
    assert sims[0] >= 0.6 and sims[1] >= 0.6 and sims[2] < 0.6  # A~B, B~C, A !~ C
    res = near_duplicates(texts, threshold=0.6, num_perm=256)
    labels = connected_components(len(texts), res.left, res.right)
    assert labels[0] == labels[1] == labels[2]
    assert len(set(labels.tolist())) == 6  # the five others stay singletons


@pytest.mark.parametrize("rule, expected", [
    ("shortest", 2), ("longest", 1), ("verdict-then-shortest", 3), ("first", 0)])
def test_keeper_rules(rule, expected):
    ids = ["h1:d", "h1:c", "h1:b", "h1:a", "h1:e"]
    lengths = np.array([50, 90, 10, 40, 5])
    created = np.array([1, 2, 3, 4, 0])
    correct = np.array([False, True, False, True, False])
    rank = keeper_rank(ids, rule=rule, lengths=lengths, created=created, correct=correct)
    # Items 0-3 form one cluster (0-1, 1-2, 2-3); item 4 is alone.
    labels = connected_components(5, np.array([0, 1, 2]), np.array([1, 2, 3]))
    clusters = assign_keepers(labels, rank)
    assert clusters.keeper[:4].tolist() == [expected] * 4
    assert clusters.keeper[4] == 4 and clusters.size.tolist() == [4, 4, 4, 4, 1]
    assert clusters.kept.tolist() == [i == expected for i in range(4)] + [True]


def test_keeper_ties_break_by_record_id():
    ids = ["h1:z", "h1:m", "h1:a"]
    rank = keeper_rank(ids, rule="shortest", lengths=np.array([3, 3, 3]))
    clusters = assign_keepers(connected_components(3, np.array([0, 0]), np.array([1, 2])), rank)
    assert clusters.keeper.tolist() == [2, 2, 2]


def test_keep_rule_through_the_store(db, cli):
    rng = np.random.default_rng(3)
    base = random_text(rng)
    texts = [base + " x1 x2 x3 x4", base, base + " y1"]  # near duplicates of different length
    ids = make_store(db, texts, verdicts=["correct", "incorrect", "correct"])
    cli("curate", "dedup", "--db", db, "--field", "response", "--near",
        "--keep", "verdict-then-shortest")
    near = decisions(db, "dedup-near")
    assert {r for r in ids if near[r]["passed"]} == {ids[2]}  # correct and shorter than ids[0]
    assert all(near[r]["detail"]["keeper"] == ids[2] for r in ids)


@both_stores
def test_rerun_is_deterministic(db, cli):
    rng = np.random.default_rng(4)
    base = [random_text(rng) for _ in range(20)]
    texts = base + [mutate(t, rng, 2) for t in base[:8]] + [base[3].upper()]
    make_store(db, texts)
    for _ in range(2):
        cli("curate", "dedup", "--db", db, "--field", "response", "--exact", "--near")
    with Store.open_readonly(db) as store:
        runs = [r[0] for r in store.query(
            "SELECT run_id FROM runs WHERE command = 'curate dedup' ORDER BY run_id")]
    assert len(runs) == 2
    for step in ("dedup-exact", "dedup-near"):
        first, second = (decisions(db, step, r) for r in runs)
        strip = {k: (v["passed"], v["score"], v["reason"], json.dumps(v["detail"]),
                     v["params"]) for k, v in first.items()}
        assert strip == {k: (v["passed"], v["score"], v["reason"], json.dumps(v["detail"]),
                             v["params"]) for k, v in second.items()}
    assert sum(not v["passed"] for v in decisions(db, "dedup-near").values()) == 9


def test_empty_texts_are_not_compared(db):
    ids = make_store(db, ["", "   ", "some words here and there"])
    with Store.open(db) as store:
        res = dedup_records(store, DedupConfig(field="response"), Selection())
    assert res.kept == 3
    near = decisions(db, "dedup-near")
    assert near[ids[0]]["reason"] == "empty text: not compared"
    assert near[ids[0]]["score"] is None and near[ids[2]]["score"] == 1.0


def test_selection_and_prompt_field(db, cli):
    rng = np.random.default_rng(5)
    q = random_text(rng, 40)
    prompts = [make_prompt(q), make_prompt(q + "?"), make_prompt(random_text(rng, 40))]
    recs = [make_record(prompt_id=p["prompt_id"], kind=k, response="r")
            for p, k in zip(prompts, ["self", "self", "qa"], strict=True)]
    with Store.open(db) as store, store.run("setup", {}) as run, writing(store) as con:
        insert_prompts(con, prompts, run.run_id)
        insert_records(con, recs, run.run_id)
    out = cli("curate", "dedup", "--db", db, "--exact", "--kind", "self").output
    assert "kept 1 of 2" in out
    assert len(decisions(db, "dedup-exact")) == 2  # the qa record was not selected


def test_bad_parameters_are_clear(db, cli):
    make_store(db, ["a b c"])
    out = cli("curate", "dedup", "--db", db, "--bands", "500", exit_code=1).output
    assert "--bands must be between 1 and --num-perm (128)" in out
    out = cli("curate", "dedup", "--db", db, "--threshold", "1.5", exit_code=1).output
    assert "--threshold must be in (0, 1]" in out
    out = cli("curate", "dedup", "--db", db, "--where", "nosuchcol = 1", exit_code=1).output
    assert "bad --where" in out


def test_optimal_bands_match_datasketch():
    from datasketch.lsh import _optimal_param

    for t, p in [(0.5, 128), (0.7, 128), (0.8, 256), (0.9, 64)]:
        assert optimal_bands(t, p) == _optimal_param(t, p, 0.5, 0.5)


@settings(max_examples=40, deadline=None)
@given(threshold=st.floats(0.05, 0.99), num_perm=st.sampled_from([8, 16, 32, 64, 128]),
       fn_weight=st.sampled_from([0.2, 0.5, 0.8, 0.95]))
def test_optimal_bands_minimise_the_documented_areas(threshold, num_perm, fn_weight):
    from curation.dedup.minhash import false_negative_area, false_positive_area

    optimal_bands.cache_clear()
    errors = {(b, r): (1 - fn_weight) * false_positive_area(threshold, b, r)
              + fn_weight * false_negative_area(threshold, b, r)
              for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)}
    want = min(errors, key=lambda br: (errors[br], br))  # first minimum in (b, r) order
    assert optimal_bands(threshold, num_perm, 1 - fn_weight, fn_weight) == want


def test_minhash_estimate_is_unbiased_with_binomial_spread():
    rng = np.random.default_rng(6)
    texts = []
    for _ in range(300):  # pairs of 100-shingle sets sharing 82 shingles: J = 82/118
        words = [f"w{i}" for i in rng.choice(10**6, 120, replace=False)]
        texts += [" ".join(words[:100]), " ".join(words[18:118])]
    sh = shingle_hashes(texts, 1)
    sig = signatures(sh, *permutations(128))
    est = (sig[0::2] == sig[1::2]).mean(axis=1)
    j = 82 / 118
    assert abs(est.mean() - j) < 0.01
    assert est.std() < 1.25 * np.sqrt(j * (1 - j) / 128)


def test_short_texts_and_shingle_boundaries():
    sh = shingle_hashes(["a b", "a b c d", "", "a b c"], 3)
    assert sh.counts.tolist() == [1, 2, 0, 1]
    # Shingles never span two texts: "b c d" of text 1 equals no shingle of text 3 but
    # "a b c" is shared by texts 1 and 3.
    h = sh.hashes
    assert h[1] == h[3] and h[2] != h[3] and h[0] != h[1]


@pytest.mark.slow
def test_semantic_dedup_finds_paraphrases(db, cli):
    texts = [
        "Tom has three apples and buys two more. How many apples does Tom have now?",
        "Tom owns 3 apples and then purchases 2 more apples. How many apples does he have?",
        "A train travels 60 miles per hour for 2 hours. How far does it go?",
        "What is the capital city of France?",
    ]
    ids = make_store(db, texts)
    cli("curate", "dedup", "--db", db, "--field", "response", "--semantic",
        "--semantic-threshold", "0.8")
    sem = decisions(db, "dedup-semantic")
    assert {r for r in ids if not sem[r]["passed"]} == {ids[1]}
    assert sem[ids[1]]["detail"]["keeper"] == ids[0]
    assert sem[ids[1]]["detail"]["similarity"] >= 0.8
    assert sem[ids[3]]["detail"]["cluster_size"] == 1


def test_big_buckets_stay_linear_and_connected():
    rng = np.random.default_rng(7)
    template = random_text(rng, 40)
    texts = [template] * 150 + [random_text(rng, 40) for _ in range(5)]
    res = near_duplicates(texts, max_bucket=8)
    # A sliding window of 8 instead of all 150*149/2 pairs per band ...
    assert res.candidates <= 150 * 7
    # ... still links the whole bucket into one cluster.
    labels = connected_components(len(texts), res.left, res.right)
    assert set(labels[:150].tolist()) == {0} and len(set(labels[150:].tolist())) == 5


def test_dedup_draws_one_bar_over_its_steps_on_a_terminal(db, cli, tty):
    from corpus.display import progress

    make_store(db, ["a b c d e", "A b c d e!", "f g h i j"])
    with Store.open(db) as store, progress("dedup", console=tty) as bar:
        res = dedup_records(store, DedupConfig(field="response"), Selection(), progress=bar)
    drawn = tty.file.getvalue()
    assert res.kept == 2
    assert "dedup" in drawn and "6/6" in drawn and "dedup-near" in drawn  # 3 records x 2 steps
    out = cli("curate", "dedup", "--db", db, "--field", "response").output
    assert "{" not in out and "━" not in out  # readable lines, and no bar off a terminal
    assert "dedup-exact: 1 clusters" in out and "kept 2 of 3 records" in out


# -- the vectorised near-dedup path against a plain reference of the same specification ---

_M64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """splitmix64 finaliser on a Python int (the reference's own arithmetic)."""
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def reference_near_pairs(texts, *, threshold, num_perm, bands, rows, ngram, max_bucket):
    """The documented algorithm (docs/dedup.md, "Near") written plainly, one text at a time:
    Python regex words, Python-int shingle and band hashes, dict buckets, Python set Jaccard.
    Only the word hash (polars' seeded string hash) and the permutation draw are shared."""
    import re
    import unicodedata

    import polars as pl

    from curation.dedup.minhash import _WORD_SEED

    a, b = (p.astype(np.uint64) for p in permutations(num_perm))
    sets, sigs = [], []
    for text in texts:
        words = re.findall(r"\w+", unicodedata.normalize("NFKC", text or "").lower())
        wh = [int(h) for h in pl.Series(words, dtype=pl.String).hash(seed=_WORD_SEED)]
        grams = ([wh[i: i + ngram] for i in range(len(wh) - ngram + 1)] if len(wh) >= ngram
                 else [wh + [0] * (ngram - len(wh))] if wh else [])
        shingles = []
        for gram in grams:
            h = 0
            for k, w in enumerate(gram):
                h = ((((h ^ w) * 0x9E3779B97F4A7C15) & _M64) + k + 1) & _M64
            shingles.append(_mix64(h) >> 32)
        sets.append(set(shingles))
        x = np.array(shingles, dtype=np.uint64)[:, None]
        sigs.append(((x * a + b) & 0xFFFFFFFF).min(axis=0).tolist() if shingles else None)
    buckets: dict[tuple[int, int], list[int]] = {}
    for i, sig in enumerate(sigs):
        for t in range(bands if sig else 0):
            h = 0xCBF29CE484222325
            for v in sig[t * rows: (t + 1) * rows]:
                h = ((h ^ v) * 0x100000001B3) & _M64
            buckets.setdefault((t, _mix64(h)), []).append(i)
    candidates = {(m[p], m[q]) for m in buckets.values() for p in range(len(m))
                  for q in range(p + 1, min(len(m), p + max_bucket))}
    pairs = {}
    for i, j in candidates:
        sim = len(sets[i] & sets[j]) / len(sets[i] | sets[j])
        if sim >= threshold:
            pairs[(i, j)] = sim
    return pairs, len(candidates)


def planted_corpus(rng: np.random.Generator) -> list[str | None]:
    """Random texts with planted near-duplicates at many Jaccard levels, exact copies beyond
    a bucket, short, empty and NULL texts, punctuation, case and NFKC-foldable characters."""
    texts: list[str | None] = []
    for _ in range(int(rng.integers(8, 16))):
        base = random_text(rng, int(rng.integers(6, 40)))
        texts.append(base)
        for _ in range(int(rng.integers(0, 4))):  # variants: 0 to 40% of the words replaced
            n = len(base.split())
            texts.append(mutate(base, rng, int(rng.integers(0, max(1, n * 2 // 5)))))
    template = random_text(rng, 12)
    texts += [template] * int(rng.integers(0, 9))  # a bucket above a small max_bucket
    texts += ["", None, "Ｈｅｌｌｏ ﬁne wörld!", "hello, FINE wörld", "x", "x y", "  ...  "]
    texts += [t.upper().replace(" ", ", ", 2) + "?" for t in texts[:3] if t]
    order = rng.permutation(len(texts))
    return [texts[k] for k in order]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), threshold=st.sampled_from([0.5, 0.7, 0.9]),
       ngram=st.integers(1, 3), num_perm=st.sampled_from([32, 64, 128]),
       max_bucket=st.sampled_from([3, 64]), chunk_size=st.sampled_from([7, 20_000]),
       workers=st.sampled_from([1, 3]))
def test_near_duplicates_match_the_plain_reference(seed, threshold, ngram, num_perm,
                                                   max_bucket, chunk_size, workers):
    texts = planted_corpus(np.random.default_rng(seed))
    res = near_duplicates(texts, threshold=threshold, num_perm=num_perm, ngram=ngram,
                          max_bucket=max_bucket, chunk_size=chunk_size, workers=workers)
    want, n_candidates = reference_near_pairs(
        texts, threshold=threshold, num_perm=num_perm, bands=res.bands, rows=res.rows,
        ngram=ngram, max_bucket=max_bucket)
    got = dict(zip(zip(res.left.tolist(), res.right.tolist(), strict=True),
                   res.similarity.tolist(), strict=True))
    assert want and got == want  # never vacuous: the NFKC pair always matches
    assert res.candidates == n_candidates
    # ... hence the same clusters.
    ref = sorted(want)
    assert (connected_components(len(texts), res.left, res.right).tolist()
            == connected_components(len(texts), np.array([p[0] for p in ref], dtype=np.int64),
                                    np.array([p[1] for p in ref], dtype=np.int64)).tolist())


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 300), distinct=st.integers(1, 40),
       max_bucket=st.integers(2, 9))
def test_bucket_pairs_match_dict_buckets(seed, n, distinct, max_bucket):
    from curation.dedup.minhash import bucket_pairs

    keys = np.random.default_rng(seed).integers(0, distinct, n).astype(np.uint64) * np.uint64(
        0x9E3779B97F4A7C15)
    members: dict[int, list[int]] = {}
    for i, k in enumerate(keys.tolist()):
        members.setdefault(k, []).append(i)
    want = sorted((m[p], m[q]) for m in members.values() for p in range(len(m))
                  for q in range(p + 1, min(len(m), p + max_bucket)))
    left, right = bucket_pairs(keys, max_bucket)
    assert sorted(zip(left.tolist(), right.tolist(), strict=True)) == want


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), block=st.integers(1, 40))
def test_blocked_signatures_equal_the_formula(seed, block):
    from curation.dedup.minhash import Shingles

    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 30, int(rng.integers(1, 90)))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    hashes = rng.integers(0, 2**32, int(offsets[-1]), dtype=np.uint64).astype(np.uint32)
    a, b = permutations(16, seed=int(rng.integers(100)))
    sig = signatures(Shingles(hashes, offsets), a, b, block=block)
    for k in range(len(counts)):
        x = hashes[offsets[k]: offsets[k + 1]].astype(np.uint64)[:, None]
        want = ((x * a.astype(np.uint64) + b) & 0xFFFFFFFF).min(axis=0)
        assert sig[k].tolist() == want.tolist()
