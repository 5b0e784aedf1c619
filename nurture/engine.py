"""The engine: pure decisions about one enrollment.

Given an enrollment's state, its sequence and either ``now`` (something fell due) or an event
(a micro-yes candidate, a delivery), the engine says what the new state is and what to do
(send which email, confirm the subscriber). It does no I/O and never reads the clock: ``now``
is always an argument, so a test can run a month of a sequence in a millisecond.

A step's clock starts when its email is delivered (accepted by the relay), not when it is
decided on: until ``on_delivered``, nothing of that step falls due, so a relay that is down
for longer than a step's wait never makes anyone skip a step they never received.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from nurture.sequences import Sequence, Step
from nurture.vocabulary import EnrollmentStatus, ExitReason, MessageKind, Phase, YesBy

__all__ = [
    "EnrollmentState",
    "SendEmail",
    "ConfirmSubscriber",
    "Remember",
    "Skipped",
    "Admits",
    "Decision",
    "Yes",
    "start",
    "restart",
    "on_due",
    "on_yes",
    "on_confirmed",
    "on_delivered",
    "delivery_clock",
    "on_out_of_office",
    "postpone",
    "move_to",
    "stop",
]


@dataclass(frozen=True)
class EnrollmentState:
    status: EnrollmentStatus
    step_id: str
    phase: Phase
    visit: int  # +1 each time the enrollment enters a step; part of every message's unique key
    due_at: datetime | None
    step_sent_at: datetime | None = None
    reminders_sent: int = 0
    exit_reason: ExitReason | None = None
    # The steps the person said yes to: moving on in the file's order never sends one of
    # them again (a reordered sequence), while an explicit goto may.
    done: tuple[str, ...] = ()


@dataclass(frozen=True)
class SendEmail:
    step_id: str
    visit: int
    kind: MessageKind = MessageKind.STEP


@dataclass(frozen=True)
class ConfirmSubscriber:
    pass


@dataclass(frozen=True)
class Remember:
    """What an answer says about the person: which answer they gave to which step (kept as
    ``subscriber.answers``), tags to add, fields to set."""

    step_id: str
    answer: str
    tags: tuple[str, ...] = ()
    fields: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True)
class Skipped:
    """A step was not sent: its ``when:`` was false for this person (``reason`` says why)."""

    step_id: str
    visit: int
    reason: str
    event: str | None = None  # the outside event, reported before, that answered the step


Action = SendEmail | ConfirmSubscriber | Remember | Skipped

# Whether a step's condition holds for the enrollment's person: (holds, why). The caller
# evaluates the expression (nurture.conditions); the engine only asks.
Admits = Callable[[Step], tuple[bool, str]]


@dataclass(frozen=True)
class Decision:
    state: EnrollmentState
    actions: tuple[Action, ...] = ()
    outcome: str = "unchanged"  # a word for logs and event records: sent, advanced, ignored:...


@dataclass(frozen=True)
class Yes:
    """A micro-yes candidate: a click or a reply on the email of (step_id, visit), or an
    outside event (``event``) while the person waits there. A click on a link marked
    ``data-answer`` carries its ``answer``."""

    by: YesBy
    step_id: str
    visit: int
    answer: str | None = None
    event: str | None = None


def _enter(
    sequence: Sequence,
    step: Step,
    *,
    visit: int,
    now: datetime,
    confirmed: bool,
    done: tuple[str, ...] = (),
) -> EnrollmentState:
    """The state of an enrollment that has just moved to ``step`` (its email not sent yet)."""
    if step.confirms and confirmed:
        following = sequence.next_step(step.id)
        while following is not None and following.id in done:
            following = sequence.next_step(following.id)
        if following is None:
            return EnrollmentState(
                EnrollmentStatus.completed, step.id, Phase.wait, visit, None, done=done
            )
        step = following
    return EnrollmentState(
        status=EnrollmentStatus.active,
        step_id=step.id,
        phase=Phase.send,
        visit=visit,
        due_at=now + step.delay,
        done=done,
    )


def start(sequence: Sequence, *, now: datetime, confirmed: bool) -> EnrollmentState:
    """A new enrollment. A subscriber who already confirmed skips the confirmation step."""
    return _enter(sequence, sequence.steps[0], visit=1, now=now, confirmed=confirmed)


def _wait_due(step: Step, sent_at: datetime, reminders_sent: int) -> datetime:
    if reminders_sent < len(step.reminders):
        return sent_at + step.reminders[reminders_sent].after
    return sent_at + step.wait


def on_due(
    state: EnrollmentState,
    sequence: Sequence,
    *,
    now: datetime,
    confirmed: bool,
    admits: Admits | None = None,
    reported: frozenset[str] = frozenset(),
) -> Decision:
    """Something fell due for this enrollment: send its email, a reminder, or time out. A
    step with a condition (``when:``) is sent only if ``admits`` says it holds now; else it
    is skipped and the person moves on to the next step, whose delay counts from now. A step
    whose ask is an outside event the person ``reported`` already (since enrolling, and that
    answered no earlier step of this enrollment) is answered: its email is not sent, and they
    move on as after a yes (``Skipped.event`` names the event, which is now used up)."""
    if state.status is not EnrollmentStatus.active or state.due_at is None or state.due_at > now:
        return Decision(state)
    step = sequence.step(state.step_id)

    if state.phase is Phase.send:
        if step.confirms and confirmed:
            return _move(state, sequence, step, now=now, confirmed=confirmed, outcome="skipped")
        if not confirmed and not step.confirms:
            held = replace(state, status=EnrollmentStatus.held, due_at=None)
            return Decision(held, outcome="held:unconfirmed")
        if step.when is not None:
            holds, why = admits(step) if admits is not None else (False, "no condition reader")
            if not holds:
                moved = _move(
                    state, sequence, step, now=now, confirmed=confirmed, outcome="skipped:when"
                )
                skipped = Skipped(step.id, state.visit, why)
                return Decision(moved.state, (skipped,), moved.outcome)
        earlier = sorted(reported.intersection(step.events))
        if earlier and step.advance_on.accepts(YesBy.event):
            moved = _move(
                state,
                sequence,
                step,
                now=now,
                confirmed=confirmed,
                outcome="answered:earlier",
                answered=True,
            )
            why = f"{earlier[0]} was reported before this step's email: its ask is answered"
            skipped = Skipped(step.id, state.visit, why, event=earlier[0])
            return Decision(moved.state, (skipped,), moved.outcome)
        # Nothing more falls due until the email is delivered (on_delivered).
        sent = replace(state, phase=Phase.wait, step_sent_at=None, reminders_sent=0, due_at=None)
        return Decision(sent, (SendEmail(step.id, state.visit),), outcome="sent")

    if step.confirms and confirmed:
        # Confirmed elsewhere (another sequence's confirmation) while waiting here: the ask
        # is answered; no "please confirm" reminder, no timeout.
        return _move(state, sequence, step, now=now, confirmed=confirmed, outcome="skipped")
    if state.step_sent_at is None:
        return Decision(replace(state, due_at=None))  # not delivered yet: nothing is due
    elapsed = now - state.step_sent_at
    if elapsed >= step.wait:
        return _timeout(state, sequence, step, now=now, confirmed=confirmed)
    # After downtime several reminders may be overdue: send only the latest one.
    latest = None
    for i in range(state.reminders_sent, len(step.reminders)):
        if step.reminders[i].after <= elapsed:
            latest = i
    if latest is None:
        due = replace(state, due_at=_wait_due(step, state.step_sent_at, state.reminders_sent))
        return Decision(due)
    after = replace(
        state,
        reminders_sent=latest + 1,
        due_at=_wait_due(step, state.step_sent_at, latest + 1),
    )
    action = SendEmail(step.id, state.visit, MessageKind(latest + 1))
    return Decision(after, (action,), outcome="reminded")


def _timeout(
    state: EnrollmentState, sequence: Sequence, step: Step, *, now: datetime, confirmed: bool
) -> Decision:
    rule = step.on_timeout
    if rule.action == "exit":
        left = replace(
            state, status=EnrollmentStatus.exited, due_at=None, exit_reason=ExitReason.timeout
        )
        return Decision(left, outcome="timeout:exit")
    if rule.action == "goto":
        assert rule.target is not None
        target = sequence.step(rule.target)
        moved = _enter(
            sequence, target, visit=state.visit + 1, now=now, confirmed=confirmed, done=state.done
        )
        return Decision(moved, outcome=f"timeout:goto:{target.id}")
    return _move(state, sequence, step, now=now, confirmed=confirmed, outcome="timeout:next")


def _move(
    state: EnrollmentState,
    sequence: Sequence,
    step: Step,
    *,
    now: datetime,
    confirmed: bool,
    outcome: str,
    answered: bool = False,
) -> Decision:
    """Move on to the next step in the file's order that the person has not said yes to."""
    done = state.done + (step.id,) if answered and step.id not in state.done else state.done
    following = sequence.next_step(step.id)
    while following is not None and following.id in done:
        following = sequence.next_step(following.id)
    if following is None:
        completed = replace(state, status=EnrollmentStatus.completed, due_at=None, done=done)
        return Decision(completed, outcome="completed")
    moved = _enter(
        sequence, following, visit=state.visit + 1, now=now, confirmed=confirmed, done=done
    )
    return Decision(
        moved, outcome=outcome if moved.status is EnrollmentStatus.active else "completed"
    )


