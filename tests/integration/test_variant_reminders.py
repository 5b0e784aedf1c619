"""A reminder that names no subject or template of its own follows the A/B variant the person
got: "Re: " and their variant's subject, their variant's email, over real SMTP on SQLite and
PostgreSQL; and ``nurture preview`` and ``nurture simulate`` show the same subjects."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.db import MESSAGES, rows
from support.world import MakeWorld, World

NURTURE = Path(sys.executable).parent / "nurture"

SEQUENCE = """\
id: abre
name: A/B with reminders
from: "Ada <ada@acme.example>"
confirmed_elsewhere: true
sample: {first_name: Ada}
steps:
  - id: offer
    variants:
      - {id: a, subject: "Your guide, {{ subscriber.first_name }}", template: offer_a.html}
      - {id: b, subject: "The guide that saves you a week", template: offer_b.html}
    advance_on: click
    wait: 3d
    reminders:
      - after: 1d                 # Re: their variant's subject, their variant's email
      - after: 2d
        subject: "Last call"      # its own subject, their variant's email
    on_timeout: exit
"""
TEMPLATES = {
    "offer_a.html": "<p>Body A for {{ subscriber.first_name }}</p>"
    '<p><a href="https://acme.example/a" data-micro-yes>Read</a></p>\n',
    "offer_b.html": "<p>Body B</p>"
    '<p><a href="https://acme.example/b" data-micro-yes>Read</a></p>\n',
}


def files(tmp_path: Path) -> tuple[Path, Path]:
    sequences, templates = tmp_path / "sequences", tmp_path / "templates"
    sequences.mkdir(exist_ok=True)
    templates.mkdir(exist_ok=True)
    (sequences / "abre.yaml").write_text(SEQUENCE)
    for name, body in TEMPLATES.items():
        (templates / name).write_text(body)
    return sequences, templates


@pytest.fixture
def abre(make_world: MakeWorld, tmp_path: Path) -> World:
    sequences, templates = files(tmp_path)
    return make_world(sequences_dir=sequences, templates_dir=templates)


def test_each_reminder_follows_the_variant_its_person_got(abre: World) -> None:
    # Enough people that the hash gives both variants; then one of each is followed.
    people = [f"p{i}@example.com" for i in range(8)]
    for email in people:
        abre.subscribe(email, "abre", confirmed=True, fields={"first_name": email[:2].title()})
    abre.tick()
    first = {email: abre.smtp.to(email)[0] for email in people}
    got_a = next(e for e in people if first[e].subject.startswith("Your guide"))
    got_b = next(e for e in people if first[e].subject.startswith("The guide"))
    assert first[got_a].subject == f"Your guide, {got_a[:2].title()}"

    abre.clock.advance(days=1, minutes=1)
    abre.tick()
    reminder_a, reminder_b = abre.smtp.to(got_a)[1], abre.smtp.to(got_b)[1]
    assert reminder_a.subject == f"Re: Your guide, {got_a[:2].title()}"
    assert reminder_b.subject == "Re: The guide that saves you a week"
    assert f"Body A for {got_a[:2].title()}" in reminder_a.part("html")
    assert "Body B" in reminder_b.part("html") and "Body A" not in reminder_b.part("html")
    stored = {
        (m.enrollment_id, m.kind): m.variant
        for m in rows(abre.services.store, MESSAGES, step_id="offer")
    }
    assert all(stored[(e, "reminder1")] == stored[(e, "step")] for e, _ in stored)

    abre.clock.advance(days=1)
    abre.tick()
    last_a, last_b = abre.smtp.to(got_a)[2], abre.smtp.to(got_b)[2]
    assert last_a.subject == last_b.subject == "Last call"
    assert "Body A" in last_a.part("html") and "Body B" in last_b.part("html")


def nurture(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    sequences, templates = files(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_")}
    where = ("--sequences", str(sequences), "--templates", str(templates))
    return subprocess.run(
        [str(NURTURE), *args, *where],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_preview_and_simulate_show_the_subject_of_the_variants_reminder(tmp_path: Path) -> None:
    b = nurture(tmp_path, "preview", "abre", "offer", "--reminder", "1", "--variant", "b")
    assert b.returncode == 0, b.stderr
    assert "Subject: Re: The guide that saves you a week" in b.stdout and "Body B" in b.stdout
    a = nurture(tmp_path, "preview", "abre", "offer", "--reminder", "2", "--variant", "a")
    assert a.returncode == 0, a.stderr
    assert "Subject: Last call" in a.stdout and "Body A for Ada" in a.stdout
    simulated = nurture(tmp_path, "simulate", "abre")
    assert simulated.returncode == 0, simulated.stderr
    # Every persona is the same simulated enrollment: one variant, its reminder "Re:" it.
    variant = "a" if "Your guide, " in simulated.stdout else "b"
    subject = "Your guide, " if variant == "a" else "The guide that saves you a week"
    assert f"Re: {subject}" in simulated.stdout
    assert nurture(tmp_path, "validate").returncode == 0
