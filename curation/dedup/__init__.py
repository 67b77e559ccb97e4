"""Deduplication: exact (normalised hash), near (MinHash LSH), semantic (embeddings).

One module per method; ``clusters`` turns verified pairs into clusters and keepers, and
``pipeline`` runs the steps over a store selection and writes the decisions.
"""

from curation.dedup.clusters import (
    KEEP_RULES,
    Clusters,
    assign_keepers,
    connected_components,
    keeper_rank,
)
from curation.dedup.exact import exact_pairs, normalize_text, normalize_texts
from curation.dedup.minhash import (
    NearResult,
    candidate_probability,
    near_duplicates,
    optimal_bands,
    shingle_hashes,
)
from curation.dedup.pipeline import DedupConfig, DedupRun, dedup_records

__all__ = [
    "KEEP_RULES", "Clusters", "DedupConfig", "DedupRun", "NearResult", "assign_keepers",
    "candidate_probability", "connected_components", "dedup_records", "exact_pairs",
    "keeper_rank", "near_duplicates", "normalize_text", "normalize_texts", "optimal_bands",
    "shingle_hashes",
]
