"""``curate dedup`` as a library call: select records, run dedup steps, write decisions.

Semantics match ``curate filter``: every dedup step judges every selected record and writes
one ``decisions`` row for it (``dedup-exact``, ``dedup-near``, ``dedup-semantic``); a record
passes a step when it is its cluster's keeper or a singleton. All steps use the same keeper
order, so a record kept by near dedup is also the keeper of its exact-duplicate group.
Records are loaded ordered by ``record_id``, so a cluster's id (its smallest record id) and
its keeper do not depend on insertion order or on how the store was built.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa

from corpus.decisions import insert_decisions
from corpus.store import Store
from curation.dedup.clusters import (
    KEEP_RULES,
    Clusters,
    assign_keepers,
    connected_components,
    keeper_rank,
)
from curation.errors import CurationError
from curation.selection import Selection, count_selected, iter_selected_tables

if TYPE_CHECKING:
    from corpus.display import Tracker

FIELDS = ("prompt", "response", "refinement", "feedback")
METHODS = ("exact", "near", "semantic")
NORMALISATION = "nfkc-lower-punct-ws-v1"  # exact.normalize_texts; bump when it changes


@dataclass(frozen=True)
class DedupConfig:
    """Parameters of a dedup run; every field lands in ``runs.config``."""

    methods: tuple[str, ...] = ("exact", "near")  # run in this order
    field: str = "prompt"  # which text of the record to compare
    keep: str = "first"  # keeper rule, see clusters.keeper_rank
    threshold: float = 0.7  # near: Jaccard of word n-gram sets
    num_perm: int = 128  # near: MinHash permutations
    bands: int | None = None  # near: LSH bands; None = chosen from threshold
    fn_weight: float = 0.8  # near: weight of missed pairs vs candidates when choosing bands
    ngram: int = 3  # near: words per shingle
    seed: int = 1  # near: permutation seed
    max_bucket: int = 64  # near: larger LSH buckets are linked by a sliding window
    semantic_threshold: float = 0.9  # semantic: cosine of MiniLM embeddings

    def validate(self) -> None:
        """Raise CurationError naming the bad parameter and the valid values."""
        if not self.methods:
            raise CurationError("choose at least one of --exact, --near, --semantic")
        for m in self.methods:
            if m not in METHODS:
                raise CurationError(f"unknown dedup method {m!r}; valid: {', '.join(METHODS)}")
        if self.field not in FIELDS:
            raise CurationError(f"--field {self.field!r} is not one of {', '.join(FIELDS)}")
        if self.keep not in KEEP_RULES:
            raise CurationError(f"--keep {self.keep!r} is not one of {', '.join(KEEP_RULES)}")
        if not 0 < self.threshold <= 1:
            raise CurationError(f"--threshold must be in (0, 1], got {self.threshold}")
        if not -1 <= self.semantic_threshold <= 1:
            raise CurationError("--semantic-threshold must be in [-1, 1], got "
                                f"{self.semantic_threshold}")
        if not 0 <= self.fn_weight <= 1:
            raise CurationError(f"--fn-weight must be in [0, 1], got {self.fn_weight}")
        if self.num_perm < 1 or self.ngram < 1 or self.max_bucket < 2:
            raise CurationError("--num-perm and --ngram must be >= 1 (max_bucket >= 2)")
        if self.bands is not None and not 1 <= self.bands <= self.num_perm:
            raise CurationError(f"--bands must be between 1 and --num-perm ({self.num_perm}), "
                                f"got {self.bands}")


def step_params(method: str, config: DedupConfig) -> dict[str, Any]:
    """The resolved parameters of one step (``decisions.params`` and ``runs.config``)."""
    common = {"field": config.field, "keep": config.keep}
    if method == "exact":
        return {**common, "normalisation": NORMALISATION}
    if method == "near":
        from curation.dedup.minhash import optimal_bands

        if config.bands is None:
            bands, rows = optimal_bands(config.threshold, config.num_perm,
                                        1 - config.fn_weight, config.fn_weight)
        else:
            bands, rows = config.bands, config.num_perm // config.bands
        return {**common, "threshold": config.threshold, "num_perm": config.num_perm,
                "bands": bands, "rows": rows, "fn_weight": config.fn_weight,
                "ngram": config.ngram, "seed": config.seed, "max_bucket": config.max_bucket}
    return {**common, "threshold": config.semantic_threshold, "model": "all-MiniLM-L6-v2",
            "pooling": "mean", "normalised": True}


@dataclass
class StepOutcome:
    """One dedup step's result over the loaded records (indices into the frame)."""

    step: str
    params: dict[str, Any]
    clusters: Clusters
    similarity: np.ndarray  # to the keeper; NaN where not compared
    compared: np.ndarray  # bool: the record had text to compare
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class DedupRun:
    """What a ``curate dedup`` run did."""

    run_id: str
    selected: int
    kept: int
    steps: list[StepOutcome]


