"""Lock order under contention, on both databases: a person confirming (a click on a second
sequence's confirmation, which touches all their enrollments) while the same person is
stopped (an unsubscribe, a bounce). On PostgreSQL the two took each other's row locks in
opposite orders and one died of a deadlock; every path now locks a person's enrollments
first, in id order."""

from __future__ import annotations

import threading

from support.db import MESSAGES, rows
from support.world import World

from nurture.vocabulary import ExitReason, SubscriberStatus, YesBy

PEOPLE = [f"l{i:02d}@example.com" for i in range(15)]


def test_confirming_and_stopping_the_same_people_at_once_never_deadlocks(world: World) -> None:
    for email in PEOPLE:
        world.subscribe(email)  # its enrollment has the lower id
        world.subscribe(email, sequence="second")  # this one the higher
    world.tick()
    store, journey, now = world.services.store, world.services.journey, world.clock.now()
    second = [m for m in rows(store, MESSAGES) if m.sequence_id == "second"]
    with store.transaction() as tx:
        confirmations = {m.subscriber_id: tx.outbox.get(m.id) for m in second}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def confirm_all() -> None:
        start.wait()
        for message in confirmations.values():
            try:
                with store.transaction() as tx:
                    assert message is not None
                    journey.answer(tx, message, YesBy.click, now=now)
            except BaseException as exc:  # noqa: BLE001 - the test reports it
                errors.append(exc)

    def stop_all() -> None:
        start.wait()
        for subscriber_id in confirmations:
            try:
                with store.transaction() as tx:
                    journey.stop_person(
                        tx,
                        subscriber_id,
                        status=SubscriberStatus.unsubscribed,
                        reason=ExitReason.unsubscribed,
                        now=now,
                    )
            except BaseException as exc:  # noqa: BLE001 - the test reports it
                errors.append(exc)

    threads = [threading.Thread(target=confirm_all), threading.Thread(target=stop_all)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    for email in PEOPLE:  # whichever came first, the stop stands
        assert world.state(email).exit_reason is ExitReason.unsubscribed
