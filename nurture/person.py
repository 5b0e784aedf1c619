"""``nurture person EMAIL``: one person's whole story, for support ("why did I get this?",
"why did nothing come?"): who they are, every enrollment with its emails in order and the
events on each, where it stands now and what is due next."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from nurture.db.store import Tx
from nurture.mail.compose import address_of
from nurture.sequences import Catalog
from nurture.tokens import Signer

__all__ = ["person_story", "format_story"]


def _when(at: datetime | None) -> str | None:
    return at.isoformat(timespec="seconds") if at else None


def _next(row: Any, catalog: Catalog) -> str:
    state = row.state
    if state.status.finished:
        return "nothing: " + (
            "completed" if state.exit_reason is None else f"left ({state.exit_reason.value})"
        )
    if state.status.value == "held":
        return "nothing until they confirm (double opt-in)"
    found = catalog.locate(row.sequence_id, state.step_id)
    if found is None:
        return f"waits at {state.step_id}, which the loaded files do not have"
    if state.phase.value == "send":
        return f"the {state.step_id} email at {_when(state.due_at)}"
    if state.step_sent_at is None:
        return f"the {state.step_id} email is on its way (not delivered yet)"
    return f"a yes to {state.step_id} ({found[1].advance_on.value}); else at {_when(state.due_at)}"


def person_story(
    tx: Tx, catalog: Catalog, signer: Signer, email: str, *, message_id_domain: str | None = None
) -> dict[str, Any] | None:
    sub = tx.subscribers.by_email(email)
    if sub is None:
        return None
    events = tx.events.of_subscriber(sub.id)
    messages = tx.reports.messages_of(sub.id)
    enrollments = []
    for row in tx.enrollments.of_subscriber(sub.id):
        sequence = catalog.get(row.sequence_id)
        domain = message_id_domain or (
            address_of(sequence.sender).rpartition("@")[2] if sequence else ""
        )
        emails = [
            {
                "id": m.id,
                "step": m.step_id,
                "kind": m.kind,
                "visit": m.visit,
                "subject": m.subject,
                "status": m.status,
                "variant": m.variant,
                "sent_at": _when(m.sent_at),
                "message_id": signer.message_id(m.id, domain or "nurture.local"),
                "yes": {"at": _when(m.yes_at), "by": m.yes_by, "answer": m.answer}
                if m.yes_at
                else None,
                "attempts": m.attempts,
                "last_error": m.last_error,
                "events": [_event(e) for e in events if e.message_id == m.id],
            }
            for m in messages
            if m.enrollment_id == row.id
        ]
        state = row.state
        enrollments.append(
            {
                "sequence": row.sequence_id,
                "status": state.status.value,
                "step": state.step_id,
                "exit_reason": state.exit_reason.value if state.exit_reason else None,
                "next": _next(row, catalog),
                "emails": emails,
                "events": [
                    _event(e) for e in events if e.enrollment_id == row.id and e.message_id is None
                ],
            }
        )
    return {
        "email": sub.email,
        "status": sub.status.value,
        "fields": sub.fields,
        "tags": list(sub.tags),
        "enrollments": enrollments,
        "events": [_event(e) for e in events if e.enrollment_id is None and e.message_id is None],
    }


def _event(e: Any) -> dict[str, Any]:
    out = {"at": _when(e.at), "kind": e.kind.value, "outcome": e.outcome}
    if e.verdict is not None:
        out["verdict"] = e.verdict.value
    for key in ("reasons", "answer", "event", "reason", "how", "url"):
        if key in e.detail:
            out[key] = e.detail[key]
    return out


def _line(e: dict[str, Any]) -> str:
    extra = [f"{k}: {e[k]}" for k in ("verdict", "answer", "event", "url", "how") if k in e]
    if e.get("reasons"):
        extra.append("reasons: " + ", ".join(e["reasons"]))
    if e.get("reason"):
        extra.append(str(e["reason"]))
    return f"{e['at']}  {e['kind']} -> {e['outcome']}" + (
        f"  ({'; '.join(extra)})" if extra else ""
    )


def format_story(story: dict[str, Any]) -> str:
    lines = [f"{story['email']}: {story['status']}"]
    if story["tags"]:
        lines.append(f"  tags: {', '.join(story['tags'])}")
    if story["fields"]:
        lines.append("  fields: " + ", ".join(f"{k}={v!r}" for k, v in story["fields"].items()))
    for e in story["events"]:
        lines.append(f"  {_line(e)}")
    for en in story["enrollments"]:
        lines.append(f"\n{en['sequence']}: {en['status']} at {en['step']}; next: {en['next']}")
        for m in en["emails"]:
            sent = m["sent_at"] or m["status"]
            variant = f" [{m['variant']}]" if m["variant"] else ""
            lines.append(f"  {sent}  {m['step']} {m['kind']}{variant}: {m['subject'] or '-'}")
            lines.append(f"      {m['message_id']}  ({m['status']}, {m['attempts']} attempts)")
            if m["last_error"]:
                lines.append(f"      last error: {m['last_error']}")
            if m["yes"]:
                answer = f", answer {m['yes']['answer']}" if m["yes"]["answer"] else ""
                lines.append(f"      yes by {m['yes']['by']} at {m['yes']['at']}{answer}")
            for e in m["events"]:
                lines.append(f"      {_line(e)}")
        for e in en["events"]:
            lines.append(f"  {_line(e)}")
    return "\n".join(lines)
