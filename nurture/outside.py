"""Outside events: what the marketer's own app reports about a person (POST /events): a trial
started, a payment made. An event may set fields and tags, answer the step a person waits at
(``events:``), and be a goal that converts them. The same event id twice counts once, so the
app can retry safely."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from nurture.db.store import Store
from nurture.errors import SubscribeError
from nurture.journey import Journey
from nurture.people import TAG, clean_fields, clean_tags, normalize_email
from nurture.sequences import Catalog
from nurture.values import check_json, check_text
from nurture.vocabulary import EventKind

__all__ = ["EventResult", "OutsideEvents"]


@dataclass(frozen=True)
class EventResult:
    """What an outside event did: the sequences it converted (a goal) and those whose
    waiting step it answered; ``duplicate`` when its id was seen before (nothing done)."""

    converted: list[str] = field(default_factory=list)
    advanced: list[str] = field(default_factory=list)
    duplicate: bool = False


class OutsideEvents:
    def __init__(self, *, store: Store, catalog: Catalog, journey: Journey) -> None:
        self.store = store
        self.catalog = catalog
        self.journey = journey

    def goal(
        self,
        *,
        email: object,
        event: object,
        now: datetime,
        sequence_id: str | None = None,
    ) -> list[str]:
        """A goal (e.g. a purchase reported by the shop): the sequence ids that converted."""
        return self.event(email=email, event=event, now=now, sequence_id=sequence_id).converted

    def event(
        self,
        *,
        email: object,
        event: object,
        now: datetime,
        sequence_id: str | None = None,
        properties: dict[str, Any] | None = None,
        external_id: object = None,
    ) -> EventResult:
        """An outside event from the marketer's app (POST /events). Its ``set`` and ``tags``
        (in ``properties``) are stored on the person first; then it is the micro-yes of every
        step waiting for it (``events:``), and a goal of every sequence that counts it. Any
        other event is recorded. With ``external_id``, the same id twice counts once."""
        address = normalize_email(email)
        if not isinstance(event, str) or not TAG.match(event.strip()):
            raise SubscribeError(
                'an event name is required, e.g. "purchase" (letters, digits, _ - . :)'
            )
        name = event.strip()
        props = properties if properties is not None else {}
        if not isinstance(props, dict):
            raise SubscribeError("properties must be an object")
        fields = props.get("set") or {}
        if not isinstance(fields, dict):
            raise SubscribeError(
                'properties.set must be an object of fields, e.g. {"plan": "trial"}'
            )
        fields, tags = clean_fields(fields), clean_tags(props.get("tags"))
        check_json("properties", props)  # kept whole in the event's detail
        key = _idempotency_key(name, external_id)
        with self.store.transaction() as tx:
            sub = tx.subscribers.by_email(address)
            if sub is None:
                raise SubscribeError(f"no subscriber {address}", status=404)
            rows = tx.enrollments.of_subscriber(sub.id)  # lock order: enrollments first
            detail: dict[str, Any] = {"event": name, "properties": props}
            event_id = tx.events.add(
                subscriber_id=sub.id,
                kind=EventKind.event,
                outcome="recorded",
                detail=detail,
                now=now,
                external_id=key,
            )
            if event_id is None:
                return EventResult(duplicate=True)
            tx.subscribers.merge_fields(sub.id, fields, tags)
            converted = []
            for row in rows:
                if sequence_id and row.sequence_id != sequence_id:
                    continue
                sequence = self.catalog.get(row.sequence_id)
                if sequence is None or not sequence.counts_as_goal(name):
                    continue
                if self.journey.convert(tx, row, name, now=now):
                    converted.append(row.sequence_id)
                    tx.events.add(
                        subscriber_id=sub.id,
                        enrollment_id=row.id,
                        kind=EventKind.goal,
                        outcome="converted",
                        detail={"event": name},
                        now=now,
                    )
            # After the goals: someone a goal converted has nothing left to answer.
            answered = self.journey.event(tx, sub.id, name, now=now)
            advanced = [row.sequence_id for row, _ in answered]
            outcome = "converted" if converted else "advanced" if advanced else "recorded"
            detail.update(advanced=advanced, converted=converted)
            # The step this event answered in each enrollment: it answers no other step of
            # it (a later step asking for the same event waits for another one).
            detail["answered"] = {str(row.id): row.state.step_id for row, _ in answered}
            tx.events.set_outcome(event_id, outcome, detail)
        return EventResult(converted, advanced)


def _idempotency_key(name: str, external_id: object) -> str | None:
    """The stored key of an app's event id: scoped by event name (and, by the unique index,
    by person), as a payments API scopes its idempotency keys by caller. An id too long to
    store whole is kept as its digest."""
    if external_id is None:
        return None
    given = check_text("id", str(external_id).strip())
    if not given:
        return None
    # "/" cannot be in an event name (letters, digits, _ . : -): "order:paid" with id 42
    # and "order" with id "paid:42" are two keys.
    key = f"{name}/{given}"
    if len(key) > 200:
        key = f"{name}/sha256:{hashlib.sha256(given.encode()).hexdigest()}"
    return key
