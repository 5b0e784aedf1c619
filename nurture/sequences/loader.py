"""Loading sequence files: YAML -> pydantic models -> frozen domain objects.

Every mistake a marketer can make is reported at once, each as a ``Problem`` with the file, the
line and a plain sentence. Each step is validated on its own, so one broken step never hides
the problems of the others. Nothing here touches the database.
"""

from __future__ import annotations

from datetime import time
from email.utils import getaddresses
from pathlib import Path
from typing import Any, Literal

import jinja2
import yaml
from pydantic import ValidationError

from nurture.errors import Problem, SequenceError
from nurture.sequences.checks import (
    check_asks,
    check_condition,
    check_email,
    check_goto,
    check_loops,
    check_step,
)
from nurture.sequences.model import (
    Answer,
    Catalog,
    PickWinner,
    Reentry,
    Reminder,
    SendWindow,
    Sequence,
    Step,
    Timeout,
    Variant,
)
from nurture.sequences.schema import (
    DAYS,
    GotoModel,
    Loc,
    PickWinnerModel,
    ReenterAfterModel,
    SendWindowModel,
    SequenceModel,
    StepModel,
    clean_loc,
    sentence,
)

__all__ = ["load_catalog", "load_sequence_file", "MAX_FILE_BYTES"]

MAX_FILE_BYTES = 1024 * 1024


def _line_map(node: yaml.Node, source: str, problems: list[Problem]) -> dict[Loc, int]:
    """Map each key path of a YAML document to its 1-based line; report duplicate keys."""
    lines: dict[Loc, int] = {}

    def walk(n: yaml.Node, path: Loc) -> None:
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


def _line_for(lines: dict[Loc, int], loc: Loc) -> int | None:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def _anchor_problem(source: str, text: str) -> Problem | None:
    """Anchors and aliases let a few lines of YAML grow into gigabytes (the "billion laughs"):
    sequence files take none. Read as a stream of events, before anything is built."""
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            anchor = getattr(event, "anchor", None)
            if anchor is None:
                continue
            what = (
                f"alias '*{anchor}'"
                if isinstance(event, yaml.AliasEvent)
                else f"anchor '&{anchor}'"
            )
            return Problem(
                source,
                event.start_mark.line + 1 if event.start_mark else None,
                f"YAML {what}: sequence files take no anchors or aliases (a few lines of them "
                "can grow huge); write the value out where it is used",
            )
    except yaml.YAMLError:
        return None  # the composer below reports it, with its line
    return None


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


def _reentry(model: str | ReenterAfterModel) -> Reentry:
    if isinstance(model, ReenterAfterModel):
        return Reentry("after", model.after)
    return Reentry("always" if model == "always" else "never")


def _window(model: SendWindowModel | None) -> SendWindow | None:
    if model is None:
        return None
    start = time.fromisoformat(model.start)
    end = None if model.end == "24:00" else time.fromisoformat(model.end)
    days = frozenset(DAYS.index(d) for d in model.days)
    return SendWindow(days, start, end, model.spread)


def _pick(model: PickWinnerModel | None) -> PickWinner | None:
    if model is None:
        return None
    return PickWinner(model.after_sent, model.after, model.min_sent)


def _step(s: StepModel, line: int | None) -> Step:
    variants = tuple(Variant(v.id, v.subject, v.template, v.weight) for v in s.variants)
    first = variants[0] if variants else None
    return Step(
        id=s.id,
        # A step with variants shows its first variant wherever one email stands for it.
        subject=first.subject if first else s.subject or "",
        template=first.template if first else s.template or "",
        advance_on=s.advance_on,
        wait=s.wait,
        delay=s.delay,
        reminders=tuple(Reminder(r.after, r.subject, r.template) for r in s.reminders),
        on_timeout=_timeout(s.on_timeout),
        confirms=s.confirms,
        line=line,
        answers=tuple(
            Answer(key, a.goto, a.tags, tuple(sorted(a.set.items())))
            for key, a in s.answers.items()
        ),
        when=s.when,
        events=tuple(s.events),
        variants=variants,
        pick_winner=_pick(s.pick_winner),
        send_window=_window(s.send_window),
    )


