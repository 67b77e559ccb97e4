"""``gold-match``: the final answer of a field equals the prompt's gold answer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from curation.filters.base import Filter, Result, field_text, param, register


@register
@dataclass
class GoldMatchFilter(Filter):
    """Pass when ``extract_answer(field)`` matches ``gold_answer`` (curation.answers)."""

    name = "gold-match"
    description = "Final answer of the refinement (or another field) equals the gold answer."

    field: str = param("refinement", "field whose final answer is compared",
                       choices=("response", "refinement", "feedback"))
    no_gold: str = param("drop", "records whose prompt has no gold answer: drop or keep",
                         choices=("drop", "keep"))

    def needed_columns(self) -> tuple[str, ...]:
        """The answered field and the gold answer."""
        return (self.field, "gold_answer")

    def check(self, record: Mapping[str, Any]) -> Result:
        """Score 1 on a match, 0 otherwise; the detail holds both answers."""
        from curation.answers import answers_match, extract_answer

        gold = record.get("gold_answer")
        if gold is None or not str(gold).strip():
            return Result(self.no_gold == "keep", None, f"no gold answer (no_gold={self.no_gold})")
        pred = extract_answer(field_text(record, self.field))
        detail = {"pred": pred, "gold": str(gold)}
        if pred is None:
            return Result(False, 0.0, f"no final answer in {self.field}", detail)
        if answers_match(pred, str(gold)):
            return Result(True, 1.0, f"answer {pred} matches gold", detail)
        return Result(False, 0.0, f"answer {pred} != gold {gold}", detail)
