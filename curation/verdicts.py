"""Parse the verdict line that ends every feedback (teacher or self-feedback).

The templates ask for a last line ``Verdict: correct`` or ``Verdict: incorrect``. Models
decorate it, so the parser is tolerant: case, markdown (``**Verdict:** Correct.``, headings,
quotes, list bullets, backticks, brackets), punctuation, ``Final verdict``, ``-``/``=`` instead
of ``:``, trailing whitespace or text after the line, and the value on the next line. It is not
a guesser: no verdict line, an unknown value, both values on one line, or verdict lines that
disagree give ``(None, reason)``, which the collector stores as ``verdict = NULL`` plus the
reason (a recorded failure, not a crash).
"""

from __future__ import annotations

import re
from typing import Literal

Verdict = Literal["correct", "incorrect"]

_DECORATION = re.compile(r"[*_`#>\[\]()\"'“”‘’]")
_VERDICT_LINE = re.compile(
    r"^\W*(?:(?:the|my|final|overall)\s+)*verdict\s*(?:[:=\-–—]|\bis\b)\s*(?P<value>.*)$", re.IGNORECASE
)
_NEGATIVE = re.compile(r"\b(?:incorrect|not\s+correct|wrong)\b", re.IGNORECASE)
_POSITIVE = re.compile(r"\bcorrect\b", re.IGNORECASE)


def _value_verdict(value: str) -> tuple[Verdict | None, str | None]:
    """The verdict named by the text after ``Verdict:``."""
    text = value.strip().strip(".!;,:").strip()
    if not text:
        return None, "the 'Verdict:' line has no value"
    negative = _NEGATIVE.search(text)
    # "correct" inside "incorrect"/"not correct" is part of the negative phrase.
    positive = _POSITIVE.search(_NEGATIVE.sub(" ", text))
    if negative and positive:
        return None, f"ambiguous verdict {text[:40]!r} (names both correct and incorrect)"
    if negative and negative.start() == 0:
        return "incorrect", None
    if positive and positive.start() == 0:
        return "correct", None
    return None, f"unrecognised verdict {text[:40]!r} (expected 'correct' or 'incorrect')"


def parse_verdict(feedback: str | None) -> tuple[Verdict | None, str | None]:
    """``(verdict, None)`` from the feedback's ``Verdict:`` line, or ``(None, reason)``."""
    if not feedback or not feedback.strip():
        return None, "empty feedback"
    lines = [_DECORATION.sub("", line).strip() for line in feedback.splitlines()]
    found: list[tuple[Verdict | None, str | None]] = []
    for i, line in enumerate(lines):
        m = _VERDICT_LINE.match(line)
        if not m:
            continue
        value = m.group("value")
        if not value.strip(" .:"):  # "Verdict:" alone, value on the next non-empty line
            value = next((rest for rest in lines[i + 1 :] if rest), "")
        found.append(_value_verdict(value))
    if not found:
        return None, "no 'Verdict: correct|incorrect' line"
    verdicts = {v for v, _ in found if v is not None}
    if len(verdicts) > 1:
        return None, "ambiguous: verdict lines disagree (both correct and incorrect)"
    if verdicts:  # one value, possibly beside an unreadable extra "Verdict:" line
        return verdicts.pop(), None
    return found[-1]
