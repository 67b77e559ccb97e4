"""The reference teacher: verdicts from the answer key, feedback that says where, clean refinements."""

from __future__ import annotations

import json

import pytest
from conftest import shared_data

from curation.answers import extract_answer
from curation.verdicts import parse_verdict
from generation.teachers.reference import ReferenceTeacher, clean_rationale

RATIONALE = (
    "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n"
    "She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer's market.\n#### 18"
)
teacher = ReferenceTeacher()


def critique(response: str | None, gold: str | None = "18", rationale: str | None = RATIONALE):
    return teacher.critique("How much does Janet make?", response, gold, rationale)


def test_correct_answer() -> None:
    c = critique("16 - 3 - 4 = 9 eggs, 9 * 2 = 18. The answer is $18.")
    assert c.verdict == "correct" and c.verdict_error is None
    assert "18" in c.feedback
    assert parse_verdict(c.feedback) == ("correct", None)


def test_wrong_answer_names_both_answers_and_the_wrong_step() -> None:
    c = critique("She has 16 - 3 - 4 = 8 eggs. 8 * 2 = 16. The answer is 16.")
    assert c.verdict == "incorrect"
    assert "final answer 16 is wrong; the expected answer is 18" in c.feedback
    assert "'16 - 3 - 4 = 8' is wrong: 16 - 3 - 4 = 9" in c.feedback
    assert "16-3-4 = 9" in c.feedback  # the gold step the response never reached
    assert parse_verdict(c.feedback) == ("incorrect", None)
    assert c.feedback.endswith("Verdict: incorrect")


def test_stopping_at_an_intermediate_result_is_named() -> None:
    c = critique("She has 16 - 3 - 4 = 9 eggs left. The answer is 9.")
    assert c.verdict == "incorrect"
    assert "9 is only an intermediate result (16-3-4 = 9)" in c.feedback
    assert "does not reach" not in c.feedback


def test_missing_answer() -> None:
    c = critique("I am not sure how to do this.")
    assert c.verdict == "incorrect"
    assert "does not state a final numeric answer" in c.feedback
    c = critique(None)
    assert c.verdict == "incorrect" and c.refinement is not None


def test_right_steps_wrong_final_answer_has_no_false_step_hint() -> None:
    c = critique("16 - 3 - 4 = 9 and 9 x 2 = 18 so the answer is 20.")
    assert c.verdict == "incorrect"
    assert "is wrong: " not in c.feedback.split("\n", 1)[1]  # no arithmetic step blamed
    assert "does not reach" not in c.feedback


def test_rounded_results_are_not_arithmetic_errors() -> None:
    c = critique("Each gets 7 / 3 = 2.33 cups, 1,000 + 500 = 1,500. The answer is 1500.", gold="9")
    assert "is wrong: " not in c.feedback.split("\n", 1)[1]


def test_refinement_is_the_clean_gold_rationale() -> None:
    c = critique("The answer is 3.")
    assert c.refinement == (
        "Janet sells 16 - 3 - 4 = 9 duck eggs a day.\n"
        "She makes 9 * 2 = $18 every day at the farmer's market.\n"
        "The answer is 18."
    )
    assert "<<" not in c.refinement and "####" not in c.refinement
    assert clean_rationale("", "1,000.00") == "The answer is 1000."


def test_no_gold_answer_is_a_recorded_failure_not_a_crash() -> None:
    c = critique("The answer is 3.", gold=None, rationale=None)
    assert c.verdict is None and c.feedback is None
    assert "no gold answer" in c.verdict_error
    # The gold answer can come from the rationale's "#### N".
    assert critique("The answer is 18.", gold=None).verdict == "correct"


def test_deterministic() -> None:
    response = "She has 16 - 3 - 4 = 8 eggs. The answer is 16."
    assert critique(response) == critique(response)
    assert teacher.version.startswith("reference-")


@pytest.mark.parametrize("bench", ["gsm8k"])
def test_gold_rationales_grade_correct_and_refine_to_the_gold(bench: str) -> None:
    """On every GSM8K test row: the gold rationale is judged correct, a shifted answer is not,
    and the refinement's own final answer is the gold answer."""
    rows = [json.loads(line) for line in shared_data(bench, "test.jsonl").open()]
    for row in rows:
        gold = row["answer"].rsplit("####", 1)[1].strip()
        c = teacher.critique(row["question"], row["answer"], gold, row["answer"])
        assert c.verdict == "correct", row["answer"]
        assert extract_answer(c.refinement) == extract_answer(row["answer"])
        wrong = teacher.critique(row["question"], f"The answer is {gold}1.", gold, row["answer"])
        assert wrong.verdict == "incorrect"
