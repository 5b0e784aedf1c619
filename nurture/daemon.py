"""The daemon: one process with the web app, the tick, the IMAP reader when a
mailbox is configured and (without an SMTP server) the built-in mail catcher; or, to scale
them apart, only the web app (``--role web``, as many processes as the clicks need, sharing
one port) or only the rest (``--role worker``, as many as the sending needs). It holds no
business logic: the tick asks tracking and the dispatcher to do one unit of work each; the
database says what is due.

``Daemon.start`` builds everything (a busy port, an unreachable database or, on SQLite, a
second daemon on the same file is one clear error before anything runs; a secret key that no
longer verifies mail of the last 30 days is a loud line, nurture.keys), ``serve`` answers
HTTP until SIGTERM or SIGINT, ``stop`` stops claiming, lets the mail already on the wire finish
(at most ``NURTURE_SHUTDOWN_TIMEOUT_SECONDS``) and every outcome be recorded, puts back what
was claimed but not started (due at once for the next worker), then closes the connections.
A second signal exits at once; what it leaves claimed is taken over by the next worker.

The worker says it is alive every ``NURTURE_WORKER_TIMEOUT_SECONDS / 6``; with each heartbeat
it also takes over the mail of workers silent for longer than the timeout (both on the
database's clock, see ``nurture.handover``). The tick, the heartbeat and the IMAP poll run on
the event loop's monotonic clock (``nurture.periodic``): a step of the wall clock moves none
of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import os
import signal
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import IO

import uvicorn

from nurture import edits
from nurture.config import Settings
from nurture.db.migrate import ensure_schema
from nurture.errors import ConfigError
from nurture.keys import check_keys
from nurture.mail.catcher import MaildirHandler, Outbox, SmtpServerThread
from nurture.mail.imap import ImapMailbox, ImapSettings
from nurture.mail.send import SmtpTarget
from nurture.periodic import Periodic
from nurture.process import listen, lock_sqlite_file
from nurture.reader import MailboxReader
from nurture.services import Services, build_services
from nurture.ticker import Ticker
from nurture.web.app import create_app

__all__ = ["Daemon", "run", "settle_heap"]

log = logging.getLogger(__name__)


def settle_heap() -> None:
    """Move everything built at start-up (modules, SQLAlchemy and Jinja2 internals, the
    sequences) out of the garbage collector's sight. Full collections otherwise walk those
    objects again and again: bench/send.py measured them at 40% of planning time."""
    gc.collect()
    gc.freeze()
    # Each batch allocates many short-lived objects; collecting the youngest generation every
    # 700 allocations (the default) cost ~18% of the drain in bench/send.py.
    gc.set_threshold(20_000, 20, 20)


class _Server(uvicorn.Server):
    """uvicorn, without its own signal handling: the daemon stops it, after its own work."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


ROLES = ("all", "web", "worker")


