"""Web and workers scaled apart, as an operator runs them: two `nurture run --role web`
processes sharing one port, and one `nurture run --role worker`, on one database (SQLite
and PostgreSQL), real SMTP and real HTTP. The web processes answer the form and the clicks
and send nothing; the worker sends, and listens on no port."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from support.daemon import Daemon, e2e_env, press
from support.mail import visible_links
from support.net import free_port, wait_for
from support.smtp import Caught, RecordingHandler, recording_smtp

from nurture.mail.catcher import SmtpServerThread


@pytest.fixture
def smtp() -> Iterator[SmtpServerThread]:
    with recording_smtp(RecordingHandler()) as server:
        yield server


def test_two_web_processes_and_a_worker_share_the_work(
    database_url: str, tmp_path: Path, smtp: SmtpServerThread
) -> None:
    handler: RecordingHandler = smtp.handler
    port, worker_port = free_port(), free_port()
    env = e2e_env(
        tmp_path,
        NURTURE_DATABASE_URL=database_url,
        NURTURE_SMTP_HOST="127.0.0.1",
        NURTURE_SMTP_PORT=str(smtp.port),
        NURTURE_SECRET_KEY="one-key-for-the-deployment",
        NURTURE_BASE_URL=f"http://127.0.0.1:{port}",
    )
    started: list[Daemon] = []
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    engine = create_engine(database_url)
    try:
        for name in ("web1", "web2"):
            (tmp_path / name).mkdir()
            web = Daemon(tmp_path / name, {**env, "NURTURE_HTTP_PORT": str(port)})
            web.start_role("web")
            started.append(web)
        r = http.post(
            "/subscribe", json={"email": "wen@example.com", "sequence": "e2e", "first_name": "Wen"}
        )
        assert r.status_code == 202, r.text
        with engine.connect() as conn:
            # The web processes are no workers: nothing registered, nothing decided yet.
            assert conn.execute(text("SELECT count(*) FROM workers")).scalar() == 0
            assert conn.execute(text("SELECT count(*) FROM messages")).scalar() == 0

        (tmp_path / "worker").mkdir()
        worker = Daemon(tmp_path / "worker", {**env, "NURTURE_HTTP_PORT": str(worker_port)})
        worker.start_worker()
        started.append(worker)

        def arrived(subject: str) -> Caught:
            return wait_for(
                repr(subject),
                lambda: next(
                    (m for m in handler.to("wen@example.com") if m.subject == subject), None
                ),
            )

        press(http, visible_links(arrived("Confirm, Wen").part("html"))[0])
        press(http, visible_links(arrived("Read this, Wen").part("html"))[0])
        arrived("Tell me by reply")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM workers")).scalar() == 1
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", worker_port), timeout=1).close()
        for daemon in started:
            assert daemon.stop() == 0, daemon.log.read_text()[-2000:]
        logs = [d.log.read_text() for d in started]
        assert "nurture is running (web)" in logs[0] and "sending nothing" in logs[0]
        assert "nurture is running (worker)" in logs[2] and "no web app" in logs[2]
    finally:
        http.close()
        engine.dispose()
        for daemon in started:
            daemon.kill()
