"""Pacing per receiving domain: at most so many emails a second to gmail.com, to outlook.com,
to any other domain, and in all, shared by the deployment's workers; a receiver that answers
"421/451 try again later" gets half the rate at once and its full rate back slowly, while
every other domain goes on at its own.

Each domain (or group of domains with one MX, such as gmail.com and googlemail.com) has a
budget kept by the generic cell rate algorithm: a theoretical arrival time that moves one
interval per email, with a burst of one second's worth. The dispatcher asks ``reserve`` for
each email it is about to send: an email whose domain has room now goes; the others go back
to the queue for about when their turn will come (``later``), never failed for waiting. None
waits in the batch for a later turn: it would already be handed to SMTP, past the last check
before the wire (an unsubscribe).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

__all__ = ["parse_rate", "parse_rates", "DomainRates", "Pacer"]

log = logging.getLogger(__name__)
T = TypeVar("T")

RECOVER_EVERY = 30.0  # seconds without a throttle answer between two steps back up
RECOVER_STEP = 0.1  # of the configured rate, per step
FLOOR = 1 / 64  # of the configured rate: the lowest that halving reaches
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|m|h)\s*$")
_DOMAIN = re.compile(r"^(\*|[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+)$")


def parse_rate(text: str) -> float:
    """ "20/s", "600/m" or "5000/h" as emails per second."""
    found = _RATE.match(text)
    if found is None or float(found.group(1)) <= 0:
        raise ValueError(f"a rate is a number of emails per s, m or h, like 20/s (got {text!r})")
    return float(found.group(1)) / _UNITS[found.group(2)]


@dataclass(frozen=True)
class DomainRates:
    """Per group of domains, its rate; ``default``: the rate of each other domain."""

    groups: dict[str, float] = field(default_factory=dict)  # group name -> emails a second
    members: dict[str, str] = field(default_factory=dict)  # domain -> group name
    default: float | None = None

    def group_of(self, domain: str) -> tuple[str, float] | None:
        name = self.members.get(domain)
        if name is not None:
            return name, self.groups[name]
        return (domain, self.default) if self.default is not None else None


def parse_rates(text: str) -> DomainRates:
    """``gmail.com+googlemail.com=20/s,outlook.com=10/s,*=50/s``."""
    groups: dict[str, float] = {}
    members: dict[str, str] = {}
    default = None
    for item in (x for x in text.split(",") if x.strip()):
        names, eq, rate_text = item.partition("=")
        if not eq:
            raise ValueError(f"each entry is DOMAIN=RATE, like gmail.com=20/s (got {item!r})")
        rate = parse_rate(rate_text)
        domains = [d.strip().lower() for d in names.split("+")]
        for domain in domains:
            if not _DOMAIN.match(domain) or (domain == "*" and len(domains) > 1):
                raise ValueError(f"not a domain: {domain!r} (in {item!r})")
            if domain in members or (domain == "*" and default is not None):
                raise ValueError(f"{domain} is given two rates")
        if domains == ["*"]:
            default = rate
            continue
        groups[domains[0]] = rate
        members.update({d: domains[0] for d in domains})
    return DomainRates(groups, members, default)


@dataclass
class _Budget:
    configured: float  # emails a second, as set (already shared among the workers)
    rate: float
    tat: float = 0.0  # theoretical arrival time of the next email (monotonic seconds)
    changed: float = 0.0  # when the rate last went down or up

    @property
    def interval(self) -> float:
        return 1.0 / self.rate

    @property
    def tolerance(self) -> float:
        return max(0.0, (max(1.0, self.rate) - 1) * self.interval)  # a second's burst

    def turn(self, now: float) -> float:
        return max(now, self.tat - self.tolerance)


class Pacer:
    """The budgets of one worker process: the deployment's rates divided by ``share`` (how
    many workers send; the dispatcher updates it)."""

    def __init__(
        self,
        rates: DomainRates | None = None,
        max_rate: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rates = rates or DomainRates()
        self.max_rate = max_rate
        self.clock = clock
        self.share = 1
        self._budgets: dict[str, _Budget] = {}
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return bool(self.rates.groups) or self.rates.default is not None or bool(self.max_rate)

    def set_share(self, workers: int) -> None:
        """``workers`` processes send at once: each takes its part of every rate."""
        workers = max(1, workers)
        with self._lock:
            if workers == self.share:
                return
            for budget in self._budgets.values():
                factor = self.share / workers
                budget.configured *= factor
                budget.rate *= factor
            self.share = workers

    def _budget(self, key: str, rate: float) -> _Budget:
        budget = self._budgets.get(key)
        if budget is None:
            budget = self._budgets[key] = _Budget(rate / self.share, rate / self.share)
        return budget

    def _budgets_of(self, recipient: str) -> list[_Budget]:
        out = []
        group = self.rates.group_of(domain_of(recipient))
        if group is not None:
            out.append(self._budget("d:" + group[0], group[1]))
        if self.max_rate:
            out.append(self._budget("*", self.max_rate))
        return out

    def reserve(self, recipient: str) -> bool:
        """Whether this email's domain (and the deployment) has room for it now; if so, its
        place is taken."""
        with self._lock:
            now = self.clock()
            budgets = self._budgets_of(recipient)
            for budget in budgets:
                self._recover(budget, now)
            if any(b.turn(now) > now for b in budgets):
                return False
            for budget in budgets:
                budget.tat = max(budget.tat, now) + budget.interval
            return True

    def split(
        self, emails: list[T], recipient: Callable[[T], str]
    ) -> tuple[list[T], dict[int, list[T]]]:
        """The emails that have room now (their places taken), in order; and the others by
        whole seconds from now until about when their turn will come (nothing taken)."""
        kept: list[T] = []
        later: defaultdict[int, list[T]] = defaultdict(list)
        behind: defaultdict[str, int] = defaultdict(int)  # per budget: those sent back
        for email in emails:
            to = recipient(email)
            if self.reserve(to):
                kept.append(email)
                continue
            group = self.rates.group_of(domain_of(to))
            key = group[0] if group is not None else "*"
            later[int(self.later(to, behind[key])) + 1].append(email)
            behind[key] += 1
        return kept, dict(later)

    def later(self, recipient: str, behind: int = 0) -> float:
        """About how many seconds until a place for this email (``behind`` others of its
        domain wait before it), without taking it."""
        with self._lock:
            now = self.clock()
            budgets = self._budgets_of(recipient)
            return max((b.turn(now) - now + behind * b.interval for b in budgets), default=0.0)

    def throttled(self, recipient: str) -> float | None:
        """The recipient's domain answered "try again later": halve its rate (once per two
        intervals, however many connections heard it). Its new rate, or None if unpaced."""
        group = self.rates.group_of(domain_of(recipient))
        if group is None:
            return None
        with self._lock:
            now = self.clock()
            budget = self._budget("d:" + group[0], group[1])
            if now - budget.changed < max(1.0, 2 * budget.interval):
                return budget.rate
            lowest = budget.configured * FLOOR
            if budget.rate > lowest:
                budget.rate = max(lowest, budget.rate / 2)
                budget.changed = now
                log.warning(
                    "%s asks us to slow down: %.2f emails a second to it from this worker",
                    group[0],
                    budget.rate,
                    extra={"action": "domain_slowed", "domain": group[0]},
                )
            return budget.rate

    def _recover(self, budget: _Budget, now: float) -> None:
        if budget.rate < budget.configured and now - budget.changed >= RECOVER_EVERY:
            budget.rate = min(budget.configured, budget.rate + RECOVER_STEP * budget.configured)
            budget.changed = now

    def rates_now(self) -> dict[str, float]:
        """Each paced group's rate at this moment (emails a second, this worker's part)."""
        with self._lock:
            return {k.removeprefix("d:"): b.rate for k, b in self._budgets.items()}


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")
