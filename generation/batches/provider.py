"""The provider's Files and Batches endpoints (``/v1/files``, ``/v1/batches``).

Through the official ``openai`` client (blocking, its own retries off). Reads (retrieve,
list, download) and uploads are retried on connection errors, timeouts, 429 and 5xx: an
extra uploaded file costs nothing. Creating a batch is **never retried blindly** — a create
whose answer was lost may have created the batch — so a failed create first looks for a
batch on the same input file (:meth:`BatchAPI.find`) and adopts it; the same look-up runs
when a run resumes a shard that was uploaded but has no batch id yet.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from generation.errors import GenerationError

T = TypeVar("T")

#: Provider states a batch passes through; the last four are final.
OPEN_STATES = ("validating", "in_progress", "finalizing", "cancelling")
FINAL_STATES = ("completed", "expired", "failed", "cancelled")


@dataclass
class RemoteBatch:
    """What the provider says about one batch."""

    id: str
    status: str
    input_file_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    errors: str | None = None  # why a failed batch failed (its errors.data messages)
    created_at: int | None = None
    metadata: dict[str, Any] | None = None

    @classmethod
    def of(cls, b: Any) -> RemoteBatch:
        """From the client's ``Batch`` object."""
        counts = getattr(b, "request_counts", None)
        errors = getattr(b, "errors", None)
        data = getattr(errors, "data", None) or []
        text = "; ".join(f"{getattr(e, 'code', None) or 'error'}: {getattr(e, 'message', '')}"
                         + (f" (line {e.line})" if getattr(e, "line", None) else "")
                         for e in data[:5]) or None
        return cls(b.id, b.status, b.input_file_id, b.output_file_id, b.error_file_id,
                   getattr(counts, "total", 0) or 0, getattr(counts, "completed", 0) or 0,
                   getattr(counts, "failed", 0) or 0, text, getattr(b, "created_at", None),
                   dict(getattr(b, "metadata", None) or {}))


class BatchAPI:
    """Upload, create, find, retrieve, cancel and download through one ``openai`` client."""

    def __init__(self, client: Any, redact: Callable[[str], str] = str, tries: int = 5,
                 backoff: float = 1.0):
        self.client = client
        self.redact = redact
        self.tries = tries
        self.backoff = backoff

    @classmethod
    def for_backend(cls, backend: Any) -> BatchAPI:
        """The API at an :class:`~generation.backends.openai_backend.OpenAIBackend`'s first URL."""
        from corpus.redaction import redact

        return cls(backend.sync_client(), redact)

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()

    # -- calls -----------------------------------------------------------------------------
    def upload(self, path: Path) -> str:
        """Upload a shard (purpose ``batch``); its file id."""
        def send() -> str:
            with open(path, "rb") as f:
                return self.client.files.create(file=(path.name, f), purpose="batch").id

        return self._retried(f"uploading {path.name}", send)

    def create(self, input_file_id: str, key: str, window: str = "24h",
               since: float | None = None) -> RemoteBatch:
        """Create the batch of an uploaded shard; adopt one that a lost answer created."""
        import openai

        for attempt in range(1, self.tries + 1):
            try:
                b = self.client.batches.create(
                    input_file_id=input_file_id, endpoint="/v1/chat/completions",
                    completion_window=window, metadata={"selfevo_batch": key})
                return RemoteBatch.of(b)
            except (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError,
                    openai.InternalServerError) as exc:
                found = self.find(input_file_id, since)
                if found is not None:
                    return found
                if attempt == self.tries:
                    raise self._error(f"creating the batch of {key}", exc) from None
                time.sleep(self.backoff * 2 ** (attempt - 1))
            except openai.APIError as exc:
                raise self._error(f"creating the batch of {key}", exc) from None
        raise AssertionError("unreachable")

    def find(self, input_file_id: str, since: float | None = None) -> RemoteBatch | None:
        """The newest batch made from ``input_file_id`` (looking back to ``since``), or None."""
        def look() -> RemoteBatch | None:
            for b in self.client.batches.list(limit=100):
                if b.input_file_id == input_file_id:
                    return RemoteBatch.of(b)
                if since is not None and (b.created_at or 0) < since - 3600:
                    return None  # listed newest first: older ones cannot be ours
            return None

        return self._retried("listing batches", look)

    def retrieve(self, batch_id: str) -> RemoteBatch:
        """The batch's current state and counts."""
        return self._retried(f"polling {batch_id}",
                             lambda: RemoteBatch.of(self.client.batches.retrieve(batch_id)))

    def cancel(self, batch_id: str) -> RemoteBatch:
        """Ask the provider to cancel (it goes to ``cancelling``, then ``cancelled``)."""
        return self._retried(f"cancelling {batch_id}",
                             lambda: RemoteBatch.of(self.client.batches.cancel(batch_id)))

    def download(self, file_id: str, path: Path) -> Path:
        """Stream a result file to ``path`` (written whole, then renamed); returns ``path``."""
        tmp = path.with_name(path.name + ".part")

        def fetch() -> Path:
            with self.client.files.with_streaming_response.content(file_id) as resp:
                with open(tmp, "wb") as f:
                    for chunk in resp.iter_bytes(1 << 20):
                        f.write(chunk)
            os.replace(tmp, path)
            return path

        return self._retried(f"downloading {file_id}", fetch)

    # -- retries ---------------------------------------------------------------------------
    def _retried(self, what: str, fn: Callable[[], T]) -> T:
        import openai

        for attempt in range(1, self.tries + 1):
            try:
                return fn()
            except (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError,
                    openai.InternalServerError) as exc:
                if attempt == self.tries:
                    raise self._error(what, exc) from None
                time.sleep(self.backoff * 2 ** (attempt - 1))
            except openai.APIError as exc:
                raise self._error(what, exc) from None
        raise AssertionError("unreachable")

    def _error(self, what: str, exc: Exception) -> GenerationError:
        status = getattr(exc, "status_code", None)
        detail = self.redact(str(getattr(exc, "message", None) or exc))
        return GenerationError(f"{what} failed ({status or type(exc).__name__}): {detail}; "
                               "the batch state is stored, run the command again to continue")
