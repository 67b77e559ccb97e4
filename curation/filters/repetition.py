"""``repetition``: drop degenerate, looping text (a high share of repeated word n-grams)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from curation.filters.base import RECORD_FIELDS, Filter, Result, field_text, param, register


def repeated_ngram_fraction(text: str, n: int) -> float:
    """Share of the word n-grams of ``text`` that repeat an earlier one (0 = none repeat)."""
    words = text.lower().split()
    if len(words) < n:
        return 0.0
    grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    total = sum(grams.values())
    return (total - len(grams)) / total


@register
@dataclass
class RepetitionFilter(Filter):
    """Pass when the repeated n-gram fraction is at most ``max_fraction``."""

    name = "repetition"
    description = "Drop text whose repeated word n-gram fraction exceeds a threshold."

    field: str = param("refinement", "text field to measure", choices=RECORD_FIELDS)
    n: int = param(4, "word n-gram length")
    max_fraction: float = param(0.3, "largest allowed share of repeated n-grams (0..1)")

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError("n must be >= 1")
        if not 0.0 <= self.max_fraction <= 1.0:
            raise ValueError("max_fraction must be between 0 and 1")

    def needed_columns(self) -> tuple[str, ...]:
        """Only the measured field."""
        return (self.field,)

    def check(self, record: Mapping[str, Any]) -> Result:
        """Score is the repeated fraction."""
        frac = repeated_ngram_fraction(field_text(record, self.field) or "", self.n)
        if frac > self.max_fraction:
            return Result(False, frac, f"{frac:.2f} of {self.n}-grams repeat "
                                       f"(> {self.max_fraction})")
        return Result(True, frac, f"{frac:.2f} of {self.n}-grams repeat")
