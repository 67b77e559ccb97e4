"""Synthetic grade-school word problems: the embedded default data of selfevo.

Project-written templates (no benchmark text) so the demo and the tests need no external
data. Every problem has an exact gold answer (computed with :class:`fractions.Fraction`,
never floats) and a GSM8K-like rationale: one short step per line, each step showing its
arithmetic as ``a op b = c``, the last line ``#### <answer>``. Calculator annotations
(``<<…>>``) are not written, matching how the gsm8k preset stores rationales.

Generation is deterministic: problem ``i`` depends only on ``(seed, i)``, so
``generate_problems(10, seed)`` is a prefix of ``generate_problems(1000, seed)``. The
numeric inputs of each problem are kept in ``meta["params"]`` so a test can recompute the
answer independently.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from schemas.numbers import format_number, terminates

Number = int | Fraction

NAMES = [
    "Ava", "Ben", "Chloe", "Diego", "Emma", "Farid", "Grace", "Hiro", "Isla", "Jamal",
    "Kira", "Liam", "Maya", "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sami", "Tara",
    "Umar", "Vera", "Wes", "Ximena", "Yusuf", "Zoe",
]
_SHE = {"Ava", "Chloe", "Emma", "Grace", "Isla", "Kira", "Maya", "Olga", "Priya", "Rosa", "Tara",
        "Vera", "Ximena", "Zoe"}
PRONOUN = {n: "she" if n in _SHE else "he" for n in NAMES}
SHOP_ITEMS = [
    ("notebook", "notebooks"), ("pencil case", "pencil cases"), ("sandwich", "sandwiches"),
    ("bag of apples", "bags of apples"), ("comic book", "comic books"), ("puzzle", "puzzles"),
    ("water bottle", "water bottles"), ("pair of socks", "pairs of socks"),
]
COUNT_ITEMS = ["stickers", "marbles", "stamps", "seashells", "trading cards", "beads",
               "crayons", "postcards"]
BAKED = ["cookies", "muffins", "bagels", "cupcakes", "rolls", "pretzels"]
CLOTHES = ["jacket", "pair of boots", "backpack", "bicycle helmet", "lamp", "board game"]
ACTIVITIES = ["reading", "practising the piano", "jogging", "drawing", "swimming",
              "studying Spanish"]


def decimal_text(x: Number) -> str:
    """A number as a problem text shows it (canonical: ``18``, ``2.5``, ``-3``; never
    ``18.0``); a value without a finite decimal (``1/3``) is a template bug and refused."""
    if not terminates(Fraction(x)):
        raise ValueError(f"{x} has no finite decimal representation")
    return format_number(x)


def _finite(x: Number, places: int = 2) -> bool:
    """True when ``x`` is a decimal with at most ``places`` digits after the point."""
    return (Fraction(x) * 10**places).denominator == 1


_n = decimal_text


def _money(x: Number) -> str:
    """Dollar amounts in problem texts read like prices: ``6``, ``6.50``."""
    x = Fraction(x)
    return str(x.numerator) if x.denominator == 1 else f"{float(x):.2f}"


@dataclass
class _Draft:
    text: str
    answer: Number
    steps: list[str]
    params: dict[str, Any]


class _Redraw(Exception):
    """The random draw gave an unsuitable problem (negative, non-terminating …); draw again."""


def _person(rng: random.Random, exclude: str | None = None) -> tuple[str, str]:
    name = rng.choice([n for n in NAMES if n != exclude])
    return name, PRONOUN[name]


# -- templates -------------------------------------------------------------------------------
# Each returns a _Draft; params hold every number the answer depends on.


def shopping(rng: random.Random) -> _Draft:
    """Buy some items at a unit price, pay with a bill, get change."""
    name, he = _person(rng)
    one, many = rng.choice(SHOP_ITEMS)
    qty = rng.randint(2, 9)
    price = Fraction(rng.randint(2, 40), 2)  # whole or half dollars
    cost = qty * price
    bill = next(b for b in (10, 20, 50, 100, 200) if b >= cost)
    change = bill - cost
    text = (f"{name} buys {qty} {many} that cost ${_money(price)} each. {he.capitalize()} pays "
            f"with a ${bill} bill. How much change, in dollars, does {he} get back?")
    steps = [
        f"The {many} cost {qty} * {_n(price)} = {_n(cost)} dollars.",
        f"The change is {bill} - {_n(cost)} = {_n(change)} dollars.",
    ]
    return _Draft(text, change, steps, {"qty": qty, "price": _n(price), "bill": bill})


def travel(rng: random.Random) -> _Draft:
    """Two legs of a trip at different speeds; total distance (rate x time)."""
    name, he = _person(rng)
    s1, s2 = rng.randint(3, 14) * 5, rng.randint(3, 14) * 5
    h1, h2 = rng.randint(1, 5), Fraction(rng.randint(1, 8), 2)
    d1, d2 = s1 * h1, s2 * h2
    total = d1 + d2
    text = (f"{name} drives at {s1} miles per hour for {h1} hours, then at {s2} miles per "
            f"hour for {_n(h2)} hours. How many miles does {he} drive in total?")
    steps = [
        f"The first part is {s1} * {h1} = {_n(d1)} miles.",
        f"The second part is {s2} * {_n(h2)} = {_n(d2)} miles.",
        f"In total {he} drives {_n(d1)} + {_n(d2)} = {_n(total)} miles.",
    ]
    return _Draft(text, total, steps, {"s1": s1, "h1": h1, "s2": s2, "h2": _n(h2)})


def sharing(rng: random.Random) -> _Draft:
    """Collect items, get more, share them equally among friends."""
    name, he = _person(rng)
    item = rng.choice(COUNT_ITEMS)
    friends = rng.randint(2, 8)
    each = rng.randint(3, 25)
    total = friends * each
    got = rng.randint(1, total - 1)
    had = total - got
    text = (f"{name} has {had} {item}. {he.capitalize()} gets {got} more from a friend, then "
            f"shares all of them equally among {friends} classmates. How many {item} does "
            f"each classmate get?")
    steps = [
        f"{name} has {had} + {got} = {total} {item}.",
        f"Each classmate gets {total} / {friends} = {each} {item}.",
    ]
    return _Draft(text, each, steps, {"had": had, "got": got, "friends": friends})


def bakery(rng: random.Random) -> _Draft:
    """Multi-step: batches baked per day, some sold per day, leftovers after some days."""
    baked = rng.choice(BAKED)
    batches, per_batch = rng.randint(2, 6), rng.choice([6, 8, 10, 12, 24])
    made = batches * per_batch
    sold = rng.randint(made // 3, made - 1)
    days = rng.randint(2, 7)
    left_per_day = made - sold
    left = left_per_day * days
    text = (f"A bakery bakes {batches} batches of {per_batch} {baked} every day and sells "
            f"{sold} {baked} each day. The rest are given to a food bank. How many {baked} "
            f"does the food bank receive in {days} days?")
    steps = [
        f"Each day the bakery bakes {batches} * {per_batch} = {made} {baked}.",
        f"Each day {made} - {sold} = {left_per_day} {baked} are left.",
        f"In {days} days the food bank receives {left_per_day} * {days} = {left} {baked}.",
    ]
    return _Draft(text, left, steps, {"batches": batches, "per_batch": per_batch,
                                      "sold": sold, "days": days})


def discount(rng: random.Random) -> _Draft:
    """Percentage off a price, possibly for several items."""
    name, he = _person(rng)
    thing = rng.choice(CLOTHES)
    price = rng.randint(4, 60) * 5
    pct = rng.choice([10, 15, 20, 25, 30, 40, 50])
    qty = rng.randint(1, 4)
    off = Fraction(price * pct, 100)
    sale = price - off
    total = sale * qty
    if not _finite(total):
        raise _Redraw
    what = f"a {thing}" if qty == 1 else f"{qty} of them"
    text = (f"A {thing} usually costs ${price}. This week it is {pct}% off. {name} buys "
            f"{what}. How many dollars does {he} pay?")
    steps = [
        f"The discount is {price} * {pct} / 100 = {_n(off)} dollars.",
        f"The sale price is {price} - {_n(off)} = {_n(sale)} dollars.",
    ]
    if qty > 1:
        steps.append(f"For {qty} of them {he} pays {_n(sale)} * {qty} = {_n(total)} dollars.")
    return _Draft(text, total, steps, {"price": price, "pct": pct, "qty": qty})


def fractions(rng: random.Random) -> _Draft:
    """Give away a fraction of a collection, then lose some more."""
    name, he = _person(rng)
    friend, _ = _person(rng, exclude=name)
    item = rng.choice(COUNT_ITEMS)
    num, den = rng.choice([(1, 2), (1, 3), (2, 3), (1, 4), (3, 4), (1, 5), (2, 5), (3, 5)])
    have = den * rng.randint(4, 20)
    given = have * num // den
    kept = have - given
    lost = rng.randint(1, max(1, kept - 1))
    left = kept - lost
    if left < 0:
        raise _Redraw
    text = (f"{name} has {have} {item}. {he.capitalize()} gives {num}/{den} of them to "
            f"{friend} and later loses {lost}. How many {item} does {name} have left?")
    steps = [
        f"{name} gives away {have} * {num} / {den} = {given} {item}.",
        f"{he.capitalize()} keeps {have} - {given} = {kept} {item}.",
        f"After losing some, {he} has {kept} - {lost} = {left} {item} left.",
    ]
    return _Draft(text, left, steps, {"have": have, "num": num, "den": den, "lost": lost})


def ages(rng: random.Random) -> _Draft:
    """Ages: a multiple of someone's age, then a sum some years later."""
    name, _ = _person(rng)
    parent, _ = _person(rng, exclude=name)
    age = rng.randint(3, 15)
    times = rng.randint(2, 5)
    years = rng.randint(2, 12)
    parent_age = age * times
    later = age + years + parent_age + years
    text = (f"{name} is {age} years old. {parent} is {times} times as old as {name}. What "
            f"will the sum of their ages be in {years} years?")
    steps = [
        f"{parent} is {age} * {times} = {parent_age} years old.",
        f"In {years} years {name} will be {age} + {years} = {age + years} years old.",
        f"In {years} years {parent} will be {parent_age} + {years} = {parent_age + years} "
        "years old.",
        f"The sum will be {age + years} + {parent_age + years} = {later} years.",
    ]
    return _Draft(text, later, steps, {"age": age, "times": times, "years": years})


