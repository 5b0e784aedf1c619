"""A world for integration tests: real database (SQLite and PostgreSQL), real SMTP server,
the real dispatcher, and a clock the test moves."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import FixedClock, RecordingHandler, make_settings, visible_links

from nurture.dispatcher import Dispatcher, DispatchPolicy
from nurture.mail.catcher import SmtpServerThread
from nurture.mail.send import SmtpPool, SmtpTarget
from nurture.services import Services, build_services
from nurture.subscriptions import SubscribeResult, subscribe


@dataclass
class World:
    services: Services
    clock: FixedClock
    smtp: RecordingHandler
    server: SmtpServerThread
    dispatcher: Dispatcher

    def subscribe(self, email: str, sequence: str = "journey", **kw: Any) -> SubscribeResult:
        fields = kw.pop("fields", {"first_name": str(email).split("@")[0].title()})
        return subscribe(
            self.services.store,
            self.services.catalog,
            email=email,
            sequence_id=sequence,
            fields=fields,
            now=self.clock.now(),
            **kw,
        )

    def tick(self) -> tuple[int, int]:
        return asyncio.run(self._tick())

    async def _tick(self) -> tuple[int, int]:
        # As the daemon's tick: decide the clicks whose window closed, then plan and send.
        self.services.tracker.evaluate_clicks(self.clock.now())
        try:
            return await self.dispatcher.run_once()
        finally:
            await self.dispatcher.transport.close()  # type: ignore[attr-defined]

    def new_dispatcher(self) -> Dispatcher:
        s = self.services
        return Dispatcher(
            store=s.store,
            catalog=s.catalog,
            renderer=s.renderer,
            signer=s.signer,
            transport=SmtpPool(SmtpTarget("127.0.0.1", self.server.port), size=2),
            clock=self.clock,
            policy=DispatchPolicy.from_settings(s.settings),
        )

    def click(self, url: str) -> str:
        """A person's click, taken as certain (on a confirmation ask: the press of the page's
        button). Tests of telling people from machines go through HTTP instead."""
        token = url.rsplit("/c/", 1)[1]
        return self.services.tracker.click(token, now=self.clock.now(), pressed=True).url

    def at_ask(self, email: str) -> Any:
        """A confirmed person who clicked 'read' and just got the 'ask' email (replies)."""
        self.subscribe(email, confirmed=True)
        self.tick()
        self.click(visible_links(self.smtp.to(email)[-1].part("html"))[0])
        self.tick()
        ask = self.smtp.to(email)[-1]
        assert ask.subject == "Tell me by reply"
        return ask

    def state(self, email: str, sequence: str = "journey") -> Any:
        with self.services.store.transaction() as tx:
            sub = tx.subscriber_by_email(email)
            assert sub is not None
            row = tx.enrollment_of(sub.id, sequence)
            assert row is not None
            return row.state


@pytest.fixture
def make_world(database_url: str, tmp_path: Path) -> Iterator[Any]:
    """Build a World with extra settings (e.g. reply_address=...)."""
    made: list[World] = []

    def build(**overrides: Any) -> World:
        handler = RecordingHandler()
        server = SmtpServerThread(handler).start()
        clock = FixedClock()
        settings = make_settings(
            tmp_path, database_url, smtp_host="127.0.0.1", smtp_port=server.port, **overrides
        )
        services = build_services(settings, clock=clock)
        w = World(services, clock, handler, server, None)  # type: ignore[arg-type]
        w.dispatcher = w.new_dispatcher()
        made.append(w)
        return w

    try:
        yield build
    finally:
        for w in made:
            w.server.stop()
            w.services.store.dispose()


@pytest.fixture
def world(make_world: Any) -> World:
    return make_world()  # type: ignore[no-any-return]
