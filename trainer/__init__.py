"""Lean SFT trainer for exported selfevo snapshots (LoRA or full, one GPU or many).

Reads only an export directory (``manifest.json`` + data files) and the ``schemas`` package;
it never opens the store, so it runs on a GPU machine that has just torch, transformers, peft
and the export. Heavy libraries are imported inside functions.
"""

from trainer.tiny import build_tiny_model

__all__ = ["build_tiny_model"]
