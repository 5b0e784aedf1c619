"""The send ledger: what each message handed to SMTP became, written down as its answer
arrives, and the last check before the next one goes out.

Each connection's worker, between two SMTP transactions, asks the ledger in one step to write
the outcome of the message it just sent and to hand off the next one. Whatever all connections
ask meanwhile goes into one database transaction (group commit), so a crash can repeat at most
the messages whose ``250`` arrived after the last commit: one per connection.

The hand-off is the last check: the message must still be claimed by this worker, its person
still mailable, its enrollment still wanting it. An unsubscribe committed before it wins; an
email already handed off when the unsubscribe commits still goes (and is recorded as sent).

What an outcome means is decided here, by whose fault a refusal is (``nurture.mail.send``):
the person bounces only for their address; a refused message fails alone; a refusal of us
pauses all sending (``tx.control``) and suppresses nobody; so does the circuit breaker, when
many people in a row are refused the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from nurture.clock import Clock
from nurture.db.messages import ClaimedRow
from nurture.db.store import Store, Tx
from nurture.errors import PermanentSendError, SendError
from nurture.journey import Journey
from nurture.mail.send import Bounce, NotStarted, OutcomeUnknown, Rejected, RelayRefused
from nurture.pacing import Pacer
from nurture.vocabulary import EventKind, ExitReason, SubscriberStatus

if TYPE_CHECKING:
    from nurture.composer import Composed
    from nurture.sendpolicy import DispatchPolicy

__all__ = ["Outcome", "Step", "SendLedger", "GroupCommit", "Breaker", "why_not_send", "backoff"]

log = logging.getLogger(__name__)

WRITE_ATTEMPTS = 4
PAUSE_READ_SECONDS = 1.0  # how stale this worker's view of another one's pause may be


def why_not_send(row: ClaimedRow) -> str | None:
    """Why a claimed message is no longer wanted, or None when it still is."""
    if not row.subscriber_status.sendable:
        return f"subscriber {row.subscriber_status.value}"
    if row.enrollment_status.finished:
        return f"enrollment {row.enrollment_status.value}"
    if row.visit < row.enrollment_visit:
        # Retried so long that the person moved on: an email for a step they are no longer
        # at would only confuse them.
        return "enrollment moved on"
    return None


def backoff(attempts: int, policy: DispatchPolicy, rng: random.Random) -> timedelta:
    """Exponential backoff with jitter: somewhere in [d/2, d], d = base * 2^(attempts-1)."""
    ceiling = min(
        policy.retry_max.total_seconds(),
        policy.retry_base.total_seconds() * 2 ** max(0, attempts - 1),
    )
    return timedelta(seconds=ceiling / 2 + rng.uniform(0, ceiling / 2))


@dataclass(frozen=True)
class Outcome:
    message: Composed
    error: SendError | None  # None: the relay accepted it


@dataclass(frozen=True)
class Step:
    """One worker's request between two SMTP transactions."""

    done: Outcome | None = None  # write this outcome
    start: Composed | None = None  # then hand off this message


@dataclass
class Breaker:
    """Trips when ``threshold`` people in a row are refused the same way (one refusal
    signature, no success between them): a relay that refuses everyone must not bounce a
    whole list."""

    threshold: int
    last: str | None = None
    count: int = 0

    def success(self) -> None:
        self.last, self.count = None, 0

    def refusal(self, signature: str | None) -> bool:
        if signature is None or signature != self.last:
            self.last, self.count = signature, 1
        else:
            self.count += 1
        return self.count >= self.threshold


class GroupCommit:
    """Runs ``write`` (in a thread) for the steps of every worker that asked while the
    previous write was running: one transaction for many connections. A write waits up to
    ``window`` seconds for the ``workers`` to have each asked (they are sending meanwhile:
    a worker needs the answer only when its message is through), then goes."""

    def __init__(
        self, write: Callable[[list[Step]], set[int]], *, workers: int, window: float = 0.002
    ) -> None:
        self._write = write
        self.workers = workers
        self._window = window
        self._waiting: list[tuple[Step, asyncio.Future[bool]]] = []
        self._writing = False
        self._full = asyncio.Event()

    async def step(self, step: Step) -> bool:
        """Write ``step``; True if its message may be handed to SMTP now."""
        if step.done is None and step.start is None:
            return False
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((step, future))
        if len(self._waiting) >= self.workers:
            self._full.set()
        if not self._writing:
            self._writing = True
            asyncio.get_running_loop().create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._waiting:
                if len(self._waiting) < self.workers:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._full.wait(), self._window)
                self._full.clear()
                batch, self._waiting = self._waiting, []
                try:
                    allowed = await asyncio.to_thread(self._write, [s for s, _ in batch])
                except BaseException as exc:  # noqa: BLE001 - every waiting worker learns it
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for step, future in batch:
                    if not future.done():
                        future.set_result(step.start is not None and step.start.id in allowed)
        finally:
            self._writing = False


