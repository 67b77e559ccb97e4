"""``verdict``: keep records whose feedback judged the (refined) answer correct (SELF's filter)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from curation.filters.base import Filter, Result, param, register


@register
@dataclass
class VerdictFilter(Filter):
    """Pass when ``verdict`` is 'correct'; NULL (unparsed) verdicts follow ``null``."""

    name = "verdict"
    description = "Keep records whose feedback verdict is 'correct'."
    columns = ("verdict",)

    null: str = param("drop", "records with a NULL (unparsed) verdict: drop or keep",
                      choices=("drop", "keep"))

    def check(self, record: Mapping[str, Any]) -> Result:
        """Score 1 for correct, 0 for incorrect, None when unknown."""
        verdict = record.get("verdict")
        if verdict is None:
            return Result(self.null == "keep", None, f"verdict is NULL (null={self.null})")
        ok = verdict == "correct"
        return Result(ok, 1.0 if ok else 0.0, f"verdict is {verdict}")
