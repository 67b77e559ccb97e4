"""Varlen attention without FlashAttention: packed rows attend per example, nothing wasted.

transformers handles packed rows (``position_ids`` restarting at 0) in two ways: the
FlashAttention-2 varlen kernel (GPU, needs ``flash-attn``), or a block-diagonal T x T mask for
SDPA/eager — correct, but every query still scores every key of the row, so a row packed
with eight examples pays ~8x the attention FLOPs of the examples themselves. That made packing
*slower* than padding on CPU. ``selfevo_varlen`` registers an attention implementation that
splits each row at the position restarts and runs causal SDPA on each example separately (no
mask, so PyTorch picks its fused kernels). With a padding mask (generation) or a KV cache it is
plain SDPA.
"""

from __future__ import annotations

from typing import Any

NAME = "selfevo_varlen"


def segments(position_ids: Any) -> list[list[tuple[int, int]]]:
    """Per row, the ``[start, end)`` spans of examples (a new span wherever positions restart)."""
    import torch

    rows = []
    diff = torch.diff(position_ids, dim=-1) != 1
    for b in range(position_ids.shape[0]):
        cuts = (torch.nonzero(diff[b]).flatten() + 1).tolist()
        bounds = [0, *cuts, position_ids.shape[1]]
        rows.append(list(zip(bounds[:-1], bounds[1:], strict=True)))
    return rows


def varlen_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                     dropout: float = 0.0, scaling: float | None = None, **kwargs: Any) -> Any:
    """Causal SDPA per packed example; falls back to SDPA when a mask or cache is involved."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.pop("position_ids", None)
    if attention_mask is not None or position_ids is None or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    groups = query.shape[1] // key.shape[1]
    rows = []
    for b, spans in enumerate(segments(position_ids.expand(query.shape[0], -1))):
        parts = [
            torch.nn.functional.scaled_dot_product_attention(
                query[b : b + 1, :, s:e], key[b : b + 1, :, s:e], value[b : b + 1, :, s:e],
                dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=groups > 1,
            )
            for s, e in spans
        ]
        rows.append(torch.cat(parts, dim=2))  # [1, heads, T, head_dim]
    # The caller expects [batch, T, heads, head_dim] (it reshapes and copies once).
    return torch.cat(rows, dim=0).transpose(1, 2), None


def _varlen_mask(**kwargs: Any) -> Any:
    """No mask for unpadded rows (the attention splits them); SDPA's mask otherwise."""
    from transformers.masking_utils import sdpa_mask

    if kwargs.get("attention_mask") is None and kwargs["q_length"] == kwargs["kv_length"]:
        return None
    return sdpa_mask(**kwargs)


def register() -> str:
    """Register ``selfevo_varlen`` with transformers (idempotent); return its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, varlen_attention)
    AttentionMaskInterface.register(NAME, _varlen_mask)
    return NAME
