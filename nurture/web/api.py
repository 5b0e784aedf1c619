"""What the marketer's site and app, mail providers and operators call: the subscribe form
and endpoint, outside events and goals, taking a person out of one sequence, the inbound-mail
webhook, the health check."""

from __future__ import annotations

import difflib
import hmac
import logging
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
from nurture.people import clean_tags, normalize_email
from nurture.vocabulary import InboundSource, InboundStatus
from nurture.web.body import BodyError, read_body, read_payload, read_payload_kind
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

log = logging.getLogger(__name__)

# The sign-ups of the API token share one budget (NURTURE_API_SUBSCRIBE_PER_MINUTE), whichever
# server posts them; the key is not the token itself, so no copy of the secret is kept.
API_TOKEN_KEY = "api-token"
# Unknown event names are warned about once each (the app's state remembers them), up to this
# many: a client holding the token could send endless new names.
WARNED_MAX = 1000
# The form's hidden field: people never see it, machines fill it (see the form's page).
HONEYPOT = "nurture_trap"
NEUTRAL = (
    "Check your inbox: if this address can be subscribed, an email with a link to confirm "
    "is on its way."
)
FLAGS = {"true": True, "1": True, "yes": True, "on": True}
FLAGS |= {"false": False, "0": False, "no": False, "off": False, "": False}


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in request.headers.get("content-type", "") or (
        "application/json" in accept and "text/html" not in accept
    )


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "").strip()
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else header


def _claims_token(request: Request) -> bool:
    """Whether the request offers a bearer token (another scheme, such as a staging proxy's
    Basic password, is no claim to be the marketer's own)."""
    scheme = request.headers.get("authorization", "").strip().partition(" ")[0]
    return scheme.lower() == "bearer"


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
    """The public form, or the marketer's own servers with the API token: their own limit,
    and they may say ``confirmed`` and update a person who is already there."""
    s = services(request)
    own = _authorized(request)
    if not own and _claims_token(request):
        return _unauthorized()  # a wrong token is a mistake to show, not a stranger's post
    as_json = own or _wants_json(request)
    client = request.client.host if request.client else ""
    if not (s.limits.api_subscribe(API_TOKEN_KEY) if own else s.limits.subscribe(client)):
        return _too_many(as_json)
    data: dict[str, Any] = {}
    try:
        data, sent_json = await read_payload_kind(request)
        as_json = as_json or sent_json
        confirmed = _confirmed(data.get("confirmed"), own=own)
        if not own and _dropped(request, data, client):
            return _neutral(request, as_json)
        skip = ("email", "sequence", "tags", "confirmed", HONEYPOT)
        fields = {k: v for k, v in data.items() if k not in skip}
        result = await run_in_threadpool(
            lambda: s.subscriptions.subscribe(
                email=data.get("email"),
                sequence_id=data.get("sequence"),
                fields=fields,
                tags=clean_tags(data.get("tags")) if own else [],  # a list, or text split on ';'
                now=s.clock.now(),
                confirmed=confirmed,
                trusted=own,
            )
        )
    except SubscribeRefused:
        if not own:
            return _neutral(request, as_json)  # the log and `nurture person` say why
        return JSONResponse(
            {"error": SubscribeRefused.public, "result": "refused"}, status_code=409
        )
    except (SubscribeError, BodyError) as exc:
        # What the request itself got wrong (never what is known about the address).
        if as_json:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        return _form_page(
            request,
            status=exc.status,
            error=str(exc),
            email=data.get("email"),
            first_name=data.get("first_name"),
        )
    s.wakeup.soon()  # the confirmation the person waits for goes now
    if not own:
        return _neutral(request, as_json)
    body = {
        "subscriber_id": result.subscriber_id,
        "enrollment_id": result.enrollment_id,
        "created": result.created,
        "result": result.outcome,
        "status": result.status.value,
    }
    return JSONResponse(body, status_code=201 if result.created else 200)


