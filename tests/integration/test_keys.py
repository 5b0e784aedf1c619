"""Rotating the secret key (issue 20, finding 6): under a new NURTURE_SECRET_KEY every link
already sent, one-click unsubscribe included, answered 404 and replies stopped matching, and a
container restarted without its data folder generated a new key with one log line. Now
``NEW,OLD`` signs with the new key and still verifies the old one, and a key that signed mail
of the last 30 days and is gone is a loud line at start. `nurture run` as a user starts it, on
both databases."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.daemon import Daemon, e2e_env
from support.mail import reply, visible_links
from support.net import wait_for
from support.smtp import Caught, RecordingHandler, recording_smtp
from support.web import BROWSER

from nurture.mail.catcher import SmtpServerThread

API_TOKEN = "keys-token"
CHANGED = "NURTURE_SECRET_KEY=<new>,<old>"


@pytest.fixture
def smtp() -> Iterator[SmtpServerThread]:
    with recording_smtp(RecordingHandler()) as server:
        yield server


class Deployment:
    """One database and one relay; a daemon started on them as often as the test likes."""

    def __init__(self, tmp_path: Path, database_url: str, smtp: SmtpServerThread) -> None:
        self.tmp_path = tmp_path
        self.database_url = database_url
        self.caught: RecordingHandler = smtp.handler
        self.port = smtp.port
        self.daemon: Daemon | None = None

    def start(self, **values: str) -> str:
        """Start `nurture run` with these settings; what it logged while starting."""
        env = e2e_env(
            self.tmp_path,
            NURTURE_DATABASE_URL=self.database_url,
            NURTURE_SMTP_HOST="127.0.0.1",
            NURTURE_SMTP_PORT=str(self.port),
            NURTURE_API_TOKEN=API_TOKEN,
            **values,
        )
        self.daemon = Daemon(self.tmp_path, env)
        before = self.daemon.log.stat().st_size if self.daemon.log.exists() else 0
        self.daemon.start()
        wait_for("the daemon to say it runs", lambda: "nurture is running" in self.log(before))
        return self.log(before)

    def log(self, since: int = 0) -> str:
        assert self.daemon is not None
        return self.daemon.log.read_bytes()[since:].decode()

    def stop(self) -> None:
        assert self.daemon is not None
        assert self.daemon.stop() == 0, self.log()[-3000:]

    def http(self) -> httpx.Client:
        assert self.daemon is not None
        return httpx.Client(base_url=self.daemon.base, timeout=10)

    def arrived(self, who: str, subject: str) -> Caught:
        return wait_for(
            f"{who}: {subject!r}",
            lambda: next((m for m in self.caught.to(who) if m.subject == subject), None),
        )


@pytest.fixture
def deployment(database_url: str, tmp_path: Path, smtp: SmtpServerThread) -> Iterator[Deployment]:
    d = Deployment(tmp_path, database_url, smtp)
    yield d
    if d.daemon is not None:
        d.daemon.kill()


def path(url: str) -> str:
    return "/" + url.split("/", 3)[3]


def unsubscribe_path(mail: Caught) -> str:
    return path(mail.message["List-Unsubscribe"].strip("<>"))


def ask(http: httpx.Client, mail: Caught) -> int:
    """What the ask of ``mail`` answers a person's browser now."""
    return http.get(path(visible_links(mail.part("html"))[0]), headers=BROWSER).status_code


def answers(http: httpx.Client, mail: Caught) -> dict[str, object]:
    """What the other ways back from ``mail`` answer now: the unsubscribe page, a reply to
    it, and one-click unsubscribe (last: it unsubscribes)."""
    page = http.get(unsubscribe_path(mail), headers=BROWSER)
    replied = http.post("/inbound", content=reply(mail, "Tell me more")).json()["status"]
    one_click = http.post(unsubscribe_path(mail), content=b"List-Unsubscribe=One-Click")
    return {"page": page.status_code, "reply": replied, "one-click": one_click.status_code}


def test_links_signed_under_the_old_key_work_while_it_is_kept_after_the_new_one(
    deployment: Deployment,
) -> None:
    log = deployment.start(NURTURE_SECRET_KEY="key-a")
    assert "ERROR" not in log
    with deployment.http() as http:
        r = http.post(
            "/subscribe",
            json={"email": "ann@example.com", "sequence": "e2e", "confirmed": True},
            headers={"Authorization": f"Bearer {API_TOKEN}"},
        )
        assert r.status_code == 201, r.text
        read = deployment.arrived("ann@example.com", "Read this, friend")
    deployment.stop()

    # Rotated: the new key first, the old one kept after it. Nothing to warn about.
    log = deployment.start(NURTURE_SECRET_KEY="key-b, key-a")
    assert "ERROR" not in log, log
    with deployment.http() as http:
        assert ask(http, read) == 302
        # A yes: the next email, signed with the new key.
        after = deployment.arrived("ann@example.com", "Tell me by reply")
        assert answers(http, read) == {"page": 200, "reply": "matched", "one-click": 200}
    deployment.stop()

    # Replaced instead of rotated: the old links die, and the start says so, loudly.
    log = deployment.start(NURTURE_SECRET_KEY="key-b")
    [line] = [x for x in log.splitlines() if " ERROR " in x]
    assert "emails of the last 30 days were signed by the secret key" in line, line
    assert "NURTURE_SECRET_KEY no longer holds it" in line and CHANGED in line, line
    with deployment.http() as http:
        assert ask(http, read) == 404
        assert answers(http, read) == {"page": 404, "reply": "unmatched", "one-click": 404}
        # What the new key signed works under it alone.
        assert http.get(unsubscribe_path(after), headers=BROWSER).status_code == 200
    deployment.stop()


def test_a_key_file_generated_beside_a_database_that_has_sent_mail_is_a_loud_line(
    deployment: Deployment, tmp_path: Path
) -> None:
    """A container restarted without its data folder generated a new key with one info-like
    line, and every link already sent answered 404."""
    log = deployment.start(NURTURE_DATA_DIR=str(tmp_path / "first"))
    assert (tmp_path / "first" / "nurture-secret.key").exists() and " ERROR " not in log
    with deployment.http() as http:
        r = http.post(
            "/subscribe",
            json={"email": "bob@example.com", "sequence": "e2e", "confirmed": True},
            headers={"Authorization": f"Bearer {API_TOKEN}"},
        )
        assert r.status_code == 201, r.text
    deployment.arrived("bob@example.com", "Read this, friend")
    deployment.stop()

    log = deployment.start(NURTURE_DATA_DIR=str(tmp_path / "second"))
    [line] = [x for x in log.splitlines() if " ERROR " in x]
    assert f"its key file {tmp_path / 'second' / 'nurture-secret.key'} was just generated" in line
    assert "was the data folder lost?" in line and CHANGED in line, line
    deployment.stop()
