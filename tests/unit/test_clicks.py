"""The click verdicts on their own: no database, no network."""

from __future__ import annotations

from datetime import timedelta

import pytest
from support.clock import T0

from nurture.clicks import ClickFacts, ClickPolicy, Verdict, decide, first_look

POLICY = ClickPolicy()


def facts(**kw: object) -> ClickFacts:
    values: dict[str, object] = {
        "method": "GET",
        "user_agent": "Mozilla/5.0 (Macintosh) AppleWebKit/605.1.15 Safari/605.1.15",
        "has_browser_headers": True,
        "sent_at": T0,
        "at": T0 + timedelta(minutes=2),
        "honeypot": False,
        "ip": "203.0.113.9",
    }
    values.update(kw)
    return ClickFacts(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"method": "HEAD"}, "HEAD request"),
        ({"prefetch": True}, "prefetch request"),
        ({"honeypot": True}, "honeypot link"),
        (
            {"user_agent": "Mozilla/5.0 (compatible; Barracuda Link Protection)"},
            "scanner user agent",
        ),
        ({"user_agent": "python-requests/2.31"}, "scanner user agent"),
        ({"ip": "40.92.3.4", "at": T0 + timedelta(seconds=30)}, "scanner network"),
        ({"ip": "2a01:111:f400::1", "at": T0 + timedelta(seconds=30)}, "scanner network"),
        ({"ip": "40.92.3.4", "has_browser_headers": False}, "scanner network"),
    ],
)
def test_hard_evidence_is_bot_at_once(changes: dict[str, object], reason: str) -> None:
    assert first_look(facts(**changes), POLICY) == (Verdict.bot, [reason])


def test_a_person_waits_for_the_window_with_no_suspicion() -> None:
    assert first_look(facts(), POLICY) == (Verdict.pending, [])
    assert decide([], links_in_window=1, honeypot_in_window=False, policy=POLICY) == (
        Verdict.human,
        [],
    )


def test_one_soft_signal_is_a_quick_person_two_are_a_machine() -> None:
    fast = facts(at=T0 + timedelta(seconds=3))
    verdict, reasons = first_look(fast, POLICY)
    assert (verdict, reasons) == (Verdict.pending, ["seconds after sending"])
    assert decide(reasons, links_in_window=1, honeypot_in_window=False, policy=POLICY)[0] is (
        Verdict.human
    )
    both = facts(at=T0 + timedelta(seconds=3), has_browser_headers=False, ip="not an ip")
    verdict, reasons = first_look(both, POLICY)
    assert reasons == ["seconds after sending", "no browser headers"]
    assert decide(reasons, links_in_window=1, honeypot_in_window=False, policy=POLICY)[0] is (
        Verdict.bot
    )


def test_what_happened_in_the_window_decides() -> None:
    assert decide([], links_in_window=3, honeypot_in_window=False, policy=POLICY)[0] is Verdict.bot
    assert decide([], links_in_window=2, honeypot_in_window=False, policy=POLICY)[0] is (
        Verdict.human
    )
    assert decide([], links_in_window=1, honeypot_in_window=True, policy=POLICY)[0] is Verdict.bot


def test_the_network_lookup_agrees_with_every_listed_network() -> None:
    import ipaddress

    from nurture.clicks import _from_scanner_network, scanner_networks

    for net in scanner_networks():
        first, last = net.network_address, net.broadcast_address
        assert _from_scanner_network(str(first)) and _from_scanner_network(str(last))
        for near in (int(first) - 1, int(last) + 1):
            if near < 0 or near >= 2**net.max_prefixlen:
                continue
            outside = ipaddress.ip_address(near)
            expected = any(outside in other for other in scanner_networks())
            assert _from_scanner_network(str(outside)) is expected, outside
    assert not _from_scanner_network("203.0.113.7") and not _from_scanner_network("not an ip")


def test_a_person_behind_browser_isolation_is_judged_on_the_rest() -> None:
    """Proofpoint/Mimecast isolation: the vendor's address, a full browser, minutes after
    delivery: pending for the window, then human unless something else says machine."""
    late = facts(ip="40.92.3.4", at=T0 + timedelta(minutes=3))
    assert first_look(late, POLICY) == (Verdict.pending, ["scanner network"])
    verdict, _ = decide(
        ["scanner network"], links_in_window=1, honeypot_in_window=False, policy=POLICY
    )
    assert verdict is Verdict.human
    walked, _ = decide(
        ["scanner network"], links_in_window=3, honeypot_in_window=False, policy=POLICY
    )
    assert walked is Verdict.bot
