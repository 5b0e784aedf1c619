"""Wiring: build every long-lived part from Settings once, for the daemon, the CLI and tests."""

from __future__ import annotations

from dataclasses import dataclass

from nurture.clicks import ClickPolicy
from nurture.clock import Clock, SystemClock
from nurture.config import Settings, ensure_secret_key
from nurture.db.session import make_engine
from nurture.db.store import Store
from nurture.mail.render import Renderer, make_environment
from nurture.sequences import Catalog, load_catalog
from nurture.tokens import Signer
from nurture.tracking import Tracker

__all__ = ["Services", "build_services"]


@dataclass(frozen=True)
class Services:
    settings: Settings
    store: Store
    catalog: Catalog
    signer: Signer
    renderer: Renderer
    tracker: Tracker
    clock: Clock


def build_services(settings: Settings, *, clock: Clock | None = None) -> Services:
    """Raises SequenceError when the sequences do not validate: nothing starts on bad files."""
    settings = ensure_secret_key(settings)
    assert settings.secret_key
    env = make_environment(settings.templates_dir)
    catalog = load_catalog(settings.sequences_dir, env=env)
    signer = Signer(settings.secret_key)
    store = Store(make_engine(settings.database_url))
    return Services(
        settings=settings,
        store=store,
        catalog=catalog,
        signer=signer,
        renderer=Renderer(
            env,
            signer,
            settings.public_url,
            open_pixel=settings.open_tracking,
            honeypot=settings.honeypot,
        ),
        tracker=Tracker(
            store=store,
            catalog=catalog,
            signer=signer,
            reply_address=settings.reply_address,
            base_url=settings.public_url,
            policy=ClickPolicy(
                min_seconds=settings.click_min_seconds,
                window_seconds=settings.click_window_seconds,
                burst_links=settings.click_burst_links,
            ),
        ),
        clock=clock or SystemClock(),
    )
