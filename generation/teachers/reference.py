"""The ``reference`` teacher: a grader with an answer key, not a model.

For a prompt with a gold answer (GSM8K, SVAMP, any labelled math set) it:

1. extracts the final answer of the response (:func:`curation.answers.extract_answer`);
2. compares it with the gold answer (:func:`curation.answers.answers_match`);
3. writes feedback from that comparison only: the verdict; when wrong, the extracted answer
   versus the expected one (or that no final answer was found), the first explicit equation
   in the response whose arithmetic is wrong (``a op b = c`` re-evaluated exactly), and
   either that the answer given is only an intermediate result of the gold solution or the
   first intermediate result of the gold rationale that the response never reaches;
4. ends the feedback with ``Verdict: correct|incorrect`` (so it parses like a model's);
5. uses the gold rationale as the refinement: GSM8K calculator annotations ``<<…>>`` removed,
   the ``#### N`` line replaced by the canonical answer line ``The answer is N.``

It does not read the reasoning for logic errors, so a right answer reached by wrong reasoning
is judged correct. Deterministic and offline: the same inputs always give the same texts, and
:data:`ReferenceTeacher.version` (recorded in provenance) changes whenever the texts would.
"""

from __future__ import annotations

import ast
import operator
import re
from typing import Any

from curation.answers import answers_match, extract_answer
from generation.teachers.arithmetic import evaluate_expression, show
from generation.teachers.base import Critique
from schemas.numbers import canonical_number, parse_number

_ANNOTATION = re.compile(r"<<([^<>]*)>>")
_FINAL_LINE = re.compile(r"^\s*####\s*(.*?)\s*$", re.MULTILINE)
# "a op b (op c…) = d": numbers (thousands commas, $) joined by + - * / x × ÷ and brackets.
_TERM = r"\$?\d[\d,]*(?:\.\d+)?"
_EQUATION = re.compile(
    rf"(?<![\w.])(?P<lhs>\(?\s*{_TERM}\s*\)?(?:\s*[-+*/x×÷]\s*\(?\s*{_TERM}\s*\)?)+)"
    rf"\s*=\s*(?P<rhs>-?{_TERM})(?![\d])"
)
# An equation is checked only when it stands alone: not continued by an operator, a fraction
# bar or a unit glued to the number ("= 4000 + 2040", "= 1/4", "= 5A"), and not the tail of a
# longer expression or of an algebraic one ("M + 4 + 2 = 8", "60 x 2/3 = 40").
_CONTINUED = re.compile(r"(?:\w|/|\s*[-+*/×÷]\s*[\d($]|\s+x\s*[\d($]|\s+\d+/\d|\s\d{3}\b)")
_PRECEDED = re.compile(r"(?:[-+*/×÷=(.,\d$]|\b[A-Za-z])$")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _arithmetic_error(response: str) -> str | None:
    """The first ``a op b = c`` in the response whose result is wrong, explained."""
    for m in _EQUATION.finditer(response):
        if _CONTINUED.match(response, m.end()) or _PRECEDED.search(response[: m.start()].rstrip()):
            continue
        if m.group("lhs").count("/") + m.group("lhs").count("÷") > 1:
            continue  # "60 / 3/4" means 60 ÷ ¾ to a person and 20/4 to a parser: skip it
        found = evaluate_expression(m.group("lhs"))
        true = found[0] if found else None
        stated = parse_number(m.group("rhs"))
        if true is None or stated is None or answers_match(canonical_number(m.group("rhs")),
                                                           show(true)):
            continue
        # A result rounded to the places written (7 / 3 = 2.33) is not an error.
        places = len(m.group("rhs").split(".", 1)[1]) if "." in m.group("rhs") else 0
        if round(true, places) == stated:
            continue
        shown = " ".join(m.group(0).split())
        return f"The step '{shown}' is wrong: {' '.join(m.group('lhs').split())} = {show(true)}."
    return None


def _missed_intermediate(response: str, gold_rationale: str | None) -> str | None:
    """The first calculator step of the gold rationale whose result the response never states."""
    if not gold_rationale:
        return None
    stated = set()
    for token in re.findall(r"\d[\d,]*(?:\.\d+)?", response):
        value = canonical_number(token)
        if value is not None:
            stated.add(value)
    for annotation in _ANNOTATION.findall(gold_rationale):
        if "=" not in annotation:
            continue
        expression, result = annotation.rsplit("=", 1)
        value = canonical_number(result)
        if value is not None and value not in stated:
            return (
                f"A correct solution computes {expression.strip()} = {value}, "
                "a step your answer does not reach."
            )
    return None


def _stopped_early(predicted: str, gold_rationale: str | None) -> str | None:
    """When the wrong final answer is an intermediate result of the gold solution, say so."""
    for annotation in _ANNOTATION.findall(gold_rationale or "")[:-1]:
        expression, _, result = annotation.rpartition("=")
        if expression and canonical_number(result) == predicted:
            return (
                f"{predicted} is only an intermediate result ({expression.strip()} = {predicted}); "
                "the question asks for more steps after it."
            )
    return None


def clean_rationale(gold_rationale: str, gold_answer: str) -> str:
    """The gold rationale as a refined answer: no ``<<…>>``, ending "The answer is N."."""
    text = _ANNOTATION.sub("", gold_rationale)
    text = _FINAL_LINE.sub("", text).rstrip()
    answer = canonical_number(gold_answer) or gold_answer.strip()
    final = f"The answer is {answer}."
    return f"{text}\n{final}" if text else final


class ReferenceTeacher:
    """Reference-guided grader: compares the response's final answer with the gold answer."""

    spec = "reference"
    #: Bump whenever the feedback or refinement text for the same inputs would change.
    # v3: steps are evaluated by generation.teachers.arithmetic (a malformed "13,2000" is no
    # longer read as 132000).
    version = "reference-v3"

    def critique(
        self,
        prompt: str,
        response: str | None,
        gold_answer: str | None,
        gold_rationale: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Critique:
        """Feedback, verdict and refinement for one response (see the module docstring)."""
        del prompt, meta  # the grade depends on the answer key only; kept for the interface
        if gold_answer is None and gold_rationale:
            final = _FINAL_LINE.search(gold_rationale)
            gold_answer = final.group(1) if final else None
        if gold_answer is None or not str(gold_answer).strip():
            return Critique(None, None, "the prompt has no gold answer to grade against", None)
        gold = canonical_number(gold_answer) or gold_answer.strip()
        refinement = clean_rationale(gold_rationale or "", gold_answer)
        predicted = extract_answer(response)
        if predicted is not None and answers_match(predicted, gold_answer):
            feedback = (
                f"The final answer {predicted} matches the expected answer {gold}.\n"
                "Verdict: correct"
            )
            return Critique(feedback, "correct", None, refinement)
        lines = []
        if predicted is None:
            lines.append(
                f"The response does not state a final numeric answer; the expected answer is "
                f"{gold}. End the solution with a line 'The answer is <number>.'"
            )
        else:
            lines.append(f"The final answer {predicted} is wrong; the expected answer is {gold}.")
        early = _stopped_early(predicted, gold_rationale) if predicted is not None else None
        hints = (
            _arithmetic_error(response or ""),
            early or _missed_intermediate(response or "", gold_rationale),
        )
        lines += [hint for hint in hints if hint]
        lines.append("Verdict: incorrect")
        return Critique("\n".join(lines), "incorrect", None, refinement)
