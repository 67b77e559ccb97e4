"""The ``verifying`` teacher: checks the response's own arithmetic against a re-derivation.

Where the ``reference`` teacher compares final answers with an answer key, this one does what
a careful grader does with the problem in front of them. It re-derives the computation from
the prompt row (:func:`generation.teachers.derivation.derive`: the generator's own steps, a
GSM8K rationale's ``<<…>>`` annotations, SVAMP's ``Equation``), reads every computation the
response writes (:func:`generation.teachers.arithmetic.find_steps`) and checks, step by step:

* **numbers** — every number a step uses is in the problem (digits, number words, ``half``,
  ``dozen``, unit conversions the problem's words imply such as 60 for hours and minutes), in
  the derivation, or the result of an earlier step;
* **arithmetic** — the written result equals the exact value (rounding to the decimals written
  is accepted);
* **the path** — when the final answer is wrong, the first step whose result the solution does
  not need (neither a value of the derivation nor used by a later step that is): a wrong
  **operation** when a derivation step combines the same two numbers differently, else a step
  off the path, named with the step the problem needs next;
* **the final answer** — equal to the derivation's last value; else the response stopped early,
  gave an answer its steps do not reach, or none.

The feedback names each checked step ("Step 1 computes 2 × 12 = 24: right."), then the first
problem found ("Step 2 computes 12 × 3 = 32, but 12 × 3 = 36."), and ends ``Verdict: correct``
or ``Verdict: incorrect``. It never states a value it has not derived in the feedback itself:
every number it writes is in the problem or the response, or is the result of an equation it
writes. The verdict is *correct* when the final answer equals the derivation's and no step has
a wrong number or wrong arithmetic (a detour that still reaches the answer is not an error).

The refinement continues from the last correct step: the response verbatim up to the end of
that step's sentence, then the derivation's lines the response has not reached, then
``The answer is N.``. Deterministic and offline; :data:`VerifyingTeacher.version` changes
whenever the texts for the same inputs would.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from curation.answers import answers_match, extract_answer, parse_number
from generation.teachers.arithmetic import SYMBOLS, Operation, Step, find_steps, numbers_in, show
from generation.teachers.base import Critique
from generation.teachers.derivation import Derivation, derive

# Number words and the constants a problem's words imply (a solution may use them unwritten).
_WORD_NUMBERS = {
    w: i for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split())
} | {"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
     "ninety": 90, "hundred": 100, "thousand": 1000, "million": 1000000}
_IMPLIED: list[tuple[str, tuple[Fraction, ...]]] = [
    (r"half|halves|twice|double|both|pair|couple|each other", (Fraction(2), Fraction(1, 2))),
    (r"third|triple|thrice", (Fraction(3), Fraction(1, 3))),
    (r"quarter|fourth", (Fraction(4), Fraction(1, 4))),
    (r"fifth", (Fraction(5), Fraction(1, 5))),
    (r"dozen", (Fraction(12),)),
    (r"percent|%|cents?\b", (Fraction(100),)),
    (r"hours?|minutes?|seconds?", (Fraction(60),)),
    (r"days?|hours?", (Fraction(24),)),
    (r"weeks?", (Fraction(7),)),
    (r"years?|months?", (Fraction(12), Fraction(52), Fraction(365))),
    (r"months?", (Fraction(30), Fraction(4))),
    (r"feet|foot|inch", (Fraction(12),)),
    (r"yards?", (Fraction(3),)),
    (r"pounds?|ounces?", (Fraction(16),)),
    (r"meters?|metres?|kilo|grams?|liters?|litres?|mili|milli", (Fraction(100), Fraction(1000))),
]
_ALWAYS = (Fraction(0), Fraction(1))
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")
_ANSWER_MARKER = re.compile(r"answer|####|\\boxed", re.IGNORECASE)
_VERBS = {"+": "adds", "-": "subtracts", "*": "multiplies", "/": "divides"}


def problem_numbers(prompt: str) -> set[Fraction]:
    """The numbers a solution may start from: written, spelled or implied by the words."""
    found = set(numbers_in(prompt)) | set(_ALWAYS)
    for percent in re.findall(r"(\d+(?:\.\d+)?)\s*(?:%|percent)", prompt):
        p = Fraction(percent) / 100  # "50% more" is × 1.5, "20% off" is × 0.8
        found |= {p, 1 + p, 1 - p, Fraction(percent) + 100, 100 - Fraction(percent)}
    lower = prompt.lower()
    for word in re.findall(r"[a-z]+", lower):
        if word in _WORD_NUMBERS:
            found.add(Fraction(_WORD_NUMBERS[word]))
    for pattern, values in _IMPLIED:
        if re.search(pattern, lower):
            found.update(values)
    return found


def _member(value: Fraction, values: set[Fraction]) -> bool:
    return value in values or any(answers_match(show(value), show(v)) for v in values
                                  if abs(v - value) < 1)


@dataclass(frozen=True)
class Finding:
    """What is wrong with a response: the first problem found, as one feedback sentence."""

    kind: str  # number | arithmetic | operation | detour | stopped | unreached | no_answer
    step: int | None  # 0-based index of the response step it is about, if any
    sentence: str


@dataclass(frozen=True)
class Check:
    """A response checked against a derivation."""

    steps: tuple[Step, ...]
    kept: int  # leading steps that are right: the refinement continues after them
    answer: str | None  # the response's final answer (extracted)
    finding: Finding | None  # None: the response is correct


def _needed_next(derivation: Derivation, reached: set[Fraction]) -> Step:
    """The first derivation step whose value has not been reached (the last if all were)."""
    steps = derivation.steps
    return next((s for s in steps if not _member(s.value, reached)), steps[-1])


def _reached(steps: tuple[Step, ...] | list[Step]) -> set[Fraction]:
    return ({s.stated for s in steps} | {o.result for s in steps for o in s.operations}
            | {n for s in steps for n in s.also})


def _step_error(steps: tuple[Step, ...], known: set[Fraction]) -> Finding | None:
    """The first step that uses an unknown number or writes a wrong result."""
    available = set(known)
    for i, s in enumerate(steps):
        for n in s.numbers:
            if not _member(n, available):
                return Finding("number", i, f"Step {i + 1} uses {show(n)}, a number not in the "
                                            "problem or any earlier step.")
        if s.slip:
            return Finding("arithmetic", i, f"Step {i + 1} computes {s.written()}, but "
                                            f"{s.text()}.")
        available |= _reached([s]) | {s.value}
    return None


def _first_unneeded(steps: tuple[Step, ...], derivation: Derivation) -> int | None:
    """The first step whose result neither the derivation nor a needed later step uses."""
    values = derivation.values()
    needed = [False] * len(steps)
    for i in range(len(steps) - 1, -1, -1):
        s = steps[i]
        used_later = any(needed[j] and any(_member(s.stated, {n}) for n in steps[j].numbers)
                         for j in range(i + 1, len(steps)))
        needed[i] = _member(s.stated, values) or used_later
    return next((i for i, ok in enumerate(needed) if not ok), None)


def _off_path(i: int, steps: tuple[Step, ...], derivation: Derivation) -> Finding:
    """Why step ``i`` is off the path: a wrong operation on the right numbers, or a detour."""
    s = steps[i]
    for op in s.operations:
        for d in derivation.steps:
            for g in d.operations:
                if op.operands() != g.operands() or (op.op == g.op and
                                                     (op.left == g.left or op.op in "+*")):
                    continue
                if not {op.left, op.right} <= set(s.numbers):  # an unwritten intermediate
                    return Finding("operation", i, f"Step {i + 1} computes {s.written()}, but "
                                                   f"the problem needs {d.text()}.")
                if op.op != g.op:
                    return Finding("operation", i, f"Step {i + 1} {_VERBS[op.op]} "
                                                   f"{show(op.left)} and {show(op.right)} where "
                                                   f"the problem needs {g.text()}.")
                return Finding("operation", i, f"Step {i + 1} computes {_op(op)} the wrong "
                                               f"way round: the problem needs {g.text()}.")
    nxt = _needed_next(derivation, _reached(steps[:i]))
    return Finding("detour", i, f"Step {i + 1} computes {s.written()}, which the problem does "
                                f"not need; the next step it needs is {nxt.text()}.")


def _op(op: Operation) -> str:
    return f"{show(op.left)} {SYMBOLS[op.op]} {show(op.right)}"


def _final_finding(steps: tuple[Step, ...], answer: str | None, derivation: Derivation
                   ) -> Finding:
    """Every step is right and needed, yet the final answer is not the derivation's."""
    reached = _reached(steps)
    value = parse_number(answer) if answer is not None else None
    if value is None:
        nxt = _needed_next(derivation, reached)
        return Finding("no_answer", None, "The response gives no final answer; the next step "
                                          f"the problem needs is {nxt.text()}.")
    if _member(derivation.answer, reached):
        return Finding("unreached", None, f"The steps reach {show(derivation.answer)}, but the "
                                          f"final answer given is {answer}.")
    if _member(value, derivation.values() - {derivation.answer}):
        nxt = _needed_next(derivation, reached | {value})
        return Finding("stopped", None, f"The response stops at {answer}, but the question asks "
                                        f"for more; the next step it needs is {nxt.text()}.")
    nxt = _needed_next(derivation, reached)
    what = "the steps do not reach it" if steps else "the response shows no working"
    return Finding("unreached", None, f"The final answer {answer} does not follow: {what}; the "
                                      f"next step the problem needs is {nxt.text()}.")


