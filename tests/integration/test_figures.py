"""Every figure of ``nurture report``, ``nurture status`` and ``/admin`` counts what its label
says. A journey whose truth is known is built for real, on SQLite and PostgreSQL: people
subscribed, emails sent by the dispatcher into a real SMTP server, clicks through the tracker,
events through OutsideEvents; then the figures are read from the report, the commands and the
dashboard."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from support.db import EVENTS, MESSAGES, rows
from support.mail import visible_links
from support.paths import DATA
from support.web import BROWSER, served_client
from support.world import MakeWorld, World

from nurture.report import build_report
from nurture.tracking import ClickRequest

FIGURES = DATA / "figures"
NURTURE = Path(sys.executable).parent / "nurture"
HOUR = 3600.0


@pytest.fixture
def world(make_world: MakeWorld) -> World:
    return make_world(
        sequences_dir=FIGURES / "sequences",
        templates_dir=FIGURES / "templates",
        admin_password="s3cret",
    )


def link(world: World, who: str, subject: str) -> str:
    [mail] = [m for m in world.smtp.to(f"{who}@example.com") if m.subject.startswith(subject)]
    return visible_links(mail.part("html"))[0]


def ticks(world: World, n: int = 4) -> None:
    """As many ticks as a person needs to pass the steps that send nothing."""
    for _ in range(n):
        world.tick()


def event(world: World, who: str, name: str) -> None:
    world.services.events.event(email=f"{who}@example.com", event=name, now=world.clock.now())


def until(world: World, hh_mm: str) -> None:
    """Move the clock to that time of Monday 2026-01-05 (UTC), the World's first day."""
    hours, minutes = (int(x) for x in hh_mm.split(":"))
    at = world.clock.now().replace(hour=hours, minute=minutes, second=0, microsecond=0)
    assert at >= world.clock.now()
    world.clock.current = at


def journey(world: World) -> None:
    """Six people. Monday 09:00: six confirmations go; bob's app reports trial_started
    before he reaches that step; ann (a pro) and bob confirm. 11:00: reminders to the other
    four; cat clicks hers and then the first email too, dan the first email, a scanner
    fetches eve's; fay never answers. The pro step goes to ann only (when:), who clicks it.
    bob's trial step is answered already: on to pay. The trial emails of ann, cat and dan,
    decided at 11:00, wait for their 12:00-18:00 window; dan starts his trial at 12:00, before
    his email went; the others' go at 12:30; cat clicks hers at 13:30 and ann at 14:30. At
    15:00 bob and cat pay (the goal, and the ask of the pay step). Four days later everyone
    else has timed out."""
    for who in ("ann", "bob", "cat", "dan", "eve", "fay"):
        world.subscribe(f"{who}@example.com", "figures", tags=["pro"] if who == "ann" else [])
    world.tick()
    event(world, "bob", "trial_started")
    world.click(link(world, "ann", "Confirm"))
    world.click(link(world, "bob", "Confirm"))
    until(world, "11:00")
    ticks(world)
    world.click(link(world, "cat", "Reminder"))
    world.click(link(world, "cat", "Confirm"))  # the same person, a second email clicked
    world.click(link(world, "dan", "Confirm"))
    head = ClickRequest(method="HEAD", user_agent="Mozilla/5.0", has_browser_headers=False)
    token = link(world, "eve", "Confirm").rsplit("/c/", 1)[1]
    world.services.tracker.click(token, now=world.clock.now(), request=head)
    world.click(link(world, "ann", "For pros"))
    ticks(world)
    until(world, "12:00")
    event(world, "dan", "trial_started")
    ticks(world)
    until(world, "12:30")
    ticks(world)
    until(world, "13:30")
    world.click(link(world, "cat", "Start your trial"))
    until(world, "14:30")
    world.click(link(world, "ann", "Start your trial"))
    ticks(world)
    until(world, "15:00")
    event(world, "bob", "payment")
    event(world, "cat", "payment")
    for _ in range(4):
        world.clock.advance(days=1)
        ticks(world)


def report(world: World) -> dict[str, Any]:
    with world.services.store.transaction() as tx:
        return build_report(tx, world.services.catalog, world.services.journey.experiments)


def steps(world: World) -> dict[str, dict[str, Any]]:
    [seq] = report(world)["sequences"]
    return {s["id"]: s for s in seq["steps"]}


