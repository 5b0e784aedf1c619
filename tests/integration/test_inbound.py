"""Inbound mail through POST /inbound: replies, out-of-office answers, bounces, complaints."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from email.utils import make_msgid

import httpx
import pytest
from support.db import INBOUND, rows
from support.mail import reply
from support.smtp import Caught
from support.web import ServedApp
from support.world import MakeWorld, World

from nurture.vocabulary import EnrollmentStatus as Status
from nurture.vocabulary import ExitReason, InboundSource
from nurture.web.app import create_app

TRACKED = re.compile(r'href="(http://nurture\.test/c/[^"]+)"')
SECRET = "inbound-secret"


@pytest.fixture
def trusted(make_world: MakeWorld) -> Iterator[tuple[World, httpx.Client]]:
    world = make_world(inbound_secret=SECRET)
    with ServedApp(create_app(world.services)) as base, httpx.Client(base_url=base) as http:
        http.headers["X-Nurture-Secret"] = SECRET
        yield world, http


def dsn(original: Caught, status: str, action: str) -> bytes:
    return (
        "From: MAILER-DAEMON@mx.example.com (Mail Delivery System)\r\n"
        "To: ada@acme.example\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"Message-ID: {make_msgid(domain='mx.example.com')}\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n'
        "\r\n--B\r\nContent-Type: text/plain\r\n\r\nI'm sorry to have to inform you...\r\n"
        "\r\n--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.com\r\n\r\n"
        f"Final-Recipient: rfc822; {original.recipient}\r\n"
        f"Action: {action}\r\nStatus: {status}\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n"
        "\r\n--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: ada@acme.example\r\nTo: {original.recipient}\r\n"
        f"Message-ID: {original.message['Message-ID']}\r\nSubject: {original.subject}\r\n"
        "\r\n--B--\r\n"
    ).encode()


def arf(original: Caught) -> bytes:
    return (
        "From: feedback@isp.example\r\nTo: abuse@acme.example\r\n"
        "Subject: FW: spam report\r\n"
        f"Message-ID: {make_msgid(domain='isp.example')}\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="F"\r\n'
        "\r\n--F\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n"
        "\r\n--F\r\nContent-Type: message/feedback-report\r\n\r\n"
        "Feedback-Type: abuse\r\nUser-Agent: isp-fbl/1.0\r\nVersion: 1\r\n"
        f"Original-Rcpt-To: {original.recipient}\r\n"
        "\r\n--F\r\nContent-Type: message/rfc822\r\n\r\n"
        f"From: ada@acme.example\r\nTo: {original.recipient}\r\n"
        f"Message-ID: {original.message['Message-ID']}\r\nSubject: {original.subject}\r\n\r\nhi\r\n"
        "\r\n--F--\r\n"
    ).encode()


def test_a_permanent_bounce_stops_the_person(world: World) -> None:
    mail = world.first_email("bob@example.com", confirmed=True)
    result = world.services.inbox.receive(
        dsn(mail, "5.1.1", "failed"), now=world.clock.now(), source=InboundSource.webhook
    )
    assert result.status == "bounce"
    state = world.state("bob@example.com")
    assert state.status is Status.exited and state.exit_reason is ExitReason.bounced
    world.clock.advance(days=3)
    world.tick()
    assert len(world.smtp.to("bob@example.com")) == 1


def test_a_delay_report_is_recorded_only(world: World) -> None:
    mail = world.first_email("dee@example.com", confirmed=True)
    result = world.services.inbox.receive(
        dsn(mail, "4.4.1", "delayed"), now=world.clock.now(), source=InboundSource.webhook
    )
    assert result.status == "delay"
    assert world.state("dee@example.com").status is Status.active


def test_an_abuse_report_unsubscribes_and_marks_complained(world: World) -> None:
    mail = world.first_email("cy@example.com", confirmed=True)
    result = world.services.inbox.receive(
        arf(mail), now=world.clock.now(), source=InboundSource.webhook
    )
    assert result.status == "complaint"
    assert world.state("cy@example.com").exit_reason is ExitReason.complained
    with world.services.store.transaction() as tx:
        assert tx.subscribers.by_email("cy@example.com").status == "complained"  # type: ignore[union-attr]


def test_a_forged_bounce_without_our_message_id_changes_nothing(world: World) -> None:
    mail = world.first_email("eve@example.com", confirmed=True)
    forged = dsn(mail, "5.1.1", "failed").replace(
        mail.message["Message-ID"].encode(), b"<1.0000000000000000@acme.example>"
    )
    result = world.services.inbox.receive(
        forged, now=world.clock.now(), source=InboundSource.webhook
    )
    assert result.status == "unmatched"
    assert world.state("eve@example.com").status is Status.active


def test_out_of_office_with_a_date_moves_the_wait_and_never_advances(world: World) -> None:
    ask = world.at_ask("oli@example.com")
    before = world.state("oli@example.com")
    back = (world.clock.now() + timedelta(days=10)).date()
    text = f"I am out of the office until {back.day} {back.strftime('%B %Y')}."
    result = world.services.inbox.receive(
        reply(ask, text, Auto_Submitted="auto-replied", Subject="Automatic reply: " + ask.subject),
        now=world.clock.now(),
        source=InboundSource.webhook,
    )
    assert result.status == "automatic"
    assert result.outcome.startswith("extended:out_of_office")
    after = world.state("oli@example.com")
    assert after.step_id == "ask" == before.step_id
    assert after.step_sent_at is not None and after.step_sent_at.date() == back
    # the step's 1-day wait now runs from their return: no timeout meanwhile
    world.clock.advance(days=5)
    world.tick()
    assert world.state("oli@example.com").step_id == "ask"


def test_out_of_office_without_a_date_is_recorded_and_changes_nothing(world: World) -> None:
    ask = world.at_ask("pam@example.com")
    before = world.state("pam@example.com")
    result = world.services.inbox.receive(
        reply(ask, "Thanks for your email. I am on leave.", X_Autoreply="yes"),
        now=world.clock.now(),
        source=InboundSource.webhook,
    )
    assert (result.status, result.outcome) == ("automatic", "ignored:automatic (X-Autoreply)")
    assert world.state("pam@example.com") == before


def test_the_webhook_secret(trusted: tuple[World, httpx.Client]) -> None:
    world, http = trusted
    ask = world.at_ask("quinn@example.com")
    body = reply(ask, "Subject lines!", threaded=False)  # headers stripped: no thread at all
    r = httpx.post(str(http.base_url) + "/inbound", content=body)
    assert r.status_code == 401
    r = http.post("/inbound", content=body, headers={"X-Nurture-Secret": "wrong"})
    assert r.status_code == 401
    # With the secret the webhook is trusted: the sender's address, waiting at one step that
    # takes replies, is matched as a last resort.
    r = http.post("/inbound", content=body)
    assert r.json() == {"status": "matched", "outcome": "advanced"}
    assert world.state("quinn@example.com").step_id == "offer"


def test_without_the_secret_an_unthreaded_reply_is_not_matched_by_address(world: World) -> None:
    ask = world.at_ask("ray@example.com")
    result = world.services.inbox.receive(
        reply(ask, "Subject lines!", threaded=False),
        now=world.clock.now(),
        source=InboundSource.webhook,
    )
    assert result.status == "unmatched"
    assert world.state("ray@example.com").step_id == "ask"


def test_the_same_message_relayed_twice_counts_once(world: World) -> None:
    ask = world.at_ask("sam@example.com")
    body = reply(ask, "Yes!")
    again = b"Received: from relay2.example.com by mx.example.com; Mon, 5 Jan 2026\r\n" + body
    inbox = world.services.inbox
    assert inbox.receive(body, now=world.clock.now(), source=InboundSource.imap).status == "matched"
    assert (
        inbox.receive(again, now=world.clock.now(), source=InboundSource.webhook).status
        == "duplicate"
    )


def test_unreadable_messages_are_kept_aside(world: World) -> None:
    inbox = world.services.inbox
    raw = b"\x00\x01\x02 not mail at all"
    assert (
        inbox.receive(raw, now=world.clock.now(), source=InboundSource.webhook).status
        == "malformed"
    )
    [row] = rows(world.services.store, INBOUND)
    assert (row.status, row.raw) == ("malformed", raw)
    with world.services.store.transaction() as tx:
        assert tx.inbound.counts() == {"malformed": 1}


def test_a_complaint_after_an_unsubscribe_is_remembered_as_a_complaint(world: World) -> None:
    """A status that says more replaces one that says less, never the other way round."""
    mail = world.first_email("vi@example.com", confirmed=True)
    subscriber_id = world.subscriber_id("vi@example.com")
    assert world.services.subscriptions.unsubscribe(subscriber_id, now=world.clock.now())
    result = world.services.inbox.receive(
        arf(mail), now=world.clock.now(), source=InboundSource.webhook
    )
    assert result.status == "complaint"
    with world.services.store.transaction() as tx:
        assert tx.subscribers.get(subscriber_id).status == "complained"
    # ... and a bounce reported after the complaint does not hide it.
    world.services.inbox.receive(
        dsn(mail, "5.1.1", "failed"), now=world.clock.now(), source=InboundSource.webhook
    )
    with world.services.store.transaction() as tx:
        assert tx.subscribers.get(subscriber_id).status == "complained"
    assert world.state("vi@example.com").exit_reason is ExitReason.unsubscribed
