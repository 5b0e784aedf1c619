"""Text from outside that nurture may keep: the one check of a value that comes in (a form, the
API, an import, the command line) and of a subject rendered from such values.

Refused: NUL (PostgreSQL cannot store it in text), lone surrogates (half a character: no
UTF-8, no email header, no terminal can carry one), and the control characters, C0, DEL and
C1 (U+0080-U+009F), which a terminal, a mail header or a spreadsheet may take as commands. A
single-line value (a name, an address, any field, a subject) holds no control character at
all, not even a tab or a line break; free text (an event's properties) may hold tabs and line
breaks.
"""

from __future__ import annotations

import re
from typing import Any

from nurture.errors import SubscribeError

__all__ = ["unsafe", "check_text", "check_json"]

_SINGLE_LINE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_FREE_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
# Unprocessable, not malformed: the request was well formed, one value cannot be kept.
STATUS = 422


def unsafe(text: str, *, single_line: bool = True) -> str | None:
    """What makes ``text`` unfit to keep ("holds NUL (U+0000) at character 3; ..."), or None.
    Names the character by its code point only: the message itself must be safe to show."""
    found = (_SINGLE_LINE if single_line else _FREE_TEXT).search(text)
    if found is None:
        return None
    code = ord(found.group())
    if 0xD800 <= code <= 0xDFFF:
        kind = "a lone surrogate"
    elif code == 0:
        kind = "NUL"
    else:
        kind = "a control character"
    rule = (
        "it must be one line of text without control characters"
        if single_line
        else "text may hold tabs and line breaks, no other control characters"
    )
    return f"holds {kind} (U+{code:04X}) at character {found.start() + 1}; {rule}"


def check_text(what: str, text: str, *, single_line: bool = True) -> str:
    """``text`` if it may be kept; else a ``SubscribeError`` (422) naming ``what``."""
    why = unsafe(text, single_line=single_line)
    if why is not None:
        raise SubscribeError(f"{what} {why}", status=STATUS)
    return text


def check_json(what: str, value: Any) -> Any:
    """A JSON value (an event's properties) whose every key and text is free text that may be
    kept; the error names the path to the bad one (``properties.note``)."""
    if isinstance(value, str):
        check_text(what, value, single_line=False)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(what, str(key))
            check_json(f"{what}.{key}", item)
    elif isinstance(value, list):
        for item in value:
            check_json(what, item)
    return value
