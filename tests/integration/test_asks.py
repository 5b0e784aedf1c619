"""More kinds of small yes, end to end on SQLite and PostgreSQL over real SMTP (and real HTTP
where the marketer's app or a form calls): answers that branch and tag, conditions, outside
events as asks, A/B variants with a verdict, re-entry, and taking a person out of one
sequence."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from support.db import EVENTS, MESSAGES, rows
from support.mail import visible_links
from support.paths import DATA
from support.web import served_client
from support.world import MakeWorld, World

from nurture.errors import SubscribeRefused
from nurture.report import build_report
from nurture.vocabulary import EnrollmentStatus, EventKind, ExitReason

ASKS = DATA / "asks"
AUTH = {"authorization": "Bearer test-api-token"}


@pytest.fixture
def asks(make_world: MakeWorld) -> World:
    return make_world(
        sequences_dir=ASKS / "sequences", templates_dir=ASKS / "templates", ab_min_sent=10
    )


@pytest.fixture
def api(asks: World) -> Iterator[httpx.Client]:
    with served_client(asks.services) as client:
        yield client


def survey(world: World, email: str) -> dict[str, str]:
    """Subscribe someone to the survey and return its links by what they say."""
    world.subscribe(email, "asks", confirmed=True)
    world.tick()
    [mail] = world.smtp.to(email)
    names = ["starting", "growing", "pro", "about"]
    return dict(zip(names, visible_links(mail.part("html")), strict=True))


def person(world: World, email: str) -> tuple[list[str], dict[str, Any]]:
    with world.services.store.transaction() as tx:
        sub = tx.subscribers.by_email(email)
        assert sub is not None
        return list(sub.tags), sub.fields


def subjects(world: World, email: str) -> list[str]:
    return [m.subject for m in world.smtp.to(email)]


def test_an_answer_routes_to_its_step_and_tags_the_person(asks: World) -> None:
    links = survey(asks, "sam@example.com")
    assert asks.click(links["starting"]) == "https://acme.example/s?a=starting"
    state = asks.state("sam@example.com", "asks")
    assert state.step_id == "basics" and state.done == ("survey",)
    assert person(asks, "sam@example.com")[0] == ["beginner"]
    asks.tick()
    # basics is sent: its condition ('beginner' in subscriber.tags) holds now.
    assert subjects(asks, "sam@example.com") == ["Where are you, Sam?", "Basics"]
    assert "(beginner)" in asks.smtp.to("sam@example.com")[-1].part("html")
    [click] = [e for e in rows(asks.services.store, EVENTS, kind="click")]
    assert click.detail["answer"] == "starting" and click.outcome == "advanced"
    [survey_email] = rows(asks.services.store, MESSAGES, step_id="survey")
    assert (survey_email.yes_by, survey_email.answer) == ("click", "starting")


def test_next_answer_sets_typed_fields_and_a_false_condition_skips_its_step(
    asks: World,
) -> None:
    links = survey(asks, "gil@example.com")
    asks.click(links["growing"])
    assert asks.state("gil@example.com", "asks").step_id == "growth"
    tags, fields = person(asks, "gil@example.com")
    assert tags == [] and fields["stage"] == "growing" and fields["level"] == 2
    assert fields["answers"] == {"survey": "growing"}  # templates: subscriber.answers.survey
    asks.tick()
    growth = asks.smtp.to("gil@example.com")[-1]
    assert growth.subject == "Growth"
    asks.click(visible_links(growth.part("html"))[0])
    asks.tick()
    # basics is only for beginners: skipped, recorded with its reason; trial is sent instead.
    assert subjects(asks, "gil@example.com") == [
        "Where are you, Gil?",
        "Growth",
        "Start your trial",
    ]
    [skip] = rows(asks.services.store, EVENTS, kind=EventKind.skipped.value)
    assert skip.outcome == "skipped:basics"
    assert "'beginner' in subscriber.tags" in skip.detail["reason"]
    assert "false" in skip.detail["reason"]


def test_an_answer_can_jump_ahead_and_unmarked_links_are_not_a_yes(asks: World) -> None:
    links = survey(asks, "pia@example.com")
    assert asks.click(links["about"]) == "https://acme.example/about"
    assert asks.state("pia@example.com", "asks").step_id == "survey"
    [about] = rows(asks.services.store, EVENTS, kind="click")
    assert about.outcome == "recorded" and about.verdict == "human"
    asks.click(links["pro"])
    assert asks.state("pia@example.com", "asks").step_id == "trial"
    assert person(asks, "pia@example.com")[0] == ["expert", "pro"]
    # A second answer to the same email changes nothing: the step was answered.
    asks.click(links["starting"])
    assert asks.state("pia@example.com", "asks").step_id == "trial"
    assert person(asks, "pia@example.com")[0] == ["expert", "pro"]


def at_trial(world: World, email: str) -> None:
    links = survey(world, email)
    world.click(links["pro"])
    world.tick()
    assert subjects(world, email)[-1] == "Start your trial"


def test_an_outside_event_is_the_yes_of_the_step_waiting_for_it(
    asks: World, api: httpx.Client
) -> None:
    at_trial(asks, "eve@example.com")
    body = {
        "email": "eve@example.com",
        "event": "trial_started",
        "id": "app-123",
        "properties": {"set": {"plan": "trial", "seats": 3}, "tags": ["trialist"]},
    }
    r = api.post("/events", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json() == {"converted": [], "advanced": ["asks"], "duplicate": False, "known": True}
    assert asks.state("eve@example.com", "asks").step_id == "offer"
    tags, fields = person(asks, "eve@example.com")
    assert "trialist" in tags and fields["plan"] == "trial" and fields["seats"] == 3
    # The app retries: the same id counts once; nothing more moves.
    again = api.post("/events", json=body, headers=AUTH)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    events = rows(asks.services.store, EVENTS, kind=EventKind.event.value)
    # The app's id, kept per person and event name.
    assert [(e.external_id, e.outcome) for e in events] == [("trial_started/app-123", "advanced")]
    asks.tick()
    assert subjects(asks, "eve@example.com")[-1] == "Offer for you"
    [trial] = rows(asks.services.store, MESSAGES, step_id="trial")
    assert trial.yes_by == "event"


def test_an_event_nobody_waits_for_is_recorded_and_an_unknown_person_is_a_404(
    asks: World, api: httpx.Client
) -> None:
    survey(asks, "ned@example.com")
    body = {"email": "ned@example.com", "event": "trial_started"}
    r = api.post("/events", json=body, headers=AUTH)
    assert r.json() == {"converted": [], "advanced": [], "duplicate": False, "known": True}
    assert asks.state("ned@example.com", "asks").step_id == "survey"
    [event] = rows(asks.services.store, EVENTS, kind=EventKind.event.value)
    assert event.outcome == "recorded" and event.detail["event"] == "trial_started"
    unknown = api.post("/events", json={"email": "nobody@example.com", "event": "x"}, headers=AUTH)
    assert unknown.status_code == 404 and "no subscriber" in unknown.json()["error"]
    bad = api.post("/events", json={"email": "ned@example.com", "event": "a b"}, headers=AUTH)
    assert bad.status_code == 400


def test_a_goal_event_converts_before_it_could_answer(asks: World, api: httpx.Client) -> None:
    at_trial(asks, "pay@example.com")
    r = api.post("/events", json={"email": "pay@example.com", "event": "paid"}, headers=AUTH)
    assert r.json()["converted"] == ["asks"]
    state = asks.state("pay@example.com", "asks")
    assert state.status is EnrollmentStatus.exited and state.exit_reason is ExitReason.converted


def test_forty_people_through_two_variants_give_a_verdict_for_the_one_clicked(
    asks: World,
) -> None:
    for i in range(40):
        asks.subscribe(f"p{i}@example.com", "ab", confirmed=True)
    asks.tick()
    sent = {m.recipient: m for m in asks.smtp.caught}
    variants = {m.recipient: m.subject for m in sent.values()}
    b_people = [who for who, subject in variants.items() if subject.startswith("The guide")]
    assert 8 <= len(b_people) <= 32  # an even split by hash, not all on one side
    for who in b_people:  # only variant b's readers click
        asks.click(visible_links(sent[who].part("html"))[0])
    stored = {m.id: m.variant for m in rows(asks.services.store, MESSAGES, step_id="guide")}
    assert set(stored.values()) == {"a", "b"}
    with asks.services.store.transaction() as tx:
        report = build_report(tx, asks.services.catalog, asks.services.journey.experiments, "ab")
    [step] = [s for s in report["sequences"][0]["steps"] if s["id"] == "guide"]
    a, b = step["variants"]
    assert (a["id"], a["yes"], a["winner"]) == ("a", 0, False)
    assert (b["id"], b["yes"], b["sent"]) == ("b", len(b_people), len(b_people))
    assert b["winner"] is True and b["p_value"] < 0.05 and b["yes_rate"] == 1.0
    assert "wins" in step["verdict"]
    assert b["time_to_yes"]["median_seconds"] is not None
    assert a["time_to_yes"]["p90_seconds"] is None
    # The one look (40 sent): b wins, and everyone after gets b, whatever their hash.
    for i in range(40, 50):
        asks.subscribe(f"p{i}@example.com", "ab", confirmed=True)
    asks.tick()
    later = [m for m in rows(asks.services.store, MESSAGES, step_id="guide") if m.id not in stored]
    assert len(later) == 10 and {m.variant for m in later} == {"b"}
    with asks.services.store.transaction() as tx:
        decided = tx.answers.winner("ab", "guide")
    assert decided is not None and decided["variant"] == "b" and "40 sent" in decided["why"]
    # The reminder of a person's step is their variant too.
    asks.clock.advance(hours=13)
    asks.tick()
    reminders = [m for m in rows(asks.services.store, MESSAGES, kind="reminder1")]
    by_enrollment = {
        m.enrollment_id: m.variant for m in rows(asks.services.store, MESSAGES, kind="step")
    }
    assert reminders and all(r.variant == by_enrollment[r.enrollment_id] for r in reminders)


def test_a_person_who_timed_out_enters_again_after_the_reenter_period(asks: World) -> None:
    survey(asks, "tim@example.com")
    asks.clock.advance(days=2, seconds=1)
    asks.tick()
    assert asks.state("tim@example.com", "asks").exit_reason is ExitReason.timeout
    with pytest.raises(SubscribeRefused, match="takes people back after 30 days"):
        asks.subscribe("tim@example.com", "asks", confirmed=True)
    asks.clock.advance(days=30)
    result = asks.subscribe("tim@example.com", "asks", confirmed=True)
    assert result.outcome == "reentered" and result.created
    state = asks.state("tim@example.com", "asks")
    assert state.status is EnrollmentStatus.active and state.step_id == "survey"
    asks.tick()
    assert subjects(asks, "tim@example.com") == ["Where are you, Tim?"] * 2
    [entered] = rows(asks.services.store, EVENTS, kind=EventKind.entered.value)
    assert entered.detail["before"] == "timeout"


def test_an_unsubscribed_person_never_reenters(asks: World) -> None:
    survey(asks, "uma@example.com")
    asks.services.subscriptions.unsubscribe_address("uma@example.com", now=asks.clock.now())
    asks.clock.advance(days=60)
    with pytest.raises(SubscribeRefused, match="unsubscribed"):
        asks.subscribe("uma@example.com", "asks", confirmed=True)


def test_remove_ends_one_sequence_only(asks: World, api: httpx.Client) -> None:
    survey(asks, "rae@example.com")
    asks.subscribe("rae@example.com", "ab", confirmed=True)
    assert (
        api.post("/remove", json={"email": "rae@example.com", "sequence": "ab"}).status_code == 401
    )
    r = api.post("/remove", json={"email": "rae@example.com", "sequence": "ab"}, headers=AUTH)
    assert r.status_code == 200 and r.json() == {"removed": True}
    assert asks.state("rae@example.com", "ab").exit_reason is ExitReason.removed
    assert asks.state("rae@example.com", "asks").status is EnrollmentStatus.active
    again = api.post("/remove", json={"email": "rae@example.com", "sequence": "ab"}, headers=AUTH)
    assert again.json() == {"removed": False}
    missing = api.post("/remove", json={"email": "zed@example.com", "sequence": "ab"}, headers=AUTH)
    assert missing.status_code == 404
    asks.tick()
    assert subjects(asks, "rae@example.com") == ["Where are you, Rae?"]  # nothing from ab


def test_the_form_answers_alike_and_a_stranger_tags_nobody(asks: World, api: httpx.Client) -> None:
    """New, there already, refused: one answer (see test_strangers), while what is stored
    differs as before; tags from the public form are ignored (conditions read them)."""
    form = {"email": "fay@example.com", "sequence": "asks", "first_name": "Fay", "tags": "vip;beta"}
    first = api.post("/subscribe", data=form)
    assert first.status_code == 202 and "if this address can be subscribed" in first.text
    tags, fields = person(asks, "fay@example.com")
    assert tags == [] and fields == {"first_name": "Fay"}
    second = api.post("/subscribe", data=form)
    assert (second.status_code, second.text) == (first.status_code, first.text)
    asks.services.subscriptions.unsubscribe_address("fay@example.com", now=asks.clock.now())
    refused = api.post("/subscribe", data=form)
    assert (refused.status_code, refused.text) == (first.status_code, first.text)
    as_json = api.post("/subscribe", json={**form, "tags": ["x"]})
    assert as_json.status_code == 202 and as_json.json()["result"] == "accepted"
    assert person(asks, "fay@example.com")[0] == []
    with asks.services.store.transaction() as tx:
        fay = tx.subscribers.by_email("fay@example.com")
        assert fay is not None and fay.status.value == "unsubscribed"
    typed = api.post(
        "/subscribe",
        json={
            "email": "ty@example.com",
            "sequence": "asks",
            "tags": ["vip"],
            "score": 7,
            "ok": True,
        },
    )
    assert typed.status_code == 202 and typed.json()["result"] == "accepted"
    tags, fields = person(asks, "ty@example.com")
    assert tags == [] and fields == {"score": 7, "ok": True}
    with_token = {"email": "tok@example.com", "sequence": "asks", "tags": ["vip"]}
    assert api.post("/subscribe", json=with_token, headers=AUTH).status_code == 201
    assert person(asks, "tok@example.com")[0] == ["vip"]


def test_an_event_reported_before_its_step_answers_that_step(
    asks: World, api: httpx.Client
) -> None:
    links = survey(asks, "ian@example.com")
    body = {"email": "ian@example.com", "event": "trial_started"}
    assert api.post("/events", json=body, headers=AUTH).json()["advanced"] == []
    asks.click(links["pro"])  # on to the trial step, whose ask was reported already
    asks.tick()
    assert asks.state("ian@example.com", "asks").step_id == "offer"
    asks.tick()
    assert subjects(asks, "ian@example.com") == ["Where are you, Ian?", "Offer for you"]
    [skip] = rows(asks.services.store, EVENTS, kind=EventKind.skipped.value)
    assert skip.outcome == "skipped:trial" and "reported before" in skip.detail["reason"]


def test_the_public_form_never_changes_what_is_known_about_an_address(
    asks: World, api: httpx.Client
) -> None:
    asks.subscribe("zoe@example.com", "asks", confirmed=True, tags=["basic"])
    form = {"email": "zoe@example.com", "sequence": "ab", "tags": "pro", "plan": "gold"}
    assert api.post("/subscribe", data=form).status_code == 202
    tags, fields = person(asks, "zoe@example.com")
    assert tags == ["basic"] and "plan" not in fields
    # Nor enters them in another sequence: ab has no confirmation step to ask them with.
    zoe = asks.subscriber_id("zoe@example.com")
    with asks.services.store.transaction() as tx:
        assert tx.enrollments.of(zoe, "ab") is None


def test_the_report_counts_a_journey_whose_truth_is_known(asks: World) -> None:
    """Four people get the guide: one clicks at once, one after the reminder, a scanner
    fetches the third's link, and two time out. Every figure of the step is known."""
    from nurture.tracking import ClickRequest

    for name in ("ann", "bob", "cyd", "dee"):
        asks.subscribe(f"{name}@example.com", "ab", confirmed=True)
    asks.tick()
    link = {m.recipient.split("@")[0]: visible_links(m.part("html"))[0] for m in asks.smtp.caught}
    asks.click(link["ann"])  # judged 11 s later: the yes
    head = ClickRequest(method="HEAD", user_agent="Mozilla/5.0", has_browser_headers=False)
    asks.services.tracker.click(link["cyd"].rsplit("/c/", 1)[1], now=asks.clock.now(), request=head)
    asks.clock.advance(hours=13)
    asks.tick()  # reminders to bob, cyd and dee
    asks.click(link["bob"])
    asks.clock.advance(days=1)
    asks.tick()  # cyd and dee time out
    with asks.services.store.transaction() as tx:
        report = build_report(tx, asks.services.catalog, asks.services.journey.experiments, "ab")
    [seq] = report["sequences"]
    guide, done = seq["steps"]
    assert (seq["enrolled"], seq["converted"]) == (4, 0)
    expected = {
        "entered": 4,
        "sent": 4,
        "reminded": 3,
        "yes": 2,
        "by_click": 2,
        "by_reply": 0,
        "yes_rate": 0.5,
        "after_reminder": 1,
        "human_clickers": 2,
        "bot_clicks": 1,
        "waiting": 0,
        "left": {"timeout": 2},
    }
    assert {k: guide[k] for k in expected} == expected
    # From delivery to the click (not to its judgement, one click window and a second later):
    # ann at once, bob 13 h 11 s after (ann's click window, then 13 h).
    assert guide["time_to_yes"] == {"median_seconds": 0.0, "p90_seconds": 13 * 3600 + 11.0}
    assert guide["bot_reasons"] == [{"reason": "HEAD request", "clicks": 1}]
    # ann's "done" email came 13 h 11 s before bob's: her wait of a day is over, his is not.
    assert (done["entered"], done["sent"], done["waiting"], done["left"]) == (
        2,
        2,
        1,
        {"timeout": 1},
    )
