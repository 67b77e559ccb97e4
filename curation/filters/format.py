"""``format``: feedback ends in a parseable verdict and the refinement states a final answer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from curation.filters.base import Filter, Result, field_text, param, register


@register
@dataclass
class FormatFilter(Filter):
    """Pass when every required part of the record is well-formed."""

    name = "format"
    description = "Feedback has a parseable verdict; refinement has a final answer."

    require_verdict: bool = param(True, "feedback must contain a parseable verdict")
    require_answer: bool = param(True, "the answer field must contain a final answer")
    answer_field: str = param("refinement", "field that must state a final answer",
                              choices=("response", "refinement"))

    def __post_init__(self) -> None:
        if not (self.require_verdict or self.require_answer):
            raise ValueError("require_verdict and require_answer are both off: nothing to check")

    def needed_columns(self) -> tuple[str, ...]:
        """Feedback and the answer field."""
        return ("feedback", self.answer_field)

    def check(self, record: Mapping[str, Any]) -> Result:
        """Score is the number of problems found (0 passes)."""
        problems = []
        if self.require_verdict:
            from curation.verdicts import parse_verdict

            verdict, why = parse_verdict(field_text(record, "feedback"))
            if verdict is None:
                problems.append(f"feedback has no parseable verdict ({why})")
        if self.require_answer:
            from curation.answers import extract_answer

            if extract_answer(field_text(record, self.answer_field)) is None:
                problems.append(f"{self.answer_field} has no final answer")
        if problems:
            return Result(False, float(len(problems)), "; ".join(problems))
        return Result(True, 0.0, "well-formed")

