"""A/B tests while they run: the variant each email of a step is, and, for a step with
``pick_winner``, the moment the test stops splitting and everyone later gets the winner.

The test is looked at once: the first time its threshold (``after_sent``, or ``after``) is
found reached, its verdict is taken and stored (``tx.answers.set_winner``), winner or not, so
every worker and every restart keeps it. Looking again and again until p < 0.05 ("peeking")
would name a false winner far more often than one time in twenty. Until the threshold each
worker checks it at most once a minute, with one aggregate query.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from nurture.abtest import Arm, Verdict, assign, judge
from nurture.db.answers import StepTally
from nurture.db.store import Tx
from nurture.sequences import Sequence, Step
from nurture.vocabulary import MessageKind

__all__ = ["Experiments", "arms_of", "MIN_SENT"]

log = logging.getLogger(__name__)

MIN_SENT = 100  # each variant's emails sent before a verdict, unless configured
RECHECK = timedelta(minutes=1)


def arms_of(step: Step, tallies: list[StepTally]) -> list[Arm]:
    """The step's variants in the file's order (the first is the control), with their counts."""
    by_variant = {t.variant: t for t in tallies if t.step_id == step.id}
    return [
        Arm(v.id, by_variant[v.id].sent, by_variant[v.id].yes)
        if v.id in by_variant
        else Arm(v.id, 0, 0)
        for v in step.variants
    ]


class Experiments:
    def __init__(self, *, min_sent: int = MIN_SENT, recheck: timedelta = RECHECK) -> None:
        self.min_sent = min_sent
        self.recheck = recheck
        # (sequence, step) -> (the winner or None, when looked, whether the look was taken)
        self._winners: dict[tuple[str, str], tuple[str | None, datetime, bool]] = {}

    def min_sent_for(self, step: Step) -> int:
        rule = step.pick_winner
        return rule.min_sent if rule is not None and rule.min_sent else self.min_sent

    def verdict(self, step: Step, tallies: list[StepTally]) -> Verdict:
        return judge(arms_of(step, tallies), min_sent=self.min_sent_for(step))

    def variant_for(
        self,
        tx: Tx,
        sequence: Sequence,
        step: Step,
        *,
        enrollment_id: int,
        visit: int,
        kind: MessageKind,
        now: datetime,
    ) -> str | None:
        """The variant of one email of ``step``: a reminder is the variant of its step's
        email; a step's email is the hash's pick, or the winner once there is one."""
        if not step.variants:
            return None
        if not kind.is_step:
            same = tx.answers.variant_of(enrollment_id, visit)
            if step.variant(same) is not None:
                return same
        picked = assign(step, enrollment_id, winner=self.winner(tx, sequence, step, now=now))
        return picked.id if picked else None

    def winner(self, tx: Tx, sequence: Sequence, step: Step, *, now: datetime) -> str | None:
        """The variant everyone now gets, or None while the test still splits."""
        if step.pick_winner is None:
            return None
        key = (sequence.id, step.id)
        cached = self._winners.get(key)
        if cached is not None and (cached[2] or now - cached[1] < self.recheck):
            return cached[0]
        stored = tx.answers.winner(sequence.id, step.id)
        if stored is None:
            stored = self._decide(tx, sequence, step, now=now)
        found = stored.get("variant") if stored else None
        if step.variant(found) is None:
            found = None  # no winner at the look (or one the file no longer has): split on
        self._winners[key] = (found, now, stored is not None)
        return found

    def _decide(
        self, tx: Tx, sequence: Sequence, step: Step, *, now: datetime
    ) -> dict[str, Any] | None:
        """The one look, once the threshold is reached: the stored verdict; None before."""
        rule = step.pick_winner
        assert rule is not None
        tallies = tx.answers.tallies(sequence.id, step.id)
        sent = sum(t.sent for t in tallies)
        if rule.after_sent is not None and sent < rule.after_sent:
            return None
        if rule.after is not None:
            first = tx.answers.first_sent(sequence.id, step.id)
            if first is None or now - first < rule.after:
                return None
        verdict = self.verdict(step, tallies)
        why = f"{verdict.note}; {sent} sent"
        if tx.answers.set_winner(sequence.id, step.id, verdict.winner, why=why, now=now):
            then = (
                f"everyone from now on gets variant {verdict.winner}"
                if verdict.winner
                else "the variants go on being split"
            )
            log.info(
                "%s/%s: the A/B test's one look: %s; %s",
                sequence.id,
                step.id,
                why,
                then,
                extra={"action": "ab_verdict", "sequence": sequence.id, "step": step.id},
            )
        return tx.answers.winner(sequence.id, step.id)  # ours, or another worker's first
