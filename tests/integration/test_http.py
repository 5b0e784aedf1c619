"""The real ASGI app over real HTTP (uvicorn on a loopback port), on both databases."""

from __future__ import annotations

import re
from email.message import EmailMessage
from email.utils import make_msgid
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.db import EVENTS, rows
from support.mail import reply, visible_links
from support.smtp import Caught
from support.web import BROWSER, ServedApp
from support.world import MakeWorld, World

from nurture.db.subscribers import SubscriberRow
from nurture.tokens import TokenKind
from nurture.vocabulary import EnrollmentStatus as Status
from nurture.vocabulary import ExitReason
from nurture.web.app import create_app

TRACKED = re.compile(r'href="(http://nurture\.test/c/[^"]+)"')


def path(url: str) -> str:
    return url.replace("http://nurture.test", "")


def test_healthz(http: httpx.Client) -> None:
    r = http.get("/healthz")
    assert r.status_code == 200 and r.json()["ok"] is True


def test_subscribe_json_form_and_errors(world: World, http: httpx.Client) -> None:
    r = http.post(
        "/subscribe",
        json={
            "email": "Ann@Example.com",
            "sequence": "journey",
            "first_name": "Ann",
            "timezone": "Europe/Paris",
        },
    )
    # The public form answers the same whatever is known of the address (see test_strangers).
    assert r.status_code == 202 and r.json()["result"] == "accepted"
    again = http.post("/subscribe", json={"email": "ann@example.com", "sequence": "journey"})
    assert (again.status_code, again.json()) == (r.status_code, r.json())
    r = http.post(
        "/subscribe", data={"email": "bob@example.com", "sequence": "journey", "first_name": "Bob"}
    )
    assert r.status_code == 202 and "Check your inbox" in r.text
    assert person(world, "bob@example.com") is not None
    r = http.post("/subscribe", json={"email": "not an address", "sequence": "journey"})
    assert r.status_code == 400 and "not a valid email address" in r.json()["error"]
    r = http.post("/subscribe", data={"email": "x@", "sequence": "journey"})
    assert r.status_code == 400 and "not a valid email address" in r.text
    r = http.post("/subscribe", json={"email": "c@example.com", "sequence": "nope"})
    assert r.status_code == 404 and "unknown sequence" in r.json()["error"]
    r = http.post("/subscribe", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    world.tick()
    [mail] = world.smtp.to("ann@example.com")
    assert mail.subject == "Confirm, Ann"
    with world.services.store.transaction() as tx:
        sub = tx.subscribers.by_email("ann@example.com")
    assert sub is not None and sub.fields["timezone"] == "Europe/Paris"


def test_click_redirects_to_the_stored_url_and_advances(world: World, http: httpx.Client) -> None:
    mail = world.first_email("dan@example.com")
    confirm_url, about_url = visible_links(mail.part("html"))
    r = http.get(path(about_url))
    assert r.status_code == 302 and r.headers["location"] == "https://acme.example/about?a=1&b=2"
    r = http.head(path(confirm_url))  # a link checker: no page, no micro-yes
    assert world.state("dan@example.com").step_id == "confirm"
    # Confirming changes state: a GET (a person, or a scanner) only shows a one-button page.
    r = http.get(path(confirm_url), headers=BROWSER)
    assert r.status_code == 200 and '<form method="post">' in r.text
    world.settle()
    assert world.state("dan@example.com").step_id == "confirm"
    # The press is judged like any click: it counts once its window has closed.
    r = http.post(path(confirm_url), data={"confirm": "yes"}, headers=BROWSER)
    assert r.status_code == 303 and r.headers["location"] == "http://nurture.test/confirmed"
    world.settle()
    assert world.state("dan@example.com").step_id == "read"
    r = http.post(path(confirm_url), data={"confirm": "yes"}, headers=BROWSER)  # again
    assert r.status_code == 303
    world.settle()
    assert world.state("dan@example.com").step_id == "read"  # advances nothing


@pytest.mark.parametrize(
    "token",
    [
        "x",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "../../etc/passwd",
        "%00",
        "a" * 500,
        "Y19fX19fX19fX19fX19fX19fX19fX18",
        "<script>",
    ],
)
def test_junk_tokens_get_404(http: httpx.Client, token: str) -> None:
    for url in (f"/c/{token}", f"/u/{token}"):
        r = http.get(url)
        assert r.status_code == 404, url
        assert "location" not in r.headers


def test_forged_and_truncated_tokens_get_404_never_a_redirect(
    world: World, http: httpx.Client
) -> None:
    mail = world.first_email("eve@example.com")
    good = path(visible_links(mail.part("html"))[0])
    token = good.rsplit("/", 1)[1]
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    unsubscribe_token = mail.message["List-Unsubscribe"].strip("<>").rsplit("/", 1)[1]
    # A valid token of another message number, signed with another key.
    from nurture.tokens import Signer

    foreign = Signer("another-key").make(TokenKind.click, 1, 0)
    for bad in (token[:-3], flipped, token + "A", unsubscribe_token, foreign):
        r = http.get(f"/c/{bad}")
        assert r.status_code == 404 and "location" not in r.headers
    # A well-signed token naming a link the message does not have.
    beyond = world.services.signer.make(TokenKind.click, 1, 99)
    assert http.get(f"/c/{beyond}").status_code == 404
    missing = world.services.signer.make(TokenKind.click, 10_000, 0)
    assert http.get(f"/c/{missing}").status_code == 404


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=80))
def test_any_token_text_is_404_never_500(http: httpx.Client, text: str) -> None:
    r = http.get("/c/" + quote(text, safe=""))
    assert r.status_code in (404, 405), (text, r.status_code)


