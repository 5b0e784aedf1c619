"""The engine's rules, each on a fixed clock: no database, no network, no waiting."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.clock import T0
from support.steps import step

from nurture import engine
from nurture.engine import ConfirmSubscriber, EnrollmentState, SendEmail, Yes
from nurture.sequences import AdvanceOn, Reminder, Sequence, Timeout
from nurture.vocabulary import EnrollmentStatus as Status
from nurture.vocabulary import ExitReason, MessageKind, Phase, YesBy

D = timedelta(days=1)
H = timedelta(hours=1)


def journey() -> Sequence:
    return Sequence(
        id="j",
        name="J",
        sender="a@b.c",
        steps=(
            step("confirm", confirms=True, reminders=(Reminder(D, "r", "r.html"),)),
            step(
                "welcome",
                delay=10 * timedelta(minutes=1),
                advance_on=AdvanceOn.click_or_reply,
                wait=7 * D,
                on_timeout=Timeout("next"),
            ),
            step(
                "guide",
                delay=D,
                wait=5 * D,
                reminders=(Reminder(2 * D, "r", "r.html"), Reminder(4 * D, "r2", "r.html")),
                on_timeout=Timeout("next"),
            ),
            step(
                "webinar",
                delay=D,
                advance_on=AdvanceOn.reply,
                wait=7 * D,
                on_timeout=Timeout("goto", "guide"),
            ),
            step("offer", delay=D, wait=7 * D, on_timeout=Timeout("exit")),
        ),
    )


def sent_state(seq: Sequence, step_id: str, at=T0, visit: int = 1) -> EnrollmentState:
    s = seq.step(step_id)
    first = s.reminders[0].after if s.reminders else s.wait
    return EnrollmentState(Status.active, step_id, Phase.wait, visit, at + first, step_sent_at=at)


def delivered(state: EnrollmentState, seq: Sequence, at: object) -> EnrollmentState:
    """The relay accepted the current step's email at ``at``."""
    return engine.on_delivered(state, seq, step_id=state.step_id, visit=state.visit, at=at)  # type: ignore[arg-type]


def test_start_sends_the_confirmation_first_and_at_once() -> None:
    seq = journey()
    state = engine.start(seq, now=T0, confirmed=False)
    assert (state.step_id, state.phase, state.due_at, state.visit) == ("confirm", Phase.send, T0, 1)
    d = engine.on_due(state, seq, now=T0, confirmed=False)
    assert d.actions == (SendEmail("confirm", 1),)
    # Until the relay accepts it, nothing of the step falls due.
    assert d.state.phase is Phase.wait and d.state.step_sent_at is None and d.state.due_at is None
    state = delivered(d.state, seq, T0 + H)
    assert state.step_sent_at == T0 + H
    assert state.due_at == T0 + H + D  # the reminder is next, a day after delivery


def test_a_step_never_delivered_never_reminds_or_times_out() -> None:
    """However long the relay is down, the step's clock has not started: no reminder for an
    email the person never got, and no next step."""
    seq = journey()
    sent = engine.on_due(engine.start(seq, now=T0, confirmed=True), seq, now=T0 + H, confirmed=True)
    assert sent.actions == (SendEmail("welcome", 1),)
    for later in (T0 + D, T0 + 30 * D):
        d = engine.on_due(sent.state, seq, now=later, confirmed=True)
        assert d.actions == () and d.state.step_id == "welcome" and d.state.due_at is None
    # A second delivery (a resend), one of another step, or a late one after leaving: nothing.
    once = delivered(sent.state, seq, T0 + 2 * D)
    assert delivered(once, seq, T0 + 3 * D) == once
    other = engine.on_delivered(sent.state, seq, step_id="guide", visit=1, at=T0 + 2 * D)
    assert other == sent.state
    left = engine.stop(sent.state, ExitReason.unsubscribed)
    assert delivered(left, seq, T0 + 2 * D) == left


def test_a_confirmed_subscriber_skips_the_confirmation_step() -> None:
    seq = journey()
    state = engine.start(seq, now=T0, confirmed=True)
    assert state.step_id == "welcome"
    assert state.due_at == T0 + 10 * timedelta(minutes=1)


