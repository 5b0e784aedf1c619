"""Fixtures of the integration tests: a World on each database (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.clock import FixedClock
from support.settings import make_settings
from support.smtp import RecordingHandler
from support.web import served_client
from support.world import MakeWorld, World

from nurture.mail.catcher import SmtpServerThread
from nurture.services import build_services


@pytest.fixture
def make_world(database_url: str, tmp_path: Path) -> Iterator[MakeWorld]:
    """Build a World with extra settings (e.g. reply_address=...)."""
    made: list[World] = []

    def build(handler: RecordingHandler | None = None, **overrides: Any) -> World:
        handler = handler or RecordingHandler()
        server = SmtpServerThread(handler).start()
        clock = FixedClock()
        settings = make_settings(
            tmp_path, database_url, smtp_host="127.0.0.1", smtp_port=server.port, **overrides
        )
        world = World(build_services(settings, clock=clock), clock, handler, server)
        made.append(world)
        return world

    try:
        yield build
    finally:
        for w in made:
            w.server.stop()
            w.services.store.dispose()


@pytest.fixture
def world(make_world: MakeWorld) -> World:
    return make_world()


@pytest.fixture
def http(world: World) -> Iterator[httpx.Client]:
    with served_client(world.services) as client:
        yield client