def _check_templates(
    env: jinja2.Environment, raw: dict[str, Any], here: Loc, label: str, problem: Any
) -> None:
    variants = raw.get("variants")
    if isinstance(variants, list) and variants:
        for v, variant in enumerate(variants):
            if isinstance(variant, dict):
                which = f"{label}, variant '{variant.get('id', v + 1)}'"
                check_email(env, variant, (*here, "variants", v), which, problem)
    else:
        check_email(env, raw, here, label, problem)
    for r, reminder in enumerate(raw.get("reminders") or []):
        if isinstance(reminder, dict):
            check_email(
                env, reminder, (*here, "reminders", r), f"{label}, reminder {r + 1}", problem
            )
    check_condition(env, raw, here, label, problem)


def load_sequence_file(
    path: Path, *, env: jinja2.Environment | None = None, problems: list[Problem]
) -> Sequence | None:
    """Load one file; append every problem found to ``problems``; None if it cannot be used."""
    source = str(path)
    found = len(problems)

    def problem(loc: Loc, message: str) -> None:
        problems.append(Problem(source, _line_for(lines, loc), message))

    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            problems.append(
                Problem(source, None, f"the file is larger than {MAX_FILE_BYTES // 1024} KiB")
            )
            return None
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(Problem(source, None, f"cannot read the file: {exc}"))
        return None
    refused = _anchor_problem(source, text)
    if refused is not None:
        problems.append(refused)
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

    header: SequenceModel | None = None
    try:
        header = SequenceModel.model_validate(data)
    except ValidationError as exc:
        said: set[str] = set()
        for err in exc.errors():
            loc = clean_loc(tuple(err["loc"]))
            if loc[:1] == ("reenter",):
                if "reenter" in said:  # each branch of the union reports its own error
                    continue
                said.add("reenter")
            problem(loc, sentence(err, loc))
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
                loc = clean_loc(tuple(err["loc"]))
                if loc[:1] == ("on_timeout",):
                    # Each branch of the union reports its own error: say it once.
                    if bad_timeout:
                        continue
                    bad_timeout = True
                problem((*here, *loc), f"{label(i)}: {sentence(err, loc)}")
        if isinstance(raw, dict) and not bad_timeout:
            check_goto(raw, here, label(i), list(first_use), problem)
        if env is not None and isinstance(raw, dict):
            _check_templates(env, raw, here, label(i), problem)

    for i, step in enumerate(steps):
        if step is not None:
            check_step(step, i, len(steps), problem)
            check_asks(step, i, list(first_use), problem)
    check_loops(steps, problem)
    if header is not None and not _address_ok(header.sender):
        problem(
            ("from",), f'from {header.sender!r} is not an address like "Ada <ada@acme.example>"'
        )

    if len(problems) > found or header is None:
        return None
    built = tuple(
        _step(s, _line_for(lines, ("steps", i))) for i, s in enumerate(steps) if s is not None
    )
    return Sequence(
        id=header.id,
        name=header.name,
        sender=header.sender,
        steps=built,
        source=source,
        goals=tuple(header.goals),
        line=_line_for(lines, ("id",)),
        sample=tuple(sorted(header.sample.items())),
        confirmed_elsewhere=header.confirmed_elsewhere,
        reenter=_reentry(header.reenter),
        send_window=_window(header.send_window),
    )


def _silent_holds(sequences: dict[str, Sequence]) -> list[Problem]:
    """Nothing is sent to a person before they confirm (double opt-in). With no confirmation
    step anywhere, everyone who subscribes (POST /subscribe) would be held with nothing sent,
    for ever: a mistake, unless the sequence says its people confirmed elsewhere."""
    if any(step.confirms for seq in sequences.values() for step in seq.steps):
        return []
    return [
        Problem(
            seq.source,
            seq.line,
            f"sequence '{seq.id}': nobody who subscribes can ever get an email here: nothing "
            "is sent before a person confirms (double opt-in) and no sequence has a "
            "confirmation step. Mark the first step `confirms: true` (its email asks for the "
            "click that confirms), or, if everyone enrolled here confirmed elsewhere "
            "(nurture subscribe --confirmed), say `confirmed_elsewhere: true`",
        )
        for seq in sequences.values()
        if not seq.confirmed_elsewhere
    ]


def _address_ok(sender: str) -> bool:
    """Exactly one address, with a local part and a dotted domain."""
    found = getaddresses([sender])
    if len(found) != 1:
        return False
    local, _, domain = found[0][1].partition("@")
    return bool(local) and "." in domain and not domain.startswith(".")


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
    problems += _silent_holds(sequences)
    if problems:
        problems.sort(key=lambda p: (p.file, p.line or 0))
        raise SequenceError(problems)
    return Catalog(sequences)
