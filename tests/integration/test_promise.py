"""The promise where features meet (issue 19), on SQLite and PostgreSQL over real SMTP: a yes
counts as of the moment it was made (no reminder, timeout or softer ask while a click on the
ask waits to be judged); one outside event answers one step; an app's event ids are its own
per person and event name."""

from __future__ import annotations

import asyncio

import pytest
from support.db import EVENTS, MESSAGES, rows
from support.mail import visible_links
from support.paths import DATA
from support.web import CHROME
from support.world import PERSON, MakeWorld, World

from nurture.tracking import ClickRequest
from nurture.vocabulary import EnrollmentStatus

PROMISE = DATA / "promise"
# A click with one soft signal (no browser headers): in doubt, judged after the whole window.
IN_DOUBT = ClickRequest(method="GET", user_agent=CHROME, has_browser_headers=False, ip=PERSON.ip)


@pytest.fixture
def promise(make_world: MakeWorld) -> World:
    return make_world(sequences_dir=PROMISE / "sequences", templates_dir=PROMISE / "templates")


def subjects(world: World, email: str) -> list[str]:
    return [m.subject for m in world.smtp.to(email)]


def send_only(world: World) -> None:
    """The sender's lane alone (plan and send), with no click judged first: the order a
    judging lane running beside it may leave things in."""

    async def run() -> None:
        try:
            await world.dispatcher.run_once()
        finally:
            await world.dispatcher.transport.close()

    asyncio.run(run())


def click(world: World, url: str, request: ClickRequest) -> None:
    world.services.tracker.click(url.rsplit("/c/", 1)[1], now=world.clock.now(), request=request)


def judge(world: World) -> None:
    world.services.tracker.evaluate_clicks(world.clock.now())


def reading(world: World, email: str) -> str:
    """A person at the 'read' step (a 20 s reminder, a 30 s wait, then a softer ask); its
    link."""
    world.subscribe(email, "held", confirmed=True)
    world.tick()
    [mail] = world.smtp.to(email)
    assert mail.subject == "Read this"
    return visible_links(mail.part("html"))[0]


def test_a_yes_made_within_the_wait_counts_though_it_is_judged_after_it(
    promise: World,
) -> None:
    link = reading(promise, "ann@example.com")
    promise.clock.advance(seconds=16)
    click(promise, link, IN_DOUBT)  # judged 10 s later: after the reminder is due (20 s)
    promise.clock.advance(seconds=5)  # 21 s: the reminder is due, the click not judged yet
    send_only(promise)
    assert subjects(promise, "ann@example.com") == ["Read this"]
    promise.clock.advance(seconds=10)  # 31 s: past the wait (30 s) and the click's window
    send_only(promise)  # the sender first: it must not time the step out meanwhile
    assert subjects(promise, "ann@example.com") == ["Read this"]
    assert promise.state("ann@example.com", "held").step_id == "read"
    judge(promise)
    assert promise.state("ann@example.com", "held").step_id == "next"
    promise.tick()
    assert subjects(promise, "ann@example.com") == ["Read this", "Next"]
    [read] = rows(promise.services.store, MESSAGES, step_id="read")
    assert read.yes_by == "click"
    assert read.yes_seconds == 16  # the yes counts from its click, not its judgement


def test_a_click_judged_a_machine_only_delays_the_reminder(promise: World) -> None:
    link = reading(promise, "bob@example.com")
    promise.clock.advance(seconds=1)
    # Seconds after sending and no browser headers: two soft signals, a machine once judged.
    click(promise, link, IN_DOUBT)
    promise.clock.advance(seconds=20)  # the reminder is due; the click waits to be judged
    send_only(promise)
    assert subjects(promise, "bob@example.com") == ["Read this"]
    judge(promise)
    [event] = rows(promise.services.store, EVENTS, kind="click")
    assert event.verdict == "bot"
    promise.clock.advance(seconds=2)
    promise.tick()
    assert subjects(promise, "bob@example.com") == ["Read this", "Still there?"]
    promise.clock.advance(seconds=10)
    promise.tick()
    assert subjects(promise, "bob@example.com") == ["Read this", "Still there?", "A softer ask"]


def test_a_click_on_a_link_that_is_not_the_ask_holds_nothing(promise: World) -> None:
    reading(promise, "cat@example.com")
    [mail] = promise.smtp.to("cat@example.com")
    about = visible_links(mail.part("html"))[1]
    promise.clock.advance(seconds=16)
    click(promise, about, IN_DOUBT)  # no yes, judged or not: the reminder goes on time
    promise.clock.advance(seconds=5)
    send_only(promise)
    assert subjects(promise, "cat@example.com") == ["Read this", "Still there?"]


