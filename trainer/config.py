"""The trainer's flat configuration: every knob in one dataclass, defaults explained inline.

CLI flags (``selfevo train`` / ``python -m trainer``) override these fields; the resolved
config is written next to every checkpoint (``selfevo_train.json``).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any

#: Allowed values of the string fields that name a choice.
CHOICES = {
    "schedule": ("cosine", "linear", "constant"),
    "precision": ("auto", "bf16", "fp16", "fp32"),
    "attn": ("auto", "varlen", "sdpa", "eager", "flash_attention_2"),
    "shard": ("ddp", "fsdp", "none"),
}
#: Fields that must be > 0 and fields that must be >= 0.
POSITIVE = ("max_len", "batch_size", "grad_accum", "lr", "lora_r", "lora_alpha", "log_every")
NON_NEGATIVE = ("direct_weight", "pack_len", "epochs", "max_steps", "warmup_ratio",
                "min_lr_ratio", "weight_decay", "max_grad_norm", "lora_dropout", "save_every",
                "shard_group")


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
    # --- scale (torchrun; docs/train.md "Scale")
    shard: str = "ddp"  # ddp: whole model on every rank (nothing to wrap on one process) | fsdp: FSDP2 shards parameters, gradients and optimizer state over the ranks | none: one process, no wrapper
    shard_group: int = 0  # fsdp: shard within groups of this many ranks, replicate across groups (HSDP; e.g. GPUs per node); 0 = shard over all ranks
    cpu_offload: bool = False  # fsdp: keep the sharded parameters, gradients and optimizer state in CPU memory (the optimizer steps on the CPU)
    # --- run
    seed: int = 0  # seeds data order, LoRA init and dropout
    save_every: int = 0  # save a checkpoint every N steps (0: only at the end)
    log_every: int = 1  # write a metrics.jsonl line every N steps
    resume: bool = False  # continue from the latest checkpoint in out/checkpoints/
    merge: bool = False  # also write merged full weights to out/merged (for serving, e.g. vLLM)
    progress: bool = True  # rank 0 shows progress: selfevo train a bar, python -m trainer lines

    def resolved(self) -> dict[str, Any]:
        """The config as a plain JSON-able dict (what is saved with checkpoints)."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`resolved`, checked: unknown keys, wrong types and out-of-range
        values are a ``ValueError`` naming the field (a typo must not be ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            hints = [m for k in unknown for m in difflib.get_close_matches(k, names, 1)]
            raise ValueError(f"unknown trainer setting(s): {', '.join(unknown)}"
                             + (f" (did you mean {', '.join(hints)}?)" if hints else ""))
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        cfg = cls(**d)
        cfg.check()
        return cfg

    def check(self) -> None:
        """Raise ``ValueError`` for a value of the wrong type or outside its range."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, hint = getattr(self, f.name), hints[f.name]
            ok = {bool: isinstance(value, bool), str: isinstance(value, str),
                  int: isinstance(value, int) and not isinstance(value, bool),
                  float: isinstance(value, (int, float)) and not isinstance(value, bool)}.get(hint)
            if ok is False:
                raise ValueError(f"trainer setting {f.name}={value!r}: expected {hint.__name__}")
            if hint is float and not math.isfinite(value):
                raise ValueError(f"trainer setting {f.name}={value!r}: must be a finite number")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"trainer setting {name}={getattr(self, name)!r}: use one of "
                                 + ", ".join(allowed))
        for name in POSITIVE:
            if not getattr(self, name) > 0:
                raise ValueError(f"trainer setting {name}={getattr(self, name)!r}: must be > 0")
        for name in NON_NEGATIVE:
            if getattr(self, name) < 0:
                raise ValueError(f"trainer setting {name}={getattr(self, name)!r}: must be >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):  # NaN fails too
            raise ValueError(f"trainer setting betas={list(self.betas)}: two numbers in [0, 1)")
        bad = sorted(set(self.kinds) - {"meta", "self", "qa"})
        if bad or not self.kinds:
            raise ValueError(f"trainer setting kinds={self.kinds}: use meta, self and/or qa")
        if self.shard != "fsdp":
            for name in ("shard_group", "cpu_offload"):
                if getattr(self, name):
                    raise ValueError(f"trainer setting {name}={getattr(self, name)!r} needs "
                                     "shard=fsdp")
        elif self.precision == "fp16":
            raise ValueError("trainer setting precision='fp16' is not supported with shard=fsdp "
                             "(no sharded loss scaler); use bf16, or fp32 on GPUs without bf16")


def parse_value(name: str, raw: str) -> Any:
    """The value of ``KEY=VALUE`` for field ``name``, converted to the field's type."""
    hint = typing.get_type_hints(TrainConfig)[name]
    text = raw.strip()
    if hint is bool:
        low = text.lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"trainer setting {name}={raw!r}: expected true or false")
    if hint in (int, float):
        try:
            number = float(text) if hint is float else int(text)
        except ValueError:
            raise ValueError(f"trainer setting {name}={raw!r}: expected {hint.__name__}") from None
        return number
    if hint is str:
        return text
    # kinds (list of names) and betas (two floats): JSON or comma-separated
    try:
        items = json.loads(text) if text.startswith("[") else [x for x in text.split(",") if x]
        if not isinstance(items, list):
            raise ValueError(text)
        return [float(x) for x in items] if name == "betas" else [str(x).strip() for x in items]
    except (ValueError, TypeError):
        raise ValueError(f"trainer setting {name}={raw!r}: expected a list, e.g. "
                         f"{name}={'0.9,0.999' if name == 'betas' else 'meta,qa'}") from None


def parse_overrides(items: typing.Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` settings (``selfevo train --set``, ``selfevo evolve --train``) as typed
    values; dashes in keys are underscores. Unknown keys and bad values raise ``ValueError``."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"{item!r}: expected KEY=VALUE, e.g. max_steps=20")
        if key not in names:
            hint = difflib.get_close_matches(key, names, 1)
            raise ValueError(f"unknown trainer setting {key!r}"
                             + (f" (did you mean {hint[0]}?)" if hint else ""))
        out[key] = parse_value(key, raw)
    return out
