"""Wiring: every long-lived part built from Settings, in one place, for the daemon, the CLI,
the tests and the benchmarks."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

from nurture.clickpath import ClickPath
from nurture.clicks import ClickPolicy
from nurture.clock import Clock, system_clock
from nurture.conditions import Conditions, condition_problems
from nurture.config import Settings, ensure_secret_key
from nurture.db.connect import connect_database
from nurture.db.store import Store
from nurture.dispatcher import Dispatcher
from nurture.experiments import Experiments
from nurture.groupwrite import GroupWriter
from nurture.inbox import Inbox
from nurture.journey import Journey
from nurture.limits import AbuseLimits
from nurture.mail.render import Renderer, sample_problems
from nurture.mail.sandbox import Limits, Sandbox, make_environment
from nurture.mail.send import NoRelay, SmtpPool, SmtpTarget, Transport
from nurture.outside import OutsideEvents
from nurture.sendpolicy import DispatchPolicy
from nurture.sendtimes import Caps, SendTimes
from nurture.sequences import Catalog, read_sequences
from nurture.subscriptions import Subscriptions
from nurture.tokens import Signer
from nurture.tracking import ClickEvent, FloodNote, Tracker
from nurture.wakeup import Wakeup

__all__ = [
    "Services",
    "build_services",
    "build_renderer",
    "build_transport",
    "load_sequences",
]


@dataclass(frozen=True)
class Services:
    settings: Settings
    clock: Clock
    store: Store
    catalog: Catalog
    signer: Signer
    renderer: Renderer
    journey: Journey
    tracker: Tracker
    inbox: Inbox
    subscriptions: Subscriptions
    events: OutsideEvents
    dispatcher: Dispatcher
    click_writer: GroupWriter[ClickEvent | FloodNote]
    limits: AbuseLimits
    wakeup: Wakeup
    clicks: ClickPath

    async def close(self) -> None:
        """Write the clicks handed in, close the SMTP connections, then the database's."""
        await asyncio.to_thread(self.click_writer.close)
        await self.dispatcher.transport.close()
        self.store.dispose()


def load_sequences(settings: Settings) -> tuple[Sandbox, Catalog]:
    """The templates' environment and the validated sequences, every email of which renders
    for its sample subscriber; SequenceError otherwise."""
    env = make_environment(settings.templates_dir)
    # Every file as far as it reads, so that one mistake anywhere hides no other.
    reading = read_sequences(settings.sequences_dir, env=env)
    renderer = build_renderer(settings, env, Signer("sample-only"))
    problems = sample_problems(reading.sequences, renderer, skip=reading.unrendered)
    problems += condition_problems(reading.sequences, Conditions(env))
    return env, reading.catalog(problems)


def build_renderer(settings: Settings, env: Sandbox, signer: Signer) -> Renderer:
    """The renderer every email is made with, and every preview of one."""
    return Renderer(
        env,
        signer,
        settings.public_url,
        open_pixel=settings.open_tracking,
        honeypot=settings.honeypot,
        limits=Limits(max_bytes=settings.max_email_bytes, seconds=settings.render_seconds),
    )


def build_transport(settings: Settings, smtp: SmtpTarget | None = None) -> Transport:
    """The SMTP pool to ``smtp`` (the daemon's catcher), or to the configured relay; a process
    with neither sends nothing and loses nothing (``NoRelay``)."""
    if smtp is None and settings.smtp_host:
        smtp = SmtpTarget.from_settings(settings)
    if smtp is None:
        return NoRelay()
    return SmtpPool(smtp, size=settings.smtp_connections)


def build_services(
    settings: Settings,
    *,
    clock: Clock | None = None,
    smtp: SmtpTarget | None = None,
    transport: Transport | None = None,
) -> Services:
    """Raises SequenceError when the sequences do not validate: nothing starts on bad files."""
    settings = ensure_secret_key(settings)
    assert settings.secret_key
    clock = clock or system_clock(settings.clock_offset_file)
    env, catalog = load_sequences(settings)
    signer = Signer(settings.secret_key)
    store = Store(connect_database(settings.database_url))
    journey = Journey(
        catalog,
        conditions=Conditions(env),
        experiments=Experiments(min_sent=settings.ab_min_sent),
        send_times=SendTimes(
            default_zone=settings.default_timezone,
            caps=Caps(settings.max_emails_per_day, settings.max_emails_per_week),
        ),
    )
    renderer = build_renderer(settings, env, signer)
    policy = ClickPolicy(
        min_seconds=settings.click_min_seconds,
        window_seconds=settings.click_window_seconds,
        quick_seconds=settings.click_quick_seconds,
        burst_links=settings.click_burst_links,
    )
    dispatcher = Dispatcher(
        store=store,
        catalog=catalog,
        journey=journey,
        renderer=renderer,
        signer=signer,
        transport=transport or build_transport(settings, smtp),
        clock=clock,
        policy=DispatchPolicy.from_settings(settings),
        worker=uuid.uuid4().hex,
    )
    tracker = Tracker(store=store, catalog=catalog, journey=journey, signer=signer, policy=policy)
    writer: GroupWriter[ClickEvent | FloodNote] = GroupWriter(tracker.record, name="clicks")
    limits = AbuseLimits(
        click_limit=settings.click_flood_limit,
        client_limit=settings.client_flood_limit,
        seconds=settings.click_flood_seconds,
        subscribe_per_minute=settings.subscribe_per_minute,
        api_subscribe_per_minute=settings.api_subscribe_per_minute,
        subscribe_global_per_minute=settings.subscribe_global_per_minute,
        tarpit_seconds=settings.click_tarpit_seconds,
    )
    wakeup = Wakeup()
    return Services(
        settings=settings,
        clock=clock,
        store=store,
        catalog=catalog,
        signer=signer,
        renderer=renderer,
        journey=journey,
        tracker=tracker,
        inbox=Inbox(
            store=store,
            catalog=catalog,
            journey=journey,
            signer=signer,
            reply_address=settings.reply_address,
            bounce_address=settings.bounce_address,
        ),
        subscriptions=Subscriptions(store=store, catalog=catalog, journey=journey, signer=signer),
        events=OutsideEvents(store=store, catalog=catalog, journey=journey),
        dispatcher=dispatcher,
        click_writer=writer,
        limits=limits,
        wakeup=wakeup,
        clicks=ClickPath(tracker=tracker, writer=writer, limits=limits, wakeup=wakeup, clock=clock),
    )