def test_nothing_but_the_confirmation_is_sent_before_confirming() -> None:
    seq = journey()
    state = EnrollmentState(Status.active, "welcome", Phase.send, 2, T0)
    d = engine.on_due(state, seq, now=T0, confirmed=False)
    assert d.actions == ()
    assert d.state.status is Status.held and d.state.due_at is None
    released = engine.on_confirmed(d.state, seq, now=T0 + H)
    assert released.status is Status.active and released.due_at == T0 + H
    d2 = engine.on_due(released, seq, now=T0 + H, confirmed=True)
    assert d2.actions == (SendEmail("welcome", 2),)


def test_click_on_the_confirmation_confirms_and_moves_on_after_the_delay() -> None:
    seq = journey()
    state = sent_state(seq, "confirm")
    d = engine.on_yes(state, seq, Yes(YesBy.click, "confirm", 1), now=T0 + H)
    assert d.actions == (ConfirmSubscriber(),)
    assert d.outcome == "advanced"
    assert (d.state.step_id, d.state.phase, d.state.visit) == ("welcome", Phase.send, 2)
    assert d.state.due_at == T0 + H + 10 * timedelta(minutes=1)


def test_reply_is_not_a_yes_where_the_step_asks_for_a_click() -> None:
    seq = journey()
    state = sent_state(seq, "confirm")
    d = engine.on_yes(state, seq, Yes(YesBy.reply, "confirm", 1), now=T0 + H)
    assert d.state == state and d.actions == ()
    assert d.outcome == "ignored:step_wants_click"


def test_click_is_not_a_yes_where_the_step_asks_for_a_reply() -> None:
    seq = journey()
    state = sent_state(seq, "webinar")
    assert engine.on_yes(state, seq, Yes(YesBy.click, "webinar", 1), now=T0).state == state
    d = engine.on_yes(state, seq, Yes(YesBy.reply, "webinar", 1), now=T0)
    assert d.state.step_id == "offer"


def test_events_on_an_older_step_are_recorded_but_never_advance_twice() -> None:
    seq = journey()
    state = sent_state(seq, "confirm")
    first = engine.on_yes(state, seq, Yes(YesBy.click, "confirm", 1), now=T0)
    sent = engine.on_due(first.state, seq, now=first.state.due_at, confirmed=True).state
    again = engine.on_yes(sent, seq, Yes(YesBy.click, "confirm", 1), now=T0 + H)
    assert again.state == sent and again.actions == ()
    assert again.outcome == "ignored:not_current_step"


def test_duplicate_clicks_are_idempotent() -> None:
    seq = journey()
    state = sent_state(seq, "guide", visit=3)
    once = engine.on_yes(state, seq, Yes(YesBy.click, "guide", 3), now=T0)
    twice = engine.on_yes(once.state, seq, Yes(YesBy.click, "guide", 3), now=T0)
    assert once.state.step_id == "webinar"
    assert twice.state == once.state and twice.actions == ()


def test_a_click_from_an_earlier_visit_of_the_same_step_does_not_count() -> None:
    seq = journey()
    state = sent_state(seq, "guide", visit=5)  # came back here through a goto
    d = engine.on_yes(state, seq, Yes(YesBy.click, "guide", 3), now=T0)
    assert d.state == state and d.outcome == "ignored:not_current_step"


def test_clicks_after_the_enrollment_left_are_recorded_only() -> None:
    seq = journey()
    for status in (Status.exited, Status.completed):
        state = replace(sent_state(seq, "offer"), status=status, due_at=None)
        d = engine.on_yes(state, seq, Yes(YesBy.click, "offer", 1), now=T0)
        assert d.state == state and d.actions == ()
        assert d.outcome == f"ignored:{status.value}"


def test_reminders_then_timeout_exit() -> None:
    seq = journey()
    state = engine.on_due(
        engine.start(seq, now=T0, confirmed=False), seq, now=T0, confirmed=False
    ).state
    state = delivered(state, seq, T0)
    assert (
        engine.on_due(state, seq, now=T0 + D - timedelta(seconds=1), confirmed=False).actions == ()
    )
    r = engine.on_due(state, seq, now=T0 + D, confirmed=False)
    assert r.actions == (SendEmail("confirm", 1, MessageKind(1)),)
    assert r.state.due_at == T0 + 3 * D
    t = engine.on_due(r.state, seq, now=T0 + 3 * D, confirmed=False)
    assert t.actions == ()
    assert t.state.status is Status.exited and t.state.exit_reason is ExitReason.timeout
    assert engine.on_due(t.state, seq, now=T0 + 30 * D, confirmed=False).actions == ()


