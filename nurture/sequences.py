"""Sequence files: YAML -> pydantic models -> frozen domain objects.

Every mistake a marketer can make is reported at once, each as a ``Problem`` with the file, the
line and a plain sentence. This module never touches the database.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import jinja2
import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from nurture.durations import parse_duration
from nurture.errors import Problem, SequenceError

__all__ = [
    "AdvanceOn",
    "Reminder",
    "Timeout",
    "Step",
    "Sequence",
    "Catalog",
    "load_catalog",
    "load_sequence_file",
]


class AdvanceOn(StrEnum):
    click = "click"
    reply = "reply"
    click_or_reply = "click_or_reply"

    def accepts(self, kind: str) -> bool:
        return self.value == "click_or_reply" or self.value == kind


@dataclass(frozen=True)
class Reminder:
    after: timedelta
    subject: str
    template: str


@dataclass(frozen=True)
class Timeout:
    action: Literal["exit", "next", "goto"]
    target: str | None = None

    def describe(self) -> str:
        return f"goto {self.target}" if self.action == "goto" else self.action


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
    _index: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._index.update({s.id: i for i, s in enumerate(self.steps)})

    def step(self, step_id: str) -> Step:
        return self.steps[self._index[step_id]]

    def has_step(self, step_id: str) -> bool:
        return step_id in self._index

    def position(self, step_id: str) -> int:
        return self._index[step_id]

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

    def __iter__(self) -> Iterable[Sequence]:  # type: ignore[override]
        return iter(self.sequences.values())


# ---------------------------------------------------------------------------------------------
# The marketer's contract, as pydantic models (extra keys forbidden: a typo is an error).


def _duration(value: Any) -> timedelta:
    return parse_duration(value)


Duration = Annotated[timedelta, BeforeValidator(_duration)]
StepId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", max_length=64)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ReminderModel(_Model):
    after: Duration
    subject: str
    template: str


class GotoModel(_Model):
    goto: StepId


class StepModel(_Model):
    id: StepId
    subject: str
    template: str
    advance_on: AdvanceOn = AdvanceOn.click
    wait: Duration
    delay: Duration = timedelta(0)
    reminders: list[ReminderModel] = []
    on_timeout: Literal["exit", "next"] | GotoModel = "exit"
    confirms: bool = False


class SequenceModel(_Model):
    id: StepId
    name: str
    sender: str = Field(alias="from")
    steps: list[StepModel] = Field(min_length=1)
    goals: list[str] = []


# ---------------------------------------------------------------------------------------------
# Loading


Path_ = tuple[str | int, ...]


def _line_map(node: yaml.Node, source: str, problems: list[Problem]) -> dict[Path_, int]:
    """Map each key path of a YAML document to its 1-based line; report duplicate keys."""
    lines: dict[Path_, int] = {}

    def walk(n: yaml.Node, path: Path_) -> None:
        lines.setdefault(path, n.start_mark.line + 1)
        if isinstance(n, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in n.value:
                key = str(key_node.value)
                if key in seen:
                    problems.append(
                        Problem(source, key_node.start_mark.line + 1, f"duplicate key '{key}'")
                    )
                seen.add(key)
                lines[(*path, key)] = key_node.start_mark.line + 1
                walk(value_node, (*path, key))
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                walk(item, (*path, i))

    walk(node, ())
    return lines


def _line_for(lines: dict[Path_, int], loc: Path_) -> int | None:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def _where(loc: Path_) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _sentence(err: dict[str, Any], data: Any) -> str:
    loc: Path_ = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
    # pydantic names union branches in loc ("GotoModel", "literal[...]"); drop those parts.
    loc = tuple(p for p in loc if not (isinstance(p, str) and p[:1].isupper()))
    kind = err["type"]
    name = _where(loc)
    if kind == "extra_forbidden":
        return f"unknown key '{loc[-1]}'" + (f" in {_where(loc[:-1])}" if loc[:-1] else "")
    if kind == "missing":
        return f"missing required key '{loc[-1]}'" + (
            f" in {_where(loc[:-1])}" if loc[:-1] else ""
        )
    if kind in ("value_error", "assertion_error"):
        msg = str(err.get("ctx", {}).get("error", err["msg"]))
        return f"{name}: {msg}"
    if kind == "enum" or kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"{name} must be one of {expected} (got {err.get('input')!r})"
    if kind == "string_pattern_mismatch":
        return (
            f"{name} {err.get('input')!r} may hold only letters, digits, '_', '-' and '.' "
            "(at most 64)"
        )
    if kind == "too_short" and loc and loc[-1] == "steps":
        return "a sequence needs at least one step"
    return f"{name}: {err['msg'].lower()}"


def _timeout(model: Literal["exit", "next"] | GotoModel) -> Timeout:
    if isinstance(model, GotoModel):
        return Timeout("goto", model.goto)
    return Timeout(model)


def load_sequence_file(
    path: Path, *, env: jinja2.Environment | None = None, problems: list[Problem]
) -> Sequence | None:
    """Load one file; append every problem found to ``problems``; None if it cannot be used."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(Problem(source, None, f"cannot read the file: {exc}"))
        return None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        what = exc.problem or "invalid YAML"
        problems.append(Problem(source, line, f"YAML syntax error: {what}"))
        return None
    except yaml.YAMLError as exc:
        problems.append(Problem(source, None, f"YAML syntax error: {exc}"))
        return None
    if node is None or not isinstance(data, dict):
        problems.append(Problem(source, 1, "a sequence file must be a mapping with id, name, from and steps"))
        return None
    lines = _line_map(node, source, problems)
    found = len(problems)
    try:
        model = SequenceModel.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc: Path_ = tuple(err["loc"])
            clean = tuple(p for p in loc if not (isinstance(p, str) and (p[:1].isupper() or "[" in p)))
            problems.append(Problem(source, _line_for(lines, clean), _sentence(err, data)))
        return None

    step_ids: dict[str, int] = {}
    for i, step in enumerate(model.steps):
        line = _line_for(lines, ("steps", i, "id"))
        if step.id in step_ids:
            problems.append(
                Problem(source, line, f"duplicate step id '{step.id}' (first used at step {step_ids[step.id] + 1})")
            )
        else:
            step_ids[step.id] = i
    for i, step in enumerate(model.steps):
        here: Path_ = ("steps", i)
        if isinstance(step.on_timeout, GotoModel) and step.on_timeout.goto not in step_ids:
            problems.append(
                Problem(
                    source,
                    _line_for(lines, (*here, "on_timeout", "goto")),
                    f"step '{step.id}': on_timeout goes to step '{step.on_timeout.goto}', "
                    f"which this sequence does not have (steps: {', '.join(step_ids)})",
                )
            )
        if isinstance(step.on_timeout, GotoModel) and step.on_timeout.goto == step.id:
            problems.append(
                Problem(source, _line_for(lines, (*here, "on_timeout")),
                        f"step '{step.id}': on_timeout cannot go to the step itself")
            )
        if step.on_timeout == "next" and i == len(model.steps) - 1:
            problems.append(
                Problem(source, _line_for(lines, (*here, "on_timeout")),
                        f"step '{step.id}' is the last step: there is no next step; use exit")
            )
        if step.wait <= timedelta(0):
            problems.append(
                Problem(source, _line_for(lines, (*here, "wait")),
                        f"step '{step.id}': wait must be longer than 0")
            )
        if step.confirms and i != 0:
            problems.append(
                Problem(source, _line_for(lines, (*here, "confirms")),
                        f"step '{step.id}': only the first step can confirm the subscription")
            )
        previous = timedelta(0)
        for r, reminder in enumerate(step.reminders):
            rline = _line_for(lines, (*here, "reminders", r, "after"))
            if reminder.after <= previous:
                problems.append(Problem(source, rline, f"step '{step.id}': reminder {r + 1} must come after "
                                        + ("the step's email" if r == 0 else f"reminder {r}")))
            if reminder.after >= step.wait:
                problems.append(
                    Problem(source, rline, f"step '{step.id}': reminder {r + 1} at {_fmt(reminder.after)} "
                            f"comes after the wait of {_fmt(step.wait)} is over; it would never be sent")
                )
            previous = reminder.after
        if env is not None:
            _check_template(env, step.template, source, _line_for(lines, (*here, "template")), problems)
            _check_subject(env, step.subject, source, _line_for(lines, (*here, "subject")), problems)
            for r, reminder in enumerate(step.reminders):
                _check_template(env, reminder.template, source,
                                _line_for(lines, (*here, "reminders", r, "template")), problems)
                _check_subject(env, reminder.subject, source,
                               _line_for(lines, (*here, "reminders", r, "subject")), problems)
    if len(problems) > found:
        return None
    steps = tuple(
        Step(
            id=s.id,
            subject=s.subject,
            template=s.template,
            advance_on=s.advance_on,
            wait=s.wait,
            delay=s.delay,
            reminders=tuple(Reminder(r.after, r.subject, r.template) for r in s.reminders),
            on_timeout=_timeout(s.on_timeout),
            confirms=s.confirms,
            line=_line_for(lines, ("steps", i)),
        )
        for i, s in enumerate(model.steps)
    )
    return Sequence(
        id=model.id, name=model.name, sender=model.sender, steps=steps, source=source,
        goals=tuple(model.goals),
    )


