"""Numbers in answers: one reader and one canonical spelling for all of selfevo.

Gold answers on import (the gsm8k / svamp presets), the generated word problems, answer
extraction and comparison (``curation.answers``) and the reference teacher all write a number
the same way, so a gold answer stored by one part equals the answer extracted by another.

Reading (:func:`parse_number`) finds numbers in text: thousands commas (``1,000``), a currency
sign (``$``, ``€``, ``£``, ``¥``), a sign (``-`` or the Unicode minus, glued to the number: in
``16-3`` and ``5 - 3`` the dash is a subtraction), decimals (``3.50``, ``.5``), fractions
(``3/4``, ``\\frac{3}{4}``, ``\\dfrac``) and mixed numbers (``2 1/2``). Units and a percent
sign after a number are not part of it. Values are exact :class:`fractions.Fraction`.

Writing (:func:`format_number`): an integer, else an exact decimal without trailing zeros,
else ``p/q`` (``"1,000.00"`` → ``1000``, ``"0.50"`` → ``0.5``, ``"3/4"`` → ``0.75``,
``"1/3"`` → ``1/3``). :func:`canonical_number` is the two together, and also takes Python
numbers; :func:`canonical_answer` is the gold-answer form (a lone number canonical, any other
text kept).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from decimal import Decimal
from fractions import Fraction

# A number: thousands-grouped or plain integer part, optional decimals, or ".5".
_NUM = r"(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
# The sign counts only when glued to the number and not to a preceding word or digit:
# "16-3" and "5 - 3" are subtractions, "-3", "(-3)", "−4" and "-$5" are negatives.
_SIGN = r"(?:(?<![\w.)\]}])[-−–](?=[$€£¥]\s?[\d.]|[\d.]))?"
_CURRENCY = r"(?:[$€£¥]\s?)?"
NUMBER_RE = re.compile(
    rf"""
    (?P<frac>\\[dt]?frac\s*\{{\s*(?P<fn>{_SIGN}\s?{_NUM})\s*\}}\s*\{{\s*(?P<fd>{_NUM})\s*\}})
    | (?P<sign>{_SIGN}) \s? {_CURRENCY}
      (?:
        (?P<whole>{_NUM})\s+(?P<mn>\d+)\s*/\s*(?P<md>\d+)(?![\d/])     # mixed number 2 1/2
        | (?P<num>{_NUM})(?:\s*/\s*(?P<den>{_NUM}))?(?![\d/])
      )
    """,
    re.VERBOSE,
)

NumberLike = str | int | float | Decimal | Fraction


def _to_fraction(text: str) -> Fraction:
    return Fraction(text.replace(",", ""))


def match_value(m: re.Match[str]) -> Fraction | None:
    """The exact value of one match of :data:`NUMBER_RE` (None for a division by zero)."""
    if m.group("frac"):
        num = m.group("fn").replace("−", "-").replace("–", "-").replace(" ", "")
        den = _to_fraction(m.group("fd"))
        return None if den == 0 else _to_fraction(num) / den
    if m.group("whole") is not None:
        den = int(m.group("md"))
        if den == 0:
            return None
        value = _to_fraction(m.group("whole")) + Fraction(int(m.group("mn")), den)
    else:
        value = _to_fraction(m.group("num"))
        if m.group("den") is not None:
            den = _to_fraction(m.group("den"))
            if den == 0:
                return None
            value /= den
    return -value if m.group("sign") else value


def untex(text: str) -> str:
    """Undo LaTeX number spelling that hides digits from the number pattern: ``1{,}000``."""
    return text.replace("{,}", ",").replace("\\!", "")


def iter_numbers(text: str) -> Iterator[Fraction]:
    """The exact values of the numbers in ``text``, in order (divisions by zero skipped)."""
    for m in NUMBER_RE.finditer(text):
        value = match_value(m)
        if value is not None:
            yield value


def parse_number(text: str) -> Fraction | None:
    """The exact value of the first number in ``text`` (None when there is none)."""
    return next(iter_numbers(text), None)


def terminates(value: Fraction) -> bool:
    """Whether ``value`` has a finite decimal expansion (denominator of only 2s and 5s)."""
    den = value.denominator
    for p in (2, 5):
        while den % p == 0:
            den //= p
    return den == 1


def format_number(value: Fraction | int) -> str:
    """Canonical string of an exact value: integer, exact decimal, else ``p/q``."""
    value = Fraction(value)
    if value.denominator == 1:
        return str(value.numerator)
    if not terminates(value):  # keep it exact
        return f"{value.numerator}/{value.denominator}"
    places = 0
    while (value * 10**places).denominator != 1:
        places += 1
    scaled = (value * 10**places).numerator
    sign = "-" if scaled < 0 else ""
    digits = str(abs(scaled)).rjust(places + 1, "0")
    return f"{sign}{digits[:-places]}.{digits[-places:]}".rstrip("0").rstrip(".")


def canonical_number(value: NumberLike | None) -> str | None:
    """Canonical text of a number, or of the first number in a text (None: there is none).

    ``"1,000.00"`` → ``1000``, ``"The answer is $3.50"`` → ``3.5``, ``Fraction(3, 4)`` →
    ``0.75``, ``27.0`` → ``27`` (a float is read as the decimal it prints as).
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | Fraction):
        return format_number(Fraction(value))
    if isinstance(value, float | Decimal):
        if not math.isfinite(value):
            return None
        return format_number(Fraction(repr(value) if isinstance(value, float) else value))
    number = parse_number(untex(value))
    return None if number is None else format_number(number)


#: Spellings of a non-finite number (compared lower-cased, without a sign).
NON_FINITE_WORDS = frozenset({"nan", "inf", "infinity"})


def require_finite(value: object) -> None:
    """Raise ValueError when ``value`` is, or spells, a non-finite number: NaN, ±Infinity, or
    a float that overflowed (JSON ``1e400`` reads as inf). No answer, count or score is one,
    and JSON cannot carry it, so selfevo refuses it wherever it arrives."""
    if isinstance(value, float) and not math.isfinite(value) or (
            isinstance(value, Decimal) and not value.is_finite()):
        bad = repr(value)
    elif isinstance(value, str) and value.strip().lstrip("+-−").lower() in NON_FINITE_WORDS:
        bad = repr(value)
    else:
        return
    raise ValueError(
        f"not a finite number ({bad}: NaN, Infinity, or a number too large for a float such "
        "as 1e400); write the exact value as text, or null"
    )


def canonical_answer(value: NumberLike) -> str:
    """A gold answer as stored: a lone number canonical (``"1,080"`` → ``1080``, ``27.0`` →
    ``27``, ``"+5"`` → ``5``), any other text stripped and kept (``"abc"``, ``"50%"``).
    A non-finite number (NaN, inf, ``1e400`` read as a float) is refused (:func:`require_finite`)."""
    if isinstance(value, bool) or not isinstance(value, NumberLike):
        raise ValueError(f"a gold answer must be text or a number, not {type(value).__name__}")
    require_finite(value)
    if not isinstance(value, str):
        number = canonical_number(value)
        return str(value) if number is None else number
    text = value.strip()
    bare = untex(text[1:] if text.startswith("+") else text)
    m = NUMBER_RE.fullmatch(bare)
    number = match_value(m) if m else None
    return text if number is None else format_number(number)
