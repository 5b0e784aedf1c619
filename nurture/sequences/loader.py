"""Loading sequence files: YAML -> pydantic models -> frozen domain objects.

Every mistake a marketer can make is reported at once, each as a ``Problem`` with the file, the
line and a plain sentence. One mistake never hides another: each step is validated on its own,
a key found wrong is left out and the rest of its step or file checked all the same, and a file
with problems is still read as far as it can be (a *draft*), so that the checks needing whole
sequences (``nurture.services.load_sequences`` renders every email and evaluates every
condition for the sample subscriber) run on every file, whatever is wrong elsewhere. Nothing
here touches the database.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import time
from email.utils import getaddresses
from pathlib import Path
from typing import Any, Literal, TypeVar

import jinja2
from pydantic import BaseModel, ValidationError

from nurture.errors import Problem, SequenceError
from nurture.sequences.checks import (
    SUBSCRIBER_NAMES,
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
from nurture.sequences.source import MAX_FILE_BYTES, line_for, read_yaml

__all__ = ["Reading", "read_sequences", "load_catalog", "load_sequence_file", "MAX_FILE_BYTES"]

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Reading:
    """What the files gave: every problem found, and each file's sequence as far as it could
    be read (a draft where the file has problems). ``unrendered`` names the steps (file, step
    id) whose emails were found broken already: rendering them would say it again; likewise
    a draft's step whose condition is broken has no ``when``."""

    sequences: tuple[Sequence, ...]
    problems: tuple[Problem, ...]
    unrendered: frozenset[tuple[str, str]] = frozenset()

    def catalog(self, more: Iterable[Problem] = ()) -> Catalog:
        """The sequences of a deployment; SequenceError listing every problem (these and
        ``more``, found on the drafts), by file and line, when there is any."""
        problems = sorted([*self.problems, *more], key=lambda p: (p.file, p.line or 0))
        if problems:
            raise SequenceError(problems)
        return Catalog({s.id: s for s in self.sequences})


@dataclass
class _File:
    """One file as read: its draft (None when there was no mapping to read), the steps not to
    render, whether its id can be trusted, and whether every ``confirms`` and
    ``confirmed_elsewhere`` of it was read (else nobody can say that no sequence confirms)."""

    draft: Sequence | None = None
    unrendered: set[str] = field(default_factory=set)
    id_ok: bool = False
    whole: bool = False


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


def _salvage(
    model: type[M], raw: dict[str, Any], errors: list[Any], fill: dict[str, Any]
) -> tuple[M | None, set[str]]:
    """The model of ``raw`` without the keys found wrong (the required ones among them given
    a stand-in from ``fill``), so that what is right can still be checked; and those keys."""
    dropped = {str(loc[0]) for err in errors if (loc := clean_loc(tuple(err["loc"])))}
    if any(not clean_loc(tuple(err["loc"])) for err in errors):
        return None, dropped  # the whole thing is wrong, not one key
    kept = {k: v for k, v in raw.items() if k not in dropped}
    for key, value in fill.items():
        if key not in kept:
            dropped.add(key)
            kept[key] = value
    try:
        return model.model_validate(kept), dropped
    except ValidationError:
        return None, dropped


def _header(data: dict[str, Any], problem: Any) -> tuple[SequenceModel, set[str]]:
    """The file's top level, with stand-ins for the keys that are wrong or missing."""
    try:
        return SequenceModel.model_validate(data), set()
    except ValidationError as exc:
        errors = exc.errors()
    said: set[str] = set()
    for err in errors:
        loc = clean_loc(tuple(err["loc"]))
        if loc[:1] == ("reenter",):
            if "reenter" in said:  # each branch of the union reports its own error
                continue
            said.add("reenter")
        problem(loc, sentence(err, loc))
    fill = {"id": "_", "name": "_", "from": "", "steps": [None]}
    model, dropped = _salvage(SequenceModel, data, errors, fill)
    assert model is not None  # every key it requires has its stand-in
    return model, dropped


def _step_model(raw: Any, here: Loc, label: str, problem: Any) -> tuple[StepModel | None, set[str]]:
    """One step, each of its mistakes said once; without the keys found wrong when it has
    some (a stand-in ``wait``: the checks of the wait are then left out)."""
    try:
        return StepModel.model_validate(raw), set()
    except ValidationError as exc:
        errors = exc.errors()
    bad_timeout = False
    for err in errors:
        loc = clean_loc(tuple(err["loc"]))
        if loc[:1] == ("on_timeout",):
            # Each branch of the union reports its own error: say it once.
            if bad_timeout:
                continue
            bad_timeout = True
        problem((*here, *loc), f"{label}: {sentence(err, loc)}")
    if not isinstance(raw, dict):
        return None, set()
    model, dropped = _salvage(StepModel, raw, errors, {"wait": "1d"})
    return (None if "id" in dropped else model), dropped


