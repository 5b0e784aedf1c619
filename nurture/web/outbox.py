"""The built-in catcher's pages: every email nurture sent, rendered, with a reply form that
goes through the same inbox as real replies. They exist only while no SMTP server is set."""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from nurture.mail.catcher import CaughtMail, Outbox
from nurture.vocabulary import InboundSource
from nurture.web.body import BodyError, read_payload
from nurture.web.links import services
from nurture.web.pages import not_found, page

__all__ = ["routes"]


def _outbox(request: Request) -> Outbox:
    found: Outbox = request.app.state.outbox
    return found


async def _mail(request: Request) -> CaughtMail | None:
    return await run_in_threadpool(_outbox(request).get, request.path_params["key"])


async def listing(request: Request) -> Response:
    mails = await run_in_threadpool(_outbox(request).list)
    return HTMLResponse(page("outbox.html", title="Outbox", mails=mails))


async def show(request: Request) -> Response:
    mail = await _mail(request)
    if mail is None:
        return not_found()
    replied = request.query_params.get("replied")
    return HTMLResponse(page("outbox_message.html", title=mail.subject, mail=mail, replied=replied))


async def show_html(request: Request) -> Response:
    mail = await _mail(request)
    if mail is None:
        return not_found()
    # Links open in a new tab, out of the sandboxed frame, like a mail client's.
    return HTMLResponse(
        '<base target="_blank">' + mail.part("html"),
        headers={"Content-Security-Policy": "script-src 'none'"},
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
    Route("/outbox", listing),
    Route("/outbox/{key}", show),
    Route("/outbox/{key}/html", show_html),
    Route("/outbox/{key}/reply", reply, methods=["POST"]),
]
