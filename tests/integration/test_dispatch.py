"""Claim, render, record and send against a real database and a real SMTP server."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from typing import Any

import pytest
from support.db import EVENTS, MESSAGES, rows
from support.mail import visible_links
from support.smtp import Caught
from support.world import MakeWorld, World

from nurture.errors import SubscribeError
from nurture.tokens import TokenKind
from nurture.vocabulary import EnrollmentStatus as Status
from nurture.vocabulary import EventKind, ExitReason, Phase, SubscriberStatus

TRACKED = re.compile(r'href="(http://nurture\.test/c/[^"]+)"')


def links(mail: Caught) -> list[str]:
    return visible_links(mail.part("html"))


def messages(world: World, **where: object) -> list[tuple[str, str, str, int]]:
    return [
        (m.step_id, m.kind, m.status, m.attempts)
        for m in rows(world.services.store, MESSAGES, **where)
    ]


def test_first_email_is_the_confirmation_with_every_header(world: World) -> None:
    world.subscribe("ann@example.com")
    assert world.tick() == (1, 1)
    [mail] = world.smtp.to("ann@example.com")
    msg = mail.message
    assert mail.sender == "ada@acme.example"
    assert msg["Subject"] == "Confirm, Ann"
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    unsubscribe = msg["List-Unsubscribe"]
    assert re.fullmatch(r"<http://nurture\.test/u/[A-Za-z0-9_-]+>", unsubscribe)
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    [(message_row_id,)] = [(m.id,) for m in _rows(world)]
    signer = world.services.signer
    assert signer.read_message_id(msg["Message-ID"]) == message_row_id
    assert msg["Reply-To"] is None  # no reply address configured
    # The text part carries the same tracked links as the HTML part.
    for url in links(mail):
        assert url in mail.part("plain")


def _rows(world: World) -> list[Any]:
    return rows(world.services.store, MESSAGES)


def test_click_journey_to_completion(world: World) -> None:
    confirm = world.first_email("bo@example.com")
    confirm_link, about_link = links(confirm)
    # A link that is not the ask is recorded but does not confirm.
    assert world.click(about_link) == "https://acme.example/about?a=1&b=2"
    assert world.state("bo@example.com").step_id == "confirm"
    assert world.click(confirm_link) == "http://nurture.test/confirmed"
    assert world.state("bo@example.com").step_id == "read"
    world.tick()
    read = world.smtp.to("bo@example.com")[-1]
    assert read.subject == "Read this, Bo"
    world.click(links(read)[0])
    world.tick()
    ask = world.smtp.to("bo@example.com")[-1]
    assert ask.subject == "Tell me by reply"
    world.click(links(ask)[0])  # the ask wants a reply: a click does not advance
    world.tick()
    assert len(world.smtp.to("bo@example.com")) == 3
    world.clock.advance(days=1)
    world.tick()  # timeout: next -> offer
    offer = world.smtp.to("bo@example.com")[-1]
    assert offer.subject == "The offer"
    world.click(links(offer)[0])
    state = world.state("bo@example.com")
    assert state.status is Status.completed
    world.clock.advance(days=30)
    world.tick()
    assert [m.subject for m in world.smtp.to("bo@example.com")] == [
        "Confirm, Bo",
        "Read this, Bo",
        "Tell me by reply",
        "The offer",
    ]


def test_silence_gets_the_reminder_then_leaves_with_nothing_more(world: World) -> None:
    world.subscribe("cy@example.com")
    world.tick()
    world.clock.advance(seconds=3)
    world.tick()
    world.clock.advance(seconds=3)
    world.tick()
    world.clock.advance(days=10)
    world.tick()
    assert [m.subject for m in world.smtp.to("cy@example.com")] == [
        "Confirm, Cy",
        "Reminder: please confirm",
    ]
    state = world.state("cy@example.com")
    assert state.status is Status.exited and state.exit_reason is ExitReason.timeout


def test_subscribing_twice_enrolls_once(world: World) -> None:
    first = world.subscribe("di@example.com")
    second = world.subscribe("di@example.com", fields={"first_name": "Diana"})
    assert first.created and not second.created
    assert first.enrollment_id == second.enrollment_id
    world.tick()
    assert len(world.smtp.to("di@example.com")) == 1
    assert world.smtp.to("di@example.com")[0].subject == "Confirm, Diana"  # fields updated


@pytest.mark.parametrize("bad", ["not-an-email", "a@b", "", "ann@@example.com", None])
def test_a_malformed_address_is_refused(world: World, bad: object) -> None:
    with pytest.raises(SubscribeError) as err:
        world.subscribe(bad)
    assert err.value.status == 400


def test_unsubscribe_stops_everything_for_good(world: World) -> None:
    confirm = world.first_email("ed@example.com")
    token = confirm.message["List-Unsubscribe"].strip("<>").rsplit("/u/", 1)[1]
    subscriptions = world.services.subscriptions
    for _ in range(2):
        address = subscriptions.unsubscribe_token(token, now=world.clock.now(), how="one-click")
        assert address == "ed@example.com"
    state = world.state("ed@example.com")
    assert state.status is Status.exited and state.exit_reason is ExitReason.unsubscribed
    # A click on the old confirmation link is recorded only.
    world.click(links(confirm)[0])
    world.clock.advance(days=30)
    world.tick()
    assert len(world.smtp.to("ed@example.com")) == 1
    with pytest.raises(SubscribeError) as err:
        world.subscribe("ed@example.com")
    assert err.value.status == 409
    kinds = [e.kind for e in rows(world.services.store, EVENTS)]
    assert kinds.count("unsubscribe") == 1 and "click" in kinds


def test_unsubscribe_cancels_mail_that_was_queued_but_not_sent(world: World) -> None:
    result = world.subscribe("fay@example.com")
    # Decided and recorded (claimed for sending), then the worker stops before sending.
    asyncio.run(asyncio.to_thread(world.dispatcher.plan, world.clock.now()))
    assert messages(world) == [("confirm", "step", "sending", 1)]
    world.services.subscriptions.unsubscribe(result.subscriber_id, now=world.clock.now())
    assert messages(world) == [("confirm", "step", "cancelled", 1)]
    world.dispatcher.handover.unregister()  # its worker is gone: its claims go back
    world.tick()
    assert world.smtp.to("fay@example.com") == []
    assert messages(world) == [("confirm", "step", "cancelled", 1)]


def test_goal_event_exits_as_converted(world: World) -> None:
    world.subscribe("gus@example.com", confirmed=True)
    world.tick()
    goal = world.services.events.goal
    assert goal(email="gus@example.com", event="newsletter", now=world.clock.now()) == []
    # (not a goal of this sequence)
    assert goal(email="GUS@example.com", event="purchase", now=world.clock.now()) == ["journey"]
    state = world.state("gus@example.com")
    assert state.status is Status.exited and state.exit_reason is ExitReason.converted
    world.clock.advance(days=5)
    world.tick()
    assert len(world.smtp.to("gus@example.com")) == 1


def test_a_4xx_is_retried_with_backoff_and_nothing_is_lost(world: World) -> None:
    world.smtp.refuse["hal@example.com"] = (451, "4.7.1 try again later")
    # Confirmed already: their first email is the "read" step, which waits a day.
    world.subscribe("hal@example.com", confirmed=True)
    world.subscribe("ivy@example.com", confirmed=True)
    world.tick()
    assert world.smtp.to("hal@example.com") == []
    assert len(world.smtp.to("ivy@example.com")) == 1
    [(step, _, status, attempts)] = messages(world, subscriber_id=_sub(world, "hal@example.com"))
    assert (step, status, attempts) == ("read", "queued", 1)
    world.tick()  # not yet due again: backoff is at least half the 60 s base
    assert world.smtp.to("hal@example.com") == []
    del world.smtp.refuse["hal@example.com"]
    world.clock.advance(seconds=61)
    world.tick()
    assert len(world.smtp.to("hal@example.com")) == 1
    assert len(world.smtp.to("ivy@example.com")) == 1
    assert world.state("hal@example.com").phase is Phase.wait


def test_a_step_never_delivered_never_times_out_and_its_clock_starts_at_delivery(
    world: World,
) -> None:
    """Issue 8.3: the step's clock started when the email was planned, so a relay down for
    longer than the step's wait timed the person out (or moved them on) before they ever got
    the email. The wait and the reminders count from delivery."""
    world.smtp.refuse["kim@example.com"] = (451, "4.7.1 try again later")
    world.subscribe("kim@example.com")  # the confirmation reminds at 3 s, exits at 6 s
    world.tick()
    for _ in range(3):  # far longer than the step's wait
        world.clock.advance(seconds=61)
        world.tick()
    assert world.smtp.to("kim@example.com") == []
    assert world.state("kim@example.com").status is Status.active
    del world.smtp.refuse["kim@example.com"]
    world.clock.advance(hours=2)
    world.tick()
    delivered_at = world.clock.now()
    [confirm] = world.smtp.to("kim@example.com")
    state = world.state("kim@example.com")
    assert state.step_sent_at == delivered_at and state.due_at == delivered_at + timedelta(
        seconds=3
    )
    world.clock.advance(seconds=3)
    world.tick()
    assert [m.subject for m in world.smtp.to("kim@example.com")] == [
        "Confirm, Kim",
        "Reminder: please confirm",
    ]
    world.clock.advance(seconds=3)
    world.tick()
    assert world.state("kim@example.com").exit_reason is ExitReason.timeout


def test_a_reminder_retried_after_the_person_moved_on_is_not_sent(world: World) -> None:
    world.subscribe("kip@example.com")
    world.tick()
    world.smtp.refuse["kip@example.com"] = (451, "4.7.1 try again later")
    world.clock.advance(seconds=3)
    world.tick()  # the reminder is refused for now
    [confirm] = world.smtp.to("kip@example.com")
    del world.smtp.refuse["kip@example.com"]
    world.click(links(confirm)[0])  # meanwhile the person confirms
    world.clock.advance(minutes=5)
    world.tick()
    assert [m.subject for m in world.smtp.to("kip@example.com")] == [
        "Confirm, Kip",
        "Read this, Kip",
    ]
    assert messages(world) == [
        ("confirm", "step", "sent", 1),
        ("confirm", "reminder1", "cancelled", 1),
        ("read", "step", "sent", 1),
    ]


def _sub(world: World, email: str) -> int:
    return world.subscriber_id(email)


def test_a_5xx_for_the_recipient_bounces_and_the_batch_goes_on(world: World) -> None:
    world.smtp.refuse["jo@example.com"] = (550, "5.1.1 no such user")
    for name in ("ken", "jo", "lu"):
        world.subscribe(f"{name}@example.com", confirmed=True)
    world.tick()
    assert len(world.smtp.to("ken@example.com")) == 1
    assert len(world.smtp.to("lu@example.com")) == 1
    assert world.smtp.to("jo@example.com") == []
    state = world.state("jo@example.com")
    assert state.status is Status.exited and state.exit_reason is ExitReason.bounced
    with world.services.store.transaction() as tx:
        assert tx.subscribers.by_email("jo@example.com").status == "bounced"  # type: ignore[union-attr]
    world.clock.advance(days=3)
    world.tick()
    assert world.smtp.to("jo@example.com") == []


def test_a_dead_smtp_server_means_retries_not_lost_emails(world: World) -> None:
    world.subscribe("max@example.com", confirmed=True)  # "read" waits a day
    world.server.stop()
    world.tick()
    [(_, _, status, attempts)] = messages(world)
    assert (status, attempts) == ("queued", 1)
    # Far more attempts than the recipient limit: an unreachable server is never given up on.
    for _ in range(world.services.settings.retry_max_attempts + 3):
        world.clock.advance(hours=1)
        world.tick()
    [(_, _, status, attempts)] = messages(world)
    assert status == "queued" and attempts > world.services.settings.retry_max_attempts
    from nurture.mail.catcher import SmtpServerThread

    world.server = SmtpServerThread(world.smtp, port=world.server.port).start()
    world.clock.advance(hours=1)
    world.tick()
    assert len(world.smtp.to("max@example.com")) == 1
    assert messages(world)[0][2] == "sent"


@pytest.mark.parametrize("handed", [False, True], ids=["claimed", "on-the-wire"])
def test_a_worker_that_died_mid_send_is_taken_over_once_with_the_same_message_id(
    world: World, handed: bool
) -> None:
    """Its heartbeat stops; within the worker timeout another worker takes its mail over, and
    sends each message once more, with the same Message-ID (a message it had handed to SMTP
    may have arrived: the receiving side sees the same Message-ID twice at worst). Silence is
    measured on the database's clock: the dead worker's last heartbeat is set back on it."""
    world.subscribe("ned@example.com", confirmed=True)  # "read" waits a day
    dead, alive = world.new_dispatcher(), world.dispatcher
    dead.handover.register()
    alive.handover.register()
    _, claimed = asyncio.run(asyncio.to_thread(dead.plan, world.clock.now()))
    assert len(claimed) == 1
    if handed:
        with world.services.store.transaction() as tx:
            tx.outbox.hand_off([claimed[0].id], worker=dead.worker, now=world.clock.now())
    timeout = timedelta(seconds=world.services.settings.worker_timeout_seconds)
    silent_for(world, dead.worker, timeout / 2)
    assert alive.handover.heartbeat(timeout=timeout) == ([], 0)  # not silent long enough yet
    world.tick()
    assert world.smtp.to("ned@example.com") == []  # it is the other worker's
    silent_for(world, dead.worker, timeout * 1.5)
    assert alive.handover.heartbeat(timeout=timeout) == ([dead.worker], 1)
    world.tick()
    [mail] = world.smtp.to("ned@example.com")
    assert mail.message["Message-ID"] == world.services.signer.message_id(
        claimed[0].id, "acme.example"
    )
    world.clock.advance(timeout * 2)
    alive.handover.heartbeat(timeout=timeout)
    world.tick()
    assert len(world.smtp.to("ned@example.com")) == 1
    # A message the gone worker never started was not attempted: its attempt is taken back.
    assert messages(world) == [("read", "step", "sent", 2 if handed else 1)]


def silent_for(world: World, worker: str, span: timedelta) -> None:
    """``worker``'s last heartbeat was ``span`` ago, on the database's clock."""
    with world.services.store.transaction() as tx:
        last = tx.workers.database_now() - span
        assert tx.workers.heartbeat(worker, now=last)


def test_two_dispatchers_never_send_the_same_step_twice(world: World) -> None:
    emails = [f"p{i}@example.com" for i in range(60)]
    for address in emails:
        world.subscribe(address, confirmed=True)
    first, second = world.dispatcher, world.new_dispatcher()

    async def both() -> None:
        try:
            await asyncio.gather(first.run_once(), second.run_once(), first.run_once())
        finally:
            await first.transport.close()
            await second.transport.close()

    asyncio.run(both())
    got = sorted(c.recipient for c in world.smtp.caught)
    assert got == sorted(emails)
    ids = [c.message["Message-ID"] for c in world.smtp.caught]
    assert len(set(ids)) == len(ids)


def test_held_enrollment_waits_for_confirmation_elsewhere(world: World) -> None:
    # A pending subscriber in a sequence without a confirmation step gets nothing until
    # they confirm through another sequence.
    world.subscribe("oz@example.com", sequence="noconfirm")
    world.tick()
    assert world.smtp.to("oz@example.com") == []
    assert world.state("oz@example.com", "noconfirm").status is Status.held
    confirm = world.first_email("oz@example.com")
    world.click(links(confirm)[0])
    world.tick()
    subjects = sorted(m.subject for m in world.smtp.to("oz@example.com"))
    assert subjects == ["Confirm, Oz", "News for you", "Read this, Oz"]


def test_reply_token_and_message_id(world: World) -> None:
    world.subscribe("pia@example.com")
    world.tick()
    row = _rows(world)[0]
    reply_token = world.services.signer.make(TokenKind.reply, row.id)
    assert reply_token == reply_token.lower()


def test_confirming_one_sequence_moves_on_another_waiting_at_its_confirmation(world: World) -> None:
    world.subscribe("una@example.com")
    world.subscribe("una@example.com", sequence="second")
    world.tick()
    first = next(m for m in world.smtp.to("una@example.com") if m.subject == "Confirm, Una")
    world.click(links(first)[0])
    world.tick()
    world.clock.advance(seconds=5)  # past the second sequence's reminder time
    world.tick()
    subjects = sorted(m.subject for m in world.smtp.to("una@example.com"))
    assert subjects == [
        "Confirm for the second list",
        "Confirm, Una",
        "Read this, Una",
        "Second list news",
    ]
    assert world.state("una@example.com", "second").step_id == "news"


def test_mail_not_started_when_the_worker_stops_goes_back_due_at_once(world: World) -> None:
    """A stopping worker starts no new message; what it claimed goes back to the queue, its
    attempt not counted, due at once for the next worker."""
    for name in ("vic", "val"):
        world.subscribe(f"{name}@example.com", confirmed=True)
    world.dispatcher.stopping.set()
    asyncio.run(world.dispatcher._send(world.dispatcher.plan(world.clock.now())[1]))
    assert world.smtp.caught == []
    assert messages(world) == [("read", "step", "queued", 0)] * 2
    world.dispatcher.stopping.clear()
    world.tick()  # no backoff: due at once
    assert len(world.smtp.caught) == 2
    assert messages(world) == [("read", "step", "sent", 1)] * 2


def test_confirming_keeps_the_delay_of_the_next_step(world: World) -> None:
    """B1: confirming re-read the enrollments through the ORM after a Core update in the same
    transaction; a stale object left in the session skipped the next step's delay."""
    confirm = world.first_email("del@example.com", sequence="delayed")
    world.click(links(confirm)[0])
    confirmed_at = world.clock.now()
    state = world.state("del@example.com", "delayed")
    assert (state.step_id, state.phase) == ("later", Phase.send)
    assert state.due_at == confirmed_at + timedelta(minutes=10)
    world.tick()
    assert len(world.smtp.to("del@example.com")) == 1
    world.clock.advance(minutes=10)
    world.tick()
    assert [m.subject for m in world.smtp.to("del@example.com")] == [
        "Confirm the delayed list",
        "Ten minutes later",
    ]


