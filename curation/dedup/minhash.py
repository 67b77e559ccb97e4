"""Near dedup: MinHash signatures, LSH banding, candidate pairs verified by true Jaccard.

The pipeline, vectorised with numpy and processed in chunks of texts so memory stays
bounded (only the band hashes, ``bands`` uint64 per text, live for the whole corpus):

1. **Shingles.** Texts are NFKC-normalised and lowercased, split into word tokens (``\\w+``,
   punctuation dropped) by polars; each word is hashed by polars to uint64, and each run of
   ``ngram`` consecutive words is combined into one shingle hash (uint32 after a splitmix64
   finaliser). A text shorter than ``ngram`` words is one shingle of all its words.
2. **Signatures.** ``num_perm`` permutations ``h_j(x) = (a_j * x + b_j) mod 2**32`` with
   ``a_j`` odd (a bijection of the 32-bit hash universe), evaluated with uint32 numpy
   arithmetic over all shingles of a chunk at once, reduced per text by
   ``np.minimum.reduceat``. Signatures are uint32 and live only per chunk. mod 2**32 instead
   of mod a Mersenne prime: it is the native width of the SIMD multiply (8x faster than the
   uint64 ``% p`` form measured here) and, since shingle hashes are already well mixed, the
   Jaccard estimate has the binomial variance J(1-J)/num_perm (checked in the tests).
3. **Bands.** The signature is cut into ``bands`` bands of ``rows`` values; each band is
   hashed to uint64. Two texts are *candidates* when they agree on all rows of at least one
   band: probability ``1 - (1 - s**rows)**bands`` for Jaccard ``s`` (the S-curve).
   ``bands``/``rows`` default to the pair that minimises the false-positive area below the
   threshold plus the false-negative area above it (:func:`optimal_bands`, datasketch's
   rule, so both tools use the same b and r).
4. **Candidates.** Per band, texts are sorted by band hash (numpy ``argsort``, measured
   faster than a polars ``group_by`` + ``implode`` at 1M rows) and equal runs give pairs.
   A bucket larger than ``max_bucket`` is linked by a sliding window of ``max_bucket``
   sorted neighbours instead of all pairs, which keeps pairs linear in the corpus.
5. **Verification.** Each candidate pair's true Jaccard on the shingle sets (recomputed for
   the texts that have a candidate) decides: only pairs at or above ``threshold`` are edges.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import polars as pl

from curation.dedup.exact import as_series

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_FNV_PRIME = np.uint64(0x100000001B3)
_SHINGLE_MULT = np.uint64(0x9E3779B97F4A7C15)
_WORD_SEED = 0x5E1F
T = TypeVar("T")


def _splitmix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (in place on a uint64 array): a good bit mixer, cheap in numpy."""
    tmp = np.empty_like(x)  # one scratch array instead of a fresh temporary per shift
    for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB), (31, 0)):
        np.right_shift(x, np.uint64(shift), out=tmp)
        x ^= tmp
        if mult:
            x *= np.uint64(mult)
    return x


# -- parameters ---------------------------------------------------------------------------


def _midpoints(a: float, b: float, steps: int = 100) -> tuple[list[float], float]:
    """The rectangle midpoints :func:`_integrate` visits on ``[a, b]`` (same float steps)."""
    mids, x = [], a
    dx = (b - a) / steps
    while x < b:
        mids.append(x + 0.5 * dx)
        x += dx
    return mids, dx


def _integrate(f, a: float, b: float, steps: int = 100) -> float:  # type: ignore[no-untyped-def]
    # Same rectangle rule as datasketch's lsh._integration, so the chosen b/r agree.
    mids, dx = _midpoints(a, b, steps)
    area = 0.0
    for m in mids:
        area += f(m) * dx
    return area


def false_positive_area(threshold: float, bands: int, rows: int) -> float:
    """Area under the S-curve below the threshold (pairs that are not duplicates but meet)."""
    return _integrate(lambda s: 1 - (1 - s**rows) ** bands, 0.0, threshold)


def false_negative_area(threshold: float, bands: int, rows: int) -> float:
    """Area above the S-curve over the threshold (duplicates that never share a band)."""
    return _integrate(lambda s: 1 - (1 - (1 - s**rows) ** bands), threshold, 1.0)