def _dropped(request: Request, data: dict[str, Any], client: str) -> bool:
    """Whether a stranger's post is answered without being taken: its honeypot field is
    filled (a machine), or the form's sign-ups of all addresses together are over their
    minute's cap. Raises as ``subscribe`` would for a bad address or sequence, so that a
    person's typo is shown whatever the cap."""
    s = services(request)
    if str(data.get(HONEYPOT) or "").strip():
        log.info(
            "form post from %s filled the hidden %s field: not taken",
            client,
            HONEYPOT,
            extra={"action": "subscribe_honeypot", "client": client},
        )
        return True
    address = normalize_email(data.get("email"))
    sequence = s.subscriptions.sequence(data.get("sequence"))
    if s.limits.subscribe_global():
        return False
    log.warning(
        "form sign-up of %s to %s from %s dropped: over NURTURE_SUBSCRIBE_GLOBAL_PER_MINUTE "
        "(%d sign-ups a minute); add them with nurture subscribe if they are real",
        address,
        sequence.id,
        client,
        s.limits.subscribe_global_per_minute,
        extra={"action": "subscribe_capped", "sequence": sequence.id, "client": client},
    )
    return True


def _neutral(request: Request, as_json: bool) -> Response:
    """The form's one answer to a stranger, whatever is known about the address (new, there
    already, refused, unsubscribed, dropped): a different answer would tell anyone who is on
    the list."""
    if as_json:
        return JSONResponse({"result": "accepted", "message": NEUTRAL}, status_code=202)
    text = NEUTRAL
    if request.app.state.outbox is not None:
        text += " (No SMTP server is configured: emails go to the outbox.)"
    html = page("message.html", title="Thank you", text=text)
    return HTMLResponse(html, status_code=202)


def _too_many(as_json: bool) -> Response:
    text = "Too many sign-ups from your address. Please try again in a minute."
    headers = {"Retry-After": "60"}
    if as_json:
        return JSONResponse({"error": text}, status_code=429, headers=headers)
    html = page("message.html", title="Please wait a minute", text=text)
    return HTMLResponse(html, status_code=429, headers=headers)


def _confirmed(value: object, *, own: bool) -> bool:
    """``confirmed``: the person opted in elsewhere, so no confirmation email. Only the
    marketer's own servers may say so: from anyone else it is refused, not ignored (ignored,
    a site that forgot its token would have its people held, unconfirmed, without a word)."""
    flag = FLAGS.get(value.strip().lower()) if isinstance(value, str) else value
    if value is None or flag is False:
        return False
    if flag is not True:
        raise BodyError("confirmed must be true or false")
    if not own:
        raise SubscribeError(
            "confirmed needs the API token (Authorization: Bearer $NURTURE_API_TOKEN): "
            "without it, a person confirms through the email they are sent",
            status=403,
        )
    return True


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
    body: dict[str, Any] = {
        "converted": result.converted,
        "advanced": result.advanced,
        "duplicate": result.duplicate,
        **_known(request, str(data.get("event")).strip(), s.catalog.event_names()),
    }
    return JSONResponse(body)


def _known(request: Request, name: str, names: frozenset[str]) -> dict[str, Any]:
    """Whether any sequence names the event (a step's ``events:``, a ``goals:``), and, when
    none does, the closest name that one does: ``trial_start`` recorded while a step waits
    for ``trial_started`` would otherwise leave the person waiting until the timeout, with a
    200 to the app. An unknown event is still recorded (the app may send what no sequence
    uses yet); each unknown name is logged once per process (its one app)."""
    if name in names:
        return {"known": True}
    close = difflib.get_close_matches(name, sorted(names), n=1)
    warned: set[str] = request.app.state.unknown_events
    if name not in warned and len(warned) < WARNED_MAX:
        warned.add(name)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        log.warning(
            "event %r is named by no sequence's events: or goals: (recorded)%s",
            name,
            hint,
            extra={"action": "event_unknown", "event": name},
        )
    return {"known": False, **({"did_you_mean": close[0]} if close else {})}


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
    if "secret" in request.query_params:
        # A secret in the URL lands in every proxy's and provider's logs: refused, even a
        # right one, so that it is moved to the header (and changed).
        log.warning(
            "POST /inbound with ?secret= refused: send NURTURE_INBOUND_SECRET in the "
            "X-Nurture-Secret header (or Authorization: Bearer), never in the URL, and change it",
            extra={"action": "inbound_secret_in_url"},
        )
        error = "send the secret in the X-Nurture-Secret header, not in the URL"
        return JSONResponse({"error": error}, status_code=401)
    if secret:
        supplied = request.headers.get("x-nurture-secret") or _bearer(request)
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
