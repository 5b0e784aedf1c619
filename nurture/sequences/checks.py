"""The rules a sequence file must follow beyond the shape of each key: goto targets that
exist, reminders inside the wait, one confirmation step first, and templates that exist,
compile, and use only what their context has. Each problem is reported with where it is."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import jinja2
import jinja2.meta

from nurture.durations import format_duration
from nurture.sequences.schema import Loc, StepModel

__all__ = ["TEMPLATE_NAMES", "check_goto", "check_step", "check_loops", "check_email"]


def check_goto(raw: dict[str, Any], here: Loc, label: str, ids: list[str], problem: Any) -> None:
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


def check_step(step: StepModel, i: int, count: int, problem: Any) -> None:
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


def check_loops(steps: list[StepModel | None], problem: Any) -> None:
    """Steps that lead back to each other on timeout alone: someone who never answers would
    be emailed round the loop forever. Each step has at most one way on when its wait runs
    out, so following it from every step finds every loop."""
    index = {s.id: i for i, s in enumerate(steps) if s is not None}

    def after(i: int) -> int | None:
        rule = steps[i].on_timeout if steps[i] is not None else "exit"  # type: ignore[union-attr]
        if rule == "next":
            return i + 1 if i + 1 < len(steps) else None
        if isinstance(rule, str):
            return None
        return index.get(rule.goto)

    reported: set[frozenset[int]] = set()
    for start in range(len(steps)):
        path: list[int] = []
        at: int | None = start
        while at is not None and at not in path and steps[at] is not None:
            path.append(at)
            at = after(at)
        if at is None or at not in path:
            continue
        loop = path[path.index(at) :]
        if frozenset(loop) in reported or len(loop) == 1:  # a goto to itself: said already
            continue
        reported.add(frozenset(loop))
        names = " -> ".join(f"'{steps[i].id}'" for i in [*loop, loop[0]])  # type: ignore[union-attr]
        back = loop[-1]
        problem(
            ("steps", back, "on_timeout"),
            f"steps {names} lead back to each other when nobody answers: a silent person "
            "would be emailed round this loop forever; end it with on_timeout: exit on one of "
            "them",
        )


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


def check_email(
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