@functools.lru_cache(maxsize=64)  # pure, and asked twice per `curate dedup --near`
def optimal_bands(
    threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5
) -> tuple[int, int]:
    """``(bands, rows)`` with ``bands * rows <= num_perm`` minimising the weighted FP+FN area.

    The areas of :func:`false_positive_area` and :func:`false_negative_area`, with the same
    float operations in the same order (so the same choice), but each ``s**rows`` computed
    once per ``rows`` instead of once per ``(bands, rows)``: 3x faster.
    """
    fp_mids, fp_dx = _midpoints(0.0, threshold)
    fn_mids, fn_dx = _midpoints(threshold, 1.0)
    by_rows = {r: ([m**r for m in fp_mids], [m**r for m in fn_mids])
               for r in range(1, num_perm + 1)}
    best, best_err = (1, num_perm), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp_pow, fn_pow = by_rows[r]
            fp = 0.0
            for p in fp_pow:
                fp += (1 - (1 - p) ** b) * fp_dx
            fn = 0.0
            for p in fn_pow:
                fn += (1 - (1 - (1 - p) ** b)) * fn_dx
            err = fp_weight * fp + fn_weight * fn
            if err < best_err:
                best, best_err = (b, r), err
    return best


def candidate_probability(similarity: float, bands: int, rows: int) -> float:
    """Probability that two texts of Jaccard ``similarity`` share at least one band."""
    return 1 - (1 - similarity**rows) ** bands


# -- shingles -----------------------------------------------------------------------------


@dataclass
class Shingles:
    """Shingle hashes of a batch of texts: text ``k`` owns ``hashes[offsets[k]:offsets[k+1]]``."""

    hashes: np.ndarray  # uint32
    offsets: np.ndarray  # int64, len = texts + 1

    @property
    def counts(self) -> np.ndarray:
        """Shingles per text."""
        return np.diff(self.offsets)


def _nfkc(texts: pl.Series) -> pl.Series:
    """NFKC-normalised texts (NULL as empty); only non-ASCII texts go through NFKC."""
    texts = texts.fill_null("")
    # NFKC is the identity on ASCII and costs as much as the tokenising: only non-ASCII
    # texts (fewer characters than bytes) go through it.
    non_ascii = np.flatnonzero((texts.str.len_bytes() != texts.str.len_chars()).to_numpy())
    if len(non_ascii):
        texts = texts.scatter(non_ascii, texts.gather(non_ascii).str.normalize("NFKC"))
    return texts


