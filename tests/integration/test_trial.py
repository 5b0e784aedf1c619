"""The shipped free-trial journey (sequences/trial.yaml) runs as written, over real SMTP on
SQLite and PostgreSQL: confirm, welcome, a survey that branches, a trial started in the app
(an outside event), an advanced track only pros get, and a first payment as the goal. Its
commands (preview, report, remove) as a marketer runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from support.db import EVENTS, MESSAGES, rows
from support.mail import visible_links
from support.paths import REPO
from support.web import served_client
from support.world import MakeWorld, World

from nurture.vocabulary import EnrollmentStatus, ExitReason

NURTURE = Path(sys.executable).parent / "nurture"
SHIPPED = {"sequences_dir": REPO / "sequences", "templates_dir": REPO / "templates"}


@pytest.fixture
def trial(make_world: MakeWorld) -> World:
    return make_world(**SHIPPED)


def last(world: World, email: str) -> tuple[str, list[str]]:
    mail = world.smtp.to(email)[-1]
    return mail.subject, visible_links(mail.part("html"))


def to_survey(world: World, email: str) -> list[str]:
    world.subscribe(email, "trial")
    world.tick()
    subject, links = last(world, email)
    assert subject == "Confirm your address to get your free trial"
    world.click(links[0])
    world.clock.advance(minutes=10)
    world.tick()
    subject, links = last(world, email)
    assert subject == "Before your trial: five minutes that make it worth it"
    world.click(links[0])
    world.clock.advance(days=1)
    world.tick()
    subject, links = last(world, email)
    assert subject == "One question: where are you with your newsletter?"
    return links


def test_a_pro_goes_from_the_survey_to_the_trial_the_advanced_track_and_pays(
    trial: World,
) -> None:
    starting, growing, pro = to_survey(trial, "pro@example.com")
    trial.click(pro)
    trial.clock.advance(days=1)
    trial.tick()
    subject, _ = last(trial, "pro@example.com")
    assert subject in ("Your 14-day trial is one click away", "Every lesson, free for 14 days")
    events = trial.services.events
    started = events.event(email="pro@example.com", event="trial_started", now=trial.clock.now())
    assert started.advanced == ["trial"]
    trial.clock.advance(days=2)
    trial.tick()
    subject, links = last(trial, "pro@example.com")
    assert subject == "For people who write for a living: the advanced track"
    trial.click(links[0])
    trial.clock.advance(days=2)
    trial.tick()
    assert last(trial, "pro@example.com")[0] == "Keep every lesson for $1 the first month"
    paid = events.event(email="pro@example.com", event="first_payment", now=trial.clock.now())
    assert paid.converted == ["trial"]
    state = trial.state("pro@example.com", "trial")
    assert state.status is EnrollmentStatus.exited and state.exit_reason is ExitReason.converted


def test_a_misspelt_event_is_recorded_and_answered_with_the_name_the_step_waits_for(
    trial: World,
) -> None:
    """Issue 19: the app reported ``trial_start`` while the step waits for ``trial_started``;
    the 200 said nothing, and the person waited until the step's timeout."""
    _, _, pro = to_survey(trial, "typo@example.com")
    trial.click(pro)
    trial.clock.advance(days=1)
    trial.tick()
    assert trial.state("typo@example.com", "trial").step_id == "trial"
    token = {"authorization": "Bearer test-api-token"}
    with served_client(trial.services) as http:
        body = {"email": "typo@example.com", "event": "trial_start"}
        r = http.post("/events", json=body, headers=token)
        assert r.status_code == 200
        assert r.json()["known"] is False and r.json()["did_you_mean"] == "trial_started"
        assert r.json()["advanced"] == [] and r.json()["converted"] == []
        assert trial.state("typo@example.com", "trial").step_id == "trial"
        r = http.post("/events", json={**body, "event": "trial_started"}, headers=token)
        assert r.json()["known"] is True and r.json()["advanced"] == ["trial"]
        r = http.post("/events", json={**body, "event": "first_payment"}, headers=token)
        assert r.json()["known"] is True and r.json()["converted"] == ["trial"]
    events = rows(trial.services.store, EVENTS, kind="event")
    assert [e.detail["event"] for e in events] == ["trial_start", "trial_started", "first_payment"]


