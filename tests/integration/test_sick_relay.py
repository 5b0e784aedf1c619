"""A sick relay, in this process: a fault-injecting SMTP server answers as broken servers do,
and nobody is suppressed for our faults, nobody gets mail after unsubscribing, and a slow or
dropped answer is not mail sent twice at once (issue 8, findings 4 to 6)."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

import pytest
from support.db import MESSAGES, rows
from support.faults import Fault, FaultyHandler
from support.world import MakeWorld, World

from nurture.vocabulary import EnrollmentStatus, ExitReason, SubscriberStatus

PEOPLE = [f"p{i}@example.com" for i in range(6)]


def world_with(make_world: MakeWorld, *faults: Fault, **settings: object) -> World:
    return make_world(FaultyHandler(faults=list(faults)), **settings)


def statuses(world: World) -> dict[str, tuple[str, str]]:
    out = {}
    with world.services.store.transaction() as tx:
        for email in PEOPLE:
            sub = tx.subscribers.by_email(email)
            if sub is not None:
                row = tx.enrollments.of(sub.id, "journey")
                assert row is not None
                out[email] = (sub.status.value, row.state.status.value)
    return out


def pause(world: World) -> object:
    with world.services.store.transaction() as tx:
        return tx.control.pause()


@pytest.mark.parametrize(
    "refusal",
    [
        "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org",
        "554 5.7.1 <p0@example.com>: Relay access denied",
        "530 5.7.0 Authentication required",
    ],
)
def test_a_refusal_of_us_pauses_sending_and_suppresses_nobody(
    make_world: MakeWorld, refusal: str
) -> None:
    """Finding 4: a block-listed IP or a broken relay at RCPT marked the whole list bounced."""
    world = world_with(make_world, Fault("rcpt", reply=refusal))
    for email in PEOPLE:
        world.subscribe(email, confirmed=True)
    world.tick()
    assert world.smtp.caught == []
    assert set(statuses(world).values()) == {("confirmed", "active")}
    found = pause(world)
    assert found is not None and "5.7" in found.reason  # type: ignore[attr-defined]
    # Nothing was the messages' fault: none counts an attempt, none failed.
    assert {(m.status, m.attempts) for m in rows(world.services.store, MESSAGES)} <= {("queued", 0)}
    world.smtp.faults.clear()  # type: ignore[attr-defined]
    world.clock.advance(minutes=1)
    world.tick()  # still paused: nothing goes
    assert world.smtp.caught == []
    world.clock.advance(minutes=5)  # the pause has run out: the next tick tries, and succeeds
    world.tick()
    assert sorted(c.recipient for c in world.smtp.caught) == sorted(PEOPLE)
    assert pause(world) is None


def test_a_message_refused_as_spam_fails_alone_and_the_person_stays(
    make_world: MakeWorld,
) -> None:
    """Finding 4: a spam rejection at DATA ended the person's sequence and... the person stays
    subscribed; only that email fails, and says why."""
    spam = Fault("data", reply="550 5.7.1 Message rejected as spam", recipient=PEOPLE[0])
    world = world_with(make_world, spam)
    for email in PEOPLE[:3]:
        world.subscribe(email, confirmed=True)
    world.tick()
    assert sorted(c.recipient for c in world.smtp.caught) == sorted(PEOPLE[1:3])
    with world.services.store.transaction() as tx:
        sub = tx.subscribers.by_email(PEOPLE[0])
        assert sub is not None and sub.status is SubscriberStatus.confirmed
    state = world.state(PEOPLE[0])
    assert state.status is EnrollmentStatus.exited and state.exit_reason is ExitReason.failed
    [failed] = [m for m in rows(world.services.store, MESSAGES) if m.status == "failed"]
    assert "rejected as spam" in failed.last_error
    assert pause(world) is None


def test_the_breaker_pauses_when_many_in_a_row_are_refused_the_same_way(
    make_world: MakeWorld,
) -> None:
    """A relay that answers "no such user" for everyone must not bounce a whole list: after
    NURTURE_BREAKER_FAILURES identical refusals in a row (3 here), sending pauses."""
    unknown = Fault("rcpt", reply="550 5.1.1 <someone@example.com>: Recipient address rejected")
    world = world_with(make_world, unknown, smtp_connections=1, breaker_failures=3)
    for email in PEOPLE:
        world.subscribe(email, confirmed=True)
    world.tick()
    bounced = [e for e, (s, _) in statuses(world).items() if s == "bounced"]
    assert len(bounced) == 2  # the third identical refusal tripped the breaker
    assert pause(world) is not None
    assert [s for s, _ in statuses(world).values()].count("confirmed") == 4


def test_an_unsubscribe_during_a_batch_gets_nothing_after_it(make_world: MakeWorld) -> None:
    """Finding 5: people who unsubscribed while the batch was on the wire still got their
    email seconds later, and their rows ended 'sent'. The hand-off is the last check."""
    slow = Fault("data", delay=0.3)
    world = world_with(make_world, slow, smtp_connections=1)
    for email in PEOPLE:
        world.subscribe(email, confirmed=True)
    leaving = PEOPLE[4:]
    done = threading.Event()

    def on_accepted(count: int, _: object) -> None:
        if count == 2:  # message 3 is on the wire (handed off), 4 is about to be
            for email in leaving:
                world.services.subscriptions.unsubscribe_address(email, now=world.clock.now())
            done.set()

    world.smtp.on_accepted = on_accepted  # type: ignore[attr-defined]
    world.tick()
    assert done.is_set()
    got = {c.recipient for c in world.smtp.caught}
    assert not got & set(leaving)
    assert set(PEOPLE[:3]) <= got
    by_person = {m.subscriber_id: m.status for m in rows(world.services.store, MESSAGES)}
    for email in leaving:
        assert by_person[world.subscriber_id(email)] == "cancelled"


def test_a_slow_final_dot_is_waited_for_not_sent_again(make_world: MakeWorld) -> None:
    """Finding 6: a final dot answered after 90 s was resent at the 30 s command timeout. The
    end of DATA waits NURTURE_SMTP_DATA_TIMEOUT (RFC 5321: ten minutes)."""
    world = world_with(make_world, Fault("data", delay=2.0), smtp_timeout=0.5)
    world.subscribe(PEOPLE[0], confirmed=True)
    world.tick()
    [(status, attempts)] = [(m.status, m.attempts) for m in rows(world.services.store, MESSAGES)]
    assert (status, attempts) == ("sent", 1)
    assert len(world.smtp.caught) == 1


@pytest.mark.parametrize(
    "how",
    [{"drop": True}, {"delay": 3.0}],
    ids=["dropped-after-the-data", "no-answer-to-the-final-dot"],
)
def test_an_unknown_outcome_is_resent_once_later_with_the_same_message_id(
    make_world: MakeWorld, how: dict[str, object]
) -> None:
    """Finding 6: a connection dropped right after the data was resent 0.01 s later. No
    known outcome means: resent once, after NURTURE_UNKNOWN_RETRY_SECONDS, same Message-ID;
    a second unknown outcome is taken as delivered, never a third copy."""
    fault = Fault("data", times=2, **how)  # type: ignore[arg-type]
    world = world_with(make_world, fault, smtp_data_timeout=1, unknown_retry_seconds=600)
    handler = world.smtp
    world.subscribe(PEOPLE[0], confirmed=True)
    world.tick()
    [message] = rows(world.services.store, MESSAGES)
    assert (message.status, message.unknown_outcomes) == ("queued", 1)
    tried = len(handler.dropped) + len(handler.caught)  # type: ignore[attr-defined]
    world.tick()  # not at once
    [message] = rows(world.services.store, MESSAGES)
    assert (message.status, message.unknown_outcomes) == ("queued", 1)
    assert message.next_attempt_at == world.clock.now() + timedelta(seconds=600)
    assert len(handler.dropped) + len(handler.caught) == tried  # type: ignore[attr-defined]
    world.clock.advance(seconds=600)
    world.tick()  # the one resend: no answer again
    [message] = rows(world.services.store, MESSAGES)
    assert (message.status, message.unknown_outcomes) == ("sent", 1)
    assert world.state(PEOPLE[0]).step_sent_at == world.clock.now()  # the step's clock runs
    world.clock.advance(days=1)
    world.tick()
    first = world.services.signer.message_id(message.id, "acme.example")
    copies = handler.dropped + handler.caught  # type: ignore[attr-defined]
    ids = Counter(c.message["Message-ID"] for c in copies if c.subject.startswith("Read this"))
    # At most the first attempt and the one resend got through, with the same Message-ID.
    assert set(ids) <= {first} and sum(ids.values()) <= 2
    if fault.drop:
        assert ids == {first: 2}  # the server had both, and dropped the line each time


def test_a_pause_shows_in_healthz_and_status_and_resume_sends_at_once(
    make_world: MakeWorld, tmp_path: object
) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    import httpx
    from support.paths import DATA
    from support.web import ServedApp

    from nurture.web.app import create_app

    world = world_with(make_world, Fault("rcpt", reply="554 5.7.1 Relay access denied"))
    world.subscribe(PEOPLE[0], confirmed=True)
    world.tick()
    with ServedApp(create_app(world.services)) as base:
        r = httpx.get(base + "/healthz")
    assert r.status_code == 503
    assert r.json()["sending"]["paused"] and "Relay access denied" in r.json()["sending"]["reason"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_")}
    env.update(
        NURTURE_DATABASE_URL=world.services.settings.database_url,
        NURTURE_SEQUENCES_DIR=str(DATA / "sequences"),
        NURTURE_TEMPLATES_DIR=str(DATA / "templates"),
    )
    nurture = Path(sys.executable).parent / "nurture"

    def cli(*args: str) -> str:
        done = subprocess.run(
            [str(nurture), *args], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "SENDING PAUSED" in cli("status") and "Relay access denied" in cli("status")
    world.smtp.faults.clear()  # type: ignore[attr-defined]
    ended = world.dispatcher.handover.resume()  # what `nurture resume` does, on the test's clock
    assert ended is not None and "Relay access denied" in ended.reason
    world.tick()  # at once, not when the pause would have run out
    assert [c.recipient for c in world.smtp.caught] == [PEOPLE[0]]
    assert "PAUSED" not in cli("status")
    assert "sending was not paused" in cli("resume")


def test_a_success_already_on_the_wire_does_not_end_the_pause_just_begun(
    make_world: MakeWorld,
) -> None:
    """The relay refuses us on one connection while another's message, handed off before,
    is accepted a moment later: that success proves nothing about the refusal; the pause
    stands (and healthz says so) until it runs out or someone resumes."""
    refused = Fault("rcpt", reply="554 5.7.1 Relay access denied", recipient=PEOPLE[0])
    slow = Fault("data", delay=0.3)
    world = world_with(make_world, refused, slow, smtp_connections=2)
    for email in PEOPLE[:2]:
        world.subscribe(email, confirmed=True)
    world.tick()
    assert [c.recipient for c in world.smtp.caught] == [PEOPLE[1]]
    assert pause(world) is not None


def test_a_busy_relay_before_any_recipient_never_runs_out_a_persons_attempts(
    make_world: MakeWorld,
) -> None:
    """A 4xx at MAIL FROM is the relay's, not the recipient's: it is retried for as long as
    it lasts, never given up on as if the recipient kept refusing."""
    busy = Fault("mail", reply="451 4.3.2 System not accepting network messages")
    world = world_with(make_world, busy, retry_max_attempts=1)
    world.subscribe(PEOPLE[0], confirmed=True)
    for _ in range(3):
        world.tick()
        world.clock.advance(hours=2)
    [message] = rows(world.services.store, MESSAGES)
    assert message.status == "queued" and message.attempts >= 2
    world.smtp.faults.clear()  # type: ignore[attr-defined]
    world.tick()
    assert [c.recipient for c in world.smtp.caught] == [PEOPLE[0]]


def test_writes_that_fail_are_tried_again_and_a_batch_they_abandon_is_settled(
    make_world: MakeWorld,
) -> None:
    """The database refuses the ledger's writes for a while (locked, connection lost): a
    write is tried again; a batch whose writes keep failing leaves nothing stuck 'sending'
    once the database answers again (the next tick settles it)."""
    from sqlalchemy import event
    from sqlalchemy.exc import OperationalError

    world = world_with(make_world, smtp_connections=2)
    for email in PEOPLE:
        world.subscribe(email, confirmed=True)
    failing = {"left": 2}
    refused = ["SET handed_at"]  # the hand-off's write
    for_good = False

    def refuse(conn, cursor, statement, params, context, executemany):  # type: ignore[no-untyped-def]
        if any(r in statement for r in refused) and failing["left"] > 0:
            failing["left"] -= 1
            if for_good:  # once a hand-off is refused, so is putting the batch back
                refused.append("UPDATE messages")
            raise OperationalError(statement, params, Exception("database is locked"))

    database = world.services.store.database
    event.listen(database, "before_cursor_execute", refuse)
    try:
        world.tick()  # two failed writes, tried again: everyone gets their email
        assert sorted(c.recipient for c in world.smtp.caught) == sorted(PEOPLE)
        more = [f"q{i}@example.com" for i in range(4)]
        for email in more:
            world.subscribe(email, confirmed=True)
        failing["left"] = 10**6  # now the database refuses for good
        for_good = True
        with pytest.raises(OperationalError):
            world.tick()
        assert world.dispatcher.unsettled  # not even the batch could be put back
        assert "sending" in [m.status for m in rows(world.services.store, MESSAGES)]
        failing["left"] = 0  # ... and comes back
        world.tick()  # the next tick settles what the failed batch left first
        assert not world.dispatcher.unsettled
        assert [m.status for m in rows(world.services.store, MESSAGES)].count("sending") == 0
        world.clock.advance(seconds=world.services.settings.unknown_retry_seconds)
        world.tick()
        got = Counter(c.recipient for c in world.smtp.caught)
        assert set(got) == set(PEOPLE + more) and max(got.values()) <= 2
    finally:
        event.remove(database, "before_cursor_execute", refuse)
