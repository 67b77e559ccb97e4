"""The one small interface every model backend implements.

A batch of chat requests goes in; one result per request comes out, in order. ``on_result``
is called as each result is ready (before ``generate`` returns) so the call ledger can
persist it immediately: a job killed mid-batch keeps every finished response.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion request."""

    messages: list[dict[str, str]]  # [{"role": "user", "content": "..."}]
    params: dict[str, Any] = field(default_factory=dict)  # temperature, max_tokens, top_p, seed, stop
    sample_index: int = 0  # distinguishes samples of the same request when temperature > 0


@dataclass
class AttemptInfo:
    """One try at a request (an HTTP request, or one in-process generation)."""

    attempt: int
    status: str  # ok | retry | failed
    latency: float
    http_status: int | None = None
    error_kind: str | None = None
    error: str | None = None


@dataclass
class ChatResult:
    """The outcome of one request: text + usage when ``ok``, else the failure."""

    ok: bool
    text: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency: float = 0.0
    cost: float | None = None
    error_kind: str | None = None
    error: str | None = None
    attempts: list[AttemptInfo] = field(default_factory=list)


OnResult = Callable[[int, ChatResult], None]


class Backend(ABC):
    """A model that answers chat requests."""

    #: The model spec string, e.g. ``openai:gpt-4o-mini@http://host/v1`` (never a secret).
    spec: str
    #: Base URL without credentials (part of ``call_id``), or None for in-process backends.
    endpoint: str | None = None

    @abstractmethod
    def generate(
        self, requests: Sequence[ChatRequest], on_result: OnResult | None = None
    ) -> list[ChatResult]:
        """Answer every request; call ``on_result(index, result)`` as each one finishes."""

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release clients, threads or model memory."""
