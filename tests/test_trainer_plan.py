"""The memory plan and the FLOP formula against what torch measures on CPU.

- parameter counts: ModelShape equals transformers' own count for generated Llama shapes;
  the LoRA count equals peft's trainable parameters;
- memory: the plan's per-GPU total for one training step of the tiny model is within 15% of
  the peak of live tensor storage measured while the real trainer step runs (measured
  during development: -10% to +3% across full/LoRA, dropout, checkpointing);
- FLOPs: ``train_flops`` equals torch's FlopCounterMode count of a real forward + backward,
  exactly for full fine-tuning (plus the masked half of attention, which the formula leaves
  out on purpose), within 3% for LoRA (its first layer needs no input gradient).
"""

from __future__ import annotations

import random
import weakref
from pathlib import Path

import pytest

from trainer.config import TrainConfig
from trainer.plan import ModelShape, lora_params, memory_plan, train_flops


def _shapes(n: int) -> list[dict]:
    """Generated Llama configs: GQA or not, tied or not, biases, odd sizes."""
    rng = random.Random(3)
    out = []
    for _ in range(n):
        heads = rng.choice([2, 4, 8])
        head_dim = rng.choice([8, 16])
        out.append(dict(
            vocab_size=rng.randint(50, 700), hidden_size=heads * head_dim * rng.choice([1, 2]),
            num_hidden_layers=rng.randint(1, 3), num_attention_heads=heads,
            num_key_value_heads=rng.choice([h for h in (1, 2, heads) if heads % h == 0]),
            head_dim=head_dim, intermediate_size=rng.randint(16, 200),
            tie_word_embeddings=rng.random() < 0.5, attention_bias=rng.random() < 0.3,
            mlp_bias=rng.random() < 0.3))
    return out


@pytest.mark.parametrize("config", _shapes(8))
def test_parameter_counts_match_transformers_and_peft(config):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(**config))
    shape = ModelShape.from_config(LlamaConfig(**config).to_dict())
    assert shape.params == sum(p.numel() for p in model.parameters())
    cfg = TrainConfig(lora_r=4, lora_targets="q_proj,v_proj,down_proj")
    for targets in ("all-linear", "q_proj,v_proj,down_proj"):
        cfg.lora_targets = targets
        with torch.no_grad():
            peft = get_peft_model(LlamaForCausalLM(LlamaConfig(**config)), LoraConfig(
                r=4, lora_alpha=8, target_modules=targets if targets == "all-linear"
                else targets.split(","), task_type="CAUSAL_LM"))
        assert lora_params(shape, cfg) == sum(p.numel() for p in peft.parameters()
                                              if p.requires_grad)


class PeakMemory:
    """Bytes of live tensor storage (any device) created under it, plus those it is given to
    track, and their peak: a TorchDispatchMode seeing every tensor an op returns."""

    def __init__(self, tensors):
        from torch.utils._python_dispatch import TorchDispatchMode

        outer = self
        self.live: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.now = self.peak = 0

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                from torch.utils._pytree import tree_flatten

                out = func(*args, **(kwargs or {}))
                outer.track(tree_flatten(out)[0])
                return out

        self.mode = Mode()
        self.track(tensors)

    def track(self, tensors) -> None:
        import torch

        for t in tensors:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                st = t.untyped_storage()
                if st not in self.live:
                    self.live[st] = st.nbytes()
                    self.now += st.nbytes()
                    weakref.finalize(st, self._free, st.nbytes())
                    self.peak = max(self.peak, self.now)

    def _free(self, n: int) -> None:
        self.now -= n


@pytest.fixture(scope="module")
def plan_model(tmp_path_factory) -> Path:
    from trainer.testing.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("plan"), hidden=64, layers=3, heads=4,
                            kv_heads=2, intermediate=160)


CASES = [dict(full=True), dict(lora_dropout=0.0), dict(lora_dropout=0.05),
         dict(full=True, gradient_checkpointing=True),
         dict(lora_dropout=0.05, gradient_checkpointing=True)]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
@pytest.mark.parametrize("tokens,trained", [(1024, 0.25), (1536, 1.0)])
def test_plan_matches_the_measured_peak_of_a_training_step(plan_model, kw, tokens, trained):
    import torch

    from trainer.model import load_model
    from trainer.packing import collate
    from trainer.sequences import Example
    from trainer.train import Dist, backward_window, make_optimizer

    torch.set_num_threads(1)
    cfg = TrainConfig(base=str(plan_model), pack_len=tokens, max_len=tokens, lora_r=8, **kw)
    rng = random.Random(0)
    row = []
    for _ in range(4):  # one packed row of 4 examples, the last `trained` share of each trained
        n = tokens // 4
        ids = [rng.randrange(5, 500) for _ in range(n)]
        row.append(Example(ids, [-100 if j < n * (1 - trained) else t for j, t in enumerate(ids)]))
    batch = collate([row], 0)
    model = load_model(cfg, "cpu")
    model.train()
    optimizer, _ = make_optimizer(model, cfg, 10)
    peak = PeakMemory(list(model.parameters()) + list(model.buffers()))
    with peak.mode:
        for _ in range(2):  # the second step has the optimizer state
            backward_window(model, [batch], Dist())
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    plan = memory_plan(cfg, ModelShape.from_path(plan_model), 1, cuda=False,
                       trained_fraction=trained)
    assert plan.total == pytest.approx(peak.peak, rel=0.15), (plan.rows, peak.peak)


@pytest.mark.parametrize("full", [True, False])
def test_train_flops_equal_torch_flop_counter(plan_model, full):
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModelForCausalLM

    from trainer.model import add_lora

    shape = ModelShape.from_path(plan_model)
    model = AutoModelForCausalLM.from_pretrained(plan_model, attn_implementation="eager")
    cfg = TrainConfig(full=full, lora_r=8, lora_dropout=0.0)
    if not full:
        model = add_lora(model, cfg)
    s, trained = 96, 40
    ids = torch.randint(5, 500, (1, s))
    keep = torch.zeros(1, s, dtype=torch.bool)
    keep[0, -trained:] = True
    with FlopCounterMode(display=False) as counter:
        logits = model(input_ids=ids, logits_to_keep=keep).logits
        logits.float().logsumexp(-1).sum().backward()
    formula = train_flops(shape, tokens=s, trained_tokens=trained, sum_sq_lengths=s * s,
                          full=full, lora=lora_params(shape, cfg))
    # Eager attention computes the masked (upper) half of each s x s score matrix as well.
    masked_half = 6 * shape.layers * shape.heads * shape.head_dim * s * s
    if full:
        assert counter.get_total_flops() == formula + masked_half
    else:
        assert counter.get_total_flops() == pytest.approx(formula + masked_half, rel=0.03)


def test_plan_cli_says_whether_a_7b_full_fine_tune_fits(cli, tmp_path):
    import json

    base = tmp_path / "llama-7b"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
        "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32,
        "vocab_size": 32000}))
    common = ["train", "--base", str(base), "--full", "--max-len", "4096", "--plan",
              "--world-size", "8", "--gpu-memory", "80"]
    ddp = cli(*common).output
    assert "6.74B parameters" in ddp and "does NOT fit in 80 GiB" in ddp
    fsdp = cli(*common, "--shard", "fsdp").output
    assert "fp32 master shards/8 ranks" in fsdp and "\nfits in 80 GiB" in fsdp
    bad = cli("train", "--base", str(base), exit_code=1).output
    assert "--data EXPORT_DIR and --out DIR are required" in bad
    assert "needs shard=fsdp" in cli(*common, "--cpu-offload", exit_code=1).output
