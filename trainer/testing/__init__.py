"""Offline fixtures for tests, benchmarks and ``selfevo demo --quick``; not the trainer's API.

* :mod:`trainer.testing.tiny` — a tiny random Llama model with a BPE tokenizer, built offline;
* :mod:`trainer.testing.synthetic` — synthetic records and a valid export directory.
"""
