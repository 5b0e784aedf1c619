"""The dashboard and /metrics over real HTTP: who may see them, what they show, and the
metrics as Prometheus parses them."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.mail import visible_links
from support.web import ServedApp, served_client
from support.world import MakeWorld, World

from nurture.logs import JsonFormatter
from nurture.mail.catcher import Outbox
from nurture.web.app import create_app


def basic(password: str, user: str = "admin") -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"authorization": f"Basic {token}"}


@pytest.fixture
def guarded(make_world: MakeWorld) -> World:
    return make_world(admin_password="s3cret")


def test_without_a_password_or_the_catcher_the_dashboard_is_a_401(world: World) -> None:
    with served_client(world.services) as http:
        for path in ("/admin", "/metrics"):
            r = http.get(path)
            assert r.status_code == 401 and "NURTURE_ADMIN_PASSWORD" in r.text
            assert r.headers["www-authenticate"].startswith("Basic")


def test_the_dashboard_shows_the_funnel_the_table_and_one_person(guarded: World) -> None:
    confirm = guarded.first_email("ann@example.com")
    guarded.click(visible_links(confirm.part("html"))[0])
    guarded.tick()
    with served_client(guarded.services) as http:
        assert http.get("/admin", headers=basic("wrong")).status_code == 401
        assert http.get("/admin", headers={"authorization": "Basic !!"}).status_code == 401
        r = http.get("/admin", headers=basic("s3cret", user="anyone"))
        assert r.status_code == 200
        assert (
            '<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="funnel of journey"'
            in r.text
        )
        # entered, sent, reminders sent, yes
        assert "<td>confirm</td><td>1</td><td>1</td><td>0</td><td>1</td>" in r.text
        one = http.get("/admin", params={"email": "ann@example.com"}, headers=basic("s3cret"))
        assert "<strong>ann@example.com</strong>: confirmed" in one.text
        assert "Confirm, Ann" in one.text and "Read this, Ann" in one.text
        nobody = http.get("/admin", params={"email": "x@example.com"}, headers=basic("s3cret"))
        assert "No subscriber x@example.com" in nobody.text


def test_metrics_parse_as_prometheus_and_say_what_happened(guarded: World) -> None:
    confirm = guarded.first_email("bo@example.com")
    guarded.click(visible_links(confirm.part("html"))[0])
    guarded.tick()
    with served_client(guarded.services) as http:
        r = http.get("/metrics", headers=basic("s3cret"))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }
    sent = (
        "nurture_emails_sent_total",
        (("kind", "step"), ("sequence", "journey"), ("step", "confirm")),
    )
    assert samples[sent] == 1
    assert samples[("nurture_micro_yes_total", (("by", "click"),))] == 1
    assert samples[("nurture_clicks_total", (("verdict", "human"),))] == 1
    assert samples[("nurture_sending_paused", ())] == 0
    assert ("nurture_tick_seconds_count", ()) in samples
    assert ("nurture_smtp_connection_errors_total", ()) in samples


def test_metrics_can_be_public_alone(make_world: MakeWorld) -> None:
    world = make_world(metrics_public=True)
    with served_client(world.services) as http:
        assert http.get("/metrics").status_code == 200
        assert http.get("/admin").status_code == 401


def test_json_logs_carry_the_action_and_the_ids() -> None:
    record = logging.LogRecord("nurture.x", logging.INFO, "f.py", 1, "sent %d", (3,), None)
    record.action = "tick"
    record.enrollment_id = 7
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "sent 3" and line["action"] == "tick" and line["enrollment_id"] == 7
    assert line["level"] == "INFO" and "args" not in line


def test_with_the_catcher_a_loopback_browser_needs_no_password(
    world: World, tmp_path: Path
) -> None:
    """A newcomer's machine: no relay, no password; the dashboard answers on loopback."""
    app = create_app(world.services, outbox=Outbox(tmp_path / "outbox"))
    with ServedApp(app) as base, httpx.Client(base_url=base, timeout=10) as http:
        assert http.get("/admin").status_code == 200
        assert http.get("/metrics").status_code == 200
