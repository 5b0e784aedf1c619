"""Whose fault an SMTP refusal is, over replies real servers send (texts as Gmail, Microsoft,
Yahoo, Postfix, Exim and Spamhaus-listing servers word them)."""

from __future__ import annotations

import pytest

from nurture.mail.replies import Fault, Reply, classify, signature

CASES = [
    # The address: the person bounces.
    (
        "rcpt",
        550,
        "5.1.1 The email account that you tried to reach does not exist.",
        Fault.recipient,
    ),
    ("rcpt", 550, "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found", Fault.recipient),
    ("rcpt", 554, "5.1.1 <x@y.example>: Recipient address rejected: User unknown", Fault.recipient),
    ("rcpt", 550, "5.2.1 The email account that you tried to reach is disabled.", Fault.recipient),
    ("rcpt", 550, "No such user here", Fault.recipient),
    (
        "rcpt",
        553,
        "sorry, that domain isn't in my list of allowed rcpthosts; no mailbox here",
        Fault.recipient,
    ),
    ("rcpt", 550, "Requested action not taken: mailbox unavailable", Fault.recipient),
    ("data", 550, "5.1.1 user unknown", Fault.recipient),
    ("rcpt", 550, "5.1.1 User not listed in Domino Directory", Fault.recipient),
    # Us: pause sending, suppress nobody.
    (
        "rcpt",
        554,
        "5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org",
        Fault.ours,
    ),
    ("rcpt", 554, "5.7.1 <x@y.example>: Relay access denied", Fault.ours),
    ("rcpt", 550, "5.7.1 Unable to relay", Fault.ours),
    ("rcpt", 530, "5.7.0 Authentication required", Fault.ours),
    (
        "rcpt",
        550,
        "5.7.606 Access denied, banned sending IP [192.0.2.1]. (listed on the block list)",
        Fault.ours,
    ),
    (
        "rcpt",
        421,
        "4.7.0 [192.0.2.1] Our system has detected an unusual rate; IP blocked using dnsbl",
        Fault.ours,
    ),
    ("mail", 553, "5.7.1 Sender address rejected: not owned by user", Fault.ours),
    ("mail", 550, "5.7.1 Client does not have permissions to send as this sender", Fault.ours),
    ("connect", 554, "5.7.1 Access denied", Fault.ours),
    ("connect", 535, "5.7.8 Username and Password not accepted", Fault.ours),
    # The message: this email fails, the person stays.
    ("data", 550, "5.7.1 Message rejected as spam by Content Filtering.", Fault.content),
    ("data", 554, "5.7.1 [P4] Message blocked due to spam content in the message.", Fault.content),
    ("rcpt", 550, "5.7.1 Rejected for policy reasons", Fault.content),
    ("data", 552, "5.3.4 Message size exceeds fixed limit", Fault.content),
    ("data", 554, "5.7.1 Message contains a link listed on the Spamhaus DBL", Fault.content),
    ("data", 554, "5.7.1 Client host [192.0.2.1] blocked using zen.spamhaus.org", Fault.ours),
    ("rcpt", 550, "Administrative prohibition", Fault.content),
    # Later.
    ("rcpt", 451, "4.7.1 Greylisted, please try again in 300 seconds", Fault.temporary),
    (
        "rcpt",
        452,
        "4.2.2 The email account that you tried to reach is over quota.",
        Fault.temporary,
    ),
    ("data", 451, "4.3.0 Temporary system problem", Fault.temporary),
    ("mail", 451, "4.3.0 Mail server temporarily rejected message", Fault.temporary),
    ("rcpt", 421, "4.7.0 Try again later, closing connection.", Fault.temporary),
]


@pytest.mark.parametrize(("stage", "code", "text", "fault"), CASES)
def test_whose_fault(stage: str, code: int, text: str, fault: Fault) -> None:
    assert classify(stage, code, text) is fault  # type: ignore[arg-type]


def test_the_enhanced_code_is_read_from_the_reply() -> None:
    reply = Reply.parse(550, "5.1.1   <ann@example.com>:  no such\nuser")
    assert (reply.enhanced, reply.text) == ("5.1.1", "<ann@example.com>: no such user")
    assert Reply.parse(550, "4.1.1 nonsense class").enhanced is None  # class must match
    assert str(Reply.parse(451, "try later")) == "451 try later"


def test_the_same_refusal_for_different_people_has_one_signature() -> None:
    a = signature("rcpt", 550, "5.1.1 <ann@a.example>: Recipient address rejected (id 8F3A21B9)")
    b = signature("rcpt", 550, "5.1.1 <bob@b.example>: Recipient address rejected (id 11C0FFEE)")
    c = signature("rcpt", 550, "5.7.1 <bob@b.example>: Relay access denied")
    assert a == b != c
