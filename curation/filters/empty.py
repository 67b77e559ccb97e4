"""``empty``: drop records with a missing or whitespace-only text field."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from curation.filters.base import RECORD_FIELDS, Filter, Result, param, register


@register
@dataclass
class EmptyFilter(Filter):
    """Pass when every listed field has visible text."""

    name = "empty"
    description = "Drop records with a NULL or blank field."

    fields: str = param("response,feedback,refinement",
                        "comma-separated fields that must not be empty")

    def __post_init__(self) -> None:
        self._fields = [f.strip() for f in self.fields.split(",") if f.strip()]
        bad = [f for f in self._fields if f not in RECORD_FIELDS]
        if bad or not self._fields:
            raise ValueError(f"fields={self.fields!r}: each must be one of "
                             f"{', '.join(RECORD_FIELDS)}")

    def needed_columns(self) -> tuple[str, ...]:
        """The listed fields."""
        return tuple(self._fields)

    def check(self, record: Mapping[str, Any]) -> Result:
        """Score is the number of empty fields."""
        # str.strip() removes unicode whitespace too (NBSP, ideographic space, …).
        empty = [f for f in self._fields if not (record.get(f) or "").strip()]
        if empty:
            return Result(False, float(len(empty)), f"empty: {', '.join(empty)}")
        return Result(True, 0.0, "all fields have text")
