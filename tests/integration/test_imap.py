"""Replies read from a real IMAP server (Dovecot), through the same code as the webhook."""

from __future__ import annotations

import re
from collections.abc import Iterator
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

import pytest
from support import Caught, Dovecot

from nurture.config import SmtpTls
from nurture.mail.imap import ImapPoller, ImapSettings

TRACKED = re.compile(r'href="(http://nurture\.test/c/[^"]+)"')


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    with Dovecot() as server:
        yield server


def poller(world: Any, dovecot: Dovecot) -> ImapPoller:
    s = world.services
    settings = ImapSettings("127.0.0.1", dovecot.port, Dovecot.USER, Dovecot.PASSWORD, SmtpTls.none)
    return ImapPoller(settings, tracker=s.tracker, store=s.store, clock=world.clock)


def reply(to: Caught, body: str, **headers: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = to.recipient
    msg["To"] = to.message["From"]
    msg["Subject"] = headers.pop("Subject", "Re: " + to.subject)
    msg["Message-ID"] = make_msgid(domain="mail.example.com")
    msg["In-Reply-To"] = to.message["Message-ID"]
    for k, v in headers.items():
        msg[k.replace("_", "-")] = v
    msg.set_content(body)
    return msg.as_bytes()


def test_a_reply_in_the_mailbox_advances_and_an_out_of_office_does_not(
    world: Any, dovecot: Dovecot
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
        assert tx.inbound_counts() == {"matched": 1, "automatic": 1, "malformed": 1}


def test_each_message_is_handled_once_across_polls_and_restarts(
    world: Any, dovecot: Dovecot
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
        assert tx.inbound_counts() == {"matched": 2}
        # Forget the UIDs (as if the server renumbered the folder): both are fetched again
        # and recognised, not counted twice.
        tx.set_imap_last_uid("INBOX", 0, 0, now=world.clock.now())
    assert poller(world, dovecot).poll_once() == 2
    with world.services.store.transaction() as tx:
        assert tx.inbound_counts() == {"matched": 2}


def test_idle_wakes_up_when_mail_arrives(world: Any, dovecot: Dovecot) -> None:
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
