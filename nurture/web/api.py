"""What the marketer's site and app, mail providers and operators call: the subscribe form
and endpoint, outside events and goals, taking a person out of one sequence, the inbound-mail
webhook, the health check."""

from __future__ import annotations

import hmac
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)

from nurture.errors import SubscribeError, SubscribeRefused
from nurture.mail.inbound import MAX_INBOUND_BYTES
from nurture.people import clean_tags
from nurture.subscriptions import SubscribeResult
from nurture.vocabulary import InboundSource, InboundStatus, SubscriberStatus
from nurture.web.body import BodyError, read_body, read_payload
from nurture.web.links import services
from nurture.web.pages import page

__all__ = [
    "index",
    "healthz",
    "subscribe_form",
    "subscribe_post",
    "events",
    "remove",
    "inbound",
]


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in request.headers.get("content-type", "") or (
        "application/json" in accept and "text/html" not in accept
    )


def _bearer(request: Request) -> str:
    return request.headers.get("authorization", "").removeprefix("Bearer ").strip()


def _same(supplied: str, secret: str) -> bool:
    return hmac.compare_digest(supplied.encode(), secret.encode())


def _authorized(request: Request) -> bool:
    token = services(request).settings.api_token
    return token is not None and token != "" and _same(_bearer(request), token)


def _unauthorized() -> Response:
    error = {"error": "a valid API token is required (NURTURE_API_TOKEN)"}
    return JSONResponse(error, status_code=401)


async def index(request: Request) -> Response:
    if request.app.state.outbox is not None:
        return RedirectResponse("/outbox", status_code=302)
    return PlainTextResponse("nurture\n")


async def healthz(request: Request) -> Response:
    s = services(request)

    def check() -> dict[str, Any]:
        with s.store.transaction() as tx:
            pause = tx.control.pause()
            return {
                "ok": pause is None,
                "messages": tx.reports.message_counts(),
                "sending": {"paused": True, **pause.to_json()} if pause else {"paused": False},
            }

    # 503 while sending is paused (the relay refuses us): an orchestrator's readiness check
    # and a person looking both see it, with the reason.
    body = await run_in_threadpool(check)
    return JSONResponse(body, status_code=200 if body["ok"] else 503)


def _form_page(request: Request, *, status: int = 200, **context: Any) -> HTMLResponse:
    catalog = services(request).catalog
    outbox = request.app.state.outbox is not None
    html = page(
        "subscribe.html", title="Subscribe", sequences=list(catalog), outbox=outbox, **context
    )
    return HTMLResponse(html, status_code=status)


async def subscribe_form(request: Request) -> Response:
    return _form_page(request)


async def subscribe_post(request: Request) -> Response:
    s = services(request)
    as_json = _wants_json(request)
    data: dict[str, Any] = {}
    if not s.limits.subscribe(request.client.host if request.client else ""):
        text = "Too many sign-ups from your address. Please try again in a minute."
        headers = {"Retry-After": "60"}
        if as_json:
            return JSONResponse({"error": text}, status_code=429, headers=headers)
        html = page("message.html", title="Please wait a minute", text=text)
        return HTMLResponse(html, status_code=429, headers=headers)
    try:
        data = await read_payload(request)
        fields = {k: v for k, v in data.items() if k not in ("email", "sequence", "tags")}
        result = await run_in_threadpool(
            lambda: s.subscriptions.subscribe(
                email=data.get("email"),
                sequence_id=data.get("sequence"),
                fields=fields,
                tags=clean_tags(data.get("tags")),  # a list, or text split on ';'
                now=s.clock.now(),
                trusted=False,
            )
        )
    except (SubscribeError, BodyError) as exc:
        # A refusal says nothing about the address (the log and `nurture person` say why).
        message = exc.public if isinstance(exc, SubscribeRefused) else str(exc)
        if as_json:
            said = {"error": message}
            if isinstance(exc, SubscribeRefused):
                said["result"] = "refused"
            return JSONResponse(said, status_code=exc.status)
        return _form_page(
            request,
            status=exc.status,
            error=message,
            email=data.get("email"),
            first_name=data.get("first_name"),
        )
    s.wakeup.soon()  # the confirmation the person waits for goes now
    status = 201 if result.created else 200
    if as_json:
        body = {
            "subscriber_id": result.subscriber_id,
            "enrollment_id": result.enrollment_id,
            "created": result.created,
            "result": result.outcome,
            "status": result.status.value,
        }
        return JSONResponse(body, status_code=status)
    title, text = _told(result)
    if request.app.state.outbox is not None and result.created:
        text += " (It is in the outbox.)"
    return HTMLResponse(page("message.html", title=title, text=text), status_code=status)


def _told(result: SubscribeResult) -> tuple[str, str]:
    """What the form tells the person, true to what happened."""
    if result.outcome == "already_enrolled":
        return "Already subscribed", "This address is on the list already: nothing changed."
    if result.confirming:
        return (
            "Almost there",
            "Check your inbox: we are sending you an email with a link to confirm your "
            "subscription.",
        )
    if result.status is SubscriberStatus.pending:
        return "Thank you", "Nothing will be sent to this address until it is confirmed."
    return "You are in", "You are subscribed: your first email is on its way."


async def events(request: Request) -> Response:
    s = services(request)
    if not _authorized(request):
        return _unauthorized()
    try:
        data = await read_payload(request)
        properties = data.get("properties")
        if properties is None and ("set" in data or "tags" in data):
            properties = {k: data[k] for k in ("set", "tags") if k in data}
        result = await run_in_threadpool(
            lambda: s.events.event(
                email=data.get("email"),
                event=data.get("event"),
                sequence_id=data.get("sequence"),
                properties=properties,
                external_id=data.get("id"),
                now=s.clock.now(),
            )
        )
    except (SubscribeError, BodyError) as exc:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)
    s.wakeup.soon()  # what it advanced goes out now, not at the next tick
    body = {
        "converted": result.converted,
        "advanced": result.advanced,
        "duplicate": result.duplicate,
    }
    return JSONResponse(body)


async def remove(request: Request) -> Response:
    """Take a person out of one sequence (not out of everything: that is an unsubscribe)."""
    s = services(request)
    if not _authorized(request):
        return _unauthorized()
    try:
        data = await read_payload(request)
        removed = await run_in_threadpool(
            lambda: s.subscriptions.remove(
                email=data.get("email"), sequence_id=data.get("sequence"), now=s.clock.now()
            )
        )
    except (SubscribeError, BodyError) as exc:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)
    return JSONResponse({"removed": removed})


async def inbound(request: Request) -> Response:
    s = services(request)
    secret = s.settings.inbound_secret
    trusted = False
    if secret:
        supplied = (
            request.headers.get("x-nurture-secret")
            or _bearer(request)
            or request.query_params.get("secret", "")
        )
        if not _same(supplied, secret):
            return JSONResponse({"error": "a valid secret is required"}, status_code=401)
        trusted = True
    try:
        raw = await read_body(request, limit=MAX_INBOUND_BYTES)
    except BodyError as exc:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)
    result = await run_in_threadpool(
        lambda: s.inbox.receive(
            raw, now=s.clock.now(), source=InboundSource.webhook, trusted=trusted
        )
    )
    s.wakeup.soon()
    code = 400 if result.status is InboundStatus.malformed else 200
    body = {"status": result.status.value, "outcome": result.outcome}
    return JSONResponse(body, status_code=code)
