"""Send windows and the per-person cap through the real dispatcher, over real SMTP, on SQLite
and PostgreSQL, with a clock the test moves: who gets what when, what waits and why (the
rules themselves are in tests/unit/test_sendtimes.py)."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from support.db import MESSAGES, rows
from support.mail import visible_links
from support.paths import DATA
from support.world import MakeWorld, World

WINDOWS = {"sequences_dir": DATA / "windows" / "sequences"}
NURTURE = Path(sys.executable).parent / "nurture"
# The World's clock starts on Monday 2026-01-05 09:00 UTC: 22:00 in Auckland, 01:00 in
# Los Angeles; both outside 09:00-17:30.


@pytest.fixture
def office(make_world: MakeWorld) -> World:
    return make_world(**WINDOWS)


def queued(world: World, email: str) -> list[tuple[str, str, datetime, str | None]]:
    sub = world.subscriber_id(email)
    return [
        (r.step_id, r.status, r.next_attempt_at, r.waiting)
        for r in rows(world.services.store, MESSAGES, subscriber_id=sub)
        if r.status == "queued"
    ]


def run_until(world: World, until: datetime, step: timedelta = timedelta(minutes=5)) -> None:
    while world.clock.now() < until:
        world.clock.advance(step)
        world.tick()


def test_two_people_in_different_zones_get_their_email_at_their_own_nine(office: World) -> None:
    office.subscribe(
        "kiri@example.com", "office", confirmed=True, fields={"timezone": "Pacific/Auckland"}
    )
    office.subscribe(
        "lee@example.com", "office", confirmed=True, fields={"timezone": "America/Los_Angeles"}
    )
    office.tick()
    assert office.smtp.caught == []  # both due at once, neither inside their window
    [(step, _, nz_at, why)] = queued(office, "kiri@example.com")
    assert (step, why) == ("read", "window")
    [(_, _, la_at, _)] = queued(office, "lee@example.com")
    assert nz_at.astimezone(ZoneInfo("Pacific/Auckland")).hour == 9
    assert la_at.astimezone(ZoneInfo("America/Los_Angeles")).hour == 9

    run_until(office, la_at)
    assert [m.recipient for m in office.smtp.caught] == ["lee@example.com"]
    sent = office.smtp.to("lee@example.com")[0]
    assert sent.subject == "Read this"
    run_until(office, nz_at)
    assert office.smtp.to("kiri@example.com")[0].subject == "Read this"
    # The reminder counts from the real send time (4 h after 09:0x local), not from when the
    # email fell due; it is inside the window too (13:0x).
    run_until(office, la_at + timedelta(hours=4, minutes=10))
    subjects = [m.subject for m in office.smtp.to("lee@example.com")]
    assert subjects == ["Read this", "Still there?"]


def test_the_confirmation_ignores_the_window(office: World) -> None:
    office.subscribe("late@example.com", "office", fields={"timezone": "America/Los_Angeles"})
    office.tick()  # 01:00 in Los Angeles: the person just subscribed and waits for it
    [mail] = office.smtp.to("late@example.com")
    assert mail.subject.startswith("Confirm")
    # The click confirms; the next step's email waits for 09:00 in Los Angeles.
    office.click(visible_links(mail.part("html"))[0])
    office.tick()
    assert len(office.smtp.to("late@example.com")) == 1
    [(step, _, at, why)] = queued(office, "late@example.com")
    assert (step, why) == ("read", "window")
    assert at.astimezone(ZoneInfo("America/Los_Angeles")).hour == 9


def test_a_step_window_of_its_own_and_a_bad_time_zone(
    office: World, caplog: pytest.LogCaptureFixture
) -> None:
    office.subscribe(
        "odd@example.com", "office", confirmed=True, fields={"timezone": "Nowhere/Atlantis"}
    )
    office.tick()  # the default zone (UTC): Monday 09:00 is inside the window
    assert [m.subject for m in office.smtp.to("odd@example.com")] == ["Read this"]
    assert sum("Nowhere/Atlantis" in r.getMessage() for r in caplog.records) == 1
    # No click: the step times out after a day and moves on to the weekend step, whose
    # own window (Saturday and Sunday 10:00-12:00) holds it until Saturday.
    run_until(office, office.clock.now() + timedelta(days=1, minutes=10), timedelta(minutes=30))
    [(step, _, at, why)] = queued(office, "odd@example.com")
    assert (step, why) == ("weekend", "window")
    assert at.weekday() == 5 and at.hour == 10 and at.minute < 30
    assert sum("Nowhere/Atlantis" in r.getMessage() for r in caplog.records) == 1


def test_the_cap_holds_the_second_email_of_a_day_and_status_says_so(
    make_world: MakeWorld, database_url: str
) -> None:
    world = make_world(max_emails_per_day=1, **WINDOWS)
    world.clock.advance(hours=8)  # Monday 17:00 UTC: 09:00 in Los Angeles
    tz = {"timezone": "America/Los_Angeles"}
    world.subscribe("busy@example.com", "office", confirmed=True, fields=tz)
    world.subscribe("busy@example.com", "news", confirmed=True, fields=tz)
    world.tick()
    assert len(world.smtp.to("busy@example.com")) == 1  # one of the two, not both
    [(_, _, at, why)] = queued(world, "busy@example.com")
    seen = at.astimezone(ZoneInfo("America/Los_Angeles"))
    assert why == "cap" and (seen.day, seen.hour) == (6, 0)
    env = commands_env(database_url)
    out = subprocess.run([NURTURE, "status"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "waiting for the per-person cap 1" in out.stdout
    # Never dropped: it goes once the person's next day starts (within its first minutes).
    run_until(world, at)
    assert sorted(m.subject for m in world.smtp.to("busy@example.com")) == ["News", "Read this"]
    # The office step's reminder fell due on Monday afternoon: Monday had its email, Tuesday
    # has one now, so it waits for Wednesday, in the office window (09:00 in Los Angeles).
    [(step, _, then, why)] = queued(world, "busy@example.com")
    seen = then.astimezone(ZoneInfo("America/Los_Angeles"))
    assert (step, why, seen.day, seen.hour) == ("read", "cap", 7, 9)


def test_a_window_held_email_is_cancelled_when_the_person_leaves(office: World) -> None:
    office.subscribe(
        "gone@example.com", "office", confirmed=True, fields={"timezone": "Pacific/Auckland"}
    )
    office.tick()
    [(_, _, at, _)] = queued(office, "gone@example.com")
    office.services.subscriptions.unsubscribe_address("gone@example.com", now=office.clock.now())
    run_until(office, at + timedelta(minutes=10), timedelta(hours=1))
    assert office.smtp.to("gone@example.com") == []
    sub = office.subscriber_id("gone@example.com")
    assert [r.status for r in rows(office.services.store, MESSAGES, subscriber_id=sub)] == [
        "cancelled"
    ]


def test_a_pause_ending_does_not_release_mail_held_for_its_window(office: World) -> None:
    office.subscribe(
        "kept@example.com", "office", confirmed=True, fields={"timezone": "Pacific/Auckland"}
    )
    office.tick()
    [(_, _, at, _)] = queued(office, "kept@example.com")
    with office.services.store.transaction() as tx:
        tx.outbox.due_now(until=at + timedelta(hours=1), now=office.clock.now())
    assert queued(office, "kept@example.com")[0][2] == at
    assert at > office.clock.now() + timedelta(hours=10)


def commands_env(database_url: str) -> dict[str, str]:
    return {
        "NURTURE_DATABASE_URL": database_url,
        "NURTURE_SEQUENCES_DIR": str(WINDOWS["sequences_dir"]),
        "NURTURE_TEMPLATES_DIR": str(DATA / "templates"),
        "NURTURE_SECRET_KEY": "k",
        "PATH": "",
    }


def test_preview_and_simulate_show_the_window(database_url: str) -> None:
    env = commands_env(database_url)
    run = [NURTURE, "preview", "office", "read", "--text-only", "--field", "timezone=Asia/Tokyo"]
    out = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "# goes out: mon-fri 09:00-17:30 in Asia/Tokyo" in out.stdout
    run = [NURTURE, "preview", "office", "confirm", "--text-only"]
    out = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60)
    assert "# goes out: as soon as it is due (a confirmation" in out.stdout
    run = [NURTURE, "simulate", "office", "--timezone", "America/Los_Angeles",
           "--start", "2026-01-09 18:00"]  # fmt: skip
    out = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Read this  (waited 2d 14h for its window)" in out.stdout
    run = [NURTURE, "simulate", "office", "--timezone", "Mars/Base"]
    out = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "not an IANA time zone name" in out.stderr
