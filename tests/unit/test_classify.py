"""nurture.mail.classify against a corpus of inbound messages shaped like what the big mail
systems really send (tests/data/inbound/*.eml): people's replies from the common clients,
out-of-office and other automatic answers, delivery failures and delays, abuse reports.

Every corpus file has one row in CASES. The kind is checked on its own (test_kind) and the
details (return date, addresses, Message-IDs, complainant, which signal fired) separately
(test_details), so that a defect in one does not hide the other.
"""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass
from datetime import date
from email.message import EmailMessage

import pytest
from support.paths import DATA

from nurture.mail.classify import Classification, InboundKind, classify, find_return_date

INBOUND = DATA / "inbound"
TODAY = date(2026, 1, 5)  # a Monday; the corpus messages arrive on the 5th and 6th


@dataclass(frozen=True)
class Case:
    file: str
    kind: InboundKind
    return_date: date | None = None
    permanent: tuple[str, ...] = ()
    temporary: tuple[str, ...] = ()
    original_id: str | None = None  # our Message-ID enclosed in the report; None: expect none
    complainant: str | None = None
    reason: str | None = None  # a case-insensitive part of Classification.reason


OURS = "@acme.example>"  # the right-hand side of nurture's Message-IDs in the corpus
J = 1  # January 2026, the month of every return date below


def d(day: int) -> date:
    return date(2026, J, day)


