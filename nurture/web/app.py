"""The ASGI app: the routes, and the services every handler reads from the app's state.

Handlers live beside it by who calls them: ``links`` (recipients following the links in their
emails), ``api`` (sites, apps, mail providers, operators), ``outbox`` (the built-in catcher's
pages). Every database call runs in Starlette's thread pool (the store is synchronous); the
clock is read once per request.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Route

from nurture.mail.catcher import Outbox
from nurture.services import Services
from nurture.web import admin, api, links
from nurture.web import outbox as outbox_pages

__all__ = ["create_app"]

ROUTES = [
    Route("/", api.index),
    Route("/healthz", api.healthz),
    Route("/c/{token}", links.click, methods=["GET", "HEAD", "POST"]),
    Route("/o/{token}", links.opened, methods=["GET", "HEAD"]),
    Route("/u/{token}", links.unsubscribe_page, methods=["GET", "HEAD"]),
    Route("/u/{token}", links.unsubscribe_post, methods=["POST"]),
    Route("/subscribe", api.subscribe_form, methods=["GET"]),
    Route("/subscribe", api.subscribe_post, methods=["POST"]),
    Route("/events", api.events, methods=["POST"]),
    Route("/remove", api.remove, methods=["POST"]),
    Route("/inbound", api.inbound, methods=["POST"]),
    Route("/confirmed", links.confirmed),
    Route("/hp", links.honeypot, methods=["GET", "HEAD"]),
]


def create_app(services: Services, *, outbox: Outbox | None = None) -> Starlette:
    """The app; with ``outbox`` (the catcher's mail) the outbox pages exist too."""
    routes = ROUTES + admin.routes + (outbox_pages.routes if outbox is not None else [])
    app = Starlette(routes=routes)
    app.state.services = services
    app.state.outbox = outbox
    app.state.unknown_events = set()  # event names no sequence names, warned about once
    # A junk token ending in '/' must get a 404, not a redirect to another path.
    app.router.redirect_slashes = False
    return app
