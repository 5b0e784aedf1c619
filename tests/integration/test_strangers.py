"""The web edge under strangers (issue 20, findings 7 to 10), over real HTTP from several
loopback source addresses (127.0.0.2, 127.0.0.3, ... all reach the server on Linux), on both
databases: the form answers alike whatever is known of an address, mails nothing a stranger
typed before the owner's yes, has a cap for all addresses together and a honeypot, enters a
known person in another sequence only through its confirmation, and tags nobody; the
catcher's pages are the operator's; wrong admin passwords are counted and logged; the
operator's and the token pages carry their headers; the inbound secret is a header only."""

from __future__ import annotations

import base64
import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.db import INBOUND, rows
from support.mail import visible_links
from support.web import ServedApp, served_client
from support.world import MakeWorld, World

from nurture.db.subscribers import SubscriberRow
from nurture.mail.catcher import MaildirHandler, Outbox
from nurture.vocabulary import EnrollmentStatus, SubscriberStatus
from nurture.web.app import create_app

SPAM = "WIN a FREE iPhone https://spam.example/claim"
FORM = {"sequence": "journey", "first_name": "Ann"}


@contextlib.contextmanager
def client_from(base: str, source: str, **options: Any) -> Iterator[httpx.Client]:
    """An HTTP client whose connections leave from ``source`` (a loopback address)."""
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(
        base_url=base, transport=transport, follow_redirects=False, timeout=10, **options
    ) as client:
        yield client


@contextlib.contextmanager
def served(app: Any) -> Iterator[str]:
    with ServedApp(app) as base:
        yield base


def person(world: World, email: str) -> SubscriberRow | None:
    with world.services.store.transaction() as tx:
        return tx.subscribers.by_email(email)


def actions(caplog: pytest.LogCaptureFixture, action: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "action", None) == action]


# -- finding 8: the form is no oracle -------------------------------------------------------


