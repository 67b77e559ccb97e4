"""Clusters from verified duplicate pairs (union-find) and the deterministic keeper rules.

Every dedup method (exact, near, semantic) ends the same way: a list of verified pairs
``(i, j)`` over the indices of the texts it was given. The clusters are the connected
components of that graph, so duplication is transitive (A~B and B~C put A, B and C in one
cluster even when A and C are not similar themselves). One member of each cluster is kept;
which one is decided by a *keeper rule* turned into a total order (``rank``), ties broken
by record id, so the same input always gives the same keeper.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

KEEP_RULES = ("first", "verdict-then-shortest", "shortest", "longest")


def connected_components(n: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Label each of ``n`` nodes with its component: the smallest node index in it.

    Union-find with path halving over the edges ``left[k] -- right[k]``. Only nodes that
    appear in an edge enter the Python loop (their ids are compressed first), so a million
    texts with a hundred thousand duplicate pairs cost well under a second.
    """
    labels = np.arange(n, dtype=np.int64)
    if len(left) == 0:
        return labels
    nodes, inverse = np.unique(np.concatenate([left, right]), return_inverse=True)
    m = len(left)
    a_list = inverse[:m].tolist()
    b_list = inverse[m:].tolist()
    parent = list(range(len(nodes)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in zip(a_list, b_list, strict=True):
        ra, rb = find(a), find(b)
        if ra != rb:
            # The smaller compressed id (= smaller node index) becomes the root, so the
            # label of a component is its smallest member whatever the edge order.
            if ra < rb:
                parent[rb] = ra
            else:
                parent[ra] = rb
    roots = np.fromiter((find(x) for x in range(len(nodes))), dtype=np.int64, count=len(nodes))
    labels[nodes] = nodes[roots]
    return labels


def keeper_rank(
    record_ids: Sequence[str],
    *,
    rule: str,
    lengths: np.ndarray | None = None,
    created: np.ndarray | None = None,
    correct: np.ndarray | None = None,
) -> np.ndarray:
    """Position of each record in the keeper order of ``rule`` (0 = kept first).

    * ``first``: earliest ``created`` (insertion time), then record id;
    * ``shortest`` / ``longest``: by ``lengths`` (characters of the deduplicated field);
    * ``verdict-then-shortest``: records whose verdict is correct first, then shortest.

    Ties are always broken by record id, so the order is total and deterministic.
    """
    if rule not in KEEP_RULES:
        raise ValueError(f"unknown keep rule {rule!r}; valid: {', '.join(KEEP_RULES)}")
    n = len(record_ids)
    ids = np.asarray(record_ids, dtype=object)
    # np.lexsort sorts by the LAST key first; record id is the final tie-breaker.
    id_order = np.argsort(ids, kind="stable")
    id_rank = np.empty(n, dtype=np.int64)
    id_rank[id_order] = np.arange(n)
    keys: list[np.ndarray] = [id_rank]
    if rule == "first":
        keys.append(np.asarray(created if created is not None else np.zeros(n)))
    elif rule == "shortest":
        keys.append(np.asarray(lengths))
    elif rule == "longest":
        keys.append(-np.asarray(lengths, dtype=np.int64))
    else:
        keys.append(np.asarray(lengths))
        keys.append(~np.asarray(correct, dtype=bool))
    order = np.lexsort(keys)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    return rank


@dataclass(frozen=True)
class Clusters:
    """Cluster assignment of ``n`` items.

    ``label[i]``: smallest index in i's cluster; ``keeper[i]``: index of the item kept for
    i's cluster; ``size[i]``: members in i's cluster (1 for a singleton).
    """

    label: np.ndarray
    keeper: np.ndarray
    size: np.ndarray

    @property
    def kept(self) -> np.ndarray:
        """Boolean mask of the items that pass (keepers and singletons)."""
        return self.keeper == np.arange(len(self.keeper))

    @property
    def n_clusters(self) -> int:
        """Clusters with at least two members."""
        return int(((self.size > 1) & self.kept).sum())


def assign_keepers(label: np.ndarray, rank: np.ndarray) -> Clusters:
    """For each cluster pick the member with the smallest ``rank`` as its keeper."""
    n = len(label)
    # Sort by (label, rank): the first element of each label run is its keeper.
    order = np.lexsort((rank, label))
    sorted_label = label[order]
    starts = np.flatnonzero(np.r_[True, sorted_label[1:] != sorted_label[:-1]])
    sizes = np.diff(np.r_[starts, n])
    keeper_of_run = order[starts]
    keeper = np.empty(n, dtype=np.int64)
    size = np.empty(n, dtype=np.int64)
    keeper[order] = np.repeat(keeper_of_run, sizes)
    size[order] = np.repeat(sizes, sizes)
    return Clusters(label=label, keeper=keeper, size=size)
