"""Send benchmark: how fast nurture drains due enrollments into a fast SMTP sink.

Two sides, in the same run, into the same Postfix ``smtp-sink`` on 127.0.0.1:

* ``bare``: N pre-rendered real messages (one sample with each recipient's address), sent by
  a plain aiosmtplib loop on K connections (K clients connected once, K coroutines each
  sending its share). This is the
  ceiling for Python + aiosmtplib on this machine.
* ``end-to-end``: N confirmed enrollments whose first email is due, drained by
  ``Dispatcher.run_once``: claim, engine decision, message row, render, compose, SMTP over an
  ``SmtpPool`` of K connections, and the outcome recorded in the database.

Setup (migrating a fresh database, enrolling N people) is not timed. Connecting to the sink is
timed on both sides. Each side runs ``--repeat`` times, alternating; the table shows the best
run of each side (and the median), and the ratio of the best runs. See bench/README.md.

Run: ``.venv/bin/python bench/send.py [--n 2000] [--connections 4] [--database URL]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import os
import pstats
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import aiosmtplib
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from nurture.clock import SystemClock
from nurture.config import Settings
from nurture.daemon import settle_heap
from nurture.db.connect import is_sqlite, normalize_url
from nurture.db.migrate import upgrade
from nurture.mail.compose import address_of, compose
from nurture.services import Services, build_services
from nurture.vocabulary import MessageKind

ROOT = Path(__file__).resolve().parent.parent
SEQUENCE = "starter"
SMTP_SINK = "/usr/sbin/smtp-sink"
FIRST_NAMES = ("Ada", "Grace", "Linus", "Zoë", "Ken", "Barbara", "", "José", "Margaret", "Alan")
T = TypeVar("T")


def say(message: str) -> None:
    """Progress goes to stderr, so stdout holds only the results."""
    print(message, file=sys.stderr, flush=True)


# -- the sink ------------------------------------------------------------------------------


@dataclass
class Sink:
    kind: str  # "smtp-sink" or "aiosmtpd (NOT COMPARABLE)"
    port: int
    process: subprocess.Popen[bytes]
    output: Path
    comparable: bool

    def stop(self) -> int | None:
        """Stop the sink; return how many messages it counted (smtp-sink -c), if known."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        counts = re.findall(rb"mesg=(\d+)", self.output.read_bytes())
        return int(counts[-1]) if counts else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        time.sleep(0.05)
    return False


def port_25_listening() -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 25), 0.2):
        return True
    return False