def load_records(store: Store, selection: Selection, text_field: str,
                 chunk_size: int = 200_000) -> pl.DataFrame:
    """Selected records as a polars frame: record_id, text, length, created (µs), correct.

    Read in keyset-paginated Arrow chunks so the store is opened only briefly each time.
    """
    tables = list(iter_selected_tables(
        store, selection, f"record_id, {text_field} AS text, epoch_us(created_at) AS created, "
        "coalesce(verdict = 'correct', false) AS correct", chunk_size))
    if not tables:
        return pl.DataFrame(schema={"record_id": pl.String, "text": pl.String,
                                    "created": pl.Int64, "correct": pl.Boolean,
                                    "length": pl.Int64})
    df = pl.from_arrow(pa.concat_tables(tables))
    assert isinstance(df, pl.DataFrame)
    return df.with_columns(pl.col("text").fill_null("").str.len_chars().cast(pl.Int64)
                           .alias("length"))


def _outcome(step: str, params: dict[str, Any], n: int, left: np.ndarray, right: np.ndarray,
             rank: np.ndarray, compared: np.ndarray,
             keeper_similarity: Callable[[np.ndarray, np.ndarray], np.ndarray],
             seconds: float, **extra: Any) -> StepOutcome:
    clusters = assign_keepers(connected_components(n, left, right), rank)
    sim = np.full(n, np.nan)
    sim[compared] = 1.0
    members = np.flatnonzero(~clusters.kept)
    if len(members):
        sim[members] = keeper_similarity(members, clusters.keeper[members])
    return StepOutcome(step, params, clusters, sim, compared, seconds, extra)


def run_exact(texts: pl.Series, rank: np.ndarray, config: DedupConfig) -> StepOutcome:
    """Exact dedup over normalised text (similarity to the keeper is 1.0)."""
    from curation.dedup.exact import exact_pairs, normalize_texts

    t0 = time.perf_counter()
    norm = normalize_texts(texts)
    left, right = exact_pairs(texts, normalized=norm)
    compared = (norm != "").to_numpy()
    return _outcome("dedup-exact", step_params("exact", config), len(texts), left, right, rank, compared,
                    lambda m, k: np.ones(len(m)), time.perf_counter() - t0)


def run_near(texts: pl.Series, rank: np.ndarray, config: DedupConfig) -> StepOutcome:
    """MinHash LSH near dedup; similarity to the keeper is the true shingle Jaccard."""
    from curation.dedup.minhash import jaccard_of_pairs, near_duplicates

    t0 = time.perf_counter()
    params = step_params("near", config)
    res = near_duplicates(texts, threshold=config.threshold, num_perm=config.num_perm,
                          bands=params["bands"], rows=params["rows"], ngram=config.ngram,
                          seed=config.seed,
                          max_bucket=config.max_bucket)
    return _outcome(
        "dedup-near", params, len(texts), res.left, res.right, rank, res.comparable,
        lambda m, k: jaccard_of_pairs(texts, m, k, ngram=config.ngram),
        time.perf_counter() - t0, candidates=res.candidates, verified_pairs=len(res.left),
        timings={k: round(v, 3) for k, v in res.timings.items()},
    )


