"""A click answered is a click kept: `nurture run --role web` under a stream of clicks from
several clients is killed with kill -9 mid-stream; every click whose redirect a client
received is in the database (the redirect goes only once its row is committed, in a group
with the other clicks of the moment). On SQLite and PostgreSQL, real HTTP, real processes."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text
from support.daemon import Daemon, e2e_env
from support.net import wait_for
from support.paths import DATA
from support.settings import make_settings
from support.smtp import AcceptAll
from support.web import BROWSER

from nurture.db.migrate import upgrade
from nurture.services import build_services
from nurture.tokens import TokenKind


def sent_links(database_url: str, tmp_path: Path, people: int) -> list[str]:
    """People whose first email went out (a relay that takes all), and its links' paths."""
    import asyncio

    upgrade(database_url)
    settings = make_settings(tmp_path, database_url, secret_key="durable-key")
    services = build_services(settings, transport=AcceptAll())
    try:
        for i in range(people):
            services.subscriptions.subscribe(
                email=f"p{i}@example.com",
                sequence_id="noconfirm",
                fields={},
                now=services.clock.now(),
                confirmed=True,
            )
        asyncio.run(services.dispatcher.run_once())
        paths = []
        with services.store.transaction() as tx:
            for message_id in range(1, people + 1):
                message = tx.outbox.get(message_id)
                assert message is not None and message.sent_at is not None
                for i, link in enumerate(message.links):
                    token = services.signer.make(TokenKind.click, message.id, link=i)
                    if not link.honeypot:
                        paths.append(f"/c/{token}")
        return paths
    finally:
        services.store.dispose()


def test_every_answered_click_survives_a_kill_9(database_url: str, tmp_path: Path) -> None:
    paths = sent_links(database_url, tmp_path, people=20)
    env = e2e_env(
        tmp_path,
        NURTURE_DATABASE_URL=database_url,
        NURTURE_SECRET_KEY="durable-key",
        NURTURE_SEQUENCES_DIR=str(DATA / "sequences"),
        # Every click here is to be written one by one (the flood limit would summarise).
        NURTURE_CLICK_FLOOD_LIMIT="1000000",
        NURTURE_CLIENT_FLOOD_LIMIT="1000000",
    )
    web = Daemon(tmp_path, env)
    web.start_role("web")
    answered: list[int] = []
    stop = threading.Event()

    def clicker(offset: int) -> None:
        with httpx.Client(base_url=web.base, timeout=5) as http:
            i = offset
            while not stop.is_set():
                try:
                    r = http.get(paths[i % len(paths)], headers=BROWSER)
                except httpx.HTTPError:
                    return  # the server is gone: this click was never answered
                if r.status_code == 302:
                    answered.append(1)
                i += 1

    threads = [threading.Thread(target=clicker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    try:
        wait_for("a few hundred clicks answered", lambda: len(answered) > 300)
        web.kill9()
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            kept = conn.execute(text("SELECT count(*) FROM events WHERE kind = 'click'")).scalar()
    finally:
        engine.dispose()
    assert kept is not None and kept >= len(answered) > 300
