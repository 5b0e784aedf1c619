"""The journey: applying the engine's decisions, in one place.

Every change to where a person stands goes through here: load the enrollment (locked), find
its sequence and step among the loaded files (``Catalog.locate``), ask the engine, store the
new state and what it implies (the messages to send, a confirmation). The engine decides and
does no I/O; the store stores and decides nothing; the dispatcher, tracking, the inbox and
subscriptions call these methods inside their own transaction.

Locks are taken in one order everywhere: a person's enrollments, then the person, then their
messages, so that two of these on the same person wait for each other instead of deadlocking.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence as Seq
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta

from nurture import engine
from nurture.conditions import Conditions, subscriber_context
from nurture.db.enrollments import DueRow, EnrollmentRow
from nurture.db.messages import MessageRow, NewMessage
from nurture.db.store import Tx
from nurture.db.subscribers import SubscriberRow
from nurture.engine import ConfirmSubscriber, Decision, Remember, SendEmail, Skipped
from nurture.experiments import Experiments
from nurture.sendtimes import SendTimes
from nurture.sequences import Catalog, Sequence, Step
from nurture.vocabulary import (
    EnrollmentStatus,
    EventKind,
    ExitReason,
    Phase,
    SubscriberStatus,
    YesBy,
)

__all__ = ["Journey", "Planned", "Delivery", "ORPHAN_RETRY", "YES_PENDING_MARGIN"]

log = logging.getLogger(__name__)

# A step held for a yes in waiting (a click not judged yet) is looked at again this long
# after the click's judgement is due.
YES_PENDING_MARGIN = timedelta(seconds=1)
# The event outcome that marks an enrollment's visit as waiting for its own confirmation.
CONSENT_ASKED = "consent_asked"

# An enrollment or message whose sequence or step the loaded files lack (renamed or removed
# under a running deployment) is looked at again this much later, never failed.
ORPHAN_RETRY = timedelta(hours=1)

# (message id, the due enrollment, what to send, its A/B variant)
Planned = tuple[int, DueRow, SendEmail, str | None]


@dataclass(frozen=True)
class Delivery:
    """A step's own email accepted by the relay: its step's clock starts."""

    enrollment_id: int
    step_id: str
    visit: int
    clock: timedelta  # engine.delivery_clock(step): from delivery to the first thing due


class Journey:
    def __init__(
        self,
        catalog: Catalog,
        *,
        orphan_retry: timedelta = ORPHAN_RETRY,
        conditions: Conditions | None = None,
        experiments: Experiments | None = None,
        send_times: SendTimes | None = None,
    ) -> None:
        self.catalog = catalog
        self.orphan_retry = orphan_retry
        self.conditions = conditions or Conditions()
        self.experiments = experiments or Experiments()
        self.send_times = send_times or SendTimes()

    # -- entering ------------------------------------------------------------------------

    def start(
        self,
        tx: Tx,
        subscriber: SubscriberRow,
        sequence: Sequence,
        *,
        now: datetime,
        ask_consent: bool = False,
    ) -> int | None:
        """Enroll a person at the first step; None if they are in that sequence already.
        With ``ask_consent`` (a stranger's sign-up named someone who is known already) the
        sequence's confirmation step is sent even to a confirmed person, who goes on only by
        its yes (the caller makes sure the sequence has one)."""
        confirmed = subscriber.confirmed and not ask_consent
        state = engine.start(sequence, now=now, confirmed=confirmed)
        enrollment_id = tx.enrollments.create(subscriber.id, sequence.id, state, now=now)
        if enrollment_id is not None and ask_consent:
            self._ask_consent(tx, subscriber.id, enrollment_id, sequence, state.visit, now=now)
        return enrollment_id

    @staticmethod
    def _ask_consent(
        tx: Tx,
        subscriber_id: int,
        enrollment_id: int,
        sequence: Sequence,
        visit: int,
        *,
        now: datetime,
    ) -> None:
        """Mark this visit of the enrollment as waiting for its own confirmation (read by
        ``_consent_asked``; rare, so an event row rather than a column)."""
        tx.events.add(
            subscriber_id=subscriber_id,
            enrollment_id=enrollment_id,
            kind=EventKind.entered,
            outcome=CONSENT_ASKED,
            detail={"sequence": sequence.id, "visit": visit, "how": "form"},
            now=now,
        )

    @staticmethod
    def _consent_asked(tx: Tx, row: EnrollmentRow) -> bool:
        """Whether this visit of a confirmed person's enrollment waits for its own
        confirmation (``start(ask_consent=True)``)."""
        return any(
            e.enrollment_id == row.id
            and e.outcome == CONSENT_ASKED
            and e.detail.get("visit") == row.state.visit
            for e in tx.events.of_subscriber(row.subscriber_id, kind=EventKind.entered)
        )

    def restart(
        self, tx: Tx, enrollment: EnrollmentRow, sequence: Sequence, *, now: datetime
    ) -> None:
        """Someone taken back by an operator starts the sequence over, confirmation first."""
        tx.enrollments.save(
            [(enrollment.id, engine.restart(enrollment.state, sequence, now=now))], now=now
        )

    def reenter(
        self,
        tx: Tx,
        enrollment: EnrollmentRow,
        sequence: Sequence,
        subscriber: SubscriberRow,
        *,
        now: datetime,
        ask_consent: bool = False,
    ) -> None:
        """A person whose enrollment finished enters the sequence again (its ``reenter:``
        allows it): from the first step, as a new visit, with nothing answered before; a
        confirmed person skips the confirmation, unless ``ask_consent`` (as in ``start``)."""
        confirmed = subscriber.confirmed and not ask_consent
        fresh = engine.start(sequence, now=now, confirmed=confirmed)
        state = replace(fresh, visit=enrollment.state.visit + 1)
        tx.enrollments.save([(enrollment.id, state)], now=now)
        if ask_consent:
            self._ask_consent(tx, subscriber.id, enrollment.id, sequence, state.visit, now=now)

    # -- due work ------------------------------------------------------------------------

    def plan(self, tx: Tx, due: Seq[DueRow], *, now: datetime, worker: str) -> list[Planned]:
        """Decide for claimed due enrollments and record the messages decided on, claimed for
        sending by ``worker``."""
        decisions: list[tuple[EnrollmentRow, Decision]] = []
        # A click on the ask of the step a person waits at, recorded and not judged yet, is a
        # yes in waiting: nothing of that step falls due (no reminder, no timeout, no softer
        # ask) until it is judged, so a yes counts as of the moment it was made.
        waiting = [i.enrollment.id for i in due if i.enrollment.state.phase is Phase.wait]
        pending = tx.events.pending_yeses(waiting) if waiting else {}
        for item in due:
            row = item.enrollment
            judged_at = pending.get((row.id, row.state.step_id, row.state.visit))
            if judged_at is not None and row.state.phase is Phase.wait:
                until = max(judged_at, now) + YES_PENDING_MARGIN
                decisions.append(
                    (row, engine.postpone(row.state, until=until, outcome="held:yes_pending"))
                )
                continue
            found = self.catalog.locate(row.sequence_id, row.state.step_id)
            if found is None:
                log.error(
                    "enrollment %s is in %s/%s, which the loaded sequences do not have; "
                    "retrying in %s",
                    row.id,
                    row.sequence_id,
                    row.state.step_id,
                    self.orphan_retry,
                    extra={"action": "enrollment_orphaned", "enrollment_id": row.id},
                )
                until = now + self.orphan_retry
                decisions.append((row, engine.postpone(row.state, until=until, outcome="orphaned")))
                continue
            confirmed = row.subscriber_status is SubscriberStatus.confirmed
            if confirmed and found[1].confirms and self._consent_asked(tx, row):
                confirmed = False  # a stranger named them for this sequence: its own yes first
            admits = self._admits(item)
            reported: dict[str, list[int]] = {}
            if found[1].events and row.state.phase is Phase.send:
                # The outside events reported since enrolling that no step of this enrollment
                # was answered by: one event answers one step.
                reported = tx.events.unanswered(
                    row.subscriber_id, since=row.created_at, enrollment_id=row.id
                )
            decision = engine.on_due(
                row.state,
                found[0],
                now=now,
                confirmed=confirmed,
                admits=admits,
                reported=frozenset(reported),
            )
            for action in decision.actions:
                if isinstance(action, Skipped) and action.event is not None:
                    tx.events.mark_answered(
                        reported[action.event][0], enrollment_id=row.id, step_id=action.step_id
                    )
            decisions.append((row, decision))
        by_id = {item.enrollment.id: item for item in due}
        decisions = self._recheck_held(tx, decisions, now, by_id)
        made = self._apply(tx, decisions, now=now, worker=worker)
        return [(i, by_id[row.id], send, variant) for i, row, send, variant in made]

    def _admits(self, item: DueRow) -> engine.Admits:
        """A step's ``when:`` for the person of a due enrollment, as they are now (their
        context is built only for a step that has a condition: not on every due row)."""

        def admits(step: Step) -> tuple[bool, str]:
            assert step.when is not None
            person = subscriber_context(item.email, item.fields, item.tags)
            return self.conditions.holds(step.when, person)

        return admits

    def _recheck_held(
        self,
        tx: Tx,
        decisions: list[tuple[EnrollmentRow, Decision]],
        now: datetime,
        by_id: dict[int, DueRow],
    ) -> list[tuple[EnrollmentRow, Decision]]:
        """A person who confirmed (a click, in another transaction) after their status was
        read would stay held for good: nothing releases an enrollment held after the
        confirmation. Read their status again, waiting for such a transaction to finish."""
        held = [r.subscriber_id for r, d in decisions if d.state.status is EnrollmentStatus.held]
        if not held:
            return decisions
        confirmed = tx.subscribers.confirmed_among(held)
        out = []
        for row, decision in decisions:
            if decision.state.status is EnrollmentStatus.held and row.subscriber_id in confirmed:
                sequence = self.catalog.get(row.sequence_id)
                assert sequence is not None  # it was located just before
                admits = self._admits(by_id[row.id])
                decision = engine.on_due(
                    row.state, sequence, now=now, confirmed=True, admits=admits
                )
            out.append((row, decision))
        return out

    # -- what people do ------------------------------------------------------------------

    def answer(
        self,
        tx: Tx,
        message: MessageRow,
        by: YesBy,
        *,
        now: datetime,
        answer: str | None = None,
        made_at: datetime | None = None,
    ) -> str:
        """A click judged human on a counting link (with the answer its link gives, if any),
        or a person's reply, to ``message``: the micro-yes if it answers the current ask.
        ``made_at``: when the person made it (a click is judged seconds later), the yes's
        time in the report. Returns the outcome, for the event."""
        enrollment = self._locked(tx, message)
        yes = engine.Yes(by, message.step_id, message.visit, answer=answer)
        return self._yes(tx, enrollment, yes, now=now, made_at=made_at)

    def event(
        self, tx: Tx, subscriber_id: int, name: str, *, now: datetime
    ) -> list[tuple[EnrollmentRow, str]]:
        """An outside event for a person (POST /events): the micro-yes of every enrollment
        waiting at a step whose ``events`` list it. Returns (enrollment, outcome) for those
        it advanced."""
        out = []
        for row in tx.enrollments.of_subscriber(subscriber_id):
            state = row.state
            found = self.catalog.locate(row.sequence_id, state.step_id)
            if found is None or state.status is not EnrollmentStatus.active:
                continue
            if state.phase is not Phase.wait or name not in found[1].events:
                continue
            yes = engine.Yes(YesBy.event, state.step_id, state.visit, event=name)
            outcome = self._yes(tx, row, yes, now=now)
            if not outcome.startswith("ignored"):
                out.append((row, outcome))
        return out

    def _yes(
        self,
        tx: Tx,
        enrollment: EnrollmentRow,
        yes: engine.Yes,
        *,
        now: datetime,
        made_at: datetime | None = None,
    ) -> str:
        found = self.catalog.locate(enrollment.sequence_id, enrollment.state.step_id)
        if found is None:
            return "ignored:sequence_not_loaded"
        decision = engine.on_yes(enrollment.state, found[0], yes, now=now)
        if decision.state != enrollment.state or decision.actions:
            self._apply(tx, [(enrollment, decision)], now=now)
            at = min(made_at, now) if made_at is not None else now
            tx.answers.mark_yes(enrollment.id, yes.visit, by=yes.by, answer=yes.answer, now=at)
            log.info(
                "enrollment %s: %s by %s on %s%s",
                enrollment.id,
                decision.outcome,
                yes.by.value,
                yes.step_id,
                f" (answer {yes.answer})" if yes.answer else "",
                extra={
                    "action": "micro_yes",
                    "enrollment_id": enrollment.id,
                    "outcome": decision.outcome,
                },
            )
        return decision.outcome

    def extend(self, tx: Tx, message: MessageRow, back: date, *, now: datetime) -> str:
        """An out-of-office answer to ``message`` names the day the person is back: the wait
        of the current step counts from then."""
        enrollment = self._locked(tx, message)
        state = enrollment.state
        found = self.catalog.locate(enrollment.sequence_id, state.step_id)
        if found is None or (message.step_id, message.visit) != (state.step_id, state.visit):
            return "ignored:automatic (not the current step)"
        returns = datetime.combine(back, time(0, 0), tzinfo=UTC)
        decision = engine.on_out_of_office(state, found[0], back=returns, now=now)
        if decision.state != state:
            self._apply(tx, [(enrollment, decision)], now=now)
        return f"{decision.outcome} until {back.isoformat()}"

    @staticmethod
    def _locked(tx: Tx, message: MessageRow) -> EnrollmentRow:
        """The enrollment of ``message``, locked with all of its person's (in id order): a
        yes may confirm the person, which touches them all, and every path locks a person's
        enrollments the same way, so none waits on another in a circle."""
        rows = tx.enrollments.of_subscriber(message.subscriber_id)
        return next(r for r in rows if r.id == message.enrollment_id)

    def confirm(self, tx: Tx, subscriber_id: int, *, now: datetime) -> bool:
        """Double opt-in done: the person is confirmed and their held enrollments, and those
        waiting at another sequence's confirmation, move on. False if they were not pending."""
        rows = tx.enrollments.of_subscriber(subscriber_id)
        if tx.subscribers.get(subscriber_id, lock=True).status is not SubscriberStatus.pending:
            return False
        tx.subscribers.set_status(subscriber_id, SubscriberStatus.confirmed, now=now)
        changed = []
        for row in rows:
            sequence = self.catalog.get(row.sequence_id)
            if sequence is None or not sequence.has_step(row.state.step_id):
                continue  # the tick looks at it once its sequence is back
            new = engine.on_confirmed(row.state, sequence, now=now)
            if new != row.state:
                changed.append((row.id, new))
        tx.enrollments.save(changed, now=now)
        return True

    def delivered(self, tx: Tx, deliveries: Seq[Delivery], *, at: datetime) -> None:
        """The relay accepted these step emails at ``at``: each step's reminders and timeout
        count from now (``engine.on_delivered``, applied set-based: only an enrollment still
        waiting at that visit of that step, its email not delivered before, changes)."""
        tx.enrollments.start_clocks(
            [(d.enrollment_id, d.step_id, d.visit, at + d.clock) for d in deliveries], at=at
        )

    def convert(self, tx: Tx, enrollment: EnrollmentRow, name: str, *, now: datetime) -> bool:
        """A goal event (``name``) converts the enrollment. If the step the person waits at
        asks for that very event, it is that step's yes too (the report counts it), then the
        enrollment leaves as converted. False if it had finished already."""
        state = enrollment.state
        found = self.catalog.locate(enrollment.sequence_id, state.step_id)
        if (
            found is not None
            and state.status is EnrollmentStatus.active
            and state.phase is Phase.wait
            and name in found[1].events
            and found[1].advance_on.accepts(YesBy.event)
        ):
            tx.answers.mark_yes(enrollment.id, state.visit, by=YesBy.event, answer=None, now=now)
        return self.stop(tx, enrollment.id, ExitReason.converted, now=now)

    # -- leaving -------------------------------------------------------------------------

    def stop(self, tx: Tx, enrollment_id: int, reason: ExitReason, *, now: datetime) -> bool:
        """One enrollment leaves for good (a goal reached, an email that cannot be sent) and
        its mail not sent yet is cancelled. False if it had finished already."""
        row = tx.enrollments.get(enrollment_id)
        new = engine.stop(row.state, reason)
        if new == row.state:
            return False
        tx.enrollments.save([(row.id, new)], now=now)
        tx.outbox.cancel_open(enrollment_id=enrollment_id, why=f"enrollment {reason.value}")
        return True

    def stop_person(
        self,
        tx: Tx,
        subscriber_id: int,
        *,
        status: SubscriberStatus,
        reason: ExitReason,
        now: datetime,
    ) -> int:
        """A person leaves (unsubscribe, bounce, complaint): every enrollment stops at once
        and their mail not sent yet is cancelled. A status that says more is never replaced
        by one that says less (an unsubscribe keeps ``bounced``). Returns how many
        enrollments were stopped."""
        rows = tx.enrollments.of_subscriber(subscriber_id)
        current = tx.subscribers.get(subscriber_id, lock=True).status
        if status.weight > current.weight:
            tx.subscribers.set_status(subscriber_id, status, now=now)
        stopped = []
        for row in rows:
            new = engine.stop(row.state, reason)
            if new != row.state:
                stopped.append((row.id, new))
        tx.enrollments.save(stopped, now=now)
        tx.outbox.cancel_open(subscriber_id=subscriber_id, why=f"subscriber {status.value}")
        return len(stopped)

    # -- storing a decision --------------------------------------------------------------

    def _apply(
        self,
        tx: Tx,
        decisions: Seq[tuple[EnrollmentRow, Decision]],
        *,
        now: datetime,
        worker: str | None = None,
    ) -> list[tuple[int, EnrollmentRow, SendEmail, str | None]]:
        """Store decisions: each enrollment's new state, a message row per email to send
        (record before send, with its A/B variant), what an answer says about the person,
        the steps skipped, then the confirmations they carry."""
        tx.enrollments.save([(row.id, d.state) for row, d in decisions], now=now)
        sends = [
            (row, action, self._variant(tx, row, action, now=now))
            for row, d in decisions
            for action in d.actions
            if isinstance(action, SendEmail)
        ]
        later = self.send_times.later(tx, self.catalog, [(r, a) for r, a, _ in sends], now=now)
        news = [
            NewMessage(
                row.id,
                row.subscriber_id,
                row.sequence_id,
                a.step_id,
                a.visit,
                a.kind,
                variant=variant,
                not_before=when[0] if when else None,
                waiting=when[1] if when else None,
            )
            for (row, a, variant), when in zip(sends, later, strict=True)
        ]
        ids = tx.outbox.add(news, now=now, claimed_by=worker)
        for row, d in decisions:
            for action in d.actions:
                if isinstance(action, Remember):
                    tx.subscribers.merge_fields(
                        row.subscriber_id,
                        dict(action.fields),
                        action.tags,
                        answers={action.step_id: action.answer},
                    )
                elif isinstance(action, Skipped):
                    tx.events.add(
                        subscriber_id=row.subscriber_id,
                        enrollment_id=row.id,
                        kind=EventKind.skipped,
                        outcome=f"skipped:{action.step_id}",
                        detail={
                            "step": action.step_id,
                            "reason": action.reason,
                            **({"answered_by": action.event} if action.event else {}),
                        },
                        now=now,
                    )
            if any(isinstance(a, ConfirmSubscriber) for a in d.actions):
                self.confirm(tx, row.subscriber_id, now=now)
        # What goes now (claimed by ``worker``, if any); the rest waits in the queue.
        return [
            (i, row, a, v)
            for i, (row, a, v), when in zip(ids, sends, later, strict=True)
            if when is None
        ]

    def _variant(self, tx: Tx, row: EnrollmentRow, send: SendEmail, *, now: datetime) -> str | None:
        found = self.catalog.locate(row.sequence_id, send.step_id)
        if found is None or not found[1].variants:
            return None
        return self.experiments.variant_for(
            tx, found[0], found[1], enrollment_id=row.id, visit=send.visit, kind=send.kind, now=now
        )
