"""Storm benchmark: one person's tracked link hammered by wrk (64 connections) against
`nurture run` (the all-in-one daemon, ticking), while a prober clicks other people's links
every 20 ms; the same prober on the idle daemon first, in the same run, is the baseline.

Printed: the unrelated clicks' p50/p99/max on the idle daemon and during the storm, the
storm's requests per second, and how many rows the storm's link wrote.

Run: ``.venv/bin/python bench/storm.py [--seconds 10] [--database URL]``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from clicks import CHROME, SECRET, ensure_wrk, lua_script, prepare, wrk
from daemons import NURTURE, nurture_env, serving
from send import describe_database, free_port, fresh_database
from sqlalchemy import create_engine, text

PERSON = {"User-Agent": CHROME, "Accept-Language": "en", "X-Forwarded-For": "203.0.113.50"}


def probe(base: str, paths: list[str], seconds: float) -> list[float]:
    """Click each of ``paths`` in turn every 20 ms for ``seconds``; each answer's latency."""
    out: list[float] = []
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=base, timeout=30) as http:
        i = 0
        while time.monotonic() < deadline:
            began = time.perf_counter()
            answer = http.get(paths[i % len(paths)], headers=PERSON)
            assert answer.status_code == 302, answer.status_code
            out.append(time.perf_counter() - began)
            i += 1
            time.sleep(0.02)
    return out


def summary(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return (
        f"p50 {1000 * statistics.median(ordered):6.1f} ms  p99 {1000 * p99:6.1f} ms  "
        f"max {1000 * ordered[-1]:6.1f} ms  ({len(ordered)} clicks)"
    )


def rows_of_message(url: str, message_id: int) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            found = conn.execute(
                text("SELECT count(*) FROM events WHERE message_id = :m"), {"m": message_id}
            ).scalar()
            return int(found or 0)
    finally:
        engine.dispose()


def main(args: argparse.Namespace) -> int:
    binary = ensure_wrk()
    workdir = Path(tempfile.mkdtemp(prefix="nurture-bench-storm-"))
    print(f"database: {describe_database(args.database)}; storm: wrk -t2 -c64 -d{args.seconds}s")
    try:
        with fresh_database(args.database, workdir, 0) as url:
            paths = prepare(url, 201, workdir)
            storm, others = paths[0], paths[1:]
            script = lua_script([storm], workdir)
            port = free_port()
            env = nurture_env(url, workdir, port, secret=SECRET)
            daemon = [NURTURE, "run"]
            base = f"http://127.0.0.1:{port}"
            with serving(daemon, port, env, workdir / "daemon.log"):
                probe(base, others, 1.0)  # each email's first click reads it: warm up
                idle = probe(base, others, args.seconds)
                before = rows_of_message(url, 1)
                during: list[float] = []
                prober = threading.Thread(
                    target=lambda: during.extend(probe(base, others, args.seconds))
                )
                prober.start()
                load = wrk(binary, port, script, args.seconds, "storm")
                prober.join()
                written = rows_of_message(url, 1) - before
            log = (workdir / "daemon.log").read_text()
        print(f"  unrelated clicks, idle daemon:  {summary(idle)}")
        print(f"  unrelated clicks, during storm: {summary(during)}")
        print(
            f"  the storm: {load.per_second:.0f} req/s, {load.requests} answered, "
            f"{load.errors} errors; its link wrote {written} rows"
        )
        if "Traceback" in log:
            print("  the daemon logged an error: see", workdir / "daemon.log")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--database", default="sqlite", help="sqlite (a temporary file) or a URL")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