def on_yes(state: EnrollmentState, sequence: Sequence, event: Yes, *, now: datetime) -> Decision:
    """A click or reply arrived. It advances only if it answers the current ask."""
    if state.status is not EnrollmentStatus.active:
        return Decision(state, outcome=f"ignored:{state.status.value}")
    if (
        event.step_id != state.step_id
        or event.visit != state.visit
        or state.phase is not Phase.wait
    ):
        return Decision(state, outcome="ignored:not_current_step")
    step = sequence.step(state.step_id)
    if not step.advance_on.accepts(event.by):
        return Decision(state, outcome=f"ignored:step_wants_{step.advance_on.value}")
    if event.by is YesBy.event and event.event not in step.events:
        return Decision(state, outcome="ignored:not_this_steps_event")
    answer = step.answer(event.answer)
    if step.answers and event.by is YesBy.click and answer is None:
        # A step that asks a question moves on only by one of its answers.
        return Decision(state, outcome="ignored:not_an_answer")
    actions: tuple[Action, ...] = (ConfirmSubscriber(),) if step.confirms else ()
    if answer is not None:
        actions += (Remember(step.id, answer.id, answer.tags, answer.fields),)
    if answer is not None and answer.goto is not None:
        done = state.done + (step.id,) if step.id not in state.done else state.done
        target = sequence.step(answer.goto)
        moved_to = _enter(
            sequence, target, visit=state.visit + 1, now=now, confirmed=True, done=done
        )
        return Decision(moved_to, actions, "advanced")
    moved = _move(state, sequence, step, now=now, confirmed=True, outcome="advanced", answered=True)
    return Decision(moved.state, actions, moved.outcome)


