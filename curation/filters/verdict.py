"""``verdict``: keep records whose feedback judged the answer correct (SELF's filter).

A self record of ``evolve`` carries two verdicts of the student: on its first answer r
(``verdict``) and on its refinement r̂ (``refined_verdict``). SELF keeps a sample when its
self-feedback judges the *refined* answer correct (``on=refined``, what ``evolve`` uses by
default); ``on=response`` judges r (the only verdict a teacher-graded meta record has, so it
is the step's default), ``on=both`` wants both correct.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from curation.filters.base import Filter, Result, param, register

#: on= value -> the verdict columns it reads, with what each judged.
VERDICT_COLUMNS = {"response": (("verdict", "r"),),
                   "refined": (("refined_verdict", "r̂"),),
                   "both": (("verdict", "r"), ("refined_verdict", "r̂"))}


@register
@dataclass
class VerdictFilter(Filter):
    """Pass when the chosen verdict(s) say 'correct'; NULL (unparsed) verdicts follow ``null``."""

    name = "verdict"
    description = "Keep records whose feedback verdict (on r, on r̂, or both) is 'correct'."

    on: str = param("response", "which verdict: response (on r, the verdict column), refined "
                    "(on r̂, refined_verdict), both", choices=tuple(VERDICT_COLUMNS))
    null: str = param("drop", "records with a NULL (unparsed) verdict: drop or keep",
                      choices=("drop", "keep"))

    def needed_columns(self) -> tuple[str, ...]:
        """The verdict column(s) ``on`` names."""
        return tuple(col for col, _ in VERDICT_COLUMNS[self.on])

    def check(self, record: Mapping[str, Any]) -> Result:
        """Score 1 when every chosen verdict is correct, 0 when one is incorrect, None when
        one is unknown and none is incorrect."""
        said = [(record.get(col), what) for col, what in VERDICT_COLUMNS[self.on]]
        wrong = [what for verdict, what in said if verdict == "incorrect"]
        if wrong:
            return Result(False, 0.0, f"verdict on {' and '.join(wrong)} is incorrect")
        unknown = [what for verdict, what in said if verdict is None]
        if unknown:
            return Result(self.null == "keep", None,
                          f"verdict on {' and '.join(unknown)} is NULL (null={self.null})")
        return Result(True, 1.0, f"verdict on {' and '.join(w for _, w in said)} is correct")
