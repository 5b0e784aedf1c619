"""What recipients reach through the links in their emails: tracked clicks, the open pixel,
the unsubscribe page and its one-click POST, the honeypot. Each handler parses, calls a
service and answers; a bad token is always a 404, never a redirect elsewhere."""

from __future__ import annotations

import contextlib

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response

from nurture.clicks import FINGERPRINT, client_of
from nurture.errors import TokenError
from nurture.services import Services
from nurture.tracking import ClickRequest
from nurture.web.body import BodyError, read_body
from nurture.web.pages import not_found, page

__all__ = ["click", "opened", "unsubscribe_page", "unsubscribe_post", "honeypot", "confirmed"]

# The smallest transparent GIF: 1x1 pixel, 43 bytes.
PIXEL = bytes.fromhex(
    "47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b"
)
NO_STORE = {"Cache-Control": "no-store"}
# A page whose URL carries a token (the confirm button, unsubscribe): no cache keeps it, and
# nothing it leads to (its form's redirect included) learns its URL from a Referer.
TOKEN_PAGE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


def _click_request(request: Request) -> ClickRequest:
    headers = request.headers
    purpose = " ".join(headers.get(h, "") for h in ("purpose", "sec-purpose", "x-moz"))
    ip = request.client.host if request.client else ""
    user_agent = headers.get("user-agent", "")
    return ClickRequest(
        method=request.method,
        user_agent=user_agent,
        has_browser_headers="accept-language" in headers
        or any(name.startswith("sec-fetch-") for name in headers),
        ip=ip,
        prefetch="prefetch" in purpose.lower(),
        client=client_of(ip, user_agent, [headers.get(h, "") for h in FINGERPRINT]),
    )


async def click(request: Request) -> Response:
    s = services(request)
    try:
        result = await s.clicks.click(request.path_params["token"], _click_request(request))
    except TokenError:
        return not_found()
    if result.confirm_page:
        return HTMLResponse(
            page("confirm.html", title="Confirm your subscription"), headers=TOKEN_PAGE
        )
    status = 303 if request.method == "POST" else 302
    return RedirectResponse(result.url, status_code=status, headers=NO_STORE)


async def opened(request: Request) -> Response:
    s = services(request)
    detail = {"ua": request.headers.get("user-agent", "")[:300]}
    # The pixel always answers with the image, whatever the token.
    with contextlib.suppress(TokenError):
        await s.clicks.opened(request.path_params["token"], detail)
    return Response(PIXEL, media_type="image/gif", headers=NO_STORE)


async def unsubscribe_page(request: Request) -> Response:
    s = services(request)
    try:
        _, address, _ = await run_in_threadpool(
            s.subscriptions.unsubscribe_target, request.path_params["token"]
        )
    except TokenError:
        return not_found()
    html = page("unsubscribe.html", title="Unsubscribe", email=address)
    return HTMLResponse(html, headers=TOKEN_PAGE)


async def unsubscribe_post(request: Request) -> Response:
    s = services(request)
    try:
        body = await read_body(request, limit=4096)
    except BodyError as exc:
        return PlainTextResponse(f"{exc}\n", status_code=exc.status)
    one_click = b"List-Unsubscribe=One-Click" in body
    how = "one-click" if one_click else "page"
    try:
        address = await run_in_threadpool(
            lambda: s.subscriptions.unsubscribe_token(
                request.path_params["token"], now=s.clock.now(), how=how
            )
        )
    except TokenError:
        return not_found()
    if one_click:
        return PlainTextResponse("unsubscribed\n", headers=TOKEN_PAGE)
    text = f"{address} will get no more emails from us."
    html = page("message.html", title="You are unsubscribed", text=text)
    return HTMLResponse(html, headers=TOKEN_PAGE)


async def honeypot(request: Request) -> Response:
    # Where the invisible link in every email leads: only machines come here.
    return PlainTextResponse("", headers={"X-Robots-Tag": "noindex"})


async def confirmed(request: Request) -> Response:
    text = "You are confirmed. Your next email is on its way."
    return HTMLResponse(page("message.html", title="Thank you", text=text))