def practice_time(rng: random.Random) -> _Draft:
    """Minutes per day over days and weeks, converted to hours."""
    name, he = _person(rng)
    act = rng.choice(ACTIVITIES)
    minutes = rng.choice([15, 20, 25, 30, 35, 40, 45, 50, 60, 75, 90])
    days = rng.randint(2, 7)
    weeks = rng.randint(1, 6)
    per_week = minutes * days
    total_min = per_week * weeks
    hours = Fraction(total_min, 60)
    if not _finite(hours):
        raise _Redraw
    text = (f"{name} spends {minutes} minutes {act} on each of {days} days every week. How "
            f"many hours does {he} spend {act} in {weeks} weeks?")
    steps = [
        f"Each week {he} spends {minutes} * {days} = {per_week} minutes.",
        f"In {weeks} weeks that is {per_week} * {weeks} = {total_min} minutes.",
        f"That is {total_min} / 60 = {_n(hours)} hours.",
    ]
    return _Draft(text, hours, steps, {"minutes": minutes, "days": days, "weeks": weeks})


def savings(rng: random.Random) -> _Draft:
    """Weekly allowance, weekly spending, how many weeks until a goal."""
    name, he = _person(rng)
    allowance = rng.randint(4, 20)
    spend = rng.randint(1, allowance - 2)
    saved = allowance - spend
    weeks = rng.randint(3, 15)
    start = rng.randint(0, 30)
    goal = start + saved * weeks
    text = (f"{name} already has ${start} saved. {he.capitalize()} gets ${allowance} each "
            f"week and spends ${spend} of it. How many weeks will it take {name} to have "
            f"exactly ${goal}?")
    steps = [
        f"Each week {he} saves {allowance} - {spend} = {saved} dollars.",
        f"{he.capitalize()} still needs {goal} - {start} = {goal - start} dollars.",
        f"That takes {goal - start} / {saved} = {weeks} weeks.",
    ]
    return _Draft(text, weeks, steps, {"start": start, "allowance": allowance,
                                       "spend": spend, "goal": goal})


