"""The daemon: one process with the web app, one APScheduler tick and (without an SMTP server)
the built-in mail catcher. It holds no business logic: the tick asks the dispatcher to do one
unit of work; the database says what is due.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from datetime import UTC, datetime

import uvicorn
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import inspect

from nurture.config import Settings
from nurture.db.session import alembic_config, is_sqlite, upgrade
from nurture.dispatcher import Dispatcher, DispatchPolicy
from nurture.errors import ConfigError
from nurture.mail.catcher import MaildirHandler, Outbox, SmtpServerThread
from nurture.mail.imap import ImapPoller, ImapSettings
from nurture.mail.send import SmtpPool, SmtpTarget
from nurture.services import Services, build_services
from nurture.web.app import create_app

__all__ = ["run", "prepare_database", "settle_heap"]

log = logging.getLogger(__name__)

IDLE_SECONDS = 25 * 60  # RFC 2177: re-issue IDLE at least every 29 minutes


def prepare_database(settings: Settings) -> None:
    """SQLite is upgraded in place; a server database must already be at head."""
    if is_sqlite(settings.database_url):
        upgrade(settings.database_url)
        return
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from nurture.db.session import make_engine

    head = ScriptDirectory.from_config(alembic_config(settings.database_url)).get_current_head()
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
            has_tables = inspect(conn).has_table("enrollments")
    finally:
        engine.dispose()
    if current != head or not has_tables:
        raise ConfigError(
            f"the database is at revision {current or 'none'}, not {head}: run `nurture db upgrade`"
        )


def settle_heap() -> None:
    """Move everything built at start-up (modules, SQLAlchemy and Jinja2 internals, the
    sequences) out of the garbage collector's sight. Full collections otherwise walk those
    objects again and again: bench/send.py measured them at 40% of planning time."""
    gc.collect()
    gc.freeze()
    # Each batch allocates many short-lived objects; collecting the youngest generation every
    # 700 allocations (the default) cost ~18% of the drain in bench/send.py.
    gc.set_threshold(20_000, 20, 20)


class Daemon:
    def __init__(self, services: Services, dispatcher: Dispatcher) -> None:
        self.services = services
        self.dispatcher = dispatcher
        self._busy = asyncio.Lock()

    async def tick(self) -> None:
        if self._busy.locked():
            return
        async with self._busy:
            try:
                tracker, clock = self.services.tracker, self.services.clock
                await asyncio.to_thread(lambda: tracker.evaluate_clicks(clock.now()))
                planned, sent = await self.dispatcher.run_once()
            except Exception:
                log.exception(
                    "tick failed; the next one tries again", extra={"action": "tick_failed"}
                )
                return
            if planned or sent:
                log.info(
                    "tick: %d enrollments decided, %d emails attempted",
                    planned,
                    sent,
                    extra={"action": "tick", "planned": planned, "sent": sent},
                )

    async def drain(self) -> None:
        """Wait for a tick in flight to finish (graceful shutdown)."""
        async with self._busy:
            pass


async def _poll(poller: ImapPoller) -> None:
    """One IMAP poll in a thread; a failure is logged and the next poll tries again."""
    try:
        handled = await asyncio.to_thread(poller.poll_once)
    except Exception:
        log.exception("IMAP poll failed; the next one tries again", extra={"action": "imap_failed"})
        return
    if handled:
        log.info("IMAP: %d messages handled", handled, extra={"action": "imap_polled"})


def _idle(
    poller: ImapPoller,
    scheduler: AsyncIOScheduler,
    loop: asyncio.AbstractEventLoop,
    stopping: threading.Event,
) -> None:
    """Wait on IMAP IDLE in a thread; when the server announces mail, run the poll job now
    instead of at its next turn. Without IDLE on the server, polling alone it is."""
    while not stopping.is_set():
        try:
            news = poller.wait_for_mail(timeout=IDLE_SECONDS)
        except Exception as exc:  # noqa: BLE001 - the server went away: wait, then try again
            log.warning(
                "IMAP IDLE failed (%s); retrying in a minute",
                exc,
                extra={"action": "imap_idle_failed"},
            )
            stopping.wait(60)
            continue
        if news is None:
            log.info("the IMAP server has no IDLE: polling only", extra={"action": "imap_no_idle"})
            return
        if news and not stopping.is_set():
            loop.call_soon_threadsafe(_poll_now, scheduler)


def _poll_now(scheduler: AsyncIOScheduler) -> None:
    if scheduler.running:
        scheduler.modify_job("imap", next_run_time=datetime.now(UTC))


async def run(settings: Settings) -> None:
    prepare_database(settings)
    services = build_services(settings)
    settings = services.settings
    catcher: SmtpServerThread | None = None
    outbox: Outbox | None = None
    if settings.uses_catcher:
        catcher = SmtpServerThread(MaildirHandler(settings.outbox_dir), port=settings.catcher_port)
        catcher.start()
        outbox = Outbox(settings.outbox_dir)
        target = SmtpTarget("127.0.0.1", catcher.port)
        log.warning(
            "no NURTURE_SMTP_HOST: emails go to the built-in catcher (SMTP 127.0.0.1:%d); "
            "see them at %s/outbox",
            catcher.port,
            settings.public_url,
            extra={"action": "catcher_started", "port": catcher.port},
        )
    else:
        target = SmtpTarget.from_settings(settings)
    pool = SmtpPool(target, size=settings.smtp_connections)
    dispatcher = Dispatcher(
        store=services.store,
        catalog=services.catalog,
        renderer=services.renderer,
        signer=services.signer,
        transport=pool,
        clock=services.clock,
        policy=DispatchPolicy.from_settings(settings),
    )
    daemon = Daemon(services, dispatcher)
    settle_heap()
    scheduler = AsyncIOScheduler(timezone=UTC)
    stopping = threading.Event()
    scheduler.add_job(
        daemon.tick,
        "interval",
        seconds=settings.tick_seconds,
        id="tick",
        max_instances=1,
        coalesce=True,
        next_run_time=datetime.now(UTC),
    )
    if settings.imap_host:
        poller = ImapPoller(
            ImapSettings.from_settings(settings),
            tracker=services.tracker,
            store=services.store,
            clock=services.clock,
        )
        scheduler.add_job(
            _poll,
            "interval",
            args=[poller],
            seconds=settings.imap_poll_seconds,
            id="imap",
            max_instances=1,
            coalesce=True,
            next_run_time=datetime.now(UTC),
        )
        idler = threading.Thread(
            target=_idle,
            args=(poller, scheduler, asyncio.get_running_loop(), stopping),
            name="imap-idle",
            daemon=True,
        )
        idler.start()
        log.info(
            "reading replies from imap://%s/%s every %ss (and at once on IMAP IDLE)",
            settings.imap_host,
            settings.imap_folder,
            settings.imap_poll_seconds,
            extra={"action": "imap_enabled"},
        )
    app = create_app(services, outbox=outbox)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.http_host,
            port=settings.http_port,
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
        )
    )
    scheduler.start()
    log.info(
        "nurture is running: %d sequences, web on http://%s:%d, links to %s, tick every %ss",
        len(services.catalog.sequences),
        settings.http_host,
        settings.http_port,
        settings.public_url,
        settings.tick_seconds,
        extra={"action": "daemon_started"},
    )
    try:
        await server.serve()
    finally:
        log.info("shutting down: finishing the tick in flight", extra={"action": "daemon_stopping"})
        stopping.set()
        scheduler.shutdown(wait=False)
        await daemon.drain()
        await pool.close()
        if catcher is not None:
            catcher.stop()
        services.store.dispose()
        log.info("stopped", extra={"action": "daemon_stopped"})