def check_response(prompt: str, response: str, derivation: Derivation) -> Check:
    """Check ``response`` step by step against ``derivation`` (see the module docstring)."""
    steps = tuple(find_steps(response))
    answer = extract_answer(response)
    final_ok = answer is not None and answers_match(answer, show(derivation.answer))
    known = problem_numbers(prompt) | derivation.operands() | derivation.values()
    error = _step_error(steps, known)
    unneeded = None if final_ok else _first_unneeded(steps, derivation)
    if unneeded is not None and (error is None or unneeded < (error.step or 0)):
        error = _off_path(unneeded, steps, derivation)
    if error is None and not final_ok:
        return Check(steps, len(steps), answer, _final_finding(steps, answer, derivation))
    kept = len(steps) if error is None else error.step or 0
    return Check(steps, kept, answer, error)


def write_feedback(check: Check, derivation: Derivation) -> str:
    """The feedback text: the checked steps, the first problem, the verdict line."""
    upto = check.kept if check.finding is None or check.finding.step is None else \
        check.finding.step
    lines = [f"Step {i + 1} computes {s.written()}: right." for i, s in
             enumerate(check.steps[:upto])]
    if check.finding is not None:
        lines += [check.finding.sentence, "Verdict: incorrect"]
        return "\n".join(lines)
    if any(_member(derivation.answer, {s.stated}) for s in check.steps):
        lines.append(f"The steps reach {show(derivation.answer)}, the final answer.")
    else:
        work = "; ".join(s.text() for s in derivation.steps)
        lines.append(f"The response does not show every step; re-deriving from the problem: "
                     f"{work}. So the final answer {check.answer} is right.")
    lines.append("Verdict: correct")
    return "\n".join(lines)


