"""``refusal``: drop texts where the model declined to answer."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from curation.filters.base import RECORD_FIELDS, Filter, Result, field_text, param, register

#: Phrases of refusals and assistant boilerplate, one regex alternation (case-insensitive).
DEFAULT_PATTERN = "|".join([
    r"i(?:'m| am) sorry,? but",
    r"i can(?:not|'t|’t) (?:help|assist|answer|provide|comply)",
    r"i(?:'m| am) (?:not able|unable) to",
    r"as an ai(?: language model)?",
    r"i (?:won't|will not) (?:help|answer|provide)",
    r"i do(?:n't|n’t| not) have (?:enough|sufficient) information",
])


@register
@dataclass
class RefusalFilter(Filter):
    """Pass when no refusal pattern occurs in the field."""

    name = "refusal"
    description = "Drop refusals ('I'm sorry, but …', 'As an AI …'); patterns are a parameter."

    field: str = param("refinement", "text field to search", choices=RECORD_FIELDS)
    pattern: str = param(DEFAULT_PATTERN, "regex (case-insensitive) replacing the default list")
    extra: str = param("", "regex alternatives added to the pattern, e.g. 'i refuse|no way'")

    def __post_init__(self) -> None:
        full = self.pattern + (f"|{self.extra}" if self.extra else "")
        try:
            self._re = re.compile(full, re.IGNORECASE)
        except re.error as exc:
            raise ValueError(f"bad refusal pattern: {exc}") from None

    def needed_columns(self) -> tuple[str, ...]:
        """Only the searched field."""
        return (self.field,)

    def check(self, record: Mapping[str, Any]) -> Result:
        """Score 1 when a refusal phrase matched (the reason quotes it)."""
        text = field_text(record, self.field) or ""
        m = self._re.search(text)
        if m:
            return Result(False, 1.0, f"refusal in {self.field}: {m.group(0)!r}",
                          {"match": m.group(0), "at": m.start()})
        return Result(True, 0.0, "no refusal")