# Expected values read from each file by hand (its body, its report fields), not from the code.
CASES = [
    # People's replies: never automatic, whatever the client, charset or subject.
    Case("human-gmail-quoted.eml", InboundKind.human, reason="person"),
    Case("human-outlook-desktop-thread-index.eml", InboundKind.human),
    Case("human-outlook-ios-html-only.eml", InboundKind.human),
    Case("human-apple-mail-flowed-base64.eml", InboundKind.human),
    Case("human-thunderbird-windows1252-qp.eml", InboundKind.human),
    Case("human-iso2022jp-becky.eml", InboundKind.human),
    Case("human-koi8r-the-bat.eml", InboundKind.human),
    Case("human-one-line-yes.eml", InboundKind.human),
    Case("human-re-out-of-office-guide.eml", InboundKind.human),
    Case("human-ios-mail-no-references.eml", InboundKind.human),
    # Automatic answers, with the return date their text names.
    Case("auto-exchange-online-ooo-en.eml", InboundKind.auto_reply, d(14), reason="auto-submitted"),
    Case("auto-exchange-online-automatische-antwort-de.eml", InboundKind.auto_reply, d(19)),
    Case("auto-exchange-ooo-street-address-signature.eml", InboundKind.auto_reply, d(12)),
    Case(
        "auto-exchange2013-abwesenheitsnotiz-de.eml",
        InboundKind.auto_reply,
        d(14),
        reason="x-ms-exchange-inbox-rules-loop",
    ),
    Case("auto-gmail-vacation-responder.eml", InboundKind.auto_reply, d(12), reason="auto-replied"),
    # Answers with nothing but their subject (issue 8.7: each of these advanced people).
    Case("auto-libero-risposta-automatica-it.eml", InboundKind.auto_reply, reason="risposta"),
    Case("auto-kpn-automatisch-antwoord-nl.eml", InboundKind.auto_reply, reason="automatisch"),
    Case("auto-uol-resposta-automatica-pt.eml", InboundKind.auto_reply, reason="resposta"),
    Case("auto-outlook-automatiskt-svar-sv.eml", InboundKind.auto_reply, reason="automatiskt"),
    Case("auto-onet-automatyczna-odpowiedz-pl.eml", InboundKind.auto_reply, reason="automatyczna"),
    Case("auto-japanese-jidou-outou-iso2022jp.eml", InboundKind.auto_reply, reason="自動応答"),
    Case("auto-chinese-zidong-huifu-gb2312.eml", InboundKind.auto_reply, reason="自动回复"),
    Case("auto-lotus-notes-auto-prefix.eml", InboundKind.auto_reply, d(12), reason="auto:"),
    Case(
        "auto-suppress-only-re-subject-en.eml",
        InboundKind.auto_reply,
        d(12),
        reason="x-auto-response-suppress",
    ),
    Case("auto-sieve-reponse-automatique-fr.eml", InboundKind.auto_reply, d(14)),
    Case(
        "auto-outlook-client-rule-respuesta-automatica-es.eml",
        InboundKind.auto_reply,
        d(14),
        reason="subject",
    ),
    Case("auto-x-autoreply-yes.eml", InboundKind.auto_reply, d(19), reason="x-autoreply"),
    Case(
        "auto-helpdesk-precedence-bulk-no-date.eml",
        InboundKind.auto_reply,
        None,
        reason="precedence: bulk",
    ),
    Case("auto-empty-return-path-only.eml", InboundKind.auto_reply, d(20), reason="return-path"),
    Case("auto-zimbra-ooo-ordinal-of-month.eml", InboundKind.auto_reply, d(14)),
    # Permanent failures: who failed, and our Message-ID inside the report.
    Case(
        "bounce-postfix-dsn-5.1.1-rfc822.eml",
        InboundKind.bounce,
        permanent=("ann@example.com",),
        original_id="<1042.7c3f9a2b5d8e1f04@acme.example>",
    ),
    Case(
        "bounce-postfix-remote-alias-rfc822-headers.eml",
        InboundKind.bounce,
        permanent=("bob@example.net",),
        original_id="<1045.d4e6f8a0b2c4d6e8@acme.example>",
    ),
    Case(
        "bounce-exim-mail-delivery-failed.eml",
        InboundKind.bounce,
        permanent=("carla@example.org",),
        original_id="<1046.0b2d4f6a8c0e2d4f@acme.example>",
    ),
    Case(
        "bounce-office365-ndr-5.1.10.eml",
        InboundKind.bounce,
        permanent=("dave@northwind.example",),
        original_id="<1063.8a0c2e4f6b8d0a35@acme.example>",
    ),
    Case(
        "bounce-gmail-dsn-failure.eml",
        InboundKind.bounce,
        permanent=("erin@example.com",),
        original_id="<1064.2e4a6c8f0b2d4e79@acme.example>",
    ),
    Case(
        "bounce-qmail-failure-notice.eml",
        InboundKind.bounce,
        permanent=("frank@example.net",),
        original_id="<1065.4c6e8a0b2d4f6a81@acme.example>",
    ),
    # Delays: temporary only (the Exim warning names our message only in References).
    Case(
        "delay-postfix-delayed-mail-warning.eml",
        InboundKind.delay,
        temporary=("gina@example.com",),
        original_id="<1066.6e8a0c2d4f6b8a93@acme.example>",
    ),
    Case(
        "delay-office365-delivery-delayed.eml",
        InboundKind.delay,
        temporary=("hank@example.org",),
        original_id="<1067.8b0d2f4a6c8e0b15@acme.example>",
    ),
    Case(
        "delay-exim-warning-delayed-24-hours.eml", InboundKind.delay, temporary=("ivy@example.com",)
    ),
    # Abuse reports: the complainant (no angle brackets) and our message.
    Case(
        "complaint-yahoo-arf.eml",
        InboundKind.complaint,
        complainant="ann@example.com",
        original_id="<1069.1d3f5a7c9e1b3d59@acme.example>",
        reason="arf abuse",
    ),
    Case(
        "complaint-microsoft-jmrp-arf.eml",
        InboundKind.complaint,
        complainant="ann@example.com",
        original_id="<1070.3f5a7c9e1b3d5f71@acme.example>",
    ),
    Case(
        "complaint-rfc5965-minimal.eml",
        InboundKind.complaint,
        complainant="ann@example.com",
        original_id="<1071.5a7c9e1b3d5f7a93@acme.example>",
    ),
    Case(
        "complaint-redacted-rfc822-headers.eml",
        InboundKind.complaint,
        complainant=None,
        original_id="<1072.7c9e1b3d5f7a9cb5@acme.example>",
    ),
]


def _params() -> list[object]:
    return [pytest.param(case, id=case.file) for case in CASES]


