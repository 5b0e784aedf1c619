"""Replies read from a real IMAP server (Dovecot), through the same code as the webhook."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from support.dovecot import Dovecot
from support.mail import reply
from support.world import World

from nurture.mail.imap import ImapMailbox


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    with Dovecot() as server:
        yield server


class Poller:
    """The inbox reading one Dovecot folder, as the daemon's poll job does."""

    def __init__(self, world: World, dovecot: Dovecot, **imap: Any) -> None:
        self.world = world
        self.mailbox = ImapMailbox(dovecot.settings(**imap))

    def poll_once(self) -> int:
        return self.world.services.inbox.poll(self.mailbox, clock=self.world.clock)

    def wait_for_mail(self, timeout: float) -> bool | None:
        return self.mailbox.wait_for_mail(timeout)


def poller(world: World, dovecot: Dovecot, **imap: Any) -> Poller:
    return Poller(world, dovecot, **imap)


def test_a_reply_in_the_mailbox_advances_and_an_out_of_office_does_not(
    world: World, dovecot: Dovecot
) -> None:
    human = world.at_ask("hal@example.com")
    away = world.at_ask("ida@example.com")
    dovecot.append(reply(human, "Subject lines, please."))
    dovecot.append(
        reply(
            away,
            "I am out of the office.",
            Auto_Submitted="auto-replied",
            Subject="Automatic reply: Tell me by reply",
        )
    )
    dovecot.append(b"\x00\x01 this is not an email\r\n")
    assert poller(world, dovecot).poll_once() == 3
    assert world.state("hal@example.com").step_id == "offer"
    assert world.state("ida@example.com").step_id == "ask"
    flags = dovecot.flags()
    assert len(flags) == 3 and all("$NurtureProcessed" in f and "\\Seen" in f for f in flags)
    with world.services.store.transaction() as tx:
        assert tx.inbound.counts() == {"matched": 1, "automatic": 1, "malformed": 1}


def test_each_message_is_handled_once_across_polls_and_restarts(
    world: World, dovecot: Dovecot
) -> None:
    first = world.at_ask("jo@example.com")
    second = world.at_ask("kay@example.com")
    dovecot.append(reply(first, "Yes"))
    assert poller(world, dovecot).poll_once() == 1
    # A new poller (the daemon restarted) sees only what arrived since.
    dovecot.append(reply(second, "Yes too"))
    assert poller(world, dovecot).poll_once() == 1
    assert poller(world, dovecot).poll_once() == 0
    assert world.state("jo@example.com").step_id == "offer"
    assert world.state("kay@example.com").step_id == "offer"
    with world.services.store.transaction() as tx:
        assert tx.inbound.counts() == {"matched": 2}
        # Forget the UIDs (as if the server renumbered the folder): both are fetched again
        # and recognised, not counted twice.
        tx.mailboxes.set_last_uid("INBOX", 0, 0, now=world.clock.now())
    assert poller(world, dovecot).poll_once() == 2
    with world.services.store.transaction() as tx:
        assert tx.inbound.counts() == {"matched": 2}


def test_idle_wakes_up_when_mail_arrives(world: World, dovecot: Dovecot) -> None:
    import threading

    p = poller(world, dovecot)
    assert p.wait_for_mail(timeout=0.5) is False  # nothing came
    result: list[bool | None] = []
    waiter = threading.Thread(target=lambda: result.append(p.wait_for_mail(timeout=30)))
    waiter.start()
    # Give the waiter time to enter IDLE, then deliver.
    import time

    time.sleep(1)
    dovecot.append(
        b"From: a@example.com\r\nSubject: hi\r\nMessage-ID: <i@example.com>\r\n\r\nhi\r\n"
    )
    waiter.join(35)
    assert result == [True]