def test_unsubscribe_page_then_post_and_one_click(world: World, http: httpx.Client) -> None:
    world.subscribe("fin@example.com")
    world.subscribe("gil@example.com")
    world.tick()
    [mail] = world.smtp.to("fin@example.com")
    url = path(mail.message["List-Unsubscribe"].strip("<>"))
    page = http.get(url)
    assert page.status_code == 200 and "fin@example.com" in page.text and "<form" in page.text
    assert world.state("fin@example.com").status is Status.active  # a GET changes nothing
    r = http.post(url, data={"confirm": "yes"})
    assert r.status_code == 200 and "unsubscribed" in r.text
    assert world.state("fin@example.com").exit_reason is ExitReason.unsubscribed
    # RFC 8058 one-click: a POST with that body, no cookies, answers 200, idempotently.
    [other] = world.smtp.to("gil@example.com")
    one_click = path(other.message["List-Unsubscribe"].strip("<>"))
    for _ in range(2):
        r = http.post(
            one_click,
            content=b"List-Unsubscribe=One-Click",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code == 200
    assert world.state("gil@example.com").exit_reason is ExitReason.unsubscribed
    assert len(rows(world.services.store, EVENTS, kind="unsubscribe")) == 2


def test_events_need_the_api_token(world: World, http: httpx.Client) -> None:
    world.subscribe("hoa@example.com", confirmed=True)
    body = {"email": "hoa@example.com", "event": "purchase"}
    assert http.post("/events", json=body).status_code == 401
    assert (
        http.post("/events", json=body, headers={"authorization": "Bearer wrong"}).status_code
        == 401
    )
    r = http.post("/events", json=body, headers={"authorization": "Bearer test-api-token"})
    assert r.status_code == 200
    assert r.json() == {
        "converted": ["journey"],
        "advanced": [],
        "duplicate": False,
        "known": True,
    }
    assert world.state("hoa@example.com").exit_reason is ExitReason.converted
    r = http.post(
        "/events",
        json={"email": "nobody@example.com", "event": "purchase"},
        headers={"authorization": "Bearer test-api-token"},
    )
    assert r.status_code == 404


TOKEN = {"authorization": "Bearer test-api-token"}


def person(world: World, email: str) -> SubscriberRow | None:
    with world.services.store.transaction() as tx:
        return tx.subscribers.by_email(email)


def test_with_the_token_a_sign_up_may_be_confirmed_elsewhere(
    world: World, http: httpx.Client
) -> None:
    body = {"email": "own@example.com", "sequence": "journey", "confirmed": True}
    r = http.post("/subscribe", json=body, headers=TOKEN)
    assert r.status_code == 201 and r.json()["status"] == "confirmed"
    world.tick()
    [mail] = world.smtp.to("own@example.com")  # no confirmation: the next step goes
    assert mail.subject.startswith("Read this")
    assert world.state("own@example.com").step_id == "read"


def test_with_the_token_a_person_already_there_is_updated_and_confirmed(
    world: World, http: httpx.Client
) -> None:
    http.post("/subscribe", data={"email": "pen@example.com", "sequence": "journey"})
    again = {"email": "pen@example.com", "sequence": "journey", "plan": "pro", "tags": ["vip"]}
    assert http.post("/subscribe", json=again).status_code == 202  # the public form: as it was
    sub = person(world, "pen@example.com")
    assert sub is not None and "plan" not in sub.fields and sub.tags == ()
    r = http.post("/subscribe", json={**again, "confirmed": "true"}, headers=TOKEN)
    assert r.status_code == 200 and r.json()["status"] == "confirmed"
    sub = person(world, "pen@example.com")
    assert sub is not None and sub.fields["plan"] == "pro" and sub.tags == ("vip",)
    world.tick()
    assert [m.subject for m in world.smtp.to("pen@example.com")] == ["Read this, friend"]


@pytest.mark.parametrize("confirmed", [True, "on"])
def test_without_the_token_confirmed_is_refused(
    world: World, http: httpx.Client, confirmed: object
) -> None:
    """Refused, not ignored: a site that forgot its token learns it at once, where ignoring
    would leave its people unconfirmed (and held, in a sequence without a confirmation step)."""
    body = {"email": "anon@example.com", "sequence": "journey", "confirmed": confirmed}
    if confirmed is True:
        r = http.post("/subscribe", json=body)
        assert r.status_code == 403 and "API token" in r.json()["error"]
    else:
        r = http.post("/subscribe", data=body)
        assert r.status_code == 403 and "API token" in r.text
    assert person(world, "anon@example.com") is None
    r = http.post("/subscribe", json={**body, "confirmed": False})
    assert r.status_code == 202
    sub = person(world, "anon@example.com")
    assert sub is not None and "confirmed" not in sub.fields
    assert sub.status.value == "pending"


def test_a_wrong_token_is_a_401_not_the_public_form(world: World, http: httpx.Client) -> None:
    body = {"email": "wrong@example.com", "sequence": "journey"}
    for header in ("Bearer wrong", "bearer wrong", "Bearer"):
        r = http.post("/subscribe", json=body, headers={"authorization": header})
        assert r.status_code == 401 and "API token" in r.json()["error"]
    assert person(world, "wrong@example.com") is None
    # A staging site's password (another scheme) claims nothing: the public form.
    r = http.post("/subscribe", json=body, headers={"authorization": "Basic c3RhZ2U6cHc="})
    assert r.status_code == 202 and r.json()["result"] == "accepted"
    sub = person(world, "wrong@example.com")
    assert sub is not None and sub.status.value == "pending"


def test_a_json_body_without_a_content_type_is_read_as_json(
    world: World, http: httpx.Client
) -> None:
    """``requests.post(url, data=json.dumps(...))`` sends no content type, and ``fetch()`` with
    a string body sends text/plain: both were read as an empty form."""
    body = b' \n{"email": "raw@example.com", "sequence": "journey", "first_name": "Raw"}'
    r = http.post("/subscribe", content=body)
    assert r.status_code == 202 and r.json()["result"] == "accepted"
    plain = body.replace(b"raw@", b"plain@")
    r = http.post("/subscribe", content=plain, headers={"content-type": "text/plain;charset=UTF-8"})
    assert r.status_code == 202 and r.json()["result"] == "accepted"
    sub = person(world, "raw@example.com")
    assert sub is not None and sub.fields["first_name"] == "Raw"
    assert person(world, "plain@example.com") is not None
    # Declared a form, it is a form (this one has no email field).
    form = {"content-type": "application/x-www-form-urlencoded"}
    r = http.post("/subscribe", content=body.replace(b"raw@", b"form@"), headers=form)
    assert r.status_code == 400 and "an email address is required" in r.text
    event = b'{"email": "raw@example.com", "event": "purchase"}'
    r = http.post("/events", content=event, headers=TOKEN)
    assert r.status_code == 200 and r.json()["converted"] == ["journey"]


def test_an_event_no_sequence_names_is_recorded_and_said_so(
    world: World, http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    world.subscribe("evt@example.com", confirmed=True)
    for _ in range(2):
        r = http.post(
            "/events", json={"email": "evt@example.com", "event": "purchse"}, headers=TOKEN
        )
        assert r.status_code == 200
        assert r.json() == {
            "converted": [],
            "advanced": [],
            "duplicate": False,
            "known": False,
            "did_you_mean": "purchase",
        }
    warned = [r for r in caplog.records if "purchse" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelname == "WARNING"
    assert "did you mean 'purchase'" in warned[0].getMessage()
    recorded = rows(world.services.store, EVENTS, kind="event")
    assert [e.detail["event"] for e in recorded] == ["purchse", "purchse"]
    r = http.post("/events", json={"email": "evt@example.com", "event": "zzz"}, headers=TOKEN)
    assert r.json()["known"] is False and "did_you_mean" not in r.json()
    r = http.post("/events", json={"email": "evt@example.com", "event": "purchase"}, headers=TOKEN)
    assert r.json()["known"] is True and r.json()["converted"] == ["journey"]


def reply_to(mail: Caught, body: str = "Yes please!", **headers: str) -> bytes:
    return reply(mail, body, references=True, **headers)


def test_inbound_reply_advances_once_and_auto_replies_never(
    world: World, http: httpx.Client
) -> None:
    ask = world.at_ask("ida@example.com")
    auto = reply_to(ask, "I am out of office", Auto_Submitted="auto-replied")
    r = http.post("/inbound", content=auto, headers={"content-type": "message/rfc822"})
    assert r.status_code == 200 and r.json()["status"] == "automatic"
    assert world.state("ida@example.com").step_id == "ask"
    human = reply_to(ask)
    r = http.post("/inbound", content=human)
    assert r.json() == {"status": "matched", "outcome": "advanced"}
    assert world.state("ida@example.com").step_id == "offer"
    r = http.post("/inbound", content=human)  # the provider retries its webhook
    assert r.json()["status"] == "duplicate"
    r = http.post("/inbound", content=b"\x00\x01 not an email")
    assert r.status_code in (200, 400) and r.json()["status"] in ("malformed", "unmatched")
    stranger = EmailMessage()
    stranger["From"] = "x@example.com"
    stranger["Subject"] = "hello"
    stranger["In-Reply-To"] = "<1.0000000000000000@acme.example>"
    stranger.set_content("hi")
    assert http.post("/inbound", content=stranger.as_bytes()).json()["status"] == "unmatched"


def test_the_open_pixel_always_answers_with_the_image_and_never_advances(
    world: World, http: httpx.Client
) -> None:
    mail = world.first_email("opal@example.com")
    pixel = re.search(r'src="http://nurture\.test(/o/[^"]+)"', mail.part("html"))
    assert pixel is not None
    for url in (pixel.group(1), "/o/forged-token-xyz", "/o/" + "A" * 31):
        r = http.get(url)
        assert r.status_code == 200 and r.headers["content-type"] == "image/gif"
        assert r.content.startswith(b"GIF89a")
    assert world.state("opal@example.com").step_id == "confirm"
    opens = rows(world.services.store, EVENTS, kind="open")
    assert len(opens) == 1 and opens[0].outcome == "recorded"


def test_outbox_does_not_exist_when_smtp_is_configured(http: httpx.Client) -> None:
    assert http.get("/outbox").status_code == 404


def test_reply_address_matches_even_when_headers_were_rewritten(make_world: MakeWorld) -> None:
    world = make_world(reply_address="replies+{token}@acme.example")
    with ServedApp(create_app(world.services)) as base, httpx.Client(base_url=base) as http:
        ask = world.at_ask("joy@example.com")
        reply_address = ask.message["Reply-To"]
        assert re.fullmatch(r"replies\+[a-z2-7]+@acme\.example", reply_address)
        # The provider replaced the Message-ID and dropped References and In-Reply-To.
        msg = EmailMessage()
        msg["From"] = "Joy <joy@example.com>"
        msg["To"] = reply_address.upper()  # some systems change the case of addresses
        msg["Subject"] = "Re: Tell me by reply"
        msg["Message-ID"] = make_msgid(domain="ses.example")
        msg.set_content("Subject lines!")
        r = http.post("/inbound", content=msg.as_bytes())
        assert r.json() == {"status": "matched", "outcome": "advanced"}
        assert world.state("joy@example.com").step_id == "offer"
        forged = EmailMessage()
        forged["From"] = "x@example.com"
        forged["To"] = reply_address.replace(
            reply_address[9], "a" if reply_address[9] != "a" else "b", 1
        )
        forged["Subject"] = "hi"
        forged.set_content("hi")
        assert http.post("/inbound", content=forged.as_bytes()).json()["status"] == "unmatched"


def test_over_long_inbound_headers_are_set_aside_not_a_500(http: httpx.Client) -> None:
    msg = EmailMessage()
    msg["From"] = "x" * 400 + "@example.com"
    msg["Subject"] = "hello"
    msg["Message-ID"] = "<" + "m" * 2000 + "@example.com>"
    msg.set_content("hi")
    r = http.post("/inbound", content=msg.as_bytes())
    assert r.status_code == 200 and r.json()["status"] == "unmatched"


# -- what a POST to a tracked link is (B10) -------------------------------------------------


def test_a_post_to_a_link_is_judged_like_any_click(world: World, http: httpx.Client) -> None:
    """B10: a POST to any counting /c/ link was an instant micro-yes that skipped the click
    judgement. Only a confirmation's button is pressed; anything else is an ordinary click."""
    read = world.first_email("pip@example.com", confirmed=True)
    world.clock.advance(minutes=2)
    r = http.post(path(visible_links(read.part("html"))[0]), headers=BROWSER)
    assert r.status_code == 303 and r.headers["location"] == "https://acme.example/post"
    assert world.state("pip@example.com").step_id == "read"  # not at once
    world.settle()
    assert world.state("pip@example.com").step_id == "ask"  # a person's click, once judged


def test_a_sandbox_pressing_the_confirmation_button_confirms_nobody(
    world: World, http: httpx.Client
) -> None:
    """Mail security sandboxes (Defender Safe Links detonation) run scripts and submit forms:
    the press is judged like a click (timing, headers, scanner networks)."""
    world.subscribe("sam@example.com")
    world.subscribe("sue@example.com")
    world.tick()
    sandbox = {"User-Agent": BROWSER["User-Agent"], "Accept": "*/*"}  # no browser headers
    [sam] = world.smtp.to("sam@example.com")
    r = http.post(
        path(visible_links(sam.part("html"))[0]), data={"confirm": "yes"}, headers=sandbox
    )
    assert r.status_code == 303  # answered as usual: a scanner learns nothing
    # Browser headers, but from Exchange Online Protection's network.
    [sue] = world.smtp.to("sue@example.com")
    from_microsoft = {**BROWSER, "X-Forwarded-For": "40.107.12.34"}
    http.post(
        path(visible_links(sue.part("html"))[0]), data={"confirm": "yes"}, headers=from_microsoft
    )
    world.settle()
    assert world.state("sam@example.com").step_id == "confirm"
    assert world.state("sue@example.com").step_id == "confirm"
    presses = rows(world.services.store, EVENTS, kind="click")
    assert [(e.verdict, e.detail["method"]) for e in presses] == [("bot", "POST"), ("bot", "POST")]


# -- bodies and their limits (B9) ---------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["/subscribe", "/events"])
def test_json_nested_thousands_deep_is_a_400_not_a_500(http: httpx.Client, endpoint: str) -> None:
    body = b"[" * 5000 + b"]" * 5000
    r = http.post(
        endpoint,
        content=body,
        headers={"content-type": "application/json", "authorization": "Bearer test-api-token"},
    )
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]


@pytest.mark.parametrize("endpoint", ["/subscribe", "/events", "/inbound", "/u/TOKEN"])
def test_a_body_declared_too_large_is_refused_before_it_is_read(
    world: World, http: httpx.Client, endpoint: str
) -> None:
    """B9: four parallel 250 MB POSTs took the daemon from 81 to 1,459 MB: each body was read
    whole before its size was checked. A Content-Length over the limit is refused at once."""
    import socket

    if endpoint == "/u/TOKEN":
        mail = world.first_email("ula@example.com")
        endpoint = path(mail.message["List-Unsubscribe"].strip("<>"))
    host, port = str(http.base_url).removeprefix("http://").rstrip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(
            f"POST {endpoint} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Authorization: Bearer test-api-token\r\n"
            "Content-Length: 262144000\r\n\r\n".encode()
        )
        answer = conn.recv(4096)  # no body was sent: an answer now means it was not awaited
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    if "/u/" in endpoint:
        assert world.state("ula@example.com").status is Status.active


@pytest.mark.parametrize(
    ("endpoint", "limit"), [("/inbound", 10 * 1024 * 1024), ("/subscribe", 64 * 1024)]
)
def test_a_streamed_body_is_cut_off_at_the_limit(world: World, endpoint: str, limit: int) -> None:
    """Without a Content-Length (chunked), the body is counted as it arrives and refused as
    soon as it passes the limit: the app never holds more than the limit."""
    import asyncio

    app = create_app(world.services)
    chunk = b"x" * 65536
    pulled = 0
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": chunk, "more_body": True}  # never ends

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": endpoint,
        "raw_path": endpoint.encode(),
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"host", b"x")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 80),
    }
    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout=30))
    assert sent[0]["status"] == 413
    assert pulled * len(chunk) <= limit + len(chunk)
