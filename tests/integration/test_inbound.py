"""Inbound mail through POST /inbound: replies, out-of-office answers, bounces, complaints."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from support.db import EVENTS, INBOUND, rows
from support.mail import reply
from support.reports import arf, dsn
from support.web import ServedApp, served_client
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


def test_a_permanent_bounce_stops_the_person(world: World) -> None:
    mail = world.first_email("bob@example.com", confirmed=True)
    result = world.services.inbox.receive(
        dsn([mail.recipient], about=mail), now=world.clock.now(), source=InboundSource.webhook
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
        dsn([mail.recipient], about=mail, status="4.4.1", action="delayed"),
        now=world.clock.now(),
        source=InboundSource.webhook,
    )
    assert result.status == "delay"
    assert world.state("dee@example.com").status is Status.active


def test_an_abuse_report_unsubscribes_and_marks_complained(world: World) -> None:
    mail = world.first_email("cy@example.com", confirmed=True)
    result = world.services.inbox.receive(
        arf(mail.recipient, about=mail), now=world.clock.now(), source=InboundSource.webhook
    )
    assert result.status == "complaint"
    assert world.state("cy@example.com").exit_reason is ExitReason.complained
    with world.services.store.transaction() as tx:
        assert tx.subscribers.by_email("cy@example.com").status == "complained"  # type: ignore[union-attr]


def test_a_forged_bounce_without_our_message_id_changes_nothing(world: World) -> None:
    mail = world.first_email("eve@example.com", confirmed=True)
    forged = dsn([mail.recipient], about=mail).replace(
        mail.message["Message-ID"].encode(), b"<1.0000000000000000@acme.example>"
    )
    assert mail.message["Message-ID"].encode() not in forged
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
        arf(mail.recipient, about=mail), now=world.clock.now(), source=InboundSource.webhook
    )
    assert result.status == "complaint"
    with world.services.store.transaction() as tx:
        assert tx.subscribers.get(subscriber_id).status == "complained"
    # ... and a bounce reported after the complaint does not hide it.
    world.services.inbox.receive(
        dsn([mail.recipient], about=mail), now=world.clock.now(), source=InboundSource.webhook
    )
    with world.services.store.transaction() as tx:
        assert tx.subscribers.get(subscriber_id).status == "complained"
    assert world.state("vi@example.com").exit_reason is ExitReason.unsubscribed


# -- reports act only on what we sent (issue 20, finding 1) ---------------------------------
#
# The replies mailbox is every email's Reply-To: anyone who got one email can send it a
# "bounce" or an "abuse report" naming anyone. A report counts for an address only when it
# references an email nurture sent to that same address.

LIST = [f"reader{n}@example.com" for n in range(10)]


def untouched(world: World, *emails: str) -> None:
    """Each is still confirmed and in the sequence, and no report event was recorded."""
    with world.services.store.transaction() as tx:
        for email in emails:
            person = tx.subscribers.by_email(email)
            assert person is not None and person.status == "confirmed", (email, person)
    for email in emails:
        assert world.state(email).status is Status.active, email
    reported = [e for e in rows(world.services.store, EVENTS) if e.kind in REPORT_EVENTS]
    for email in emails:
        assert world.subscriber_id(email) not in {e.subscriber_id for e in reported}, email


REPORT_EVENTS = ("bounce", "delay", "complaint")


def test_a_forged_dsn_naming_ten_subscribers_bounces_nobody(
    trusted: tuple[World, httpx.Client],
) -> None:
    """From an outside address, referencing no email of ours, naming ten people on the list:
    it bounced all ten, even through the webhook's secret (anyone can write to the replies
    mailbox the provider forwards)."""
    world, http = trusted
    for email in LIST:
        world.first_email(email, confirmed=True)
    forged = dsn(LIST, sender="postmaster@outside.example")
    r = http.post("/inbound", content=forged)
    assert r.status_code == 200
    assert r.json()["status"] == "unmatched"
    assert "references no email we sent" in r.json()["outcome"]
    untouched(world, *LIST)
    with world.services.store.transaction() as tx:
        [kept] = tx.inbound.newest(10, unmatched_reports=True)
        assert (kept.kind, kept.status, kept.sender) == (
            "bounce",
            "unmatched",
            "postmaster@outside.example",
        )
        assert kept.kept and tx.inbound.raw(kept.id) == forged  # kept whole, for a person
        assert "reader0@example.com" in (kept.note or "")
        assert tx.inbound.unmatched_reports() == 1
    # Nobody was bounced: the next emails still go.
    world.clock.advance(days=30)
    world.tick()
    assert all(len(world.smtp.to(email)) > 1 for email in LIST)


def test_a_forged_abuse_report_complains_nobody(trusted: tuple[World, httpx.Client]) -> None:
    world, http = trusted
    world.first_email("victim@example.com", confirmed=True)
    r = http.post("/inbound", content=arf("victim@example.com", sender="abuse@outside.example"))
    assert r.json()["status"] == "unmatched"
    untouched(world, "victim@example.com")
    with world.services.store.transaction() as tx:
        [kept] = tx.inbound.newest(10, unmatched_reports=True)
        assert kept.kind == "complaint"


def test_a_report_on_one_of_our_emails_naming_someone_else_changes_nobody(
    trusted: tuple[World, httpx.Client],
) -> None:
    """Mallory got an email: its Message-ID is real and signed. A report that returns it but
    names another person is not about that person, nor (naming someone else) about Mallory."""
    world, http = trusted
    own = world.first_email("mallory@example.com", confirmed=True)
    world.first_email("victim@example.com", confirmed=True)
    for forged in (
        dsn(["victim@example.com"], about=own),
        dsn(["victim@example.com"], about=own, returned_to="victim@example.com"),
        arf("victim@example.com", about=own),
        arf(None, about=own, returned_to="victim@example.com"),
    ):
        r = http.post("/inbound", content=forged)
        assert r.json()["status"] == "unmatched", r.json()
        assert "not the recipient of the email it references" in r.json()["outcome"]
    untouched(world, "mallory@example.com", "victim@example.com")


def test_a_report_on_our_email_naming_others_too_bounces_only_its_recipient(
    trusted: tuple[World, httpx.Client],
) -> None:
    """Each recipient of a report is checked on its own."""
    world, http = trusted
    mail = world.first_email("bob@example.com", confirmed=True)
    for email in LIST:
        world.first_email(email, confirmed=True)
    r = http.post("/inbound", content=dsn([*LIST[:5], "bob@example.com", *LIST[5:]], about=mail))
    assert r.json()["status"] == "bounce"
    assert r.json()["outcome"].startswith("bounced: bob@example.com; not the recipient")
    assert world.state("bob@example.com").exit_reason is ExitReason.bounced
    untouched(world, *LIST)
    [event] = rows(world.services.store, EVENTS, kind="bounce")
    assert (event.subscriber_id, event.message_id) == (
        world.subscriber_id("bob@example.com"),
        int(mail.message["Message-ID"][1:].split(".")[0]),
    )
    assert event.detail["matched_by"] == "message_id"


def test_a_genuine_abuse_report_with_the_recipient_redacted_complains_its_recipient(
    world: World,
) -> None:
    """Feedback loops often redact the recipient ("To: redacted"): our signed Message-ID then
    says whom, and it can only be the person it was sent to."""
    mail = world.first_email("cy@example.com", confirmed=True)
    result = world.services.inbox.receive(
        arf(None, about=mail, returned_to="redacted"),
        now=world.clock.now(),
        source=InboundSource.webhook,
    )
    assert (result.status, result.outcome) == ("complaint", "complained: cy@example.com")
    assert world.state("cy@example.com").exit_reason is ExitReason.complained


def test_a_soft_bounce_counts_only_when_it_is_about_our_email(world: World) -> None:
    mail = world.first_email("dee@example.com", confirmed=True)
    world.first_email("fay@example.com", confirmed=True)
    inbox = world.services.inbox
    now = world.clock.now()
    delayed = {"status": "4.4.1", "action": "delayed"}
    forged = inbox.receive(
        dsn(["dee@example.com"], **delayed), now=now, source=InboundSource.imap, trusted=True
    )
    elsewhere = inbox.receive(
        dsn(["fay@example.com"], about=mail, **delayed), now=now, source=InboundSource.imap
    )
    assert (forged.status, elsewhere.status) == ("unmatched", "unmatched")
    assert rows(world.services.store, EVENTS, kind="delay") == []
    genuine = inbox.receive(
        dsn(["dee@example.com"], about=mail, **delayed), now=now, source=InboundSource.webhook
    )
    assert (genuine.status, genuine.outcome) == ("delay", "recorded: dee@example.com")
    [event] = rows(world.services.store, EVENTS, kind="delay")
    assert event.subscriber_id == world.subscriber_id("dee@example.com")
    untouched(world, "fay@example.com")
    assert world.state("dee@example.com").status is Status.active
    with world.services.store.transaction() as tx:
        assert [r.kind for r in tx.inbound.newest(10, unmatched_reports=True)] == ["delay"] * 2


def test_unmatched_reports_are_listed_by_nurture_inbound_and_on_the_dashboard(
    make_world: MakeWorld, database_url: str, tmp_path: Path
) -> None:
    world = make_world(admin_password="s3cret")
    world.first_email("victim@example.com", confirmed=True)
    world.services.inbox.receive(
        dsn(["victim@example.com"], sender="postmaster@outside.example"),
        now=world.clock.now(),
        source=InboundSource.webhook,
    )
    reply_to = world.first_email("amy@example.com", confirmed=True)
    world.services.inbox.receive(
        reply(reply_to, "hello"), now=world.clock.now(), source=InboundSource.webhook
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("NURTURE_")},
        "NURTURE_DATABASE_URL": database_url,
        "NURTURE_SECRET_KEY": "test-secret-key",
        "NURTURE_SEQUENCES_DIR": str(world.services.settings.sequences_dir),
        "NURTURE_TEMPLATES_DIR": str(world.services.settings.templates_dir),
    }
    nurture = [str(Path(sys.executable).parent / "nurture"), "inbound"]
    listed = subprocess.run(nurture, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert "bounce     unmatched  postmaster@outside.example" in listed.stdout
    assert "references no email we sent" in listed.stdout
    assert "1 report matched no email we sent" in listed.stdout
    only = subprocess.run(
        [*nurture, "--unmatched"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert only.returncode == 0, only.stderr
    assert "postmaster@outside.example" in only.stdout and "amy@example.com" not in only.stdout
    auth = {"authorization": "Basic " + base64.b64encode(b"admin:s3cret").decode()}
    with served_client(world.services) as http:
        page = http.get("/admin", headers=auth).text
    section = page.split('id="unmatched-reports"', 1)[1]
    assert "postmaster@outside.example" in section and "references no email we sent" in section
    assert "amy@example.com" not in section