def test_after_downtime_only_the_latest_overdue_reminder_is_sent() -> None:
    seq = journey()
    state = sent_state(seq, "guide")
    d = engine.on_due(state, seq, now=T0 + 4 * D + H, confirmed=True)
    assert d.actions == (SendEmail("guide", 1, MessageKind(2)),)
    assert d.state.reminders_sent == 2 and d.state.due_at == T0 + 5 * D


def test_after_downtime_past_the_wait_no_reminder_just_the_timeout() -> None:
    seq = journey()
    d = engine.on_due(sent_state(seq, "guide"), seq, now=T0 + 6 * D, confirmed=True)
    assert d.actions == ()
    assert d.state.step_id == "webinar" and d.outcome == "timeout:next"


def test_timeout_next_moves_to_the_next_step_after_its_delay() -> None:
    seq = journey()
    state = sent_state(seq, "welcome", visit=2)
    d = engine.on_due(state, seq, now=T0 + 7 * D, confirmed=True)
    assert (d.state.step_id, d.state.phase, d.state.visit) == ("guide", Phase.send, 3)
    assert d.state.due_at == T0 + 8 * D


def test_timeout_goto_returns_to_the_named_step_with_a_new_visit() -> None:
    seq = journey()
    state = sent_state(seq, "webinar", visit=4)
    d = engine.on_due(state, seq, now=T0 + 7 * D, confirmed=True)
    assert (d.state.step_id, d.state.visit) == ("guide", 5)
    assert d.outcome == "timeout:goto:guide"


def test_yes_on_the_last_step_completes() -> None:
    seq = journey()
    d = engine.on_yes(sent_state(seq, "offer", visit=5), seq, Yes(YesBy.click, "offer", 5), now=T0)
    assert d.state.status is Status.completed and d.state.due_at is None
    assert d.outcome == "completed"


def test_stop_is_for_good_and_a_finished_enrollment_stays_finished() -> None:
    seq = journey()
    state = sent_state(seq, "guide")
    stopped = engine.stop(state, ExitReason.unsubscribed)
    assert stopped.status is Status.exited and stopped.exit_reason is ExitReason.unsubscribed
    assert engine.on_due(stopped, seq, now=T0 + 30 * D, confirmed=True).actions == ()
    assert engine.stop(stopped, ExitReason.converted) == stopped
    done = replace(state, status=Status.completed)
    assert engine.stop(done, ExitReason.unsubscribed) == done


def test_nothing_happens_before_due() -> None:
    seq = journey()
    state = engine.start(seq, now=T0 + H, confirmed=False)
    assert engine.on_due(state, seq, now=T0, confirmed=False).state == state


def run_month(seq: Sequence, behaviour: dict[str, str]) -> tuple[EnrollmentState, list[str]]:
    """Drive one enrollment for 30 days, answering per step as ``behaviour`` says
    ('click', 'reply' or nothing), the moment each email arrives."""
    now = T0
    confirmed = False
    state = engine.start(seq, now=now, confirmed=confirmed)
    sent: list[str] = []
    end = T0 + 30 * D
    while state.status is Status.active and state.due_at is not None and state.due_at <= end:
        now = state.due_at
        d = engine.on_due(state, seq, now=now, confirmed=confirmed)
        state = d.state
        for a in d.actions:
            assert isinstance(a, SendEmail)
            sent.append(f"{a.step_id}:{a.kind}")
            if a.kind.is_step:  # delivered at once
                state = delivered(state, seq, now)
            answer = behaviour.get(a.step_id)
            if answer:
                y = engine.on_yes(state, seq, Yes(YesBy(answer), a.step_id, a.visit), now=now + H)
                confirmed = confirmed or any(isinstance(x, ConfirmSubscriber) for x in y.actions)
                state = y.state
    return state, sent


