"""Faults with real processes: `nurture run` stopped with SIGTERM or killed with kill -9 at an
exact moment (the fault-injecting SMTP server calls the test back after each message it
accepts), then started again. Nobody is lost; nobody gets a step twice beyond the documented
bound; nobody skips a step they never received (issue 8, findings 1 to 3)."""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from support.daemon import Daemon, e2e_env
from support.faults import Fault, FaultyHandler, faulty_smtp
from support.net import wait_for
from support.paths import DATA
from support.settings import make_settings

from nurture.db.migrate import upgrade
from nurture.mail.catcher import SmtpServerThread
from nurture.services import build_services

CONNECTIONS = 4
# The ledger's bound: at most two accepted messages per connection not yet written down.
BOUND = 2 * CONNECTIONS


@pytest.fixture
def smtp() -> Iterator[SmtpServerThread]:
    with faulty_smtp(FaultyHandler(faults=[Fault("data", delay=0.2)])) as server:
        yield server


def handler(smtp: SmtpServerThread) -> FaultyHandler:
    found: FaultyHandler = smtp.handler
    return found


def daemon_for(tmp_path: Path, smtp: SmtpServerThread, **extra: str) -> Daemon:
    env = e2e_env(
        tmp_path,
        NURTURE_SEQUENCES_DIR=str(DATA / "faults"),
        NURTURE_SMTP_HOST="127.0.0.1",
        NURTURE_SMTP_PORT=str(smtp.port),
        NURTURE_SMTP_CONNECTIONS=str(CONNECTIONS),
        NURTURE_SHUTDOWN_TIMEOUT_SECONDS="20",
        **extra,
    )
    return Daemon(tmp_path, env)


def enroll(tmp_path: Path, sequence: str, count: int) -> list[str]:
    """People enrolled (confirmed) before the daemon starts: all due at its first tick."""
    url = f"sqlite:///{tmp_path / 'nurture.db'}"
    upgrade(url)
    settings = make_settings(tmp_path, url, sequences_dir=DATA / "faults")
    services = build_services(settings)
    people = [f"p{i:03d}@example.com" for i in range(count)]
    try:
        for email in people:
            services.subscriptions.subscribe(
                email=email,
                sequence_id=sequence,
                fields={},
                now=services.clock.now(),
                confirmed=True,
            )
    finally:
        services.store.dispose()
    return people


def copies(smtp: SmtpServerThread, subject: str) -> Counter[str]:
    """Copies the server accepted, per recipient."""
    with handler(smtp).lock:
        return Counter(c.recipient for c in handler(smtp).caught if c.subject == subject)


def when_accepted(smtp: SmtpServerThread, count: int, act: Callable[[], None]) -> None:
    def on_accepted(n: int, _: object) -> None:
        if n == count:
            act()

    handler(smtp).on_accepted = on_accepted


def cut_at(
    tmp_path: Path, smtp: SmtpServerThread, sequence: str, count: int, at: int, how: str
) -> tuple[Daemon, list[str], int | None]:
    """Enroll ``count`` people, start the daemon, and SIGTERM or kill it right after the
    ``at``-th accepted message; returns the (stopped) daemon, the people and its exit code."""
    people = enroll(tmp_path, sequence, count)
    daemon = daemon_for(tmp_path, smtp)
    cut = {"sigterm": signal.SIGTERM, "kill": signal.SIGKILL}[how]
    when_accepted(smtp, at, lambda: daemon.proc.send_signal(cut))  # type: ignore[union-attr]
    daemon.start()
    assert daemon.proc is not None
    code = daemon.proc.wait(30)
    handler(smtp).on_accepted = None
    return daemon, people, code


def restarted_until_all_have(
    daemon: Daemon, smtp: SmtpServerThread, people: list[str]
) -> Counter[str]:
    daemon.start()  # on SQLite it takes over its predecessor's mail at once
    wait_for("everyone's email", lambda: len(copies(smtp, "Hello, friend")) == len(people))
    # Nothing else can be sent once no message is left queued or on its way (a message taken
    # over from the dead worker would still be one of those).
    wait_for("no mail left to send", lambda: open_messages(daemon) == 0)
    return copies(smtp, "Hello, friend")


def open_messages(daemon: Daemon) -> int:
    engine = create_engine(daemon.env["NURTURE_DATABASE_URL"])
    try:
        with engine.connect() as conn:
            found: int = conn.scalar(
                text("SELECT count(*) FROM messages WHERE status IN ('queued', 'sending')")
            )
        return found
    finally:
        engine.dispose()


def test_sigterm_mid_batch_loses_nothing_and_repeats_nothing(
    tmp_path: Path, smtp: SmtpServerThread
) -> None:
    """Finding 1: SIGTERM cancelled the batch in flight: all rows left 'sending', resent 5
    minutes later, 28 people got the email twice. Now the mail on the wire finishes and is
    recorded, the rest goes back to the queue, and the next start sends it at once."""
    daemon, people, code = cut_at(tmp_path, smtp, "batch", 40, 10, "sigterm")
    try:
        assert code == 0
        assert 10 <= sum(copies(smtp, "Hello, friend").values()) < len(people)
        got = restarted_until_all_have(daemon, smtp, people)
        assert set(got) == set(people) and max(got.values()) == 1  # none lost, none twice
    finally:
        daemon.kill()


def test_kill_9_at_the_tenth_accepted_email_repeats_at_most_the_bound(
    tmp_path: Path, smtp: SmtpServerThread
) -> None:
    """Finding 2: outcomes were recorded after the whole batch, so a crash repeated every
    accepted email of it (12 of 20). Now at most two per connection."""
    daemon, people, _ = cut_at(tmp_path, smtp, "batch", 40, 10, "kill")
    try:
        got = restarted_until_all_have(daemon, smtp, people)
        assert set(got) == set(people)  # none lost
        assert sum(got.values()) - len(people) <= BOUND
    finally:
        daemon.kill()


def test_an_outage_longer_than_a_wait_never_skips_a_step(
    tmp_path: Path, smtp: SmtpServerThread
) -> None:
    """Finding 3: the step's clock started when its email was planned, so after an outage
    longer than the wait people got step 2 having never got step 1."""
    daemon, people, _ = cut_at(tmp_path, smtp, "outage", 12, 3, "kill")
    try:
        time.sleep(3)  # the outage: longer than step one's two-second wait
        daemon.start()
        wait_for("step two for everyone", lambda: len(copies(smtp, "Step two")) == len(people))
        with handler(smtp).lock:
            order = [(c.recipient, c.subject) for c in handler(smtp).caught]
        for email in people:
            subjects = [s for r, s in order if r == email]
            assert subjects.index("Step one") < subjects.index("Step two"), (email, subjects)
    finally:
        daemon.kill()


def test_a_second_daemon_on_the_same_sqlite_file_is_refused(
    tmp_path: Path, smtp: SmtpServerThread
) -> None:
    import subprocess

    from support.daemon import NURTURE
    from support.net import free_port

    enroll(tmp_path, "batch", 1)
    daemon = daemon_for(tmp_path, smtp)
    try:
        daemon.start()
        assert daemon.proc is not None
        env = {**daemon.env, "NURTURE_HTTP_PORT": str(free_port())}
        second = subprocess.run(
            [str(NURTURE), "run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )
        assert second.returncode == 1
        last = second.stderr.strip().splitlines()[-1]
        assert last.startswith("configuration error: another nurture daemon is running on ")
        assert f"(pid {daemon.proc.pid})" in last
        assert daemon.proc.poll() is None  # the first one goes on
    finally:
        assert daemon.stop() == 0
