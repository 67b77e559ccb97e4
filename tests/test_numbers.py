"""The one number canonicaliser (schemas.numbers) against answers_match, on generated numbers.

Every way of writing a value (thousands commas, currency, signs, trailing zeros, fractions,
LaTeX fractions, mixed numbers) must canonicalise to the one spelling of that value, and that
spelling must match the written form under ``answers_match``, the comparison graders use.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corpus.presets import parse_gsm8k_answer, svamp_prompt
from corpus.wordproblems import decimal_text
from curation.answers import answers_match, extract_answer
from schemas.numbers import (
    canonical_answer,
    canonical_number,
    format_number,
    parse_number,
    terminates,
)
from schemas.records import PromptIn

CURRENCIES = ["", "$", "€", "£", "¥"]
MINUS = ["-", "−"]

decimals = st.builds(lambda n, places: Fraction(n, 10**places),
                     st.integers(-10**9, 10**9), st.integers(0, 4))
fractions = st.builds(Fraction, st.integers(-999, 999), st.integers(1, 64))
values = st.one_of(st.integers(-10**12, 10**12).map(Fraction), decimals, fractions)


def grouped(n: int) -> str:
    """``1234567`` → ``1,234,567``."""
    return f"{n:,}"


def decimal_forms(v: Fraction, data: st.DataObject) -> list[str]:
    """Written forms of a value with a finite decimal: commas, currency, sign, zeros."""
    places = 0
    while (v * 10**places).denominator != 1:
        places += 1
    n = places + data.draw(st.integers(0, 2), label="trailing zeros")
    digits = str(int(abs(v) * 10**n)).rjust(n + 1, "0")
    whole, frac = (digits[:-n], digits[-n:]) if n else (digits, "")
    body = grouped(int(whole)) + (f".{frac}" if frac else "")
    sign = data.draw(st.sampled_from(MINUS), label="minus") if v < 0 else ""
    money = data.draw(st.sampled_from(CURRENCIES), label="currency")
    forms = [f"{sign}{money}{body}", f"{sign}{money}{whole}" + (f".{frac}" if frac else "")]
    if 0 < abs(v) < 1 and frac:
        forms.append(f"{sign}.{frac}")  # ".5"
    return forms


def fraction_forms(v: Fraction, data: st.DataObject) -> list[str]:
    """``p/q``, ``\\frac{p}{q}`` (``\\dfrac``, ``\\tfrac``) and mixed ``w n/d`` forms."""
    sign = data.draw(st.sampled_from(MINUS), label="minus") if v < 0 else ""
    scale = data.draw(st.integers(1, 5), label="unreduced by")
    p, q = abs(v.numerator) * scale, v.denominator * scale
    tex = data.draw(st.sampled_from(["frac", "dfrac", "tfrac"]), label="tex")
    forms = [f"{sign}{p}/{q}", f"\\{tex}{{{sign}{p}}}{{{q}}}"]
    whole, rest = divmod(abs(v.numerator), v.denominator)
    if whole and rest:
        forms.append(f"{sign}{whole} {rest * scale}/{q}")
    return forms


@settings(max_examples=300, deadline=None)
@given(values, st.data())
def test_every_written_form_canonicalises_to_one_spelling_that_answers_match_accepts(v, data):
    canon = canonical_number(v)
    assert canon == format_number(v) and parse_number(canon) == v  # exact round trip
    forms = fraction_forms(v, data) + (decimal_forms(v, data) if terminates(v) else [])
    for text in forms:
        assert canonical_number(text) == canon, text
        assert answers_match(text, canon) and answers_match(canon, text), text
        assert extract_answer(f"So the total is {text}.") == canon, text
    for text in forms:  # a lone number is a gold answer in canonical form, however written
        if " " not in text.strip() and "\\" not in text:
            assert canonical_answer(text) == canon, text
            assert PromptIn(text="q", gold_answer=text).gold_answer == canon, text


@settings(max_examples=300, deadline=None)
@given(values, values)
def test_canonical_spellings_are_equal_exactly_when_the_values_are(a, b):
    assert (canonical_number(a) == canonical_number(b)) == (a == b)
    if a == b:
        assert answers_match(canonical_number(a), canonical_number(b))


@settings(max_examples=300, deadline=None)
@given(st.integers(-10**15, 10**15), st.integers(-10**15, 10**15), st.sampled_from(CURRENCIES))
def test_integers_match_exactly_when_equal_however_large(a, b, money):
    # a relative tolerance must not equate 10**12 and 10**12 + 1: integers carry no float noise
    written = f"-{money}{abs(a):,}" if a < 0 else f"{money}{a:,}"
    assert answers_match(written, canonical_number(b)) == (a == b)
    assert answers_match(written, str(a + 1)) is False


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False, width=64))
def test_python_floats_read_as_the_decimal_they_print(x):
    canon = canonical_number(x)
    assert canon == canonical_number(repr(x)) or "e" in repr(x)
    assert parse_number(canon) == Fraction(repr(x))
    assert canonical_number(Decimal(repr(x))) == canon
    assert canonical_answer(x) == canon


@pytest.mark.parametrize("raw, canon", [
    # SVAMP answers are JSON floats; GSM8K's arrive after '####' with commas
    (27.0, "27"), (2.5, "2.5"), ("1,080", "1080"), ("  -3 ", "-3"), ("$5", "5"), ("+5", "5"),
    ("abc", "abc"), ("50%", "50%"), ("x = 3", "x = 3"), ("3/4", "0.75"), (1e-05, "0.00001"),
])
def test_gold_answers_import_canonical_through_every_path(raw, canon):
    assert canonical_answer(raw) == canon
    assert PromptIn(text="q", gold_answer=raw).gold_answer == canon
    svamp = svamp_prompt({"Body": "b", "Question": "q", "Answer": raw})
    assert svamp["gold_answer"] == canon
    if isinstance(raw, str):
        assert parse_gsm8k_answer(f"steps\n#### {raw}")[0] == canon.strip()


def test_problem_texts_and_gold_answers_share_the_spelling():
    assert decimal_text(Fraction(5, 2)) == canonical_number("2.50") == "2.5"
    with pytest.raises(ValueError):
        decimal_text(Fraction(1, 3))


@pytest.mark.parametrize("bad", [True, None, [1], {"a": 1}])
def test_a_gold_answer_is_text_or_a_number(bad):
    if bad is None:
        assert PromptIn(text="q", gold_answer=None).gold_answer is None
        return
    with pytest.raises(ValueError, match="text or a number"):
        canonical_answer(bad)
