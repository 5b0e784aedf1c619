"""The sequences as the rest of nurture sees them: frozen steps and sequences, and the catalog
of every sequence of a deployment."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import time, timedelta
from enum import StrEnum
from typing import Literal

from nurture.vocabulary import MessageKind, YesBy

__all__ = [
    "AdvanceOn",
    "Reminder",
    "Timeout",
    "Answer",
    "Variant",
    "PickWinner",
    "Reentry",
    "SendWindow",
    "Step",
    "Sequence",
    "Catalog",
]


class AdvanceOn(StrEnum):
    """The kinds of yes a step takes: any of click, reply and event joined by ``_or_``."""

    click = "click"
    reply = "reply"
    event = "event"
    click_or_reply = "click_or_reply"
    click_or_event = "click_or_event"
    reply_or_event = "reply_or_event"
    click_or_reply_or_event = "click_or_reply_or_event"

    def accepts(self, by: YesBy) -> bool:
        return str(by) in self.value.split("_or_")


@dataclass(frozen=True)
class Answer:
    """One answer of a step's question (a link marked ``data-answer="ID"``): where it leads
    (``goto`` a step, else the next one) and what it says about the person."""

    id: str
    goto: str | None = None
    tags: tuple[str, ...] = ()
    fields: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True)
class Variant:
    """One version of a step's email in an A/B test."""

    id: str
    subject: str
    template: str
    weight: int = 1


@dataclass(frozen=True)
class PickWinner:
    """When an A/B test stops splitting: once this many of its emails were sent, or this long
    after the step's first one, if a variant has won by then."""

    after_sent: int | None = None
    after: timedelta | None = None
    min_sent: int | None = None  # each variant's sample before a verdict (the setting if None)


@dataclass(frozen=True)
class Reentry:
    """Whether a person who left a sequence (timed out, completed, converted, removed) and
    subscribes to it again starts it over: ``never``, ``always``, or ``after`` a while."""

    mode: Literal["never", "always", "after"] = "never"
    after: timedelta | None = None


@dataclass(frozen=True)
class SendWindow:
    """When a step's emails may go out, in the person's own time: on ``days`` (0 is Monday),
    from ``start`` to ``end`` (``end`` None: midnight). An email due outside it waits for the
    next opening and goes within its first ``spread``."""

    days: frozenset[int]
    start: time
    end: time | None
    spread: timedelta = timedelta(minutes=10)

    @property
    def always_open(self) -> bool:
        return len(self.days) == 7 and self.start == time(0) and self.end is None


@dataclass(frozen=True)
class Reminder:
    """A reminder of a step's email. Without a ``subject`` it says "Re: " and the subject of
    the email the person got (their variant's, in an A/B test); without a ``template`` it is
    that email's template again."""

    after: timedelta
    subject: str | None = None
    template: str | None = None


@dataclass(frozen=True)
class Timeout:
    action: Literal["exit", "next", "goto"]
    target: str | None = None


@dataclass(frozen=True)
class Step:
    id: str
    subject: str
    template: str
    advance_on: AdvanceOn
    wait: timedelta
    delay: timedelta = timedelta(0)
    reminders: tuple[Reminder, ...] = ()
    on_timeout: Timeout = Timeout("exit")
    confirms: bool = False
    line: int | None = None
    answers: tuple[Answer, ...] = ()
    when: str | None = None  # a condition: the step is sent only when it is true
    events: tuple[str, ...] = ()  # outside events that are this step's yes
    variants: tuple[Variant, ...] = ()  # A/B: subject and template come from the variant
    pick_winner: PickWinner | None = None
    send_window: SendWindow | None = None  # None: the sequence's

    def answer(self, answer_id: str | None) -> Answer | None:
        return next((a for a in self.answers if a.id == answer_id), None)

    def variant(self, variant_id: str | None) -> Variant | None:
        return next((v for v in self.variants if v.id == variant_id), None)

    def email(self, kind: MessageKind, variant_id: str | None = None) -> tuple[str, str]:
        """The subject (Jinja2 source) and template of one of the step's emails, for the
        person's A/B variant (None, or one the step no longer has: the step's first): the
        step's own, or a reminder, which follows that variant where it names no subject or
        template of its own."""
        chosen = self.variant(variant_id) or self
        subject, template = chosen.subject, chosen.template
        if kind.is_step:
            return subject, template
        reminder = self.reminders[kind.reminder - 1]
        return (
            f"Re: {subject}" if reminder.subject is None else reminder.subject,
            template if reminder.template is None else reminder.template,
        )


@dataclass(frozen=True)
class Sequence:
    id: str
    name: str
    sender: str
    steps: tuple[Step, ...]
    source: str = ""
    goals: tuple[str, ...] = ()
    line: int | None = None  # of the id
    # The fields of the sample subscriber validate and preview render every email for.
    sample: tuple[tuple[str, object], ...] = (("first_name", "Ada"),)
    # Everyone enrolled here confirmed outside nurture (subscribed with --confirmed).
    confirmed_elsewhere: bool = False
    reenter: Reentry = Reentry()
    send_window: SendWindow | None = None  # every step's, unless a step says otherwise
    _index: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._index.update({s.id: i for i, s in enumerate(self.steps)})

    def step(self, step_id: str) -> Step:
        return self.steps[self._index[step_id]]

    def has_step(self, step_id: str) -> bool:
        return step_id in self._index

    def next_step(self, step_id: str) -> Step | None:
        i = self._index[step_id] + 1
        return self.steps[i] if i < len(self.steps) else None

    def window_for(self, step: Step) -> SendWindow | None:
        """The send window of a step's emails: its own, else the sequence's, except for a
        confirmation (the person is waiting for it), which goes at once unless its step has
        a window of its own. None: any time."""
        window = step.send_window
        if window is None and not step.confirms:
            window = self.send_window
        return None if window is None or window.always_open else window

    def counts_as_goal(self, event_name: str) -> bool:
        """Whether an outside event converts this sequence: one of its ``goals:``; without
        that list, any event but those its steps ask for (``events:``), which answer a step
        instead of ending the sequence."""
        if self.goals:
            return event_name in self.goals
        return not any(event_name in step.events for step in self.steps)


@dataclass(frozen=True)
class Catalog:
    """Every sequence of a deployment, by id."""

    sequences: dict[str, Sequence]

    def get(self, sequence_id: str) -> Sequence | None:
        return self.sequences.get(sequence_id)

    def locate(self, sequence_id: str, step_id: str) -> tuple[Sequence, Step] | None:
        """The sequence and step an enrollment or a message names, or None when the loaded
        files do not have them (a file was renamed or a step removed under a running
        deployment): the one place that question is asked."""
        sequence = self.sequences.get(sequence_id)
        if sequence is None or not sequence.has_step(step_id):
            return None
        return sequence, sequence.step(step_id)

    def event_names(self) -> frozenset[str]:
        """Every outside event name the loaded files name: a step's ``events:`` or a
        sequence's ``goals:`` (a sequence without ``goals:`` names none of its own, though it
        counts any event as its goal)."""
        return frozenset(
            name
            for sequence in self.sequences.values()
            for name in (*sequence.goals, *(e for step in sequence.steps for e in step.events))
        )

    def __iter__(self) -> Iterator[Sequence]:
        return iter(self.sequences.values())
