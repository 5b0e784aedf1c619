"""The daemon as a user starts it: `nurture run` in a subprocess, real SMTP, real HTTP clicks,
replies through POST /inbound, and a kill -9 in the middle of the journey."""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from support.daemon import NURTURE, Daemon, e2e_env, press
from support.dovecot import Dovecot
from support.mail import reply, visible_links
from support.net import wait_for
from support.smtp import Caught, RecordingHandler, recording_smtp

from nurture.mail.catcher import SmtpServerThread


@pytest.fixture
def smtp() -> Iterator[SmtpServerThread]:
    with recording_smtp(RecordingHandler()) as server:
        yield server


@pytest.fixture
def daemon(tmp_path: Path, smtp: SmtpServerThread) -> Iterator[Daemon]:
    env = e2e_env(
        tmp_path,
        NURTURE_RETRY_BASE_SECONDS="1",
        NURTURE_SMTP_TIMEOUT="1",
        NURTURE_SMTP_HOST="127.0.0.1",
        NURTURE_SMTP_PORT=str(smtp.port),
    )
    d = Daemon(tmp_path, env)
    yield d
    d.kill()


def test_three_people_a_kill_9_and_nobody_lost_or_sent_twice(
    daemon: Daemon, smtp: SmtpServerThread, tmp_path: Path
) -> None:
    server: RecordingHandler = smtp.handler
    daemon.start()
    assert (tmp_path / "nurture-secret.key").exists()  # generated on first start

    http = httpx.Client(base_url=daemon.base, timeout=10)
    try:
        _journey(daemon, server, http, tmp_path)
    finally:
        http.close()


