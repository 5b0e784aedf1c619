"""The domain's words and the PostgreSQL/SQLite seam, on their own: no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.dialects import postgresql, sqlite

from nurture.db.dialect import UtcDateTime
from nurture.db.enrollments import claim_due_query
from nurture.db.messages import links_from_json, links_to_json
from nurture.db.outbox import claim_outgoing_query
from nurture.vocabulary import Link, MessageKind, SubscriberStatus

NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def sql(query: object, dialect: object) -> str:
    return str(query.compile(dialect=dialect))  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("query", "table"),
    [(claim_due_query(NOW, 200), "enrollments"), (claim_outgoing_query(NOW, 200), "messages")],
)
def test_claims_skip_what_another_worker_holds_on_postgresql(query: object, table: str) -> None:
    text = sql(query, postgresql.dialect())
    assert text.rstrip().endswith(f"FOR UPDATE OF {table} SKIP LOCKED")
    assert "LIMIT" in text
    # SQLite has no row locks: its transactions take the write lock up front instead.
    assert "FOR UPDATE" not in sql(query, sqlite.dialect())


def test_pending_clicks_are_claimed_with_skip_locked_too() -> None:
    from sqlalchemy import select

    from nurture.db.dialect import claim
    from nurture.db.models import EVENTS

    text = sql(claim(select(EVENTS.c.id), of=EVENTS), postgresql.dialect())
    assert text.endswith("FOR UPDATE OF events SKIP LOCKED")


def test_utc_datetimes_only() -> None:
    column = UtcDateTime()
    dialect = sqlite.dialect()
    paris = timezone(timedelta(hours=1))
    stored = column.process_bind_param(datetime(2026, 1, 5, 10, 0, tzinfo=paris), dialect)
    assert stored == NOW and stored is not None and stored.tzinfo is UTC
    with pytest.raises(ValueError, match="naive"):
        column.process_bind_param(datetime(2026, 1, 5, 9, 0), dialect)
    # SQLite hands back what was written as UTC without an offset.
    back = column.process_result_value(datetime(2026, 1, 5, 9, 0), dialect)
    assert back == NOW and back is not None and back.tzinfo is UTC
    assert column.process_result_value(None, dialect) is None


@pytest.mark.parametrize(("text", "reminder"), [("step", 0), ("reminder1", 1), ("reminder12", 12)])
def test_message_kinds_read_and_write_the_stored_words(text: str, reminder: int) -> None:
    kind = MessageKind.parse(text)
    assert kind.reminder == reminder and str(kind) == text
    assert kind.is_step == (reminder == 0)


@pytest.mark.parametrize("text", ["", "Step", "reminder0", "reminder", "reminder-1", "x"])
def test_other_words_are_not_message_kinds(text: str) -> None:
    with pytest.raises(ValueError):
        MessageKind.parse(text)


def test_the_honeypot_is_marked_in_the_stored_links_and_read_back() -> None:
    links = [
        Link("https://acme.example/a", True),
        Link("https://acme.example/b", False),
        Link("https://old.example/hp", False, honeypot=True),
    ]
    stored = links_to_json(links)
    assert stored[-1] == ["https://old.example/hp", False, "honeypot"]
    assert links_from_json(stored) == tuple(links)


def test_links_stored_before_the_marker_still_know_their_honeypot() -> None:
    old = [
        ["https://acme.example/hp", True],
        ["https://a.example/x", False],
        ["http://b/hp", False],
    ]
    first, middle, last = links_from_json(old)
    assert last.honeypot  # always the last link, never counting, to /hp: under any base URL
    assert not first.honeypot and not middle.honeypot


def test_a_status_that_says_more_outweighs_one_that_says_less() -> None:
    s = SubscriberStatus
    assert s.complained.weight > s.bounced.weight > s.unsubscribed.weight > s.confirmed.weight
    assert s.pending.sendable and s.confirmed.sendable
    assert not any(x.sendable for x in (s.unsubscribed, s.bounced, s.complained))