def test_an_unsubscribe_never_hides_a_bounce(world: World) -> None:
    """B4: unsubscribing someone who bounced overwrote 'bounced' with 'unsubscribed'."""
    world.smtp.refuse["zed@example.com"] = (550, "5.1.1 no such user")
    result = world.subscribe("zed@example.com", confirmed=True)
    world.tick()
    subscriptions = world.services.subscriptions
    assert not subscriptions.unsubscribe(result.subscriber_id, now=world.clock.now())
    assert not subscriptions.unsubscribe_address("zed@example.com", now=world.clock.now())
    with world.services.store.transaction() as tx:
        sub = tx.subscribers.get(result.subscriber_id)
        assert sub.status is SubscriberStatus.bounced
        assert tx.events.of_subscriber(sub.id, kind=EventKind.unsubscribe) == []
    assert world.state("zed@example.com").exit_reason is ExitReason.bounced


def test_an_email_too_large_for_one_person_fails_alone(
    make_world: MakeWorld, tmp_path: Any
) -> None:
    """Issue 8.8: a template that loops produced a 41.6 MB email that was sent; a larger loop
    hung the rendering and stopped all sending. Past the bounds that email fails, with the
    reason, and the batch goes on."""
    templates, sequences = tmp_path / "t", tmp_path / "s"
    templates.mkdir()
    sequences.mkdir()
    (templates / "big.html").write_text(
        "<p>{% for c in subscriber.first_name %}{% for i in range(1000) %}xxxxxxxxxx"
        "{% endfor %}{% endfor %}</p>\n"
    )
    (sequences / "big.yaml").write_text(
        'id: big\nname: Big\nfrom: "Ada <ada@acme.example>"\nconfirmed_elsewhere: true\nsteps:\n'
        "  - id: one\n    subject: Hi\n    template: big.html\n    wait: 1d\n"
    )
    world = make_world(templates_dir=templates, sequences_dir=sequences)
    world.subscribe("long@example.com", "big", fields={"first_name": "L" * 300}, confirmed=True)
    world.subscribe("short@example.com", "big", fields={"first_name": "Sam"}, confirmed=True)
    world.tick()
    assert [c.recipient for c in world.smtp.caught] == ["short@example.com"]
    [failed] = [m for m in rows(world.services.store, MESSAGES) if m.status == "failed"]
    assert "cannot render: RenderLimit: the email would be larger than 2048 KiB" in (
        failed.last_error
    )
    assert world.state("long@example.com", "big").exit_reason is ExitReason.failed
