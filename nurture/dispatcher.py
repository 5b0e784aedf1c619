"""The dispatcher: one unit of work at a time.

``plan`` claims due enrollments and has the journey decide and record the messages to send
(one committed row each, before any SMTP traffic). ``deliver`` claims queued messages (retries,
sends a dead worker left), renders them, sends them over a few SMTP connections at once and
records each outcome: sent, retry later (4xx, network), or failed for good (5xx; a refused
recipient marks the subscriber bounced). One failing recipient never stops or repeats the rest
of a batch.

``timings`` adds up the wall time of each phase (claim, plan, render, smtp, record): a few
``perf_counter`` calls per batch, read by ``bench/send.py``.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import random
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from nurture.clock import Clock
from nurture.config import Settings
from nurture.db.outbox import ClaimedRow, OutgoingRow
from nurture.db.store import Store, Tx
from nurture.errors import PermanentSendError, SendError
from nurture.journey import ORPHAN_RETRY, Journey
from nurture.mail.compose import address_of, compose
from nurture.mail.render import Renderer
from nurture.mail.send import Bounce, NotStarted, Transport
from nurture.sequences import Catalog
from nurture.tokens import Signer, TokenKind
from nurture.vocabulary import EventKind, ExitReason, Link, SubscriberStatus

__all__ = ["Dispatcher", "DispatchPolicy", "Composed", "backoff", "why_not_send"]

log = logging.getLogger(__name__)


class _NotLoaded(Exception):
    """The message's sequence, step or reminder is not among the loaded sequences."""


@dataclass(frozen=True)
class DispatchPolicy:
    batch_size: int = 200
    lease: timedelta = timedelta(minutes=5)
    # How long after its claim a message may still be started: the rest of the lease is
    # left for the slowest SMTP transaction, so no claim runs out while its mail is sent.
    send_window: timedelta = timedelta(minutes=2, seconds=30)
    retry_base: timedelta = timedelta(seconds=30)
    retry_max: timedelta = timedelta(hours=1)
    max_attempts: int = 12
    reply_address: str | None = None
    message_id_domain: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> DispatchPolicy:
        return cls(
            batch_size=settings.batch_size,
            lease=timedelta(seconds=settings.send_lease_seconds),
            send_window=timedelta(seconds=settings.send_lease_seconds - 5 * settings.smtp_timeout),
            retry_base=timedelta(seconds=settings.retry_base_seconds),
            retry_max=timedelta(seconds=settings.retry_max_seconds),
            max_attempts=settings.retry_max_attempts,
            reply_address=settings.reply_address,
            message_id_domain=settings.message_id_domain,
        )


@dataclass(frozen=True)
class Composed:
    """A message rendered and composed: the bytes that go on the wire."""

    id: int
    sender: str
    recipient: str
    data: bytes
    attempts: int


def backoff(attempts: int, policy: DispatchPolicy, rng: random.Random) -> timedelta:
    """Exponential backoff with jitter: somewhere in [d/2, d], d = base * 2^(attempts-1)."""
    ceiling = min(
        policy.retry_max.total_seconds(),
        policy.retry_base.total_seconds() * 2 ** max(0, attempts - 1),
    )
    return timedelta(seconds=ceiling / 2 + rng.uniform(0, ceiling / 2))


def why_not_send(row: ClaimedRow) -> str | None:
    """Why a message due for an attempt is no longer wanted, or None when it still is."""
    if not row.subscriber_status.sendable:
        return f"subscriber {row.subscriber_status.value}"
    if row.enrollment_status.finished:
        return f"enrollment {row.enrollment_status.value}"
    if row.visit < row.enrollment_visit:
        # Retried so long that the step timed out and the person moved on: an email for a
        # step they are no longer at would only confuse them.
        return "enrollment moved on"
    return None


