"""Compare selfevo's answer extraction/comparison with math-verify on the tricky-answer table.

Reads ``RESPONSE_CASES`` and ``ANSWER_CASES`` from tests/test_answers.py (the hand-labelled
table) and, when present, the GSM8K test set (gold rationale vs its own ``#### N``: every row
must be judged correct; and vs a shifted gold: every row must be judged wrong).

Usage: .venv/bin/python bench/answers_compare.py
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_answers import ANSWER_CASES, RESPONSE_CASES  # noqa: E402

from corpus.presets import find_data_file  # noqa: E402
from curation.answers import answers_match, extract_answer  # noqa: E402


def math_verify_match(pred: str, gold: str) -> bool:
    """math-verify alone: parse both texts, verify(gold, pred)."""
    from math_verify import parse, verify

    try:
        return bool(verify(parse(gold), parse(pred)))
    except Exception:  # noqa: BLE001 - an unparseable text is a "no"
        return False


def selfevo_response(text: str, gold: str) -> bool:
    """selfevo on a whole response: extract, then compare."""
    return answers_match(extract_answer(text), gold)


def combined_response(text: str, gold: str) -> bool:
    """selfevo's extraction, then math-verify as the comparison."""
    pred = extract_answer(text)
    return pred is not None and math_verify_match(pred, gold)


def score(fn: Callable[[str, str], bool], cases: list[tuple[str, str, bool]]) -> tuple[int, float]:
    """(number right, microseconds per case)."""
    t0 = time.perf_counter()
    right = sum(fn(pred, gold) is expected for pred, gold, expected in cases)
    return right, (time.perf_counter() - t0) / max(1, len(cases)) * 1e6


def gsm8k_cases() -> list[tuple[str, str, bool]]:
    """GSM8K test rationales: vs their own gold (correct) and vs gold + 1 (incorrect)."""
    path = find_data_file("gsm8k", "test.jsonl")
    if path is None:
        return []
    cases = []
    for line in path.read_text().splitlines():
        answer = json.loads(line)["answer"]
        gold = answer.rsplit("####", 1)[1].strip().replace(",", "")
        rationale = answer.rsplit("####", 1)[0].strip() + f"\nThe answer is {gold}."
        cases.append((rationale, gold, True))
        cases.append((rationale, str(int(float(gold)) + 1), False))
    return cases


def main() -> None:
    """Print one table row per (table, method)."""
    # pytest.param entries (known limitations) carry their tuple in ``.values``.
    rows = [getattr(case, "values", case) for case in RESPONSE_CASES]
    responses = [(t, g, c) for t, g, _, c in rows]
    tables = {
        "tricky responses": responses,
        "answer pairs": ANSWER_CASES,
        "gsm8k test rationales": gsm8k_cases(),
    }
    methods: dict[str, dict[str, Callable[[str, str], bool]]] = {
        "tricky responses": {
            "selfevo": selfevo_response,
            "math-verify": math_verify_match,
            "selfevo extract + math-verify": combined_response,
        },
        "answer pairs": {"selfevo": answers_match, "math-verify": math_verify_match},
        "gsm8k test rationales": {"selfevo": selfevo_response, "math-verify": math_verify_match},
    }
    math_verify_match("1", "1")  # warm sympy imports outside the timings
    print(f"{'table':<24} {'method':<30} {'right':>11} {'accuracy':>9} {'us/case':>9}")
    for table, cases in tables.items():
        if not cases:
            print(f"{table:<24} (data not found)")
            continue
        for name, fn in methods[table].items():
            right, us = score(fn, cases)
            print(
                f"{table:<24} {name:<30} {right:>5}/{len(cases):<5} "
                f"{right / len(cases):>9.1%} {us:>9.0f}"
            )
    for table in ("tricky responses", "answer pairs"):
        for pred, gold, expected in tables[table]:
            mine = (selfevo_response if table == "tricky responses" else answers_match)(pred, gold)
            mv = math_verify_match(pred, gold)
            if mine != expected or mv != expected:
                print(f"  disagree [{table}] expected={expected} selfevo={mine} "
                      f"math-verify={mv}: {pred[:60]!r} vs {gold!r}")


if __name__ == "__main__":
    main()
