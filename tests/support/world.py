"""A world for integration tests: a real database (SQLite or PostgreSQL), a real SMTP server,
the real services, and a clock the test moves."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nurture.dispatcher import Dispatcher
from nurture.engine import EnrollmentState
from nurture.mail.catcher import SmtpServerThread
from nurture.mail.send import SmtpPool, SmtpTarget
from nurture.services import Services
from nurture.subscriptions import SubscribeResult
from nurture.tracking import ClickRequest
from support.clock import FixedClock
from support.mail import visible_links
from support.smtp import Caught, RecordingHandler
from support.web import CHROME

# A person's browser following a link from their mail, seen by the tracker.
PERSON = ClickRequest(method="GET", user_agent=CHROME, has_browser_headers=True, ip="203.0.113.7")


@dataclass
class World:
    services: Services
    clock: FixedClock
    smtp: RecordingHandler
    server: SmtpServerThread

    @property
    def dispatcher(self) -> Dispatcher:
        return self.services.dispatcher

    def subscribe(self, email: Any, sequence: str = "journey", **kw: Any) -> SubscribeResult:
        fields = kw.pop("fields", {"first_name": str(email).split("@")[0].title()})
        return self.services.subscriptions.subscribe(
            email=email, sequence_id=sequence, fields=fields, now=self.clock.now(), **kw
        )

    def first_email(self, email: str, sequence: str = "journey", **kw: Any) -> Caught:
        """Subscribe someone, run a tick, and return the one email it sent them."""
        self.subscribe(email, sequence, **kw)
        self.tick()
        [mail] = self.smtp.to(email)
        return mail

    def tick(self, dispatcher: Dispatcher | None = None) -> tuple[int, int]:
        return asyncio.run(self._tick(dispatcher or self.dispatcher))

    async def _tick(self, dispatcher: Dispatcher) -> tuple[int, int]:
        # As the daemon's tick: decide the clicks whose window closed, then plan and send.
        self.services.tracker.evaluate_clicks(self.clock.now())
        try:
            return await dispatcher.run_once()
        finally:
            await dispatcher.transport.close()

    def new_dispatcher(self) -> Dispatcher:
        """A second worker on the same database and SMTP server."""
        pool = SmtpPool(SmtpTarget("127.0.0.1", self.server.port), size=2)
        return self.services.dispatcher.with_transport(pool, worker=uuid.uuid4().hex)

    def click(self, url: str) -> str:
        """A person clicks a link of an email in their browser (and, on a confirmation ask,
        presses the page's button); the clock then moves past the click window and the click
        is judged, as the daemon's tick would. Returns where the link led."""
        token = url.rsplit("/c/", 1)[1]
        tracker = self.services.tracker
        result = tracker.click(token, now=self.clock.now(), request=PERSON)
        if result.confirm_page:
            press = ClickRequest(
                method="POST", user_agent=CHROME, has_browser_headers=True, ip=PERSON.ip
            )
            result = tracker.click(token, now=self.clock.now(), request=press)
        self.settle()
        return result.url

    def settle(self) -> None:
        """Let every click's window close, then judge the clicks (the tick's first step)."""
        self.clock.advance(seconds=self.services.settings.click_window_seconds + 1)
        self.services.tracker.evaluate_clicks(self.clock.now())

    def at_ask(self, email: str) -> Caught:
        """A confirmed person who clicked 'read' and just got the 'ask' email (replies)."""
        self.subscribe(email, confirmed=True)
        self.tick()
        self.click(visible_links(self.smtp.to(email)[-1].part("html"))[0])
        self.tick()
        ask = self.smtp.to(email)[-1]
        assert ask.subject == "Tell me by reply"
        return ask

    def state(self, email: str, sequence: str = "journey") -> EnrollmentState:
        with self.services.store.transaction() as tx:
            sub = tx.subscribers.by_email(email)
            assert sub is not None
            row = tx.enrollments.of(sub.id, sequence)
            assert row is not None
            return row.state

    def subscriber_id(self, email: str) -> int:
        with self.services.store.transaction() as tx:
            sub = tx.subscribers.by_email(email)
            assert sub is not None
            return sub.id


MakeWorld = Callable[..., World]  # the make_world fixture: a World with extra settings
