"""Abuse limits for what anyone holding an email (or the form's address) can hammer: counts
per key in fixed windows, in memory, bounded in size.

- A tracked link (``/c/``) past ``NURTURE_CLICK_FLOOD_LIMIT`` clicks in
  ``NURTURE_CLICK_FLOOD_SECONDS`` (20 in 10 s), or a client address past
  ``NURTURE_CLIENT_FLOOD_LIMIT`` (1,000) in the same time, is still answered as usual, but its
  further clicks of that window are not written one by one: one summary row per link and
  window says how many there were (updated every hundred), and each waits 0.1 s for its
  answer. A storm on one link then writes a bounded number of rows, costs no database work
  per request, and, its connections slowed, cannot take the process's time from others.
- The open pixel past the same limit per email is not recorded at all (opens decide nothing).
- The form (``POST /subscribe``) past ``NURTURE_SUBSCRIBE_PER_MINUTE`` (10) per client address
  answers 429 with a page that says to try again in a minute.
- The form's sign-ups of all addresses together past ``NURTURE_SUBSCRIBE_GLOBAL_PER_MINUTE``
  (60) are dropped: each may mail a stranger's address, and a crowd of addresses (a botnet)
  is under every per-address limit. The form still answers as usual; the log names each.
- The marketer's own sign-ups (``POST /subscribe`` with the API token: a landing page's
  backend posts everyone's from one address) have a budget of their own, per token:
  ``NURTURE_API_SUBSCRIBE_PER_MINUTE`` (600; 0: none), past which they answer 429 too.
- The dashboard's password: past ``ADMIN_FAILURES_PER_MINUTE`` (5) wrong passwords from one
  client address in a minute, that address is answered 429 (the right password included,
  or guessing would go on at full speed) until its minute is over.

Each process counts on its own (several web processes each allow the limit).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

__all__ = ["Window", "AbuseLimits", "FLOOD_NOTE_EVERY", "ADMIN_FAILURES_PER_MINUTE"]

FLOOD_NOTE_EVERY = 100  # a flood's summary row is brought up to date every this many clicks
ADMIN_FAILURES_PER_MINUTE = 5  # wrong dashboard passwords from one address before a 429


class Window:
    """How many hits each key had in its current window of ``seconds``; the least recently
    used keys are forgotten past ``max_keys``."""

    def __init__(
        self,
        seconds: float,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.seconds = seconds
        self.max_keys = max_keys
        self.clock = clock
        self._counts: OrderedDict[Hashable, tuple[float, int]] = OrderedDict()

    def hit(self, key: Hashable) -> tuple[int, float]:
        """Count one hit; (hits of this key in its window, the window's start)."""
        now = self.clock()
        start, count = self._counts.get(key, (now, 0))
        if now - start >= self.seconds:
            start, count = now, 0
        self._counts[key] = (start, count + 1)
        self._counts.move_to_end(key)
        if len(self._counts) > self.max_keys:
            self._counts.popitem(last=False)
        return count + 1, start

    def count(self, key: Hashable) -> tuple[int, float]:
        """This key's hits in its current window and the seconds until that window ends,
        without counting one (0, 0.0 when it has none)."""
        now = self.clock()
        start, count = self._counts.get(key, (now, 0))
        if now - start >= self.seconds:
            return 0, 0.0
        return count, self.seconds - (now - start)


@dataclass
class AbuseLimits:
    """The limits of one web process."""

    click_limit: int = 20
    client_limit: int = 1000
    seconds: float = 10.0
    subscribe_per_minute: int = 10
    api_subscribe_per_minute: int = 600  # 0: no limit
    subscribe_global_per_minute: int = 60  # the form's sign-ups, all addresses; 0: none
    admin_failures_per_minute: int = ADMIN_FAILURES_PER_MINUTE
    tarpit_seconds: float = 0.1  # how long each click past a limit waits for its answer

    def __post_init__(self) -> None:
        self.links = Window(self.seconds)
        self.clients = Window(self.seconds)
        self.opens = Window(self.seconds)
        self.forms = Window(60.0)
        self.tokens = Window(60.0)
        self.sign_ups = Window(60.0)
        self.admin_failures = Window(60.0)

    def click(self, message_id: int, link: int, client: str) -> tuple[int, float] | None:
        """None for a click to record as usual; past a limit, (how many clicks past it this
        link had in this window, when the window began)."""
        n, start = self.links.hit((message_id, link))
        c, _ = self.clients.hit(client)
        if n > self.click_limit:
            return n - self.click_limit, start
        if c > self.client_limit:
            return c - self.client_limit, start
        return None

    def open(self, message_id: int) -> bool:
        """Whether to record this open."""
        return self.opens.hit(message_id)[0] <= self.click_limit

    def subscribe(self, client: str) -> bool:
        """Whether this form post may go on."""
        return self.forms.hit(client)[0] <= self.subscribe_per_minute

    def api_subscribe(self, token: Hashable) -> bool:
        """Whether a sign-up posted with the API token ``token`` may go on."""
        limit = self.api_subscribe_per_minute
        return limit == 0 or self.tokens.hit(token)[0] <= limit

    def subscribe_global(self) -> bool:
        """Whether the form may take one more sign-up this minute (all addresses together)."""
        limit = self.subscribe_global_per_minute
        return limit == 0 or self.sign_ups.hit("form")[0] <= limit

    def admin_blocked(self, client: str) -> float:
        """Seconds until ``client`` may try the dashboard's password again (0: it may now)."""
        failures, left = self.admin_failures.count(client)
        return left if failures >= self.admin_failures_per_minute else 0.0

    def admin_failed(self, client: str) -> int:
        """Count one wrong password from ``client``; its failures this minute."""
        return self.admin_failures.hit(client)[0]