def _check_emails(
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
    reminders = raw.get("reminders")
    for r, reminder in enumerate(reminders if isinstance(reminders, list) else []):
        if isinstance(reminder, dict):
            check_email(
                env, reminder, (*here, "reminders", r), f"{label}, reminder {r + 1}", problem
            )


# Keys that, left out of a step, would make a check of it say something untrue.
_ASKS_NEED = {"advance_on", "events", "variants"}
_RENDER_NEEDS = {"subject", "template", "variants", "answers"}


def load_sequence_file(
    path: Path, *, env: jinja2.Environment | None = None, problems: list[Problem]
) -> Sequence | None:
    """Load one file; append every problem found to ``problems``; None if it cannot be used."""
    found = len(problems)
    read = _read_file(path, env, problems)
    return read.draft if len(problems) == found else None


def _read_file(path: Path, env: jinja2.Environment | None, problems: list[Problem]) -> _File:
    source = str(path)
    read = read_yaml(path, problems)
    if read is None:
        return _File()
    data, lines = read

    def problem(loc: Loc, message: str) -> None:
        problems.append(Problem(source, line_for(lines, loc), message))

    header, header_dropped = _header(data, problem)
    # What a condition may read of the sample subscriber (None: the sample is wrong itself).
    names = None if "sample" in header_dropped else frozenset(header.sample) | SUBSCRIBER_NAMES
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
    dropped: list[set[str]] = []
    sound: list[tuple[bool, bool]] = []  # (its emails, its condition) have no problem so far
    for i, raw in enumerate(raw_steps):
        here: Loc = ("steps", i)
        step, left_out = _step_model(raw, here, label(i), problem)
        steps.append(step)
        dropped.append(left_out)
        if isinstance(raw, dict) and "on_timeout" not in left_out:
            check_goto(raw, here, label(i), list(first_use), problem)
        before = len(problems)
        if env is not None and isinstance(raw, dict):
            _check_emails(env, raw, here, label(i), problem)
        emails_ok = len(problems) == before
        if env is not None and isinstance(raw, dict):
            check_condition(env, raw, here, label(i), problem, names=names)
        sound.append((emails_ok, len(problems) == before))

    for i, step in enumerate(steps):
        if step is not None:
            if "wait" not in dropped[i]:
                check_step(step, i, len(steps), problem)
            if not dropped[i] & _ASKS_NEED:
                check_asks(step, i, list(first_use), problem)
    check_loops(steps, problem)
    if "from" not in header_dropped and not _address_ok(header.sender):
        problem(
            ("from",), f'from {header.sender!r} is not an address like "Ada <ada@acme.example>"'
        )

    # The draft: every step that could be built (the first of two with one id), each email
    # and condition to check against the sample only where none of its problems was said.
    with_sample = "sample" not in header_dropped
    built: list[Step] = []
    unrendered: set[str] = set()
    for i, s in enumerate(steps):
        if s is None or first_use.get(s.id) != i:
            continue
        emails_ok, when_ok = sound[i]
        built_step = _step(s, line_for(lines, ("steps", i)))
        if not (when_ok and with_sample and "when" not in dropped[i]):
            built_step = replace(built_step, when=None)
        has_emails = bool(s.variants) or (s.subject is not None and s.template is not None)
        if not (emails_ok and with_sample and has_emails) or dropped[i] & _RENDER_NEEDS:
            unrendered.add(s.id)
        built.append(built_step)
    draft = Sequence(
        id=header.id,
        name=header.name,
        sender=header.sender,
        steps=tuple(built),
        source=source,
        goals=tuple(header.goals),
        line=line_for(lines, ("id",)),
        sample=tuple(sorted(header.sample.items())),
        confirmed_elsewhere=header.confirmed_elsewhere,
        reenter=_reentry(header.reenter),
        send_window=_window(header.send_window),
    )
    whole = "confirmed_elsewhere" not in header_dropped and all(
        s is not None and "confirms" not in d for s, d in zip(steps, dropped, strict=True)
    )
    return _File(draft, unrendered, "id" not in header_dropped, whole)


def _silent_holds(sequences: Iterable[Sequence]) -> list[Problem]:
    """Nothing is sent to a person before they confirm (double opt-in). With no confirmation
    step anywhere, everyone who subscribes (POST /subscribe) would be held with nothing sent,
    for ever: a mistake, unless the sequence says its people confirmed elsewhere."""
    sequences = list(sequences)
    if any(step.confirms for seq in sequences for step in seq.steps):
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
        for seq in sequences
        if not seq.confirmed_elsewhere
    ]


def _address_ok(sender: str) -> bool:
    """Exactly one address, with a local part and a dotted domain."""
    found = getaddresses([sender])
    if len(found) != 1:
        return False
    local, _, domain = found[0][1].partition("@")
    return bool(local) and "." in domain and not domain.startswith(".")


def read_sequences(sequences_dir: Path, *, env: jinja2.Environment | None = None) -> Reading:
    """Read every ``*.yaml``/``*.yml`` file, as far as each can be read."""
    if not sequences_dir.is_dir():
        problem = Problem(str(sequences_dir), None, "the sequences directory does not exist")
        return Reading((), (problem,))
    files = sorted([*sequences_dir.glob("*.yaml"), *sequences_dir.glob("*.yml")])
    if not files:
        return Reading((), (Problem(str(sequences_dir), None, "no sequence files (*.yaml) found"),))
    problems: list[Problem] = []
    drafts: list[Sequence] = []
    unrendered: set[tuple[str, str]] = set()
    owners: dict[str, str] = {}
    whole = True
    for path in files:
        read = _read_file(path, env, problems)
        whole = whole and read.whole
        seq = read.draft
        if seq is None:
            continue
        if read.id_ok and seq.id in owners:
            problems.append(
                Problem(
                    seq.source,
                    seq.line,
                    f"sequence id '{seq.id}' is already used by {owners[seq.id]}",
                )
            )
        if read.id_ok:
            owners.setdefault(seq.id, seq.source)
        drafts.append(seq)
        unrendered.update((seq.source, step_id) for step_id in read.unrendered)
    if whole:  # with a file or a step unread, nobody can say that none confirms
        problems += _silent_holds(drafts)
    return Reading(tuple(drafts), tuple(problems), frozenset(unrendered))


def load_catalog(sequences_dir: Path, *, env: jinja2.Environment | None = None) -> Catalog:
    """Load every ``*.yaml``/``*.yml`` file; raise SequenceError listing all problems."""
    return read_sequences(sequences_dir, env=env).catalog()
