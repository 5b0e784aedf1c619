"""Bringing a list in: ``nurture import FILE.csv --sequence ID``.

Each row is one person: an ``email`` column and any fields (``first_name``, ``timezone``...;
``tags`` separated by ';'). Rows are checked first (the address, a duplicate in the file, the
fields), then enrolled in chunks, one transaction per chunk: the addresses new to nurture in
two statements (people, then enrollments), the others one by one in a savepoint each (the
rules of ``subscribe``), so a row is either wholly in or not at all, and a refused row (say,
someone who unsubscribed) never undoes the others. Every refused row is reported with its
line and reason at the end (a value with a control character is one: ``nurture.values``).

The file is read in the encoding its byte order mark says (UTF-8, UTF-16, UTF-32), else in
the one asked for (``--encoding``), else in UTF-8; a file that is not in it is one clear line
naming the first bad byte and its line, and nothing is imported.
"""

from __future__ import annotations

import codecs
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


# A byte order mark says the encoding whatever --encoding says (Excel's "Unicode text" and
# "CSV UTF-8" write one). UTF-32's marks begin with UTF-16's, so they are looked at first.
_BOMS = [
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
]


def _encoding(path: Path, encoding: str | None) -> str:
    """The codec to read ``path`` with: its byte order mark's, else ``encoding``, else UTF-8."""
    try:
        with path.open("rb") as raw:
            head = raw.read(4)
    except OSError as exc:
        raise SubscribeError(f"{path}: cannot read the file: {exc}") from None
    for bom, codec in _BOMS:
        if head.startswith(bom):
            return codec
    try:
        codecs.lookup(encoding or "utf-8")
    except LookupError:
        raise SubscribeError(
            f"unknown encoding {encoding!r} (e.g. utf-8, latin-1, cp1252)"
        ) from None
    return encoding or "utf-8"


def _undecodable(path: Path, codec: str, encoding: str | None) -> SubscribeError:
    """One line on a file that is not in ``codec``: the first bad byte, its line, what to do.
    (Read again whole, only on this path: the decoder's own position is that of its chunk.)"""
    data = path.read_bytes()
    try:
        data.decode(codec)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].decode(codec, errors="replace").count("\n") + 1
        where = f"byte 0x{data[exc.start]:02X} at line {line}"
    else:  # the whole decodes: the reader's codec state was at fault, say no more
        where = "a byte that cannot be read"
    name = "UTF-8" if encoding is None else encoding
    return SubscribeError(
        f"{path} is not {name} ({where}); save it as UTF-8, or pass --encoding latin-1"
    )


def _read(
    path: Path, extra_tags: Sequence[str], report: ImportReport, encoding: str | None
) -> list[_Row]:
    codec = _encoding(path, encoding)
    try:
        handle = path.open(encoding=codec, newline="")
    except OSError as exc:
        raise SubscribeError(f"{path}: cannot read the file: {exc}") from None
    rows: list[_Row] = []
    seen: dict[str, int] = {}
    with handle:
        reader = csv.DictReader(handle)
        try:
            names = [(n or "").strip().lower() for n in reader.fieldnames or []]
            if "email" not in names:
                raise SubscribeError(f"{path}: line 1 must name the columns, one of them email")
            reader.fieldnames = names
            for record in reader:
                line = reader.line_num
                report.rows += 1
                if report.rows > MAX_ROWS:
                    raise SubscribeError(f"{path}: more than {MAX_ROWS} rows; split the file")
                rows += _checked(record, line, extra_tags, seen, report)
        except UnicodeDecodeError:
            raise _undecodable(path, codec, encoding) from None
        except csv.Error as exc:
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
    encoding: str | None = None,
) -> ImportReport:
    """Enroll every good row of the file in the sequence; the report says what became of
    each row (``refused`` sorted by line). The file is read in its byte order mark's
    encoding, else in ``encoding``, else in UTF-8."""
    sequence = subscriptions.sequence(sequence_id)
    extra_tags = clean_tags(list(tags))
    report = ImportReport()
    rows = _read(path, extra_tags, report, encoding)
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
