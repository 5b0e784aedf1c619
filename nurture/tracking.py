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

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from nurture.clicks import ClickFacts, ClickPolicy, decide, first_look
from nurture.db.messages import MessageRow
from nurture.db.store import Store
from nurture.errors import TokenError
from nurture.journey import Journey
from nurture.sequences import Catalog
from nurture.tokens import Signer, TokenKind
from nurture.vocabulary import EventKind, Verdict, YesBy

__all__ = ["Tracker", "Click", "ClickRequest"]


@dataclass(frozen=True)
class ClickRequest:
    """What the HTTP request of a click tells about who made it."""

    method: str = "GET"  # GET, HEAD, or POST: the press of the confirmation page's button
    user_agent: str = ""
    has_browser_headers: bool = True
    ip: str = ""
    prefetch: bool = False  # a browser's speculative fetch, not a click


@dataclass(frozen=True)
class Click:
    url: str  # the stored target
    confirm_page: bool = False  # show the one-button confirmation page instead of redirecting


@dataclass(frozen=True, kw_only=True)
class Tracker:
    store: Store
    catalog: Catalog
    journey: Journey
    signer: Signer
    policy: ClickPolicy = field(default_factory=ClickPolicy)

    def click(self, token: str, *, now: datetime, request: ClickRequest | None = None) -> Click:
        """Record a click and say where it goes. TokenError if the token is forged or names no
        stored link (the caller answers 404, never a redirect).

        The ask of a confirmation step changes state, so a GET of it only shows a one-button
        page (``Click.confirm_page``); the press of that button (a POST) is the click that is
        judged. A POST to any other link is an ordinary click."""
        parsed = self.signer.read(token, TokenKind.click)
        request = request or ClickRequest()
        with self.store.transaction() as tx:
            message = tx.outbox.get(parsed.message_id)
            if message is None or not 0 <= parsed.link < len(message.links):
                raise TokenError("no such link")
            link = message.links[parsed.link]
            page = link.counts and request.method != "POST" and self._confirms(message)
            facts = ClickFacts(
                method=request.method,
                user_agent=request.user_agent,
                has_browser_headers=request.has_browser_headers,
                sent_at=message.sent_at,
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
                evaluate_at = now + timedelta(seconds=self.policy.window_seconds)
            if verdict is Verdict.bot:
                tx.answers.clicked(message.id, human=False, now=now)
            tx.events.add(
                subscriber_id=message.subscriber_id,
                enrollment_id=message.enrollment_id,
                message_id=message.id,
                kind=EventKind.click,
                outcome=outcome,
                verdict=verdict,
                evaluate_at=evaluate_at,
                detail={
                    "link": parsed.link,
                    "url": link.url,
                    "method": request.method,
                    "ua": request.user_agent[:300],
                    "reasons": reasons,
                    **({"answer": link.answer} if link.answer is not None else {}),
                },
                now=now,
            )
        return Click(link.url, confirm_page=page and request.method == "GET")

    def evaluate_clicks(self, now: datetime, *, limit: int = 500) -> int:
        """Decide the clicks whose burst window has closed; a human click on a counting link
        is then the micro-yes. Returns how many were decided."""
        window = timedelta(seconds=self.policy.window_seconds)
        with self.store.transaction() as tx:
            pending = tx.events.pending_clicks(now, limit)
            for click in pending:
                message = tx.outbox.get(click.message_id)
                if message is None:
                    continue
                links = message.links
                around = tx.events.links_clicked(message.id, click.at - window, click.at + window)
                seen = {i for i in around if 0 <= i < len(links)}
                verdict, reasons = decide(
                    click.reasons,
                    links_in_window=sum(1 for i in seen if not links[i].honeypot),
                    honeypot_in_window=any(links[i].honeypot for i in seen),
                    policy=self.policy,
                )
                outcome = "bot" if verdict is Verdict.bot else "recorded"
                link = links[click.link] if 0 <= click.link < len(links) else None
                if verdict is Verdict.human and link is not None and link.counts:
                    outcome = self.journey.answer(
                        tx, message, YesBy.click, now=now, answer=link.answer
                    )
                tx.events.decide_click(click, verdict=verdict, outcome=outcome, reasons=reasons)
                tx.answers.clicked(message.id, human=verdict is Verdict.human, now=now)
        return len(pending)

    def _confirms(self, message: MessageRow) -> bool:
        found = self.catalog.locate(message.sequence_id, message.step_id)
        return found is not None and found[1].confirms

    def opened(self, token: str, *, now: datetime, detail: dict[str, Any]) -> None:
        """An open-pixel fetch: recorded, never a micro-yes (Apple Mail and many scanners
        fetch every image). TokenError for a token we did not issue."""
        parsed = self.signer.read(token, TokenKind.open)
        with self.store.transaction() as tx:
            message = tx.outbox.get(parsed.message_id)
            if message is None:
                raise TokenError("no such message")
            tx.events.add(
                subscriber_id=message.subscriber_id,
                enrollment_id=message.enrollment_id,
                message_id=message.id,
                kind=EventKind.open,
                outcome="recorded",
                detail=detail,
                now=now,
            )
