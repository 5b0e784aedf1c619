"""Bringing a list in: ``nurture import FILE.csv --sequence ID``.

Each row is one person: an ``email`` column and any fields (``first_name``, ``timezone``...;
``tags`` separated by ';'). Rows are checked first (the address, a duplicate in the file, the
fields), then enrolled in chunks, one transaction per chunk: the addresses new to nurture in
two statements (people, then enrollments), the others one by one in a savepoint each (the
rules of ``subscribe``), so a row is either wholly in or not at all, and a refused row (say,
someone who unsubscribed) never undoes the others. Every refused row is reported with its
line and reason at the end.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError

from nurture import engine
from nurture.db.store import Tx
from nurture.errors import SubscribeError, SubscribeRefused
from nurture.people import clean_fields, clean_tags, normalize_email
from nurture.sequences import Sequence as SequenceFile
from nurture.subscriptions import Subscriptions
from nurture.vocabulary import SubscriberStatus

__all__ = ["ImportReport", "Refused", "import_csv", "CHUNK"]

CHUNK = 500
MAX_ROWS = 1_000_000


@dataclass(frozen=True)
class Refused:
    line: int
    email: str
    reason: str


@dataclass
class ImportReport:
    rows: int = 0
    enrolled: int = 0
    reentered: int = 0
    already: int = 0  # in the sequence already: nothing changed
    refused: list[Refused] = field(default_factory=list)


@dataclass(frozen=True)
class _Row:
    line: int
    email: str
    fields: dict[str, Any]
    tags: list[str]


def _read(path: Path, extra_tags: Sequence[str], report: ImportReport) -> list[_Row]:
    try:
        handle = path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise SubscribeError(f"{path}: cannot read the file: {exc}") from None
    rows: list[_Row] = []
    seen: dict[str, int] = {}
    with handle:
        reader = csv.DictReader(handle)
        names = [(n or "").strip().lower() for n in reader.fieldnames or []]
        if "email" not in names:
            raise SubscribeError(f"{path}: line 1 must name the columns, one of them email")
        reader.fieldnames = names
        try:
            for record in reader:
                line = reader.line_num
                report.rows += 1
                if report.rows > MAX_ROWS:
                    raise SubscribeError(f"{path}: more than {MAX_ROWS} rows; split the file")
                rows += _checked(record, line, extra_tags, seen, report)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise SubscribeError(f"{path}: line {reader.line_num}: {exc}") from None
    return rows


def _checked(
    record: dict[str | None, Any],
    line: int,
    extra_tags: Sequence[str],
    seen: dict[str, int],
    report: ImportReport,
) -> list[_Row]:
    raw_email = str(record.get("email") or "").strip()
    if None in record:
        report.refused.append(Refused(line, raw_email, "more values than columns"))
        return []
    try:
        email = normalize_email(raw_email)
        values = {k: v for k, v in record.items() if k and k not in ("email", "tags") and v}
        fields = clean_fields(values)
        tags = clean_tags([*clean_tags(record.get("tags") or ""), *extra_tags])
    except SubscribeError as exc:
        report.refused.append(Refused(line, raw_email, str(exc)))
        return []
    if email in seen:
        report.refused.append(Refused(line, email, f"a duplicate of line {seen[email]}"))
        return []
    seen[email] = line
    return [_Row(line, email, fields, tags)]


def _new_people(
    tx: Tx,
    rows: list[_Row],
    sequence: SequenceFile,
    *,
    confirmed: bool,
    now: datetime,
    report: ImportReport,
) -> list[_Row]:
    """Enroll the rows whose address nurture has never seen, in two statements; return the
    others (or all of them, if someone subscribed one of these addresses meanwhile)."""
    known = tx.subscribers.ids_of([r.email for r in rows])
    new = [r for r in rows if r.email not in known]
    if not new:
        return rows
    status = SubscriberStatus.confirmed if confirmed else SubscriberStatus.pending
    state = engine.start(sequence, now=now, confirmed=confirmed)
    try:
        with tx.savepoint():
            ids = tx.subscribers.create_many(
                [(r.email, r.fields, r.tags) for r in new], status=status, now=now
            )
            tx.enrollments.create_many([(ids[r.email], sequence.id, state) for r in new], now=now)
    except IntegrityError:
        return rows  # one by one, then
    report.enrolled += len(new)
    return [r for r in rows if r.email in known]


def import_csv(
    subscriptions: Subscriptions,
    path: Path,
    *,
    sequence_id: str,
    now: Callable[[], datetime],
    confirmed: bool = False,
    tags: Sequence[str] = (),
    chunk: int = CHUNK,
    progress: Callable[[int, int], None] | None = None,
) -> ImportReport:
    """Enroll every good row of the file in the sequence; the report says what became of
    each row (``refused`` sorted by line)."""
    sequence = subscriptions.sequence(sequence_id)
    extra_tags = clean_tags(list(tags))
    report = ImportReport()
    rows = _read(path, extra_tags, report)
    done = 0
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        at = now()
        with subscriptions.store.transaction() as tx:
            rest = _new_people(tx, part, sequence, confirmed=confirmed, now=at, report=report)
            for row in rest:
                try:
                    with tx.savepoint():
                        result = subscriptions.enroll(
                            tx,
                            row.email,
                            sequence,
                            row.fields,
                            row.tags,
                            now=at,
                            confirmed=confirmed,
                        )
                except SubscribeRefused as exc:
                    report.refused.append(Refused(row.line, row.email, str(exc)))
                    continue
                if result.outcome == "reentered":
                    report.reentered += 1
                elif result.created:
                    report.enrolled += 1
                else:
                    report.already += 1
        done += len(part)
        if progress is not None:
            progress(done, len(rows))
    report.refused.sort(key=lambda r: r.line)
    return report
