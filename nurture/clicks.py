"""Who clicked: a person, or a machine (mail security scanners, link checkers, prefetchers).

Pure decisions, like the engine: facts in, a verdict and its reasons out. Only a ``human``
click can be a micro-yes.

- Hard evidence makes a click ``bot`` at once: a HEAD request, a user agent or network of a
  known scanner (``nurture/data/scanners.txt``, ``scanner-networks.txt``), the hidden honeypot
  link every email carries.
- Soft signals only raise suspicion: a click within seconds of the email being handed to the
  SMTP server, a request without the headers every browser sends. One alone is a person who
  is quick, or an unusual client; two together are a machine.
- Every click waits until its message's burst window has closed, then is decided with what
  happened around it: a honeypot hit, or most of the message's links fetched within the
  window (a scanner walking the email), make it ``bot``.
"""

from __future__ import annotations

import bisect
import hashlib
import ipaddress
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path

from nurture.vocabulary import Verdict

__all__ = [
    "FINGERPRINT",
    "client_of",
    "Verdict",
    "ClickPolicy",
    "ClickFacts",
    "first_look",
    "decide",
    "scanner_agents",
    "scanner_networks",
]

SCANNERS_FILE = Path(__file__).parent / "data" / "scanners.txt"
NETWORKS_FILE = Path(__file__).parent / "data" / "scanner-networks.txt"


# The headers that tell one browser from another, beside its address and user agent: what
# the browser says of itself, the same on every request it makes. The request-context headers
# (Sec-Fetch-Site/Mode/Dest/User, Origin, Referer, Content-Type) describe one request, not the
# browser: the confirmation link opened from the mail client (Sec-Fetch-Site: none) and the
# press of the page's button (same-origin, with Origin and a form body) are one person.
FINGERPRINT = (
    "accept-language",
    "sec-ch-ua",
    "sec-ch-ua-platform",
)


def client_of(ip: str, user_agent: str, headers: list[str]) -> str:
    """Who a click came from, as one short name: its network (a /24 for IPv4, a /48 for
    IPv6: a person's address changes within it, a scanner farm's too), its user agent and
    the headers of its browser. The same requester gives the same name each time."""
    seen = "\x1f".join([_network(ip), user_agent, *headers])
    return hashlib.blake2b(seen.encode("utf-8", "replace"), digest_size=6).hexdigest()