def test_a_whole_month_of_a_sequence_runs_without_waiting() -> None:
    seq = journey()
    eager, sent = run_month(
        seq,
        {
            "confirm": "click",
            "welcome": "reply",
            "guide": "click",
            "webinar": "reply",
            "offer": "click",
        },
    )
    assert eager.status is Status.completed
    assert sent == ["confirm:step", "welcome:step", "guide:step", "webinar:step", "offer:step"]

    silent, sent = run_month(seq, {})
    assert silent.status is Status.exited and silent.exit_reason is ExitReason.timeout
    assert sent == ["confirm:step", "confirm:reminder1"]

    lurker, sent = run_month(seq, {"confirm": "click"})
    # welcome times out -> guide (2 reminders) times out -> webinar -> goto guide -> ...
    assert sent[:6] == [
        "confirm:step",
        "welcome:step",
        "guide:step",
        "guide:reminder1",
        "guide:reminder2",
        "webinar:step",
    ]
    assert "offer:step" not in sent


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["due", "click", "reply"]),
            st.integers(min_value=0, max_value=3 * 24 * 3600),
            st.integers(min_value=0, max_value=6),
        ),
        max_size=40,
    )
)
def test_property_each_visit_of_a_step_advances_at_most_once(
    script: list[tuple[str, int, int]],
) -> None:
    """Whatever arrives in whatever order, an enrollment moves forward at most once per visit
    of a step, sends each (visit, kind) once, and never moves while not active."""
    seq = journey()
    now = T0
    confirmed = False
    state = engine.start(seq, now=now, confirmed=confirmed)
    advanced_from: set[int] = set()
    sends: set[tuple[int, str]] = set()
    for what, seconds, visit_offset in script:
        now += timedelta(seconds=seconds)
        before = state
        if what == "due":
            d = engine.on_due(state, seq, now=now, confirmed=confirmed)
        else:
            visit = max(1, state.visit - visit_offset % 3)
            d = engine.on_yes(state, seq, Yes(YesBy(what), state.step_id, visit), now=now)
            if d.outcome in ("advanced", "completed"):
                assert before.visit not in advanced_from
                assert before.status is Status.active and visit == before.visit
                advanced_from.add(before.visit)
        state = d.state
        for a in d.actions:
            if isinstance(a, SendEmail):
                key = (a.visit, a.kind)
                assert key not in sends
                sends.add(key)
                if a.kind.is_step:
                    state = delivered(state, seq, now)
            else:
                confirmed = True
        assert state.visit >= before.visit


@pytest.mark.parametrize("kind", ["click", "reply"])
def test_click_or_reply_accepts_both(kind: str) -> None:
    seq = journey()
    d = engine.on_yes(
        sent_state(seq, "welcome", visit=2), seq, Yes(YesBy(kind), "welcome", 2), now=T0
    )
    assert d.outcome == "advanced" and d.state.step_id == "guide"


def test_confirmed_elsewhere_while_waiting_at_a_confirmation_step_moves_on() -> None:
    seq = journey()
    # confirm_subscriber makes it due at once
    state = replace(sent_state(seq, "confirm"), due_at=T0 + H)
    d = engine.on_due(state, seq, now=T0 + H, confirmed=True)
    assert d.actions == () and d.outcome == "skipped"
    assert (d.state.step_id, d.state.phase) == ("welcome", Phase.send)
    assert d.state.due_at == T0 + H + 10 * timedelta(minutes=1)


def test_a_waiting_enrollment_made_due_early_changes_nothing() -> None:
    seq = journey()
    state = sent_state(seq, "guide")
    d = engine.on_due(replace(state, due_at=T0 + H), seq, now=T0 + H, confirmed=True)
    assert d.actions == () and d.state == state


def test_out_of_office_moves_the_wait_to_the_return_date() -> None:
    seq = journey()
    state = sent_state(seq, "guide")  # reminders at 2d and 4d, timeout at 5d
    back = T0 + 10 * D
    d = engine.on_out_of_office(state, seq, back=back, now=T0 + H)
    assert d.outcome == "extended:out_of_office"
    assert d.state.step_sent_at == back and d.state.due_at == back + 2 * D
    # nothing is sent while they are away; the timeout comes 5 days after their return
    assert engine.on_due(d.state, seq, now=T0 + 9 * D, confirmed=True).actions == ()
    later = engine.on_due(d.state, seq, now=back + 2 * D, confirmed=True)
    assert later.actions == (SendEmail("guide", 1, MessageKind(1)),)
    past = engine.on_out_of_office(state, seq, back=T0, now=T0 + H)
    assert past.state == state
    done = replace(state, status=Status.completed)
    assert engine.on_out_of_office(done, seq, back=back, now=T0).state == done