def pay(world: World, email: str, event: str, key: str) -> dict[str, object]:
    result = world.services.events.event(
        email=email, event=event, external_id=key, now=world.clock.now()
    )
    return {"advanced": result.advanced, "duplicate": result.duplicate}


def test_each_instalment_takes_its_own_payment(promise: World) -> None:
    """The seed's payment journey: a trial, then three steps each waiting for `payment`. One
    payment answers one step, so it takes three to finish."""
    promise.subscribe("pat@example.com", "instalments", confirmed=True)
    promise.tick()
    assert pay(promise, "pat@example.com", "trial_started", "t-1")["advanced"] == ["instalments"]
    promise.tick()
    for n in (1, 2, 3):
        assert subjects(promise, "pat@example.com")[-1] == f"Instalment {n} of 3"
        state = promise.state("pat@example.com", "instalments")
        assert state.status is EnrollmentStatus.active
        assert pay(promise, "pat@example.com", "payment", f"p-{n}")["advanced"] == ["instalments"]
        promise.clock.advance(hours=1)
        promise.tick()
    assert promise.state("pat@example.com", "instalments").status is EnrollmentStatus.completed
    assert subjects(promise, "pat@example.com") == [
        "Your $7.95 trial",
        "Instalment 1 of 3",
        "Instalment 2 of 3",
        "Instalment 3 of 3",
    ]


def test_an_event_reported_early_answers_one_later_step_only(promise: World) -> None:
    """A payment made before its step (nobody waited for it then) answers the first step
    that asks for it, and no other."""
    promise.subscribe("kim@example.com", "instalments", confirmed=True)
    promise.tick()
    assert pay(promise, "kim@example.com", "payment", "early")["advanced"] == []
    pay(promise, "kim@example.com", "trial_started", "t-1")
    promise.tick()
    # 'first' is answered by the early payment (its email not sent); 'second' waits for one.
    assert subjects(promise, "kim@example.com") == ["Your $7.95 trial", "Instalment 2 of 3"]
    state = promise.state("kim@example.com", "instalments")
    assert (state.step_id, state.status) == ("second", EnrollmentStatus.active)
    [skip] = rows(promise.services.store, EVENTS, kind="skipped")
    assert skip.detail["answered_by"] == "payment"


def test_an_event_id_is_the_apps_own_per_person_and_event_name(promise: World) -> None:
    for email in ("ann@example.com", "bob@example.com"):
        promise.subscribe(email, "instalments", confirmed=True)
    promise.tick()
    assert pay(promise, "ann@example.com", "trial_started", "42") == {
        "advanced": ["instalments"],
        "duplicate": False,
    }
    # Bob's event with the same id is Bob's, not a retry of Ann's.
    assert pay(promise, "bob@example.com", "trial_started", "42") == {
        "advanced": ["instalments"],
        "duplicate": False,
    }
    # Ann's app retrying the same event is one event.
    assert pay(promise, "ann@example.com", "trial_started", "42")["duplicate"] is True
    promise.tick()
    # The same id for another event name is another event (ids from two tables of the app).
    assert pay(promise, "ann@example.com", "payment", "42") == {
        "advanced": ["instalments"],
        "duplicate": False,
    }
    # A name may hold ':' (order:paid), so the key's separator is one no name holds.
    assert pay(promise, "ann@example.com", "order:paid", "42")["duplicate"] is False
    assert pay(promise, "ann@example.com", "order", "paid:42")["duplicate"] is False
    assert len(rows(promise.services.store, EVENTS, kind="event")) == 5


def test_a_reminder_queued_for_its_window_waits_for_a_yes_in_waiting(promise: World) -> None:
    """The reminder falls due at 05:00, outside the window, and waits in the queue for 09:00;
    the person clicks, in doubt, five seconds before it opens. The reminder goes nowhere
    until the click is judged, and then not at all."""
    promise.subscribe("dee@example.com", "windowed", confirmed=True)
    promise.tick()  # Monday 09:00
    [mail] = promise.smtp.to("dee@example.com")
    promise.clock.advance(hours=20)  # Tuesday 05:00: the reminder is decided, and queued
    send_only(promise)
    assert subjects(promise, "dee@example.com") == ["Read this"]
    promise.clock.advance(hours=4, seconds=-5)  # 08:59:55
    click(promise, visible_links(mail.part("html"))[0], IN_DOUBT)
    promise.clock.advance(seconds=5)  # 09:00: the window opens, the click is not judged yet
    send_only(promise)
    assert subjects(promise, "dee@example.com") == ["Read this"]
    promise.clock.advance(seconds=10)
    judge(promise)
    promise.clock.advance(seconds=2)
    send_only(promise)
    assert subjects(promise, "dee@example.com") == ["Read this", "Next"]
    [reminder] = [m for m in rows(promise.services.store, MESSAGES) if m.kind == "reminder1"]
    assert reminder.status == "cancelled"