def run_semantic(texts: pl.Series, rank: np.ndarray, config: DedupConfig) -> StepOutcome:
    """Embedding cosine dedup; similarity to the keeper is the cosine."""
    from curation.dedup.semantic import cosine_pairs, embed_texts

    t0 = time.perf_counter()
    compared = (texts.fill_null("").str.strip_chars() != "").to_numpy()
    idx = np.flatnonzero(compared)
    emb = np.zeros((len(texts), 384), dtype=np.float32)
    if len(idx):
        sub = embed_texts(texts.gather(idx).to_list())
        emb = np.zeros((len(texts), sub.shape[1]), dtype=np.float32)
        emb[idx] = sub
    i, j, _ = cosine_pairs(emb[idx], config.semantic_threshold)
    params = step_params("semantic", config)
    return _outcome("dedup-semantic", params, len(texts), idx[i], idx[j], rank, compared,
                    lambda m, k: np.einsum("ij,ij->i", emb[m], emb[k]).astype(np.float64),
                    time.perf_counter() - t0)


RUNNERS = {"exact": run_exact, "near": run_near, "semantic": run_semantic}


def decision_rows(record_ids: list[str], out: StepOutcome) -> Iterator[dict[str, Any]]:
    """The ``decisions`` rows of one step: passed, score (similarity), reason, detail."""
    c = out.clusters
    kept = c.kept
    for i, rid in enumerate(record_ids):
        size = int(c.size[i])
        keeper = record_ids[c.keeper[i]]
        sim = None if np.isnan(out.similarity[i]) else round(float(out.similarity[i]), 6)
        if not out.compared[i]:
            reason = "empty text: not compared"
        elif size == 1:
            reason = "singleton"
        elif kept[i]:
            reason = f"keeper of a cluster of {size}"
        else:
            reason = f"duplicate of {keeper}"
        yield {"record_id": rid, "passed": bool(kept[i]), "score": sim, "reason": reason,
               "detail": {"cluster": record_ids[c.label[i]], "keeper": keeper,
                          "cluster_size": size, "similarity": sim}}


def dedup_records(
    store: Store,
    config: DedupConfig,
    selection: Selection,
    *,
    progress: Tracker | None = None,
    batch_rows: int = 100_000,
) -> DedupRun:
    """Run the configured dedup steps over the selected records as one ``curate dedup`` run.

    ``progress`` (a ``corpus.display`` tracker) names the step running and counts the
    decisions written, one per record and step.
    """
    config.validate()
    selected = count_selected(store, selection)
    run_config = {"dedup": asdict(config), "selection": selection.as_dict(),
                  "steps": [{"step": f"dedup-{m}", "params": step_params(m, config)}
                            for m in config.methods]}
    outcomes: list[StepOutcome] = []
    with store.run("curate dedup", run_config) as run:
        df = load_records(store, selection, config.field)
        ids = df["record_id"].to_list()
        rank = keeper_rank(ids, rule=config.keep, lengths=df["length"].to_numpy(),
                           created=df["created"].to_numpy(), correct=df["correct"].to_numpy())
        texts = df["text"]
        kept_all = np.ones(len(ids), dtype=bool)
        if progress is not None:
            progress.update(total=len(ids) * len(config.methods), force=True)
        for method in config.methods:
            if progress is not None:
                progress.update(info=f"dedup-{method}", force=True)
            out = RUNNERS[method](texts, rank, config)
            # One short transaction per batch, as in curate filter: readers get in between.
            # A run that dies half-way is marked failed/killed in runs, so its partial
            # decisions are recognisable.
            rows = decision_rows(ids, out)
            while batch := list(itertools.islice(rows, batch_rows)):
                store.transact(lambda con, batch=batch, out=out: insert_decisions(
                    con, batch, run_id=run.run_id, step=out.step, params=out.params))
                if progress is not None:
                    progress.advance(len(batch))
            kept_all &= out.clusters.kept
            outcomes.append(out)
            run.counts.setdefault("seconds", {})[out.step] = round(out.seconds, 4)
            run.counts.setdefault("clusters", {})[out.step] = out.clusters.n_clusters
            if out.extra:
                run.counts[out.step] = out.extra
        run.counts["selected"] = selected
        run.counts["records"] = len(ids)
        run.counts["kept"] = int(kept_all.sum())
    return DedupRun(run.run_id, selected, int(kept_all.sum()), outcomes)
