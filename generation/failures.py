"""Failed requests are failures, never results: counted by kind, reported, fatal when total.

A request that never got an answer (connection refused, timeout, 401, 5xx, a malformed 200…)
is a transport failure: nothing the model said. ``collect``, ``eval run``, ``refine`` and
``evolve`` count them with :class:`Failures`, report partial failure with counts, and stop
with a one-line error (the run row ``failed``) when nothing succeeded — instead of storing
"0 records" or "0.0% accuracy" as if the model had answered.

An ``empty`` answer (a 200 whose content is empty) is the model's own output: it is scored
or recorded as such, not counted here.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from generation.errors import GenerationError

#: Error kinds that are the model's answer, not a failed request.
MODEL_ANSWER_KINDS = frozenset({"empty"})
#: Error kinds of requests that were never sent (a budget stop, Ctrl-C), or not answered yet
#: (``waiting``: in a batch still running, or a shard file waiting for its results): not
#: failures either.
UNSENT_KINDS = frozenset({"budget", "interrupted", "waiting"})


def is_request_failure(ok: bool, error_kind: str | None) -> bool:
    """Whether a result is a transport failure (see the module docstring)."""
    return not ok and error_kind not in MODEL_ANSWER_KINDS and error_kind not in UNSENT_KINDS


class RequestsFailed(GenerationError):
    """Every request (or item) failed: nothing the model said was stored as a result."""


@dataclass
class Failures:
    """Transport failures among ``total`` requests (or items), by error kind."""

    total: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    example: str | None = None  # the first failure's message (already redacted)

    @property
    def failed(self) -> int:
        """How many failed."""
        return sum(self.kinds.values())

    def add(self, ok: bool, error_kind: str | None, error: str | None) -> bool:
        """Count one result; returns whether it was a transport failure."""
        self.total += 1
        if not is_request_failure(ok, error_kind):
            return False
        self.kinds[error_kind or "error"] += 1
        if self.example is None and error:
            self.example = " ".join(error.split())[:200]
        return True

    def describe(self, what: str = "requests") -> str:
        """``3 of 10 requests failed (connection 2, auth 1): connection error: …``."""
        kinds = ", ".join(f"{k} {n}" for k, n in self.kinds.most_common())
        text = f"{self.failed} of {self.total} {what} failed ({kinds})"
        return f"{text}: {self.example}" if self.example else text

    def check_any_succeeded(self, what: str, succeeded: int, hint: str) -> None:
        """Raise :class:`RequestsFailed` (one line, ending with ``hint``) when some failed and
        ``succeeded`` is 0."""
        if self.failed and not succeeded:
            raise RequestsFailed(f"{self.describe(what)}; nothing was stored as a result. {hint}")
