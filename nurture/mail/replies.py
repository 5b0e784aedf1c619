"""Whose fault an SMTP refusal is, read from its reply code, its enhanced status code
(RFC 3463) and, where servers give none, its words.

Only a refused *address* is the recipient's fault (5.1.x, 5.2.1 mailbox disabled, the classic
"no such user" texts): that person is bounced. A refused *message* (5.7.x spam or policy,
most other 5xx) is the content's fault: that email fails, the person stays. A refusal of *us*
(relaying denied, a login required or refused, our sender refused, our IP on a block list)
is ours: sending pauses and nobody is suppressed. Anything 4xx is temporary.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

__all__ = ["Fault", "Reply", "classify", "signature", "throttles"]

Stage = Literal["connect", "mail", "rcpt", "data"]


class Fault(StrEnum):
    recipient = "recipient"  # the address is bad for good: bounce the person
    content = "content"  # this message was refused (spam, policy): fail this email
    ours = "ours"  # our relay, login, sender or IP: pause all sending, suppress nobody
    temporary = "temporary"  # try this message again later


@dataclass(frozen=True)
class Reply:
    code: int
    enhanced: str | None  # "5.1.1", when the server gave one
    text: str

    @classmethod
    def parse(cls, code: int, message: str) -> Reply:
        text = " ".join(message.split())
        found = _ENHANCED.match(text)
        if found and found.group(1)[0] == str(code)[0]:
            return cls(code, found.group(1), text[found.end() :].strip())
        return cls(code, None, text)

    def __str__(self) -> str:
        return " ".join(str(x) for x in (self.code, self.enhanced, self.text) if x)


_ENHANCED = re.compile(r"([245]\.\d{1,3}\.\d{1,3})\b")
# Words of the big servers when they refuse us rather than the address or the message.
_OURS = re.compile(
    r"relay(ing)? (access )?(denied|not permitted|prohibited)|not permitted to relay|"
    r"unable to relay|relay not allowed|"
    r"authenticat(e|ion) (is )?required|must (issue a starttls|authenticate)|"
    r"authentication (failed|credentials invalid)|sender address rejected|"
    r"sender (domain )?(not allowed|rejected)|"
    r"block ?list|blocked using|black ?list|listed (at|by|in|on)|spamhaus|spamcop|barracuda|"
    r"\bdnsbl\b|\brbl\b|poor reputation|ip (address )?(is )?(block|ban|not allowed)|"
    r"client host .* blocked|too many (connections|messages) from your ip",
    re.IGNORECASE,
)
# A block list answer that names us (our address, host or IP), not the message's content.
_US = re.compile(
    r"\bip\b|client host|your (ip|host|server|address)|\[\d+\.\d+\.\d+\.\d+\]|"
    r"relay|sender|authenticat",
    re.IGNORECASE,
)
_NO_SUCH_ADDRESS = re.compile(
    r"no such (user|mailbox|recipient|address)|user (unknown|not found|doesn'?t exist)|"
    r"unknown (user|recipient|mailbox)|(mailbox|recipient|address|account) "
    r"(does not exist|doesn'?t exist|not found|unavailable|unknown|disabled|invalid)|"
    r"invalid (recipient|mailbox|address)|recipient (address )?rejected: user unknown|"
    r"no mailbox here|address rejected",
    re.IGNORECASE,
)


def classify(stage: Stage, code: int, message: str) -> Fault:
    """The fault of one refusal at ``stage`` (connect, MAIL FROM, RCPT TO, or DATA)."""
    reply = Reply.parse(code, message)
    ours = bool(_OURS.search(reply.text))
    enhanced = reply.enhanced or ""
    if stage in ("connect", "mail") or code in (530, 535, 538):
        return Fault.ours if code >= 500 or ours else Fault.temporary
    if code < 500:
        # A 4xx block-list answer pauses sending; any other 4xx is this message's, later.
        return Fault.ours if ours and enhanced.startswith("4.7") else Fault.temporary
    if stage == "rcpt" and (enhanced.startswith("5.1.") or enhanced == "5.2.1"):
        return Fault.recipient  # the address, whatever the words ("not listed in ...")
    if ours and stage == "data" and not _US.search(reply.text):
        return Fault.content  # a block list at DATA is about the message (a link in it)
    if ours:
        return Fault.ours
    if enhanced.startswith("5.1.") or enhanced == "5.2.1":
        return Fault.recipient
    if enhanced.startswith("5.7."):
        return Fault.content
    if not enhanced and code in (550, 551, 553) and _NO_SUCH_ADDRESS.search(reply.text):
        return Fault.recipient
    return Fault.content


_SLOW_DOWN = re.compile(
    r"\brate\b|rate limit|too many|throttl|slow down|unusual (rate|volume)|4\.7\.28\b",
    re.IGNORECASE,
)


def throttles(stage: Stage, code: int, message: str) -> bool:
    """Whether a refusal is a receiving domain asking us to slow down: a 421 or 451 once a
    recipient was named (Gmail's "421 4.7.28 ... unusual rate", Microsoft's "451 4.7.500
    server busy"), or another 4xx that says so. Not a refusal of us (``Fault.ours``)."""
    if stage not in ("rcpt", "data") or not 400 <= code < 500:
        return False
    if classify(stage, code, message) is Fault.ours:
        return False
    return code in (421, 451) or bool(_SLOW_DOWN.search(message))


_ADDRESS = re.compile(r"<?[^\s<>@]+@[^\s<>]+>?")
_NUMBER = re.compile(r"\b[0-9a-f]{6,}\b|\b\d+\b", re.IGNORECASE)


def signature(stage: Stage, code: int, message: str) -> str:
    """The same refusal for different people reads the same here: addresses, queue ids and
    numbers are left out (for the circuit breaker)."""
    reply = Reply.parse(code, message)
    text = _NUMBER.sub("#", _ADDRESS.sub("<address>", reply.text)).lower()
    return f"{stage} {code} {reply.enhanced or '-'} {text[:120]}"
