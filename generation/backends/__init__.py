"""Model backends, chosen by a model spec string.

* ``openai:MODEL[@BASE_URL[,BASE_URL…]]`` — any OpenAI-compatible endpoint
  (:mod:`generation.backends.openai_backend`, see docs/collect.md);
* ``hf:PATH_OR_NAME[+ADAPTER]`` — in-process transformers (:mod:`generation.backends.hf`);
* ``reference`` — not a chat model but a grader with an answer key
  (:class:`generation.teachers.reference.ReferenceTeacher`); :func:`is_reference` tells it apart.

Backend modules are imported only when their spec is used, so listing specs or parsing them
never imports torch or openai.
"""

from __future__ import annotations

from typing import Any

from generation.backends.base import (
    AttemptInfo,
    Backend,
    BeforeSend,
    ChatRequest,
    ChatResult,
    OnResult,
)
from generation.errors import GenerationError

__all__ = [
    "AttemptInfo",
    "Backend",
    "BeforeSend",
    "ChatRequest",
    "ChatResult",
    "OnResult",
    "is_reference",
    "load_backend",
]

REFERENCE_SPEC = "reference"


def is_reference(spec: str) -> bool:
    """Whether ``spec`` names the reference grader rather than a model."""
    return spec.strip() == REFERENCE_SPEC


def load_backend(spec: str, **options: Any) -> Backend:
    """The backend for a model spec; ``options`` are that backend's options.

    ``openai:`` takes :class:`~generation.backends.openai_backend.OpenAIOptions` fields (or
    ``options=OpenAIOptions(...)``); ``hf:`` takes :class:`~generation.backends.hf.HFOptions`
    fields.
    """
    spec = spec.strip()
    if spec.startswith("openai:"):
        from generation.backends.openai_backend import OpenAIBackend, OpenAIOptions

        opts = options.pop("options", None) or OpenAIOptions(**options)
        return OpenAIBackend.from_spec(spec, opts)
    if spec.startswith("hf:"):
        from generation.backends.hf import HFBackend

        return HFBackend.from_spec(spec, **options)
    if is_reference(spec):
        raise GenerationError(
            "'reference' is a grader, not a chat model: it can be a --teacher, "
            "not a --responder or a student (use openai:MODEL or hf:PATH)"
        )
    raise GenerationError(
        f"unknown model spec {spec!r}: use openai:MODEL[@BASE_URL], hf:PATH_OR_NAME[+ADAPTER] "
        "or reference"
    )
