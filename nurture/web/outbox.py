"""The built-in catcher's pages: every email nurture sent, rendered, with a reply form that
goes through the same inbox as real replies. They exist only while no SMTP server is set, and
only for the operator: they hold everyone's confirmation links and can answer for anyone, so
they follow the dashboard's rule (``nurture.web.admin.guard``: a loopback browser, or the
admin password) and are never framed by another site."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from nurture.mail.catcher import CaughtMail, Outbox
from nurture.vocabulary import InboundSource
from nurture.web.admin import FRAMING, guard
from nurture.web.body import BodyError, read_payload
from nurture.web.links import services
from nurture.web.pages import not_found, page

__all__ = ["routes"]

Handler = Callable[[Request], Awaitable[Response]]
# Everyone's links are on these pages: no other site frames them, no cache keeps them.
HEADERS = {**FRAMING, "Cache-Control": "no-store"}


def _outbox(request: Request) -> Outbox:
    found: Outbox = request.app.state.outbox
    return found


async def _mail(request: Request) -> CaughtMail | None:
    return await run_in_threadpool(_outbox(request).get, request.path_params["key"])


def _operator_only(handler: Handler) -> Handler:
    async def guarded(request: Request) -> Response:
        refused = guard(request)
        return refused if refused is not None else await handler(request)

    return guarded


async def listing(request: Request) -> Response:
    mails = await run_in_threadpool(_outbox(request).list)
    return HTMLResponse(page("outbox.html", title="Outbox", mails=mails), headers=HEADERS)


async def show(request: Request) -> Response:
    mail = await _mail(request)
    if mail is None:
        return not_found()
    replied = request.query_params.get("replied")
    html = page("outbox_message.html", title=mail.subject, mail=mail, replied=replied)
    return HTMLResponse(html, headers=HEADERS)


async def show_html(request: Request) -> Response:
    mail = await _mail(request)
    if mail is None:
        return not_found()
    # Links open in a new tab, out of the sandboxed frame, like a mail client's. Only the
    # outbox's own page may frame it.
    return HTMLResponse(
        '<base target="_blank">' + mail.part("html"),
        headers={
            "Content-Security-Policy": "script-src 'none'; frame-ancestors 'self'",
            "X-Frame-Options": "SAMEORIGIN",
            "Cache-Control": "no-store",
        },
    )


def _answer(mail: CaughtMail, body: str, when: str) -> EmailMessage:
    """The reply a person would write to ``mail``, quoting it."""
    original = mail.message
    answer = EmailMessage()
    answer["From"] = original["To"]
    answer["To"] = original["Reply-To"] or original["From"]
    answer["Subject"] = "Re: " + mail.subject
    answer["Date"] = when
    answer["Message-ID"] = make_msgid(domain="outbox.nurture.local")
    answer["In-Reply-To"] = original["Message-ID"]
    answer["References"] = original["Message-ID"]
    quoted = "\n".join("> " + line for line in mail.part("plain").splitlines())
    answer.set_content(f"{body}\n\n{quoted}\n")
    return answer


async def reply(request: Request) -> Response:
    s = services(request)
    mail = await _mail(request)
    if mail is None:
        return not_found()
    try:
        form = await read_payload(request)
    except BodyError as exc:
        return HTMLResponse(page("message.html", title="Reply", text=str(exc)), exc.status)
    body = str(form.get("body", "")).strip() or "Yes!"
    raw = _answer(mail, body, format_datetime(s.clock.now())).as_bytes()
    result = await run_in_threadpool(
        lambda: s.inbox.receive(raw, now=s.clock.now(), source=InboundSource.outbox)
    )
    return RedirectResponse(f"/outbox/{mail.key}?replied={result.status.value}", status_code=303)


routes = [
    Route("/outbox", _operator_only(listing)),
    Route("/outbox/{key}", _operator_only(show)),
    Route("/outbox/{key}/html", _operator_only(show_html)),
    Route("/outbox/{key}/reply", _operator_only(reply), methods=["POST"]),
]
