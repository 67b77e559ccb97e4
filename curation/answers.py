"""Final-answer extraction and comparison for math word problems (GSM8K, SVAMP, …).

Shared by the ``reference`` teacher, the gold-answer filter, evaluation scoring and the evolve
loop, so every part of selfevo agrees on what "the answer" of a text is.

Extraction (:func:`extract_answer`) looks for explicit answer markers and takes the one that
appears **last** in the text:

* GSM8K ``#### N``;
* ``\\boxed{N}`` (nested braces handled);
* "The (final) answer is N", "Answer: N", "Final answer: N" (markdown bold tolerated);

and otherwise falls back to the last number in the text. The answer is the first number that
follows the marker, read and written by :mod:`schemas.numbers` (the one number reader and
canonical spelling of selfevo: thousands commas, currency, signs, decimals, fractions, mixed
numbers; ``"1,000.00"`` → ``"1000"``, ``"3/4"`` → ``"0.75"``, ``"1/3"`` → ``"1/3"``).
:func:`answers_match` compares numerically with a small relative tolerance and falls back to
``math-verify`` for answers that are not plain numbers (symbolic expressions, sets). See
docs/backends.md for the measured comparison with math-verify alone.
"""

from __future__ import annotations

import re
from fractions import Fraction

from schemas.numbers import (
    canonical_number,
    format_number,
    iter_numbers,
    parse_number,
    terminates,
    untex,
)

__all__ = ["REL_TOL", "answers_match", "canonical_number", "extract_answer", "parse_number"]

#: Relative tolerance of numeric comparison (absolute near zero): absorbs float round-off of
#: answers such as ``0.30000000000000004`` written by a model, never a real difference
#: (1e-6 would equate 1450000 and 1450001).
REL_TOL = 1e-9

# (pattern, is_boxed): where an explicit final answer starts.
_MARKERS = [
    (re.compile(r"####"), False),
    (re.compile(r"\\boxed\s*\{"), True),
    (
        re.compile(
            r"(?:final\s+answer|\banswer)\s*(?:\*\*)?\s*(?:is|:|=)\s*(?:\*\*)?\s*(?::\s*)?",
            re.IGNORECASE,
        ),
        False,
    ),
]
# The answer after a marker ends at a line break or a sentence end (a period not followed by
# a digit, so "3.50" stays whole).
_SENTENCE_END = re.compile(r"\n|\.(?!\d)")

_WORDS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen "
        "fourteen fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
} | {"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
     "ninety": 90, "hundred": 100}
_WORD_RE = re.compile(r"\b(" + "|".join(_WORDS) + r")\b", re.IGNORECASE)


def _boxed_content(text: str, start: int) -> str:
    """The content of a ``\\boxed{`` whose opening brace ends at ``start`` (nesting aware)."""
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return text[start:]


def extract_answer(text: str | None) -> str | None:
    """The final numeric answer of a response, canonical (see module doc), or None.

    The last explicit answer marker wins (``####``, ``\\boxed{}``, "The answer is"); without
    one, the last number of the text.
    """
    if not text:
        return None
    text = untex(text)
    candidates: list[tuple[int, str]] = []
    for marker, boxed in _MARKERS:
        for m in marker.finditer(text):
            value = (
                canonical_number(_boxed_content(text, m.end())) if boxed
                else _answer_after(text[m.end() : m.end() + 200])
            )
            if value is not None:
                candidates.append((m.start(), value))
    if candidates:
        return max(candidates)[1]
    numbers = list(iter_numbers(text))
    return format_number(numbers[-1]) if numbers else None


def _answer_after(tail: str) -> str | None:
    """The answer stated right after a marker: "is 10 + 5 = 15 apples." → ``15``."""
    end = _SENTENCE_END.search(tail)
    sentence = tail[: end.start()] if end else tail
    if "=" in sentence:  # a worked expression: its result is the answer
        sentence = sentence.rsplit("=", 1)[1]
    value = canonical_number(sentence)
    if value is None:  # "The answer is twelve."
        word = _WORD_RE.search(sentence[:40])
        value = str(_WORDS[word.group(1).lower()]) if word else None
    return value


def _close(a: Fraction, b: Fraction) -> bool:
    """Equal up to float noise, or a rounded decimal of a repeating fraction (0.33 ~ 1/3)."""
    if a.denominator == b.denominator == 1:  # two integers carry no float noise
        return a == b
    if abs(a - b) <= REL_TOL * max(1, abs(a), abs(b)):
        return True
    for exact, rounded in ((a, b), (b, a)):
        if terminates(exact) or not terminates(rounded):
            continue
        text = format_number(rounded)
        places = len(text.split(".", 1)[1]) if "." in text else 0
        # Only a written-out decimal of 2+ places counts as rounding "1/3" (0.3 does not).
        if places >= 2 and round(exact, places) == rounded:
            return True
    return False


def answers_match(pred: str | None, gold: str | None) -> bool:
    """Whether a predicted answer equals the gold answer.

    Both are answer strings (not whole responses; use :func:`extract_answer` first). Numbers
    compare by exact value up to :data:`REL_TOL`; a repeating fraction also matches its
    decimal rounded to 2+ places (``1/3`` ~ ``0.33``). When neither side has a number, a
    case- and space-insensitive string comparison, then math-verify (symbolic answers), decide.
    """
    if pred is None or gold is None:
        return False
    p, g = parse_number(pred), parse_number(gold)
    if p is not None and g is not None:
        return _close(p, g)
    if p is None and g is None:
        if _normalise_text(pred) == _normalise_text(gold):
            return True
        return _math_verify(pred, gold)
    return False


def _normalise_text(s: str) -> str:
    return re.sub(r"\s+", "", s).casefold().rstrip(".")


def _math_verify(pred: str, gold: str) -> bool:
    """math-verify's verdict on two non-numeric answers.

    math-verify is a runtime dependency: an install without it fails here rather than
    grading differently from the tests.
    """
    from math_verify import parse, verify  # sympy-heavy: import only when needed

    try:
        return bool(verify(parse(gold), parse(pred)))
    except Exception:  # noqa: BLE001 - math-verify raises on unparseable input; that is "no match"
        return False
