"""The verdict parser: many real-world spellings of the last line, and the failures."""

from __future__ import annotations

import pytest

from curation.verdicts import parse_verdict

BODY = "The response adds 3 and 4 to get 7, which matches the question.\n\n"


@pytest.mark.parametrize(
    ("last", "expected"),
    [
        ("Verdict: correct", "correct"),
        ("Verdict: incorrect", "incorrect"),
        ("verdict: CORRECT", "correct"),
        ("VERDICT: INCORRECT.", "incorrect"),
        ("**Verdict:** Correct.", "correct"),
        ("**Verdict: Incorrect**", "incorrect"),
        ("Verdict: **correct**", "correct"),
        ("### Verdict: incorrect", "incorrect"),
        ("> Verdict: correct", "correct"),
        ("- Verdict: incorrect", "incorrect"),
        ("Verdict: `correct`", "correct"),
        ("Verdict: [incorrect]", "incorrect"),
        ("Verdict: 'correct'", "correct"),
        ('Verdict: "incorrect"', "incorrect"),
        ("Verdict - correct", "correct"),
        ("Verdict = incorrect", "incorrect"),
        ("Final verdict: correct!", "correct"),
        ("Verdict:correct", "correct"),
        ("Verdict: correct   \t", "correct"),
        ("Verdict: Incorrect - the total should be 18, not 17.", "incorrect"),
        ("Verdict: Correct. The answer 7 is right.", "correct"),
        ("Verdict: not correct", "incorrect"),
        ("Verdict: wrong", "incorrect"),
        ("The verdict is incorrect.", "incorrect"),
        ("Verdict:\ncorrect", "correct"),
        ("Verdict: _incorrect_", "incorrect"),
    ],
)
def test_verdict_variants(last: str, expected: str) -> None:
    assert parse_verdict(BODY + last) == (expected, None)
    assert parse_verdict(BODY + last + "\n\n  \n") == (expected, None)  # trailing whitespace


@pytest.mark.parametrize(
    ("feedback", "reason_part"),
    [
        ("", "empty"),
        ("   \n ", "empty"),
        (None, "empty"),
        (BODY + "The answer looks right to me.", "no 'Verdict"),
        (BODY + "Verdict: correct/incorrect", "ambiguous"),
        (BODY + "Verdict: correct or incorrect", "ambiguous"),
        (BODY + "Verdict: maybe", "unrecognised"),
        (BODY + "Verdict: partially right", "unrecognised"),
        (BODY + "Verdict:", "no value"),
        (BODY + "Verdict: correct\nVerdict: incorrect", "disagree"),
        (BODY + "Verdict: incorrect\n\nOn second thought...\nVerdict: correct", "disagree"),
    ],
)
def test_unparseable(feedback: str | None, reason_part: str) -> None:
    verdict, reason = parse_verdict(feedback)
    assert verdict is None
    assert reason is not None and reason_part in reason


def test_word_correct_in_the_body_is_not_a_verdict() -> None:
    """Only the Verdict line counts: "correct" in the critique text does not."""
    feedback = "The first step is correct but the second is wrong.\nVerdict: incorrect"
    assert parse_verdict(feedback) == ("incorrect", None)
    assert parse_verdict("The final answer is correct.")[0] is None


def test_repeated_agreeing_verdicts() -> None:
    assert parse_verdict("Verdict: correct\nSummary.\n**Verdict: Correct**") == ("correct", None)


def test_text_after_the_verdict_line_is_tolerated() -> None:
    assert parse_verdict(BODY + "Verdict: incorrect\n\nHope this helps!") == ("incorrect", None)
