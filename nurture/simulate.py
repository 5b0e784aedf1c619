"""``nurture simulate``: a sequence run by the real engine on a virtual clock, for personas who
answer in set ways, before any real person goes through it. No database, no mail.

The loop is the daemon's, shrunk to one enrollment: what falls due is decided by
``engine.on_due`` (reminders, timeouts, conditions), an email is delivered the moment it is
decided (``engine.on_delivered``), and a persona's yes is ``engine.on_yes``. A step's
condition (``when:``) is evaluated for the persona's sample fields and the tags and fields
their answers gave; an A/B step sends the variant the hash gives the simulated enrollment; an
email due outside its send window goes at the window's next opening, as the daemon sends it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

from nurture import engine
from nurture.abtest import assign
from nurture.conditions import Conditions, sample_person, subscriber_context
from nurture.durations import format_duration, parse_duration
from nurture.errors import SubscribeError
from nurture.sendtimes import SendTimes
from nurture.sequences import Sequence, Step
from nurture.vocabulary import EnrollmentStatus, YesBy

__all__ = [
    "Persona",
    "Email",
    "Run",
    "PERSONAS",
    "simulate",
    "load_personas",
    "warnings",
    "offset",
]

START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)  # a Monday morning; only offsets are shown
MAX_EMAILS = 500  # a run that sends more is a loop: stopped and flagged
DAY_LIMIT = 3  # more emails than this in any 24 hours is flagged


@dataclass(frozen=True)
class Persona:
    """How someone answers: ``yes_after`` an email (``from_reminder``: after the step's first
    reminder instead; at a step without reminders, never), or per step (``steps``: a duration
    or None for never). ``answer`` picks the answer at a question (default: the first)."""

    name: str
    yes_after: timedelta | None
    from_reminder: bool = False
    steps: dict[str, timedelta | None] = field(default_factory=dict)
    answers: dict[str, str] = field(default_factory=dict)

    def delay_at(self, step: Step) -> tuple[timedelta | None, bool]:
        """(after how long, counted from the reminder?) this persona says yes at ``step``."""
        if step.id in self.steps:
            return self.steps[step.id], False
        return self.yes_after, self.from_reminder


PERSONAS = (
    Persona("eager", timedelta(hours=1)),
    Persona("after-reminder", timedelta(hours=1), from_reminder=True),
    Persona("silent", None),
)


@dataclass(frozen=True)
class Email:
    at: timedelta  # since the start
    step: str
    kind: str  # step, reminder1, ...
    subject: str
    variant: str | None = None
    waited: timedelta | None = None  # held back by its send window this long


@dataclass
class Run:
    persona: str
    outcome: str = "running"  # completed, exited:REASON, held, stopped:loop
    elapsed: timedelta = timedelta(0)
    emails: list[Email] = field(default_factory=list)
    skipped: list[tuple[timedelta, str, str]] = field(default_factory=list)  # (at, step, why)
    visited: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.persona,
            "outcome": self.outcome,
            "elapsed_seconds": int(self.elapsed.total_seconds()),
            "emails": [
                {
                    "at_seconds": int(e.at.total_seconds()),
                    "step": e.step,
                    "kind": e.kind,
                    "subject": e.subject,
                    **({"variant": e.variant} if e.variant else {}),
                    **({"waited_seconds": int(e.waited.total_seconds())} if e.waited else {}),
                }
                for e in self.emails
            ],
            "skipped": [
                {"at_seconds": int(at.total_seconds()), "step": s, "reason": why}
                for at, s, why in self.skipped
            ],
        }


def offset(delta: timedelta) -> str:
    """``+3d 1h``: how long after the start."""
    seconds = int(delta.total_seconds())
    if seconds == 0:
        return "+0"
    return "+" + re.sub(r"(?<=[a-z])(?=\d)", " ", format_duration(timedelta(seconds=seconds)))


def _kind_of_yes(step: Step) -> YesBy:
    takes = step.advance_on.value.split("_or_")
    return YesBy.click if "click" in takes else YesBy(takes[0])


def simulate(
    sequence: Sequence,
    persona: Persona,
    *,
    sample: dict[str, Any] | None = None,
    conditions: Conditions | None = None,
    render: Callable[[str, dict[str, Any]], str] | None = None,
    zone: ZoneInfo | None = None,
    start: datetime = START,
) -> Run:
    """One persona through ``sequence``, from subscribing at ``start`` (not yet confirmed,
    unless the sequence's people confirmed elsewhere) to the end; send windows are read in
    ``zone`` (None: UTC)."""
    conditions = conditions or Conditions()
    times = SendTimes()
    zone = zone or times.default_zone
    fields, listed = sample_person(sequence)
    if sample is not None:
        fields = dict(sample)
    tags = set(listed)
    confirmed = sequence.confirmed_elsewhere  # they were subscribed --confirmed
    now = start
    state = engine.start(sequence, now=now, confirmed=confirmed)
    run = Run(persona.name)
    yes_at: datetime | None = None
    yes_to: tuple[str, int] = ("", 0)  # the (step, visit) that yes answers

    def admits(step: Step) -> tuple[bool, str]:
        assert step.when is not None
        return conditions.holds(
            step.when, subscriber_context("sim@example.com", fields, sorted(tags))
        )

    # Reminders waiting for their send window: (when it opens, the visit, the email). As in
    # the daemon, one goes at the opening if the person is still at that visit; else (a yes,
    # a timeout at or before the opening) it is cancelled.
    held: list[tuple[datetime, int, Email]] = []

    def release(until: datetime, *, inclusive: bool) -> None:
        nonlocal held
        waiting = []
        for when, visit, mail in held:
            if when < until or (inclusive and when == until):
                if state.status is EnrollmentStatus.active and visit >= state.visit:
                    run.emails.append(mail)
            else:
                waiting.append((when, visit, mail))
        held = waiting

    while state.status is EnrollmentStatus.active:
        if len(run.emails) >= MAX_EMAILS:
            run.outcome = "stopped:loop"
            break
        due = state.due_at
        upcoming = [t for t in (yes_at, due) if t is not None]
        if upcoming:
            release(min(upcoming), inclusive=False)
        if yes_at is not None and (due is None or yes_at <= due):
            now = yes_at
            yes_at = None
            step = sequence.step(yes_to[0])
            answer = persona.answers.get(step.id) or (step.answers[0].id if step.answers else None)
            by = _kind_of_yes(step)
            event = step.events[0] if by is YesBy.event and step.events else None
            yes = engine.Yes(by, step.id, yes_to[1], answer=answer, event=event)
            decision = engine.on_yes(state, sequence, yes, now=now)
        elif due is not None:
            now = max(now, due)
            decision = engine.on_due(state, sequence, now=now, confirmed=confirmed, admits=admits)
        else:
            break  # nothing falls due and nobody answers: cannot happen for an active one
        for action in decision.actions:
            if isinstance(action, engine.ConfirmSubscriber):
                confirmed = True
            elif isinstance(action, engine.Remember):
                tags.update(action.tags)
                fields.update(dict(action.fields))
                fields.setdefault("answers", {})[action.step_id] = action.answer
            elif isinstance(action, engine.Skipped):
                run.skipped.append((now - start, action.step_id, action.reason))
        state = decision.state
        for action in decision.actions:
            if isinstance(action, engine.SendEmail):
                step = sequence.step(action.step_id)
                variant = assign(step, 1)
                title, _ = step.email(action.kind, variant.id if variant else None)
                if render is not None and "{" in title:
                    person = subscriber_context("sim@example.com", fields, sorted(tags))
                    title = render(title, person)
                # As the daemon: an email due outside its window goes at the next opening
                # (shown at the opening itself; the daemon spreads them over its first minutes).
                window = sequence.window_for(step)
                if window is not None:
                    window = replace(window, spread=timedelta(0))
                sent, _ = times.earliest(now, window=window, zone=zone, capped=False)
                mail = Email(
                    sent - start,
                    step.id,
                    str(action.kind),
                    title,
                    variant.id if variant else None,
                    waited=sent - now if sent > now else None,
                )
                if sent > now and not action.kind.is_step:
                    held.append((sent, action.visit, mail))
                else:
                    run.emails.append(mail)
                if action.kind.is_step:
                    run.visited.append(step.id)
                    now = sent
                    state = engine.on_delivered(
                        state, sequence, step_id=step.id, visit=action.visit, at=now
                    )
                    yes_at = _planned_yes(persona, step, now)
                    yes_to = (step.id, action.visit)
        release(now, inclusive=True)
    if state.status is EnrollmentStatus.held:
        run.outcome = "held"
    elif state.status is EnrollmentStatus.completed:
        run.outcome = "completed"
    elif state.status is EnrollmentStatus.exited:
        run.outcome = f"exited:{state.exit_reason.value if state.exit_reason else '?'}"
    run.elapsed = now - start
    return run


def _planned_yes(persona: Persona, step: Step, delivered: datetime) -> datetime | None:
    after, from_reminder = persona.delay_at(step)
    if after is None:
        return None
    if from_reminder:
        if not step.reminders:
            return None
        return delivered + step.reminders[0].after + after
    return delivered + after


def load_personas(path: Path) -> list[Persona]:
    """Personas from a small YAML file::

    - name: slow-clicker
      yes_after: 2d            # after each email; or never
      steps: {offer: never}    # per step, overriding yes_after
      answers: {survey: pro}   # the answer given at a question
    """
    where = str(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SubscribeError(f"{where}: cannot read the personas: {exc}") from None
    if not isinstance(data, list) or not data:
        raise SubscribeError(f"{where}: a list of personas, each with a name")
    out = []
    for i, item in enumerate(data, 1):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise SubscribeError(f"{where}: persona {i} needs a name")
        unknown = set(item) - {"name", "yes_after", "steps", "answers"}
        if unknown:
            raise SubscribeError(f"{where}: persona {item['name']}: unknown key {sorted(unknown)}")
        try:
            steps = {str(k): _when(v) for k, v in (item.get("steps") or {}).items()}
            out.append(
                Persona(
                    item["name"],
                    _when(item.get("yes_after", "never")),
                    steps=steps,
                    answers={str(k): str(v) for k, v in (item.get("answers") or {}).items()},
                )
            )
        except (ValueError, AttributeError) as exc:
            raise SubscribeError(f"{where}: persona {item['name']}: {exc}") from None
    return out


def _when(value: object) -> timedelta | None:
    if value is None or value == "never" or value is False:
        return None
    return parse_duration(value)


def warnings(sequence: Sequence, runs: Seq[Run]) -> list[str]:
    """What the marketer should know before launching."""
    out = []
    reached = {s for r in runs for s in r.visited}
    for step in sequence.steps:
        if step.id not in reached and not _reachable(sequence, step.id):
            out.append(f"step {step.id} cannot be reached from the first step")
        elif step.id not in reached:
            out.append(f"step {step.id} was reached by none of these personas")
    for r in runs:
        busiest = _busiest_day(r.emails)
        if busiest > DAY_LIMIT:
            out.append(f"{r.persona} gets {busiest} emails within 24 hours")
        if r.outcome == "stopped:loop":
            out.append(f"{r.persona} was still being emailed after {MAX_EMAILS} emails: a loop")
        if r.outcome == "held":
            out.append(f"{r.persona} is held before any email: nothing here confirms them")
    if runs:
        longest = max(runs, key=lambda r: r.elapsed)
        out.append(f"longest path: {offset(longest.elapsed)} ({longest.persona})")
    return out


def _busiest_day(emails: Seq[Email]) -> int:
    times = [e.at for e in emails]
    best = 0
    for i, start in enumerate(times):
        best = max(best, sum(1 for t in times[i:] if t - start < timedelta(days=1)))
    return best


def _reachable(sequence: Sequence, target: str) -> bool:
    """Whether any way through the file (a yes, a timeout, an answer, a skip) leads there."""
    seen: set[str] = set()
    todo = [sequence.steps[0].id]
    while todo:
        here = todo.pop()
        if here in seen:
            continue
        seen.add(here)
        step = sequence.step(here)
        after = sequence.next_step(here)
        if after is not None:
            todo.append(after.id)
        if step.on_timeout.target:
            todo.append(step.on_timeout.target)
        todo += [a.goto for a in step.answers if a.goto]
    return target in seen


def _waited(waited: timedelta | None) -> str:
    return f"  (waited {offset(waited)[1:]} for its window)" if waited else ""


def format_runs(sequence: Sequence, runs: Seq[Run]) -> str:
    """The timelines as a marketer reads them."""
    lines = [f"{sequence.id} ({sequence.name}), simulated on a virtual clock; nothing is sent"]
    for r in runs:
        lines.append(f"\n{r.persona}: {r.outcome} after {offset(r.elapsed)}")
        events = [
            (
                e.at,
                f"{e.step} {e.kind}" + (f" [{e.variant}]" if e.variant else ""),
                e.subject
                + (f"  (waited {offset(e.waited)[1:]} for its window)" if e.waited else ""),
            )
            for e in r.emails
        ]
        events += [(at, f"{step} skipped", why) for at, step, why in r.skipped]
        for at, what, detail in sorted(events, key=lambda x: x[0]):
            lines.append(f"  {offset(at):<16}{what:<26}{detail}")
    found = warnings(sequence, runs)
    if found:
        lines.append("")
        lines += [f"note: {w}" for w in found]
    return "\n".join(lines)
