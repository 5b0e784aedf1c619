"""Workers benchmark: N due emails drained by one `nurture run --role worker` and then, on a
copy of the same PostgreSQL data, by two, into Postfix's smtp-sink; a `--role web` process
answers clicks all along.

Printed: each drain's emails per second and the ratio two/one; that the database holds
exactly N sent emails, each sent once (one attempt: nothing sent twice) and the sink counted
N per run; and the latency of the web process's answers to a click every 50 ms while the
workers are busy (p50, p99, max).

Run: ``.venv/bin/python bench/workers.py --database postgresql+psycopg://... [--n 10000]``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from daemons import NURTURE, nurture_env
from plan import copies, settings
from send import free_port, start_sink
from sqlalchemy import create_engine, text

from nurture.mail.send import NoRelay
from nurture.services import build_services
from nurture.tokens import TokenKind

BROWSER = {
    "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36",
    "Accept-Language": "en",
}


def counts(url: str) -> tuple[int, int, int]:
    """(emails sent, their attempts in all, emails of one (enrollment, step) beyond one)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            sent, attempts = conn.execute(
                text(
                    "SELECT count(*), coalesce(sum(attempts), 0) FROM messages "
                    "WHERE status = 'sent'"
                )
            ).one()
            twice = conn.execute(
                text(
                    "SELECT count(*) FROM (SELECT enrollment_id, step_id, count(*) AS n FROM "
                    "messages GROUP BY enrollment_id, step_id HAVING count(*) > 1) AS t"
                )
            ).scalar()
        return int(sent), int(attempts), int(twice or 0)
    finally:
        engine.dispose()


def a_click_path(url: str, workdir: Path) -> str:
    """The tracked link of the first email the workers send (404 until it exists)."""
    services = build_services(settings(url, workdir), transport=NoRelay())
    try:
        return f"/c/{services.signer.make(TokenKind.click, 1, link=0)}"
    finally:
        services.store.dispose()


def drain(
    url: str, workers: int, sink_port: int, n: int, workdir: Path
) -> tuple[float, list[float]]:
    port = free_port()
    env = nurture_env(
        url,
        workdir,
        port,
        NURTURE_SMTP_HOST="127.0.0.1",
        NURTURE_SMTP_PORT=str(sink_port),
        NURTURE_TICK_SECONDS="0.2",
    )
    log = (workdir / f"web-{workers}.log").open("ab")
    web = subprocess.Popen([NURTURE, "run", "--role", "web"], env=env, stdout=log, stderr=log)
    latencies: list[float] = []
    procs = []
    stop = threading.Event()
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or web.poll() is not None:
                raise SystemExit("the web process did not start")
            time.sleep(0.1)
        click = a_click_path(url, workdir)

        def prober() -> None:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                while not stop.is_set():
                    began = time.perf_counter()
                    answer = http.get(click, headers=BROWSER)
                    if answer.status_code == 302:  # once the first email went out
                        latencies.append(time.perf_counter() - began)
                    time.sleep(0.05)

        probe = threading.Thread(target=prober)
        began = time.perf_counter()
        for i in range(workers):
            out = (workdir / f"worker-{workers}-{i}.log").open("ab")
            procs.append(
                subprocess.Popen(
                    [NURTURE, "run", "--role", "worker"], env=env, stdout=out, stderr=out
                )
            )
        probe.start()
        while counts(url)[0] < n:
            if any(p.poll() is not None for p in procs):
                raise SystemExit(f"a worker exited: see {workdir}")
            time.sleep(0.2)
        seconds = time.perf_counter() - began
        return seconds, latencies
    finally:
        stop.set()
        for p in [*procs, web]:
            p.terminate()
        for p in [*procs, web]:
            p.wait(60)


def main(args: argparse.Namespace) -> int:
    if args.database == "sqlite":
        raise SystemExit("two workers need PostgreSQL: --database postgresql+psycopg://...")
    workdir = Path(tempfile.mkdtemp(prefix="nurture-bench-workers-"))
    try:
        with copies(args.database, args.n, workdir) as (one_url, two_url):
            rates = {}
            for workers, url in ((1, one_url), (2, two_url)):
                sink = start_sink(workdir)
                try:
                    seconds, latencies = drain(url, workers, sink.port, args.n, workdir)
                finally:
                    received = sink.stop()
                sent, attempts, twice = counts(url)
                rates[workers] = args.n / seconds
                lat = sorted(latencies)
                p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))] if lat else float("nan")
                print(
                    f"{workers} worker{'s' * (workers > 1)}: {args.n} emails in {seconds:5.1f} s = "
                    f"{rates[workers]:6.0f}/s; sent {sent}, attempts {attempts}, twice {twice}, "
                    f"sink counted {received}; web click p50 "
                    f"{1000 * statistics.median(lat):.1f} ms p99 {1000 * p99:.1f} ms "
                    f"max {1000 * lat[-1]:.1f} ms ({len(lat)} clicks)"
                )
        print(f"ratio two/one: {rates[2] / rates[1]:.2f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--database", default="sqlite", help="a PostgreSQL URL")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