TEMPLATES: dict[str, Callable[[random.Random], _Draft]] = {
    f.__name__: f
    for f in (shopping, travel, sharing, bakery, discount, fractions, ages, practice_time,
              savings)
}


def generate_problems(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` distinct word problems with exact gold answers and GSM8K-like rationales.

    Each is ``{"text", "gold_answer", "gold_rationale", "meta": {"template", "seed",
    "index", "params"}}``; templates rotate so every template appears once per
    ``len(TEMPLATES)`` problems. Deterministic in ``(n, seed)``.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    names = list(TEMPLATES)
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index in range(n):
        template = names[index % len(names)]
        for attempt in range(1000):
            rng = random.Random(f"selfevo-wordproblems:{seed}:{index}:{attempt}")
            try:
                draft = TEMPLATES[template](rng)
            except _Redraw:
                continue
            if draft.text not in seen:
                break
        else:  # pragma: no cover - the templates have far more than 1000 variants each
            raise RuntimeError(f"template {template} ran out of distinct problems")
        seen.add(draft.text)
        answer = decimal_text(draft.answer)
        out.append({
            "text": draft.text,
            "gold_answer": answer,
            "gold_rationale": "\n".join([*draft.steps, f"#### {answer}"]),
            "meta": {"template": template, "seed": seed, "index": index,
                     "params": draft.params},
        })
    return out
