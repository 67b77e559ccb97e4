"""Packing never mixes examples, and accumulation normalises by the window's trained tokens."""

from __future__ import annotations

import pytest

from trainer.packing import collate, pack_examples, weighted_loss_sum
from trainer.sequences import build_examples
from trainer.testing.synthetic import export_row, synthetic_records
from trainer.train import Dist, backward_window


@pytest.fixture(scope="module")
def model_and_examples(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    rows = [export_row(r) for r in synthetic_records(8, seed=3, kinds=("meta", "qa"))]
    examples, _ = build_examples(rows, tok, max_len=2048, direct_weight=0.5)
    return model, tok, examples


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_pack_examples_fits_and_keeps_everything(model_and_examples):
    _, _, examples = model_and_examples
    rows = pack_examples(examples, 400)
    assert sorted(i for r in rows for i in r) == list(range(len(examples)))
    for r in rows:
        assert len(r) == 1 or sum(len(examples[i].input_ids) for i in r) <= 400
    assert len(rows) < len(examples)  # something was actually packed


def test_packed_loss_and_gradients_equal_unpacked(model_and_examples):
    import torch

    model, tok, examples = model_and_examples
    model.zero_grad()
    unpacked = sum(weighted_loss_sum(model, collate([[e]], tok.pad_token_id)) for e in examples)
    unpacked.backward()
    g_unpacked = _grads(model)
    model.zero_grad()
    # One row holding every example, and a padded 2-row batch of packed rows.
    packed = weighted_loss_sum(model, collate([examples], tok.pad_token_id))
    packed.backward()
    g_packed = _grads(model)
    model.zero_grad()
    two = weighted_loss_sum(model, collate([examples[:3], examples[3:]], tok.pad_token_id))
    assert torch.allclose(packed, unpacked, rtol=1e-5)
    assert torch.allclose(two, unpacked, rtol=1e-5)
    for n in g_unpacked:
        assert torch.allclose(g_packed[n], g_unpacked[n], rtol=1e-4, atol=1e-6), n
    # Without restarting positions (one long sequence) the examples attend to each other.
    batch = collate([examples], tok.pad_token_id)
    batch["position_ids"] = torch.arange(batch["input_ids"].shape[1]).unsqueeze(0)
    with torch.no_grad():
        leaky = weighted_loss_sum(model, batch)
    assert not torch.allclose(leaky, packed.detach(), rtol=1e-5)


def test_accumulated_gradients_equal_one_big_batch(model_and_examples):
    import torch

    model, tok, examples = model_and_examples
    small, big = examples[:1], examples[1:]  # very different trained-token counts
    one = Dist()
    model.zero_grad()
    loss_acc, n_acc = backward_window(
        model, [collate([small], tok.pad_token_id), collate([big], tok.pad_token_id)], one
    )
    g_acc = _grads(model)
    model.zero_grad()
    loss_big, n_big = backward_window(model, [collate([small + big], tok.pad_token_id)], one)
    g_big = _grads(model)
    model.zero_grad()
    assert n_acc == n_big
    assert loss_acc == pytest.approx(loss_big, rel=1e-5)
    for n in g_big:
        assert torch.allclose(g_acc[n], g_big[n], rtol=1e-4, atol=1e-7), n
    # The common mistake (mean per micro-batch, then averaged) gives a different gradient.
    for part in (small, big):
        b = collate([part], tok.pad_token_id)
        (weighted_loss_sum(model, b) / b["weights"].sum() / 2).backward()
    g_naive = _grads(model)
    model.zero_grad()
    name = next(iter(g_big))
    assert not torch.allclose(g_naive[name], g_big[name], rtol=1e-3)


def test_varlen_attention_matches_masked_sdpa(tiny_model_dir, model_and_examples):
    """selfevo_varlen (per-example SDPA) gives the block-diagonal mask's loss and gradients."""
    import torch
    from transformers import AutoModelForCausalLM

    from trainer.attention import register

    _, tok, examples = model_and_examples
    batch = collate([examples[:4], examples[4:]], tok.pad_token_id)
    results = []
    for impl in ("sdpa", register()):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=impl)
        loss = weighted_loss_sum(model, batch)
        loss.backward()
        results.append((loss.detach(), _grads(model)))
    (l1, g1), (l2, g2) = results
    assert torch.allclose(l1, l2, rtol=1e-5)
    for n in g1:
        assert torch.allclose(g1[n], g2[n], rtol=1e-4, atol=1e-5), n
