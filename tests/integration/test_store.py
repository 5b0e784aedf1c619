"""The store's contract, one suite run on SQLite and on PostgreSQL (as APScheduler runs one
suite over every data store): what each table family's queries promise, whatever the
database underneath."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, timedelta

import pytest
from support.clock import T0
from support.db import MESSAGES, rows

from nurture.db.connect import connect_database
from nurture.db.messages import NewMessage
from nurture.db.store import Store, Tx
from nurture.engine import EnrollmentState
from nurture.vocabulary import (
    EnrollmentStatus,
    EventKind,
    ExitReason,
    InboundSource,
    InboundStatus,
    Link,
    MessageKind,
    MessageStatus,
    Phase,
    SubscriberStatus,
    Verdict,
)

M = timedelta(minutes=1)


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    s = Store(connect_database(database_url))
    yield s
    s.dispose()


def person(tx: Tx, email: str = "ann@example.com") -> int:
    return tx.subscribers.create(
        email, {"first_name": "Ann"}, status=SubscriberStatus.pending, now=T0
    ).id


def due(at: object = T0, step: str = "confirm") -> EnrollmentState:
    return EnrollmentState(EnrollmentStatus.active, step, Phase.send, 1, at)  # type: ignore[arg-type]


def enrolled(tx: Tx, email: str, *, at: object = T0, sequence: str = "journey") -> tuple[int, int]:
    sub = person(tx, email)
    enrollment = tx.enrollments.create(sub, sequence, due(at), now=T0)
    assert enrollment is not None
    return sub, enrollment


def message(sub: int, enrollment: int, kind: MessageKind = MessageKind.STEP) -> NewMessage:
    return NewMessage(enrollment, sub, "journey", "confirm", 1, kind)


# -- subscribers ---------------------------------------------------------------------------


def test_subscribers(store: Store) -> None:
    with store.transaction() as tx:
        made = tx.subscribers.create(
            "ann@example.com", {"first_name": "Ann"}, status=SubscriberStatus.pending, now=T0
        )
        # The same address again (a form posted twice): the one already there, unchanged.
        again = tx.subscribers.create(
            "ann@example.com", {"first_name": "X"}, status=SubscriberStatus.confirmed, now=T0
        )
        assert again == made and again.status is SubscriberStatus.pending
        tx.subscribers.merge_fields(made.id, {"city": "Lyon"})
        tx.subscribers.merge_fields(made.id, {})
        assert tx.subscribers.get(made.id).fields == {"first_name": "Ann", "city": "Lyon"}
        assert tx.subscribers.by_email("nobody@example.com") is None
        other = person(tx, "bob@example.com")
        tx.subscribers.set_status(made.id, SubscriberStatus.confirmed, now=T0 + M)
        assert tx.subscribers.confirmed_among([made.id, other]) == {made.id}
        tx.subscribers.set_status(other, SubscriberStatus.bounced, now=T0 + 2 * M)
    with store.database.connect() as conn:
        from sqlalchemy import select

        from nurture.db.models import SUBSCRIBERS

        found = {
            r.email: (r.status, r.confirmed_at, r.left_at)
            for r in conn.execute(select(SUBSCRIBERS))
        }
    assert found == {
        "ann@example.com": ("confirmed", T0 + M, None),
        "bob@example.com": ("bounced", None, T0 + 2 * M),
    }


# -- enrollments ---------------------------------------------------------------------------


def test_one_enrollment_per_person_and_sequence(store: Store) -> None:
    with store.transaction() as tx:
        sub, first = enrolled(tx, "ann@example.com")
        assert tx.enrollments.create(sub, "journey", due(), now=T0) is None
        second = tx.enrollments.create(sub, "second", due(), now=T0)
        assert second is not None and second != first
        assert [r.sequence_id for r in tx.enrollments.of_subscriber(sub)] == ["journey", "second"]
        row = tx.enrollments.of(sub, "journey")
        assert row is not None and row.id == first
        assert row.subscriber_status is SubscriberStatus.pending
        assert tx.enrollments.of(sub, "nope") is None


def test_a_delivery_starts_the_clock_of_the_step_waiting_for_it_only(store: Store) -> None:
    """engine.on_delivered, set-based: the same decisions for a whole batch."""
    waiting = EnrollmentState(EnrollmentStatus.active, "confirm", Phase.wait, 1, None)
    with store.transaction() as tx:
        ids = [enrolled(tx, f"p{i}@example.com")[1] for i in range(4)]
        delivered_before = replace(waiting, step_sent_at=T0, due_at=T0 + M)
        states = [
            waiting,
            waiting,
            delivered_before,
            replace(waiting, status=EnrollmentStatus.exited),
        ]
        tx.enrollments.save(list(zip(ids, states, strict=True)), now=T0)
        at = T0 + 5 * M
        tx.enrollments.start_clocks(
            [
                (ids[0], "confirm", 1, at + M),  # the one waiting: starts
                (ids[1], "confirm", 2, at + M),  # another visit: no
                (ids[2], "confirm", 1, at + M),  # delivered before (a resend): no
                (ids[3], "confirm", 1, at + M),  # left: no
            ],
            at=at,
        )
        after = [tx.enrollments.get(i).state for i in ids]
    assert after[0] == replace(waiting, step_sent_at=at, due_at=at + M)
    assert after[1:] == states[1:]


def test_a_state_is_stored_whole_and_read_back_in_utc(store: Store) -> None:
    state = EnrollmentState(
        EnrollmentStatus.exited,
        "ask",
        Phase.wait,
        3,
        None,
        step_sent_at=T0 + M,
        reminders_sent=2,
        exit_reason=ExitReason.timeout,
    )
    with store.transaction() as tx:
        _, enrollment = enrolled(tx, "ann@example.com")
        tx.enrollments.save([(enrollment, state)], now=T0)
    with store.transaction() as tx:
        back = tx.enrollments.get(enrollment).state
    assert back == state
    assert back.step_sent_at is not None and back.step_sent_at.tzinfo is UTC


def test_the_claim_takes_what_just_fell_due_then_the_oldest(store: Store) -> None:
    """A backlog (older due rows) never makes what fell due seconds ago (a person's yes) wait:
    the fresh lane goes first, at most half a batch, then the oldest."""
    with store.transaction() as tx:
        just = enrolled(tx, "just@example.com", at=T0 + M)[1]
        older = enrolled(tx, "older@example.com", at=T0 - M)[1]
        oldest = enrolled(tx, "oldest@example.com", at=T0 - 3 * M)[1]
        enrolled(tx, "future@example.com", at=T0 + 10 * M)
        _, done = enrolled(tx, "done@example.com", at=T0 - 2 * M)
        finished = EnrollmentState(EnrollmentStatus.completed, "offer", Phase.wait, 1, None)
        tx.enrollments.save([(done, finished)], now=T0)
    with store.transaction() as tx:
        claimed = tx.enrollments.claim_due(T0 + M, limit=10)
        assert [c.enrollment.id for c in claimed] == [just, oldest, older]
        assert claimed[1].email == "oldest@example.com"
        assert claimed[1].fields == {"first_name": "Ann"}
    with store.transaction() as tx:
        assert [c.enrollment.id for c in tx.enrollments.claim_due(T0 + M, limit=1)] == [just]
    with store.transaction() as tx:
        # Ten seconds on, nothing is fresh: the oldest first.
        claimed = tx.enrollments.claim_due(T0 + M + timedelta(seconds=10), limit=2)
        assert [c.enrollment.id for c in claimed] == [oldest, older]


def test_two_workers_never_claim_the_same_enrollment(store: Store) -> None:
    """PostgreSQL: the second worker skips the rows the first holds. SQLite: it waits for the
    first transaction to end (BEGIN IMMEDIATE), then sees what it changed. Either way, no
    enrollment is decided on twice."""
    with store.transaction() as tx:
        for i in range(10):
            enrolled(tx, f"p{i}@example.com")
    first_claimed, release, second_done = threading.Event(), threading.Event(), threading.Event()
    claims: dict[str, set[int]] = {}

    def worker(name: str) -> None:
        with store.transaction() as tx:
            claimed = tx.enrollments.claim_due(T0, limit=6)
            claims[name] = {c.enrollment.id for c in claimed}
            # As the planner does: each claimed enrollment is decided and moved on.
            later = [(c.enrollment.id, due(T0 + 60 * M)) for c in claimed]
            tx.enrollments.save(later, now=T0)
            if name == "first":
                first_claimed.set()
                release.wait(20)
        if name == "second":
            second_done.set()

    first = threading.Thread(target=worker, args=("first",))
    first.start()
    assert first_claimed.wait(20)
    second = threading.Thread(target=worker, args=("second",))
    second.start()
    second_done.wait(2)  # PostgreSQL: done while the first still holds its rows
    release.set()
    first.join(20)
    second.join(20)
    assert len(claims["first"]) == 6 and len(claims["second"]) == 4
    assert not claims["first"] & claims["second"]


# -- outbox --------------------------------------------------------------------------------


def test_messages_are_recorded_claimed_handed_off_and_finished(store: Store) -> None:
    with store.transaction() as tx:
        sub, enrollment = enrolled(tx, "ann@example.com")
        ids = tx.outbox.add(
            [message(sub, enrollment), message(sub, enrollment, MessageKind(1))],
            now=T0,
            claimed_by=None,
        )
        assert len(ids) == 2 and ids[0] != ids[1]
        step = tx.outbox.step_email(enrollment, 1)
        assert step is not None and step.id == ids[0] and step.kind is not MessageKind(1)
    with store.transaction() as tx:
        claimed = tx.outbox.claim(T0, limit=10)
        assert [c.outgoing.id for c in claimed] == ids
        first = claimed[0]
        assert first.outgoing.attempts == 1 and not first.outgoing.resumed
        assert first.outgoing.enrollment_id == enrollment
        assert first.subscriber_status is SubscriberStatus.pending
        assert first.enrollment_status is EnrollmentStatus.active
        assert (first.visit, first.enrollment_visit) == (1, 1)
        tx.outbox.lease(ids, worker="w1", now=T0)
    with store.transaction() as tx:
        assert tx.outbox.claim(T0 + M, limit=10) == []  # claimed: nobody else takes them
        assert tx.outbox.hand_off(ids, worker="w2", now=T0 + M) == set()  # not w2's
        assert tx.outbox.hand_off(ids, worker="w1", now=T0 + M) == set(ids)
        links = [Link("https://a.example/", True), Link("https://n.test/hp", False, honeypot=True)]
        still, refused = tx.outbox.set_rendered([(ids[0], "Hi", links), (ids[1], "Again", [])])
        assert (still, refused) == (set(ids), {})
        tx.outbox.mark_sent([ids[0]], worker="w2", now=T0 + 6 * M)  # not w2's
        tx.outbox.mark_sent([ids[0]], worker="w1", now=T0 + 7 * M)
        tx.outbox.mark_sent([ids[0]], worker="w1", now=T0 + 8 * M)  # once: the first time stands
        tx.outbox.mark_retry(
            ids[0], at=T0, error="too late: it was sent", worker="w1"
        )  # not claimed: no-op
        assert tx.outbox.mark_failed(ids[1], error="550", worker="w2") is None  # not w2's
        failed = tx.outbox.mark_failed(ids[1], error="550 no such user", worker="w1")
        assert (
            failed is not None
            and failed.status is MessageStatus.failed
            and failed.kind == MessageKind(1)
        )
        sent = tx.outbox.get(ids[0])
        assert sent is not None and sent.status is MessageStatus.sent
        assert sent.sent_at == T0 + 7 * M and sent.links == tuple(links)
    assert [(r.status, r.subject, r.attempts) for r in rows(store, MESSAGES)] == [
        ("sent", "Hi", 1),
        ("failed", "Again", 1),
    ]


def test_the_hand_off_is_the_last_check(store: Store) -> None:
    """Only what is still claimed by this worker, for a person who may be mailed and an
    enrollment that wants it, may go on the wire."""
    with store.transaction() as tx:
        ann, ann_e = enrolled(tx, "ann@example.com")
        bob, bob_e = enrolled(tx, "bob@example.com")
        cy, cy_e = enrolled(tx, "cy@example.com")
        a, b, c = tx.outbox.add(
            [message(ann, ann_e), message(bob, bob_e), message(cy, cy_e)],
            now=T0,
            claimed_by="w1",
        )
        tx.subscribers.set_status(bob, SubscriberStatus.unsubscribed, now=T0)
        stopped = EnrollmentState(EnrollmentStatus.exited, "confirm", Phase.wait, 1, None)
        tx.enrollments.save([(cy_e, stopped)], now=T0)
        assert tx.outbox.hand_off([a, b, c], worker="w1", now=T0 + M) == {a}
        refused = {r.outgoing.id: r for r in tx.outbox.held_by("w1", [b, c])}
        assert refused[b].subscriber_status is SubscriberStatus.unsubscribed
        assert refused[c].enrollment_status is EnrollmentStatus.exited
        assert tx.outbox.held_by("w2", [b, c]) == []


def test_what_a_worker_leaves_goes_back_or_is_taken_over(store: Store) -> None:
    with store.transaction() as tx:
        tx.workers.register("w1", host="h", pid=1, now=T0)
        tx.workers.register("w2", host="h", pid=2, now=T0)
        ann, ann_e = enrolled(tx, "ann@example.com")
        bob, bob_e = enrolled(tx, "bob@example.com")
        started, waiting = tx.outbox.add(
            [message(ann, ann_e), message(bob, bob_e)], now=T0, claimed_by="w1"
        )
        tx.outbox.hand_off([started], worker="w1", now=T0)
    with store.transaction() as tx:
        # w1 stops: what it had not started goes back (its attempt not counted), due now.
        assert tx.outbox.release_claims("w1", now=T0 + M) == 1
        assert [c.outgoing.id for c in tx.outbox.claim(T0 + M, 10)] == [waiting]
        assert tx.outbox.reclaim(now=T0 + M) == 0  # w1 is still a registered worker
        assert tx.workers.heartbeat("w2", now=T0 + 2 * M)
        assert tx.workers.forget_silent(since=T0 + M) == ["w1"]  # silent since T0
        assert not tx.workers.heartbeat("w1", now=T0 + 2 * M)  # it was taken for dead
        # The message w1 had on the wire: taken over, resent as resumed.
        assert tx.outbox.reclaim(now=T0 + 2 * M) == 1
        resumed = {c.outgoing.id: c.outgoing for c in tx.outbox.claim(T0 + 2 * M, 10)}
        assert resumed[started].resumed and not resumed[waiting].resumed
        assert [w for w, *_ in tx.workers.live()] == ["w2"]
    assert {(r.id, r.attempts) for r in rows(store, MESSAGES)} == {(started, 1), (waiting, 0)}


def test_a_retry_an_unknown_outcome_and_a_release(store: Store) -> None:
    with store.transaction() as tx:
        sub, enrollment = enrolled(tx, "ann@example.com")
        (mid,) = tx.outbox.add([message(sub, enrollment)], now=T0, claimed_by="w1")
        tx.outbox.hand_off([mid], worker="w1", now=T0)
        tx.outbox.mark_unknown(mid, at=T0 + 10 * M, error="no answer after the data", worker="w1")
        assert tx.outbox.claim(T0 + 9 * M, 10) == []
        [again] = tx.outbox.claim(T0 + 10 * M, 10)
        assert again.outgoing.unknown_outcomes == 1 and again.outgoing.attempts == 2
        tx.outbox.lease([mid], worker="w1", now=T0 + 10 * M)
        tx.outbox.mark_retry(
            mid, at=T0 + 11 * M, error="relay refuses us", worker="w1", uncount=True
        )
        [row] = rows_in(tx, mid)
        assert (row.status, row.attempts, row.claimed_by, row.handed_at) == (
            "queued",
            1,
            None,
            None,
        )


def rows_in(tx: Tx, message_id: int) -> list[object]:
    from sqlalchemy import select

    return list(tx.outbox._conn.execute(select(MESSAGES).where(MESSAGES.c.id == message_id)))


def test_the_sending_pause(store: Store) -> None:
    with store.transaction() as tx:
        assert tx.control.pause() is None
        first = tx.control.set_pause("relay refuses us", now=T0, first=5 * M, longest=60 * M)
        assert (first.until, first.times) == (T0 + 5 * M, 1)
        again = tx.control.set_pause("still", now=T0 + 5 * M, first=5 * M, longest=60 * M)
        assert (again.since, again.until, again.times) == (T0, T0 + 15 * M, 2)
    with store.transaction() as tx:
        assert tx.control.pause() == again
        for _ in range(6):
            longest = tx.control.set_pause("x", now=T0, first=5 * M, longest=60 * M)
        assert longest.until == T0 + 60 * M
        assert tx.control.clear_pause() and not tx.control.clear_pause()
        assert tx.control.pause() is None


def test_cancelling_touches_only_mail_not_sent_yet(store: Store) -> None:
    with store.transaction() as tx:
        ann, ann_e = enrolled(tx, "ann@example.com")
        bob, bob_e = enrolled(tx, "bob@example.com")
        a1, a2 = tx.outbox.add(
            [message(ann, ann_e), message(ann, ann_e, MessageKind(1))], now=T0, claimed_by="w1"
        )
        (b1,) = tx.outbox.add([message(bob, bob_e)], now=T0, claimed_by="w1")  # claimed
        tx.outbox.hand_off([a1], worker="w1", now=T0)  # on the wire: it goes
        tx.outbox.mark_sent([a1], worker="w1", now=T0)
        tx.outbox.cancel_open(subscriber_id=ann, why="subscriber unsubscribed")
        tx.outbox.cancel_open(enrollment_id=bob_e, why="enrollment converted")
    statuses = {m.id: (m.status, m.last_error) for m in rows(store, MESSAGES)}
    assert statuses == {
        a1: ("sent", None),
        a2: ("cancelled", "subscriber unsubscribed"),
        b1: ("cancelled", "enrollment converted"),
    }


# -- events --------------------------------------------------------------------------------


def test_clicks_wait_for_their_verdict(store: Store) -> None:
    with store.transaction() as tx:
        sub, enrollment = enrolled(tx, "ann@example.com")
        (mid,) = tx.outbox.add([message(sub, enrollment)], now=T0, claimed_by=None)
        for seconds, link in ((0, 0), (3, 1), (30, 0)):
            at = T0 + timedelta(seconds=seconds)
            tx.events.add(
                subscriber_id=sub,
                message_id=mid,
                kind=EventKind.click,
                outcome="pending",
                verdict=Verdict.pending,
                evaluate_at=at + timedelta(seconds=10),
                detail={"link": link, "reasons": ["no browser headers"]},
                now=at,
            )
        tx.events.add(subscriber_id=sub, kind=EventKind.goal, outcome="recorded", now=T0)
    with store.transaction() as tx:
        ready = tx.events.pending_clicks(T0 + timedelta(seconds=15), limit=10)
        assert [c.link for c in ready] == [0, 1]
        assert ready[0].at == T0 and ready[0].reasons == ["no browser headers"]
        window = tx.events.clicks_between(mid, T0, T0 + timedelta(seconds=10))
        assert sorted(link for _, link, _, _ in window) == [0, 1]
        assert [at for at, *_ in window] == sorted(at for at, *_ in window)
        assert not any(flood for _, _, flood, _ in window)
        tx.events.decide_click(ready[0], verdict=Verdict.human, outcome="advanced", reasons=[])
    with store.transaction() as tx:
        assert [c.link for c in tx.events.pending_clicks(T0 + timedelta(minutes=5), 10)] == [1, 0]
        events = tx.events.of_subscriber(sub)
        assert [(e.kind, e.verdict, e.outcome) for e in events] == [
            (EventKind.click, Verdict.human, "advanced"),
            (EventKind.click, Verdict.pending, "pending"),
            (EventKind.click, Verdict.pending, "pending"),
            (EventKind.goal, None, "recorded"),
        ]
        assert events[0].detail == {"link": 0, "reasons": []}
        assert len(tx.events.of_subscriber(sub, kind=EventKind.goal)) == 1


# -- inbound and mailboxes -----------------------------------------------------------------


def test_inbound_mail_is_recorded_once(store: Store) -> None:
    with store.transaction() as tx:
        first = tx.inbound.record(
            digest="d1", header_message_id="<a@x>", sender="a@x", now=T0, source=InboundSource.imap
        )
        assert first is not None
        again = tx.inbound.record(
            digest="d1", header_message_id="<a@x>", sender="a@x", now=T0, source=InboundSource.imap
        )
        assert again is None
        kept = tx.inbound.record(
            digest="d2",
            header_message_id=None,
            sender=None,
            now=T0 + M,
            source=InboundSource.webhook,
            status=InboundStatus.malformed,
            raw=b"\x00junk",
            note="unreadable",
        )
        assert kept is not None
        tx.inbound.finish(first, status=InboundStatus.matched, matched=None, note="advanced")
    with store.transaction() as tx:
        newest = tx.inbound.newest(10)
        assert [(r.id, r.status, r.kept) for r in newest] == [
            (kept, InboundStatus.malformed, True),
            (first, InboundStatus.matched, False),
        ]
        assert newest[1].note == "advanced" and newest[1].received_at == T0
        assert tx.inbound.counts() == {"matched": 1, "malformed": 1}
        assert tx.inbound.raw(kept) == b"\x00junk" and tx.inbound.raw(first) is None


def test_the_last_uid_is_kept_per_folder_and_uidvalidity(store: Store) -> None:
    with store.transaction() as tx:
        assert tx.mailboxes.last_uid("INBOX", 7) == 0
        tx.mailboxes.set_last_uid("INBOX", 7, 41, now=T0)
        tx.mailboxes.set_last_uid("INBOX", 7, 42, now=T0)
        tx.mailboxes.set_last_uid("Archive", 9, 5, now=T0)
    with store.transaction() as tx:
        assert tx.mailboxes.last_uid("INBOX", 7) == 42
        assert tx.mailboxes.last_uid("INBOX", 8) == 0  # renumbered: look at everything again
        assert tx.mailboxes.last_uid("Archive", 9) == 5


# -- reports -------------------------------------------------------------------------------


def test_reports_count_people_messages_and_clicks(store: Store) -> None:
    with store.transaction() as tx:
        ann, ann_e = enrolled(tx, "ann@example.com")
        enrolled(tx, "bob@example.com")
        left = EnrollmentState(
            EnrollmentStatus.exited, "confirm", Phase.wait, 1, None, exit_reason=ExitReason.timeout
        )
        tx.enrollments.save([(ann_e, left)], now=T0)
        (mid,) = tx.outbox.add([message(ann, ann_e)], now=T0, claimed_by=None)
        for verdict in (Verdict.bot, Verdict.bot, Verdict.human):
            tx.events.add(
                subscriber_id=ann,
                message_id=mid,
                kind=EventKind.click,
                outcome="x",
                verdict=verdict,
                now=T0,
            )
    with store.transaction() as tx:
        counts = {(r.step_id, r.status, r.exit_reason): r.count for r in tx.reports.status_counts()}
        assert counts == {("confirm", "exited", "timeout"): 1, ("confirm", "active", None): 1}
        assert tx.reports.message_counts() == {"queued": 1}
        assert sorted(tx.reports.click_counts()) == [
            ("journey", "confirm", "bot", 2),
            ("journey", "confirm", "human", 1),
        ]


def test_an_outcome_is_written_only_by_the_worker_that_holds_the_message(store: Store) -> None:
    """A worker taken for dead that wakes up must not write over its successor's claim."""
    with store.transaction() as tx:
        sub, enrollment = enrolled(tx, "ann@example.com")
        (mid,) = tx.outbox.add([message(sub, enrollment)], now=T0, claimed_by="w2")
        tx.outbox.mark_sent([mid], worker="w1", now=T0)
        tx.outbox.mark_retry(mid, at=T0, error="late", worker="w1")
        tx.outbox.mark_unknown(mid, at=T0, error="late", worker="w1")
        assert tx.outbox.mark_failed(mid, error="late", worker="w1") is None
    [row] = rows(store, MESSAGES)
    assert (row.status, row.claimed_by, row.last_error) == ("sending", "w2", None)
