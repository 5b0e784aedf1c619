"""Conditions: a step's ``when:``, a Jinja2 expression evaluated for one person at the moment
the step would be sent.

Compiled in the same sandbox class as the templates (no attribute that reaches Python's
internals, the same bounded ``range``), but lenient where templates are strict: a field the
person does not have is undefined, so ``subscriber.plan == 'trial'`` is simply false for
someone without a plan. An expression that fails at run time (comparing an undefined field
with a number, say) is false, and the skip records why.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Sequence as Seq
from pathlib import Path
from typing import Any

import jinja2

from nurture.errors import Problem
from nurture.mail.sandbox import Sandbox, make_environment
from nurture.sequences import Sequence

__all__ = ["Conditions", "subscriber_context", "sample_person", "condition_problems"]


def subscriber_context(email: str, fields: dict[str, Any], tags: Seq[str]) -> dict[str, Any]:
    """What templates and conditions see as ``subscriber``."""
    return {**fields, "email": email, "tags": list(tags)}


class Conditions:
    def __init__(self, env: Sandbox | None = None) -> None:
        base = env or make_environment_for_strings()
        self._base = base
        self.seconds = 1.0  # a condition that takes longer is false, with that reason
        self._env = base.overlay(undefined=jinja2.ChainableUndefined)
        self._compiled: dict[str, Any] = {}

    def compile(self, source: str) -> Any:
        found = self._compiled.get(source)
        if found is None:
            found = self._compiled[source] = self._env.compile_expression(source)
        return found

    def holds(self, source: str, subscriber: dict[str, Any]) -> tuple[bool, str]:
        """Whether the expression is true for this subscriber, and a sentence saying so."""
        try:
            with self._base.bounded(self.seconds):
                value = self.compile(source)(subscriber=subscriber)
        except Exception as exc:  # noqa: BLE001 - a condition that cannot be decided is false
            return False, f"when {source!r} could not be evaluated: {type(exc).__name__}: {exc}"
        if isinstance(value, jinja2.Undefined):
            value = False
        return bool(value), f"when {source!r} was {'true' if value else 'false'}"


def sample_person(sequence: Sequence) -> tuple[dict[str, Any], list[str]]:
    """The fields and tags of a sequence's sample subscriber (``sample:``; its ``tags`` a
    list, or text separated by ';')."""
    fields: dict[str, Any] = dict(sequence.sample)
    given = fields.pop("tags", [])
    if isinstance(given, str):
        return fields, [t for t in given.split(";") if t]
    return fields, [str(t) for t in given] if isinstance(given, list) else []


def condition_problems(sequences: Iterable[Sequence], conditions: Conditions) -> list[Problem]:
    """Every ``when:`` evaluated for its sequence's sample subscriber: one that cannot be
    evaluated at all (a text field compared with a number, a filter that fails) would skip
    its step for everyone, so it is a problem now, with the step's line. Whether it is true
    or false for the sample is not. (A name the sample lacks is the loader's problem.)"""
    out = []
    for sequence in sequences:
        fields, tags = sample_person(sequence)
        person = subscriber_context("sample@example.com", fields, tags)
        for step in sequence.steps:
            if step.when is None:
                continue
            _, why = conditions.holds(step.when, person)
            if "could not be evaluated" in why:
                out.append(
                    Problem(
                        sequence.source,
                        step.line,
                        f"step '{step.id}': {why}, for the sample subscriber {fields}: it "
                        "would skip the step for everyone like them; values from a form or an "
                        "import are text (compare numbers as subscriber.seats | int > 5), "
                        "and sample: should hold values such as people have",
                    )
                )
    return out


def make_environment_for_strings() -> Sandbox:
    """A sandbox with no templates directory (conditions need none)."""
    return make_environment(Path("."))
