"""The marketer's contract: the keys a sequence file may have, as pydantic models (extra
keys forbidden: a typo is an error), and each validation error as a plain sentence."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from nurture.durations import parse_duration
from nurture.sequences.model import AdvanceOn

__all__ = [
    "Loc",
    "StepModel",
    "SequenceModel",
    "GotoModel",
    "AnswerModel",
    "VariantModel",
    "PickWinnerModel",
    "ReenterAfterModel",
    "SendWindowModel",
    "DAYS",
    "clean_loc",
    "path_text",
    "sentence",
]

Loc = tuple[str | int, ...]


def _duration(value: Any) -> timedelta:
    return parse_duration(value)


Duration = Annotated[timedelta, BeforeValidator(_duration)]
StepId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", max_length=64)]
Tag = Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$", max_length=64)]
FieldName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
Scalar = str | int | float | bool


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ReminderModel(_Model):
    after: Duration
    subject: str | None = None  # None: "Re: " + the subject of the person's email (variant)
    template: str | None = None  # None: the template of the person's email (variant)


class GotoModel(_Model):
    goto: StepId


class AnswerModel(_Model):
    goto: StepId | None = None
    next: Literal[True] | None = None
    tag: Tag | list[Tag] = []
    set: dict[FieldName, Scalar] = {}

    @property
    def tags(self) -> tuple[str, ...]:
        return (self.tag,) if isinstance(self.tag, str) else tuple(self.tag)


class VariantModel(_Model):
    id: StepId
    subject: str
    template: str
    weight: int = Field(default=1, ge=1, le=1000)


class PickWinnerModel(_Model):
    after_sent: int | None = Field(default=None, ge=2)
    after: Duration | None = None
    min_sent: int | None = Field(default=None, ge=1)


class ReenterAfterModel(_Model):
    after: Duration


Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
DAYS: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME = r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$"


class SendWindowModel(_Model):
    days: list[Day] = Field(default=list(DAYS), min_length=1)
    start: str = Field(alias="from", pattern=_TIME)
    end: str = Field(alias="to", pattern=_TIME)
    spread: Duration = timedelta(minutes=10)

    @model_validator(mode="after")
    def _ordered(self) -> SendWindowModel:
        if self.end != "24:00" and self.end <= self.start:
            raise ValueError(
                f"to ({self.end}) must be later than from ({self.start}) on the same day"
            )
        return self


def _anytime(value: Any) -> Any:
    # A step's ``send_window: anytime`` (whatever its sequence says) is the whole week.
    return {"from": "00:00", "to": "24:00", "spread": 0} if value == "anytime" else value


Window = Annotated[SendWindowModel, BeforeValidator(_anytime)]


class StepModel(_Model):
    id: StepId
    subject: str | None = None  # required, except with variants (each has its own)
    template: str | None = None
    advance_on: AdvanceOn = AdvanceOn.click
    wait: Duration
    delay: Duration = timedelta(0)
    reminders: list[ReminderModel] = []
    on_timeout: Literal["exit", "next"] | GotoModel = "exit"
    confirms: bool = False
    answers: dict[StepId, AnswerModel] = {}
    when: str | None = None
    events: list[Tag] = []
    variants: list[VariantModel] = []
    pick_winner: PickWinnerModel | None = None
    send_window: Window | None = None


class SequenceModel(_Model):
    """The file's top level; each step is validated on its own so that one broken step does
    not hide the problems of the others."""

    id: StepId
    name: str
    sender: str = Field(alias="from")
    steps: list[Any] = Field(min_length=1)
    goals: list[str] = []
    sample: dict[FieldName, Scalar | list[str]] = {"first_name": "Ada"}
    confirmed_elsewhere: bool = False
    reenter: Literal["never", "always"] | ReenterAfterModel = "never"
    send_window: SendWindowModel | None = None


def clean_loc(loc: Loc) -> Loc:
    # pydantic names union branches in loc ("GotoModel", "literal['exit','next']"): drop them.
    return tuple(p for p in loc if not (isinstance(p, str) and (p[:1].isupper() or "[" in p)))


def path_text(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def sentence(err: Any, loc: Loc) -> str:
    """One pydantic error as a sentence; ``loc`` is relative to the step or the file."""
    kind = err["type"]
    name = path_text(loc)
    parent = path_text(loc[:-1])
    if loc and loc[0] == "on_timeout" and kind != "extra_forbidden":
        return f"on_timeout must be exit, next or {{goto: STEP_ID}} (got {err.get('input')!r})"
    if loc and loc[0] == "reenter" and kind != "extra_forbidden":
        return f"reenter must be never, always or {{after: DURATION}} (got {err.get('input')!r})"
    if "send_window" in loc and kind == "string_pattern_mismatch":
        return f'{name} must be a time like "09:00" (got {err.get("input")!r})'
    if loc[-1:] == ("send_window",) and kind == "model_type":
        return (
            f'{name} must be anytime or {{days: [mon, ...], from: "09:00", to: "17:30"}} '
            f"(got {err.get('input')!r})"
        )
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