@lru_cache(maxsize=65_536)
def _network(ip: str) -> str:
    """An address's /24 (IPv4) or /48 (IPv6), remembered: parsing costs more than the rest
    of a click's judging."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


@dataclass(frozen=True)
class ClickPolicy:
    min_seconds: float = 5.0  # a click sooner after sending is suspect
    window_seconds: float = 10.0  # how long clicks on one message are looked at together
    burst_links: int = 3  # this many different links of one message in a window: a scanner
    # A click with no soft signal (a browser's headers, not seconds after delivery) is judged
    # this soon if nothing else was clicked on its email meanwhile; else after the window.
    quick_seconds: float = 1.0
    # A scanner network's click with a browser's headers this long after delivery may be a
    # person behind browser isolation: judged on the rest, not condemned by the network.
    isolation_seconds: float = 120.0


@dataclass(frozen=True)
class ClickFacts:
    method: str  # GET, HEAD or POST (the press of a confirmation page's button)
    user_agent: str
    has_browser_headers: bool  # Accept-Language or Sec-Fetch-* present
    sent_at: datetime | None
    at: datetime
    honeypot: bool
    ip: str = ""
    prefetch: bool = False  # a browser's speculative fetch (Sec-Purpose: prefetch)


@lru_cache(maxsize=1)
def scanner_agents() -> re.Pattern[str]:
    """User-agent fragments of known scanners, one per line in scanners.txt (# comments)."""
    lines = SCANNERS_FILE.read_text(encoding="utf-8").splitlines()
    parts = [re.escape(x.strip()) for x in lines if x.strip() and not x.lstrip().startswith("#")]
    return re.compile("|".join(parts), re.IGNORECASE)


@lru_cache(maxsize=1)
def scanner_networks() -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Networks of known scanners, one CIDR per line in scanner-networks.txt."""
    lines = NETWORKS_FILE.read_text(encoding="utf-8").splitlines()
    return tuple(
        ipaddress.ip_network(x.strip())
        for x in lines
        if x.strip() and not x.lstrip().startswith("#")
    )


@lru_cache(maxsize=1)
def _network_ranges() -> dict[int, tuple[list[int], list[int]]]:
    """Per IP version, the scanner networks as sorted, merged [first, last] address ranges:
    an address is looked up by bisection, not against every network."""
    out: dict[int, tuple[list[int], list[int]]] = {}
    for version in (4, 6):
        spans = sorted(
            (int(n.network_address), int(n.broadcast_address))
            for n in scanner_networks()
            if n.version == version
        )
        starts: list[int] = []
        ends: list[int] = []
        for first, last in spans:
            if ends and first <= ends[-1] + 1:
                ends[-1] = max(ends[-1], last)
            else:
                starts.append(first)
                ends.append(last)
        out[version] = (starts, ends)
    return out


@lru_cache(maxsize=65_536)
def _from_scanner_network(ip: str) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    starts, ends = _network_ranges()[address.version]
    value = int(address)
    i = bisect.bisect_right(starts, value) - 1
    return i >= 0 and value <= ends[i]


@lru_cache(maxsize=16_384)
def _scanner_agent(user_agent: str) -> bool:
    return scanner_agents().search(user_agent) is not None


def first_look(facts: ClickFacts, policy: ClickPolicy) -> tuple[Verdict, list[str]]:
    """The verdict at the moment of the click: ``bot`` on hard evidence, else ``pending``
    with the soft signals seen so far as reasons."""
    if facts.honeypot:
        return Verdict.bot, ["honeypot link"]
    if facts.method == "HEAD":
        return Verdict.bot, ["HEAD request"]
    if facts.prefetch:
        return Verdict.bot, ["prefetch request"]
    if facts.user_agent and _scanner_agent(facts.user_agent):
        return Verdict.bot, ["scanner user agent"]
    reasons = []
    if facts.ip and _from_scanner_network(facts.ip):
        # Browser isolation (Proofpoint, Mimecast) puts a real person behind the vendor's
        # addresses: a full browser's click minutes after delivery is judged on the rest.
        late = facts.sent_at is not None and facts.at - facts.sent_at >= timedelta(
            seconds=policy.isolation_seconds
        )
        if not (late and facts.has_browser_headers):
            return Verdict.bot, ["scanner network"]
        reasons.append("scanner network")
    if facts.sent_at is not None and facts.at - facts.sent_at < timedelta(
        seconds=policy.min_seconds
    ):
        reasons.append("seconds after sending")
    if not facts.has_browser_headers:
        reasons.append("no browser headers")
    return Verdict.pending, reasons


def decide(
    reasons: list[str],
    *,
    links_in_window: int,
    honeypot_in_window: bool,
    policy: ClickPolicy,
    flooded: bool = False,
) -> tuple[Verdict, list[str]]:
    """The verdict once the window has closed: ``reasons`` are the first look's soft signals;
    the rest is what happened on the same message within the window (``flooded``: its link
    was clicked past the flood limit, ``nurture.limits``)."""
    if flooded:
        return Verdict.bot, [*reasons, "its link was hammered within the window"]
    if honeypot_in_window:
        return Verdict.bot, [*reasons, "honeypot hit on this message"]
    if links_in_window >= policy.burst_links:
        return Verdict.bot, [*reasons, f"{links_in_window} links within the window"]
    if len(reasons) >= 2:
        return Verdict.bot, reasons
    return Verdict.human, reasons
