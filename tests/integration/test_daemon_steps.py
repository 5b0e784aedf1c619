"""The daemon's own steps, in this process: start, serve, stop."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.dovecot import Dovecot
from support.settings import make_settings
from support.smtp import recording_smtp

from nurture.daemon import Daemon
from nurture.db.connect import connect_database
from nurture.db.store import Store


@pytest.fixture
def heap() -> Iterator[None]:
    """The daemon freezes the heap it starts with (settle_heap): give this process its own
    collector back afterwards."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def inbound_rows(store: Store) -> int:
    with store.transaction() as tx:
        return sum(tx.inbound.counts().values())


def test_stopping_waits_for_the_imap_poll_in_flight(
    database_url: str, tmp_path: Path, heap: None
) -> None:
    """B11: shutdown disposed the database while an IMAP poll thread could still be running.
    Stop now returns only once the poll in flight has finished."""
    many = 150
    with Dovecot() as dovecot, recording_smtp() as smtp:
        for n in range(many):
            dovecot.append(
                f"From: p{n}@example.com\r\nTo: ada@acme.example\r\nSubject: hello {n}\r\n"
                f"Message-ID: <m{n}@example.com>\r\n\r\nhi\r\n".encode()
            )
        settings = make_settings(
            tmp_path,
            database_url,
            http_port=0,
            smtp_host="127.0.0.1",
            smtp_port=smtp.port,
            imap_host="127.0.0.1",
            imap_port=dovecot.port,
            imap_username=Dovecot.USER,
            imap_password=Dovecot.PASSWORD,
            imap_tls="none",
            imap_poll_seconds=3600,  # one poll, at start
        )
        watcher = Store(connect_database(database_url))

        async def scenario() -> int:
            daemon = Daemon(settings)
            await daemon.start()
            serving = asyncio.create_task(daemon.serve())
            for _ in range(600):  # until the poll is under way
                if inbound_rows(watcher):
                    break
                await asyncio.sleep(0.05)
            daemon.request_stop()
            await serving
            await daemon.stop()
            return inbound_rows(watcher)

        try:
            at_stop = asyncio.run(scenario())
            flagged = sum("$NurtureProcessed" in f for f in dovecot.flags())
        finally:
            watcher.dispose()
    assert at_stop == many  # nothing was still being handled when stop returned
    assert flagged == many