def _fmt(value: timedelta) -> str:
    from nurture.durations import format_duration

    return format_duration(value)


def _check_template(
    env: jinja2.Environment, name: str, source: str, line: int | None, problems: list[Problem]
) -> None:
    try:
        env.get_template(name)
    except jinja2.TemplateNotFound:
        problems.append(Problem(source, line, f"unknown template '{name}' (not found in the templates directory)"))
    except jinja2.TemplateSyntaxError as exc:
        where = exc.filename or name
        problems.append(Problem(source, line, f"template '{name}' has a syntax error at {where}:{exc.lineno}: {exc.message}"))
    if not name.endswith((".html", ".htm")):
        problems.append(Problem(source, line, f"template '{name}' must be an HTML file (.html); its text twin is found next to it"))


def _check_subject(
    env: jinja2.Environment, subject: str, source: str, line: int | None, problems: list[Problem]
) -> None:
    try:
        env.from_string(subject)
    except jinja2.TemplateSyntaxError as exc:
        problems.append(Problem(source, line, f"subject has a template syntax error: {exc.message}"))


def load_catalog(sequences_dir: Path, *, env: jinja2.Environment | None = None) -> Catalog:
    """Load every ``*.yaml``/``*.yml`` file; raise SequenceError listing all problems."""
    problems: list[Problem] = []
    if not sequences_dir.is_dir():
        raise SequenceError([Problem(str(sequences_dir), None, "the sequences directory does not exist")])
    files = sorted([*sequences_dir.glob("*.yaml"), *sequences_dir.glob("*.yml")])
    if not files:
        raise SequenceError([Problem(str(sequences_dir), None, "no sequence files (*.yaml) found")])
    sequences: dict[str, Sequence] = {}
    for path in files:
        seq = load_sequence_file(path, env=env, problems=problems)
        if seq is None:
            continue
        if seq.id in sequences:
            problems.append(
                Problem(seq.source, 1, f"sequence id '{seq.id}' is already used by {sequences[seq.id].source}")
            )
            continue
        sequences[seq.id] = seq
    if problems:
        raise SequenceError(problems)
    return Catalog(sequences)
