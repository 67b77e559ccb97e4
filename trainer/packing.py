"""Padding-free packing and batch tensors.

Several examples share one row; ``position_ids`` restart at 0 for every example and no
attention mask is passed. transformers then treats each restart as a new sequence: on
SDPA/eager it builds a block-diagonal causal mask (``masking_utils.find_packed_sequence_indices``),
with FlashAttention-2 it runs the varlen kernel — either way no token attends to another
example. Targets are shifted *inside* each example before concatenation, so no example
predicts the first token of the next one. ``tests/test_trainer_packing.py`` proves the packed
loss equals the unpacked one.
"""

from __future__ import annotations

from typing import Any

from trainer.sequences import IGNORE, Example


def pack_examples(examples: list[Example], pack_len: int) -> list[list[int]]:
    """Group example indices into rows of at most ``pack_len`` tokens (first-fit decreasing).

    Deterministic: ties keep input order. Rows are returned in order of creation; the trainer
    shuffles rows per epoch.
    """
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids))
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = len(examples[i].input_ids)
        for r, room in enumerate(free):
            if n <= room:
                rows[r].append(i)
                free[r] -= n
                break
        else:
            rows.append([i])
            free.append(pack_len - n)
    return rows


def collate(rows: list[list[Example]], pad_id: int) -> dict[str, Any]:
    """Tensors for a micro-batch: each row is a list of examples packed back to back.

    Returns ``input_ids``, ``position_ids``, ``targets`` (next-token ids, ``-100`` where no loss)
    and ``weights`` (the example's loss weight on trained targets, else 0), all ``[B, T]``.
    Short rows are right-padded with a separate dummy sequence (positions restart, no loss).
    """
    import torch

    built = []
    for row in rows:
        ids: list[int] = []
        pos: list[int] = []
        tgt: list[int] = []
        wts: list[float] = []
        for ex in row:
            n = len(ex.input_ids)
            ids += ex.input_ids
            pos += range(n)
            shifted = ex.labels[1:] + [IGNORE]  # target of token t is the label of token t+1
            tgt += shifted
            wts += [ex.weight if t != IGNORE else 0.0 for t in shifted]
        built.append((ids, pos, tgt, wts))
    width = max(len(b[0]) for b in built)
    out: dict[str, list] = {"input_ids": [], "position_ids": [], "targets": [], "weights": []}
    for ids, pos, tgt, wts in built:
        pad = width - len(ids)
        out["input_ids"].append(ids + [pad_id] * pad)
        out["position_ids"].append(pos + list(range(pad)))
        out["targets"].append(tgt + [IGNORE] * pad)
        out["weights"].append(wts + [0.0] * pad)
    return {
        "input_ids": torch.tensor(out["input_ids"], dtype=torch.long),
        "position_ids": torch.tensor(out["position_ids"], dtype=torch.long),
        "targets": torch.tensor(out["targets"], dtype=torch.long),
        "weights": torch.tensor(out["weights"], dtype=torch.float32),
    }


def weighted_loss_sum(model: Any, batch: dict[str, Any]) -> Any:
    """Sum over trained targets of ``weight * cross_entropy`` (divide by the window's weight).

    The LM head runs only at trained positions (``logits_to_keep`` as a boolean mask): in
    meta-skill data most tokens are context, and the vocabulary projection is a large share
    of a small model's compute. The gradient is the same as projecting every position.
    """
    import torch.nn.functional as F

    keep = batch["targets"] != IGNORE
    logits = model(
        input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False,
        logits_to_keep=keep,
    ).logits
    if logits.dim() == 3:  # a model that ignores a boolean logits_to_keep: select here
        logits = logits[keep]
    ce = F.cross_entropy(logits.float(), batch["targets"][keep], reduction="none")
    return (ce * batch["weights"][keep]).sum()
