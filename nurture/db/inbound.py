"""The inbound table (every inbound message seen, once) and the IMAP state (the last UID
handled per folder)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from nurture.db.dialect import insert_new, lock
from nurture.db.models import IMAP_STATE, INBOUND
from nurture.vocabulary import InboundSource, InboundStatus

__all__ = ["InboundRow", "InboundStore", "MailboxStore"]

N = INBOUND.c
# The kinds of inbound mail that are reports about an email (nurture.mail.classify).
REPORT_KINDS = ("bounce", "delay", "complaint")
I = IMAP_STATE.c  # noqa: E741


@dataclass(frozen=True)
class InboundRow:
    id: int
    received_at: datetime
    source: str | None
    kind: str | None
    status: InboundStatus
    sender: str | None
    note: str | None
    kept: bool  # its raw bytes were kept (set aside, or a report that matched nothing)


class InboundStore:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def record(
        self,
        *,
        digest: str,
        header_message_id: str | None,
        sender: str | None,
        now: datetime,
        source: InboundSource,
        kind: str | None = None,
        status: InboundStatus = InboundStatus.received,
        raw: bytes | None = None,
        note: str | None = None,
    ) -> int | None:
        """Remember an inbound message; None if the same message was seen before."""
        values = {
            "digest": digest,
            "header_message_id": header_message_id[:998] if header_message_id else None,
            "sender": sender[:320] if sender else None,
            "source": source.value,
            "kind": kind,
            "status": status.value,
            "raw": raw,
            "note": note[:2000] if note else None,
            "received_at": now,
        }
        return insert_new(self._conn, INBOUND, values)

    def finish(
        self,
        inbound_id: int,
        *,
        status: InboundStatus,
        matched: int | None,
        note: str,
        raw: bytes | None = None,
    ) -> None:
        """What was done; ``raw`` keeps the message itself (a report that matched nothing)."""
        values: dict[str, Any] = {
            "status": status.value,
            "matched_message_id": matched,
            "note": note[:2000],
        }
        if raw is not None:
            values["raw"] = raw
        self._conn.execute(update(INBOUND).where(N.id == inbound_id).values(values))

    def newest(self, limit: int, *, unmatched_reports: bool = False) -> list[InboundRow]:
        """The newest inbound messages; ``unmatched_reports``: only the delivery and abuse
        reports that referenced no email we sent to the address they name (they changed
        nobody)."""
        q = select(
            N.id,
            N.received_at,
            N.source,
            N.kind,
            N.status,
            N.sender,
            N.note,
            N.raw.is_not(None).label("kept"),
        )
        if unmatched_reports:
            q = q.where(N.status == InboundStatus.unmatched.value, N.kind.in_(REPORT_KINDS))
        return [
            InboundRow(
                r.id,
                r.received_at,
                r.source,
                r.kind,
                InboundStatus(r.status),
                r.sender,
                r.note,
                bool(r.kept),
            )
            for r in self._conn.execute(q.order_by(N.id.desc()).limit(limit))
        ]

    def counts(self) -> dict[str, int]:
        q = select(N.status, func.count()).group_by(N.status)
        return {status: n for status, n in self._conn.execute(q)}

    def unmatched_reports(self) -> int:
        q = select(func.count()).where(
            N.status == InboundStatus.unmatched.value, N.kind.in_(REPORT_KINDS)
        )
        return int(self._conn.scalar(q) or 0)

    def raw(self, inbound_id: int) -> bytes | None:
        return self._conn.scalar(select(N.raw).where(N.id == inbound_id))


class MailboxStore:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def last_uid(self, folder: str, uidvalidity: int) -> int:
        """The last UID handled in the folder; 0 when its UIDVALIDITY changed (the server
        renumbered it: everything is looked at again, and receive() skips what it knows)."""
        row = self._conn.execute(
            select(I.uidvalidity, I.last_uid).where(I.folder == folder)
        ).first()
        return int(row.last_uid) if row is not None and row.uidvalidity == uidvalidity else 0

    def set_last_uid(self, folder: str, uidvalidity: int, uid: int, *, now: datetime) -> None:
        values = {"uidvalidity": uidvalidity, "last_uid": uid, "updated_at": now}
        found = self._conn.execute(lock(select(I.folder).where(I.folder == folder))).first()
        if found is None:
            self._conn.execute(insert(IMAP_STATE).values(folder=folder, **values))
        else:
            self._conn.execute(update(IMAP_STATE).where(I.folder == folder).values(values))
