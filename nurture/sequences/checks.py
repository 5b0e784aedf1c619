"""The rules a sequence file must follow beyond the shape of each key: goto targets that
exist, reminders inside the wait, one confirmation step first, and templates that exist,
compile, and use only what their context has. Each problem is reported with where it is."""

from __future__ import annotations

import difflib
from datetime import timedelta
from typing import Any

import jinja2
import jinja2.meta

from nurture.durations import format_duration
from nurture.sequences.schema import Loc, StepModel

__all__ = [
    "TEMPLATE_NAMES",
    "check_goto",
    "check_step",
    "check_asks",
    "check_loops",
    "check_email",
    "check_condition",
    "fields_read",
    "SUBSCRIBER_NAMES",
]


def check_goto(raw: dict[str, Any], here: Loc, label: str, ids: list[str], problem: Any) -> None:
    """Checked on the raw step, so a typo elsewhere in the step does not hide it (as is the
    subject and template every step without variants needs)."""
    if not raw.get("variants"):
        for key in ("subject", "template"):
            if key not in raw:
                problem(here, f"{label}: missing required key '{key}'")
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


def check_asks(step: StepModel, i: int, ids: list[str], problem: Any) -> None:
    """The newer kinds of ask: variants in place of subject and template, answers that lead
    to steps that exist, events with the advance_on that takes them."""
    here: Loc = ("steps", i)
    name = f"step '{step.id}'"
    if step.variants:
        for key in ("subject", "template"):
            if getattr(step, key) is not None:
                problem(
                    (*here, key),
                    f"{name}: a step with variants takes its {key} from each variant; "
                    f"remove the step's own {key}",
                )
        if len(step.variants) < 2:
            problem((*here, "variants"), f"{name}: an A/B test needs at least two variants")
        seen: set[str] = set()
        for v, variant in enumerate(step.variants):
            if variant.id in seen:
                problem(
                    (*here, "variants", v, "id"), f"{name}: duplicate variant id '{variant.id}'"
                )
            seen.add(variant.id)
    elif step.pick_winner is not None:
        problem((*here, "pick_winner"), f"{name}: pick_winner needs variants")
    rule = step.pick_winner
    if rule is not None and (rule.after_sent is None) == (rule.after is None):
        problem(
            (*here, "pick_winner"),
            f"{name}: pick_winner takes one of after_sent: N or after: DURATION",
        )
    takes = step.advance_on.value.split("_or_")
    if step.answers and "click" not in takes:
        problem(
            (*here, "answers"),
            f"{name}: answers are links to click; advance_on must take a click "
            f"(got {step.advance_on.value})",
        )
    if step.answers and step.confirms:
        problem((*here, "answers"), f"{name}: a confirmation step cannot have answers")
    for answer_id, answer in step.answers.items():
        where = (*here, "answers", answer_id)
        if answer.goto is not None and answer.next:
            problem(where, f"{name}: answer '{answer_id}' takes goto or next, not both")
        elif answer.goto is not None and answer.goto not in ids:
            problem(
                (*where, "goto"),
                f"{name}: answer '{answer_id}' goes to step '{answer.goto}', which this "
                f"sequence does not have (steps: {', '.join(ids)})",
            )
        elif answer.goto == step.id:
            problem((*where, "goto"), f"{name}: answer '{answer_id}' cannot go to the step itself")
    if "event" in takes and not step.events:
        problem(
            (*here, "events"),
            f"{name}: advance_on {step.advance_on.value} needs the events that say yes "
            "(events: [trial_started])",
        )
    if step.events and "event" not in takes:
        problem(
            (*here, "events"),
            f"{name}: events are an ask only with advance_on: event, click_or_event, "
            f"reply_or_event or click_or_reply_or_event (got {step.advance_on.value})",
        )
    if step.when is not None and step.confirms:
        problem((*here, "when"), f"{name}: the confirmation step is for everyone; no when:")


def check_condition(
    env: jinja2.Environment,
    raw: dict[str, Any],
    here: Loc,
    label: str,
    problem: Any,
    *,
    names: frozenset[str] | None = None,
) -> None:
    """A step's ``when:`` compiles, uses only what a condition sees (the subscriber), and
    reads only the ``names`` the sequence's sample subscriber has (None: unknown, unchecked):
    a name no one has (a typo) would skip the step for everyone, silently."""
    source = raw.get("when")
    if source is None:
        return
    if not isinstance(source, str) or not source.strip():
        problem(
            (*here, "when"),
            f"{label}: when must be an expression, e.g. \"'pro' in subscriber.tags\"",
        )
        return
    try:
        tree = env.parse("{{ (" + source + ") }}")
    except jinja2.TemplateSyntaxError as exc:
        problem(
            (*here, "when"), f"{label}: when {source!r} is not a valid expression: {exc.message}"
        )
        return
    try:
        unknown = sorted(jinja2.meta.find_undeclared_variables(tree) - {"subscriber"})
    except jinja2.TemplateError as exc:  # an unknown filter or test
        problem((*here, "when"), f"{label}: when {source!r}: {exc}")
        return
    for name in unknown:
        hint = (
            f"did you mean subscriber.{name}?"
            if names is not None and name in names
            else _did_you_mean(name, ["subscriber"])
        )
        problem(
            (*here, "when"),
            f"{label}: when uses '{name}'; a condition sees only subscriber (its fields, "
            f"subscriber.tags and subscriber.email)" + (f"; {hint}" if hint else ""),
        )
    if unknown:
        return
    try:
        env.compile_expression(source)  # unknown filters and tests fail here
    except jinja2.TemplateError as exc:
        problem((*here, "when"), f"{label}: when {source!r}: {exc}")
        return
    if names is None:
        return
    for name in sorted(fields_read(tree) - names):
        hint = _did_you_mean(name, sorted(names))
        problem(
            (*here, "when"),
            f"{label}: when reads subscriber.{name}, but '{name}' is not a field of the sample "
            "subscriber; add it to sample: if people have it"
            + (f", or {hint}" if hint else f" (the sample has: {', '.join(sorted(names))})"),
        )


# What every subscriber has besides their fields: nurture.conditions.subscriber_context gives
# email and tags, and nurture keeps the answers they gave as the field ``answers``.
SUBSCRIBER_NAMES = frozenset({"email", "tags", "answers"})


def fields_read(tree: jinja2.nodes.Node) -> set[str]:
    """The names an expression reads of ``subscriber`` (subscriber.plan, subscriber['plan']);
    a method called on it (subscriber.get('plan')) is no name."""
    nodes = jinja2.nodes
    called = {id(call.node) for call in tree.find_all(nodes.Call)}
    found: set[str] = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        assert isinstance(node, nodes.Getattr | nodes.Getitem)
        if not (isinstance(node.node, nodes.Name) and node.node.name == "subscriber"):
            continue
        if isinstance(node, nodes.Getattr) and id(node) not in called:
            found.add(node.attr)
        elif (
            isinstance(node, nodes.Getitem)
            and isinstance(node.arg, nodes.Const)
            and isinstance(node.arg.value, str)
        ):
            found.add(node.arg.value)
    return found


def _did_you_mean(name: str, names: list[str]) -> str | None:
    close = difflib.get_close_matches(name, names, n=1)
    return f"did you mean '{close[0]}'?" if close else None


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
