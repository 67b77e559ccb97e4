"""What an offline teacher returns, and the interface every offline teacher has."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from curation.verdicts import Verdict


@dataclass(frozen=True)
class Critique:
    """A teacher's output for one (prompt, response)."""

    feedback: str | None
    verdict: Verdict | None
    verdict_error: str | None  # why there is no verdict (None when there is one)
    refinement: str | None


class OfflineTeacher(Protocol):
    """A grader that writes feedback, a verdict and a refinement without a model call."""

    spec: str  # what --teacher names it
    version: str  # recorded in records.templates; changes whenever its texts would

    def critique(self, prompt: str, response: str | None, gold_answer: str | None,
                 gold_rationale: str | None = None, meta: dict[str, Any] | None = None
                 ) -> Critique:
        """Feedback, verdict and refinement for one response."""
        ...
