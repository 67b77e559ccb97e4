"""``length``: bounds on the characters or whitespace tokens of one text field."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from curation.filters.base import RECORD_FIELDS, Filter, Result, field_text, param, register


@register
@dataclass
class LengthFilter(Filter):
    """Pass when the field's length lies within every bound given (NULL counts as empty)."""

    name = "length"
    description = "Min/max characters or whitespace tokens of a field."

    field: str = param("refinement", "text field to measure", choices=RECORD_FIELDS)
    min_chars: int | None = param(None, "fewest characters allowed")
    max_chars: int | None = param(None, "most characters allowed")
    min_tokens: int | None = param(None, "fewest whitespace-separated tokens allowed")
    max_tokens: int | None = param(None, "most whitespace-separated tokens allowed")

    def __post_init__(self) -> None:
        if all(v is None for v in (self.min_chars, self.max_chars,
                                   self.min_tokens, self.max_tokens)):
            raise ValueError("give at least one of min_chars, max_chars, min_tokens, max_tokens")

    def needed_columns(self) -> tuple[str, ...]:
        """Only the measured field."""
        return (self.field,)

    def check(self, record: Mapping[str, Any]) -> Result:
        """Score is the character count (or token count when only token bounds are set)."""
        text = field_text(record, self.field) or ""
        chars = len(text)
        tokens = len(text.split()) if (self.min_tokens or self.max_tokens) is not None else 0
        bounds = [
            ("chars", chars, self.min_chars, self.max_chars),
            ("tokens", tokens, self.min_tokens, self.max_tokens),
        ]
        token_only = self.min_chars is None and self.max_chars is None
        score = float(tokens if token_only else chars)
        for unit, n, lo, hi in bounds:
            if lo is not None and n < lo:
                return Result(False, score, f"{self.field} has {n} {unit} < min {lo}")
            if hi is not None and n > hi:
                return Result(False, score, f"{self.field} has {n} {unit} > max {hi}")
        return Result(True, score, f"{self.field} length within bounds")
