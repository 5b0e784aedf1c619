"""The Jinja2 environment marketers' templates run in: sandboxed (no attribute or method that
reaches Python's internals), strict (a name the context lacks is an error, not an empty
string), and bounded, so one template cannot stop the sending for everyone:

- each email's text is at most ``max_bytes`` (2 MB unless configured);
- its rendering takes at most ``seconds`` (checked at every loop turn over ``range`` and at
  every piece of output);
- multiplying a text or a list, or raising to a power, cannot make a huge value.

Past a bound the rendering stops with ``RenderLimit``: that email fails with the reason; the
others go on.
"""

from __future__ import annotations

import contextlib
import contextvars
import operator
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

__all__ = ["Sandbox", "RenderLimit", "Limits", "make_environment"]

MAX_VALUE = 100_000  # items or characters a `*` may make; a `**` exponent's size


class RenderLimit(jinja2.TemplateError):
    """A template went past a bound (size, time, a value too large)."""


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 2 * 1024 * 1024
    seconds: float = 2.0


_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)


def _check_time() -> None:
    deadline = _deadline.get()
    if deadline is not None and time.monotonic() > deadline:
        raise RenderLimit("the template took too long to render (a loop that does not end?)")


def _range(*args: int) -> Iterator[int]:
    """``range`` for templates, watching the time at every turn."""
    if len(range(*args)) > MAX_VALUE:
        raise RenderLimit(f"range() of more than {MAX_VALUE} numbers")
    for i in range(*args):
        _check_time()
        yield i


class Sandbox(SandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        if operator_ == "*":
            for seq, n in ((left, right), (right, left)):
                sized = isinstance(seq, str | list | tuple) and isinstance(n, int)
                if sized and len(seq) * n > MAX_VALUE:
                    raise RenderLimit(f"a value of more than {MAX_VALUE} items or characters")
            return operator.mul(left, right)
        if operator_ == "**":
            if isinstance(right, int | float) and abs(right) > 100:
                raise RenderLimit("an exponent over 100")
            whole = isinstance(left, int) and isinstance(right, int) and right > 1
            if whole and abs(left).bit_length() * right > 64 * MAX_VALUE:
                raise RenderLimit("a power too large to compute")
            return operator.pow(left, right)
        return super().call_binop(context, operator_, left, right)

    @contextlib.contextmanager
    def bounded(self, seconds: float) -> Iterator[None]:
        """Everything run inside (a condition, say) stops with RenderLimit after ``seconds``
        at its next loop turn."""
        token = _deadline.set(time.monotonic() + seconds)
        try:
            yield
        finally:
            _deadline.reset(token)

    def render(self, template: jinja2.Template, context: dict[str, Any], limits: Limits) -> str:
        """Render within the limits; RenderLimit past them."""
        token = _deadline.set(time.monotonic() + limits.seconds)
        try:
            parts: list[str] = []
            size = 0
            for part in template.generate(context):
                size += len(part)
                if size > limits.max_bytes:
                    raise RenderLimit(
                        f"the email would be larger than {limits.max_bytes // 1024} KiB"
                    )
                _check_time()
                parts.append(part)
            return "".join(parts)
        finally:
            _deadline.reset(token)


def make_environment(templates_dir: Path) -> Sandbox:
    env = Sandbox(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        undefined=jinja2.StrictUndefined,
        autoescape=jinja2.select_autoescape(["html", "htm"], default_for_string=False),
        auto_reload=False,
        cache_size=1000,
        keep_trailing_newline=True,
    )
    env.globals["range"] = _range
    return env
