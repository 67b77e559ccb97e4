"""The one small interface every model backend implements.

A batch of chat requests goes in; one result per request comes out, in order. ``on_result``
is called as each result is ready (before ``generate`` returns) so the call ledger can
persist it immediately: a job killed mid-batch keeps every finished response.

A backend that can tell when each request leaves (:attr:`Backend.announces_sends`) calls
``before_send(i)`` right before request ``i`` is first sent; the ledger then keeps its
pending rows only a window ahead of the sender. A backend that cannot (in-process ones)
ignores ``before_send``, and the ledger registers the whole batch before ``generate``.
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
    latency: float | None  # None: not measured (a row of a provider's batch)
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
    latency: float | None = 0.0  # None: not measured (a row of a provider's batch)
    cost: float | None = None
    error_kind: str | None = None
    error: str | None = None
    attempts: list[AttemptInfo] = field(default_factory=list)


OnResult = Callable[[int, ChatResult], None]
#: ``before_send(i)`` is called right before request ``i`` is first sent; it returns None, or
#: a blocking wait to run (off any event loop, delaying only that request) before sending.
BeforeSend = Callable[[int], Callable[[], None] | None]


class Backend(ABC):
    """A model that answers chat requests."""

    #: The model spec string, e.g. ``openai:gpt-4o-mini@http://host/v1`` (never a secret).
    spec: str
    #: Base URL without credentials (part of ``call_id``), or None for in-process backends.
    endpoint: str | None = None
    #: Whether :meth:`generate` calls ``before_send(i)`` right before request ``i`` is first
    #: sent. False: ``before_send`` is ignored and the ledger registers a batch up front.
    announces_sends: bool = False
    #: Whether the ledger may send this backend's calls as Batch JSONL shards instead
    #: (``--mode batch`` / ``--mode file``, :mod:`generation.batches`): OpenAI-compatible
    #: endpoints only; in-process backends answer in process.
    batchable: bool = False

    @property
    def concurrency(self) -> int:
        """Requests in flight at once, at most (sizes the ledger's window of pending rows)."""
        return 1

    @abstractmethod
    def generate(
        self, requests: Sequence[ChatRequest], on_result: OnResult | None = None,
        before_send: BeforeSend | None = None,
    ) -> list[ChatResult]:
        """Answer every request; call ``on_result(index, result)`` as each one finishes.

        With :attr:`announces_sends`, ``before_send(index)`` is called before a request is
        first sent and the wait it returns is run first; otherwise it is ignored.
        """

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release clients, threads or model memory."""
