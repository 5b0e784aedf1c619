"""The dispatcher: one unit of work at a time.

``plan`` claims due enrollments and has the journey decide and record the messages to send
(one committed row each, claimed by this worker, before any SMTP traffic). ``deliver`` claims
queued messages (retries, sends a gone worker left). Both are rendered, then sent over a few
SMTP connections at once; between two messages each connection's worker writes the last
outcome and hands off the next message in one step of the ledger (``nurture.ledger``), so
every outcome is committed as its answer arrives. One failing recipient never stops or repeats
the rest of a batch. When sending is paused (the relay refuses us) or the worker is stopping,
no new message is started and what was claimed goes back to the queue, due at once.

``timings`` adds up the wall time of each phase (plan, claim, render, send, record): a few
``perf_counter`` calls per batch, read by ``bench/send.py``.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import random
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta

from nurture.clock import Clock
from nurture.composer import Composed, Composer, NotLoaded
from nurture.db.enrollments import FRESH
from nurture.db.messages import OutgoingRow
from nurture.db.store import Store, Tx
from nurture.handover import Handover
from nurture.journey import ORPHAN_RETRY, YES_PENDING_MARGIN, Journey
from nurture.ledger import GroupCommit, Outcome, SendLedger, Step, why_not_send
from nurture.mail.render import Renderer
from nurture.mail.send import NotStarted, Transport
from nurture.pacing import Pacer
from nurture.sendpolicy import DispatchPolicy
from nurture.sequences import Catalog
from nurture.tokens import Signer
from nurture.values import unsafe
from nurture.vocabulary import Link

__all__ = ["Dispatcher", "DispatchPolicy", "SLICE_SECONDS", "MIN_SLICE"]

log = logging.getLogger(__name__)

# A slice of sending lasts about this long, so what falls due meanwhile (a person's yes) waits
# at most that for its turn; never fewer emails than MIN_SLICE a slice.
SLICE_SECONDS = 0.5
MIN_SLICE = 10


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
        worker: str,
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
        self.worker = worker
        self.pacer = Pacer(policy.domain_rates, policy.max_rate)
        self.ledger = SendLedger(
            store, journey, clock, policy, worker, rng or random.Random(), pacer=self.pacer
        )
        self.handover = Handover(self)
        self.composer = Composer(
            catalog=catalog,
            renderer=renderer,
            signer=signer,
            reply_address=policy.reply_address,
            message_id_domain=policy.message_id_domain,
            dkim=policy.dkim,
            feedback_id=policy.feedback_id,
            bounce_address=policy.bounce_address,
        )
        self.timings: defaultdict[str, float] = defaultdict(float)
        self.stopping = threading.Event()
        self.unsettled = False  # a failed batch left messages this worker must settle
        self._per_email: float | None = None  # seconds an email takes (slice_size)
        self._last_plan: datetime | None = None  # when due work was last claimed

    def with_transport(self, transport: Transport, *, worker: str) -> Dispatcher:
        """Another worker on the same parts, sending through ``transport`` (a second worker
        in a test), with a ledger and timings of its own."""
        other = copy.copy(self)
        other.transport = transport
        other.worker = worker
        other.ledger = SendLedger(
            self.store, self.journey, self.clock, self.policy, worker, pacer=self.pacer
        )
        other.handover = Handover(other)
        other.timings = defaultdict(float)
        other.stopping = threading.Event()
        other.unsettled = False
        return other

    @contextmanager
    def _timed(self, phase: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.timings[phase] += time.perf_counter() - began

    # -- planning ------------------------------------------------------------------------

    def plan(self, now: datetime, *, limit: int | None = None) -> tuple[int, list[OutgoingRow]]:
        """Decide for up to one batch (``limit``, else the batch size) of due enrollments. The
        messages decided on are recorded and claimed in the same transaction; returns how
        many enrollments were claimed and those messages, ready to render and send."""
        # What fell due since the last claim is fresh, however long the slice between took.
        since = now - FRESH if self._last_plan is None else min(self._last_plan, now - FRESH)
        self._last_plan = now
        with self._timed("plan"), self.store.transaction() as tx:
            due = tx.enrollments.claim_due(now, limit or self.policy.batch_size, fresh_since=since)
            made = self.journey.plan(tx, due, now=now, worker=self.worker)
        outgoing = [
            OutgoingRow(
                message_id,
                row.enrollment.id,
                row.enrollment.sequence_id,
                send.step_id,
                send.visit,
                send.kind,
                attempts=1,
                email=row.email,
                fields=dict(row.fields),
                tags=row.tags,
                variant=variant,
            )
            for message_id, row, send, variant in made
        ]
        return len(due), outgoing

    def _plan_now(self, limit: int) -> tuple[int, list[OutgoingRow]]:
        return self.plan(self.clock.now(), limit=limit)

    # -- delivery ------------------------------------------------------------------------

    def _claim(self, limit: int | None = None) -> list[OutgoingRow]:
        """Queued messages due (retries, and what a gone worker left); those no longer
        wanted are cancelled here."""
        now = self.clock.now()
        with self._timed("claim"), self.store.transaction() as tx:
            claimed = tx.outbox.claim(now, limit or self.policy.batch_size)
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
            wanted = self._hold_for_pending_yes(tx, wanted, now)
            tx.outbox.lease([o.id for o in wanted], worker=self.worker, now=now)
        return wanted

    @staticmethod
    def _hold_for_pending_yes(tx: Tx, rows: list[OutgoingRow], now: datetime) -> list[OutgoingRow]:
        """A reminder queued (for its send window, the cap, pacing, a retry) whose step has a
        click on its ask waiting to be judged waits until just after the judgement, as the
        planner holds the enrollment: a yes counts as of its click."""
        reminders = [o for o in rows if not o.kind.is_step]
        if not reminders:
            return rows
        pending = tx.events.pending_yeses(sorted({o.enrollment_id for o in reminders}))
        held = []
        for o in reminders:
            judged = pending.get((o.enrollment_id, o.step_id, o.visit))
            if judged is not None:
                tx.outbox.hold([o.id], until=max(judged, now) + YES_PENDING_MARGIN)
                held.append(o.id)
        return [o for o in rows if o.id not in held]

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
                out, subject, links = self.composer.compose(row, now)
            except NotLoaded as exc:
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
            why = unsafe(subject, single_line=False)
            if why is not None:
                # A field stored before nurture refused such values (or by hand): the header
                # would carry it to the relay, and PostgreSQL cannot store a NUL. (A tab is
                # the header's own whitespace; the email package refuses a line break.)
                error = f"cannot render: the subject {why}"
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
                still, refused = tx.outbox.set_rendered(rendered)
                for message_id, reason in refused.items():
                    # A row the database would not store fails alone, as a render does.
                    error = f"cannot store the rendered email: {reason}"
                    log.error(
                        "message %s: %s",
                        message_id,
                        error,
                        extra={"action": "render_store_failed", "message_id": message_id},
                    )
                    failed.append((message_id, error))
                for message_id, error in failed:
                    self.ledger.fail(tx, message_id, error, now=now)
                for message_id, error in postponed:
                    tx.outbox.mark_retry(
                        message_id,
                        at=now + ORPHAN_RETRY,
                        error=error,
                        worker=self.worker,
                        uncount=True,
                    )
            # Mail cancelled since it was claimed (an unsubscribe, a goal) is not sent.
            ready = [o for o in ready if o.id in still]
        return ready

    def _halted(self) -> bool:
        return self.stopping.is_set() or self.ledger.paused

    async def _send(self, rows: Sequence[OutgoingRow]) -> int:
        """Render, send and record claimed messages; returns how many were handed to SMTP."""
        try:
            ready = await asyncio.to_thread(self._render, rows)
            if self.pacer.active and ready:
                ready = await self._paced(ready)
        except Exception:
            # A write that failed before anything was sent: the batch is settled (put back)
            # before this worker sends anything else.
            self.unsettled = True
            raise
        if not ready:
            return 0
        waiting = deque(ready)
        workers = min(self.transport.size, len(ready))
        ledger = GroupCommit(self.ledger.write, workers=workers)
        handed = 0

        def take() -> Composed | None:
            return waiting.popleft() if waiting and not self._halted() else None

        unwritten: list[Outcome] = []

        async def work() -> None:
            # Pipelined: while one message is on the wire, the outcome of the one before and
            # the hand-off of the one after are written. At a crash, at most two accepted
            # messages per connection are not written down yet.
            nonlocal handed
            done: Outcome | None = None
            try:
                async with self.transport.connection() as connection:
                    current = take()
                    allowed = await ledger.step(Step(None, current))
                    while current is not None:
                        nxt = take()
                        ahead = asyncio.ensure_future(ledger.step(Step(done, nxt)))
                        done = None
                        if allowed and self._halted():  # handed off, but stop or pause first
                            done = Outcome(current, NotStarted(f"not started: {self._why()}"))
                        elif allowed:
                            handed += 1
                            error = await connection.send(
                                current.sender, current.recipient, current.data
                            )
                            done = Outcome(current, error)
                        try:
                            allowed = await ahead
                        except Exception:
                            if done is not None:
                                unwritten.append(done)
                            raise
                        current = nxt
                    if done is not None:
                        step, done = Step(done, None), None
                        await ledger.step(step)
            except Exception:
                if done is not None:
                    unwritten.append(done)
                raise
            finally:
                ledger.workers -= 1  # one fewer to wait for

        recorded = self.ledger.seconds
        try:
            with self._timed("send"):
                began = time.perf_counter()
                results = await asyncio.gather(
                    *(work() for _ in range(workers)), return_exceptions=True
                )
                self._measured(time.perf_counter() - began, handed)
            failures = [r for r in results if isinstance(r, BaseException)]
            if failures:
                # A write that kept failing: settle what this batch left, then say so.
                await asyncio.to_thread(self._settle, ready, unwritten)
                raise failures[0]
            if waiting:  # stopping, or paused: what was not started goes back, due at once
                await asyncio.to_thread(self._release, [o.id for o in waiting])
        finally:
            self.timings["record"] += self.ledger.seconds - recorded
        return handed

    async def _paced(self, ready: list[Composed]) -> list[Composed]:
        """Domain pacing: the emails whose domain has room now; the others go back to the
        queue for about when their turn will come."""
        kept, later = self.pacer.split(ready, lambda out: out.recipient)
        if later:
            now = self.clock.now()

            def defer() -> None:
                with self.store.transaction() as tx:
                    for seconds, outs in later.items():
                        at = now + timedelta(seconds=seconds)
                        tx.outbox.defer([o.id for o in outs], at=at, worker=self.worker)

            await asyncio.to_thread(defer)
        return kept

    def _settle(self, batch: Sequence[Composed], unwritten: list[Outcome]) -> None:
        """After writes kept failing: the outcomes known but not written are written, and the
        rest of the batch this worker still holds goes back to the queue (sent again, as a
        message whose outcome is not known, if it was handed to SMTP)."""
        try:
            if unwritten:
                self.ledger.write([Step(done=o) for o in unwritten])
            self.handover.settle([o.id for o in batch])
        except Exception:  # noqa: BLE001 - the next tick settles them
            self.unsettled = True
            log.exception(
                "could not put back a batch after a failed write",
                extra={"action": "batch_unsettled"},
            )

    def _why(self) -> str:
        return "the worker is stopping" if self.stopping.is_set() else "sending is paused"

    def _release(self, message_ids: list[int]) -> None:
        with self.store.transaction() as tx:
            tx.outbox.release(message_ids, now=self.clock.now())

    def _measured(self, seconds: float, handed: int) -> None:
        """How long an email takes to send, all connections together (a moving average)."""
        if handed <= 0:
            return
        per = seconds / handed
        self._per_email = per if self._per_email is None else 0.7 * self._per_email + 0.3 * per

    def slice_size(self) -> int:
        """How many emails one slice of sending takes: about ``SLICE_SECONDS`` of sending at
        the pace measured (the batch size at most, ``MIN_SLICE`` at least). Between slices
        the sender claims what fell due meanwhile, so a person who just said yes waits for
        one slice, not for a bulk send to drain."""
        if self._per_email is None or self._per_email <= 0:
            # Not measured yet: a small first slice, so that a slow relay cannot make the
            # first one last long.
            return min(MIN_SLICE, self.policy.batch_size)
        fits = int(SLICE_SECONDS / self._per_email)
        return max(MIN_SLICE, min(self.policy.batch_size, fits))

    async def deliver(self, *, limit: int | None = None) -> int:
        """Claim (retries, resumed sends), render, send and record up to one batch."""
        rows = await asyncio.to_thread(self._claim, limit)
        return await self._send(rows) if rows else 0

    def _sending_paused(self) -> bool:
        """Read the deployment's pause; True while it lasts (then nothing is planned or
        sent: enrollments wait, nobody is suppressed)."""
        now = self.clock.now()
        with self.store.transaction() as tx:
            pause = tx.control.pause()
        self.ledger.pause_exists = pause is not None
        return pause is not None and pause.until > now

    async def run_once(self, *, max_batches: int = 50) -> tuple[int, int]:
        """Plan and deliver, slice by slice, until nothing is due (or ``max_batches`` batches'
        worth of emails, or stopping, or paused); one tick's work."""
        if self.unsettled:
            # What a batch whose writes failed left: settled before anything new is sent
            # (here, not from the heartbeat's thread, so no batch of this worker is under way).
            await asyncio.to_thread(self.handover.settle)
            self.unsettled = False
        return await self._run(max_batches)

    async def _run(self, max_batches: int) -> tuple[int, int]:
        planned = sent = 0
        if await asyncio.to_thread(self._sending_paused):
            return 0, 0
        self.ledger.paused = False  # a pause that ran out: try again (a success clears it)
        budget = max_batches * self.policy.batch_size
        while max(planned, sent) < budget:
            if self._halted():
                break
            limit = self.slice_size()
            n, fresh = await asyncio.to_thread(self._plan_now, limit)
            m = await self._send(fresh) if fresh else 0
            queued = 0
            if not self._halted():
                queued = await self.deliver(limit=limit)
            planned += n
            sent += m + queued
            # A decision can make an enrollment due at once (a timeout moving on to a step
            # with no delay), so plan again until a pass claims nothing.
            if n == 0 and queued < limit:
                break
        return planned, sent
