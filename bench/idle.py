"""Idle benchmark: what `nurture run` costs while N people are enrolled and nothing is due.

For each N (0 is the baseline, in the same run), N confirmed people are imported into the
shipped starter sequence with their welcome email due in an hour; then `nurture run` (the
built-in catcher, a tick a second) runs for ``--seconds``. Printed: the daemon's resident
memory (VmRSS) at the start and at the end, and the time of one tick's due check (the claim
query, nothing due) measured in this process, best of 50; on PostgreSQL, its plan.

Run: ``.venv/bin/python bench/idle.py [--n 0 100000 1000000] [--database URL]``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from daemons import NURTURE, nurture_env, serving
from plan import copies
from send import free_port
from sqlalchemy import create_engine, text

from nurture.clock import SystemClock
from nurture.db.connect import is_sqlite, normalize_url
from nurture.db.enrollments import claim_due_query


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def due_check(url: str) -> tuple[float, str]:
    """Best-of-50 milliseconds of the tick's claim query with nothing due; its plan (PG)."""
    engine = create_engine(normalize_url(url))
    query = claim_due_query(SystemClock().now(), 200)
    best = float("inf")
    plan = ""
    try:
        with engine.connect() as conn:
            for _ in range(50):
                began = time.perf_counter()
                with conn.begin():
                    assert conn.execute(query).first() is None
                best = min(best, time.perf_counter() - began)
            if not is_sqlite(url):
                compiled = query.compile(engine, compile_kwargs={"literal_binds": True})
                explained = conn.execute(text(f"EXPLAIN {compiled}")).scalars().all()
                plan = "\n".join(f"      {line}" for line in explained)
    finally:
        engine.dispose()
    return best * 1000, plan


def measure(url: str, seconds: int, workdir: Path) -> tuple[float, float]:
    port = free_port()
    env = nurture_env(url, workdir, port)
    with serving([NURTURE, "run"], port, env, workdir / "daemon.log") as proc:
        start = rss_mib(proc.pid)
        time.sleep(seconds)
        return start, rss_mib(proc.pid)


def main(args: argparse.Namespace) -> int:
    print(f"nurture run idle for {args.seconds} s, nothing due (welcome emails due in an hour)")
    rows = []
    for n in args.n:
        workdir = Path(tempfile.mkdtemp(prefix="nurture-bench-idle-"))
        try:
            with copies(args.database, n, workdir, due_in=timedelta(hours=1)) as (url, _):
                ms, plan = due_check(url)
                start, end = measure(url, args.seconds, workdir)
            rows.append((n, start, end, ms))
            print(
                f"  N={n:>9,}: RSS {start:6.1f} MiB at start, {end:6.1f} MiB after "
                f"{args.seconds} s; due check {ms:.3f} ms"
            )
            if plan:
                print(plan)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        print(
            f"  RSS at N={last[0]:,} vs N={first[0]:,}: {last[2] / first[2]:.2f}x; "
            f"due check {last[3] / max(first[3], 1e-6):.2f}x"
        )
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, nargs="+", default=[0, 100_000])
    p.add_argument("--database", default="sqlite", help="sqlite (temporary files) or a URL")
    p.add_argument("--seconds", type=int, default=20)
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
