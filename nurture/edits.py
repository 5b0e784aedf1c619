"""Live edits: when the sequence files change under a running deployment, the people waiting
at a step the files no longer have, and the two ways an operator settles them (``nurture
move``, ``nurture end``)."""

from __future__ import annotations

from collections.abc import Sequence as Seq
from datetime import datetime

from nurture import engine
from nurture.db.store import Tx
from nurture.journey import Journey
from nurture.vocabulary import ExitReason, SubscriberStatus

__all__ = ["stranded", "move", "end", "describe_stranded"]


def stranded(journey: Journey, tx: Tx) -> list[tuple[str, str, int]]:
    """(sequence, step, people) waiting at a step the loaded files do not have."""
    return [
        (seq, step, n)
        for seq, step, n in tx.reports.waiting_by_step()
        if journey.catalog.locate(seq, step) is None
    ]


def move(
    journey: Journey, tx: Tx, sequence_id: str, from_step: str, to_step: str, *, now: datetime
) -> int:
    """Everyone waiting at ``from_step`` goes to ``to_step`` (a new visit; their mail not
    sent yet for the old step is cancelled). Returns how many moved."""
    sequence = journey.catalog.get(sequence_id)
    if sequence is None or not sequence.has_step(to_step):
        raise ValueError(f"{sequence_id} has no step {to_step!r} in the loaded files")
    rows = tx.enrollments.at_step(sequence_id, from_step)
    moved = []
    for row in rows:
        confirmed = row.subscriber_status is SubscriberStatus.confirmed
        state = engine.move_to(row.state, sequence, to_step, now=now, confirmed=confirmed)
        moved.append((row.id, state))
        tx.outbox.cancel_open(enrollment_id=row.id, why=f"moved from step {from_step}")
    tx.enrollments.save(moved, now=now)
    return len(moved)


def end(journey: Journey, tx: Tx, sequence_id: str, step_id: str, *, now: datetime) -> int:
    """Everyone waiting at ``step_id`` leaves the sequence (ExitReason.ended)."""
    ended = 0
    for row in tx.enrollments.at_step(sequence_id, step_id):
        ended += journey.stop(tx, row.id, ExitReason.ended, now=now)
    return ended


def describe_stranded(stranded: Seq[tuple[str, str, int]]) -> list[str]:
    """What to tell an operator about people waiting at steps the files no longer have, with
    the two commands that settle it."""
    return [
        f"{n} {'person waits' if n == 1 else 'people wait'} at {seq}/{step}, which the "
        f"loaded sequences do not have: `nurture move {seq} --from {step} --to STEP` or "
        f"`nurture end {seq} --step {step}`"
        for seq, step, n in stranded
    ]
