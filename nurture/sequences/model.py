"""The sequences as the rest of nurture sees them: frozen steps and sequences, and the catalog
of every sequence of a deployment."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Literal

from nurture.vocabulary import YesBy

__all__ = ["AdvanceOn", "Reminder", "Timeout", "Step", "Sequence", "Catalog"]


class AdvanceOn(StrEnum):
    click = "click"
    reply = "reply"
    click_or_reply = "click_or_reply"

    def accepts(self, by: YesBy) -> bool:
        if self is AdvanceOn.click_or_reply:
            return by in (YesBy.click, YesBy.reply)
        return by == self.value


@dataclass(frozen=True)
class Reminder:
    after: timedelta
    subject: str
    template: str


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
    sample: tuple[tuple[str, str], ...] = (("first_name", "Ada"),)
    # Everyone enrolled here confirmed outside nurture (subscribed with --confirmed).
    confirmed_elsewhere: bool = False
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

    def counts_as_goal(self, event_name: str) -> bool:
        return not self.goals or event_name in self.goals


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

    def __iter__(self) -> Iterator[Sequence]:
        return iter(self.sequences.values())
