"""Tracking: a click or an open of a tracked link, turned into an event, and a click judged
human on the ask into the micro-yes. No HTTP types here: the web app calls these methods with
plain values.

Every click is judged (``nurture.clicks``): hard evidence of a machine makes it ``bot`` at
once; anything else is ``pending`` until its message's burst window has closed
(``evaluate_clicks``, run by the daemon's tick), and only then, if ``human``, is it a
micro-yes. The press of a confirmation page's button is judged the same way: mail security
sandboxes run scripts and submit forms too.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from nurture.clicks import ClickFacts, ClickPolicy, client_of, decide, first_look
from nurture.db.events import PendingClick, events_row
from nurture.db.messages import MessageRow
from nurture.db.store import Store, Tx
from nurture.errors import TokenError
from nurture.journey import Journey
from nurture.sequences import Catalog
from nurture.tokens import Signer, Token, TokenKind
from nurture.vocabulary import EventKind, Link, Verdict, YesBy

__all__ = ["Tracker", "Click", "ClickRequest", "ClickEvent", "FloodNote", "Target", "Targets"]


@dataclass(frozen=True)
class ClickRequest:
    """What the HTTP request of a click tells about who made it."""

    method: str = "GET"  # GET, HEAD, or POST: the press of the confirmation page's button
    user_agent: str = ""
    has_browser_headers: bool = True
    ip: str = ""
    prefetch: bool = False  # a browser's speculative fetch, not a click
    client: str = ""  # who it is (nurture.clicks.client_of); "": its address and agent

    @property
    def who(self) -> str:
        return self.client or client_of(self.ip, self.user_agent, [])


@dataclass(frozen=True)
class Click:
    url: str  # the stored target
    confirm_page: bool = False  # show the one-button confirmation page instead of redirecting


@dataclass(frozen=True)
class Target:
    """What a click needs of its email: who it is for and its stored links. Kept in memory
    once the email was sent (its links never change after that)."""

    id: int
    subscriber_id: int
    enrollment_id: int
    links: tuple[Link, ...]
    sent_at: datetime | None
    confirms: bool


@dataclass(frozen=True)
class ClickEvent:
    """One click, judged at first look, to be recorded."""

    target: Target
    values: dict[str, Any]
    bot: bool
    at: datetime
    judged_in: float | None = None  # seconds until it is judged (None: judged already)


@dataclass(frozen=True)
class FloodNote:
    """A link clicked past its limit (``nurture.limits``): the clicks of this window beyond
    it, written as one summary row (``key`` names it) instead of one row each."""

    target: Target
    link: int
    key: str
    clicks: int
    reason: str
    at: datetime


class Targets:
    """The last ``size`` emails clicked, by message id (least recently used goes first)."""

    def __init__(self, size: int = 20_000) -> None:
        self.size = size
        self._items: OrderedDict[int, Target] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, message_id: int) -> Target | None:
        with self._lock:
            found = self._items.get(message_id)
            if found is not None:
                self._items.move_to_end(message_id)
            return found

    def put(self, target: Target) -> None:
        if target.sent_at is None:  # not sent yet: its links may still be written
            return
        with self._lock:
            self._items[target.id] = target
            if len(self._items) > self.size:
                self._items.popitem(last=False)


@dataclass(frozen=True, kw_only=True)
class Tracker:
    store: Store
    catalog: Catalog
    journey: Journey
    signer: Signer
    policy: ClickPolicy = field(default_factory=ClickPolicy)
    targets: Targets = field(default_factory=Targets)

    def click(self, token: str, *, now: datetime, request: ClickRequest | None = None) -> Click:
        """Record a click and say where it goes. TokenError if the token is forged or names no
        stored link (the caller answers 404, never a redirect).

        The ask of a confirmation step changes state, so a GET of it only shows a one-button
        page (``Click.confirm_page``); the press of that button (a POST) is the click that is
        judged. A POST to any other link is an ordinary click."""
        parsed = self.read(token)
        target = self.target(parsed.message_id)
        click, event = self.judge(parsed, target, now=now, request=request or ClickRequest())
        self.record([event])
        return click

    def read(self, token: str) -> Token:
        """The token's message and link; TokenError if it is not one of ours. No I/O."""
        return self.signer.read(token, TokenKind.click)

    def target(self, message_id: int) -> Target | None:
        """The email of a click, from memory or else from the database."""
        found = self.targets.get(message_id)
        if found is not None:
            return found
        with self.store.reading() as tx:
            message = tx.outbox.get(message_id)
        if message is None:
            return None
        found = Target(
            message.id,
            message.subscriber_id,
            message.enrollment_id,
            message.links,
            message.sent_at,
            self._confirms(message),
        )
        self.targets.put(found)
        return found

    def judge(
        self, parsed: Token, target: Target | None, *, now: datetime, request: ClickRequest
    ) -> tuple[Click, ClickEvent]:
        """Where a click goes and what to record of it: hard evidence of a machine makes it
        ``bot`` at once, the rest waits for its window. TokenError for no such link."""
        if target is None or not 0 <= parsed.link < len(target.links):
            raise TokenError("no such link")
        link = target.links[parsed.link]
        page = link.counts and request.method != "POST" and target.confirms
        facts = ClickFacts(
            method=request.method,
            user_agent=request.user_agent,
            has_browser_headers=request.has_browser_headers,
            sent_at=target.sent_at,
            at=now,
            honeypot=link.honeypot,
            ip=request.ip,
            prefetch=request.prefetch,
        )
        verdict: Verdict | None
        verdict, reasons = first_look(facts, self.policy)
        evaluate_at = None
        if verdict is Verdict.bot:
            outcome = "bot"
        elif page:
            # Only the page was shown: the press that may follow is what is judged.
            outcome, verdict = "shown:confirm_page", None
        else:
            outcome = "pending"
            wait = self.policy.window_seconds
            if not reasons:  # a person's signals: judged as soon as nothing else is seen
                wait = min(wait, self.policy.quick_seconds)
            evaluate_at = now + timedelta(seconds=wait)
        values = events_row(
            subscriber_id=target.subscriber_id,
            enrollment_id=target.enrollment_id,
            message_id=target.id,
            kind=EventKind.click,
            outcome=outcome,
            verdict=verdict,
            evaluate_at=evaluate_at,
            detail={
                "link": parsed.link,
                "url": link.url,
                "method": request.method,
                "ua": request.user_agent[:300],
                "client": request.who,
                "reasons": reasons,
                # A counting link's click is a yes in waiting: the step's reminders and
                # timeout hold until it is judged (Journey.plan).
                "counts": link.counts,
                **({"answer": link.answer} if link.answer is not None else {}),
            },
            now=now,
        )
        judged_in = (evaluate_at - now).total_seconds() if evaluate_at is not None else None
        event = ClickEvent(target, values, verdict is Verdict.bot, now, judged_in)
        return Click(link.url, confirm_page=page and request.method == "GET"), event

    def record(self, items: list[ClickEvent | FloodNote]) -> None:
        """Write clicks judged at first look, in one transaction: their events, each
        email's count of machine clicks, and the summaries of floods."""
        clicks = [c for c in items if isinstance(c, ClickEvent)]
        with self.store.transaction() as tx:
            tx.events.add_many([c.values for c in clicks])
            bots = Counter(c.target.id for c in clicks if c.bot)
            for message_id, n in bots.items():
                tx.answers.clicked(message_id, human=False, now=clicks[0].at, count=n)
            for note in items:
                if isinstance(note, FloodNote):
                    self._flood(tx, note)

    @staticmethod
    def _flood(tx: Tx, note: FloodNote) -> None:
        target = note.target
        link = target.links[note.link] if 0 <= note.link < len(target.links) else None
        detail = {
            "link": note.link,
            "url": link.url if link else None,
            "clicks": note.clicks,
            "reasons": [note.reason],
        }
        if not tx.events.update_detail(target.subscriber_id, note.key, detail):
            tx.events.add(
                subscriber_id=target.subscriber_id,
                enrollment_id=target.enrollment_id,
                message_id=target.id,
                kind=EventKind.click,
                outcome="flood",
                verdict=Verdict.bot,
                detail=detail,
                external_id=note.key,
                now=note.at,
            )

    def evaluate_clicks(self, now: datetime, *, limit: int = 200, budget: float = 0.5) -> int:
        """Decide the clicks whose burst window has closed (or, for a click with a person's
        signals and nothing else clicked on its email, whose quick wait has passed); a human
        click on a counting link is then the micro-yes. In short transactions of ``limit``
        clicks, for at most about ``budget`` seconds (the rest waits for the next tick), so
        the request path's writes never wait long. Returns how many were looked at."""
        looked = 0
        deadline = time.monotonic() + budget
        while True:
            n = self._evaluate_some(now, limit)
            looked += n
            if n < limit or time.monotonic() > deadline:
                return looked

    def _evaluate_some(self, now: datetime, limit: int) -> int:
        window = timedelta(seconds=self.policy.window_seconds)
        with self.store.transaction() as tx:
            pending = tx.events.pending_clicks(now, limit)
            by_message: dict[int, list[PendingClick]] = {}
            for click in pending:
                by_message.setdefault(click.message_id, []).append(click)
            for message_id, clicks in by_message.items():
                message = tx.outbox.get(message_id)
                if message is None:
                    continue
                # The email's clicks around all of these, read once: each click's window is
                # then a slice of them (the flood limit keeps them few per link).
                seen = tx.events.clicks_between(
                    message_id,
                    min(c.at for c in clicks) - window,
                    max(c.at for c in clicks) + window,
                )
                times = [at for at, *_ in seen]
                for click in clicks:
                    lo = bisect.bisect_left(times, click.at - window)
                    hi = bisect.bisect_right(times, click.at + window)
                    self._judge_one(tx, message, click, seen[lo:hi], now=now)
        return len(pending)

    def _judge_one(
        self,
        tx: Tx,
        message: MessageRow,
        click: PendingClick,
        around: list[tuple[datetime, int, bool, str]],
        *,
        now: datetime,
    ) -> None:
        window = timedelta(seconds=self.policy.window_seconds)
        links = message.links
        # A walk or a honeypot hit condemns the client that made it, not another client's
        # click on the same email (a person's, seconds after their scanner's walk).
        who = str(click.detail.get("client", ""))
        seen = {i for _, i, _, c in around if c == who and 0 <= i < len(links)}
        if click.at + window > now and seen - {click.link}:
            # Judged early (a person's signals), but the same client clicked another link of
            # this email meanwhile: it may be walking them, so wait for the whole window.
            # Its own repeats of this link (the confirmation page, then its button) and
            # other clients' clicks (judged on their own) do not make it wait.
            tx.events.postpone_click(click.id, until=click.at + window)
            return
        verdict, reasons = decide(
            click.reasons,
            links_in_window=sum(1 for i in seen if not links[i].honeypot),
            honeypot_in_window=any(links[i].honeypot for i in seen),
            flooded=any(flood and i == click.link for _, i, flood, _ in around),
            policy=self.policy,
        )
        outcome = "bot" if verdict is Verdict.bot else "recorded"
        link = links[click.link] if 0 <= click.link < len(links) else None
        if verdict is Verdict.human and link is not None and link.counts:
            outcome = self.journey.answer(
                tx, message, YesBy.click, now=now, answer=link.answer, made_at=click.at
            )
        tx.events.decide_click(click, verdict=verdict, outcome=outcome, reasons=reasons)
        tx.answers.clicked(message.id, human=verdict is Verdict.human, now=now)

    def _confirms(self, message: MessageRow) -> bool:
        found = self.catalog.locate(message.sequence_id, message.step_id)
        return found is not None and found[1].confirms

    def opened(self, message_id: int, *, now: datetime, detail: dict[str, Any]) -> None:
        """An open-pixel fetch of a message (its token already read): recorded, never a
        micro-yes (Apple Mail and many scanners fetch every image). TokenError for a
        message that does not exist."""
        target = self.target(message_id)
        if target is None:
            raise TokenError("no such message")
        with self.store.transaction() as tx:
            tx.events.add(
                subscriber_id=target.subscriber_id,
                enrollment_id=target.enrollment_id,
                message_id=target.id,
                kind=EventKind.open,
                outcome="recorded",
                detail=detail,
                now=now,
            )
