"""Clocks that disagree, with real processes (issue 20, finding 5): `nurture run` daemons on one
database, one of them with its wall clock shifted (``NURTURE_CLOCK_OFFSET_FILE``, the test-only
setting of ``nurture.clock``). Liveness is judged on the database's clock, so a worker whose
clock runs ahead takes nobody for dead and sends nobody an email twice; a worker whose clock
steps back an hour keeps its heartbeat and its sending going and is not taken for dead; either
says in its log how far off its clock is, and what to do about it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from support.daemon import Daemon, e2e_env
from support.faults import Fault, FaultyHandler, faulty_smtp
from support.net import wait_for
from support.paths import DATA
from support.settings import make_settings

from nurture.clock import utc
from nurture.mail.catcher import SmtpServerThread
from nurture.services import build_services

TIMEOUT = 6  # NURTURE_WORKER_TIMEOUT_SECONDS: a heartbeat every second
TAKEN_FOR_DEAD = "was taken for dead"  # the line of a worker that finds its row gone
TOOK_OVER = "silent workers"  # the line of a worker that forgot others and took their mail
SKEW = "run NTP"  # the clock's warning ends with the fix
API_TOKEN = "the-shop's-token"


@pytest.fixture
def smtp() -> Iterator[SmtpServerThread]:
    # A slow relay: mail is on the wire while the workers judge each other.
    with faulty_smtp(FaultyHandler(faults=[Fault("data", delay=0.2)])) as server:
        yield server


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    found = create_engine(database_url)
    yield found
    found.dispose()


def env_for(
    tmp_path: Path, name: str, database_url: str, smtp: SmtpServerThread, offset: str
) -> dict[str, str]:
    """A daemon of the deployment, in its own folder, whose clock is ``offset`` seconds off."""
    (tmp_path / name).mkdir()
    clock = tmp_path / name / "clock-offset"
    clock.write_text(offset)
    return e2e_env(
        tmp_path / name,
        NURTURE_DATABASE_URL=database_url,
        NURTURE_SEQUENCES_DIR=str(DATA / "faults"),
        NURTURE_SMTP_HOST="127.0.0.1",
        NURTURE_SMTP_PORT=str(smtp.port),
        NURTURE_SECRET_KEY="one-key-for-the-deployment",
        NURTURE_WORKER_TIMEOUT_SECONDS=str(TIMEOUT),
        NURTURE_API_TOKEN=API_TOKEN,
        NURTURE_CLOCK_OFFSET_FILE=str(clock),
    )


def enroll(tmp_path: Path, database_url: str, count: int) -> list[str]:
    """People enrolled (confirmed) before the daemons start: all due at the first tick."""
    settings = make_settings(tmp_path, database_url, sequences_dir=DATA / "faults")
    services = build_services(settings)
    people = [f"p{i:03d}@example.com" for i in range(count)]
    try:
        for email in people:
            services.subscriptions.subscribe(
                email=email,
                sequence_id="batch",
                fields={},
                now=services.clock.now(),
                confirmed=True,
            )
    finally:
        services.store.dispose()
    return people


def copies(smtp: SmtpServerThread, subject: str) -> Counter[str]:
    handler: FaultyHandler = smtp.handler
    with handler.lock:
        return Counter(c.recipient for c in handler.caught if c.subject == subject)


def database_now(engine: Engine) -> datetime:
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            found = conn.scalar(text("SELECT clock_timestamp()"))
        else:
            found = datetime.fromisoformat(
                conn.scalar(text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')"))
            )
    return utc(found)


def heartbeat_of(engine: Engine, daemon: Daemon) -> datetime | None:
    assert daemon.proc is not None
    with engine.connect() as conn:
        found = conn.scalar(
            text("SELECT heartbeat_at FROM workers WHERE pid = :pid"), {"pid": daemon.proc.pid}
        )
    if isinstance(found, str):  # SQLite keeps text
        found = datetime.fromisoformat(found)
    return None if found is None else utc(found)


def beating_since(engine: Engine, daemons: list[Daemon], mark: datetime) -> bool:
    """Each daemon's heartbeat, on the database's clock, came a whole worker timeout after
    ``mark``: the others had that long to take it for dead."""
    since = mark + timedelta(seconds=TIMEOUT)
    return all((beat := heartbeat_of(engine, d)) is not None and beat > since for d in daemons)


def open_messages(engine: Engine) -> int:
    with engine.connect() as conn:
        found: int = conn.scalar(
            text("SELECT count(*) FROM messages WHERE status IN ('queued', 'sending')")
        )
    return found


def logged(daemon: Daemon, words: str) -> bool:
    return daemon.log.exists() and words in daemon.log.read_text()


# Several workers share a database on PostgreSQL only (one worker holds a SQLite file).
@pytest.mark.parametrize("empty_database_url", ["postgresql"], indirect=True)
def test_a_worker_whose_clock_runs_ahead_takes_nobody_for_dead(
    tmp_path: Path, smtp: SmtpServerThread, database_url: str, engine: Engine
) -> None:
    people = enroll(tmp_path, database_url, 80)
    behind = Daemon(tmp_path / "on-time", env_for(tmp_path, "on-time", database_url, smtp, "0"))
    ahead = Daemon(tmp_path / "ahead", env_for(tmp_path, "ahead", database_url, smtp, "120"))
    try:
        behind.start_worker()
        ahead.start_worker()
        wait_for("the skew warning", lambda: logged(ahead, SKEW))
        wait_for("everyone's email", lambda: len(copies(smtp, "Hello, friend")) == len(people))
        wait_for("no mail left to send", lambda: open_messages(engine) == 0)
        mark = database_now(engine)
        wait_for(
            "a worker timeout of heartbeats from both",
            lambda: beating_since(engine, [behind, ahead], mark),
        )
        twice = {p: n for p, n in copies(smtp, "Hello, friend").items() if n > 1}
        assert twice == {}
        for daemon in (behind, ahead):
            assert not logged(daemon, TAKEN_FOR_DEAD), daemon.log.read_text()[-3000:]
            assert not logged(daemon, TOOK_OVER), daemon.log.read_text()[-3000:]
        assert not logged(behind, SKEW)
        assert behind.stop() == 0 and ahead.stop() == 0
    finally:
        behind.kill()
        ahead.kill()


def test_a_daemon_whose_clock_steps_back_an_hour_keeps_going(
    tmp_path: Path, smtp: SmtpServerThread, database_url: str, engine: Engine
) -> None:
    """On PostgreSQL a second worker (its clock right) watches; on SQLite the daemon is the
    only worker of its file."""
    stepped = Daemon(tmp_path / "stepped", env_for(tmp_path, "stepped", database_url, smtp, "0"))
    daemons = [stepped]
    if database_url.startswith("postgresql"):
        witness = Daemon(
            tmp_path / "witness", env_for(tmp_path, "witness", database_url, smtp, "0")
        )
        daemons.append(witness)
    try:
        stepped.start()
        for daemon in daemons[1:]:
            daemon.start_worker()
        assert not logged(stepped, SKEW)  # its clock is right, so far
        (tmp_path / "stepped" / "clock-offset").write_text("-3600")
        wait_for("the skew warning", lambda: logged(stepped, SKEW))
        mark = database_now(engine)
        people = [f"after{i}@example.com" for i in range(5)]
        with httpx.Client(base_url=stepped.base, timeout=10) as http:
            for email in people:
                r = http.post(
                    "/subscribe",
                    json={"email": email, "sequence": "batch", "confirmed": True},
                    headers={"Authorization": f"Bearer {API_TOKEN}"},
                )
                assert r.status_code == 201, r.text
        wait_for(
            "the emails due after the step",
            lambda: set(copies(smtp, "Hello, friend")) >= set(people),
        )
        wait_for("heartbeats after the step", lambda: beating_since(engine, daemons, mark))
        for daemon in daemons:
            assert not logged(daemon, TAKEN_FOR_DEAD), daemon.log.read_text()[-3000:]
            assert not logged(daemon, TOOK_OVER), daemon.log.read_text()[-3000:]
        for daemon in daemons:
            assert daemon.stop() == 0
    finally:
        for daemon in daemons:
            daemon.kill()
