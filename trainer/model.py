"""The model a run trains: the base causal LM, its attention kernel, LoRA adapters.

:func:`load_model` reads the base weights from ``cfg.base``; with ``meta=True`` it builds the
same modules (same names, shapes, LoRA layers) on PyTorch's ``meta`` device without reading a
weight — what FSDP ranks other than 0 do before rank 0 broadcasts the real values
(trainer/sharding.py), and what the export uses to rebuild a full model from gathered weights.
"""

from __future__ import annotations

import warnings
from typing import Any

from trainer.config import TrainConfig


def attention_for(cfg: TrainConfig, cuda: bool) -> str:
    """The ``attn_implementation`` to load the model with.

    Packed rows need varlen attention: FlashAttention-2 when installed (GPU), else per-example
    SDPA (trainer/attention.py) instead of a wasteful block-diagonal mask.
    """
    attn = cfg.attn
    if attn == "auto":
        attn = "varlen"
        if cuda:
            try:
                import flash_attn  # noqa: F401

                attn = "flash_attention_2"
            except ImportError:
                pass
    if attn == "varlen":
        from trainer.attention import register

        attn = register()
    return attn


def base_dtype(cfg: TrainConfig, cuda: bool) -> Any:
    """The dtype the base weights are loaded in.

    A frozen LoRA base can live in half precision on GPU (fp16 when asked for: GPUs without
    bf16); trained weights stay fp32 and autocast does the half-precision matmuls. Under FSDP
    every parameter is an fp32 master copy, sharded (FSDP casts to bf16 for compute), because
    FSDP wants one dtype per parameter group.
    """
    import torch

    if cuda and not cfg.full and cfg.precision != "fp32" and cfg.shard != "fsdp":
        return torch.float16 if cfg.precision == "fp16" else torch.bfloat16
    return torch.float32


def load_model(cfg: TrainConfig, device: str, *, meta: bool = False) -> Any:
    """The causal LM from ``cfg.base``, wrapped with LoRA unless ``cfg.full``, on ``device``.

    ``meta=True``: the same modules without their weights (on the meta device; ``device`` is
    ignored). LoRA A matrices are random: they are seeded with ``cfg.seed`` here.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cuda = device.startswith("cuda")
    attn = attention_for(cfg, cuda)
    dtype = base_dtype(cfg, cuda)
    if meta:
        config = AutoConfig.from_pretrained(cfg.base)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    else:
        model = AutoModelForCausalLM.from_pretrained(cfg.base, dtype=dtype, attn_implementation=attn)
    model.config.use_cache = False
    if cfg.gradient_checkpointing:  # per decoder layer
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        if not cfg.full:
            model.enable_input_require_grads()
    if not cfg.full:
        model = add_lora(model, cfg)
    return model if meta else model.to(device)


def add_lora(model: Any, cfg: TrainConfig) -> Any:
    """``model`` with fresh peft LoRA adapters (seeded), trained in fp32 over any base dtype."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(cfg.seed)
    targets: Any = cfg.lora_targets
    if targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    lora = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=targets, task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():  # peft calls a transformers alias deprecated in v5
        warnings.simplefilter("ignore", FutureWarning)
        model = get_peft_model(model, lora)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return model
