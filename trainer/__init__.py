"""Lean SFT trainer for exported selfevo snapshots (LoRA or full, one GPU or many).

Reads only an export directory (``manifest.json`` + data files) and the ``schemas`` package;
it never opens the store, so it runs on a GPU machine that has just torch, transformers, peft
and the export. Heavy libraries are imported inside functions. Fixtures for tests and
benchmarks (a tiny offline model, synthetic exports) live in :mod:`trainer.testing`.
"""
