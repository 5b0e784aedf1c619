"""Replies read from a real IMAP server (Dovecot), through the same code as the webhook."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from support.db import EVENTS, rows
from support.dovecot import Dovecot
from support.mail import reply
from support.reports import CORPUS_NAMED, corpus, dsn
from support.smtp import Caught
from support.world import World

from nurture.mail.imap import ImapMailbox
from nurture.vocabulary import EnrollmentStatus


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
    waiter = threading.Thread(target=lambda: result.append(p.wait_for_mail(timeout=60)))
    waiter.start()
    # The waiter may not be in IDLE yet when a message lands (then that one is not news to
    # it): deliver one a second until it wakes up, or the deadline passes.
    for n in range(30):
        head = f"From: a@example.com\r\nSubject: hi\r\nMessage-ID: <i{n}@example.com>\r\n"
        dovecot.append(head.encode() + b"\r\nhi\r\n")
        waiter.join(1)
        if not waiter.is_alive():
            break
    waiter.join(65)
    assert result == [True]


def big(to: Caught, size: int) -> bytes:
    return reply(to, "x" * size)


def test_a_message_over_the_size_limit_is_left_on_the_server_untouched(
    world: World, dovecot: Dovecot
) -> None:
    """B2: a message too large to read was flagged, moved or deleted although its bytes were
    never kept. It stays on the server, unflagged, and is noted once."""
    ask = world.at_ask("ivo@example.com")
    world.services.inbox.max_bytes = 4000  # the real limit is 10 MiB: a smaller one here
    dovecot.append(big(ask, 6000))
    dovecot.append(reply(ask, "Yes, subject lines."))
    deleting = poller(world, dovecot, delete_processed=True)
    assert deleting.poll_once() == 2
    assert deleting.poll_once() == 0  # noted once, not at every poll
    flags = dovecot.flags()
    assert len(flags) == 1  # the reply was handled and deleted; the big one is still there
    assert "$NurtureProcessed" not in flags[0] and "\\Seen" not in flags[0]
    assert world.state("ivo@example.com").step_id == "offer"
    with world.services.store.transaction() as tx:
        [noted, _] = sorted(tx.inbound.newest(10), key=lambda r: r.status.value)
        assert noted.status == "malformed" and "left on the server" in (noted.note or "")
        assert not noted.kept


def test_a_folder_with_a_long_name_is_read(world: World, dovecot: Dovecot) -> None:
    """B3: the identity of a message too large to read held the folder's name and overflowed
    its 64-character column on PostgreSQL, failing every poll of that folder."""
    ask = world.at_ask("lea@example.com")
    folder = "Replies from the spring newsletter campaign for the EMEA region 2026"
    dovecot.create(folder)
    world.services.inbox.max_bytes = 4000
    dovecot.append(big(ask, 6000), folder=folder)
    dovecot.append(reply(ask, "Count me in"), folder=folder)
    assert poller(world, dovecot, folder=folder).poll_once() == 2
    assert world.state("lea@example.com").step_id == "offer"
    with world.services.store.transaction() as tx:
        assert tx.inbound.counts() == {"malformed": 1, "matched": 1}


def test_idle_reads_untagged_data_sent_before_the_continuation() -> None:
    """B8: any first line after IDLE other than '+' switched IDLE off for good. A server may
    announce new mail before its continuation: that is news, not "no IDLE"."""
    from support.imap import ScriptedImap

    from nurture.config import SmtpTls
    from nurture.mail.imap import ImapSettings

    with ScriptedImap(lambda tag: b"* 1 EXISTS\r\n+ idling\r\n") as server:
        mailbox = ImapMailbox(ImapSettings("127.0.0.1", server.port, "u", "p", SmtpTls.none))
        assert mailbox.wait_for_mail(timeout=5) is True
        assert "DONE" in server.commands  # IDLE was ended properly


def test_an_idle_refused_once_is_an_error_to_retry_not_the_end_of_idle() -> None:
    import imaplib

    from support.imap import ScriptedImap

    from nurture.config import SmtpTls
    from nurture.mail.imap import ImapSettings

    with ScriptedImap(lambda tag: f"{tag} NO try later\r\n".encode()) as server:
        mailbox = ImapMailbox(ImapSettings("127.0.0.1", server.port, "u", "p", SmtpTls.none))
        with pytest.raises(imaplib.IMAP4.error, match="IDLE refused"):
            mailbox.wait_for_mail(timeout=5)


# -- reports act only on what we sent (issue 20, finding 1) ---------------------------------

REPORTS = ("bounce", "delay", "complaint")


def test_reports_found_in_the_wild_about_emails_we_never_sent_change_nobody(
    world: World, dovecot: Dovecot
) -> None:
    """The corpus of real-world bounces, delays and abuse reports (Postfix, Exim, qmail,
    Office 365, Gmail, Yahoo, Microsoft's JMRP...) names people who are on the list, but the
    emails it returns are not ours; and a forged DSN naming ten people. The mailbox is
    trusted (it is ours), the reports are not: nobody is bounced or complained."""
    named = sorted({a for a in CORPUS_NAMED.values() if a is not None})
    people = [*named, *(f"reader{n}@example.com" for n in range(10))]
    for email in people:
        world.first_email(email, confirmed=True)
    for file in CORPUS_NAMED:
        dovecot.append(corpus(file))
    dovecot.append(dsn(people[len(named) :], sender="postmaster@outside.example"))
    assert poller(world, dovecot).poll_once() == len(CORPUS_NAMED) + 1
    with world.services.store.transaction() as tx:
        assert tx.inbound.counts() == {"unmatched": len(CORPUS_NAMED) + 1}
        kept = tx.inbound.newest(50, unmatched_reports=True)
        assert len(kept) == len(CORPUS_NAMED) + 1 and all(r.kept for r in kept)
        for email in people:
            person = tx.subscribers.by_email(email)
            assert person is not None and person.status == "confirmed", email
    for email in people:
        assert world.state(email).status is EnrollmentStatus.active, email
    assert [e for e in rows(world.services.store, EVENTS) if e.kind in REPORTS] == []


def test_reports_found_in_the_wild_about_our_emails_act_on_exactly_their_recipient(
    world: World, dovecot: Dovecot
) -> None:
    """The same corpus, each report rewritten to return one of our emails and name its
    recipient: each format still finds its person, and only them."""
    bystander = world.first_email("bystander@example.com", confirmed=True)
    expected: dict[str, str] = {}
    for n, file in enumerate(CORPUS_NAMED):
        email = f"person{n}@example.com"
        mail = world.first_email(email, confirmed=True)
        dovecot.append(corpus(file, about=mail))
        expected[email] = file.split("-", 1)[0]  # bounce, delay or complaint
    assert poller(world, dovecot).poll_once() == len(CORPUS_NAMED)
    with world.services.store.transaction() as tx:
        assert tx.inbound.counts() == {"bounce": 6, "delay": 3, "complaint": 4}
        for email, kind in expected.items():
            person = tx.subscribers.by_email(email)
            assert person is not None
            status = {"bounce": "bounced", "delay": "confirmed", "complaint": "complained"}
            assert person.status == status[kind], (email, kind)
        assert tx.subscribers.by_email(bystander.recipient).status == "confirmed"  # type: ignore[union-attr]
    events = [e for e in rows(world.services.store, EVENTS) if e.kind in REPORTS]
    assert sorted((e.subscriber_id, e.kind) for e in events) == sorted(
        (world.subscriber_id(email), kind) for email, kind in expected.items()
    )
