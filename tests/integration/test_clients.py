"""Telling the scanner from the person on the same email (issue 14), over real HTTP on SQLite
and PostgreSQL: evidence (a walk of the links, the honeypot, a scanner's network) condemns
the client that produced it, not every click on the email. A client is the requester's
network (/24, /48), user agent and browser headers."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from support.mail import visible_links
from support.web import BROWSER
from support.world import World
from test_scanners import at_read, paths, settle, verdicts

SCANNER = {  # a scanner posing as Chrome: no browser headers, its own network
    "User-Agent": BROWSER["User-Agent"],
    "Accept": "*/*",
    "X-Forwarded-For": "198.51.100.20",
}
PERSON = {**BROWSER, "X-Forwarded-For": "203.0.113.7"}
FRIEND = {**BROWSER, "Accept-Language": "fr-FR,fr;q=0.9", "X-Forwarded-For": "192.0.2.44"}


def walk(world: World, http: httpx.Client, at: float) -> None:
    """The scanner fetches every link of the email, the honeypot included, HEAD then GET."""
    mail = world.smtp.to("walked@example.com")[0]
    visible, honeypot = paths(mail)
    world.clock.current = world.sent + timedelta(seconds=at)  # type: ignore[attr-defined]
    for method in ("HEAD", "GET"):
        for path in [*visible, honeypot]:
            http.request(method, path, headers=SCANNER)


@pytest.mark.parametrize("after", [3, 10, 30])
def test_a_person_clicking_after_their_scanner_walked_the_email_advances(
    world: World, http: httpx.Client, after: int
) -> None:
    mail = at_read(world, "walked@example.com")
    world.sent = world.clock.now()  # type: ignore[attr-defined]
    walk(world, http, 1)
    world.clock.advance(seconds=after)
    assert http.get(paths(mail)[0][0], headers=PERSON).status_code == 302
    settle(world)
    assert world.state("walked@example.com").step_id == "ask"
    found = verdicts(world)
    assert found.count(("human", "advanced")) == 1
    assert {v for v, o in found if o != "advanced"} == {"bot"}  # the walk stays a bot


def test_a_scanner_walking_after_the_persons_click_does_not_undo_it(
    world: World, http: httpx.Client
) -> None:
    mail = at_read(world, "walked@example.com")
    world.sent = world.clock.now()  # type: ignore[attr-defined]
    world.clock.advance(seconds=60)
    assert http.get(paths(mail)[0][0], headers=PERSON).status_code == 302
    walk(world, http, 62)
    settle(world)
    assert world.state("walked@example.com").step_id == "ask"
    found = verdicts(world)
    visible, _ = paths(mail)
    walked = 2 * (len(visible) + 1)  # HEAD and GET of each link and the honeypot
    assert found.count(("human", "advanced")) == 1 and len(found) == 1 + walked
    assert sum(v == "bot" for v, _ in found) == walked


def test_two_people_forwarding_one_email_are_judged_on_their_own(
    world: World, http: httpx.Client
) -> None:
    mail = at_read(world, "shared@example.com")
    visible, _ = paths(mail)
    world.clock.advance(seconds=60)
    http.get(visible[0], headers=PERSON)
    world.clock.advance(seconds=4)
    for path in visible:  # the friend opens the ask and the other links
        http.get(path, headers=FRIEND)
    settle(world)
    assert world.state("shared@example.com").step_id == "ask"
    assert {v for v, _ in verdicts(world)} == {"human"}  # neither made the other a walker


def confirm_links(world: World, email: str) -> str:
    world.subscribe(email)
    world.tick()
    [mail] = world.smtp.to(email)
    return "/" + visible_links(mail.part("html"))[0].split("/", 3)[3]


def test_safe_links_detonation_is_no_confirmation(world: World, http: httpx.Client) -> None:
    """Defender's sandbox: the confirm page fetched, then its form submitted, from
    Microsoft's network with a headless agent, within seconds of delivery."""
    link = confirm_links(world, "defended@example.com")
    sandbox = {"User-Agent": "Mozilla/5.0 HeadlessChrome/131.0", "X-Forwarded-For": "40.107.12.34"}
    world.clock.advance(seconds=2)
    assert http.get(link, headers=sandbox).status_code == 200
    world.clock.advance(seconds=2)
    http.post(link, data={"confirm": "yes"}, headers=sandbox)
    settle(world)
    assert world.state("defended@example.com").step_id == "confirm"


def test_a_quick_person_confirms_with_their_own_browser(world: World, http: httpx.Client) -> None:
    """The page loaded and pressed within a second, by the same browser, minutes after a
    scanner fetched the link from elsewhere."""
    link = confirm_links(world, "quick@example.com")
    world.clock.advance(seconds=1)
    http.get(link, headers=SCANNER)
    world.clock.advance(seconds=90)
    assert http.get(link, headers=PERSON).status_code == 200
    world.clock.advance(seconds=1)
    assert http.post(link, data={"confirm": "yes"}, headers=PERSON).status_code == 303
    settle(world)
    assert world.state("quick@example.com").step_id != "confirm"


def test_a_person_behind_browser_isolation_advances(world: World, http: httpx.Client) -> None:
    """Proofpoint/Mimecast isolation: the person's click comes from the vendor's network, with
    a full browser's headers, minutes after delivery, not part of a walk."""
    mail = at_read(world, "isolated@example.com")
    world.clock.advance(minutes=5)
    isolated = {**BROWSER, "X-Forwarded-For": "40.107.12.34"}
    assert http.get(paths(mail)[0][0], headers=isolated).status_code == 302
    settle(world)
    assert world.state("isolated@example.com").step_id == "ask"