def test_the_form_answers_alike_whatever_is_known_of_the_address(
    world: World, http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    """New, pending, confirmed, unsubscribed, bounced: the same status and the same words,
    as a form and as JSON; what was done is in the log (and `nurture person`)."""
    caplog.set_level(logging.INFO)
    world.subscribe("pending@example.com")
    world.subscribe("confirmed@example.com", confirmed=True)
    world.subscribe("left@example.com", confirmed=True)
    world.services.subscriptions.unsubscribe_address("left@example.com", now=world.clock.now())
    world.subscribe("bounced@example.com")
    bounced = world.subscriber_id("bounced@example.com")
    with world.services.store.transaction() as tx:
        tx.subscribers.set_status(bounced, SubscriberStatus.bounced, now=world.clock.now())
    answers = {}
    for who in ("new", "pending", "confirmed", "left", "bounced"):
        form = http.post("/subscribe", data={**FORM, "email": f"{who}@example.com"})
        as_json = http.post("/subscribe", json={**FORM, "email": f"{who}@example.com"})
        answers[who] = (form.status_code, form.text, as_json.status_code, as_json.text)
    assert len(set(answers.values())) == 1, answers
    status, text, _, body = answers["new"]
    assert status == 202 and "if this address can be subscribed" in text
    assert '"result":"accepted"' in body.replace(" ", "")
    # What is stored is as it was: the new one is in; the ones who left stay out.
    new = person(world, "new@example.com")
    assert new is not None and new.status.value == "pending"
    for who, status_now in (("left", "unsubscribed"), ("bounced", "bounced")):
        sub = person(world, f"{who}@example.com")
        assert sub is not None and sub.status.value == status_now
    assert world.state("left@example.com").status is EnrollmentStatus.exited
    assert len(actions(caplog, "subscribe_refused")) == 4  # left and bounced, form and JSON
    assert len(actions(caplog, "already_enrolled")) >= 4


def test_nothing_a_stranger_typed_is_mailed_before_the_yes(
    world: World, http: httpx.Client
) -> None:
    """The confirmation shows a first name only of a name's shape; the rest is kept (nothing
    lost) for after the yes."""
    typed = {"email": "victim@example.com", "first_name": SPAM, "note": SPAM}
    assert http.post("/subscribe", data={**FORM, **typed}).status_code == 202
    world.tick()
    [mail] = world.smtp.to("victim@example.com")
    assert mail.subject == "Confirm, friend"
    for part in (mail.subject, mail.part("html"), mail.part("plain")):
        assert "spam" not in part.lower() and "iphone" not in part.lower()
    sub = person(world, "victim@example.com")
    assert sub is not None and sub.fields["first_name"] == SPAM and sub.fields["note"] == SPAM
    # A name's shape is shown as typed.
    http.post("/subscribe", data={**FORM, "email": "jo@example.com", "first_name": "Jo-Ann"})
    world.tick()
    assert [m.subject for m in world.smtp.to("jo@example.com")] == ["Confirm, Jo-Ann"]


def test_a_filled_honeypot_is_answered_alike_and_nothing_is_stored(
    world: World, http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    person_like = http.post("/subscribe", data={**FORM, "email": "real@example.com"})
    machine = http.post(
        "/subscribe", data={**FORM, "email": "bot@example.com", "nurture_trap": "http://x"}
    )
    assert (machine.status_code, machine.text) == (person_like.status_code, person_like.text)
    assert person(world, "bot@example.com") is None
    assert person(world, "real@example.com") is not None
    assert len(actions(caplog, "subscribe_honeypot")) == 1
    assert 'name="nurture_trap"' in http.get("/subscribe").text  # the form carries it


def test_the_public_form_tags_nobody_and_the_token_still_may(
    world: World, http: httpx.Client
) -> None:
    body = {**FORM, "email": "tagged@example.com", "tags": "vip;customer"}
    assert http.post("/subscribe", data=body).status_code == 202
    sub = person(world, "tagged@example.com")
    assert sub is not None and sub.tags == ()
    own = {**body, "email": "own@example.com", "tags": ["vip"]}
    r = http.post("/subscribe", json=own, headers={"authorization": "Bearer test-api-token"})
    assert r.status_code == 201
    sub = person(world, "own@example.com")
    assert sub is not None and sub.tags == ("vip",)


def test_sign_ups_of_all_addresses_together_have_a_cap(
    make_world: MakeWorld, caplog: pytest.LogCaptureFixture
) -> None:
    """Thirty victims from thirty addresses were all mailed: past the cap for all addresses,
    a sign-up is dropped, logged, and answered as any other."""
    world = make_world(subscribe_global_per_minute=3)
    answers = []
    with served(create_app(world.services)) as base:
        for i in range(2, 8):
            with client_from(base, f"127.0.0.{i}") as http:
                r = http.post("/subscribe", data={**FORM, "email": f"v{i}@example.com"})
                answers.append((r.status_code, r.text))
            with client_from(base, f"127.0.0.{i}") as http:  # a typo is still shown
                r = http.post("/subscribe", data={**FORM, "email": "x@"})
                assert r.status_code == 400
    assert len(set(answers)) == 1 and answers[0][0] == 202
    stored = [i for i in range(2, 8) if person(world, f"v{i}@example.com") is not None]
    assert stored == [2, 3, 4]
    world.tick()
    assert sorted(m.recipient for m in world.smtp.caught) == [
        "v2@example.com",
        "v3@example.com",
        "v4@example.com",
    ]
    capped = actions(caplog, "subscribe_capped")
    assert [r.getMessage().split()[3] for r in capped] == [f"v{i}@example.com" for i in (5, 6, 7)]
    assert all(r.levelno == logging.WARNING for r in capped)


def test_the_limit_per_address_is_its_own(make_world: MakeWorld) -> None:
    world = make_world(subscribe_per_minute=2)
    with served(create_app(world.services)) as base:
        with client_from(base, "127.0.0.2") as http:
            codes = [
                http.post("/subscribe", data={**FORM, "email": f"a{i}@example.com"}).status_code
                for i in range(3)
            ]
        with client_from(base, "127.0.0.3") as http:
            other = http.post("/subscribe", data={**FORM, "email": "b@example.com"}).status_code
    assert codes == [202, 202, 429] and other == 202
    assert person(world, "a2@example.com") is None and person(world, "b@example.com") is not None


def test_a_stranger_cannot_enter_a_known_person_in_another_sequence(
    world: World, http: httpx.Client
) -> None:
    """A confirmed person named by the form for another sequence gets that sequence's
    confirmation, and enters it only by its yes; a sequence without one takes them not."""
    world.subscribe("kim@example.com", confirmed=True)
    world.tick()
    assert [m.subject for m in world.smtp.to("kim@example.com")] == ["Read this, Kim"]
    r = http.post("/subscribe", data={"email": "kim@example.com", "sequence": "second"})
    assert r.status_code == 202
    world.tick()
    world.clock.advance(seconds=1)
    world.tick()
    subjects = [m.subject for m in world.smtp.to("kim@example.com")]
    assert subjects == ["Read this, Kim", "Confirm for the second list"]
    assert world.state("kim@example.com", "second").step_id == "confirm"
    # Its reminder goes as to anyone who has not said yes, and no step of it before the yes.
    world.clock.advance(seconds=4)
    world.tick()
    assert world.smtp.to("kim@example.com")[-1].subject == "Second: please confirm"
    confirm = world.smtp.to("kim@example.com")[1]
    world.click(visible_links(confirm.part("html"))[0])
    world.tick()
    assert world.smtp.to("kim@example.com")[-1].subject == "Second list news"
    # A sequence with no confirmation step of its own: nobody known is entered from the form.
    r = http.post("/subscribe", data={"email": "kim@example.com", "sequence": "noconfirm"})
    assert r.status_code == 202
    kim = world.subscriber_id("kim@example.com")
    with world.services.store.transaction() as tx:
        assert tx.enrollments.of(kim, "noconfirm") is None


def test_a_pending_persons_confirmation_elsewhere_does_not_enter_them_where_a_stranger_did(
    world: World, http: httpx.Client
) -> None:
    world.subscribe("lee@example.com")  # pending: their journey confirmation goes
    r = http.post("/subscribe", data={"email": "lee@example.com", "sequence": "second"})
    assert r.status_code == 202
    world.tick()
    first = next(m for m in world.smtp.to("lee@example.com") if m.subject.startswith("Confirm,"))
    world.click(visible_links(first.part("html"))[0])  # confirms the journey
    world.tick()
    assert world.state("lee@example.com").step_id == "read"
    assert world.state("lee@example.com", "second").step_id == "confirm"
    subjects = [m.subject for m in world.smtp.to("lee@example.com")]
    assert "Second list news" not in subjects


# -- finding 7: the catcher's pages are the operator's --------------------------------------


@pytest.fixture
def caught(make_world: MakeWorld, tmp_path: Path) -> tuple[World, Outbox]:
    """A world whose SMTP server is the catcher's Maildir, and one email in it."""
    path = tmp_path / "outbox"
    world = make_world(handler=MaildirHandler(path))  # type: ignore[arg-type]
    world.subscribe("cat@example.com")
    world.tick()
    return world, Outbox(path)


def test_the_outbox_answers_only_the_operator(caught: tuple[World, Outbox]) -> None:
    world, outbox = caught
    [mail] = outbox.list()
    pages = ["/outbox", f"/outbox/{mail.key}", f"/outbox/{mail.key}/html"]
    app = create_app(world.services, outbox=outbox)
    with served(app) as base, httpx.Client(base_url=base, timeout=10) as http:
        for path in pages:
            r = http.get(path)  # the operator's own browser, on loopback
            assert r.status_code == 200, path
        # A stranger, through a reverse proxy on this machine (uvicorn trusts its
        # X-Forwarded-For from loopback), or from any address that is not loopback.
        stranger = {"X-Forwarded-For": "198.51.100.7"}
        for path in pages:
            r = http.get(path, headers=stranger)
            assert r.status_code == 401 and "Cat" not in r.text, path
        r = http.post(f"/outbox/{mail.key}/reply", data={"body": "Yes!"}, headers=stranger)
        assert r.status_code == 401
        assert rows(world.services.store, INBOUND) == []  # nobody answered for Cat
        assert http.get("/", headers=stranger, follow_redirects=True).status_code == 401


def test_with_a_password_the_outbox_asks_everyone_for_it(
    caught: tuple[World, Outbox], make_world: MakeWorld
) -> None:
    world, outbox = caught
    guarded = make_world(admin_password="s3cret")
    app = create_app(guarded.services, outbox=outbox)
    with served(app) as base, httpx.Client(base_url=base, timeout=10) as http:
        assert http.get("/outbox").status_code == 401
        r = http.get("/outbox", headers={**basic("s3cret"), "X-Forwarded-For": "198.51.100.7"})
        assert r.status_code == 200 and "cat@example.com" in r.text


# -- finding 9: the admin password cannot be guessed at leisure ------------------------------


def basic(password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()}


def test_wrong_admin_passwords_are_counted_per_address_and_logged(
    make_world: MakeWorld, caplog: pytest.LogCaptureFixture
) -> None:
    world = make_world(admin_password="s3cret")
    with served(create_app(world.services)) as base:
        with client_from(base, "127.0.0.3") as operator:
            for _ in range(10):  # a right password is never counted, nor slowed
                assert operator.get("/admin", headers=basic("s3cret")).status_code == 200
        with client_from(base, "127.0.0.2") as guesser:
            assert guesser.get("/admin").status_code == 401  # no password offered: no guess
            codes = [
                guesser.get("/admin", headers=basic(f"guess{i}")).status_code for i in range(8)
            ]
            assert codes == [401] * 5 + [429] * 3
            r = guesser.get("/metrics", headers=basic("s3cret"))  # the right one waits too
            assert r.status_code == 429 and 0 < int(r.headers["Retry-After"]) <= 60
        with client_from(base, "127.0.0.3") as operator:
            assert operator.get("/admin", headers=basic("s3cret")).status_code == 200
    failed = actions(caplog, "admin_login_failed")
    assert len(failed) == 5
    assert all(r.levelno == logging.WARNING and "127.0.0.2" in r.getMessage() for r in failed)


def test_operator_pages_are_never_framed_and_token_pages_leak_nothing(
    caught: tuple[World, Outbox],
) -> None:
    world, outbox = caught
    [mail] = outbox.list()
    app = create_app(world.services, outbox=outbox)
    with served(app) as base, httpx.Client(base_url=base, timeout=10) as http:
        for path in ("/admin", "/outbox", f"/outbox/{mail.key}"):
            r = http.get(path)
            assert r.status_code == 200
            assert r.headers["X-Frame-Options"] == "DENY", path
            assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"], path
        # The email's own frame may be shown by the outbox page, and by no other site.
        framed = http.get(f"/outbox/{mail.key}/html")
        assert "frame-ancestors 'self'" in framed.headers["Content-Security-Policy"]
        confirm, *_ = visible_links(mail.part("html"))
        unsubscribe = mail.message["List-Unsubscribe"].strip("<>")
        for url in (confirm, unsubscribe):
            r = http.get(url.replace("http://nurture.test", ""), headers={"Accept-Language": "en"})
            assert r.status_code == 200 and "<form" in r.text, url
            assert r.headers["Referrer-Policy"] == "no-referrer", url
            assert r.headers["Cache-Control"] == "no-store", url


# -- finding 10 (part): the inbound secret is a header only ---------------------------------


def test_the_inbound_secret_in_the_url_is_refused(
    make_world: MakeWorld, caplog: pytest.LogCaptureFixture
) -> None:
    world = make_world(inbound_secret="hooks-secret")
    raw = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nhello\r\n"
    with served_client(world.services) as http:
        r = http.post("/inbound?secret=hooks-secret", content=raw)
        assert r.status_code == 401 and "X-Nurture-Secret" in r.json()["error"]
        assert rows(world.services.store, INBOUND) == []
        said = actions(caplog, "inbound_secret_in_url")
        assert len(said) == 1 and "header" in said[0].getMessage()
        r = http.post("/inbound", content=raw, headers={"X-Nurture-Secret": "hooks-secret"})
        assert r.status_code == 200
        r = http.post("/inbound", content=raw, headers={"Authorization": "Bearer hooks-secret"})
        assert r.status_code == 200