class Daemon:
    """``role``: ``all`` (one process does everything), ``web`` (the web app only: tracked
    links, the form, the API and webhooks; it sends nothing, so run as many as the clicks
    need) or ``worker`` (the tick, sending, the heartbeat and IMAP; no HTTP)."""

    def __init__(self, settings: Settings, *, role: str = "all") -> None:
        assert role in ROLES, role
        self.settings = settings
        self.role = role
        self.web = role in ("all", "web")
        self.worker = role in ("all", "worker")
        self.services: Services | None = None
        self._socket: socket.socket | None = None
        self._catcher: SmtpServerThread | None = None
        self._jobs: dict[str, Periodic] = {}
        self._server: _Server | None = None
        self._stopping = threading.Event()
        self._reader: MailboxReader | None = None
        self._started = False
        self._file_lock: IO[str] | None = None
        self._registered = False
        self._signals = 0
        self._stopped = asyncio.Event()  # a worker with no web app waits on it
        self._ticker: Ticker | None = None

    # -- start ---------------------------------------------------------------------------

    async def start(self) -> None:
        settings = self.settings
        # One worker per SQLite file; web processes beside it take short transactions only.
        self._file_lock = lock_sqlite_file(settings.database_url) if self.worker else None
        ensure_schema(settings.database_url)
        if self.web:
            self._socket = listen(settings.http_host, settings.http_port, shared=self.role == "web")
        outbox = None
        smtp = None
        if settings.uses_catcher:
            try:
                if self.worker:
                    outbox, smtp = self._start_catcher()
                else:  # the worker's catcher writes it; this process shows it at /outbox
                    outbox = Outbox(settings.outbox_dir)
            except OSError as exc:
                raise ConfigError(
                    f"cannot keep the catcher's mail in {settings.outbox_dir}: "
                    f"{exc.strerror or exc}; NURTURE_DATA_DIR must be a folder nurture can write"
                ) from None
        # A key file generated now, beside a database that has sent mail: its data folder
        # was probably lost (an ephemeral container), and every link sent with it.
        generated = (
            None
            if settings.secret_key or settings.secret_key_file.exists()
            else settings.secret_key_file
        )
        self.services = build_services(settings, smtp=smtp)
        await asyncio.to_thread(self._check_keys, generated)
        if self.worker:
            await asyncio.to_thread(self._register)
        else:  # a worker measures its clock with each heartbeat, the first one at once
            await asyncio.to_thread(self.services.dispatcher.handover.check_clock)
        settle_heap()
        if self.worker:
            self._ticker = Ticker(self.services, self._stopping)
            self.services.wakeup.attach(self._ticker.wake, asyncio.get_running_loop())
            self._schedule("tick", self._ticker.interval, settings.tick_seconds)
            self._schedule("heartbeat", self.heartbeat, settings.heartbeat_seconds)
            if settings.imap_host:
                self._start_imap()
        if self.web:
            self._server = _Server(
                uvicorn.Config(
                    create_app(self.services, outbox=outbox),
                    log_config=None,
                    access_log=False,
                    lifespan="off",
                    server_header=False,
                )
            )
        for job in self._jobs.values():
            job.start()
        self._started = True
        where = (
            f"web on http://{settings.http_host}:{self._socket.getsockname()[1]}"
            if self._socket is not None
            else "no web app"
        )
        log.info(
            "nurture is running (%s): %d sequences, %s, links to %s%s",
            self.role,
            len(self.services.catalog.sequences),
            where,
            settings.public_url,
            f", tick every {settings.tick_seconds}s" if self.worker else ", sending nothing",
            extra={"action": "daemon_started", "role": self.role},
        )
        if outbox is not None and self.web:
            self._warn_open_outbox()

    def _start_catcher(self) -> tuple[Outbox, SmtpTarget]:
        settings = self.settings
        self._catcher = SmtpServerThread(
            MaildirHandler(settings.outbox_dir), port=settings.catcher_port
        ).start()
        log.warning(
            "no NURTURE_SMTP_HOST: emails go to the built-in catcher (SMTP 127.0.0.1:%d); "
            "see them at %s/outbox",
            self._catcher.port,
            settings.public_url,
            extra={"action": "catcher_started", "port": self._catcher.port},
        )
        return Outbox(settings.outbox_dir), SmtpTarget("127.0.0.1", self._catcher.port)

    def _warn_open_outbox(self) -> None:
        """The catcher's pages hold everyone's confirmation links: on an address others can
        reach (0.0.0.0 in a container), say who may see them and how to open them."""
        host = self.settings.http_host
        if self.settings.admin_password:
            return  # they ask for it from everyone
        with contextlib.suppress(ValueError):
            if host == "localhost" or ipaddress.ip_address(host).is_loopback:
                return
        log.warning(
            "NURTURE_HTTP_HOST=%s with the built-in catcher: /outbox and /admin answer only "
            "browsers on this machine (loopback); set NURTURE_ADMIN_PASSWORD to open them "
            "elsewhere with it, or NURTURE_HTTP_HOST=127.0.0.1",
            host,
            extra={"action": "catcher_exposed", "host": host},
        )

    def _schedule(self, name: str, job: Callable[[], Awaitable[None]], seconds: float) -> None:
        self._jobs[name] = Periodic(name, job, seconds)

    def _start_imap(self) -> None:
        settings, services = self.settings, self.services
        assert services is not None
        self._reader = MailboxReader(
            ImapMailbox(ImapSettings.from_settings(settings)),
            inbox=services.inbox,
            clock=services.clock,
        )
        self._schedule("imap", self._reader.poll, settings.imap_poll_seconds)
        self._reader.watch(self._poll_now)
        log.info(
            "reading replies from imap://%s/%s every %ss (and at once on IMAP IDLE)",
            settings.imap_host,
            settings.imap_folder,
            settings.imap_poll_seconds,
            extra={"action": "imap_enabled"},
        )

    def _check_keys(self, generated: Path | None) -> None:
        assert self.services is not None
        for problem in check_keys(
            self.services.store,
            self.services.signer,
            now=self.services.clock.now(),
            record=self.worker,  # the worker signs; a web process only verifies
            generated=generated,
        ):
            log.error("%s", problem, extra={"action": "secret_key_changed"})

    def _register(self) -> None:
        assert self.services is not None
        self._tell_who_waits()
        taken = self.services.dispatcher.handover.register(only_worker=self._file_lock is not None)
        if taken:
            log.warning(
                "took over %d messages from the daemon that ran before this one",
                taken,
                extra={"action": "mail_reclaimed", "messages": taken},
            )
        self._registered = True

    def _tell_who_waits(self) -> None:
        """At start-up: people at steps the files no longer have (they wait for an operator's
        `nurture move` or `nurture end`), and people held for a confirmation."""
        assert self.services is not None
        with self.services.store.transaction() as tx:
            stranded = edits.stranded(self.services.journey, tx)
            held = tx.reports.held_by_sequence()
        for line in edits.describe_stranded(stranded):
            log.warning("%s", line, extra={"action": "enrollments_stranded"})
        for sequence_id, n in sorted(held.items()):
            log.info(
                "%d held in %s: they have not confirmed, and nothing is sent before they do",
                n,
                sequence_id,
                extra={"action": "enrollments_held", "sequence": sequence_id, "held": n},
            )

    # -- the jobs ------------------------------------------------------------------------

    async def heartbeat(self) -> None:
        """Say this worker is alive; take over the mail of workers silent too long."""
        assert self.services is not None
        dispatcher = self.services.dispatcher
        timeout = timedelta(seconds=self.settings.worker_timeout_seconds)
        try:
            gone, taken = await asyncio.to_thread(
                lambda: dispatcher.handover.heartbeat(timeout=timeout)
            )
        except Exception:
            log.exception("heartbeat failed", extra={"action": "heartbeat_failed"})
            return
        if gone or taken:
            log.warning(
                "took over %d messages from %d silent workers",
                taken,
                len(gone),
                extra={"action": "mail_reclaimed", "messages": taken, "workers": gone},
            )

    def _poll_now(self) -> None:
        if "imap" in self._jobs and not self._stopping.is_set():
            self._jobs["imap"].now()

    # -- serve and stop ------------------------------------------------------------------

    async def serve(self) -> None:
        """Answer HTTP (a worker: just work) until SIGTERM or SIGINT (or ``request_stop``)."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop)
        try:
            if self._server is not None and self._socket is not None:
                await self._server.serve(sockets=[self._socket])
            else:
                await self._stopped.wait()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)

    def request_stop(self) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning(
                "second signal: exiting now; what this worker claimed is taken over by the next",
                extra={"action": "daemon_killed"},
            )
            logging.shutdown()
            os._exit(1)
        log.info("stopping: finishing the mail on the wire", extra={"action": "daemon_stopping"})
        if self._server is not None:
            self._server.should_exit = True
        self._stopped.set()
        self._stopping.set()
        if self.services is not None:
            self.services.dispatcher.stopping.set()

    async def stop(self) -> None:
        """Stop claiming; let the mail on the wire finish (bounded by the shutdown timeout)
        and an IMAP poll in flight end; put back what was claimed and not started; then close
        the SMTP connections, the catcher and the database, in that order."""
        self._stopping.set()
        if self.services is not None:
            self.services.dispatcher.stopping.set()
        if self._reader is not None:
            await self._reader.stop()
        for job in self._jobs.values():
            await job.stop()
        if self._ticker is not None:
            await self._ticker.finish()
        if self._registered:
            await asyncio.to_thread(self._unregister)
        if self.services is not None:
            await self.services.close()
        if self._catcher is not None:
            self._catcher.stop()
        if self._socket is not None:
            self._socket.close()
        if self._file_lock is not None:
            self._file_lock.close()
        if self._started:
            log.info("stopped", extra={"action": "daemon_stopped"})

    def _unregister(self) -> None:
        assert self.services is not None
        released = self.services.dispatcher.handover.unregister()
        if released:
            log.info(
                "put back %d claimed messages not started",
                released,
                extra={"action": "claims_released", "messages": released},
            )


async def run(settings: Settings, *, role: str = "all") -> None:
    daemon = Daemon(settings, role=role)
    try:
        await daemon.start()
        await daemon.serve()
    finally:
        await daemon.stop()
