"""The dashboard (``GET /admin``) and the metrics (``GET /metrics``): read-only pages of the
daemon for the marketer and the operator.

Both exist only when ``NURTURE_ADMIN_PASSWORD`` is set (HTTP Basic, any user name, the
password compared in constant time), or, with the built-in catcher (no SMTP relay: a
newcomer's machine), for requests from a loopback address. Anything else is a 401. The
catcher's pages (``nurture.web.outbox``) follow the same rule. Wrong passwords are counted
per client address: past a few a minute it is answered 429 until its minute is over, and
each one is logged with the address. Nothing a recipient sees links here, and no other
site may frame these pages. ``NURTURE_METRICS_PUBLIC=true`` opens ``/metrics`` alone (for a
scraper on a private network).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import logging
import math
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from nurture.person import person_story
from nurture.report import LEGEND, build_report, pct, span
from nurture.web.links import services
from nurture.web.pages import page

__all__ = ["routes", "guard", "funnel_svg", "FRAMING"]

log = logging.getLogger(__name__)

BAR = 28  # px per step in the funnel
# The operator's pages are never shown inside another site's frame (clickjacking).
FRAMING = {"X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'"}

# What each column of the step table counts: the report's words, with the table's headings.
_HEADINGS = {
    "rem.": "reminders sent",
    "people clicked": "people who clicked",
    "median, p90": "median to yes",
}
ADMIN_LEGEND = [
    (_HEADINGS.get(label, label), meaning)
    for label, meaning in LEGEND
    if label != "yes after rem."  # not a column here
]


def _loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _password(request: Request) -> str | None:
    """The password of a Basic ``Authorization`` header; None without one (a browser's first
    request, before its prompt: no guess), "" for one that cannot be read (a guess)."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        return base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
    except (binascii.Error, UnicodeDecodeError):
        return ""


def guard(request: Request) -> Response | None:
    """None when this request may see the operator's pages (see the module's docstring);
    else the answer: 401, or 429 to a client address with too many wrong passwords this
    minute (counted and logged per address; a right password is never slowed)."""
    s = services(request)
    secret = s.settings.admin_password
    if not secret:
        allowed = request.app.state.outbox is not None and _loopback(request)
        return None if allowed else _refused()
    client = request.client.host if request.client else ""
    wait = s.limits.admin_blocked(client)
    if wait > 0:
        return PlainTextResponse(
            "429: too many wrong passwords from your address; try again in a minute\n",
            status_code=429,
            headers={"Retry-After": str(math.ceil(wait)), **FRAMING},
        )
    supplied = _password(request)
    if supplied is None:
        return _refused()
    if hmac.compare_digest(supplied.encode(), secret.encode()):
        return None
    failures = s.limits.admin_failed(client)
    log.warning(
        "wrong admin password from %s (%d this minute; %d and it waits a minute)",
        client,
        failures,
        s.limits.admin_failures_per_minute,
        extra={"action": "admin_login_failed", "client": client, "failures": failures},
    )
    return _refused()


def _refused() -> Response:
    return PlainTextResponse(
        "401: set NURTURE_ADMIN_PASSWORD and sign in (any user name, that password)\n",
        status_code=401,
        headers={"WWW-Authenticate": 'Basic realm="nurture admin", charset="UTF-8"', **FRAMING},
    )


def funnel_svg(sequence: dict[str, Any]) -> str:
    """Server-side SVG: per step, bars for entered, sent and yes (scaled to the largest)."""
    steps = sequence["steps"]
    top = max([s["entered"] for s in steps] + [1])
    width, label = 460, 120
    rows = []
    for i, s in enumerate(steps):
        y = 8 + i * BAR
        rows.append(f'<text x="0" y="{y + 15}" font-size="13">{s["id"]}</text>')
        for value, colour, h, dy in (
            (s["entered"], "#dfe6fb", 20, 0),
            (s["sent"], "#9db3f3", 14, 3),
            (s["yes"], "#2f5bea", 8, 6),
        ):
            w = round(width * value / top)
            rows.append(
                f'<rect x="{label}" y="{y + dy}" width="{w}" height="{h}" fill="{colour}" rx="2"/>'
            )
        rate = "-" if s["yes_rate"] is None else f"{s['yes_rate'] * 100:.0f}% yes"
        rows.append(
            f'<text x="{label + width + 8}" y="{y + 15}" font-size="12" fill="#687082">'
            f"{s['entered']} / {s['sent']} / {s['yes']}  {rate}</text>"
        )
    height = 16 + len(steps) * BAR
    legend = (
        f'<text x="{label}" y="{height + 4}" font-size="11" fill="#687082">'
        "entered / sent / said yes</text>"
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="funnel of '
        f'{sequence["id"]}" width="{label + width + 180}" height="{height + 12}">'
        + "".join(rows)
        + legend
        + "</svg>"
    )


async def dashboard(request: Request) -> Response:
    refused = guard(request)
    if refused is not None:
        return refused
    s = services(request)
    email = (request.query_params.get("email") or "").strip().lower()

    def gather() -> dict[str, Any]:
        with s.store.transaction() as tx:
            report = build_report(tx, s.catalog, s.journey.experiments)
            story = None
            if email:
                story = person_story(
                    tx, s.catalog, s.signer, email, message_id_domain=s.settings.message_id_domain
                )
            return {
                "report": report,
                "story": story,
                "inbound": tx.inbound.newest(15),
                "unmatched": tx.inbound.newest(15, unmatched_reports=True),
                "messages": tx.reports.message_counts(),
                "pause": tx.control.pause(),
            }

    found = await run_in_threadpool(gather)
    from markupsafe import Markup

    charts = {q["id"]: Markup(funnel_svg(q)) for q in found["report"]["sequences"]}
    html = page(
        "admin.html",
        title="nurture dashboard",
        email=email,
        charts=charts,
        span=span,
        pct=pct,
        legend=ADMIN_LEGEND,
        **found,
    )
    return HTMLResponse(html, headers={"Cache-Control": "no-store", **FRAMING})


async def metrics(request: Request) -> Response:
    s = services(request)
    refused = None if s.settings.metrics_public else guard(request)
    if refused is not None:
        return refused
    from nurture.metrics import render_metrics

    body, content_type = await run_in_threadpool(render_metrics, s)
    return Response(body, media_type=content_type)


routes = [Route("/admin", dashboard), Route("/metrics", metrics)]
