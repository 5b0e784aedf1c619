"""One link hammered, everyone else served: `nurture run` (SQLite, real SMTP, real HTTP) while
eight clients fetch one person's tracked link as fast as they can. Meanwhile a newcomer's
confirmation goes out, another person's click moves them on, the storm's link writes a
bounded number of rows, and the scheduler never complains of overlapping ticks."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from support.daemon import NURTURE, Daemon, e2e_env
from support.faults import Fault, FaultyHandler, faulty_smtp
from support.mail import visible_links
from support.net import wait_for
from support.smtp import Caught, RecordingHandler, recording_smtp
from support.web import BROWSER

from nurture.mail.catcher import SmtpServerThread


@pytest.fixture
def smtp() -> Iterator[SmtpServerThread]:
    with recording_smtp(RecordingHandler()) as server:
        yield server


def enroll(env: dict[str, str], workdir: Path, address: str) -> None:
    """`nurture subscribe ADDRESS --sequence e2e --confirmed`, as an operator types it."""
    done = subprocess.run(
        [str(NURTURE), "subscribe", address, "--sequence", "e2e", "--confirmed"],
        env=env, cwd=workdir, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_a_storm_on_one_link_stalls_nobody_else(tmp_path: Path, smtp: SmtpServerThread) -> None:
    handler: RecordingHandler = smtp.handler
    env = e2e_env(
        tmp_path,
        NURTURE_SMTP_HOST="127.0.0.1",
        NURTURE_SMTP_PORT=str(smtp.port),
        NURTURE_SECRET_KEY="storm-key",
    )
    for who in ("storm", "calm"):
        enroll(env, tmp_path, f"{who}@example.com")
    daemon = Daemon(tmp_path, env)
    daemon.start()

    def arrived(who: str, subject: str) -> Caught:
        return wait_for(
            f"{who}: {subject!r}",
            lambda: next(
                (m for m in handler.to(f"{who}@example.com") if m.subject == subject), None
            ),
        )

    def path(mail: Caught) -> str:
        return "/" + visible_links(mail.part("html"))[0].split("/", 3)[3]

    storm_link = path(arrived("storm", "Read this, friend"))
    calm_link = path(arrived("calm", "Read this, friend"))
    answered = [0] * 8  # each client counts its own
    stop = threading.Event()

    def hammer(me: int) -> None:
        with httpx.Client(base_url=daemon.base, timeout=10) as http:
            while not stop.is_set():
                if http.get(storm_link, headers=BROWSER).status_code == 302:
                    answered[me] += 1

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(8)]
    began = time.monotonic()
    for t in threads:
        t.start()
    try:
        wait_for("the storm to be under way", lambda: sum(answered) > 200)
        with httpx.Client(base_url=daemon.base, timeout=10) as http:
            r = http.post("/subscribe", json={"email": "new@example.com", "sequence": "e2e"})
            assert r.status_code == 202
            arrived("new", "Confirm, friend")  # a newcomer's confirmation, during the storm
            # The other person clicks: a different client, a person's headers.
            other = {**BROWSER, "X-Forwarded-For": "203.0.113.50"}
            assert http.get(calm_link, headers=other).status_code == 302
            arrived("calm", "Tell me by reply")  # their yes took effect during the storm
        assert not stop.is_set() and all(t.is_alive() for t in threads)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    seconds = time.monotonic() - began
    daemon.stop()
    engine = create_engine(env["NURTURE_DATABASE_URL"])
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT count(*) FROM events e JOIN messages m ON m.id = e.message_id "
                    "JOIN subscribers s ON s.id = m.subscriber_id "
                    "WHERE e.kind = 'click' AND s.email = 'storm@example.com'"
                )
            ).scalar()
    finally:
        engine.dispose()
    windows = int(seconds // 10) + 2
    assert rows is not None and rows <= windows * (20 + 1) < sum(answered)
    log = daemon.log.read_text()
    assert "maximum number of running instances" not in log


def test_a_slow_relay_makes_one_overrun_line_not_a_warning_per_interval(tmp_path: Path) -> None:
    """A relay that takes 1.5 s per message and a 0.05 s tick: each tick runs for seconds,
    skipping dozens of intervals; the log has one line about it, not one per interval."""
    slow = FaultyHandler(faults=[Fault("data", delay=1.5)])
    with faulty_smtp(slow) as server:
        env = e2e_env(
            tmp_path,
            NURTURE_SMTP_HOST="127.0.0.1",
            NURTURE_SMTP_PORT=str(server.port),
            NURTURE_SMTP_CONNECTIONS="1",
            NURTURE_TICK_SECONDS="0.05",
        )
        for i in range(3):
            enroll(env, tmp_path, f"s{i}@example.com")
        daemon = Daemon(tmp_path, env)
        daemon.start()
        try:
            wait_for("three slow emails", lambda: len(slow.caught) >= 3)
        finally:
            daemon.stop()
    log = daemon.log.read_text()
    assert "maximum number of running instances" not in log
    lines = [line for line in log.splitlines() if "past its 0.05s interval" in line]
    assert len(lines) == 1, log[-3000:]  # at most one a minute, and this ran for seconds
    assert "intervals skipped" in lines[0] and "deciding" in lines[0]
