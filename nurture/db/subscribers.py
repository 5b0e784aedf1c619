"""The subscribers table: people, their fields and their status."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from nurture.db.dialect import insert_new, lock_keys_kept, lock_shared
from nurture.db.models import SUBSCRIBERS
from nurture.vocabulary import SubscriberStatus

__all__ = ["SubscriberRow", "SubscriberStore"]

S = SUBSCRIBERS.c


@dataclass(frozen=True)
class SubscriberRow:
    id: int
    email: str
    fields: dict[str, Any]
    status: SubscriberStatus
    tags: tuple[str, ...] = ()

    @property
    def confirmed(self) -> bool:
        return self.status is SubscriberStatus.confirmed


def _row(r: Any) -> SubscriberRow:
    return SubscriberRow(
        r.id, r.email, dict(r.fields or {}), SubscriberStatus(r.status), tuple(r.tags or ())
    )


_COLUMNS = (S.id, S.email, S.fields, S.status, S.tags)


class SubscriberStore:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def by_email(self, email: str, *, lock: bool = False) -> SubscriberRow | None:
        q = select(*_COLUMNS).where(S.email == email)
        row = self._conn.execute(lock_keys_kept(q) if lock else q).first()
        return _row(row) if row else None

    def get(self, subscriber_id: int, *, lock: bool = False) -> SubscriberRow:
        q = select(*_COLUMNS).where(S.id == subscriber_id)
        return _row(self._conn.execute(lock_keys_kept(q) if lock else q).one())

    def create(
        self,
        email: str,
        fields: dict[str, Any],
        *,
        status: SubscriberStatus,
        now: datetime,
        tags: Sequence[str] = (),
    ) -> SubscriberRow:
        """A new subscriber; if a concurrent request created the same address first (a form
        submitted twice), that one, locked."""
        values = {
            "email": email,
            "fields": fields,
            "tags": sorted(set(tags)),
            "status": status.value,
            "created_at": now,
            "confirmed_at": now if status is SubscriberStatus.confirmed else None,
        }
        new_id = insert_new(self._conn, SUBSCRIBERS, values)
        if new_id is not None:
            return SubscriberRow(new_id, email, dict(fields), status, tuple(sorted(set(tags))))
        existing = self.by_email(email, lock=True)
        assert existing is not None  # the unique key was the address
        return existing

    def ids_of(self, emails: Sequence[str]) -> dict[str, int]:
        """The ids of the addresses that are subscribers already."""
        q = select(S.email, S.id).where(S.email.in_(list(emails)))
        return {email: i for email, i in self._conn.execute(q)}

    def create_many(
        self,
        people: Sequence[tuple[str, dict[str, Any], Sequence[str]]],
        *,
        status: SubscriberStatus,
        now: datetime,
    ) -> dict[str, int]:
        """New subscribers (email, fields, tags) in one statement; their ids by address.
        IntegrityError if one of the addresses is there already (the caller's savepoint)."""
        confirmed_at = now if status is SubscriberStatus.confirmed else None
        self._conn.execute(
            insert(SUBSCRIBERS),
            [
                {
                    "email": email,
                    "fields": fields,
                    "tags": sorted(set(tags)),
                    "status": status.value,
                    "created_at": now,
                    "confirmed_at": confirmed_at,
                }
                for email, fields, tags in people
            ],
        )
        return self.ids_of([email for email, _, _ in people])

    def merge_fields(
        self,
        subscriber_id: int,
        fields: dict[str, Any],
        tags: Sequence[str] = (),
        *,
        answers: dict[str, str] | None = None,
    ) -> None:
        """Add or replace fields and add tags; the others are kept. ``answers`` (step id ->
        answer id) are kept in the ``answers`` field, the latest per step."""
        if not fields and not tags and not answers:
            return
        current = self.get(subscriber_id, lock=True)
        values: dict[str, Any] = {}
        if answers:
            given = current.fields.get("answers")
            fields = {
                **fields,
                "answers": {**(given if isinstance(given, dict) else {}), **answers},
            }
        if fields:
            values["fields"] = {**current.fields, **fields}
        if tags and not set(tags) <= set(current.tags):
            values["tags"] = sorted({*current.tags, *tags})
        if values:
            self._conn.execute(update(SUBSCRIBERS).where(S.id == subscriber_id).values(values))

    def set_status(self, subscriber_id: int, status: SubscriberStatus, *, now: datetime) -> None:
        """Store a new status, with when they confirmed or left."""
        values: dict[str, Any] = {"status": status.value}
        if status is SubscriberStatus.confirmed:
            values["confirmed_at"] = now
        elif not status.sendable:
            values["left_at"] = now
        self._conn.execute(update(SUBSCRIBERS).where(S.id == subscriber_id).values(values))

    def fields_of(self, subscriber_ids: Sequence[int]) -> dict[int, Any]:
        """Each of these people's fields (read, not locked)."""
        q = select(S.id, S.fields).where(S.id.in_(subscriber_ids))
        return {i: dict(f or {}) for i, f in self._conn.execute(q)}

    def confirmed_among(self, subscriber_ids: Sequence[int]) -> set[int]:
        """Which of these subscribers are confirmed, waiting for any transaction that is
        confirming one of them right now, so that its outcome is seen."""
        q = select(S.id).where(
            S.id.in_(subscriber_ids), S.status == SubscriberStatus.confirmed.value
        )
        return set(self._conn.scalars(lock_shared(q)))
