"""A hammered link, pixel or form over real HTTP, on SQLite and PostgreSQL: answered as
usual (the form with a 429 past its limit), a bounded number of rows written, and a
hammered link never a yes."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from support.db import EVENTS, rows
from support.mail import visible_links
from support.web import BROWSER, served_client
from support.world import MakeWorld, World

from nurture.db.subscribers import SubscriberRow
from nurture.limits import FLOOD_NOTE_EVERY


@pytest.fixture
def world(make_world: MakeWorld) -> World:
    # No wait for clicks past the limit here (the storm acceptance test has it): the test
    # sends hundreds one after the other.
    return make_world(click_tarpit_seconds=0.0)


@pytest.fixture
def http(world: World) -> Iterator[httpx.Client]:
    with served_client(world.services) as client:
        yield client


def ask_path(world: World, email: str) -> str:
    """The path of the first visible link of the person's first email."""
    return "/" + visible_links(world.smtp.to(email)[0].part("html"))[0].split("/", 3)[3]


def test_a_hammered_link_writes_a_bounded_number_of_rows_and_is_no_yes(
    world: World, http: httpx.Client
) -> None:
    world.subscribe("hammer@example.com", confirmed=True)
    world.tick()
    link = ask_path(world, "hammer@example.com")
    world.clock.advance(seconds=60)
    for _ in range(250):
        assert http.get(link, headers=BROWSER).status_code == 302  # answered as usual
    clicks = rows(world.services.store, EVENTS, kind="click")
    limit = world.services.settings.click_flood_limit
    one_by_one = [e for e in clicks if e.outcome != "flood"]
    [summary] = [e for e in clicks if e.outcome == "flood"]
    assert len(one_by_one) == limit
    # Brought up to date every FLOOD_NOTE_EVERY clicks: within that of the true count.
    assert 250 - limit - FLOOD_NOTE_EVERY < summary.detail["clicks"] <= 250 - limit
    assert str(summary.verdict) == "bot"
    world.settle()
    world.tick()
    assert world.state("hammer@example.com").step_id == "read"  # a hammered link is no yes
    decided = rows(world.services.store, EVENTS, kind="click")
    assert {str(e.verdict) for e in decided} == {"bot"}
    assert any("hammered" in " ".join(e.detail["reasons"]) for e in decided)


def test_another_persons_click_meanwhile_still_counts(world: World, http: httpx.Client) -> None:
    for who in ("storm", "calm"):
        world.subscribe(f"{who}@example.com", confirmed=True)
    world.tick()
    storm = (
        "/" + visible_links(world.smtp.to("storm@example.com")[0].part("html"))[0].split("/", 3)[3]
    )
    calm = (
        "/" + visible_links(world.smtp.to("calm@example.com")[0].part("html"))[0].split("/", 3)[3]
    )
    world.clock.advance(seconds=60)
    for i in range(120):
        http.get(storm, headers=BROWSER)
        if i == 60:  # the other person, from another address, in the middle of the storm
            assert (
                http.get(calm, headers={**BROWSER, "X-Forwarded-For": "203.0.113.50"}).status_code
                == 302
            )
    world.settle()
    world.tick()
    assert world.state("calm@example.com").step_id == "ask"
    assert world.state("storm@example.com").step_id == "read"


def test_a_hammered_pixel_is_not_recorded_past_its_limit(world: World, http: httpx.Client) -> None:
    world.subscribe("pixel@example.com", confirmed=True)
    world.tick()
    html = world.smtp.to("pixel@example.com")[0].part("html")
    pixel = "/o/" + html.split("/o/", 1)[1].split('"', 1)[0]
    for _ in range(60):
        assert http.get(pixel).status_code == 200
    opens = rows(world.services.store, EVENTS, kind="open")
    assert len(opens) == world.services.settings.click_flood_limit


def test_the_form_answers_429_past_its_limit_per_address(world: World, http: httpx.Client) -> None:
    limit = world.services.settings.subscribe_per_minute
    codes = [
        http.post(
            "/subscribe", data={"email": f"f{i}@example.com", "sequence": "journey"}
        ).status_code
        for i in range(limit + 5)
    ]
    assert codes[:limit] == [202] * limit and codes[limit:] == [429] * 5
    taken = [i for i in range(limit + 5) if person(world, f"f{i}@example.com") is not None]
    assert taken == list(range(limit))  # past the limit nothing is stored
    refused = http.post("/subscribe", json={"email": "late@example.com", "sequence": "journey"})
    assert refused.status_code == 429 and "try again in a minute" in refused.json()["error"]
    assert refused.headers["Retry-After"] == "60"
    page = http.post("/subscribe", data={"email": "late@example.com", "sequence": "journey"})
    assert "Please wait a minute" in page.text


TOKEN = {"authorization": "Bearer test-api-token"}


def person(world: World, email: str) -> SubscriberRow | None:
    with world.services.store.transaction() as tx:
        return tx.subscribers.by_email(email)


def test_the_marketers_own_server_has_its_own_limit_not_the_forms(
    world: World, http: httpx.Client
) -> None:
    """A landing page's backend posts every sign-up from one address: with the API token they
    are not the form's (10 a minute per address), nor do they use up its budget."""
    limit = world.services.settings.subscribe_per_minute
    anonymous = [
        http.post("/subscribe", data={"email": f"a{i}@example.com", "sequence": "journey"})
        for i in range(limit)
    ]
    assert [r.status_code for r in anonymous] == [202] * limit
    own = [
        http.post(
            "/subscribe",
            json={"email": f"api{i}@example.com", "sequence": "journey"},
            headers=TOKEN,
        )
        for i in range(30)
    ]
    assert [r.status_code for r in own] == [201] * 30
    late = http.post("/subscribe", data={"email": "late@example.com", "sequence": "journey"})
    assert late.status_code == 429


def test_the_api_tokens_sign_ups_have_a_limit_of_their_own(make_world: MakeWorld) -> None:
    world = make_world(api_subscribe_per_minute=3)
    with served_client(world.services) as http:
        codes = [
            http.post(
                "/subscribe",
                json={"email": f"t{i}@example.com", "sequence": "journey"},
                headers=TOKEN,
            ).status_code
            for i in range(5)
        ]
        assert codes == [201, 201, 201, 429, 429]
        # The form, from the same address, has its own budget still.
        form = http.post("/subscribe", data={"email": "f@example.com", "sequence": "journey"})
        assert form.status_code == 202 and person(world, "f@example.com") is not None