class Dispatcher:
    def __init__(
        self,
        *,
        store: Store,
        catalog: Catalog,
        journey: Journey,
        renderer: Renderer,
        signer: Signer,
        transport: Transport,
        clock: Clock,
        policy: DispatchPolicy,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.journey = journey
        self.renderer = renderer
        self.signer = signer
        self.transport = transport
        self.clock = clock
        self.policy = policy
        self.rng = rng or random.Random()
        self.timings: defaultdict[str, float] = defaultdict(float)

    def with_transport(self, transport: Transport) -> Dispatcher:
        """Another dispatcher on the same parts, sending through ``transport`` (a second
        worker in a test), with timings of its own."""
        other = copy.copy(self)
        other.transport = transport
        other.timings = defaultdict(float)
        return other

    @contextmanager
    def _timed(self, phase: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.timings[phase] += time.perf_counter() - began

    # -- planning ------------------------------------------------------------------------

    def plan(self, now: datetime) -> tuple[int, list[OutgoingRow]]:
        """Decide for up to one batch of due enrollments. The messages decided on are
        recorded and claimed in the same transaction; returns how many enrollments were
        claimed and those messages, ready to render and send."""
        with self._timed("plan"), self.store.transaction() as tx:
            due = tx.enrollments.claim_due(now, self.policy.batch_size)
            made = self.journey.plan(tx, due, now=now, claim_until=now + self.policy.lease)
        outgoing = [
            OutgoingRow(
                message_id,
                row.enrollment.sequence_id,
                send.step_id,
                send.kind,
                attempts=1,
                email=row.email,
                fields=dict(row.fields),
            )
            for message_id, row, send in made
        ]
        return len(due), outgoing

    # -- delivery ------------------------------------------------------------------------

    def _claim(self) -> list[OutgoingRow]:
        """Messages due again (retries) or left by a worker that died mid-send; those no
        longer wanted are cancelled here, at the last moment before sending."""
        now = self.clock.now()
        with self._timed("claim"), self.store.transaction() as tx:
            claimed = tx.outbox.claim(now, self.policy.batch_size)
            wanted = []
            unwanted: dict[str, list[int]] = {}
            for row in claimed:
                why = why_not_send(row)
                if why is None:
                    wanted.append(row.outgoing)
                else:
                    unwanted.setdefault(why, []).append(row.outgoing.id)
            for why, ids in unwanted.items():
                tx.outbox.cancel(ids, why=why)
            tx.outbox.lease([o.id for o in wanted], until=now + self.policy.lease)
        return wanted

    def _prepare(self, row: OutgoingRow, now: datetime) -> tuple[Composed, str, list[Link]]:
        """Render and compose one claimed message; raises what a template or data can raise."""
        found = self.catalog.locate(row.sequence_id, row.step_id)
        if found is None:
            raise _NotLoaded(f"{row.sequence_id}/{row.step_id} is not in the loaded sequences")
        sequence, step = found
        if row.kind.reminder > len(step.reminders):
            raise _NotLoaded(f"{row.sequence_id}/{row.step_id} has no {row.kind} any more")
        rendered = self.renderer.render(
            sequence, row.step_id, row.kind, message_id=row.id, email=row.email, fields=row.fields
        )
        envelope_from = address_of(sequence.sender)
        domain = self.policy.message_id_domain or envelope_from.rpartition("@")[2]
        reply_to = None
        if self.policy.reply_address:
            reply_to = self.policy.reply_address.format(
                token=self.signer.make(TokenKind.reply, row.id)
            )
        data = compose(
            sender=sequence.sender,
            to=row.email,
            subject=rendered.subject,
            text=rendered.text,
            html=rendered.html,
            message_id=self.signer.message_id(row.id, domain or "nurture.local"),
            date=now,
            unsubscribe_url=rendered.unsubscribe_url,
            reply_to=reply_to,
        )
        composed = Composed(row.id, envelope_from, row.email, data, row.attempts)
        return composed, rendered.subject, rendered.links

    def _render(self, rows: Sequence[OutgoingRow]) -> list[Composed]:
        """Render claimed messages outside any transaction, then store their subjects and
        links (the only URLs /c/ will redirect to) in one, before anything is sent."""
        with self._timed("render"):
            return self._render_all(rows)

    def _render_all(self, rows: Sequence[OutgoingRow]) -> list[Composed]:
        now = self.clock.now()
        ready: list[Composed] = []
        rendered: list[tuple[int, str, list[Link]]] = []
        failed: list[tuple[int, str]] = []
        postponed: list[tuple[int, str]] = []
        for row in rows:
            if row.resumed:
                log.warning(
                    "message %s was being sent when its worker stopped; sending it again "
                    "with the same Message-ID",
                    row.id,
                    extra={"action": "send_resumed", "message_id": row.id},
                )
            try:
                out, subject, links = self._prepare(row, now)
            except _NotLoaded as exc:
                # The files changed under a running deployment: as with enrollments, wait
                # for the sequence to come back rather than fail the person.
                log.error(
                    "message %s: %s; retrying in an hour",
                    row.id,
                    exc,
                    extra={"action": "message_orphaned", "message_id": row.id},
                )
                postponed.append((row.id, str(exc)))
                continue
            except Exception as exc:  # noqa: BLE001 - one bad email must not block its batch
                # A template or a subscriber's data that cannot make an email (undefined
                # name, sandbox limit, bad header...): this email fails and says why.
                error = f"cannot render: {type(exc).__name__}: {exc}"
                log.error(
                    "message %s: %s",
                    row.id,
                    error,
                    extra={"action": "render_failed", "message_id": row.id},
                )
                failed.append((row.id, error))
                continue
            ready.append(out)
            rendered.append((out.id, subject, links))
        if rendered or failed or postponed:
            with self.store.transaction() as tx:
                still = tx.outbox.set_rendered(rendered)
                for message_id, error in failed:
                    self._fail(tx, message_id, error, now=now, bounce=False)
                for message_id, error in postponed:
                    tx.outbox.mark_retry(message_id, at=now + ORPHAN_RETRY, error=error)
            # Mail cancelled since it was claimed (an unsubscribe, a goal) is not sent.
            ready = [o for o in ready if o.id in still]
        return ready

    def _record(self, results: list[tuple[Composed, SendError | None]]) -> None:
        now = self.clock.now()
        with self._timed("record"), self.store.transaction() as tx:
            tx.outbox.mark_sent([o.id for o, err in results if err is None], now=now)
            for out, err in results:
                if err is not None:
                    self._failure(tx, out, err, now=now)

    def _failure(self, tx: Tx, out: Composed, err: SendError, *, now: datetime) -> None:
        if isinstance(err, PermanentSendError):
            log.warning(
                "message %s to %s refused for good: %s",
                out.id,
                out.recipient,
                err,
                extra={"action": "send_failed", "message_id": out.id},
            )
            self._fail(tx, out.id, str(err), now=now, bounce=isinstance(err, Bounce))
        elif err.code is not None and out.attempts >= self.policy.max_attempts:
            # Only a recipient's 4xx runs out of attempts; an unreachable server is retried
            # until it comes back, so a dead SMTP server loses nothing.
            log.error(
                "message %s: giving up after %d attempts: %s",
                out.id,
                out.attempts,
                err,
                extra={"action": "send_gave_up", "message_id": out.id},
            )
            error = f"gave up after {out.attempts} attempts: {err}"
            self._fail(tx, out.id, error, now=now, bounce=False)
        elif isinstance(err, NotStarted):
            tx.outbox.mark_retry(out.id, at=now, error=str(err))
        else:
            delay = backoff(out.attempts, self.policy, self.rng)
            log.info(
                "message %s: temporary failure (%s); retry in %.0fs",
                out.id,
                err,
                delay.total_seconds(),
                extra={"action": "send_retry", "message_id": out.id},
            )
            tx.outbox.mark_retry(out.id, at=now + delay, error=str(err))

    def _fail(self, tx: Tx, message_id: int, error: str, *, now: datetime, bounce: bool) -> None:
        message = tx.outbox.mark_failed(message_id, error=error)
        if bounce:
            self.journey.stop_person(
                tx,
                message.subscriber_id,
                status=SubscriberStatus.bounced,
                reason=ExitReason.bounced,
                now=now,
            )
        else:
            self.journey.stop(tx, message.enrollment_id, ExitReason.failed, now=now)
        tx.events.add(
            subscriber_id=message.subscriber_id,
            enrollment_id=message.enrollment_id,
            message_id=message_id,
            kind=EventKind.bounce if bounce else EventKind.failed,
            outcome="bounced" if bounce else "failed",
            detail={"error": error[:500]},
            now=now,
        )

    async def _send(self, rows: Sequence[OutgoingRow]) -> int:
        """Render, send and record claimed messages (claimed just before this is called);
        returns how many were attempted."""
        loop = asyncio.get_running_loop()
        claimed = loop.time()
        ready = await asyncio.to_thread(self._render, rows)
        if ready:
            window = self.policy.send_window.total_seconds() - (loop.time() - claimed)
            began = time.perf_counter()
            errors = await self.transport.send_many(
                [(o.sender, o.recipient, o.data) for o in ready], within=window
            )
            self.timings["smtp"] += time.perf_counter() - began
            await asyncio.to_thread(self._record, list(zip(ready, errors, strict=True)))
        return len(ready)

    async def deliver(self) -> int:
        """Claim (retries, resumed sends), render, send and record up to one batch."""
        rows = await asyncio.to_thread(self._claim)
        return await self._send(rows) if rows else 0

    async def run_once(
        self, *, max_batches: int = 50, stop: threading.Event | None = None
    ) -> tuple[int, int]:
        """Plan and deliver until nothing is due (or ``max_batches``, or ``stop`` is set,
        which is looked at between batches); one tick's work."""
        planned = sent = 0
        for _ in range(max_batches):
            if stop is not None and stop.is_set():
                break
            n, fresh = await asyncio.to_thread(self.plan, self.clock.now())
            m = await self._send(fresh) if fresh else 0
            m += await self.deliver()
            planned += n
            sent += m
            # A decision can make an enrollment due at once (a timeout moving on to a step
            # with no delay), so plan again until a pass claims nothing.
            if n == 0 and m < self.policy.batch_size:
                break
        return planned, sent
