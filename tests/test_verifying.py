"""The verifying teacher: checks each written step against a re-derivation of the problem."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from fractions import Fraction

import pytest
from conftest import shared_data

from corpus.presets import canonical_answer, load_benchmark_items, strip_calculator_annotations
from corpus.store import Store
from corpus.wordproblems import generate_problems
from curation.answers import answers_match, extract_answer
from curation.verdicts import parse_verdict
from generation.errors import GenerationError
from generation.teachers import is_offline_teacher, load_teacher
from generation.teachers.arithmetic import evaluate_expression, find_steps, numbers_in, show
from generation.teachers.derivation import derive
from generation.teachers.verifying import VerifyingTeacher, problem_numbers

teacher = VerifyingTeacher()

BAKERY = ("A bakery bakes 2 batches of 12 cookies every day and sells 10 cookies each day. The "
          "rest are given to a food bank. How many cookies does the food bank receive in 3 days?")
BAKERY_STEPS = ("Each day the bakery bakes 2 * 12 = 24 cookies.\n"
                "Each day 24 - 10 = 14 cookies are left.\n"
                "In 3 days the food bank receives 14 * 3 = 42 cookies.")
BAKERY_RATIONALE = BAKERY_STEPS + "\n#### 42"


def grade(response: str | None):
    return teacher.critique(BAKERY, response, "42", BAKERY_RATIONALE)


# -- hand-written responses ------------------------------------------------------------------


def test_correct_response_is_checked_step_by_step_and_kept() -> None:
    c = grade("2 * 12 = 24 cookies are baked. 24 - 10 = 14 are left. 14 * 3 = 42. "
              "The answer is 42.")
    assert c.verdict == "correct" and parse_verdict(c.feedback) == ("correct", None)
    assert c.feedback == ("Step 1 computes 2 × 12 = 24: right.\n"
                          "Step 2 computes 24 - 10 = 14: right.\n"
                          "Step 3 computes 14 × 3 = 42: right.\n"
                          "The steps reach 42, the final answer.\nVerdict: correct")
    assert c.refinement == ("2 * 12 = 24 cookies are baked. 24 - 10 = 14 are left. 14 * 3 = 42."
                            "\nThe answer is 42.")


def test_wrong_multiplication_is_named_with_the_right_product() -> None:
    c = grade("2 x 12 = 24 cookies.\nThen 24 - 10 = 14 left.\n14 x 3 = 32 cookies.\n"
              "The answer is 32.")
    assert c.verdict == "incorrect"
    assert c.feedback.splitlines()[2:] == ["Step 3 computes 14 × 3 = 32, but 14 × 3 = 42.",
                                           "Verdict: incorrect"]
    # The right steps verbatim, then the derivation from where they stop.
    assert c.refinement == ("2 x 12 = 24 cookies.\nThen 24 - 10 = 14 left.\n"
                            "In 3 days the food bank receives 14 * 3 = 42 cookies.\n"
                            "The answer is 42.")


def test_wrong_operation_is_named() -> None:
    c = grade("2 * 12 = 24 cookies are baked. 24 + 10 = 34 are left. 34 * 3 = 102. "
              "The answer is 102.")
    assert c.verdict == "incorrect"
    assert "Step 2 adds 24 and 10 where the problem needs 24 - 10 = 14." in c.feedback
    assert c.refinement.startswith("2 * 12 = 24 cookies are baked.\nEach day 24 - 10 = 14")


def test_a_number_from_nowhere_is_named() -> None:
    c = grade("2 * 12 = 24 cookies. 24 - 7 = 17 are left. 17 * 3 = 51. The answer is 51.")
    assert c.verdict == "incorrect"
    assert "Step 2 uses 7, a number not in the problem or any earlier step." in c.feedback
    assert "Step 1 computes 2 × 12 = 24: right." in c.feedback


def test_a_skipped_step_names_the_step_the_problem_needs_next() -> None:
    c = grade("2 * 12 = 24 cookies. 24 * 3 = 72 cookies. The answer is 72.")
    assert c.verdict == "incorrect"
    assert ("Step 2 computes 24 × 3 = 72, which the problem does not need; the next step it "
            "needs is 24 - 10 = 14.") in c.feedback
    assert c.refinement.splitlines() == [
        "2 * 12 = 24 cookies.", "Each day 24 - 10 = 14 cookies are left.",
        "In 3 days the food bank receives 14 * 3 = 42 cookies.", "The answer is 42."]


def test_stopping_early_and_a_wrong_final_line() -> None:
    c = grade("2 * 12 = 24 baked, and 24 - 10 = 14 left, so the answer is 14.")
    assert c.verdict == "incorrect"
    assert ("The response stops at 14, but the question asks for more; the next step it needs "
            "is 14 × 3 = 42.") in c.feedback
    # The old answer is not kept: the refinement cuts after the last right step.
    assert c.refinement == ("2 * 12 = 24 baked, and 24 - 10 = 14.\n"
                            "In 3 days the food bank receives 14 * 3 = 42 cookies.\n"
                            "The answer is 42.")
    c = grade("2 * 12 = 24. 24 - 10 = 14. 14 * 3 = 42. The answer is 43.")
    assert "The steps reach 42, but the final answer given is 43." in c.feedback
    assert c.verdict == "incorrect"


def test_no_working_and_no_answer() -> None:
    right = grade("The answer is 42.")
    assert right.verdict == "correct"
    assert "re-deriving from the problem: 2 × 12 = 24; 24 - 10 = 14; 14 × 3 = 42" in right.feedback
    wrong = grade("The answer is 40.")
    assert wrong.verdict == "incorrect" and "42" not in wrong.feedback  # not derived there
    assert "the next step the problem needs is 2 × 12 = 24" in wrong.feedback
    none = grade(None)
    assert none.verdict == "incorrect" and "gives no final answer" in none.feedback
    assert none.refinement == BAKERY_STEPS + "\nThe answer is 42."


def test_written_forms_that_are_not_errors() -> None:
    """Units, $, x for times, swapped operands, merged steps, rounding: all judged right."""
    for response in (
        "He bakes 2 batches x 12 = 24 cookies, sells 10: 24 - 10 = 14; 3 x 14 = 42 cookies.",
        "(2 * 12 - 10) * 3 = 14 * 3 = 42. The answer is 42.",
        "2 * 12 = 24\n24 - 10 = 14\n14 * 3 = 42\n#### 42",
        "**2 × 12 = 24** and 24 − 10 = 14, then 14 × 3 = 42 cookies.",
    ):
        c = grade(response)
        assert c.verdict == "correct", (response, c.feedback)


def test_no_derivation_is_a_recorded_failure_not_a_guess() -> None:
    c = teacher.critique("What is x if 2x = 6?", "x = 3", "3", "Divide both sides: x = 3\n#### 3")
    assert (c.feedback, c.verdict, c.refinement) == (None, None, None)
    assert "cannot re-derive" in c.verdict_error and "no worked arithmetic" in c.verdict_error
    slip = derive("240", "He has 8 * 3 = 240 apples.\n#### 240")
    assert slip == "the worked solution's own step 8 × 3 = 240 is wrong (8 × 3 = 24)"
    assert "not at the gold answer 5" in derive("5", "2 + 2 = 4\n#### 5")


def test_problem_numbers_include_words_and_implied_units() -> None:
    found = problem_numbers("Half of the three dozen eggs, 25% off, for 2 hours")
    assert {Fraction(1, 2), Fraction(3), Fraction(12), Fraction(1, 4), Fraction(25),
            Fraction(100), Fraction(60), Fraction(2)} <= found
    assert Fraction(7) not in found  # no week, no seven: 7 would be invented


def test_step_reading() -> None:
    read = {t: [(s.written(), s.slip) for s in find_steps(t)] for t in (
        "2 * 3 = 6 + 4 = 10", "M + 4 + 2 = 8", "2x + 3 = 7", "60 / 3/4 = 80", "7 / 3 = 2.33",
        "5 - 1 - 1/2 = 3 1/2 hours", "10 years * 5% = 50%", "120 – 80 - 15 = 25", "= 700\n3/5 of")}
    assert read == {
        "2 * 3 = 6 + 4 = 10": [("2 × 3 = 6", False), ("6 + 4 = 10", False)],  # a chain
        "M + 4 + 2 = 8": [], "2x + 3 = 7": [],  # algebra is not arithmetic
        "60 / 3/4 = 80": [("60 ÷ 3/4 = 80", False)],  # read as the writer meant it
        "7 / 3 = 2.33": [("7 ÷ 3 = 2.33", False)],  # rounded to the decimals written
        "5 - 1 - 1/2 = 3 1/2 hours": [("5 - 1 - 1/2 = 3.5", False)],  # mixed number
        "10 years * 5% = 50%": [("10 × 5% = 50%", False)],  # units dropped
        "120 – 80 - 15 = 25": [("120 - 80 - 15 = 25", False)],  # en dash
        "= 700\n3/5 of": [],  # a line break is not a mixed number
    }


# -- responses to generated problems, right and with one planted error -----------------------

NUM = r"(?<![\d./])-?\d+(?:\.\d+)?(?![\d./])"


def value(expression: str) -> Fraction | None:
    found = evaluate_expression(expression)
    return None if found is None else found[0]


def chain(exprs: list[str], k: int, *, new: str | None = None, slip: int = 0,
          drop: bool = False) -> list[tuple[str, Fraction]] | None:
    """The steps with step k changed; every later use of its value takes the changed one."""
    steps = [(e, value(e)) for e in exprs[:k]]
    old = value(exprs[k])
    if drop:  # a step skipped: its first operand stands in for its result
        changed = {old: Fraction(re.findall(NUM, exprs[k])[0])}
    else:
        v = value(new or exprs[k])
        if v is None:
            return None
        changed = {old: v + slip}
        steps.append((new or exprs[k], v + slip))
    for e in exprs[k + 1:]:
        e2 = re.sub(NUM, lambda m: show(changed.get(Fraction(m.group(0)), Fraction(m.group(0)))), e)
        v2, v = value(e2), value(e)
        if v2 is None or v2.denominator > 100:
            return None
        changed[v] = v2
        steps.append((e2, v2))
    return steps


def render(steps: list[tuple[str, Fraction]], answer: str, rng: random.Random) -> str:
    lines = [rng.choice(["{} = {}.", "So {} = {}.", "We get {} = {}."]).format(
        e.replace("*", rng.choice(["*", "x", "×"])), show(v)) for e, v in steps]
    return rng.choice([" ", "\n"]).join([*lines, f"The answer is {answer}."])


def responses(problem: dict, rng: random.Random) -> dict[str, str]:
    """Right responses in several writings, and responses with one planted error."""
    d = derive(problem["gold_answer"], problem["gold_rationale"], problem["meta"])
    exprs = [s.expression.replace("×", "*").replace("÷", "/") for s in d.steps]
    steps = [(e, value(e)) for e in exprs]
    answer = problem["gold_answer"]
    swapped = [(re.sub(rf"^({NUM}) ([+*]) ({NUM})$", r"\3 \2 \1", e), v) for e, v in steps]
    out = {
        "right": render(steps, answer, rng),
        "rationale": problem["gold_rationale"].rsplit("####", 1)[0] + f"The answer is {answer}.",
        "swapped": render(swapped, answer, rng),
        "units": " ".join(f"{e} = ${show(v)} in all, then" for e, v in steps) + f" so {answer}.",
    }
    k = rng.randrange(len(exprs))
    if k + 1 < len(exprs) and re.search(rf"(?<![\d./]){show(steps[k][1])}(?![\d./])", exprs[k + 1]):
        merged = re.sub(rf"(?<![\d./]){show(steps[k][1])}(?![\d./])", f"({exprs[k]})",
                        exprs[k + 1], count=1)
        out["merged"] = render([*steps[:k], (merged, value(merged)), *steps[k + 2:]], answer, rng)
    planted = {"arithmetic": chain(exprs, k, slip=rng.choice([-3, -1, 1, 2, 10]))}
    ops = [m.start() for m in re.finditer(r" [-+*/] ", exprs[k])]
    if ops:
        i = ops[-1]
        new_op = rng.choice([o for o in "+-*/" if o != exprs[k][i + 1]])
        planted["operation"] = chain(exprs, k, new=f"{exprs[k][:i]} {new_op} {exprs[k][i + 3:]}")
    used = set(numbers_in(problem["text"])) | d.values()
    invented = rng.choice([n for n in range(7, 97) if Fraction(n) not in used])
    last = re.findall(NUM, exprs[k])[-1]
    at = exprs[k].rfind(last)
    planted["number"] = chain(exprs, k, new=exprs[k][:at] + str(invented) + exprs[k][at + len(last):])
    if len(exprs) > 1:
        planted["skipped"] = chain(exprs, rng.randrange(len(exprs) - 1), drop=True)
        planted["stopped"] = steps[:-1]
    for kind, sol in planted.items():
        if sol:
            out[kind] = render(sol, show(sol[-1][1]), rng)
    out["final"] = render(steps, show(steps[-1][1] + 1), rng)
    return out


RIGHT = {"right", "rationale", "swapped", "units", "merged"}


def derived_only(prompt: str, response: str, feedback: str) -> list[Fraction]:
    """Numbers of the feedback that are neither in the problem or response nor derived in it."""
    allowed = problem_numbers(prompt) | set(numbers_in(response))
    allowed |= {s.stated for s in find_steps(feedback)} | {s.value for s in find_steps(feedback)}
    text = re.sub(r"Step \d+", "", feedback)
    return [n for n in numbers_in(text) if n not in allowed]


def test_verdicts_agree_with_gold_on_generated_problems() -> None:
    """200 problems × up to 11 responses (all 9 templates): verdict vs gold-answer agreement.

    Measured (seed 11): 2,070 of 2,074 agree. Every right writing is judged correct and every
    response with a wrong final answer incorrect (by construction: the verdict needs the
    derivation's answer). The 4 others are planted errors whose final answer stays right by
    accident ("5 * 10 = 47. 47 - 47 = 0." for a change of 0): the verifier is rightly stricter
    than the key there. The 97% floor leaves room for such accidents in other seeds while the
    two exact classes below catch any regression.
    """
    rng = random.Random(0)
    agree, total, kinds = 0, 0, Counter()
    for p in generate_problems(200, seed=11):
        for kind, response in responses(p, rng).items():
            c = teacher.critique(p["text"], response, p["gold_answer"], p["gold_rationale"],
                                 p["meta"])
            gold_ok = answers_match(extract_answer(response), p["gold_answer"])
            kinds[kind] += 1
            total += 1
            agree += (c.verdict == "correct") == gold_ok
            if kind in RIGHT:
                assert c.verdict == "correct", (response, c.feedback)
            if not gold_ok:
                assert c.verdict == "incorrect", (response, c.feedback)
            assert parse_verdict(c.feedback) == (c.verdict, None)
            # The refinement reaches the answer, and the feedback states nothing underived.
            assert answers_match(extract_answer(c.refinement), p["gold_answer"]), c.refinement
            assert not derived_only(p["text"], response, c.feedback), (response, c.feedback)
    assert min(kinds.values()) >= 60 and len(kinds) == 11, kinds
    print(f"agreement {agree} / {total}", dict(kinds))
    assert agree / total >= 0.97, (agree, total)


def test_planted_errors_are_named_by_kind() -> None:
    rng = random.Random(1)
    expected = {"arithmetic": ", but ", "number": "a number not in the problem",
                "stopped": "stops at", "final": "but the final answer given is"}
    for p in generate_problems(45, seed=4):
        for kind, response in responses(p, rng).items():
            if kind in expected and not answers_match(extract_answer(response), p["gold_answer"]):
                c = teacher.critique(p["text"], response, p["gold_answer"], p["gold_rationale"],
                                     p["meta"])
                assert expected[kind] in c.feedback, (kind, response, c.feedback)


# -- real GSM8K and SVAMP items --------------------------------------------------------------


def gsm8k_items(n: int) -> list[dict]:
    return load_benchmark_items(shared_data("gsm8k", "test.jsonl"), "gsm8k")[:n]


def test_gsm8k_annotations_check_real_rationales() -> None:
    """The first 500 GSM8K test items: each clean gold rationale as a response is judged right;
    the same with one written step's result changed (its final line still right) is judged
    wrong. Measured on these 500: 471 have a derivation (94%), 471 of 471 rationales right,
    457 of 467 slips caught (98%); the 10 missed sit in prose the step reader does not take
    for arithmetic ("2 teams * 1 coach per team = 3", "$350 000 x 12/100 = $42001")."""
    rng = random.Random(2)
    derived = right = caught = slips = 0
    items = gsm8k_items(500)
    for it in items:
        meta, gold = it["meta"], it["gold_answer"]
        c = teacher.critique(it["text"], it["gold_rationale"], gold, it["gold_rationale"], meta)
        if c.verdict is None:
            continue
        derived += 1
        right += c.verdict == "correct"
        assert answers_match(extract_answer(c.refinement), gold)
        text = (meta or {}).get("annotated_rationale", "")
        # A written step "9 * 2 = $<<9*2=18>>18" (a bare "<<3*4=12>>12 apples" is prose).
        annotated = list(re.finditer(r"=\s*\$?<<[^<>=]*=([^<>]*)>>(\d+)\b", text))
        if annotated:
            m = rng.choice(annotated)
            wrong = text[: m.start(2)] + str(int(m.group(2)) + rng.choice([1, 2, 5])) + text[m.end(2):]
            slipped = teacher.critique(it["text"], strip_calculator_annotations(wrong), gold,
                                       it["gold_rationale"], meta)
            slips += 1
            caught += slipped.verdict == "incorrect"
    assert derived >= 0.9 * len(items)
    assert right >= 0.99 * derived and caught >= 0.95 * slips, (derived, right, slips, caught)


def test_gsm8k_feedback_on_a_wrong_step() -> None:
    janet = gsm8k_items(1)[0]  # 16 eggs, eats 3, bakes with 4, sells the rest at $2
    assert janet["gold_answer"] == "18" and "annotated_rationale" in janet["meta"]
    c = teacher.critique(janet["text"], "She has 16 - 3 - 4 = 8 eggs left. 8 * 2 = 16. "
                         "The answer is 16.", "18", janet["gold_rationale"], janet["meta"])
    assert c.feedback == ("Step 1 computes 16 - 3 - 4 = 8, but 16 - 3 - 4 = 9.\n"
                          "Verdict: incorrect")
    assert c.refinement.startswith("Janet sells 16 - 3 - 4 = 9 duck eggs a day.\n")
    assert c.refinement.endswith("The answer is 18.") and "<<" not in c.refinement


def test_svamp_equation_checks_the_operation() -> None:
    items = load_benchmark_items(shared_data("svamp", "SVAMP.json"), "svamp")
    rng = random.Random(3)
    checked = 0
    for it in items:
        d = derive(it["gold_answer"], None, it["meta"])
        if isinstance(d, str):
            continue
        right = " ".join(line.text for line in d.lines) + f" The answer is {it['gold_answer']}."
        c = teacher.critique(it["text"], right, it["gold_answer"], None, it["meta"])
        assert c.verdict == "correct", (it["item_id"], right, c.feedback)
        last = d.steps[-1].operations[-1]
        op = rng.choice([o for o in "+-*/" if o != last.op])
        wrong = value(f"{show(last.left)} {op} {show(last.right)}")
        if wrong is None or answers_match(show(wrong), it["gold_answer"]):
            continue
        lines = [line.text for line in d.lines[:-1]]
        response = " ".join([*lines, f"{show(last.left)} {op} {show(last.right)} = {show(wrong)}.",
                             f"The answer is {show(wrong)}."])
        c = teacher.critique(it["text"], response, it["gold_answer"], None, it["meta"])
        assert c.verdict == "incorrect" and "where the problem needs" in c.feedback, c.feedback
        assert answers_match(extract_answer(c.refinement), it["gold_answer"])
        checked += 1
    assert checked >= 900  # of SVAMP's 1,000 (2 have no usable Equation)


# -- wiring: spec lookup and `collect --teacher verifying` -----------------------------------


def test_offline_teacher_lookup() -> None:
    from generation.backends import load_backend

    assert is_offline_teacher(" verifying ") and is_offline_teacher("reference")
    assert not is_offline_teacher("openai:gpt-4o")
    assert load_teacher("verifying").version == VerifyingTeacher.version
    assert load_teacher("hf:x") is None
    with pytest.raises(GenerationError, match="'verifying' is a grader"):
        load_backend("verifying")


def test_collect_with_the_verifying_teacher(cli, db, tmp_path) -> None:
    problems = generate_problems(6, seed=5)
    cli("prompts", "generate", "--n", "6", "--seed", "5", "--db", db)
    rows = []
    for i, p in enumerate(problems):
        d = derive(p["gold_answer"], p["gold_rationale"], p["meta"])
        first = d.steps[0]
        stated = show(first.value + (1 if i % 2 else 0))  # odd items: a slip in step 1
        rows.append({"prompt": p["text"], "kind": "self",
                     "response": f"{first.expression} = {stated}. The answer is {stated}."})
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cli("records", "import", str(tmp_path / "r.jsonl"), "--db", db)
    out = cli("collect", "--db", db, "--teacher", "verifying").output
    assert "records" in out
    with Store.open_readonly(db) as store:
        got = store.query_dicts(
            "SELECT r.verdict, r.feedback, r.refinement, r.teacher, r.templates, p.gold_answer "
            "FROM records r JOIN prompts p USING (prompt_id) WHERE r.kind = 'meta'")
    assert len(got) == 6
    assert {r["teacher"] for r in got} == {"verifying"}
    assert {json.loads(r["templates"])["teacher"] for r in got} == {VerifyingTeacher.version}
    assert sum(r["verdict"] == "incorrect" for r in got) >= 3  # the slips, and early stops
    for r in got:
        assert answers_match(extract_answer(r["refinement"]), r["gold_answer"])
        assert r["feedback"].endswith(f"Verdict: {r['verdict']}")
    # Deterministic: a second collection writes the same records, so nothing new.
    cli("collect", "--db", db, "--teacher", "verifying")
    with Store.open_readonly(db) as store:
        assert store.query("SELECT count(*) FROM records WHERE kind = 'meta'")[0][0] == 6


def test_gsm8k_import_keeps_what_the_teacher_needs(cli, db) -> None:
    path = shared_data("gsm8k", "test.jsonl")
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert canonical_answer(first["answer"].rsplit("####", 1)[1]) == "18"
    item = gsm8k_items(1)[0]
    assert item["meta"]["annotated_rationale"] == first["answer"].strip()
    assert "<<" not in item["gold_rationale"]  # the rationale itself stays clean