def test_the_truth_of_the_journey(world: World) -> None:
    """The journey did what its docstring says (else the figures would be checked against
    a story that did not happen)."""
    journey(world)
    subjects = {
        who: [m.subject.split(",")[0] for m in world.smtp.to(f"{who}@example.com")]
        for who in ("ann", "bob", "cat", "dan", "eve", "fay")
    }
    assert subjects == {
        "ann": ["Confirm", "For pros", "Start your trial", "Pay"],
        "bob": ["Confirm", "Pay"],
        "cat": ["Confirm", "Reminder: please confirm", "Start your trial", "Pay"],
        "dan": ["Confirm", "Reminder: please confirm", "Pay"],
        "eve": ["Confirm", "Reminder: please confirm"],
        "fay": ["Confirm", "Reminder: please confirm"],
    }
    trial = [m for m in rows(world.services.store, MESSAGES, step_id="trial") if m.sent_at]
    assert len(trial) == 2
    for m in trial:  # decided at 11:00, sent at 12:30: the send window held them
        assert (m.created_at.hour, m.sent_at.hour, m.sent_at.minute) == (11, 12, 30)


def test_the_report_counts_what_each_label_says(world: World) -> None:
    journey(world)
    got = steps(world)
    [seq] = report(world)["sequences"]
    assert (seq["enrolled"], seq["converted"]) == (6, 2)

    confirm = got["confirm"]
    # Four people clicked as people, cat on two emails: people, not emails clicked.
    assert confirm["human_clickers"] == 4
    assert (confirm["entered"], confirm["sent"], confirm["reminded"]) == (6, 6, 4)
    assert (confirm["yes"], confirm["yes_rate"], confirm["after_reminder"]) == (4, 0.6667, 2)
    assert (confirm["bot_clicks"], confirm["left"]) == (1, {"timeout": 2})

    pro = got["pro"]
    assert (pro["entered"], pro["sent"], pro["yes"], pro["skipped"]) == (4, 1, 1, 3)
    assert pro["skipped_why"] == [
        {"reason": "when \"'pro' in subscriber.tags\" was false", "count": 3}
    ]
    assert pro["answered_early"] == 0

    trial = got["trial"]
    # bob's ask was answered before the step (its email never decided), dan's while his
    # email waited for its window (never sent): both answered before their email, neither
    # a condition's skip nor in the rate.
    assert (trial["answered_early"], trial["skipped"], trial["skipped_why"]) == (2, 0, [])
    assert (trial["entered"], trial["sent"], trial["yes"], trial["yes_rate"]) == (4, 2, 2, 1.0)
    assert (trial["by_click"], trial["by_event"], trial["human_clickers"]) == (2, 0, 2)
    # From the email's sending at 12:30 (not its deciding at 11:00) to the click (not its
    # judgement, 11 s later): 1 h and 2 h.
    assert trial["time_to_yes"] == {"median_seconds": HOUR, "p90_seconds": 2 * HOUR}

    pay = got["pay"]
    # Its ask is the payment, the goal too: the two who paid said its yes, and converted.
    assert (pay["entered"], pay["sent"], pay["yes"], pay["by_event"]) == (4, 4, 2, 2)
    assert pay["yes_rate"] == 0.5
    assert pay["left"] == {"converted": 2, "timeout": 2}
    assert sum(s["left"].get("converted", 0) for s in got.values()) == seq["converted"]
    assert got["thanks"]["entered"] == 0


def test_a_conversion_recorded_before_the_yes_was_marked_is_still_the_steps_yes(
    world: World,
) -> None:
    """Until the goal event that is also the waiting step's ask marked that step's yes,
    such a person converted with the step's yes unmarked: the report read "yes 0, 0.0%"
    next to "left: converted". Rows recorded so are still counted as the step's yes."""
    journey(world)
    with world.services.store.database.begin() as conn:
        conn.execute(
            update(MESSAGES)
            .where(MESSAGES.c.step_id == "pay", MESSAGES.c.yes_by == "event")
            .values(yes_at=None, yes_by=None, yes_seconds=None, after_reminder=None)
        )
    pay = steps(world)["pay"]
    assert (pay["yes"], pay["by_event"], pay["yes_rate"]) == (2, 2, 0.5)
    assert pay["left"] == {"converted": 2, "timeout": 2}


