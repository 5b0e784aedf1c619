"""What a person is made of, cleaned: their address, their fields (which keep their JSON
types) and their tags, from a form, the API, the CLI or an imported file. A bad value is a
``SubscribeError`` that names it; text that cannot be kept (NUL, a control character, a lone
surrogate: ``nurture.values``) is refused here, the one place every way in passes."""

from __future__ import annotations

import re
from typing import Any

from email_validator import EmailNotValidError, validate_email

from nurture.errors import SubscribeError
from nurture.values import check_text

__all__ = ["normalize_email", "clean_fields", "clean_tags", "TAG", "RESERVED"]

_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}$")
MAX_FIELDS = 50
MAX_FIELD_LENGTH = 1000
MAX_LIST = 100
MAX_TAGS = 50
RESERVED = {"email", "sequence", "tags", "answers"}  # answers: kept by nurture (answers:)


def normalize_email(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SubscribeError("an email address is required")
    check_text("email", value.strip())
    try:
        # SMTPUTF8 addresses (non-ASCII local parts) are refused: most relays cannot deliver
        # them yet. Non-ASCII domains are kept in their ASCII (IDNA) form.
        info = validate_email(value.strip(), check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise SubscribeError(f"{value.strip()!r} is not a valid email address: {exc}") from None
    return str(info.ascii_email or info.normalized).lower()


def _field_value(key: str, value: Any) -> Any:
    """A field keeps its JSON type: text (trimmed), a number, true/false, or a list of those."""
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, list):
        if len(value) > MAX_LIST:
            raise SubscribeError(f"field {key!r} holds more than {MAX_LIST} items")
        items = [_field_value(key, v) for v in value if v is not None]
        if any(isinstance(v, list) for v in items):
            raise SubscribeError(f"field {key!r}: a list of lists is not a field value")
        return items
    if isinstance(value, dict):
        raise SubscribeError(f"field {key!r} must be text, a number, true/false or a list")
    text = str(value).strip()
    if len(text) > MAX_FIELD_LENGTH:
        raise SubscribeError(f"field {key!r} is longer than {MAX_FIELD_LENGTH} characters")
    return check_text(f"field {key!r}", text)


def clean_fields(raw: dict[str, Any]) -> dict[str, Any]:
    fields = {}
    for key, value in raw.items():
        if key in RESERVED:
            continue
        if not isinstance(key, str) or not _FIELD_NAME.fullmatch(key):
            raise SubscribeError(f"field name {key!r} must be letters, digits and '_' (at most 64)")
        if value is None:
            continue
        fields[key] = _field_value(key, value)
    if len(fields) > MAX_FIELDS:
        raise SubscribeError(f"at most {MAX_FIELDS} fields")
    return fields


def clean_tags(raw: Any) -> list[str]:
    """Tags from a list, or from text separated by ';' or ','."""
    if raw is None or raw == "":
        return []
    items = re.split(r"[;,]", raw) if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple):
        raise SubscribeError("tags must be a list, or text separated by ';'")
    tags = sorted({str(t).strip() for t in items if str(t).strip()})
    for tag in tags:
        if not TAG.match(tag):
            raise SubscribeError(
                f"tag {tag!r} may hold only letters, digits, '_', '-', '.' and ':' (at most 64)"
            )
    if len(tags) > MAX_TAGS:
        raise SubscribeError(f"at most {MAX_TAGS} tags")
    return tags
