"""The error hierarchy: everything nurture raises on purpose derives from ``NurtureError``."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "NurtureError",
    "ConfigError",
    "DatabaseError",
    "SequenceError",
    "Problem",
    "SendError",
    "TemporarySendError",
    "PermanentSendError",
    "TokenError",
    "SubscribeError",
]


class NurtureError(Exception):
    """Base of every error nurture raises on purpose."""


class ConfigError(NurtureError):
    """A setting has a bad value; the message names the variable."""


class DatabaseError(NurtureError):
    """The database cannot be reached, its URL cannot be read, or its schema is not current;
    the message names the database (never its password)."""


@dataclass(frozen=True)
class Problem:
    """One mistake in a marketer's file, with where it is."""

    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"


class SequenceError(NurtureError):
    """One or more problems in sequence files or templates."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class SendError(NurtureError):
    """Sending failed; the dispatcher asks what kind (nurture.mail.send) and the server's code.
    ``signature`` names the refusal without the address, so that the same refusal for many
    people can be told (the circuit breaker). ``throttled``: the recipient's server asked us
    to slow down (domain pacing)."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        self.code = code
        self.signature: str | None = None
        self.throttled = False
        super().__init__(message)


class TemporarySendError(SendError):
    """Try again later (4xx, connection refused, timeout)."""


class PermanentSendError(SendError):
    """The recipient will never accept this (5xx for the recipient)."""


class TokenError(NurtureError):
    """A token is forged, truncated or of the wrong kind."""


class SubscribeError(NurtureError):
    """A subscribe request was refused; the message is for the person who made it."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        self.status = status
        super().__init__(message)


class SubscribeRefused(SubscribeError):
    """Nobody is enrolled: the address left (unsubscribed, bounced, complained) or the sequence
    takes nobody back. ``str()`` is the reason, for operators (the CLI, the log);
    ``public`` says nothing about the address, for the form and the public API."""

    public = (
        "We did not subscribe this address. If you think that is a mistake, write to us "
        "from it and we will sort it out."
    )

    def __init__(self, message: str) -> None:
        super().__init__(message, status=409)