def test_confirming_elsewhere_makes_a_wait_at_a_confirmation_due_and_nothing_else() -> None:
    seq = journey()
    waiting = sent_state(seq, "confirm")
    due = engine.on_confirmed(waiting, seq, now=T0 + H)
    assert due == replace(waiting, due_at=T0 + H)
    moved = engine.on_due(due, seq, now=T0 + H, confirmed=True)
    assert moved.state.step_id == "welcome" and moved.actions == ()  # no "please confirm"
    # Waiting at any other step, or about to send: unchanged.
    for state in (
        sent_state(seq, "welcome", visit=2),
        EnrollmentState(Status.active, "welcome", Phase.send, 2, T0 + D),
        EnrollmentState(Status.exited, "confirm", Phase.wait, 1, None),
    ):
        assert engine.on_confirmed(state, seq, now=T0 + H) == state


def test_a_restart_is_a_new_visit_of_the_first_step() -> None:
    seq = journey()
    left = EnrollmentState(Status.exited, "guide", Phase.wait, 4, None, T0, 1, ExitReason.timeout)
    again = engine.restart(left, seq, now=T0 + D)
    assert (again.status, again.step_id, again.phase, again.visit) == (
        Status.active,
        "confirm",
        Phase.send,
        5,
    )
    assert again.due_at == T0 + D and again.exit_reason is None


def test_postpone_only_moves_the_due_time() -> None:
    state = sent_state(journey(), "welcome", visit=2)
    later = engine.postpone(state, until=T0 + H, outcome="orphaned")
    assert later.state == replace(state, due_at=T0 + H) and later.actions == ()
    assert later.outcome == "orphaned"


def test_a_reordered_sequence_never_sends_a_step_already_answered() -> None:
    """Issue 8.9: reordering steps re-sent a completed step to a person. Moving on in the
    file's order skips the steps the person said yes to; an explicit goto still may visit."""
    a, b, c = (step(x, wait=D) for x in "abc")
    before = Sequence(id="s", name="S", sender="a@b.c", steps=(a, b, c))
    state = engine.start(before, now=T0, confirmed=True)
    for at in ("a", "b"):
        state = delivered(engine.on_due(state, before, now=T0, confirmed=True).state, before, T0)
        state = engine.on_yes(state, before, Yes(YesBy.click, at, state.visit), now=T0).state
    assert state.step_id == "c" and state.done == ("a", "b")
    after = Sequence(id="s", name="S", sender="a@b.c", steps=(a, c, b))  # b moved last
    state = delivered(engine.on_due(state, after, now=T0, confirmed=True).state, after, T0)
    d = engine.on_yes(state, after, Yes(YesBy.click, "c", state.visit), now=T0)
    assert d.state.status is Status.completed and d.state.done == ("a", "b", "c")
    looping = Sequence(
        id="s", name="S", sender="a@b.c", steps=(a, replace(b, on_timeout=Timeout("goto", "a")))
    )
    waiting = EnrollmentState(Status.active, "b", Phase.wait, 3, T0 + D, T0, done=("a",))
    back = engine.on_due(waiting, looping, now=T0 + D, confirmed=True)
    assert back.state.step_id == "a"  # the marketer's goto is followed, answered or not


def test_skipping_a_confirmation_skips_the_steps_answered_after_it_too() -> None:
    x, c, y = (
        step("x", wait=D, on_timeout=Timeout("goto", "c")),
        step("c", confirms=True),
        step("y"),
    )
    seq = Sequence(id="s", name="S", sender="a@b.c", steps=(x, c, y))
    waiting = EnrollmentState(Status.active, "x", Phase.wait, 4, T0 + D, T0, done=("y",))
    d = engine.on_due(waiting, seq, now=T0 + D, confirmed=True)
    # The goto lands on the confirmation (skipped: confirmed) and then on y (answered): done.
    assert d.state.status is Status.completed and d.actions == ()
