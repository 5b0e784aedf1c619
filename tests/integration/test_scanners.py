"""Only people advance people: replayed scanner profiles against the real app over HTTP.

Each profile is how a family of mail security scanners fetches the links of a fresh email
(timing, method, user agent, headers, which links); none may advance anyone. The human
profiles must advance, the quick one once its window has closed.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.db import EVENTS, rows
from support.smtp import Caught
from support.web import BROWSER, CHROME
from support.world import MakeWorld, World

from nurture.tokens import TokenKind
from nurture.tracking import ClickRequest

ANCHOR = re.compile(r'<a href="http://nurture\.test(/c/[^"]+)"([^>]*)>')

PERSON = BROWSER
HEADLESS = {"User-Agent": CHROME, "Accept": "*/*"}  # a browser agent, no browser headers


def at_read(world: World, email: str) -> Caught:
    """A confirmed person whose 'read' email (advance_on: click) just went out."""
    world.subscribe(email, confirmed=True)
    world.tick()
    [mail] = world.smtp.to(email)
    assert mail.subject.startswith("Read this")
    return mail


def paths(mail: Caught) -> tuple[list[str], str]:
    """(visible tracked links, the hidden honeypot link) of an email."""
    visible, hidden = [], ""
    for path, rest in ANCHOR.findall(mail.part("html")):
        if "display:none" in rest:
            hidden = path
        else:
            visible.append(path)
    assert hidden, "every email carries a honeypot link"
    return visible, hidden


def settle(world: World) -> None:
    """Let every click's window close, then run the daemon's tick."""
    world.settle()
    world.tick()


def verdicts(world: World) -> list[tuple[str, str]]:
    return [(str(e.verdict), e.outcome) for e in rows(world.services.store, EVENTS, kind="click")]


SCANNERS = {
    # Microsoft Defender Safe Links: seconds after delivery, every link, a browser agent
    # without the headers a person's browser sends.
    "safe-links-like": [("GET", "all", HEADLESS, 1)],
    # Mimecast/Proofpoint-style: HEAD first, then GET, of every link within a second.
    "head-then-get": [("HEAD", "all", HEADLESS, 2), ("GET", "all", HEADLESS, 2)],
    # A scanner that fetches the honeypot first, then the ask, with full browser headers.
    "honeypot-first": [("GET", "honeypot", PERSON, 30), ("GET", "ask", PERSON, 31)],
    # A mail client's link preview: speculative prefetch of the ask.
    "prefetch": [("GET", "ask", {**PERSON, "Sec-Purpose": "prefetch"}, 20)],
    # A scanner that says who it is.
    "named-agent": [("GET", "ask", {"User-Agent": "Mimecast URL Protect/1.0"}, 90)],
    # Defender fetching from Exchange Online Protection's network, looking like a person
    # (the app trusts X-Forwarded-For from its loopback proxy, as uvicorn does by default).
    "microsoft-network": [("GET", "ask", {**PERSON, "X-Forwarded-For": "40.107.12.34"}, 40)],
    # A link checker that waits, then walks every link with browser headers.
    "late-walker": [("GET", "all", PERSON, 600)],
}


@pytest.mark.parametrize("profile", sorted(SCANNERS))
def test_no_scanner_profile_advances_anyone(world: World, http: httpx.Client, profile: str) -> None:
    mail = at_read(world, "scan@example.com")
    visible, honeypot = paths(mail)
    sent = world.clock.now()

    for method, which, headers, seconds in SCANNERS[profile]:
        world.clock.current = sent + timedelta(seconds=seconds)
        targets = {"all": [*visible, honeypot], "ask": visible[:1], "honeypot": [honeypot]}
        for path in targets[which]:
            r = http.request(method, path, headers=headers)
            assert r.status_code in (200, 302)
    settle(world)
    assert world.state("scan@example.com").step_id == "read"
    assert len(world.smtp.to("scan@example.com")) == 1
    assert {v for v, _ in verdicts(world)} == {"bot"}


def test_a_person_who_clicks_a_minute_later_advances(world: World, http: httpx.Client) -> None:
    mail = at_read(world, "pat@example.com")
    visible, _ = paths(mail)
    world.clock.advance(seconds=60)
    assert http.get(visible[0], headers=PERSON).status_code == 302
    assert world.state("pat@example.com").step_id == "read"  # decided when the window closes
    settle(world)
    assert world.state("pat@example.com").step_id == "ask"
    assert verdicts(world) == [("human", "advanced")]


def test_a_person_who_clicks_3_seconds_after_delivery_advances_once_the_window_closes(
    world: Any, http: httpx.Client
) -> None:
    mail = at_read(world, "quick@example.com")
    visible, _ = paths(mail)
    world.clock.advance(seconds=3)
    assert http.get(visible[0], headers=PERSON).status_code == 302
    world.tick()
    assert world.state("quick@example.com").step_id == "read"
    settle(world)
    assert world.state("quick@example.com").step_id == "ask"
    [(verdict, outcome)] = verdicts(world)
    assert (verdict, outcome) == ("human", "advanced")


def test_status_shows_human_and_bot_clicks_per_step(world: World, http: httpx.Client) -> None:
    mail = at_read(world, "mix@example.com")
    visible, honeypot = paths(mail)
    http.get(honeypot, headers=HEADLESS)
    world.clock.advance(seconds=120)
    http.get(visible[0], headers=PERSON)
    settle(world)
    with world.services.store.transaction() as tx:
        counts = tx.reports.click_counts()
    assert ("journey", "read", "bot", 1) in counts
    assert ("journey", "read", "human", 1) in counts


CLICK = st.tuples(
    st.integers(min_value=0, max_value=900),  # seconds after the email went out
    st.sampled_from(["ask", "other", "honeypot"]),
    st.sampled_from(["GET", "HEAD"]),
    st.sampled_from(["person", "headless", "scanner"]),
    st.sampled_from(["203.0.113.7", "198.51.100.20"]),  # two clients on the same email
)
AGENTS = {"person": PERSON, "headless": HEADLESS, "scanner": {"User-Agent": "Proofpoint/1"}}


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(CLICK, min_size=1, max_size=8))
def test_property_at_most_one_advance_per_step_and_never_by_a_bot(
    tmp_path_factory: pytest.TempPathFactory, clicks: list[tuple[int, str, str, str, str]]
) -> None:
    """Whatever clicks arrive, from one client or two, in whatever order and timing: the
    enrollment moves on at most once from its step, and only through a click judged human."""
    from support.clock import FixedClock
    from support.settings import make_settings

    from nurture.db.migrate import upgrade
    from nurture.mail.send import NoRelay
    from nurture.services import build_services

    folder = tmp_path_factory.mktemp("prop")
    url = f"sqlite:///{folder / 'p.db'}"
    upgrade(url)
    clock = FixedClock()
    services = build_services(make_settings(folder, url), clock=clock, transport=NoRelay())
    try:
        services.subscriptions.subscribe(
            email="p@example.com",
            sequence_id="journey",
            fields={},
            now=clock.now(),
            confirmed=True,
        )
        # Plan (records and claims the email), render it and mark it sent without SMTP: the
        # clicks are what is under test here.
        d = services.dispatcher
        _, [row] = d.plan(clock.now())
        [out] = d._render([row])
        with services.store.transaction() as tx:
            tx.outbox.lease([out.id], worker=d.worker, now=clock.now())
            tx.outbox.mark_sent([out.id], worker=d.worker, now=clock.now())
            message = tx.outbox.get(out.id)
        assert message is not None
        index = {"ask": 0, "other": 0, "honeypot": len(message.links) - 1}
        sent = clock.now()
        for seconds, which, method, agent, ip in sorted(clicks):
            clock.current = sent + timedelta(seconds=seconds)
            token = services.signer.make(TokenKind.click, out.id, index[which])
            headers = AGENTS[agent]
            request = ClickRequest(
                method=method,
                user_agent=headers["User-Agent"],
                has_browser_headers="Accept-Language" in headers,
                ip=ip,
            )
            services.tracker.click(token, now=clock.now(), request=request)
            services.tracker.evaluate_clicks(clock.now())
        clock.current = sent + timedelta(seconds=2000)
        services.tracker.evaluate_clicks(clock.now())
        events = rows(services.store, EVENTS, kind="click")
        with services.store.transaction() as tx:
            state = tx.enrollments.of(message.subscriber_id, "journey")
        assert state is not None
        advanced = [e for e in events if e.outcome in ("advanced", "completed")]
        assert len(advanced) <= 1
        assert all(e.verdict == "human" for e in advanced)
        assert all(e.verdict in ("human", "bot") for e in events)  # nothing left pending
        assert (state.state.step_id == "ask") == bool(advanced)
    finally:
        services.store.dispose()


def test_the_honeypot_of_mail_sent_under_an_older_base_url_still_counts(
    make_world: MakeWorld,
) -> None:
    """B6: honeypot hits were recognised by comparing with the current NURTURE_BASE_URL, so
    after it changed, the honeypot of every email already sent stopped giving scanners away.
    The honeypot is marked in the stored links; links stored before that mark are read by
    their place and path."""
    before = make_world()
    mail = at_read(before, "old@example.com")
    _, honeypot = paths(mail)
    token = honeypot.rsplit("/", 1)[1]
    after = make_world(base_url="https://links.acme.example")  # same database, new base URL
    after.clock.current = before.clock.now() + timedelta(minutes=5)
    person = ClickRequest(method="GET", user_agent=CHROME, has_browser_headers=True)
    after.services.tracker.click(token, now=after.clock.now(), request=person)
    [(verdict, outcome)] = verdicts(after)
    assert (verdict, outcome) == ("bot", "bot")
    # A row written before the mark existed: [url, counts] pairs only.
    from sqlalchemy import update

    from nurture.db.models import MESSAGES

    with after.services.store.database.begin() as conn:
        stored = conn.execute(MESSAGES.select()).one()
        legacy = [[url, counts] for url, counts, *_ in stored.links]
        conn.execute(update(MESSAGES).values(links=legacy))
    after.services.tracker.click(token, now=after.clock.now(), request=person)
    assert verdicts(after)[-1] == ("bot", "bot")
    [event] = rows(after.services.store, EVENTS, kind="click")[-1:]
    assert event.detail["reasons"] == ["honeypot link"]


def test_a_person_alone_on_the_email_advances_within_two_seconds(
    world: World, http: httpx.Client
) -> None:
    mail = at_read(world, "fast@example.com")
    visible, _ = paths(mail)
    world.clock.advance(seconds=60)
    assert http.get(visible[0], headers=PERSON).status_code == 302
    world.clock.advance(seconds=0.5)
    world.tick()
    assert world.state("fast@example.com").step_id == "read"  # not yet: a second's wait
    world.clock.advance(seconds=0.6)
    world.tick()  # the daemon's next tick: judged, advanced, and the next email sent
    assert world.state("fast@example.com").step_id == "ask"
    assert [m.subject for m in world.smtp.to("fast@example.com")][-1] == "Tell me by reply"
    assert verdicts(world) == [("human", "advanced")]


def test_a_walker_with_browser_headers_is_still_judged_on_the_whole_window(
    world: World, http: httpx.Client
) -> None:
    """Three links 0.4 s apart, as a person's browser would send them: the first click's
    quick wait sees the others and waits for the window, which shows a walk."""
    mail = at_read(world, "walked@example.com")
    visible, honeypot = paths(mail)
    world.clock.advance(seconds=120)
    for path in [*visible, honeypot][:3]:
        assert http.get(path, headers=PERSON).status_code == 302
        world.clock.advance(seconds=0.4)
    for _ in range(12):  # the daemon ticking once a second through the window
        world.tick()
        world.clock.advance(seconds=1)
    assert world.state("walked@example.com").step_id == "read"
    assert {v for v, _ in verdicts(world)} == {"bot"}


def test_soft_signals_still_wait_for_the_whole_window(world: World, http: httpx.Client) -> None:
    mail = at_read(world, "soft@example.com")
    visible, _ = paths(mail)
    world.clock.advance(seconds=2)  # seconds after delivery: a soft signal
    assert http.get(visible[0], headers=PERSON).status_code == 302
    world.clock.advance(seconds=1.5)
    world.tick()
    assert world.state("soft@example.com").step_id == "read"
    settle(world)
    assert world.state("soft@example.com").step_id == "ask"