def _journey(daemon: Daemon, server: RecordingHandler, http: httpx.Client, tmp_path: Path) -> None:
    for name in ("ann", "bob", "cat"):
        r = http.post(
            "/subscribe",
            json={"email": f"{name}@example.com", "sequence": "e2e", "first_name": name.title()},
        )
        assert r.status_code == 202, r.text

    def mails(who: str) -> list[Caught]:
        return server.to(f"{who}@example.com")

    def arrived(who: str, subject: str) -> Caught:
        return wait_for(
            f"{who}: {subject!r}",
            lambda: next((m for m in mails(who) if m.subject == subject), None),
        )

    def click_ask(mail: Caught) -> None:
        press(http, visible_links(mail.part("html"))[0])

    engine = create_engine(daemon.env["NURTURE_DATABASE_URL"])

    def recorded() -> bool:
        """Every email the relay took is written down as sent: none is between its 250 and
        its record, where a kill -9 has it sent again (with the same Message-ID, by design:
        test_crashes.py counts that bound), which this test would take for a repeat."""
        with engine.connect() as conn:
            sent = conn.execute(text("SELECT count(*) FROM messages WHERE status = 'sent'"))
            return int(sent.scalar_one()) == len(server.caught)

    def unsent() -> int:
        with engine.connect() as conn:
            q = text("SELECT count(*) FROM messages WHERE status IN ('queued', 'sending')")
            return int(conn.execute(q).scalar_one())

    # ann and cat confirm; bob never does anything.
    click_ask(arrived("ann", "Confirm, Ann"))
    click_ask(arrived("cat", "Confirm, Cat"))
    read_ann = arrived("ann", "Read this, Ann")
    read_cat = arrived("cat", "Read this, Cat")
    # bob's reminder is due 3 s after his confirmation email and only until his wait ends at
    # 6 s: a daemon that is down for that whole window rightly times him out without it (a
    # restart under load takes seconds), so it is taken before the kill.
    arrived("bob", "Reminder: please confirm")
    wait_for("every email the relay took to be recorded as sent", recorded)
    click_ask(read_ann)
    # kill -9 mid-journey: ann's click is stored and waits out its judging window (1 s) before
    # her next step falls due, cat's read waits for a click, bob's timeout falls due after the
    # restart (or while the daemon is down), and nothing else is due to be sent.
    daemon.kill9()
    daemon.start_module()

    click_ask(read_cat)
    ask = arrived("cat", "Tell me by reply")
    r = http.post("/inbound", content=reply(ask, "I want to learn about subject lines."))
    assert r.json() == {"status": "matched", "outcome": "advanced"}, r.text
    click_ask(arrived("cat", "The offer"))

    click_ask(arrived("ann", "Tell me by reply"))
    click_ask(arrived("ann", "The offer"))

    def statuses() -> dict[str, tuple[str, str | None]]:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT s.email, e.status, e.exit_reason FROM enrollments e "
                    "JOIN subscribers s ON s.id = e.subscriber_id"
                )
            ).all()
        return {email.split("@")[0]: (status, reason) for email, status, reason in rows}

    final = {
        "ann": ("completed", None),
        "cat": ("completed", None),
        "bob": ("exited", "timeout"),
    }
    # Each last click counts once its judging window has closed: wait for all three.
    wait_for(f"the journeys to end as {final}", lambda: statuses() == final)
    # Nothing is left to send (a repeat after the kill would be queued or sending), and each
    # email the relay took is one recorded as sent.
    wait_for("nothing left to send", lambda: unsent() == 0)
    assert recorded()

    def steps(who: str) -> list[str]:
        # A person slower than the 3-second reminder (a busy machine) may get it: that is
        # the sequence working, not a repeat.
        return [m.subject for m in mails(who) if m.subject != "Reminder: please confirm"]

    assert steps("ann") == ["Confirm, Ann", "Read this, Ann", "Tell me by reply", "The offer"]
    assert steps("cat") == ["Confirm, Cat", "Read this, Cat", "Tell me by reply", "The offer"]
    assert [m.subject for m in mails("bob")] == ["Confirm, Bob", "Reminder: please confirm"]
    ids = Counter(m.message["Message-ID"] for m in server.caught)
    assert max(ids.values()) == 1

    status = subprocess.run(
        [str(NURTURE), "status"],
        cwd=tmp_path,
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    assert re.search(r"e2e: 3 enrollments", status.stdout)
    # waiting, held, completed, human clicks, bot clicks, left
    assert re.search(r"confirm\s+0\s+0\s+0\s+2\s+0\s+timeout 1", status.stdout)
    assert re.search(r"offer\s+0\s+0\s+2\s+2\s+0", status.stdout)
    assert daemon.stop() == 0
    engine.dispose()


def test_replies_from_an_imap_mailbox_across_a_restart(
    daemon: Daemon, smtp: SmtpServerThread, tmp_path: Path
) -> None:
    server: RecordingHandler = smtp.handler
    with Dovecot() as dovecot:
        daemon.env.update(
            {
                "NURTURE_IMAP_HOST": "127.0.0.1",
                "NURTURE_IMAP_PORT": str(dovecot.port),
                "NURTURE_IMAP_USERNAME": Dovecot.USER,
                "NURTURE_IMAP_PASSWORD": Dovecot.PASSWORD,
                "NURTURE_IMAP_TLS": "none",
                # Polling is slow here on purpose: replies are picked up through IMAP IDLE.
                "NURTURE_IMAP_POLL_SECONDS": "3600",
            }
        )
        daemon.start()
        http = httpx.Client(base_url=daemon.base, timeout=10)

        def arrived(who: str, subject: str) -> Caught:
            return wait_for(
                f"{who}: {subject!r}",
                lambda: next(
                    (m for m in server.to(f"{who}@example.com") if m.subject == subject), None
                ),
            )

        def click(mail: Caught) -> None:
            press(http, visible_links(mail.part("html"))[0])

        def at_ask(who: str) -> Caught:
            r = http.post(
                "/subscribe",
                json={"email": f"{who}@example.com", "sequence": "e2e", "first_name": who.title()},
            )
            assert r.status_code == 202
            click(arrived(who, f"Confirm, {who.title()}"))
            click(arrived(who, f"Read this, {who.title()}"))
            return arrived(who, "Tell me by reply")

        engine = create_engine(daemon.env["NURTURE_DATABASE_URL"])

        def step_of(who: str) -> str:
            with engine.connect() as conn:
                return str(
                    conn.execute(
                        text(
                            "SELECT e.step_id FROM enrollments e JOIN subscribers s "
                            "ON s.id = e.subscriber_id WHERE s.email = :e"
                        ),
                        {"e": f"{who}@example.com"},
                    ).scalar_one()
                )

        try:
            human, away = at_ask("ann"), at_ask("ben")
            dovecot.append(reply(human, "Subject lines, please."))
            ooo = reply(away, "I am away.").replace(
                b"Subject: Re:", b"Auto-Submitted: auto-replied\r\nSubject: Automatic reply:"
            )
            dovecot.append(ooo)
            arrived("ann", "The offer")
            wait_for(
                "both handled",
                lambda: (
                    len(dovecot.flags()) == 2
                    and all("$NurtureProcessed" in f for f in dovecot.flags())
                ),
            )
            assert step_of("ben") == "ask"
            # Restart between two polls; a reply that lands meanwhile is neither lost nor
            # handled twice.
            assert daemon.stop() == 0
            dovecot.append(reply(away, "Back now: yes please."))
            daemon.start_module()
            arrived("ben", "The offer")
            with engine.connect() as conn:
                rows = conn.execute(text("SELECT status, count(*) FROM inbound GROUP BY status"))
                counts = dict(rows.all())
            assert counts == {"matched": 2, "automatic": 1}
            assert len([m for m in server.to("ben@example.com") if m.subject == "The offer"]) == 1
        finally:
            http.close()
            engine.dispose()
            daemon.stop()