def _classify(file: str) -> Classification:
    msg = email.message_from_bytes((INBOUND / file).read_bytes(), policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return classify(msg, today=TODAY)


@pytest.mark.parametrize("case", _params())
def test_kind(case: Case) -> None:
    assert _classify(case.file).kind is case.kind


@pytest.mark.parametrize("case", _params())
def test_details(case: Case) -> None:
    got = _classify(case.file)
    assert got.return_date == case.return_date
    assert got.permanent == case.permanent
    assert got.temporary == case.temporary
    if case.original_id is None:
        assert got.original_ids == ()
    else:
        assert case.original_id in got.original_ids
        assert all(i.endswith(OURS) for i in got.original_ids), got.original_ids
    assert got.complainant == case.complainant
    if case.reason is not None:
        assert case.reason in got.reason.lower(), got.reason


def test_every_corpus_file_is_in_the_table() -> None:
    listed = [case.file for case in CASES]
    assert len(listed) == len(set(listed)), "a file is listed twice"
    on_disk = {path.name for path in INBOUND.glob("*.eml")}
    assert on_disk - set(listed) == set(), "corpus files without a row in CASES"
    assert set(listed) - on_disk == set(), "rows in CASES without a corpus file"


def test_the_corpus_covers_every_class() -> None:
    counts = {kind: sum(case.kind is kind for case in CASES) for kind in InboundKind}
    assert counts[InboundKind.human] >= 8
    assert counts[InboundKind.auto_reply] >= 9
    assert counts[InboundKind.bounce] >= 5
    assert counts[InboundKind.delay] >= 2
    assert counts[InboundKind.complaint] >= 3


# -- find_return_date ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("I will be back on 14 January 2026.", date(2026, 1, 14), id="en-day-month"),
        pytest.param("Back on Jan. 9, see you then", date(2026, 1, 9), id="en-abbrev-no-year"),
        pytest.param("ab dem 14.01.2026 wieder erreichbar", date(2026, 1, 14), id="de-numeric"),
        pytest.param("ab dem 7. Januar wieder im Büro", date(2026, 1, 7), id="de-no-year"),
        pytest.param("de retour le 1er février", date(2026, 2, 1), id="fr-1er-no-year"),
        pytest.param("regreso el 14 de enero de 2026", date(2026, 1, 14), id="es-de-de"),
        pytest.param(
            "away from 22 December 2025 until 9 January 2026",
            date(2026, 1, 9),
            id="past-start-ignored",
        ),
        pytest.param(
            "out 12 January 2026 to 16 January 2026 (back on the 19.01.2026)",
            date(2026, 1, 19),
            id="latest-date-wins",
        ),
        # A year-less date already past this year is next year's, beyond the horizon.
        pytest.param("I was back on January 2nd", None, id="yearless-past-rolls-over"),
        pytest.param("on sabbatical until 30 June 2026", None, id="beyond-horizon"),
        pytest.param("I am back today, 5 January 2026", None, id="today-is-not-after-today"),
        pytest.param("I am out of the office with no access to email.", None, id="no-date"),
        pytest.param(
            "Ich bin ab dem 14.01. wieder erreichbar.",
            date(2026, 1, 14),
            id="de-numeric-no-year",
        ),
        pytest.param(
            "Je serai de retour le 14/01/2026.",
            date(2026, 1, 14),
            id="fr-slash-date",
        ),
        pytest.param("I'm back on 01/14/2026.", date(2026, 1, 14), id="us-slash-day-over-12"),
        pytest.param(
            "Out until 01/12/2026. Re: your message sent on 1/5/2026 9:00:12 AM.",
            date(2026, 1, 12),
            id="us-slash-shown-by-todays-date",
        ),
        pytest.param("Back 09/01/2026", date(2026, 1, 9), id="ambiguous-slash-is-day-first"),
        pytest.param(
            "I'm back on the 14th of January.",
            date(2026, 1, 14),
            id="en-ordinal-of-month",
        ),
        pytest.param(
            "Back on 12 January 2026.\nNorthwind Ltd, 4 Market Square, Exampleton",
            date(2026, 1, 12),
            id="street-name-starting-with-a-month",
        ),
    ],
)
def test_find_return_date(text: str, expected: date | None) -> None:
    assert find_return_date(text, today=TODAY) == expected
