"""The computation a problem needs, re-derived from what the prompt row keeps about it.

:func:`derive` turns the worked solution of a labelled prompt into a :class:`Derivation`: its
lines (the text a refined answer can continue with) and, per line, the arithmetic
:class:`~generation.teachers.arithmetic.Step` s it performs, each re-evaluated exactly. Where
the computation comes from, first found wins:

1. ``meta["annotated_rationale"]`` — a GSM8K answer with its calculator annotations
   ``<<16-3-4=9>>`` (kept there by the gsm8k preset; ``gold_rationale`` is stored without them);
2. ``meta["equation"]`` — SVAMP's ``Equation`` (``( 76.0 - 25.0 )``), one line per operation;
3. ``gold_rationale`` with ``<<…>>`` annotations (e.g. GSM8K imported without the preset);
4. ``gold_rationale`` lines that write ``a op b = c`` (the generated problems of
   :mod:`corpus.wordproblems`; a GSM8K rationale stored before annotations were kept).

A derivation is refused — with the reason, never a guess — when it has no arithmetic, when
one of its own steps is wrong (GSM8K has a few typos such as ``8*3=240``), or when its last
step does not reach the gold answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from curation.answers import answers_match
from generation.teachers.arithmetic import SYMBOLS, Step, evaluate_expression, find_steps, show

_ANNOTATION = re.compile(r"<<([^<>]*)>>")
_FINAL_LINE = re.compile(r"^\s*####")


@dataclass(frozen=True)
class SolutionLine:
    """One line of the worked solution and the computations it performs."""

    text: str
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class Derivation:
    """The worked solution of a problem, every step checked."""

    lines: tuple[SolutionLine, ...]
    source: str  # annotations | equation | rationale

    @property
    def steps(self) -> list[Step]:
        """Every step, in order."""
        return [s for line in self.lines for s in line.steps]

    @property
    def answer(self) -> Fraction:
        """The value of the last step: the answer the derivation reaches."""
        return self.steps[-1].value

    def values(self) -> set[Fraction]:
        """Every value the solution computes, intermediate results of each step included."""
        return {o.result for s in self.steps for o in s.operations} | {s.value for s in self.steps}

    def operands(self) -> set[Fraction]:
        """Every number the solution's steps start from."""
        return {n for s in self.steps for n in s.numbers}


def _annotated_lines(rationale: str) -> list[SolutionLine]:
    lines = []
    for raw in rationale.splitlines():
        if _FINAL_LINE.match(raw) or not raw.strip():
            continue
        # A line without an annotation may still write its computation ("= $300").
        steps = (tuple(s for a in _ANNOTATION.findall(raw) for s in find_steps(a)[-1:])
                 or tuple(find_steps(raw)))
        lines.append(SolutionLine(_ANNOTATION.sub("", raw).strip(), steps))
    return lines


def _written_lines(rationale: str) -> list[SolutionLine]:
    return [SolutionLine(raw.strip(), tuple(find_steps(raw)))
            for raw in rationale.splitlines()
            if raw.strip() and not _FINAL_LINE.match(raw)]


def _equation_lines(equation: str) -> list[SolutionLine]:
    found = evaluate_expression(str(equation))
    if found is None:
        return []
    lines = []
    for op in found[1]:
        expression = f"{show(op.left)} {SYMBOLS[op.op]} {show(op.right)}"
        step = Step(expression, op.result, op.result, show(op.result), 0, (op.left, op.right),
                    (op,))
        lines.append(SolutionLine(f"{op.text()}.", (step,)))
    return lines


def _source_lines(gold_rationale: str | None, meta: dict[str, Any] | None
                  ) -> tuple[str, list[SolutionLine]]:
    meta = meta if isinstance(meta, dict) else {}
    if isinstance(meta.get("annotated_rationale"), str):
        return "annotations", _annotated_lines(meta["annotated_rationale"])
    if meta.get("equation"):
        return "equation", _equation_lines(meta["equation"])
    if gold_rationale and _ANNOTATION.search(gold_rationale):
        return "annotations", _annotated_lines(gold_rationale)
    if gold_rationale:
        return "rationale", _written_lines(gold_rationale)
    return "", []


def derive(gold_answer: str | None, gold_rationale: str | None = None,
           meta: dict[str, Any] | None = None) -> Derivation | str:
    """The prompt's checked derivation, or why there is none (see the module docstring)."""
    source, lines = _source_lines(gold_rationale, meta)
    steps = [s for line in lines for s in line.steps]
    if not steps:
        return ("no worked arithmetic to re-derive from (generated steps, GSM8K <<…>> "
                "annotations or a SVAMP Equation)")
    for s in steps:
        if s.slip:
            return f"the worked solution's own step {s.written()} is wrong ({s.text()})"
    derivation = Derivation(tuple(lines), source)
    if gold_answer is not None and not answers_match(show(derivation.answer), str(gold_answer)):
        return (f"the worked solution ends at {show(derivation.answer)}, not at the gold answer "
                f"{gold_answer}")
    return derivation