def test_a_beginner_gets_the_basics_and_skips_the_advanced_track(trial: World) -> None:
    starting, _, _ = to_survey(trial, "new@example.com")
    trial.click(starting)
    trial.clock.advance(days=1)
    trial.tick()
    subject, links = last(trial, "new@example.com")
    assert subject == "The three basics, in five minutes"
    trial.click(links[0])
    trial.clock.advance(days=1)
    trial.tick()
    trial.services.events.event(
        email="new@example.com", event="trial_started", now=trial.clock.now()
    )
    trial.clock.advance(days=2)
    trial.tick()  # pro_tips is due: its condition is false, so it is skipped
    assert trial.state("new@example.com", "trial").step_id == "pay"
    trial.clock.advance(days=2)
    trial.tick()
    subjects = [m.subject for m in trial.smtp.to("new@example.com")]
    assert "For people who write for a living: the advanced track" not in subjects
    assert subjects[-1] == "Keep every lesson for $1 the first month"


def run(*args: str, database_url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_")}
    env.update(
        NURTURE_DATABASE_URL=database_url,
        NURTURE_DATA_DIR=str(tmp_path),
        NURTURE_SECRET_KEY="test-secret-key",  # the world's: one key per deployment
    )
    return subprocess.run(
        [str(NURTURE), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_preview_shows_the_answers_the_condition_and_each_variant(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/n.db"
    survey = run("preview", "trial", "survey", "--text-only", database_url=url, tmp_path=tmp_path)
    assert survey.returncode == 0, survey.stderr
    assert "# answer starting: goto basics; tag beginner" in survey.stdout
    assert "(answer: pro)" in survey.stdout
    pro = run("preview", "trial", "pro_tips", "--text-only", database_url=url, tmp_path=tmp_path)
    assert "# sent only when: 'pro' in subscriber.tags" in pro.stdout
    b = run("preview", "trial", "trial", "--variant", "b", database_url=url, tmp_path=tmp_path)
    assert "Subject: Every lesson, free for 14 days" in b.stdout
    assert "# variant b of a (weight 1), b (weight 1)" in b.stdout
    assert "# yes: event (events: trial_started)" in b.stdout
    bad = run("preview", "trial", "trial", "--variant", "c", database_url=url, tmp_path=tmp_path)
    assert bad.returncode == 1 and "no variant 'c' (variants: a, b)" in bad.stderr


def test_report_and_remove_from_the_command_line(
    trial: World, database_url: str, tmp_path: Path
) -> None:
    _, growing, _ = to_survey(trial, "gro@example.com")
    trial.click(growing)
    r = run("report", "trial", "--json", database_url=database_url, tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    [seq] = json.loads(r.stdout)["sequences"]
    steps = {s["id"]: s for s in seq["steps"]}
    assert (steps["survey"]["sent"], steps["survey"]["yes"], steps["survey"]["by_click"]) == (
        1,
        1,
        1,
    )
    assert {a["id"]: a["chose"] for a in steps["survey"]["answers"]} == {
        "starting": 0,
        "growing": 1,
        "pro": 0,
    }
    assert steps["trial"]["waiting"] == 1
    assert [v["id"] for v in steps["trial"]["variants"]] == ["a", "b"]
    assert "no verdict yet" in steps["trial"]["verdict"]
    plain = run("report", database_url=database_url, tmp_path=tmp_path)
    assert "answer growing" in plain.stdout and "chosen 1 time" in plain.stdout
    gone = run(
        "remove",
        "gro@example.com",
        "--sequence",
        "trial",
        database_url=database_url,
        tmp_path=tmp_path,
    )
    assert gone.returncode == 0 and "removed from trial" in gone.stdout
    assert trial.state("gro@example.com", "trial").exit_reason is ExitReason.removed


def test_person_tells_one_persons_whole_story(
    trial: World, database_url: str, tmp_path: Path
) -> None:
    _, _, pro = to_survey(trial, "kim@example.com")
    trial.click(pro)
    trial.services.events.event(email="kim@example.com", event="not_asked", now=trial.clock.now())
    r = run("person", "KIM@example.com", "--json", database_url=database_url, tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    story = json.loads(r.stdout)
    assert story["status"] == "confirmed" and story["tags"] == ["pro"]
    assert story["fields"]["answers"] == {"survey": "pro"}
    [enrollment] = story["enrollments"]
    assert enrollment["step"] == "trial" and enrollment["next"].startswith("the trial email at")
    emails = enrollment["emails"]
    assert [(m["step"], m["kind"]) for m in emails] == [
        ("confirm", "step"),
        ("welcome", "step"),
        ("survey", "step"),
    ]
    survey = emails[-1]
    assert survey["yes"]["by"] == "click" and survey["yes"]["answer"] == "pro"
    assert [(e["kind"], e.get("verdict"), e.get("answer")) for e in survey["events"]] == [
        ("click", "human", "pro")
    ]
    assert survey["message_id"] == trial.smtp.to("kim@example.com")[2].message["Message-ID"]
    assert [e["event"] for e in story["events"]] == ["not_asked"]
    text = run("person", "kim@example.com", database_url=database_url, tmp_path=tmp_path)
    assert "trial: active at trial; next: the trial email at" in text.stdout
    assert "yes by click at" in text.stdout and "answer pro" in text.stdout
    missing = run("person", "nobody@example.com", database_url=database_url, tmp_path=tmp_path)
    assert missing.returncode == 1 and "no subscriber nobody@example.com" in missing.stderr


@pytest.mark.parametrize("name", ["eager", "after-reminder", "silent"])
def test_the_simulation_of_the_starter_journey_is_what_the_daemon_does(
    make_world: MakeWorld, name: str
) -> None:
    """The simulation's timeline, replayed on the real services with a fixed clock: a minute
    before each simulated email nothing new has gone out; at its time (plus the click
    windows the real yeses waited for) exactly that email has."""
    from nurture.simulate import PERSONAS, simulate

    world = make_world(**SHIPPED, click_window_seconds=0)
    sequence = world.services.catalog.get("starter")
    assert sequence is not None
    persona = next(p for p in PERSONAS if p.name == name)
    run = simulate(sequence, persona)
    start = world.clock.now()
    world.subscribe("sim@example.com", "starter")
    drift = timedelta(0)  # each real click is judged a second later (the window, plus one)

    def run_until(target: datetime) -> None:
        """Tick at every moment something falls due, up to ``target``, as the daemon does
        (it ticks every second), then at ``target``."""
        for _ in range(50):
            due = world.state("sim@example.com", "starter").due_at
            if due is None or due > target or due < world.clock.now():
                break
            world.clock.current = due
            world.tick()
        world.clock.current = target
        world.tick()

    for expected in run.emails:
        if expected.at > timedelta(minutes=1):
            before = len(world.smtp.to("sim@example.com"))
            run_until(start + drift + expected.at - timedelta(minutes=1))
            assert len(world.smtp.to("sim@example.com")) == before, expected
        run_until(start + drift + expected.at)
        mail = world.smtp.to("sim@example.com")[-1]
        last = rows(world.services.store, MESSAGES)[-1]
        assert (last.step_id, last.kind, last.sent_at) == (
            expected.step,
            expected.kind,
            world.clock.now(),
        )
        answers_now = {"eager": "step", "after-reminder": "reminder1"}.get(name)
        if expected.kind == answers_now:
            world.clock.advance(hours=1)
            before_click = world.clock.now()
            world.click(visible_links(mail.part("html"))[0])
            drift += world.clock.now() - before_click
    run_until(start + drift + run.elapsed + timedelta(minutes=1))
    state = world.state("sim@example.com", "starter")
    outcome = (
        state.status.value if state.exit_reason is None else f"exited:{state.exit_reason.value}"
    )
    assert outcome == run.outcome
    assert len(world.smtp.to("sim@example.com")) == len(run.emails)
