"""The dashboard (``GET /admin``) and the metrics (``GET /metrics``): read-only pages of the
daemon for the marketer and the operator.

Both exist only when ``NURTURE_ADMIN_PASSWORD`` is set (HTTP Basic, any user name, the
password compared in constant time), or, with the built-in catcher (no SMTP relay: a
newcomer's machine), for requests from a loopback address. Anything else is a 401. Nothing
a recipient sees links here. ``NURTURE_METRICS_PUBLIC=true`` opens ``/metrics`` alone (for a
scraper on a private network).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from nurture.person import person_story
from nurture.report import LEGEND, build_report, pct, span
from nurture.web.links import services
from nurture.web.pages import page

__all__ = ["routes", "allowed", "funnel_svg"]

BAR = 28  # px per step in the funnel

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


def allowed(request: Request) -> bool:
    """Whether this request may see the dashboard (see the module's docstring)."""
    secret = services(request).settings.admin_password
    if secret:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            _, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return hmac.compare_digest(password.encode(), secret.encode())
    return request.app.state.outbox is not None and _loopback(request)


def _refused() -> Response:
    return PlainTextResponse(
        "401: set NURTURE_ADMIN_PASSWORD and sign in (any user name, that password)\n",
        status_code=401,
        headers={"WWW-Authenticate": 'Basic realm="nurture admin", charset="UTF-8"'},
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
    if not allowed(request):
        return _refused()
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
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


async def metrics(request: Request) -> Response:
    s = services(request)
    if not (s.settings.metrics_public or allowed(request)):
        return _refused()
    from nurture.metrics import render_metrics

    body, content_type = await run_in_threadpool(render_metrics, s)
    return Response(body, media_type=content_type)


routes = [Route("/admin", dashboard), Route("/metrics", metrics)]
