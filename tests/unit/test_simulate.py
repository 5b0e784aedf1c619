"""``nurture simulate``: the real engine on a virtual clock, for personas, on the shipped
sequences (no database, no mail)."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support.paths import REPO

from nurture.errors import SubscribeError
from nurture.mail.render import make_environment
from nurture.sequences import Sequence, load_catalog
from nurture.simulate import PERSONAS, Persona, load_personas, offset, simulate, warnings

H = timedelta(hours=1)
D = timedelta(days=1)


def shipped(sequence_id: str) -> Sequence:
    catalog = load_catalog(REPO / "sequences", env=make_environment(REPO / "templates"))
    found = catalog.get(sequence_id)
    assert found is not None
    return found


def test_the_starter_sequence_for_the_three_personas() -> None:
    starter = shipped("starter")
    eager, late, silent = (simulate(starter, p) for p in PERSONAS)
    # eager: each email answered an hour later; then each step's delay (10m, 1d, 1d, 1d).
    assert [(e.at, e.step, e.kind) for e in eager.emails] == [
        (timedelta(0), "confirm", "step"),
        (H + 10 * timedelta(minutes=1), "welcome", "step"),
        (D + 2 * H + 10 * timedelta(minutes=1), "guide", "step"),
        (2 * D + 3 * H + 10 * timedelta(minutes=1), "webinar", "step"),
        (3 * D + 4 * H + 10 * timedelta(minutes=1), "offer", "step"),
    ]
    assert eager.outcome == "completed"
    # after-reminder: the confirmation's reminder at +1d, the yes an hour later; welcome has
    # no reminder, so it times out (7d, next) and the guide follows a day later.
    assert [(offset(e.at), e.step, e.kind) for e in late.emails][:4] == [
        ("+0", "confirm", "step"),
        ("+1d", "confirm", "reminder1"),
        ("+1d 1h 10m", "welcome", "step"),
        ("+1w 2d 1h 10m", "guide", "step"),
    ]
    assert late.outcome == "completed"
    assert silent.outcome == "exited:timeout" and silent.elapsed == 3 * D
    assert [e.kind for e in silent.emails] == ["step", "reminder1"]
    notes = warnings(starter, [eager, late, silent])
    assert notes == [f"longest path: {offset(late.elapsed)} (after-reminder)"]


def test_answers_conditions_events_and_variants_in_the_trial_journey() -> None:
    trial = shipped("trial")
    pro = Persona("pro", H, answers={"survey": "pro"})
    run = simulate(trial, pro)
    steps = [e.step for e in run.emails]
    assert steps == ["confirm", "welcome", "survey", "trial", "pro_tips", "pay"]  # no basics
    assert run.outcome == "completed"
    [trial_email] = [e for e in run.emails if e.step == "trial"]
    assert trial_email.variant in ("a", "b")
    beginner = simulate(trial, PERSONAS[0])  # the first answer: starting -> basics
    assert "basics" in [e.step for e in beginner.emails]
    assert [s for _, s, _ in beginner.skipped] == ["pro_tips"]


def test_personas_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("- name: slow\n  yes_after: 2d\n  steps: {offer: never}\n")
    [slow] = load_personas(path)
    run = simulate(shipped("starter"), slow)
    assert run.outcome == "exited:timeout" and run.emails[-1].step == "offer"
    path.write_text("- name: x\n  colour: blue\n")
    with pytest.raises(SubscribeError, match="unknown key"):
        load_personas(path)
    path.write_text("- name: x\n  yes_after: soon\n")
    with pytest.raises(SubscribeError, match="persona x"):
        load_personas(path)


def test_simulate_sends_at_the_window_opening_in_the_personas_zone() -> None:
    from zoneinfo import ZoneInfo

    from support.paths import DATA

    from nurture.simulate import START

    catalog = load_catalog(DATA / "windows" / "sequences", env=make_environment(DATA / "templates"))
    office = catalog.get("office")
    assert office is not None
    la = ZoneInfo("America/Los_Angeles")
    friday_evening = START.replace(day=10, hour=2)  # Friday 18:00 in Los Angeles
    run = simulate(office, PERSONAS[0], zone=la, start=friday_evening)
    confirm, read, weekend = run.emails
    assert confirm.at == timedelta(0) and confirm.waited is None  # a confirmation goes at once
    sent = friday_evening + read.at
    assert sent.astimezone(la).strftime("%a %H:%M") == "Mon 09:00"
    assert read.waited == read.at - H  # clicked an hour after the confirmation
    assert (friday_evening + weekend.at).astimezone(la).strftime("%a %H:%M") == "Sat 10:00"
    # Without a zone, the same run reads the window in UTC.
    utc_run = simulate(office, PERSONAS[0], start=friday_evening)
    assert (friday_evening + utc_run.emails[1].at).strftime("%a %H:%M") == "Mon 09:00"


def test_a_reminder_held_by_its_window_past_the_timeout_is_not_shown(tmp_path: Path) -> None:
    """As the daemon: a reminder that falls due outside the send window waits for its opening
    and is cancelled if the step times out (or is answered) by then. Found by the generated
    journeys: the simulator showed a reminder the daemon never sends."""
    (tmp_path / "s.yaml").write_text(
        textwrap.dedent(
            """
            id: held
            name: Held
            from: "Ada <ada@acme.example>"
            confirmed_elsewhere: true
            send_window: {days: [mon, tue, wed, thu, fri], from: "09:00", to: "17:00", spread: 0s}
            steps:
              - id: ask
                subject: Ask
                template: welcome.html
                wait: 1d
                reminders:
                  - {after: 30m, subject: Early, template: welcome.html}
                  - {after: 20h, subject: Late, template: welcome.html}
                on_timeout: exit
            """
        )
    )
    catalog = load_catalog(tmp_path, env=make_environment(REPO / "templates"))
    sequence = catalog.get("held")
    assert sequence is not None
    # Wednesday 09:00: the late reminder falls due Thursday 05:00, outside the window, which
    # opens at 09:00, as the step times out.
    run = simulate(sequence, PERSONAS[2], start=datetime(2026, 1, 7, 9, 0, tzinfo=UTC))
    assert [(e.step, e.kind) for e in run.emails] == [("ask", "step"), ("ask", "reminder1")]
    assert run.outcome == "exited:timeout"
