"""Tracking: turning what a recipient does (a click, an unsubscribe, a reply) into an event,
and a micro-yes into the engine's decision. No HTTP types here: the web app and the outbox
reply form call these functions with plain values.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from nurture import engine
from nurture.clicks import ClickFacts, ClickPolicy, Verdict, decide, first_look
from nurture.db.store import MessageRow, Store, Tx
from nurture.engine import ExitReason
from nurture.errors import TokenError
from nurture.mail.classify import Kind
from nurture.mail.inbound import MAX_INBOUND_BYTES, InboundMail, parse_inbound
from nurture.sequences import Catalog
from nurture.subscriptions import unsubscribe
from nurture.tokens import Signer, TokenKind

__all__ = ["Tracker", "Click", "ClickRequest", "InboundResult", "honeypot_url"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClickRequest:
    """What the HTTP request of a click tells about who made it."""

    method: str = "GET"
    user_agent: str = ""
    has_browser_headers: bool = True
    ip: str = ""


def honeypot_url(base_url: str) -> str:
    """The target of the invisible link in every email: only machines follow it."""
    return base_url.rstrip("/") + "/hp"


@dataclass(frozen=True)
class Click:
    url: str  # the stored target
    confirm_page: bool = False  # show the one-button confirmation page instead of redirecting


@dataclass(frozen=True)
class InboundResult:
    status: str  # duplicate, malformed, automatic, unmatched, matched
    outcome: str = ""
    message_id: int | None = None


class Tracker:
    def __init__(
        self,
        *,
        store: Store,
        catalog: Catalog,
        signer: Signer,
        reply_address: str | None = None,
        base_url: str = "",
        policy: ClickPolicy | None = None,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.signer = signer
        self.policy = policy or ClickPolicy()
        self.honeypot_url = honeypot_url(base_url)
        self._reply_pattern = _reply_regex(reply_address) if reply_address else None

    # -- clicks ----------------------------------------------------------------------------

    def click(
        self,
        token: str,
        *,
        now: datetime,
        request: ClickRequest | None = None,
        pressed: bool = False,
    ) -> Click:
        """Record a click and say where it goes. TokenError if the token is forged or names no
        stored link (the caller answers 404, never a redirect).

        A click is judged (nurture.clicks): hard evidence of a machine makes it ``bot`` at
        once; otherwise it is ``pending`` until its burst window closes
        (``evaluate_clicks``), and only then, if ``human``, is it a micro-yes. The ask of a
        confirmation step changes state, so a GET of it only shows a one-button page
        (``Click.confirm_page``); the press (``pressed=True``, a POST) confirms at once."""
        parsed = self.signer.read(token, TokenKind.click)
        request = request or ClickRequest()
        with self.store.transaction() as tx:
            message = tx.message(parsed.message_id)
            if message is None or not 0 <= parsed.link < len(message.links):
                raise TokenError("no such link")
            url, counts = message.links[parsed.link]
            page = counts and not pressed and self._confirms(message)
            evaluate_at = None
            if pressed:
                verdict, reasons = Verdict.human, ["button pressed"]
                outcome = self._yes(tx, message, "click", now=now) if counts else "recorded"
            else:
                facts = ClickFacts(
                    method=request.method,
                    user_agent=request.user_agent,
                    has_browser_headers=request.has_browser_headers,
                    sent_at=message.sent_at,
                    at=now,
                    honeypot=url == self.honeypot_url,
                    ip=request.ip,
                )
                verdict, reasons = first_look(facts, self.policy)
                if verdict is Verdict.bot:
                    outcome = "bot"
                elif page:
                    # Only the page was shown: the press that may follow is the decision.
                    outcome = "shown:confirm_page"
                    verdict = None
                else:
                    outcome = "pending"
                    evaluate_at = now + timedelta(seconds=self.policy.window_seconds)
            tx.add_event(
                subscriber_id=message.subscriber_id,
                enrollment_id=message.enrollment_id,
                message_id=message.id,
                kind="click",
                outcome=outcome,
                verdict=verdict.value if verdict is not None else None,
                evaluate_at=evaluate_at,
                detail={
                    "link": parsed.link,
                    "url": url,
                    "method": request.method,
                    "ua": request.user_agent[:300],
                    "reasons": reasons,
                },
                now=now,
            )
        return Click(url, confirm_page=bool(page and request.method == "GET"))

    def evaluate_clicks(self, now: datetime, *, limit: int = 500) -> int:
        """Decide the clicks whose burst window has closed; a human click on a counting link
        is then the micro-yes. Returns how many were decided."""
        window = timedelta(seconds=self.policy.window_seconds)
        with self.store.transaction() as tx:
            pending = tx.pending_clicks(now, limit)
            for click in pending:
                message = tx.message(click.message_id)
                if message is None:
                    continue
                around = tx.clicks_on(message.id, click.at - window, click.at + window)
                urls = {url for url in around}
                honeypot = self.honeypot_url in urls
                links = len(urls - {self.honeypot_url})
                verdict, reasons = decide(
                    click.reasons,
                    links_in_window=links,
                    honeypot_in_window=honeypot,
                    policy=self.policy,
                )
                outcome = "bot" if verdict is Verdict.bot else "recorded"
                counts = 0 <= click.link < len(message.links) and message.links[click.link][1]
                if verdict is Verdict.human and counts:
                    outcome = self._yes(tx, message, "click", now=now)
                tx.decide_click(click.id, verdict=verdict.value, outcome=outcome, reasons=reasons)
        return len(pending)

    def _confirms(self, message: MessageRow) -> bool:
        sequence = self.catalog.get(message.sequence_id)
        return (
            sequence is not None
            and sequence.has_step(message.step_id)
            and sequence.step(message.step_id).confirms
        )

    def opened(self, token: str, *, now: datetime, detail: dict[str, Any]) -> None:
        """An open-pixel fetch: recorded, never a micro-yes (Apple Mail and many scanners
        fetch every image). TokenError for a token we did not issue."""
        parsed = self.signer.read(token, TokenKind.open)
        with self.store.transaction() as tx:
            message = tx.message(parsed.message_id)
            if message is None:
                raise TokenError("no such message")
            tx.add_event(
                subscriber_id=message.subscriber_id,
                enrollment_id=message.enrollment_id,
                message_id=message.id,
                kind="open",
                outcome="recorded",
                detail=detail,
                now=now,
            )

    def _yes(self, tx: Tx, message: MessageRow, kind: str, *, now: datetime) -> str:
        enrollment = tx.enrollment_for_update(message.enrollment_id)
        sequence = self.catalog.get(enrollment.sequence_id)
        if sequence is None or not sequence.has_step(enrollment.state.step_id):
            return "ignored:sequence_not_loaded"
        decision = engine.on_yes(
            enrollment.state, sequence, engine.Yes(kind, message.step_id, message.visit), now=now
        )
        if decision.state != enrollment.state or decision.actions:
            tx.apply(enrollment, decision, now=now)
            log.info(
                "enrollment %s: %s by %s on %s",
                enrollment.id,
                decision.outcome,
                kind,
                message.step_id,
                extra={
                    "action": "micro_yes",
                    "enrollment_id": enrollment.id,
                    "outcome": decision.outcome,
                },
            )
        return decision.outcome

    # -- unsubscribe -----------------------------------------------------------------------

    def unsubscribe_target(self, token: str) -> tuple[int, str, int]:
        """(subscriber id, email, message id) named by an unsubscribe token; TokenError if
        none."""
        parsed = self.signer.read(token, TokenKind.unsubscribe)
        with self.store.transaction() as tx:
            message = tx.message(parsed.message_id)
            if message is None:
                raise TokenError("no such message")
            return message.subscriber_id, tx.subscriber(message.subscriber_id).email, message.id

    def unsubscribe(self, token: str, *, now: datetime, how: str) -> str:
        """Unsubscribe the person behind the token (idempotent); returns their address."""
        subscriber_id, address, message_id = self.unsubscribe_target(token)
        unsubscribe(self.store, subscriber_id, now=now, message_id=message_id, how=how)
        return address

    # -- inbound mail ----------------------------------------------------------------------

    def receive(
        self, raw: bytes, *, now: datetime, source: str, trusted: bool = False
    ) -> InboundResult:
        """One inbound message from any path (webhook, IMAP, the outbox's reply form).

        Deduplicated on its identity; classified; a person's reply to the current step is a
        micro-yes; an out-of-office moves the wait to the return date; a permanent bounce or
        an abuse report stops the person's mail. ``trusted`` (IMAP, or a webhook whose shared
        secret was checked) also allows matching by address; otherwise only a token or a
        Message-ID nurture signed can tie a message to anyone."""
        try:
            mail = parse_inbound(raw, today=now.date())
        except ValueError as exc:
            return self.set_aside(raw, str(exc), now=now, source=source)
        kind = mail.classification.kind
        with self.store.transaction() as tx:
            inbound_id = tx.record_inbound(
                digest=mail.identity,
                header_message_id=mail.message_id,
                sender=mail.sender,
                now=now,
                source=source,
                kind=kind.value,
            )
            if inbound_id is None:
                return InboundResult("duplicate")
            if kind in (Kind.bounce, Kind.delay, Kind.complaint, Kind.report):
                result = self._report(tx, mail, now=now, trusted=trusted)
            else:
                result = self._reply(tx, mail, now=now, source=source, trusted=trusted)
            tx.finish_inbound(
                inbound_id, status=result.status, matched=result.message_id, note=result.outcome
            )
        log.info(
            "inbound %s from %s: %s %s",
            kind.value,
            source,
            result.status,
            result.outcome,
            extra={"action": "inbound", "kind": kind.value, "status": result.status},
        )
        return result

    def set_aside(
        self, raw: bytes, why: str, *, now: datetime, source: str, identity: str | None = None
    ) -> InboundResult:
        """Keep what cannot be read (capped), visible in `nurture inbound`; never raise."""
        log.warning(
            "inbound message from %s set aside: %s",
            source,
            why,
            extra={"action": "inbound_malformed"},
        )
        with self.store.transaction() as tx:
            tx.record_inbound(
                digest=identity or hashlib.sha256(raw).hexdigest(),
                header_message_id=None,
                sender=None,
                now=now,
                source=source,
                status="malformed",
                raw=raw[:MAX_INBOUND_BYTES] or None,
                note=why,
            )
        return InboundResult("malformed", why)

    def _reply(
        self, tx: Tx, mail: InboundMail, *, now: datetime, source: str, trusted: bool
    ) -> InboundResult:
        message, how = self._match(tx, mail, trusted=trusted)
        if message is None:
            return InboundResult("unmatched", "no token, known Message-ID or waiting sender")
        c = mail.classification
        if c.kind is Kind.auto_reply:
            status = "automatic"
            outcome = f"ignored:automatic ({c.reason})"
            if c.return_date is not None:
                outcome = self._out_of_office(tx, message, c.return_date, now=now)
        else:
            status = "matched"
            outcome = self._yes(tx, message, "reply", now=now)
        tx.add_event(
            subscriber_id=message.subscriber_id,
            enrollment_id=message.enrollment_id,
            message_id=message.id,
            kind="reply" if c.kind is Kind.human else "auto_reply",
            outcome=outcome,
            detail={
                "matched_by": how,
                "source": source,
                "subject": mail.subject[:200],
                "why": c.reason,
                "back": c.return_date.isoformat() if c.return_date else None,
            },
            now=now,
        )
        return InboundResult(status, outcome, message.id)

    def _out_of_office(self, tx: Tx, message: MessageRow, back: date, *, now: datetime) -> str:
        enrollment = tx.enrollment_for_update(message.enrollment_id)
        sequence = self.catalog.get(enrollment.sequence_id)
        state = enrollment.state
        if (
            sequence is None
            or not sequence.has_step(state.step_id)
            or (message.step_id, message.visit) != (state.step_id, state.visit)
        ):
            return "ignored:automatic (not the current step)"
        returns = datetime.combine(back, time(0, 0), tzinfo=UTC)
        decision = engine.on_out_of_office(state, sequence, back=returns, now=now)
        if decision.state != state:
            tx.apply(enrollment, decision, now=now)
        return f"{decision.outcome} until {back.isoformat()}"

    def _report(self, tx: Tx, mail: InboundMail, *, now: datetime, trusted: bool) -> InboundResult:
        """A delivery report or an abuse report: find whom it is about, then act."""
        c = mail.classification
        original = None
        for header_id in c.original_ids + mail.in_reply_to:
            number = self.signer.read_message_id(header_id)
            if number is not None and (found := tx.message(number)) is not None:
                original = found
                break
        named = set(c.permanent if c.kind is Kind.bounce else ())
        if c.kind is Kind.complaint and c.complainant:
            named.add(c.complainant)
        targets: dict[int, str] = {}
        if trusted:
            for address in named:
                sub = tx.subscriber_by_email(address)
                if sub is not None:
                    targets[sub.id] = address
        if original is not None and not targets:
            sub = tx.subscriber(original.subscriber_id)
            if c.kind is Kind.complaint or sub.email in named or not named:
                targets[sub.id] = sub.email
        if c.kind in (Kind.bounce, Kind.complaint) and not targets:
            return InboundResult("unmatched", f"{c.kind.value} about no known subscriber")
        message_id = original.id if original is not None else None
        if c.kind in _STOPS:
            status, reason, outcome = _STOPS[c.kind]
            for subscriber_id in targets:
                tx.stop_subscriber(subscriber_id, status=status, reason=reason, now=now)
                tx.add_event(
                    subscriber_id=subscriber_id,
                    message_id=message_id,
                    kind=c.kind.value,
                    outcome=outcome,
                    detail={"why": c.reason},
                    now=now,
                )
            who = ", ".join(sorted(targets.values()))
            return InboundResult(c.kind.value, f"{status}: {who}", message_id)
        if original is not None:
            tx.add_event(
                subscriber_id=original.subscriber_id,
                message_id=original.id,
                kind=c.kind.value,
                outcome="recorded",
                detail={"why": c.reason},
                now=now,
            )
        return InboundResult(c.kind.value, f"recorded: {c.reason}", message_id)

    def _match(self, tx: Tx, mail: InboundMail, *, trusted: bool) -> tuple[MessageRow | None, str]:
        if self._reply_pattern is not None:
            for address in mail.recipients:
                found = self._reply_pattern.fullmatch(address)
                if not found:
                    continue
                try:
                    token = self.signer.read(found.group(1), TokenKind.reply)
                except TokenError:
                    continue
                message = tx.message(token.message_id)
                if message is not None:
                    return message, "reply_address"
        for header_id in mail.in_reply_to:
            number = self.signer.read_message_id(header_id)
            if number is not None:
                message = tx.message(number)
                if message is not None:
                    return message, "in_reply_to"
        if trusted and mail.sender:
            return self._match_sender(tx, mail.sender), "sender_address"
        return None, ""

    def _match_sender(self, tx: Tx, sender: str) -> MessageRow | None:
        """Last resort: the sender's address, when exactly one of their enrollments waits for
        a reply (headers rewritten or stripped and no reply address configured)."""
        sub = tx.subscriber_by_email(sender)
        if sub is None:
            return None
        candidates = []
        for enrollment, message in tx.waiting_messages(sub.id):
            sequence = self.catalog.get(enrollment.sequence_id)
            step_id = enrollment.state.step_id
            if (
                sequence is not None
                and sequence.has_step(step_id)
                and sequence.step(step_id).advance_on.accepts("reply")
            ):
                candidates.append(message)
        if len(candidates) != 1:
            return None
        log.warning(
            "reply from %s matched by its sender address alone (last resort)",
            sender,
            extra={"action": "reply_matched_by_sender", "message_id": candidates[0].id},
        )
        return candidates[0]


# What a report does to the people it is about: (subscriber status, exit reason, event outcome).
_STOPS = {
    Kind.bounce: ("bounced", ExitReason.bounced, "bounced"),
    Kind.complaint: ("complained", ExitReason.complained, "unsubscribed"),
}


def _reply_regex(pattern: str) -> re.Pattern[str]:
    before, _, after = pattern.lower().partition("{token}")
    return re.compile(re.escape(before) + r"([a-z2-7]{10,64})" + re.escape(after))