def word_hashes(texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """uint64 hash of every word token (texts concatenated) and the word count per text."""
    # Lowercase, non-word characters to spaces, split on spaces: words are the \w+ runs
    # (replace + split measured 2x faster than str.extract_all(r"\w+")). One lazy query
    # with the row index exploded alongside measured 1.2x faster than eager steps.
    words = (
        pl.LazyFrame({"t": _nfkc(texts)}).with_row_index("i")
        .select("i", pl.col("t").str.to_lowercase().str.replace_all(r"[^\w ]+", " ")
                .str.split(" ").alias("w"))
        .explode("w")
        .filter(pl.col("w").str.len_bytes() > 0)  # also drops the null of an empty list
        .select("i", pl.col("w").hash(seed=_WORD_SEED))
        .collect()
    )
    owner = words["i"].to_numpy()
    n_words = np.bincount(owner, minlength=len(texts)).astype(np.int64)
    return words["w"].to_numpy().astype(np.uint64, copy=False), n_words


def word_counts(texts: Sequence[str | None] | pl.Series) -> np.ndarray:
    """Word tokens per text (0 for NULL or empty texts)."""
    return word_hashes(as_series(texts))[1]


def _combine(words: list[np.ndarray]) -> np.ndarray:
    """Order-dependent hash of aligned word-hash columns (in place on a copy)."""
    h = np.zeros(len(words[0]), dtype=np.uint64)
    for k, col in enumerate(words):
        h ^= col
        h *= _SHINGLE_MULT
        h += np.uint64(k + 1)
    return h


def shingle_hashes(texts: Sequence[str | None] | pl.Series, ngram: int) -> Shingles:
    """Word ``ngram``-shingle hashes of each text (not deduplicated within a text).

    A text of ``L >= ngram`` words has ``L - ngram + 1`` shingles; a shorter non-empty text
    has one shingle of all its words; an empty text has none.
    """
    w, n_words = word_hashes(as_series(texts))
    total = len(w)
    starts = np.zeros(len(n_words) + 1, dtype=np.int64)
    np.cumsum(n_words, out=starts[1:])
    # Combine every run of ngram words of the concatenation (slices, no gathers), then drop
    # the runs that cross into the next text.
    padded = np.concatenate([w, np.zeros(ngram, dtype=np.uint64)])
    h = _combine([padded[k: k + total] for k in range(ngram)])
    valid = np.ones(total, dtype=bool)
    long_text = n_words >= ngram
    ends = starts[1:][long_text]
    for j in range(1, ngram):
        valid[ends - j] = False
    short = np.flatnonzero(~long_text & (n_words > 0))
    if len(short):
        # Short texts: one shingle of the words they have (missing words hash as 0).
        s0, lengths = starts[:-1][short], n_words[short]
        for j in range(0, ngram):
            pos = s0 + j
            valid[pos[j < lengths]] = False
        h[s0] = _combine([np.where(j < lengths, padded[s0 + j], np.uint64(0))
                          for j in range(ngram)])
        valid[s0] = True
    counts = np.where(long_text, n_words - ngram + 1, np.minimum(n_words, 1))
    offsets = np.zeros(len(n_words) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    h = _splitmix(h[valid])
    h >>= np.uint64(32)
    return Shingles(hashes=h.astype(np.uint32), offsets=offsets)


# -- signatures and bands -----------------------------------------------------------------


def permutations(num_perm: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The ``(a, b)`` uint32 coefficients of the ``num_perm`` permutations (``a`` odd)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**32, num_perm, dtype=np.uint64).astype(np.uint32) | np.uint32(1)
    b = rng.integers(0, 2**32, num_perm, dtype=np.uint64).astype(np.uint32)
    return a, b


def signatures(
    sh: Shingles, a: np.ndarray, b: np.ndarray, block: int = 512
) -> np.ndarray:
    """MinHash signatures (texts x num_perm, uint32) of texts that have at least one shingle.

    Cache-blocked: the shingles of ``block`` texts (about 200 KiB) go through all
    permutations while they sit in L2, and each permutation's minima are written to a
    contiguous row of a permutation-major array (returned transposed, so rows are texts):
    1.9x faster than one pass over a whole chunk's shingles per permutation.
    """
    counts = sh.counts
    if (counts == 0).any():
        raise ValueError("signatures() needs at least one shingle per text")
    n = len(counts)
    out = np.empty((len(a), n), dtype=np.uint32)
    offsets = sh.offsets
    ends = offsets[np.minimum(np.arange(block, n + block, block), n)]
    buf = np.empty(int((ends - offsets[0:n:block]).max(initial=0)), dtype=np.uint32)
    for s in range(0, n, block):
        e = min(n, s + block)
        h = sh.hashes[offsets[s]: offsets[e]]
        starts = offsets[s:e] - offsets[s]
        perm = buf[: len(h)]
        for j in range(len(a)):
            np.multiply(h, a[j], out=perm)
            np.add(perm, b[j], out=perm)
            np.minimum.reduceat(perm, starts, out=out[j, s:e])
    return out.T


def band_hashes(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One uint64 hash per band (texts x bands) from signature rows ``[t*rows, (t+1)*rows)``.

    Returned as a transposed view of a band-major array: each band's keys are contiguous
    for the per-band sort of :func:`bucket_pairs`.
    """
    out = np.empty((bands, sig.shape[0]), dtype=np.uint64)
    for t in range(bands):
        h = out[t]
        h.fill(0xCBF29CE484222325)
        for c in range(t * rows, (t + 1) * rows):
            h ^= sig[:, c]
            h *= _FNV_PRIME
        _splitmix(h)
    return out.T


def bucket_pairs(keys: np.ndarray, max_bucket: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(i, j)``, ``i < j``, of positions with equal ``keys``.

    Positions in a bucket, in ascending order, are linked to their next ``max_bucket - 1``
    neighbours: all pairs for a bucket up to ``max_bucket``, a sliding window above it.
    """
    # numpy's unstable argsort is SIMD (5x faster than the stable one); ties are then put
    # in position order for the few keys that have any, as a stable sort would.
    order = np.argsort(keys)
    sk = keys[order]
    same_next = sk[1:] == sk[:-1]
    if not same_next.any():
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    shared = np.zeros(len(keys), dtype=bool)
    shared[1:] = same_next
    shared[:-1] |= same_next
    sel = np.flatnonzero(shared)
    run_id = np.cumsum(np.r_[True, ~same_next])[sel]
    members = order[sel]
    members = members[np.lexsort((members, run_id))]  # run_id is already sorted
    lefts, rights = [], []
    for d in range(1, max_bucket):
        if d >= len(members):
            break
        same = run_id[d:] == run_id[:-d]
        if not same.any():
            break
        idx = np.flatnonzero(same)
        lefts.append(members[idx])
        rights.append(members[idx + d])
    return np.concatenate(lefts), np.concatenate(rights)


# -- verification -------------------------------------------------------------------------


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values (sort + neighbour compare: numpy 2's hash-based ``np.unique``
    measured 4x slower on uint64 keys)."""
    values = np.sort(values)
    if len(values) < 2:
        return values
    return values[np.r_[True, values[1:] != values[:-1]]]


def unique_shingles(sh: Shingles) -> Shingles:
    """The same texts with each text's shingles sorted and deduplicated (shingle sets)."""
    n = len(sh.counts)
    text = np.repeat(np.arange(n, dtype=np.uint64), sh.counts)
    keys = sorted_unique((text << np.uint64(32)) | sh.hashes.astype(np.uint64))
    owner = (keys >> np.uint64(32)).astype(np.int64)
    offsets = np.searchsorted(owner, np.arange(n + 1), side="left").astype(np.int64)
    return Shingles(hashes=(keys & np.uint64(0xFFFFFFFF)).astype(np.uint32), offsets=offsets)


def _gather(sets: Shingles, which: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated shingles of texts ``which`` and the position in ``which`` each belongs to."""
    counts = sets.counts[which]
    starts = sets.offsets[:-1][which]
    total = int(counts.sum())
    owner = np.repeat(np.arange(len(which), dtype=np.int64), counts)
    first = np.zeros(len(which), dtype=np.int64)
    np.cumsum(counts[:-1], out=first[1:])
    idx = np.repeat(starts - first, counts) + np.arange(total, dtype=np.int64)
    return sets.hashes[idx], owner


def pair_jaccard(
    sets: Shingles, left: np.ndarray, right: np.ndarray, chunk: int = 50_000
) -> np.ndarray:
    """True Jaccard of the shingle sets of texts ``left[k]`` and ``right[k]`` (float64)."""
    out = np.empty(len(left), dtype=np.float64)
    counts = sets.counts
    for s in range(0, len(left), chunk):
        lft, rgt = left[s: s + chunk], right[s: s + chunk]
        hl, ol = _gather(sets, lft)
        hr, orr = _gather(sets, rgt)
        # Both sides are sets: a value seen twice for the same pair is in the intersection.
        keys = np.concatenate([
            (ol.astype(np.uint64) << np.uint64(32)) | hl.astype(np.uint64),
            (orr.astype(np.uint64) << np.uint64(32)) | hr.astype(np.uint64),
        ])
        keys.sort()
        dup = keys[1:] == keys[:-1]
        inter = np.bincount((keys[1:][dup] >> np.uint64(32)).astype(np.int64),
                            minlength=len(lft))
        union = counts[lft] + counts[rgt] - inter
        out[s: s + len(lft)] = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    return out


# -- the whole near-dedup pass ------------------------------------------------------------


@dataclass
class NearResult:
    """Verified near-duplicate pairs over the input indices, plus counters."""

    left: np.ndarray
    right: np.ndarray
    similarity: np.ndarray
    bands: int
    rows: int
    candidates: int
    comparable: np.ndarray  # bool: the text had at least one shingle
    timings: dict[str, float] = field(default_factory=dict)


def _chunk_bands(
    series: pl.Series, span: tuple[int, int], *, ngram: int,
    perms: tuple[np.ndarray, np.ndarray], rows: int, out: np.ndarray, comparable: np.ndarray,
) -> None:
    """Band hashes of texts ``span`` into ``out[:, span]`` (bands x texts) and which of them
    have a shingle into ``comparable[span]``."""
    s, e = span
    sh = shingle_hashes(series.slice(s, e - s), ngram)
    has = sh.counts > 0
    comparable[s:e] = has
    if not has.any():
        return
    if not has.all():
        sh = Shingles(sh.hashes, np.concatenate([[0], np.cumsum(sh.counts[has])]))
    out[:, s:e][:, has] = band_hashes(signatures(sh, *perms), out.shape[0], rows).T


def _default_workers() -> int:
    """Threads for the signature pass: the CPUs this process may use, at most 4."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(4, cpus or 1))


def _map_chunks(
    fn: Callable[[tuple[int, int]], T], n: int, size: int, workers: int | None
) -> list[T]:
    """``fn`` over the ``(start, end)`` chunks of ``n`` items, in order, on up to ``workers``
    threads (default :func:`_default_workers`): polars and numpy release the GIL in their
    loops, so a second thread uses a second core."""
    spans = list(_chunks(n, size))
    workers = max(1, min(workers or _default_workers(), len(spans)))
    if workers == 1:
        return [fn(span) for span in spans]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, spans))


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for s in range(0, n, size):
        yield s, min(n, s + size)


def near_duplicates(
    texts: Sequence[str | None] | pl.Series,
    *,
    threshold: float = 0.7,
    num_perm: int = 128,
    bands: int | None = None,
    rows: int | None = None,
    ngram: int = 3,
    seed: int = 1,
    chunk_size: int = 10_000,
    max_bucket: int = 64,
    fn_weight: float = 0.8,
    workers: int | None = None,
) -> NearResult:
    """Verified pairs of texts whose word-``ngram`` Jaccard is at least ``threshold``.

    ``bands`` defaults to :func:`optimal_bands` for ``threshold`` with false negatives
    weighted ``fn_weight`` and false positives ``1 - fn_weight``; ``rows`` defaults to
    ``num_perm // bands``. Signatures are computed by ``workers`` threads (default: the
    CPU count, at most 4), one chunk of ``chunk_size`` texts each; the result does not
    depend on either. Memory: the texts, ``bands`` x 8 bytes per text, one chunk's
    signatures per worker and the shingle sets of the texts that have a candidate pair.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if bands is None:
        bands, rows = optimal_bands(threshold, num_perm, 1 - fn_weight, fn_weight)
    else:
        if not 1 <= bands <= num_perm:
            raise ValueError(f"bands must be between 1 and num_perm ({num_perm}), got {bands}")
        rows = rows or num_perm // bands
        if bands * rows > num_perm:
            raise ValueError(f"bands x rows ({bands} x {rows}) exceeds num_perm ({num_perm})")
    series = as_series(texts)
    n = len(series)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    a, b = permutations(num_perm, seed)
    band_matrix = np.zeros((bands, n), dtype=np.uint64)  # band-major: contiguous per band
    comparable = np.zeros(n, dtype=bool)
    chunk_bands = functools.partial(
        _chunk_bands, series, ngram=ngram, perms=(a, b), rows=rows, out=band_matrix,
        comparable=comparable)
    _map_chunks(chunk_bands, n, chunk_size, workers)  # chunks write disjoint columns
    timings["signatures"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    idx = np.flatnonzero(comparable)
    codes = []
    for t in range(bands):
        i, j = bucket_pairs(band_matrix[t, idx], max_bucket)
        codes.append(idx[i] * n + idx[j])
    del chunk_bands, band_matrix  # the partial holds the matrix too
    pair_codes = sorted_unique(np.concatenate(codes)) if codes else np.empty(0, np.int64)
    left, right = pair_codes // n, pair_codes % n
    timings["candidates"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    sim = jaccard_of_pairs(series, left, right, ngram=ngram, chunk_size=chunk_size,
                           workers=workers)
    keep = sim >= threshold
    timings["verify"] = time.perf_counter() - t0
    return NearResult(left=left[keep], right=right[keep], similarity=sim[keep], bands=bands,
                      rows=rows, candidates=len(pair_codes), comparable=comparable,
                      timings=timings)


def jaccard_of_pairs(
    texts: Sequence[str | None] | pl.Series,
    left: np.ndarray,
    right: np.ndarray,
    *,
    ngram: int,
    chunk_size: int = 10_000,
    workers: int | None = None,
) -> np.ndarray:
    """True shingle-set Jaccard for pairs of text indices, shingling only the texts involved
    (``chunk_size`` texts at a time on up to ``workers`` threads)."""
    if len(left) == 0:
        return np.empty(0, dtype=np.float64)
    series = as_series(texts)
    involved, inverse = np.unique(np.concatenate([left, right]), return_inverse=True)
    parts = _map_chunks(
        lambda span: unique_shingles(shingle_hashes(series.gather(involved[span[0]:span[1]]),
                                                    ngram)),
        len(involved), chunk_size, workers)
    counts = np.concatenate([p.counts for p in parts])
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    sets = Shingles(np.concatenate([p.hashes for p in parts]), offsets)
    m = len(left)
    return pair_jaccard(sets, inverse[:m], inverse[m:])
