"""Statistics for comparing evaluations on the same items (pure Python, exact where it can be).

* :func:`wilson_interval` — 95% Wilson score interval of a proportion (accuracy, a critic's
  sensitivity …); stays inside [0, 1] and is honest for small n.
* :func:`paired_counts` — the 2×2 table of two correctness vectors over the same items.
* :func:`mcnemar_exact` — the exact McNemar test: under "A and B are equally accurate" each
  discordant item (right in one, wrong in the other) is a fair coin, so the two-sided p-value
  is the binomial probability of a split at least as uneven as the one seen. Concordant items
  carry no information about the difference and do not enter it.
* :func:`holm` — Holm's step-down adjustment of several p-values (family-wise error control,
  uniformly more powerful than Bonferroni).
* :func:`critic_quality` — how well verdicts separate right answers from wrong ones.

The critic's quality, precisely: the *positive* class is "the judged answer is right" (its
extracted final answer matches gold). **Sensitivity** = P(verdict ``correct`` | answer right):
the share of right answers the critic accepts. **Specificity** = P(verdict ``incorrect`` |
answer wrong): the share of wrong answers it catches. A missing verdict (unparsed feedback, a
failed call) counts in neither; it is reported as ``no_verdict``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (sane at 0, n and small n)."""
    if n <= 0:
        return 0.0, 0.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Exactly 0 at k = 0 and 1 at k = n (float round-off would give 0.9999999999999999), and
    # never excluding the observed proportion.
    low = 0.0 if correct == 0 else min(p, max(0.0, centre - half))
    high = 1.0 if correct == n else max(p, min(1.0, centre + half))
    return low, high


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts.

    ``a_only`` items only A got right, ``b_only`` only B. With n = a_only + b_only and
    k = min(a_only, b_only): p = min(1, 2 · Σ_{i ≤ k} C(n, i) / 2ⁿ); 1 when n = 0.
    Computed with exact integers, so it is right for any n.
    """
    if a_only < 0 or b_only < 0:
        raise ValueError("counts must be >= 0")
    n = a_only + b_only
    if n == 0:
        return 1.0
    k = min(a_only, b_only)
    tail = Fraction(sum(math.comb(n, i) for i in range(k + 1)), 2**n)
    return float(min(Fraction(1), 2 * tail))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order (reject where adjusted p < alpha)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))  # monotone step-down
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class PairedCounts:
    """The 2×2 table of two evaluations over the same items."""

    both: int  # right in A and in B
    a_only: int  # right in A, wrong in B
    b_only: int  # wrong in A, right in B
    neither: int

    @property
    def n(self) -> int:
        """Items compared."""
        return self.both + self.a_only + self.b_only + self.neither

    def mcnemar_p(self) -> float:
        """Exact two-sided McNemar p-value of this table."""
        return mcnemar_exact(self.a_only, self.b_only)


def paired_counts(a: Sequence[bool], b: Sequence[bool]) -> PairedCounts:
    """Count agreement and disagreement of two correctness vectors, item by item."""
    if len(a) != len(b):
        raise ValueError("the two vectors must cover the same items")
    both = sum(x and y for x, y in zip(a, b, strict=True))
    a_only = sum(x and not y for x, y in zip(a, b, strict=True))
    b_only = sum(y and not x for x, y in zip(a, b, strict=True))
    return PairedCounts(both, a_only, b_only, len(a) - both - a_only - b_only)


@dataclass(frozen=True)
class CriticQuality:
    """Verdicts against gold: the 2×2 counts, sensitivity and specificity with intervals."""

    accepted_right: int  # verdict correct, answer right (true positive)
    rejected_right: int  # verdict incorrect, answer right (false negative)
    rejected_wrong: int  # verdict incorrect, answer wrong (true negative)
    accepted_wrong: int  # verdict correct, answer wrong (false positive)
    no_verdict: int

    @property
    def sensitivity(self) -> float | None:
        """P(verdict correct | answer right); None without right answers."""
        right = self.accepted_right + self.rejected_right
        return self.accepted_right / right if right else None

    @property
    def specificity(self) -> float | None:
        """P(verdict incorrect | answer wrong); None without wrong answers."""
        wrong = self.rejected_wrong + self.accepted_wrong
        return self.rejected_wrong / wrong if wrong else None

    def as_dict(self) -> dict[str, Any]:
        """Plain data: the counts, both rates and their 95% Wilson intervals."""
        right = self.accepted_right + self.rejected_right
        wrong = self.rejected_wrong + self.accepted_wrong
        return {**asdict(self), "sensitivity": self.sensitivity, "specificity": self.specificity,
                "sensitivity_ci": wilson_interval(self.accepted_right, right),
                "specificity_ci": wilson_interval(self.rejected_wrong, wrong)}


def critic_quality(verdicts: Sequence[str | None], right: Sequence[bool]) -> CriticQuality:
    """Score verdicts (``correct``/``incorrect``/None) on answers whose rightness is known."""
    if len(verdicts) != len(right):
        raise ValueError("one verdict per judged answer")
    counts = {"ar": 0, "rr": 0, "rw": 0, "aw": 0, "none": 0}
    for v, ok in zip(verdicts, right, strict=True):
        if v not in ("correct", "incorrect"):
            counts["none"] += 1
        elif ok:
            counts["ar" if v == "correct" else "rr"] += 1
        else:
            counts["aw" if v == "correct" else "rw"] += 1
    return CriticQuality(counts["ar"], counts["rr"], counts["rw"], counts["aw"], counts["none"])