def delivery_clock(step: Step) -> timedelta:
    """How long after its email is delivered a step's first reminder (or, with none, its
    timeout) falls due: the ``due_at`` that ``on_delivered`` sets, as an offset."""
    return step.reminders[0].after if step.reminders else step.wait


def on_delivered(
    state: EnrollmentState, sequence: Sequence, *, step_id: str, visit: int, at: datetime
) -> EnrollmentState:
    """The email of (step_id, visit) was accepted by the relay at ``at``: the step's reminders
    and timeout count from then. A delivery for another step or visit, a second delivery, or
    one for an enrollment that left changes nothing."""
    if (
        state.status is not EnrollmentStatus.active
        or state.phase is not Phase.wait
        or (state.step_id, state.visit) != (step_id, visit)
        or state.step_sent_at is not None
    ):
        return state
    step = sequence.step(step_id)
    return replace(state, step_sent_at=at, due_at=_wait_due(step, at, state.reminders_sent))


def on_out_of_office(
    state: EnrollmentState, sequence: Sequence, *, back: datetime, now: datetime
) -> Decision:
    """An out-of-office answer to the current step says the person is back at ``back``: the
    wait (reminders included) counts from then, so nobody is reminded or timed out while away.
    Nothing changes for an older step's email or a date already past."""
    if state.status is not EnrollmentStatus.active or state.phase is not Phase.wait or back <= now:
        return Decision(state, outcome="ignored:out_of_office")
    if state.step_sent_at is None or back <= state.step_sent_at:
        return Decision(state, outcome="ignored:out_of_office")
    step = sequence.step(state.step_id)
    moved = replace(state, step_sent_at=back, due_at=_wait_due(step, back, state.reminders_sent))
    return Decision(moved, outcome="extended:out_of_office")


def on_confirmed(state: EnrollmentState, sequence: Sequence, *, now: datetime) -> EnrollmentState:
    """The subscriber confirmed (here or through another sequence): a held enrollment sends its
    step now; one waiting at a confirmation step is due now, so the next ``on_due`` moves it on
    without a "please confirm" reminder. Any other enrollment is unchanged."""
    if state.status is EnrollmentStatus.held:
        return replace(state, status=EnrollmentStatus.active, due_at=now)
    if (
        state.status is EnrollmentStatus.active
        and state.phase is Phase.wait
        and sequence.step(state.step_id).confirms
    ):
        return replace(state, due_at=now)
    return state


def restart(state: EnrollmentState, sequence: Sequence, *, now: datetime) -> EnrollmentState:
    """Someone taken back (an operator's resubscribe) starts over at the first step, as a new
    visit, so nothing sent before counts as sent again; they must confirm again."""
    fresh = start(sequence, now=now, confirmed=False)
    return replace(fresh, visit=state.visit + 1)


def move_to(
    state: EnrollmentState, sequence: Sequence, step_id: str, *, now: datetime, confirmed: bool
) -> EnrollmentState:
    """An operator moves the enrollment to ``step_id`` (its step was removed or renamed): a
    new visit of that step, its email sent after the step's delay."""
    target = sequence.step(step_id)
    return _enter(
        sequence, target, visit=state.visit + 1, now=now, confirmed=confirmed, done=state.done
    )


def postpone(state: EnrollmentState, *, until: datetime, outcome: str) -> Decision:
    """Look at this enrollment again later (its sequence or step is not loaded right now)."""
    return Decision(replace(state, due_at=until), outcome=outcome)


def stop(state: EnrollmentState, reason: ExitReason) -> EnrollmentState:
    """Leave for good (unsubscribe, bounce, goal reached). A finished enrollment stays finished."""
    if state.status.finished:
        return state
    return replace(state, status=EnrollmentStatus.exited, due_at=None, exit_reason=reason)
