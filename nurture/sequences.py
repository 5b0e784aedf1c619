"""Sequence files: YAML -> pydantic models -> frozen domain objects.

Every mistake a marketer can make is reported at once, each as a ``Problem`` with the file, the
line and a plain sentence. This module never touches the database.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from email.utils import getaddresses
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import jinja2
import jinja2.meta
import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from nurture.durations import format_duration, parse_duration
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
        if self.value == "click_or_reply":
            return kind in ("click", "reply")
        return self.value == kind


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

    def __iter__(self) -> Iterator[Sequence]:
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
    """The file's top level; each step is validated on its own so that one broken step does
    not hide the problems of the others."""

    id: StepId
    name: str
    sender: str = Field(alias="from")
    steps: list[Any] = Field(min_length=1)
    goals: list[str] = []


# ---------------------------------------------------------------------------------------------
# Loading


Loc = tuple[str | int, ...]


def _line_map(node: yaml.Node, source: str, problems: list[Problem]) -> dict[Loc, int]:
    """Map each key path of a YAML document to its 1-based line; report duplicate keys."""
    lines: dict[Loc, int] = {}
    active: set[int] = set()  # nodes on the current path: an alias may point back up

    def walk(n: yaml.Node, path: Loc) -> None:
        lines.setdefault(path, n.start_mark.line + 1)
        if id(n) in active:
            problems.append(
                Problem(
                    source,
                    n.start_mark.line + 1,
                    "this alias refers to itself; write the value out",
                )
            )
            return
        active.add(id(n))
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
        active.discard(id(n))

    walk(node, ())
    return lines


def _line_for(lines: dict[Loc, int], loc: Loc) -> int | None:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def _clean_loc(loc: Loc) -> Loc:
    # pydantic names union branches in loc ("GotoModel", "literal['exit','next']"): drop them.
    return tuple(p for p in loc if not (isinstance(p, str) and (p[:1].isupper() or "[" in p)))


def _path_text(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _sentence(err: Any, loc: Loc) -> str:
    """One pydantic error as a sentence; ``loc`` is relative to the step or the file."""
    kind = err["type"]
    name = _path_text(loc)
    parent = _path_text(loc[:-1])
    if loc and loc[0] == "on_timeout" and kind != "extra_forbidden":
        return f"on_timeout must be exit, next or {{goto: STEP_ID}} (got {err.get('input')!r})"
    if kind == "extra_forbidden":
        return f"unknown key '{loc[-1]}'" + (f" in {parent}" if parent else "")
    if kind == "missing":
        return f"missing required key '{loc[-1]}'" + (f" in {parent}" if parent else "")
    if kind in ("value_error", "assertion_error"):
        return f"{name}: {err.get('ctx', {}).get('error', err['msg'])}"
    if kind in ("enum", "literal_error"):
        expected = err.get("ctx", {}).get("expected", "")
        return f"{name} must be one of {expected} (got {err.get('input')!r})"
    if kind == "string_pattern_mismatch":
        return (
            f"{name} {err.get('input')!r} may hold only letters, digits, '_', '-' and '.' "
            "(at most 64)"
        )
    if kind == "too_short" and loc == ("steps",):
        return "a sequence needs at least one step"
    if kind == "model_type" or kind == "dict_type":
        return f"{name or 'this'} must be a mapping of keys and values"
    return f"{name}: {err['msg'][:1].lower()}{err['msg'][1:]}"


def _yaml_problem(source: str, exc: yaml.YAMLError) -> Problem:
    if not isinstance(exc, yaml.MarkedYAMLError):
        return Problem(source, None, f"YAML syntax error: {exc}")
    mark = exc.problem_mark or exc.context_mark
    what = exc.problem or "invalid YAML"
    if exc.context and exc.context_mark is not None and exc.context_mark is not mark:
        what += f" ({exc.context} that starts at line {exc.context_mark.line + 1})"
    return Problem(source, mark.line + 1 if mark else None, f"YAML syntax error: {what}")


def _timeout(model: Literal["exit", "next"] | GotoModel) -> Timeout:
    if isinstance(model, GotoModel):
        return Timeout("goto", model.goto)
    return Timeout(model)


def load_sequence_file(
    path: Path, *, env: jinja2.Environment | None = None, problems: list[Problem]
) -> Sequence | None:
    """Load one file; append every problem found to ``problems``; None if it cannot be used."""
    source = str(path)
    found = len(problems)

    def problem(loc: Loc, message: str) -> None:
        problems.append(Problem(source, _line_for(lines, loc), message))

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(Problem(source, None, f"cannot read the file: {exc}"))
        return None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problems.append(_yaml_problem(source, exc))
        return None
    if node is None or not isinstance(data, dict):
        problems.append(
            Problem(source, 1, "a sequence file must be a mapping with id, name, from and steps")
        )
        return None
    lines = _line_map(node, source, problems)
    if len(problems) > found and any("refers to itself" in p.message for p in problems[found:]):
        return None

    header: SequenceModel | None = None
    try:
        header = SequenceModel.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = _clean_loc(tuple(err["loc"]))
            problem(loc, _sentence(err, loc))
    raw_steps: list[Any] = data["steps"] if isinstance(data.get("steps"), list) else []
    raw_ids = [s.get("id") if isinstance(s, dict) else None for s in raw_steps]

    def label(i: int) -> str:
        step_id = raw_ids[i]
        return f"step '{step_id}'" if isinstance(step_id, str) else f"step {i + 1}"

    first_use: dict[str, int] = {}
    for i, step_id in enumerate(raw_ids):
        if not isinstance(step_id, str):
            continue
        if step_id in first_use:
            problem(
                ("steps", i, "id"),
                f"duplicate step id '{step_id}' (step {first_use[step_id] + 1} has it already)",
            )
        else:
            first_use[step_id] = i

    steps: list[StepModel | None] = []
    for i, raw in enumerate(raw_steps):
        here: Loc = ("steps", i)
        bad_timeout = False
        try:
            steps.append(StepModel.model_validate(raw))
        except ValidationError as exc:
            steps.append(None)
            for err in exc.errors():
                loc = _clean_loc(tuple(err["loc"]))
                if loc[:1] == ("on_timeout",):
                    # Each branch of the union reports its own error: say it once.
                    if bad_timeout:
                        continue
                    bad_timeout = True
                problem((*here, *loc), f"{label(i)}: {_sentence(err, loc)}")
        if isinstance(raw, dict) and not bad_timeout:
            _check_goto(raw, here, label(i), list(first_use), problem)
        if env is not None and isinstance(raw, dict):
            _check_email(env, raw, here, label(i), problem)
            for r, reminder in enumerate(raw.get("reminders") or []):
                if isinstance(reminder, dict):
                    _check_email(
                        env,
                        reminder,
                        (*here, "reminders", r),
                        f"{label(i)}, reminder {r + 1}",
                        problem,
                    )

    for i, step in enumerate(steps):
        if step is not None:
            _check_step(step, i, len(steps), problem)
    if header is not None and not _address_ok(header.sender):
        problem(
            ("from",), f'from {header.sender!r} is not an address like "Ada <ada@acme.example>"'
        )

    if len(problems) > found or header is None:
        return None
    built = tuple(
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
        for i, s in enumerate(steps)
        if s is not None
    )
    return Sequence(
        id=header.id,
        name=header.name,
        sender=header.sender,
        steps=built,
        source=source,
        goals=tuple(header.goals),
        line=_line_for(lines, ("id",)),
    )


def _address_ok(sender: str) -> bool:
    """Exactly one address, with a local part and a dotted domain."""
    found = getaddresses([sender])
    if len(found) != 1:
        return False
    local, _, domain = found[0][1].partition("@")
    return bool(local) and "." in domain and not domain.startswith(".")


def _check_goto(raw: dict[str, Any], here: Loc, label: str, ids: list[str], problem: Any) -> None:
    """Checked on the raw step, so a typo elsewhere in the step does not hide it."""
    rule = raw.get("on_timeout")
    target = rule.get("goto") if isinstance(rule, dict) else None
    if not isinstance(target, str):
        return
    if target not in ids:
        problem(
            (*here, "on_timeout", "goto"),
            f"{label}: on_timeout goes to step '{target}', which this sequence does not "
            f"have (steps: {', '.join(ids)})",
        )
    elif target == raw.get("id"):
        problem((*here, "on_timeout"), f"{label}: on_timeout cannot go to the step itself")


def _check_step(step: StepModel, i: int, count: int, problem: Any) -> None:
    here: Loc = ("steps", i)
    name = f"step '{step.id}'"
    if step.on_timeout == "next" and i == count - 1:
        problem((*here, "on_timeout"), f"{name} is the last step: there is no next step; use exit")
    if step.wait <= timedelta(0):
        problem((*here, "wait"), f"{name}: wait must be longer than 0")
    if step.confirms and step.on_timeout != "exit":
        problem(
            (*here, "on_timeout"),
            f"{name}: a confirmation step can only exit when nobody confirms: nothing else "
            "may be sent to someone who has not confirmed",
        )
    if step.confirms and i != 0:
        problem((*here, "confirms"), f"{name}: only the first step can confirm the subscription")
    previous = timedelta(0)
    for r, reminder in enumerate(step.reminders):
        where = (*here, "reminders", r, "after")
        if reminder.after <= previous:
            problem(
                where,
                f"{name}: reminder {r + 1} must come after "
                + ("the step's email" if r == 0 else f"reminder {r}"),
            )
        if reminder.after >= step.wait:
            problem(
                where,
                f"{name}: reminder {r + 1} at {format_duration(reminder.after)} comes "
                f"after the wait of {format_duration(step.wait)} is over; it would never be sent",
            )
        previous = reminder.after


# What a template sees (nurture.mail.render builds exactly this context).
TEMPLATE_NAMES = frozenset({"subscriber", "unsubscribe_url", "base_url", "sequence", "step"})


def _unknown_names(env: jinja2.Environment, tree: Any) -> str | None:
    """A sentence about the names a template uses that its context will never have."""
    unknown = sorted(
        jinja2.meta.find_undeclared_variables(tree) - TEMPLATE_NAMES - set(env.globals)
    )
    if not unknown:
        return None
    names = ", ".join(f"'{n}'" for n in unknown)
    return (
        f"uses {names}, which templates do not have "
        f"(they have: {', '.join(sorted(TEMPLATE_NAMES))})"
    )


def _template_problem(
    env: jinja2.Environment, name: str, *, optional: bool = False, seen: set[str] | None = None
) -> str | None:
    """Compile a template and every template it extends or includes; None when all is well."""
    seen = seen if seen is not None else set()
    if name in seen:
        return None
    seen.add(name)
    assert env.loader is not None
    try:
        source, filename, _ = env.loader.get_source(env, name)
        tree = env.parse(source, name, filename)
    except jinja2.TemplateNotFound:
        if optional:
            return None
        return f"unknown template '{name}' (not found in the templates directory)"
    except jinja2.TemplateSyntaxError as exc:
        return f"template '{name}' has a syntax error at line {exc.lineno}: {exc.message}"
    unknown = _unknown_names(env, tree)
    if unknown:
        return f"template '{name}' {unknown}"
    for ref in jinja2.meta.find_referenced_templates(tree):
        if ref is None:
            continue  # a name computed at render time: nothing to check here
        message = _template_problem(env, ref, seen=seen)
        if message:
            return f"template '{name}' uses {message}" if message.startswith("unknown") else message
    return None


def _check_email(
    env: jinja2.Environment, raw: dict[str, Any], here: Loc, label: str, problem: Any
) -> None:
    """The template exists, is HTML and compiles; the subject compiles."""
    name = raw.get("template")
    if isinstance(name, str):
        where = (*here, "template")
        if not name.endswith((".html", ".htm")):
            problem(
                where,
                f"{label}: template '{name}' must be an HTML file (.html); "
                "its text twin (.txt) is found next to it",
            )
        else:
            twin = name.rsplit(".", 1)[0] + ".txt"
            for template in (name, twin):
                message = _template_problem(env, template, optional=template == twin)
                if message:
                    problem(where, f"{label}: {message}")
    subject = raw.get("subject")
    if isinstance(subject, str):
        try:
            unknown = _unknown_names(env, env.parse(subject))
        except jinja2.TemplateSyntaxError as exc:
            problem(
                (*here, "subject"), f"{label}: the subject is not a valid template: {exc.message}"
            )
        else:
            if unknown:
                problem((*here, "subject"), f"{label}: the subject {unknown}")


def load_catalog(sequences_dir: Path, *, env: jinja2.Environment | None = None) -> Catalog:
    """Load every ``*.yaml``/``*.yml`` file; raise SequenceError listing all problems."""
    problems: list[Problem] = []
    if not sequences_dir.is_dir():
        raise SequenceError(
            [Problem(str(sequences_dir), None, "the sequences directory does not exist")]
        )
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
                Problem(
                    seq.source,
                    seq.line,
                    f"sequence id '{seq.id}' is already used by {sequences[seq.id].source}",
                )
            )
            continue
        sequences[seq.id] = seq
    if problems:
        problems.sort(key=lambda p: (p.file, p.line or 0))
        raise SequenceError(problems)
    return Catalog(sequences)
