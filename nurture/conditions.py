"""Conditions: a step's ``when:``, a Jinja2 expression evaluated for one person at the moment
the step would be sent.

Compiled in the same sandbox class as the templates (no attribute that reaches Python's
internals, the same bounded ``range``), but lenient where templates are strict: a field the
person does not have is undefined, so ``subscriber.plan == 'trial'`` is simply false for
someone without a plan. An expression that fails at run time (comparing an undefined field
with a number, say) is false, and the skip records why.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jinja2

from nurture.mail.sandbox import Sandbox, make_environment

__all__ = ["Conditions", "subscriber_context"]


def subscriber_context(email: str, fields: dict[str, Any], tags: Sequence[str]) -> dict[str, Any]:
    """What templates and conditions see as ``subscriber``."""
    return {**fields, "email": email, "tags": list(tags)}


class Conditions:
    def __init__(self, env: Sandbox | None = None) -> None:
        base = env or make_environment_for_strings()
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
            value = self.compile(source)(subscriber=subscriber)
        except Exception as exc:  # noqa: BLE001 - a condition that cannot be decided is false
            return False, f"when {source!r} could not be evaluated: {type(exc).__name__}: {exc}"
        if isinstance(value, jinja2.Undefined):
            value = False
        return bool(value), f"when {source!r} was {'true' if value else 'false'}"


def make_environment_for_strings() -> Sandbox:
    """A sandbox with no templates directory (conditions need none)."""
    from pathlib import Path

    return make_environment(Path("."))