@dataclass
class SendLedger:
    store: Store
    journey: Journey
    clock: Clock
    policy: DispatchPolicy
    worker: str
    rng: random.Random = field(default_factory=random.Random)
    pacer: Pacer = field(default_factory=Pacer)
    paused: bool = False  # no new message may start: a refusal of us was just seen
    pause_exists: bool = False  # a pause is recorded (maybe run out): a success clears it
    seconds: float = 0.0  # time spent writing, for the dispatcher's timings
    _pause_read: float = float("-inf")  # monotonic time the pause was last read

    def __post_init__(self) -> None:
        self.breaker = Breaker(self.policy.breaker_failures)

    def write(self, steps: list[Step]) -> set[int]:
        """One transaction for these steps. A transaction that fails (a deadlock another
        transaction won, a dropped connection) rolled back whole: it is tried again, with
        this ledger's own state as it was, a few times before the error is raised."""
        began = time.perf_counter()
        try:
            for attempt in range(1, WRITE_ATTEMPTS + 1):
                saved = (self.breaker.last, self.breaker.count, self.paused, self.pause_exists)
                try:
                    return self._write(steps)
                except Exception as exc:
                    (self.breaker.last, self.breaker.count, self.paused, self.pause_exists) = saved
                    if attempt == WRITE_ATTEMPTS:
                        raise
                    log.warning(
                        "writing %d send outcomes failed (%s); trying again",
                        len(steps),
                        exc,
                        extra={"action": "ledger_retry"},
                    )
                    time.sleep(0.05 * attempt)
            raise AssertionError("unreachable")
        finally:
            self.seconds += time.perf_counter() - began

    def _write(self, steps: list[Step]) -> set[int]:
        now = self.clock.now()
        outcomes = [s.done for s in steps if s.done is not None]
        starts = [s.start for s in steps if s.start is not None]
        with self.store.transaction() as tx:
            accepted = [o.message for o in outcomes if o.error is None]
            self._accepted(tx, accepted, now=now)
            if accepted:
                self.breaker.success()
                # A pause that ran out is over once a message goes through; not one this
                # send set (a success already on the wire when the refusal came proves
                # nothing).
                if self.pause_exists and not self.paused:
                    tx.control.clear_pause()
                    self.pause_exists = False
                    log.warning("sending resumed", extra={"action": "sending_resumed"})
            for outcome in outcomes:
                if outcome.error is not None:
                    self._failed(tx, outcome.message, outcome.error, now=now)
            if not self.paused and time.monotonic() - self._pause_read >= PAUSE_READ_SECONDS:
                # Another worker may have paused sending meanwhile: seen within a second.
                self._pause_read = time.monotonic()
                pause = tx.control.pause()
                self.pause_exists = pause is not None
                self.paused = pause is not None and pause.until > now
            allowed = self._hand_off(tx, [m.id for m in starts], now=now)
        return allowed

    def _accepted(self, tx: Tx, messages: list[Composed], *, now: datetime) -> None:
        # Lock order: the enrollments first (their clocks), then the messages, as everywhere.
        steps = [m.delivery for m in messages if m.delivery is not None]
        self.journey.delivered(tx, steps, at=now)
        tx.outbox.mark_sent([m.id for m in messages], worker=self.worker, now=now)

    def _hand_off(self, tx: Tx, ids: list[int], *, now: datetime) -> set[int]:
        if self.paused:
            tx.outbox.release(ids, now=now)
            return set()
        allowed = tx.outbox.hand_off(ids, worker=self.worker, now=now)
        unwanted: dict[str, list[int]] = {}
        for row in tx.outbox.held_by(self.worker, [i for i in ids if i not in allowed]):
            why = why_not_send(row)
            if why is not None:
                unwanted.setdefault(why, []).append(row.outgoing.id)
        for why, message_ids in unwanted.items():
            tx.outbox.cancel(message_ids, why=why)
        return allowed

    def _failed(self, tx: Tx, out: Composed, err: SendError, *, now: datetime) -> None:
        if err.throttled:
            # The recipient's domain asks us to slow down: its pace halves (once per two
            # intervals); the email itself is retried like any 4xx (counted, with backoff),
            # so a receiver that always says so is given up on in the end.
            self.pacer.throttled(out.recipient)
        if isinstance(err, Bounce | Rejected) and self.breaker.refusal(err.signature):
            count = self.breaker.count
            err = RelayRefused(f"{count} people in a row refused the same way: {err}")
        if isinstance(err, RelayRefused):
            self._pause(tx, out, err, now=now)
        elif isinstance(err, PermanentSendError):
            self._refused(tx, out, err, now=now)
        elif isinstance(err, OutcomeUnknown):
            self._unknown(tx, out, err, now=now)
        elif isinstance(err, NotStarted):
            tx.outbox.mark_retry(out.id, at=now, error=str(err), uncount=True, worker=self.worker)
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
            self.fail(tx, out.id, f"gave up after {out.attempts} attempts: {err}", now=now)
        else:
            self._retry(tx, out, err, now=now)

    def _retry(self, tx: Tx, out: Composed, err: SendError, *, now: datetime) -> None:
        delay = backoff(out.attempts, self.policy, self.rng)
        log.info(
            "message %s: temporary failure (%s); retry in %.0fs",
            out.id,
            err,
            delay.total_seconds(),
            extra={"action": "send_retry", "message_id": out.id},
        )
        tx.outbox.mark_retry(out.id, at=now + delay, error=str(err), worker=self.worker)

    def _pause(self, tx: Tx, out: Composed, err: SendError, *, now: datetime) -> None:
        current = tx.control.pause()
        if current is not None and (self.paused or current.until > now):
            # The other connections' (or workers') messages of the same moment: one pause.
            self.paused = self.pause_exists = True
            tx.outbox.mark_retry(
                out.id, at=current.until, error=str(err), uncount=True, worker=self.worker
            )
            return
        pause = tx.control.set_pause(
            str(err), now=now, first=self.policy.pause, longest=self.policy.pause_max
        )
        self.paused = self.pause_exists = True
        # Not the message's fault: sent again when sending resumes, the attempt not counted.
        tx.outbox.mark_retry(
            out.id, at=pause.until, error=str(err), uncount=True, worker=self.worker
        )
        log.error(
            "sending paused until %s: %s (nobody was suppressed; `nurture resume` retries now)",
            pause.until.isoformat(timespec="seconds"),
            err,
            extra={"action": "sending_paused", "reason": str(err)},
        )

    def _refused(self, tx: Tx, out: Composed, err: SendError, *, now: datetime) -> None:
        bounce = isinstance(err, Bounce)
        log.warning(
            "message %s to %s refused for good (%s): %s",
            out.id,
            out.recipient,
            "the address" if bounce else "the message",
            err,
            extra={"action": "send_failed" if bounce else "send_rejected", "message_id": out.id},
        )
        self.fail(tx, out.id, str(err), now=now, bounce=bounce)

    def _unknown(self, tx: Tx, out: Composed, err: SendError, *, now: datetime) -> None:
        if out.unknown_outcomes >= 1:
            # Twice no answer: the relay most likely has it. Taken as delivered rather than
            # sent a third time (the circuit breaker catches a relay that never answers).
            log.warning(
                "message %s: no outcome known twice (%s); taken as delivered",
                out.id,
                err,
                extra={"action": "send_assumed_delivered", "message_id": out.id},
            )
            self._accepted(tx, [out], now=now)
            return
        at = now + self.policy.unknown_retry
        log.warning(
            "message %s: no outcome known (%s); sent again at %s with the same Message-ID",
            out.id,
            err,
            at.isoformat(timespec="seconds"),
            extra={"action": "send_unknown", "message_id": out.id},
        )
        tx.outbox.mark_unknown(out.id, at=at, error=str(err), worker=self.worker)

    def fail(
        self, tx: Tx, message_id: int, error: str, *, now: datetime, bounce: bool = False
    ) -> None:
        """This email fails for good; a bounce stops the person, anything else the
        enrollment. Nothing happens to a message this worker no longer holds (another took it
        over, or it was cancelled meanwhile)."""
        message = tx.outbox.mark_failed(message_id, error=error, worker=self.worker)
        if message is None:
            return
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
