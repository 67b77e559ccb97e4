"""Paired statistics: hand-counted values and properties over generated inputs."""

from __future__ import annotations

import math
import random

import pytest

from selfevo import evaluate
from selfevo.stats import (
    critic_quality,
    holm,
    mcnemar_exact,
    paired_counts,
    wilson_interval,
)


@pytest.mark.parametrize("a_only, b_only, p", [
    (0, 5, 2 / 32),  # n=5, k=0: 2 · C(5,0) / 2^5
    (1, 9, 2 * (1 + 10) / 1024),  # n=10, k=1: 2 · (1 + 10) / 2^10
    (8, 2, 2 * (1 + 10 + 45) / 1024),  # n=10, k=2
    (3, 3, 1.0),  # a balanced split is no evidence
    (0, 1, 1.0),  # n=1: 2 · 1/2, capped at 1
    (0, 0, 1.0),  # no discordant items: nothing to test
    (0, 20, 2 / 2**20),
])
def test_mcnemar_hand_counted(a_only, b_only, p):
    assert mcnemar_exact(a_only, b_only) == pytest.approx(p, rel=1e-12)


def two_sided_by_enumeration(a_only: int, b_only: int) -> float:
    """P(|X - n/2| >= |a_only - n/2|) for X ~ Binomial(n, 1/2), summed outcome by outcome."""
    n = a_only + b_only
    far = abs(a_only - n / 2)
    return min(1.0, sum(math.comb(n, i) for i in range(n + 1) if abs(i - n / 2) >= far) / 2**n)


def test_mcnemar_properties_on_random_tables():
    rng = random.Random(0)
    for _ in range(500):
        b, c = rng.randrange(0, 60), rng.randrange(0, 60)
        p = mcnemar_exact(b, c)
        assert 0 < p <= 1
        assert p == mcnemar_exact(c, b)  # symmetric in A and B
        assert p == pytest.approx(two_sided_by_enumeration(b, c), rel=1e-9)
        if b == c:
            assert p == 1.0
        if b + 1 < c:  # a more uneven split of the same n is stronger evidence
            assert mcnemar_exact(b, c) <= mcnemar_exact(b + 1, c - 1)
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


def test_holm_hand_counted_and_properties():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → max(0.06, 0.04)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.2]) == [0.2] and holm([]) == []
    assert holm([0.6, 0.9]) == [1.0, 1.0]  # capped
    rng = random.Random(1)
    for _ in range(200):
        ps = [rng.random() for _ in range(rng.randrange(1, 8))]
        adj = holm(ps)
        assert all(p <= q <= 1 for p, q in zip(ps, adj, strict=True))
        assert all(adj[i] <= adj[j] for i in range(len(ps)) for j in range(len(ps))
                   if ps[i] <= ps[j])  # the order of the raw p-values is kept
        assert min(adj) == pytest.approx(min(1.0, len(ps) * min(ps)))


def test_wilson_has_one_implementation_and_sane_bounds():
    assert evaluate.wilson_interval is wilson_interval
    lo, hi = wilson_interval(4, 6)
    assert lo == pytest.approx(0.3000, abs=1e-3) and hi == pytest.approx(0.9032, abs=1e-3)
    for n in range(1, 40):
        for k in range(n + 1):
            lo, hi = wilson_interval(k, n)
            assert 0 <= lo <= k / n <= hi <= 1


def test_paired_counts_hand_counted():
    a = [True, True, False, False, True, False]
    b = [True, False, True, False, True, True]
    # item 0: both · 1: A only · 2: B only · 3: neither · 4: both · 5: B only
    t = paired_counts(a, b)
    assert (t.both, t.a_only, t.b_only, t.neither, t.n) == (2, 1, 2, 1, 6)
    assert t.mcnemar_p() == mcnemar_exact(1, 2) == 1.0
    with pytest.raises(ValueError):
        paired_counts([True], [True, False])


def test_critic_quality_hand_counted():
    verdicts = ["correct", "correct", "incorrect", "incorrect", "correct", None, "incorrect"]
    right = [True, True, True, False, False, True, False]
    # right answers: accepted 2 (0, 1), rejected 1 (2), 1 without a verdict (5)
    # wrong answers: caught 2 (3, 6), accepted 1 (4)
    q = critic_quality(verdicts, right)
    assert (q.accepted_right, q.rejected_right, q.rejected_wrong, q.accepted_wrong,
            q.no_verdict) == (2, 1, 2, 1, 1)
    assert q.sensitivity == pytest.approx(2 / 3) and q.specificity == pytest.approx(2 / 3)
    d = q.as_dict()
    assert d["sensitivity_ci"] == wilson_interval(2, 3)
    assert critic_quality(["correct"], [True]).specificity is None  # no wrong answer to catch