def install_postfix(log: Path) -> None:
    """Debian's postfix ships smtp-sink. Preseed "No configuration": no main.cf is written, so
    the postfix MTA itself cannot start and nothing is left listening on port 25."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        say("smtp-sink is missing and cannot be installed here (needs root and apt-get)")
        return
    say("smtp-sink is missing: installing Debian's postfix (not configured, not started) ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    listening_before = port_25_listening()
    with log.open("ab") as out:
        subprocess.run(["apt-get", "update"], stdout=out, stderr=out, env=env, check=False)
        subprocess.run(
            ["debconf-set-selections"],
            input=b"postfix postfix/main_mailer_type select No configuration\n",
            stdout=out,
            stderr=out,
            env=env,
            check=False,
        )
        done = subprocess.run(
            ["apt-get", "install", "-y", "postfix"], stdout=out, stderr=out, env=env, check=False
        )
    if done.returncode != 0:
        say(f"apt-get install postfix failed (exit {done.returncode}); see {log}")
    if port_25_listening() and not listening_before:
        say(
            "warning: something now listens on 127.0.0.1:25 after installing postfix; "
            "stop it with `postfix stop`"
        )


def start_sink(workdir: Path) -> Sink:
    if not Path(SMTP_SINK).exists():
        install_postfix(Path(tempfile.gettempdir()) / "nurture-bench-apt.log")
    port = free_port()
    output = workdir / "sink.out"
    with output.open("wb") as out:
        if Path(SMTP_SINK).exists():
            # -c: running counters on stdout (read at the end to check the sink got every
            # message); -u: required when run as root; 1000: listen backlog.
            cmd = [SMTP_SINK, "-c"]
            if os.geteuid() == 0:
                cmd += ["-u", "nobody"]
            cmd += [f"127.0.0.1:{port}", "1000"]
            process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
            if wait_for_port(port, process):
                return Sink("smtp-sink", port, process, output, comparable=True)
            say(f"smtp-sink did not start: {output.read_text(errors='replace').strip()}")
            if process.poll() is None:
                process.kill()
        # The fallback is a Python server: it is slower than both sides, so the figures
        # measure it more than nurture.
        cmd = [
            sys.executable,
            "-m",
            "aiosmtpd",
            "-n",
            "-c",
            "aiosmtpd.handlers.Sink",
            "-l",
            f"127.0.0.1:{port}",
        ]
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    if not wait_for_port(port, process):
        raise SystemExit(f"no SMTP sink could be started: {output.read_text(errors='replace')}")
    return Sink("aiosmtpd (NOT COMPARABLE)", port, process, output, comparable=False)


# -- databases -----------------------------------------------------------------------------


@contextlib.contextmanager
def fresh_database(spec: str, workdir: Path, run: int) -> Iterator[str]:
    """A new, empty database for one run: a file for SQLite, a schema for PostgreSQL."""
    if spec == "sqlite":
        spec = f"sqlite:///{workdir / f'bench-{run}.db'}"
    url = normalize_url(spec)
    if is_sqlite(url):
        path = make_url(url).database
        if not path or path == ":memory:":
            raise SystemExit("--database: give a SQLite file, not an in-memory database")
        files = [Path(path + suffix) for suffix in ("", "-wal", "-shm", "-journal")]
        if files[0].exists():
            raise SystemExit(f"--database: {path} exists; the bench wants a fresh file each run")
        try:
            yield url
        finally:
            for f in files:
                f.unlink(missing_ok=True)
        return
    schema = "bench_" + uuid.uuid4().hex[:12]
    admin = create_engine(url)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        schema_url = make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
        try:
            yield schema_url.render_as_string(hide_password=False)
        finally:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        admin.dispose()


def describe_database(spec: str) -> str:
    if spec == "sqlite":
        return "SQLite (temporary file)"
    return make_url(normalize_url(spec)).render_as_string(hide_password=True)


# -- the two sides -------------------------------------------------------------------------


@dataclass
class Run:
    side: str
    messages: int
    seconds: float
    cpu: float  # CPU seconds of this process (all its threads) during the timed part
    phases: dict[str, float] = field(default_factory=dict)


def settings_for(url: str, args: argparse.Namespace, port: int, workdir: Path) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=url,
        sequences_dir=ROOT / "sequences",
        templates_dir=ROOT / "templates",
        data_dir=workdir,
        secret_key="bench-secret-key",
        base_url="https://news.acme.example",
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_connections=args.connections,
        batch_size=args.batch_size,
    )


def sample_message(services: Services) -> tuple[str, bytes]:
    """One real message, rendered and composed as the dispatcher does for the first due step
    (welcome: a confirmed subscriber skips the confirmation step)."""
    sequence = services.catalog.get(SEQUENCE)
    assert sequence is not None
    step = sequence.steps[1].id
    rendered = services.renderer.render(
        sequence,
        step,
        MessageKind.STEP,
        message_id=1,
        email="reader000000@example.com",
        fields={"first_name": "Ada"},
    )
    sender = address_of(sequence.sender)
    data = compose(
        sender=sequence.sender,
        to="reader000000@example.com",
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        message_id=services.signer.message_id(1, sender.rpartition("@")[2]),
        date=services.clock.now(),
        unsubscribe_url=services.renderer.unsubscribe_url(1),
    )
    return sender, data


async def bare_loop(port: int, sender: str, data: bytes, n: int, k: int) -> Run:
    """N pre-rendered messages over K connections, nothing else. Each recipient gets its own
    bytes (the sample with its address in To:), made before the clock starts: sending one
    buffer N times would keep it hot in the CPU cache, which no real send enjoys."""
    shares = [n // k + (1 if i < n % k else 0) for i in range(k)]
    starts = [sum(shares[:i]) for i in range(k)]
    clients = [aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30) for _ in range(k)]
    sample_to = b"reader000000@example.com"
    messages = [data.replace(sample_to, f"reader{i:06d}@example.com".encode()) for i in range(n)]

    async def worker(client: aiosmtplib.SMTP, start: int, count: int) -> None:
        await client.connect()
        for i in range(start, start + count):
            await client.sendmail(sender, [f"reader{i:06d}@example.com"], messages[i])

    began, cpu = time.perf_counter(), time.process_time()
    jobs = zip(clients, starts, shares, strict=True)
    await asyncio.gather(*(worker(client, start, count) for client, start, count in jobs))
    seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
    for client in clients:
        await client.quit()
    return Run("bare aiosmtplib", n, seconds, cpu)


async def end_to_end(
    url: str,
    args: argparse.Namespace,
    sink: Sink,
    workdir: Path,
    profile: cProfile.Profile | None = None,
) -> Run:
    """Enroll N people (untimed), then time draining them all through the dispatcher."""
    n = args.n
    settings = settings_for(url, args, sink.port, workdir)
    upgrade(url)
    clock = SystemClock()
    services = build_services(settings, clock=clock)
    try:
        # Enrolled an hour ago: the welcome step (10 minutes after confirming) is due now.
        then = clock.now() - timedelta(hours=1)
        for i in range(n):
            services.subscriptions.subscribe(
                email=f"reader{i:06d}@example.com",
                sequence_id=SEQUENCE,
                fields={"first_name": FIRST_NAMES[i % 10]},
                now=then,
                confirmed=True,
            )
        # As `nurture run` does once its parts are built (an unfrozen heap costs the daemon
        # about 40% of planning time in garbage collection).
        settle_heap()
        # The daemon's own dispatcher, its SMTP pool to the sink; its `timings` add up the
        # wall time of each phase.
        dispatcher = services.dispatcher
        max_batches = n // settings.batch_size + 5
        began, cpu = time.perf_counter(), time.process_time()
        if profile is not None:
            profile.enable()
        await dispatcher.run_once(max_batches=max_batches)
        if profile is not None:
            profile.disable()
        seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
        await dispatcher.transport.close()
        with services.store.transaction() as tx:
            counts = tx.reports.message_counts()
        if counts.get("sent", 0) != n or sum(counts.values()) != n:
            raise SystemExit(f"end-to-end: expected {n} messages sent, the database has {counts}")
        phases = {k: dispatcher.timings[k] for k in ("plan", "render", "send", "record", "claim")}
        return Run("end-to-end", n, seconds, cpu, phases)
    finally:
        services.store.dispose()


# -- profiling -----------------------------------------------------------------------------


async def _inline_to_thread(func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    return func(*args, **kwargs)


async def profiled_run(args: argparse.Namespace, sink: Sink, workdir: Path) -> str:
    """One extra end-to-end drain under cProfile, not counted in the figures; returns the report.
    cProfile sees only the thread that enables it, so the dispatcher's asyncio.to_thread calls
    run inline here (the dispatcher awaits each of them before doing anything else, so the
    work is the same)."""
    profile = cProfile.Profile()
    original = asyncio.to_thread
    asyncio.to_thread = _inline_to_thread
    try:
        with fresh_database(args.database, workdir, 0) as url:
            run = await end_to_end(url, args, sink, workdir, profile=profile)
    finally:
        asyncio.to_thread = original
    profile.dump_stats(args.profile)
    stats = pstats.Stats(profile)
    top = args.profile_top
    lines = [
        f"profile: one extra end-to-end drain under cProfile ({run.seconds:.2f} s with the "
        f"profiler on, {run.seconds / args.n * 1e6:.0f} us a message); "
        f"stats in {args.profile}",
        f"top {top} functions of nurture by cumulative time:",
        f"  {'cumulative s':>12} {'% of drain':>10} {'own s':>8} {'calls':>8}  function",
    ]
    rows = []
    for (filename, line, name), (_cc, calls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if "/nurture/" in filename:
            short = filename.split("/nurture/", 1)[1]
            rows.append((cumtime, tottime, calls, f"nurture/{short}:{line}({name})"))
    rows.sort(reverse=True)
    for cumtime, tottime, calls, where in rows[:top]:
        lines.append(
            f"  {cumtime:12.3f} {100 * cumtime / run.seconds:9.1f}% {tottime:8.3f} "
            f"{calls:8d}  {where}"
        )
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(top)
    lines.append(
        f"top {top} functions overall by own time (ncalls tottime percall cumtime percall):"
    )
    lines += [
        "  " + line.strip() for line in out.getvalue().splitlines() if re.match(r"\s*\d", line)
    ]
    return "\n".join(lines)


# -- the report ----------------------------------------------------------------------------


def summarize(runs: list[Run]) -> tuple[Run, float]:
    """The best run (least time) and the median time."""
    return min(runs, key=lambda r: r.seconds), statistics.median(r.seconds for r in runs)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


async def main(args: argparse.Namespace) -> int:
    if args.n < 1 or args.connections < 1 or args.repeat < 1:
        raise SystemExit("--n, --connections and --repeat must be at least 1")
    with tempfile.TemporaryDirectory(prefix="nurture-bench-") as tmp:
        workdir = Path(tmp)
        sink = start_sink(workdir)
        runs: dict[str, list[Run]] = {"bare": [], "e2e": []}
        counted: int | None = None
        try:
            with fresh_database("sqlite", workdir, -1) as url:
                services = build_services(settings_for(url, args, sink.port, workdir))
                sender, data = sample_message(services)
            for r in range(1, args.repeat + 1):
                bare = await bare_loop(sink.port, sender, data, args.n, args.connections)
                say(f"run {r}/{args.repeat}: bare {bare.seconds:.3f} s; enrolling {args.n} ...")
                runs["bare"].append(bare)
                with fresh_database(args.database, workdir, r) as url:
                    e2e = await end_to_end(url, args, sink, workdir)
                runs["e2e"].append(e2e)
                say(f"run {r}/{args.repeat}: end-to-end {e2e.seconds:.3f} s")
            rss_after_runs = peak_rss_mib()
            profile_report = await profiled_run(args, sink, workdir) if args.profile else None
        finally:
            counted = sink.stop()

    bare_best, bare_median = summarize(runs["bare"])
    e2e_best, e2e_median = summarize(runs["e2e"])
    n = args.n
    expected = 2 * n * args.repeat + (n if args.profile else 0)
    print()
    print(
        f"nurture send benchmark: N={n}, connections={args.connections}, "
        f"batch_size={args.batch_size}, database={describe_database(args.database)}"
    )
    print(
        f"sink: {sink.kind} on 127.0.0.1:{sink.port}; message: {len(data):,} bytes "
        f"(sequence {SEQUENCE!r}, welcome step); best of {args.repeat} runs per side "
        "(median in the last column)"
    )
    if not sink.comparable:
        print(
            "WARNING: smtp-sink is not available; the sink is aiosmtpd, which is slower than "
            "both sides: these figures are NOT comparable with smtp-sink figures"
        )
    print()
    print(
        f"{'side':<16} {'messages':>8} {'seconds':>8} {'msgs/s':>8} {'median msgs/s':>14} "
        f"{'CPU s':>7}"
    )
    for best, median in ((bare_best, bare_median), (e2e_best, e2e_median)):
        print(
            f"{best.side:<16} {best.messages:>8} {best.seconds:>8.3f} "
            f"{best.messages / best.seconds:>8.0f} {best.messages / median:>14.0f} "
            f"{best.cpu:>7.3f}"
        )
    # Each end-to-end run follows its own bare run: the ratio of each pair shares the
    # machine's mood of that moment, and their median is the figure least moved by noise.
    pairs = sorted(b.seconds / e.seconds for b, e in zip(runs["bare"], runs["e2e"], strict=True))
    ratio = statistics.median(pairs)
    overhead_us = (e2e_best.seconds - bare_best.seconds) / n * 1e6
    verdict = "met" if ratio >= 0.75 else "NOT met"  # issue 12's target
    print()
    print(
        f"ratio end-to-end / bare = {ratio:.2f} (median of {len(pairs)} paired runs; "
        f"range {pairs[0]:.2f}-{pairs[-1]:.2f}; "
        f"best runs {bare_best.seconds / e2e_best.seconds:.2f}); "
        f"target >= 0.75: {verdict}"
    )
    e2e_us, bare_us = e2e_best.seconds / n * 1e6, bare_best.seconds / n * 1e6
    print(
        f"per-message overhead of nurture: {overhead_us:.0f} us "
        f"(end-to-end {e2e_us:.0f} us - bare {bare_us:.0f} us a message)"
    )
    phases = ", ".join(
        f"{k} {v:.3f} s ({100 * v / e2e_best.seconds:.0f}%)" for k, v in e2e_best.phases.items()
    )
    print(f"end-to-end wall time by phase (best run): {phases}")
    print(f"peak RSS: {rss_after_runs:.1f} MiB (whole bench process, setup included)")
    if counted is not None:
        status = "ok" if counted == expected else "MISMATCH"
        print(f"sink counted {counted} messages, expected {expected}: {status}")
    if profile_report:
        print()
        print(profile_report)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--n", type=int, default=2000, help="messages per run, each side")
    parser.add_argument("--connections", type=int, default=4, help="SMTP connections, each side")
    default_batch = Settings.model_fields["batch_size"].default
    parser.add_argument(
        "--batch-size",
        type=int,
        default=default_batch,
        help="the dispatcher's batch size (NURTURE_BATCH_SIZE)",
    )
    parser.add_argument(
        "--database",
        default="sqlite",
        help="'sqlite' (a temporary file), a SQLite file URL that does not exist "
        "yet, or a PostgreSQL URL (a throwaway schema is created and dropped)",
    )
    parser.add_argument("--repeat", type=int, default=5, help="runs per side; the best is shown")
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="also drain once more under cProfile, write the stats to FILE and "
        "print the hotspots (not counted in the figures)",
    )
    parser.add_argument("--profile-top", type=int, default=15, help="hotspots to print")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
