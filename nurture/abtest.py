"""A/B tests: which variant a person gets, and the verdict on the variants' yes rates.

Pure functions. The assignment is a hash of the enrollment and the step, so the same person
always gets the same variant at the same step, on any worker, honouring the weights. The
verdict compares each variant with the first (the control): the two-sided p-value of a
two-proportion z-test, or of Fisher's exact test when an expected count is under 5 (where
the normal approximation is poor), and the lift of its yes rate over the control's. A
variant is the ``winner`` only when every variant has its minimum sample and it beats
every other variant with p < ``alpha``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

from nurture.sequences import Step, Variant

__all__ = ["assign", "Arm", "ArmVerdict", "Verdict", "judge", "two_proportions", "fisher_exact"]


def assign(step: Step, enrollment_id: int, *, winner: str | None = None) -> Variant | None:
    """The variant of ``step`` for one enrollment; the winner once one was picked."""
    if not step.variants:
        return None
    if winner is not None and (found := step.variant(winner)) is not None:
        return found
    total = sum(v.weight for v in step.variants)
    digest = hashlib.sha256(f"{enrollment_id}/{step.id}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") % total
    for variant in step.variants:
        if point < variant.weight:
            return variant
        point -= variant.weight
    return step.variants[-1]  # not reached: the weights add up to total


@dataclass(frozen=True)
class Arm:
    id: str
    sent: int
    yes: int

    @property
    def rate(self) -> float | None:
        return self.yes / self.sent if self.sent else None


@dataclass(frozen=True)
class ArmVerdict:
    id: str
    sent: int
    yes: int
    yes_rate: float | None
    p_value: float | None  # against the first variant; None for the first itself
    lift: float | None  # (rate - control rate) / control rate
    winner: bool


@dataclass(frozen=True)
class Verdict:
    arms: tuple[ArmVerdict, ...]
    winner: str | None
    note: str  # in words: the winner, or why there is none yet


def _log_choose(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_exact(a: int, b: int, c: int, d: int) -> float:
    """Two-sided p-value of Fisher's exact test on [[a, b], [c, d]]: the sum of the
    probabilities of every table with the same margins no more likely than this one."""
    row1, col1, n = a + b, a + c, a + b + c + d
    lo, hi = max(0, col1 - (n - row1)), min(row1, col1)

    def log_p(x: int) -> float:
        return _log_choose(row1, x) + _log_choose(n - row1, col1 - x) - _log_choose(n, col1)

    seen = log_p(a)
    total = sum(math.exp(log_p(x)) for x in range(lo, hi + 1) if log_p(x) <= seen + 1e-7)
    return min(1.0, total)


def two_proportions(yes1: int, n1: int, yes2: int, n2: int) -> float:
    """Two-sided p-value that two yes rates differ: Fisher's exact test when an expected
    count is under 5, else the pooled two-proportion z-test."""
    if n1 == 0 or n2 == 0:
        return 1.0
    pooled = (yes1 + yes2) / (n1 + n2)
    expected = (n1 * pooled, n1 * (1 - pooled), n2 * pooled, n2 * (1 - pooled))
    if min(expected) < 5:
        return fisher_exact(yes1, n1 - yes1, yes2, n2 - yes2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    z = (yes1 / n1 - yes2 / n2) / se
    return math.erfc(abs(z) / math.sqrt(2))


def judge(arms: Sequence[Arm], *, min_sent: int, alpha: float = 0.05) -> Verdict:
    """The verdict on an A/B test's arms (the first is the control)."""
    if not arms:
        return Verdict((), None, "no variants")
    control = arms[0]
    best = max(arms, key=lambda a: (a.rate or 0.0, -arms.index(a)))
    enough = all(a.sent >= min_sent for a in arms)
    beats = all(
        two_proportions(best.yes, best.sent, other.yes, other.sent) < alpha
        for other in arms
        if other is not best
    )
    winner = best.id if enough and beats and (best.rate or 0) > 0 else None
    out = []
    for arm in arms:
        p = (
            None
            if arm is control
            else two_proportions(arm.yes, arm.sent, control.yes, control.sent)
        )
        lift = None
        if arm is not control and arm.rate is not None and control.rate:
            lift = (arm.rate - control.rate) / control.rate
        out.append(ArmVerdict(arm.id, arm.sent, arm.yes, arm.rate, p, lift, arm.id == winner))
    if winner is not None:
        note = f"variant {winner} wins (p < {alpha:g} against every other)"
    elif not enough:
        short = ", ".join(f"{a.id} {a.sent}" for a in arms if a.sent < min_sent)
        note = f"no verdict yet: each variant needs {min_sent} sent (so far {short})"
    else:
        note = f"no winner: no variant beats every other with p < {alpha:g}"
    return Verdict(tuple(out), winner, note)
