"""Domain pacing through the real send path: a real SMTP server that answers "421 4.7.28 try
again later" to one receiving domain when it gets more than a few recipients a second. That
domain slows down, the others are not held up, and nothing is failed for waiting; on SQLite
and PostgreSQL."""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from aiosmtpd.smtp import SMTP, Envelope, Session
from support.db import MESSAGES, SUBSCRIBERS, rows
from support.smtp import RecordingHandler
from support.world import MakeWorld, World

from nurture.metrics import render_metrics

LIMIT = 3  # recipients a second the strict domain takes before it says "slow down"


@dataclass
class StrictDomain(RecordingHandler):
    """Takes at most LIMIT recipients of ``domain`` in any second; 421 to the next ones."""

    domain: str = "strict.example"
    seen: deque[float] = field(default_factory=deque)
    refused: int = 0
    guard: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.endswith("@" + self.domain):
            with self.guard:
                now = time.monotonic()
                while self.seen and now - self.seen[0] > 1.0:
                    self.seen.popleft()
                if len(self.seen) >= LIMIT:
                    self.refused += 1
                    return "421 4.7.28 Our system has detected an unusual rate, try again later"
                self.seen.append(now)
        return await super().handle_RCPT(server, session, envelope, address, options)


def statuses(world: World) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows(world.services.store, MESSAGES):
        out[r.status] = out.get(r.status, 0) + 1
    return out


def test_a_domain_that_says_slow_down_is_slowed_alone_and_nothing_fails(
    make_world: MakeWorld,
) -> None:
    handler = StrictDomain()
    world = make_world(handler, domain_rates="strict.example=8/s,*=200/s")
    for i in range(24):
        world.subscribe(f"s{i}@strict.example", "noconfirm", confirmed=True)
        world.subscribe(f"f{i}@fast.example", "noconfirm", confirmed=True)
    began = time.monotonic()
    world.tick()
    fast = [c for c in handler.caught if c.recipient.endswith("@fast.example")]
    # The other domain went at once, in the first tick, whatever the strict one answered.
    assert len(fast) == 24
    assert time.monotonic() - began < 30  # not held behind the strict domain's turns
    strict_rate = world.dispatcher.pacer.rates_now()["strict.example"]
    assert handler.refused >= 1 and strict_rate < 8  # it asked, and its rate went down
    assert world.dispatcher.pacer.rates_now()["fast.example"] == 200
    waiting = {r.waiting for r in rows(world.services.store, MESSAGES) if r.status == "queued"}
    assert "pace" in waiting  # held back by the strict domain's pace (the rest: retries)
    metrics = render_metrics(world.services)[0].decode()
    assert f'nurture_domain_rate{{domain="strict.example"}} {strict_rate}' in metrics
    held = re.search(r'nurture_messages_waiting\{reason="pace"\} (\d+)', metrics)
    assert held is not None and int(held.group(1)) >= 1
    deadline = time.monotonic() + 120
    while statuses(world) != {"sent": 48}:
        assert time.monotonic() < deadline, statuses(world)
        assert "failed" not in statuses(world)
        world.clock.advance(seconds=30)  # retries come back after their backoff
        world.tick()
    got = sorted(c.recipient for c in handler.caught if c.recipient.endswith("@strict.example"))
    assert got == sorted(f"s{i}@strict.example" for i in range(24))  # each once
    # Waiting for the pace is never an attempt: the other domain's emails went once each;
    # a "slow down" answer is counted like any 4xx (and given up on only after many).
    attempts = {r.id: r.attempts for r in rows(world.services.store, MESSAGES)}
    fast_people = {
        r.id for r in rows(world.services.store, SUBSCRIBERS) if r.email.endswith("@fast.example")
    }
    fast_ids = {
        r.id for r in rows(world.services.store, MESSAGES) if r.subscriber_id in fast_people
    }
    assert max(attempts.values()) < world.services.settings.retry_max_attempts
    assert fast_ids and all(attempts[i] == 1 for i in fast_ids)
