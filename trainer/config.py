"""The trainer's flat configuration: every knob in one dataclass, defaults explained inline.

CLI flags (``selfevo train`` / ``python -m trainer``) override these fields; the resolved
config is written next to every checkpoint (``selfevo_train.json``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainConfig:
    """Everything one training run needs. Flat on purpose: read it top to bottom."""

    # --- inputs / outputs
    data: str = ""  # export directory (manifest.json + records.parquet|jsonl|hf/)
    base: str = ""  # base model: a local HF folder (or hub name when online)
    out: str = ""  # output directory: checkpoints/, final/, metrics.jsonl, merged/
    # --- sequences
    max_len: int = 2048  # tokens per example; longer examples are dropped (counted, logged)
    chat_template: bool = True  # use the tokenizer's chat template when it has one
    direct_weight: float = 0.0  # >0 adds a direct p -> r̂ example per meta/self record, loss weight
    kinds: list[str] = field(default_factory=lambda: ["meta", "self", "qa"])  # record kinds used
    # --- batching
    pack: bool = True  # padding-free packing of several examples per row (no cross-attention)
    batch_size: int = 1  # rows per micro-batch (a packed row holds up to pack_len tokens)
    pack_len: int = 0  # packed row length in tokens; 0 = max_len
    grad_accum: int = 1  # micro-batches per optimizer step (per process)
    # --- schedule
    epochs: float = 1.0  # passes over the data (fractions allowed)
    max_steps: int = 0  # >0: exactly this many optimizer steps, epochs ignored (as in HF)
    lr: float = 2e-4  # peak learning rate (2e-4 suits LoRA; use ~1e-5 for full fine-tuning)
    schedule: str = "cosine"  # cosine | linear | constant (after warmup)
    warmup_ratio: float = 0.03  # fraction of steps with linear warmup from 0
    min_lr_ratio: float = 0.0  # final lr as a fraction of the peak for cosine/linear
    weight_decay: float = 0.0  # AdamW weight decay (not applied to biases and norms)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    max_grad_norm: float = 1.0  # clip the global gradient norm; 0 disables clipping
    # --- model
    full: bool = False  # full fine-tuning instead of LoRA
    lora_r: int = 16  # LoRA rank
    lora_alpha: int = 32  # LoRA scaling numerator (scale = alpha / r)
    lora_dropout: float = 0.05  # dropout on the LoRA input
    lora_targets: str = "all-linear"  # peft target_modules: "all-linear" or comma-separated names
    gradient_checkpointing: bool = False  # trade compute for activation memory
    precision: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | bf16 | fp16 (dynamic loss scaling; for GPUs without bf16) | fp32
    attn: str = "auto"  # auto | varlen | sdpa | eager | flash_attention_2 (auto: flash-attn on GPU if installed, else varlen)
    # --- run
    seed: int = 0  # seeds data order, LoRA init and dropout
    save_every: int = 0  # save a checkpoint every N steps (0: only at the end)
    log_every: int = 1  # write a metrics.jsonl line every N steps
    resume: bool = False  # continue from the latest checkpoint in out/checkpoints/
    merge: bool = False  # also write merged full weights to out/merged (for serving, e.g. vLLM)
    progress: bool = True  # rich progress bar (rank 0 only)

    def resolved(self) -> dict[str, Any]:
        """The config as a plain JSON-able dict (what is saved with checkpoints)."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`resolved`; unknown keys are an error (a typo must not be ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown trainer config field(s): {', '.join(unknown)}")
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)