def _cut(response: str, steps: tuple[Step, ...], kept: int) -> str:
    """The response verbatim up to the end of the sentence of its last right step."""
    if kept == 0:
        return ""
    last = steps[kept - 1]
    end = _SENTENCE_END.search(response, last.end)
    stop = end.end() if end else len(response)
    rest = response[last.end:stop]
    next_start = steps[kept].start if kept < len(steps) else len(response)
    if next_start < stop or _ANSWER_MARKER.search(rest):  # keep no wrong step, no old answer
        return response[: last.end].rstrip() + "."
    return response[:stop].rstrip()


def write_refinement(response: str, check: Check, derivation: Derivation) -> str:
    """The response's right steps, then the derivation lines not yet reached, then the answer."""
    prefix = _cut(response, check.steps, check.kept)
    reached = _reached(check.steps[: check.kept])
    if prefix:
        lines = [line.text for line in derivation.lines
                 if line.steps and not all(_member(s.value, reached) for s in line.steps)]
    else:
        lines = [line.text for line in derivation.lines]
    final = f"The answer is {show(derivation.answer)}."
    return "\n".join(part for part in (prefix, *lines, final) if part)


class VerifyingTeacher:
    """Offline grader that re-derives the computation and checks the response's steps."""

    spec = "verifying"
    #: Bump whenever the feedback or refinement text for the same inputs would change.
    version = "verifying-v1"

    def critique(
        self,
        prompt: str,
        response: str | None,
        gold_answer: str | None,
        gold_rationale: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Critique:
        """Feedback, verdict and refinement for one response (see the module docstring)."""
        derivation = derive(gold_answer, gold_rationale, meta)
        if isinstance(derivation, str):
            return Critique(None, None, f"cannot re-derive the solution: {derivation}", None)
        check = check_response(prompt, response or "", derivation)
        return Critique(write_feedback(check, derivation),
                        "correct" if check.finding is None else "incorrect", None,
                        write_refinement(response or "", check, derivation))
