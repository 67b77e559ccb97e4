"""Exact arithmetic of worked solutions: the equations a text writes, re-evaluated with fractions.

Shared by the offline teachers. :func:`find_steps` reads every written computation of a text
as a :class:`Step` — one per ``=`` sign, in reading order — so ``16 - 3 - 4 = 9 eggs`` is one
step and the chain ``2 * 3 = 6 + 4 = 10`` is two (``2 × 3 = 6``, then ``6 + 4 = 10``). Numbers
may carry thousands commas, ``$`` and ``%`` (``20%`` is 0.2); ``x``/``×``/``*`` multiply,
``/``/``÷`` divide. Each step keeps its exact value, the number written as its result, the
literal numbers it uses and its binary :class:`Operation` s in evaluation order
(``16 - 3 - 4`` is ``16 - 3 = 13`` then ``13 - 4 = 9``).

What is not read as a step: algebra (``M + 4 = 8``, ``2x + 3 = 7``), a lone ``x = 5``,
markdown emphasis ``**``, powers. ``60 / 3/4`` is read both as ``(60 / 3) / 4`` and as
``60 / (3/4)``, whichever the written result agrees with. A result rounded to the decimals it
is written with (``7 / 3 = 2.33``) is not a slip.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from fractions import Fraction

from schemas.numbers import format_number

#: How an operator is shown in feedback.
SYMBOLS = {"+": "+", "-": "-", "*": "×", "/": "÷"}
_AST_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_OP_CHARS = {"+": "+", "-": "-", "−": "-", "–": "-", "*": "*", "×": "*", "x": "*", "X": "*", "/": "/",
             "÷": "/"}

_TOKEN = re.compile(
    r"""
    (?P<mixed>(?<![\w.,/])\d+[ ]\d+/\d+(?![\d/.]))
    | (?P<num>(?<![\w.,])(?:[$€£]\s?)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?|(?<![\w.])\.\d+%?)
    | (?P<pow>\*\*|\^)
    | (?P<times>(?:(?<=[\d)%])\s*|(?<=[a-z'’][ ]))[xX](?=\s*[\d($(]))
    | (?P<unit>(?<=[\d%])(?:(?:[ ][A-Za-z][a-z'’]*){1,4}(?:/[A-Za-z][a-z]*)?|/[A-Za-z][a-z]*)
               (?=[ ]?(?:[-+*/×÷−–=]|[xX][ ]?\$?\d)))
    | (?P<op>[-+*/×÷−–])
    | (?P<eq>=)
    | (?P<open>\()
    | (?P<close>\))
    | (?P<space>[ \t]+)
    """,
    re.VERBOSE,
)
_SINGLE_LETTER_WORD = re.compile(r"(?:^|[^\w'’])([B-HJ-Zb-z])\s*$")  # a variable, not "a"/"I"
# "25 classmates + his 1 teacher + 1 = 27": the expression began before the words.
_OPERATOR_BEFORE = re.compile(r"(?<!\*)[-+*/×÷=]\s*(?:[A-Za-z’']+\s*){1,2}$")


def show(value: Fraction) -> str:
    """A value as feedback writes it: ``18``, ``2.5``, ``3.33 (rounded)`` for 10/3."""
    text = format_number(value)
    return f"{float(value):.2f} (rounded)" if "/" in text else text


def decimals(text: str) -> int:
    """Decimal places a number is written with (``2.50`` → 2)."""
    digits = text.rstrip("%").replace(",", "")
    return len(digits.split(".", 1)[1]) if "." in digits else 0


def agrees(true: Fraction, written: Fraction, places: int) -> bool:
    """Whether ``written`` states ``true``, exactly or rounded to its ``places`` decimals."""
    return true == written or round(true, places) == written


@dataclass(frozen=True)
class Operation:
    """One binary operation with its exact result."""

    left: Fraction
    op: str  # + - * /
    right: Fraction
    result: Fraction

    def text(self) -> str:
        """``48 ÷ 4 = 12``."""
        return f"{show(self.left)} {SYMBOLS[self.op]} {show(self.right)} = {show(self.result)}"

    def operands(self) -> tuple[Fraction, Fraction]:
        """The two operands, smaller first (for matching regardless of order)."""
        return (min(self.left, self.right), max(self.left, self.right))


@dataclass(frozen=True)
class Step:
    """One written computation: ``expression = result``."""

    expression: str  # as feedback shows it: canonical numbers, operators + - × ÷
    value: Fraction  # the exact value of the expression
    stated: Fraction  # the result the text writes
    stated_text: str  # how feedback shows that result
    places: int  # decimals the result is written with
    numbers: tuple[Fraction, ...]  # the literal numbers of the expression
    operations: tuple[Operation, ...]  # binary operations, in evaluation order
    start: int = 0  # where the step is in its text
    end: int = 0
    also: tuple[Fraction, ...] = ()  # numbers a rewrite introduces: "4 × 60 ÷ 5 = 4 × 12"

    @property
    def slip(self) -> bool:
        """Whether the written result is wrong (beyond rounding to the decimals written)."""
        return not agrees(self.value, self.stated, self.places)

    def written(self) -> str:
        """The step as the text writes it: ``12 × 3 = 32``."""
        return f"{self.expression} = {self.stated_text}"

    def text(self) -> str:
        """The step done right: ``12 × 3 = 36``."""
        return f"{self.expression} = {show(self.value)}"


@dataclass
class _Token:
    kind: str  # num | op | eq | open | close
    text: str
    start: int
    end: int
    value: Fraction | None = None  # 20% is 0.2
    unit: Fraction | None = None  # 20% is 20 ("9% * 5 = 45%" writes % as a unit)

    def number(self, percent_unit: bool = False) -> Fraction:
        """The number's value (``%`` divides by 100 unless ``percent_unit``)."""
        value = self.unit if percent_unit else self.value
        assert value is not None
        return value

    def shown(self) -> str:
        """How feedback writes the number: canonical, ``%`` kept."""
        return f"{show(self.number(True))}%" if self.text.endswith("%") else show(self.number())


def _number(text: str) -> Fraction:
    digits = re.sub(r"[$€£,\s]", "", text)
    if digits.endswith("%"):
        return Fraction(digits[:-1]) / 100
    return Fraction(digits)


def _runs(text: str) -> list[list[_Token]]:
    """Maximal runs of adjacent math tokens on one line (spaces allowed, not newlines)."""
    runs: list[list[_Token]] = []
    current: list[_Token] = []
    last_end = -1
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup or ""
        if m.start() != last_end or kind == "pow":
            if current:
                runs.append(current)
            current = []
        last_end = m.end()
        if kind in ("space", "pow", "unit"):  # "30 years - 20 years", "$20/hour": units dropped
            continue
        raw = m.group(0)
        if kind == "times":
            kind, raw = "op", "x"
        token = _Token(kind, raw.strip(), m.start(), m.end())
        if kind == "mixed":  # "3 1/2"
            whole, fraction = raw.split()
            numerator, denominator = fraction.split("/")
            token.kind = "num"
            token.value = int(whole) + Fraction(int(numerator), int(denominator) or 1)
            token.unit = token.value
        elif kind == "num":
            token.value = _number(raw)
            token.unit = token.value * 100 if raw.endswith("%") else token.value
        current.append(token)
    if current:
        runs.append(current)
    return [_signed(run) for run in runs]


def _signed(run: list[_Token]) -> list[_Token]:
    """A ``-`` glued to a number where no operand precedes it is the number's sign: ``= -5``."""
    out: list[_Token] = []
    for t in run:
        prev = out[-1] if out else None
        sign = prev is not None and prev.text in "-−–" and prev.end == t.start
        before = out[-2] if len(out) > 1 else None
        if (t.kind == "num" and sign and prev is not None
                and (before is None or before.kind in ("op", "eq", "open"))):
            assert t.value is not None and t.unit is not None
            out[-1] = _Token("num", f"-{t.text}", prev.start, t.end, -t.value, -t.unit)
        else:
            out.append(t)
    return out


def _trim(run: list[_Token], text: str) -> list[_Token] | None:
    """The run without a leading label ``=`` / bullet and trailing operators; None for algebra."""
    while run and run[0].kind == "eq":
        run = run[1:]
    while run and run[-1].kind in ("op", "eq"):
        run = run[:-1]
    if not run:
        return None
    first = run[0]
    before = text[: first.start].rstrip(" \t")
    if first.kind == "op":
        at_line_start = before == "" or before.endswith("\n")
        if first.text in "-*" and at_line_start and len(run) > 1 and run[1].start > first.end:
            return run[1:]  # a list bullet "- 3 + 4 = 7"
        if first.text in "-−–" and len(run) > 1 and run[1].start == first.end:
            return run  # a negative number
        return None  # "M + 4 = 8": the expression starts before the run
    if _SINGLE_LETTER_WORD.search(before) or _OPERATOR_BEFORE.search(before):
        return None  # "y 2 + 3 = 5"-like algebra, or an expression cut by words
    return run


def _split(run: list[_Token]) -> list[list[_Token]]:
    segments: list[list[_Token]] = [[]]
    for t in run:
        if t.kind == "eq":
            segments.append([])
        else:
            segments[-1].append(t)
    return segments


def _evaluate(tokens: list[_Token], tight_fractions: bool = False, percent_unit: bool = False
              ) -> tuple[Fraction, tuple[Operation, ...], tuple[Fraction, ...]] | None:
    """Exact value, operations and literal numbers of one expression; None when not one."""
    names: dict[str, Fraction] = {}
    parts: list[str] = []
    for t in tokens:
        if t.kind == "num":
            name = f"n{len(names)}"
            names[name] = t.number(percent_unit)
            parts.append(name)
        elif t.kind == "op":
            parts.append(_OP_CHARS[t.text])
        else:
            parts.append(t.text)
    if tight_fractions:  # "3/4" written without spaces is one number: (3 / 4)
        for i in range(1, len(tokens) - 1):
            left, t, right = tokens[i - 1], tokens[i], tokens[i + 1]
            if (t.text == "/" and left.kind == right.kind == "num"
                    and left.end == t.start and t.end == right.start):
                parts[i - 1], parts[i + 1] = f"({parts[i - 1]}", f"{parts[i + 1]})"
    source = " ".join(parts)
    operations: list[Operation] = []

    def value(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Name) and node.id in names:
            return names[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _AST_OPS:
            left, right = value(node.left), value(node.right)
            op = _AST_OPS[type(node.op)]
            if op == "/" and right == 0:
                raise ZeroDivisionError
            result = {"+": left + right, "-": left - right, "*": left * right}.get(op)
            result = left / right if result is None else result
            operations.append(Operation(left, op, right, result))
            return result
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        raise ValueError("not arithmetic")

    try:
        result = value(ast.parse(source, mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return None
    return result, tuple(operations), tuple(names.values())


def _render(tokens: list[_Token]) -> str:
    """An expression as feedback shows it; a fraction written ``3/4`` stays ``3/4``."""
    out = ""
    for i, t in enumerate(tokens):
        if t.kind == "num":
            text = t.shown()
        elif t.kind == "op":
            text = SYMBOLS[_OP_CHARS[t.text]]
        else:
            text = t.text
        prev = tokens[i - 1] if i else None
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        tight = (t.text == "/" and prev is not None and nxt is not None and prev.kind == "num"
                 and nxt.kind == "num" and prev.end == t.start and t.end == nxt.start)
        if tight:
            text = "/"
        glued = tight or (prev is not None and prev.text == "/" and prev.end == t.start
                          and out.endswith("/"))
        if out and not glued and not out.endswith("(") and t.kind != "close":
            out += " "
        out += text
    return out


def _expression_step(tokens: list[_Token], result: list[_Token],
                     stated: tuple[Fraction, Fraction] | None = None) -> Step | None:
    """The step ``tokens = result``, read the way the written result agrees with.

    ``result`` is one number, or an expression (a rewrite) whose value is ``stated``.
    Readings: standard precedence, ``3/4`` written tight as one number, ``%`` as a unit.
    """
    number = result[0] if len(result) == 1 and result[0].kind == "num" else None
    if stated is None:
        assert number is not None
        stated = (number.number(), number.number(True))
    places = decimals(number.text) if number is not None else 99
    options = [(False, False), (True, False), (False, True), (True, True)]
    if sum(t.text == "/" for t in tokens) < 2:
        options = [o for o in options if not o[0]]
    if not any(t.text.endswith("%") for t in [*tokens, *result]):
        options = [o for o in options if not o[1]]
    readings = []
    for tight, unit in options:
        found = _evaluate(tokens, tight_fractions=tight, percent_unit=unit)
        if found is not None:
            readings.append((found, stated[1] if unit else stated[0]))
    if not readings:
        return None
    (value, operations, numbers), written = next(
        (r for r in readings if agrees(r[0][0], r[1], places)), readings[0])
    if not operations:
        return None
    shown = number.shown() if number is not None else _render(result)
    also = () if number is not None else tuple(t.number() for t in result if t.kind == "num")
    return Step(_render(tokens), value, written, shown, places, numbers, operations,
                tokens[0].start, result[-1].end, also)


def _chain_steps(segments: list[list[_Token]]) -> list[Step]:
    """The steps of ``S0 = S1 = …``: each operator-bearing segment equals what follows it."""
    steps: list[Step] = []
    for left, right in zip(segments, segments[1:], strict=False):
        if not any(t.kind == "op" for t in left) or not right:
            continue
        if len(right) == 1 and right[0].kind == "num":  # "… = 36"
            step = _expression_step(left, right)
        else:  # "… = 5 × 4" (a rewrite) or "2 × 3 = 6 + 4" (a chain continued from 6)
            rewritten, mine = _evaluate(right), _evaluate(left)
            if rewritten is not None and mine is not None and rewritten[0] == mine[0]:
                step = _expression_step(left, right, (rewritten[0], rewritten[0]))
            elif right[0].kind == "num":
                step = _expression_step(left, right[:1])
            else:
                step = None
        if step is not None:
            steps.append(step)
    return steps


def find_steps(text: str) -> list[Step]:
    """Every computation ``expression = result`` the text writes, in reading order."""
    steps: list[Step] = []
    for run in _runs(text):
        trimmed = _trim(run, text)
        if trimmed is None or not any(t.kind == "eq" for t in trimmed):
            continue
        segments = _split(trimmed)
        if any(not s for s in segments):
            continue
        steps.extend(_chain_steps(segments))
    return steps


def evaluate_expression(expression: str) -> tuple[Fraction, tuple[Operation, ...]] | None:
    """Exact value and operations of an expression alone (``( 3.0 + 5.0 ) * 2.0``)."""
    runs = _runs(expression)
    text = expression.strip()
    offset = len(expression) - len(expression.lstrip())
    if len(runs) != 1 or runs[0][0].start != offset or runs[0][-1].end != offset + len(text):
        return None  # not one expression from end to end ("45 * 0,2")
    found = _evaluate(runs[0])
    return None if found is None else (found[0], found[1])


def numbers_in(text: str) -> list[Fraction]:
    """Every number written in digits in ``text`` (a fraction ``2/3`` gives 2, 3 and 2/3)."""
    out: list[Fraction] = []
    for run in _runs(text):
        for i, t in enumerate(run):
            if t.kind != "num":
                continue
            assert t.value is not None
            out.append(t.value)
            if t.text.endswith("%"):
                out.append(t.value * 100)
            if (i + 2 < len(run) and run[i + 1].text == "/" and run[i + 2].kind == "num"
                    and run[i + 2].value):
                assert run[i + 2].value is not None
                out.append(t.value / run[i + 2].value)
    return out