def cli(database_url: str, *args: str) -> str:
    env = {
        "NURTURE_DATABASE_URL": database_url,
        "NURTURE_SEQUENCES_DIR": str(FIGURES / "sequences"),
        "NURTURE_TEMPLATES_DIR": str(FIGURES / "templates"),
        "NURTURE_SECRET_KEY": "test-secret-key",
        "PATH": "",
    }
    out = subprocess.run([NURTURE, *args], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def table(text: str, step: str) -> str:
    """The step's row of a printed table, its columns one space apart."""
    [line] = [x for x in text.splitlines() if x.startswith(f"  {step} ")]
    return " ".join(line.split())


def test_report_and_status_print_the_figures(world: World, database_url: str) -> None:
    journey(world)
    text = cli(database_url, "report", "figures")
    assert "figures (Figures): 6 enrolled, 2 converted (33.3%" in text
    # step, entered, sent, rem., yes, rate, click/reply/event, median, p90, yes after rem.,
    # people clicked, bot clicks, waiting, left
    assert table(text, "confirm") == "confirm 6 6 4 4 66.7% 4/0/0 11s 2.0h 2 4 1 0 timeout 2"
    assert table(text, "pro") == "pro 4 1 0 1 100.0% 1/0/0 33s 33s 0 1 0 0 -"
    assert table(text, "trial") == "trial 4 2 0 2 100.0% 2/0/0 1.0h 2.0h 0 2 0 0 -"
    assert table(text, "pay") == "pay 4 4 0 2 50.0% 0/0/2 30m 4.0h 0 0 0 0 converted 2, timeout 2"
    assert "answered before its email: 2" in text
    assert "skipped by when: 3 (when \"'pro' in subscriber.tags\" was false: 3)" in text
    assert "when: )" not in text
    assert "people clicked: distinct people" in text

    status = cli(database_url, "status", "--sequence", "figures")
    # waiting, held, completed, human clicks, bot clicks, left
    human = sum(
        1
        for e in rows(world.services.store, EVENTS, kind="click")
        if e.verdict == "human" and e.message_id in confirm_emails(world)
    )
    assert human == 5  # cat's two clicks: status counts clicks, and says so
    assert table(status, "confirm") == "confirm 0 0 0 5 1 timeout 2"
    assert table(status, "pay") == "pay 0 0 0 0 0 converted 2, timeout 2"
    assert "human clicks, bot clicks: clicks on the step's emails" in status


def confirm_emails(world: World) -> set[int]:
    return {m.id for m in rows(world.services.store, MESSAGES, step_id="confirm")}


def basic(password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()}


def cells(html: str, step: str) -> list[str]:
    row = re.search(rf"<tr><td>{step}</td>(.*?)</tr>", html, re.S)
    assert row is not None
    return [re.sub(r"<[^>]+>", " ", c).split() for c in re.findall(r"<td>(.*?)</td>", row[1], re.S)]


def test_the_dashboard_shows_the_same_figures(world: World) -> None:
    journey(world)
    with served_client(world.services) as http:
        page = http.get("/admin", headers=basic("s3cret")).text
    # entered, sent, reminders sent, yes, rate, click/reply/event, answered before its
    # email, skipped by when, median to yes, people who clicked, bot clicks, waiting, left
    confirm = cells(page, "confirm")
    assert [c[0] for c in confirm[:5]] == ["6", "6", "4", "4", "66.7%"]
    assert confirm[8] == ["11s"]  # the median: bob's click, 11 s after his email; not "0.0 h"
    assert [c[0] for c in confirm[9:12]] == ["4", "1", "0"]
    trial = cells(page, "trial")
    assert trial[6] == ["2"] and trial[7] == ["0"] and trial[8] == ["1.0h"]
    pro = cells(page, "pro")
    assert pro[7][0] == "3" and "was false: 3" in " ".join(pro[7])
    pay = cells(page, "pay")
    assert [c[0] for c in pay[:5]] == ["4", "4", "0", "2", "50.0%"]


@pytest.fixture
def flooded(make_world: MakeWorld) -> World:
    return make_world(click_tarpit_seconds=0.0)


@pytest.fixture
def http(flooded: World) -> Iterator[httpx.Client]:
    with served_client(flooded.services) as client:
        yield client


def test_a_floods_clicks_are_counted_one_by_one_in_the_report_and_status(
    flooded: World, http: httpx.Client, database_url: str
) -> None:
    """A link hammered 250 times: its first clicks are rows of their own, the rest one
    summary row. Bot clicks are clicks, in both the report and status."""
    flooded.subscribe("hammer@example.com", confirmed=True)
    flooded.tick()
    [mail] = flooded.smtp.to("hammer@example.com")
    path = "/" + visible_links(mail.part("html"))[0].split("/", 3)[3]
    flooded.clock.advance(seconds=60)
    for _ in range(250):
        http.get(path, headers=BROWSER)
    flooded.settle()
    flooded.tick()
    clicks = rows(flooded.services.store, EVENTS, kind="click")
    [summary] = [e for e in clicks if e.outcome == "flood"]
    truth = sum(1 for e in clicks if e.outcome != "flood") + summary.detail["clicks"]
    assert truth > 200
    with flooded.services.store.transaction() as tx:
        [seq] = build_report(
            tx, flooded.services.catalog, flooded.services.journey.experiments, "journey"
        )["sequences"]
        by_verdict = {v: n for _, step, v, n in tx.reports.click_counts() if step == "read"}
    read = {s["id"]: s for s in seq["steps"]}["read"]
    assert read["bot_clicks"] == truth
    assert by_verdict == {"bot": truth}
    assert read["bot_reasons"][0]["clicks"] >= summary.detail["clicks"]
