"""The ASGI app: thin handlers that parse, call a service and respond.

Every database call runs in Starlette's thread pool (the store is synchronous); the clock is
read once per request.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route

from nurture.errors import SubscribeError, TokenError
from nurture.mail.catcher import Outbox
from nurture.mail.inbound import MAX_INBOUND_BYTES
from nurture.services import Services
from nurture.subscriptions import goal, subscribe
from nurture.tracking import ClickRequest
from nurture.web.pages import page

__all__ = ["create_app"]

log = logging.getLogger(__name__)

MAX_FORM_BYTES = 64 * 1024
# The smallest transparent GIF: 1x1 pixel, 43 bytes.
PIXEL = bytes.fromhex(
    "47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b"
)


def _not_found() -> HTMLResponse:
    return HTMLResponse(
        page(
            "message.html",
            title="Link not found",
            text="This link is not valid. If you copied it, check that it is complete.",
        ),
        status_code=404,
    )


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("content-type", "") or (
        "application/json" in request.headers.get("accept", "")
        and "text/html" not in request.headers.get("accept", "")
    )


async def _payload(request: Request) -> dict[str, Any]:
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise SubscribeError("request too large", status=413)
    if "application/json" in request.headers.get("content-type", ""):
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            raise SubscribeError("the body is not valid JSON") from None
        if not isinstance(data, dict):
            raise SubscribeError("the JSON body must be an object")
        return data
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def create_app(services: Services, *, outbox: Outbox | None = None) -> Starlette:
    tracker = services.tracker
    store = services.store
    catalog = services.catalog
    clock = services.clock
    api_token = services.settings.api_token
    inbound_secret = services.settings.inbound_secret

    async def healthz(request: Request) -> Response:
        def check() -> dict[str, Any]:
            with store.transaction() as tx:
                return {"ok": True, "messages": tx.message_counts()}

        return JSONResponse(await run_in_threadpool(check))

    async def click(request: Request) -> Response:
        token = request.path_params["token"]
        headers = request.headers
        purpose = " ".join(headers.get(h, "") for h in ("purpose", "sec-purpose", "x-moz"))
        facts = ClickRequest(
            # A browser's speculative prefetch is not a click either.
            method="PREFETCH" if "prefetch" in purpose.lower() else request.method,
            user_agent=headers.get("user-agent", ""),
            has_browser_headers="accept-language" in headers
            or any(name.startswith("sec-fetch-") for name in headers),
            ip=request.client.host if request.client else "",
        )
        pressed = request.method == "POST"
        try:
            result = await run_in_threadpool(
                lambda: tracker.click(token, now=clock.now(), request=facts, pressed=pressed)
            )
        except TokenError:
            return _not_found()
        if result.confirm_page:
            return HTMLResponse(
                page("confirm.html", title="Confirm your subscription"),
                headers={"Cache-Control": "no-store"},
            )
        return RedirectResponse(
            result.url, status_code=303 if pressed else 302, headers={"Cache-Control": "no-store"}
        )

    async def opened(request: Request) -> Response:
        detail = {"ua": request.headers.get("user-agent", "")[:300]}
        # The pixel always answers with the image, whatever the token.
        with contextlib.suppress(TokenError):
            await run_in_threadpool(
                lambda: tracker.opened(request.path_params["token"], now=clock.now(), detail=detail)
            )
        return Response(PIXEL, media_type="image/gif", headers={"Cache-Control": "no-store"})

    async def unsubscribe_page(request: Request) -> Response:
        try:
            _, address, _ = await run_in_threadpool(
                tracker.unsubscribe_target, request.path_params["token"]
            )
        except TokenError:
            return _not_found()
        return HTMLResponse(page("unsubscribe.html", title="Unsubscribe", email=address))

    async def unsubscribe_post(request: Request) -> Response:
        body = (await request.body())[:1024]
        one_click = b"List-Unsubscribe=One-Click" in body
        try:
            address = await run_in_threadpool(
                tracker.unsubscribe,
                request.path_params["token"],
                now=clock.now(),
                how="one-click" if one_click else "page",
            )
        except TokenError:
            return _not_found()
        if one_click:
            return PlainTextResponse("unsubscribed\n")
        return HTMLResponse(
            page(
                "message.html",
                title="You are unsubscribed",
                text=f"{address} will get no more emails from us.",
            )
        )

    async def subscribe_form(request: Request) -> Response:
        return HTMLResponse(
            page(
                "subscribe.html",
                title="Subscribe",
                sequences=list(catalog),
                outbox=outbox is not None,
            )
        )

    async def subscribe_post(request: Request) -> Response:
        as_json = _wants_json(request)
        data: dict[str, Any] = {}
        try:
            data = await _payload(request)
            fields = {k: v for k, v in data.items() if k not in ("email", "sequence")}
            result = await run_in_threadpool(
                lambda: subscribe(
                    store,
                    catalog,
                    email=data.get("email"),
                    sequence_id=data.get("sequence"),
                    fields=fields,
                    now=clock.now(),
                )
            )
        except SubscribeError as exc:
            if as_json:
                return JSONResponse({"error": str(exc)}, status_code=exc.status)
            return HTMLResponse(
                page(
                    "subscribe.html",
                    title="Subscribe",
                    error=str(exc),
                    sequences=list(catalog),
                    outbox=outbox is not None,
                    email=data.get("email"),
                    first_name=data.get("first_name"),
                ),
                status_code=exc.status,
            )
        if as_json:
            return JSONResponse(
                {
                    "subscriber_id": result.subscriber_id,
                    "enrollment_id": result.enrollment_id,
                    "created": result.created,
                    "status": result.status,
                },
                status_code=201 if result.created else 200,
            )
        text = "Check your inbox: we sent you an email." + (
            " (It is in the outbox.)" if outbox is not None else ""
        )
        return HTMLResponse(
            page("message.html", title="Almost there", text=text),
            status_code=201 if result.created else 200,
        )

    async def events(request: Request) -> Response:
        supplied = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not api_token or not hmac.compare_digest(supplied.encode(), api_token.encode()):
            return JSONResponse(
                {"error": "a valid API token is required (NURTURE_API_TOKEN)"}, status_code=401
            )
        try:
            data = await _payload(request)
            converted = await run_in_threadpool(
                lambda: goal(
                    store,
                    catalog,
                    email=data.get("email"),
                    event=data.get("event"),
                    sequence_id=data.get("sequence"),
                    now=clock.now(),
                )
            )
        except SubscribeError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        return JSONResponse({"converted": converted})

    async def inbound(request: Request) -> Response:
        trusted = False
        if inbound_secret:
            supplied = (
                request.headers.get("x-nurture-secret")
                or request.headers.get("authorization", "").removeprefix("Bearer ").strip()
                or request.query_params.get("secret", "")
            )
            if not hmac.compare_digest(supplied.encode(), inbound_secret.encode()):
                return JSONResponse({"error": "a valid secret is required"}, status_code=401)
            trusted = True
        raw = await request.body()
        if len(raw) > MAX_INBOUND_BYTES:
            return JSONResponse({"error": "message too large"}, status_code=413)
        result = await run_in_threadpool(
            lambda: tracker.receive(raw, now=clock.now(), source="webhook", trusted=trusted)
        )
        code = 400 if result.status == "malformed" else 200
        return JSONResponse({"status": result.status, "outcome": result.outcome}, status_code=code)

    async def honeypot(request: Request) -> Response:
        # Where the invisible link in every email leads: only machines come here.
        return PlainTextResponse("", headers={"X-Robots-Tag": "noindex"})

    async def confirmed(request: Request) -> Response:
        return HTMLResponse(
            page(
                "message.html",
                title="Thank you",
                text="You are confirmed. Your next email is on its way.",
            )
        )

    async def index(request: Request) -> Response:
        if outbox is not None:
            return RedirectResponse("/outbox", status_code=302)
        return PlainTextResponse("nurture\n")

    routes = [
        Route("/", index),
        Route("/healthz", healthz),
        Route("/c/{token}", click, methods=["GET", "HEAD", "POST"]),
        Route("/o/{token}", opened, methods=["GET", "HEAD"]),
        Route("/u/{token}", unsubscribe_page, methods=["GET", "HEAD"]),
        Route("/u/{token}", unsubscribe_post, methods=["POST"]),
        Route("/subscribe", subscribe_form, methods=["GET"]),
        Route("/subscribe", subscribe_post, methods=["POST"]),
        Route("/events", events, methods=["POST"]),
        Route("/inbound", inbound, methods=["POST"]),
        Route("/confirmed", confirmed),
        Route("/hp", honeypot, methods=["GET", "HEAD"]),
    ]
    if outbox is not None:
        routes += _outbox_routes(services, outbox)
    app = Starlette(routes=routes)
    # A junk token ending in '/' must get a 404, not a redirect to another path.
    app.router.redirect_slashes = False
    return app


def _outbox_routes(services: Services, outbox: Outbox) -> list[Route]:
    """The catcher's pages; they exist only while no SMTP server is configured."""
    tracker = services.tracker
    clock = services.clock

    async def listing(request: Request) -> Response:
        mails = await run_in_threadpool(outbox.list)
        return HTMLResponse(page("outbox.html", title="Outbox", mails=mails))

    async def show(request: Request) -> Response:
        mail = await run_in_threadpool(outbox.get, request.path_params["key"])
        if mail is None:
            return _not_found()
        return HTMLResponse(
            page(
                "outbox_message.html",
                title=mail.subject,
                mail=mail,
                replied=request.query_params.get("replied"),
            )
        )

    async def show_html(request: Request) -> Response:
        mail = await run_in_threadpool(outbox.get, request.path_params["key"])
        if mail is None:
            return _not_found()
        # Links open in a new tab, out of the sandboxed frame, like a mail client's.
        return HTMLResponse(
            '<base target="_blank">' + mail.part("html"),
            headers={"Content-Security-Policy": "script-src 'none'"},
        )

    async def reply(request: Request) -> Response:
        mail = await run_in_threadpool(outbox.get, request.path_params["key"])
        if mail is None:
            return _not_found()
        form = await request.form()
        body = str(form.get("body", "")).strip() or "Yes!"
        original = mail.message
        answer = EmailMessage()
        answer["From"] = original["To"]
        answer["To"] = original["Reply-To"] or original["From"]
        answer["Subject"] = "Re: " + mail.subject
        answer["Date"] = format_datetime(clock.now())
        answer["Message-ID"] = make_msgid(domain="outbox.nurture.local")
        answer["In-Reply-To"] = original["Message-ID"]
        answer["References"] = original["Message-ID"]
        quoted = "\n".join("> " + line for line in mail.part("plain").splitlines())
        answer.set_content(f"{body}\n\n{quoted}\n")
        result = await run_in_threadpool(
            lambda: tracker.receive(answer.as_bytes(), now=clock.now(), source="outbox")
        )
        return RedirectResponse(f"/outbox/{mail.key}?replied={result.status}", status_code=303)

    return [
        Route("/outbox", listing),
        Route("/outbox/{key}", show),
        Route("/outbox/{key}/html", show_html),
        Route("/outbox/{key}/reply", reply, methods=["POST"]),
    ]
