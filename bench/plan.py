"""Planner benchmark: claim + decide + record for N due enrollments, next to raw SQL that only
claims and updates them in batches of 200, on copies of the same database, in the same run.

* ``raw``: in one transaction per batch, ``SELECT`` the 200 oldest due enrollments (with
  their subscriber, ``FOR UPDATE SKIP LOCKED`` on PostgreSQL) and ``UPDATE`` them to waiting:
  what any planner must at least do.
* ``nurture``: ``Dispatcher.plan`` until nothing is due: the same claim, the engine's decision
  for each, the new states and one message row per email, claimed for sending (nothing is
  sent: the bench measures planning).

N confirmed people are imported into the shipped starter sequence (``nurture import``'s
code), their welcome email due; that setup is not timed. Rows per second and the ratio.

Run: ``.venv/bin/python bench/plan.py [--n 100000] [--database URL]``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

from send import ROOT
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from nurture.clock import SystemClock
from nurture.config import Settings
from nurture.daemon import settle_heap
from nurture.db.connect import is_sqlite, normalize_url
from nurture.db.migrate import upgrade
from nurture.importer import import_csv
from nurture.mail.send import NoRelay
from nurture.services import build_services


def settings(url: str, workdir: Path) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=url,
        sequences_dir=ROOT / "sequences",
        templates_dir=ROOT / "templates",
        data_dir=workdir,
        secret_key="bench-key",
    )


def populate(url: str, n: int, workdir: Path, due_in: timedelta = -timedelta(hours=1)) -> None:
    """N confirmed people in the starter sequence, their welcome email due ``due_in`` from
    now (10 minutes after they subscribed)."""
    upgrade(url)
    listing = workdir / "people.csv"
    with listing.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["email", "first_name"])
        for i in range(n):
            out.writerow([f"reader{i:07d}@example.com", "Ada"])
    services = build_services(settings(url, workdir), transport=NoRelay())
    then = services.clock.now() + due_in - timedelta(minutes=10)
    try:
        report = import_csv(
            services.subscriptions, listing, sequence_id="starter", now=lambda: then, confirmed=True
        )
        assert not report.refused, report.refused[:3]
    finally:
        services.store.dispose()


@contextlib.contextmanager
def copies(
    spec: str, n: int, workdir: Path, due_in: timedelta = -timedelta(hours=1)
) -> Iterator[tuple[str, str]]:
    """Two databases holding the same N enrollments (due ``due_in`` from now)."""
    if spec == "sqlite":
        first = workdir / "a.db"
        populate(f"sqlite:///{first}", n, workdir, due_in)
        shutil.copy(first, workdir / "b.db")
        yield f"sqlite:///{first}", f"sqlite:///{workdir / 'b.db'}"
        return
    url = normalize_url(spec)
    admin = create_engine(url)
    schemas = ["bench_" + uuid.uuid4().hex[:12] for _ in range(2)]
    urls = []
    try:
        for schema in schemas:
            with admin.begin() as conn:
                conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            u = make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
            urls.append(u.render_as_string(hide_password=False))
            populate(urls[-1], n, workdir, due_in)
        yield urls[0], urls[1]
    finally:
        for schema in schemas:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def raw(url: str, batch: int) -> tuple[int, float]:
    engine = create_engine(normalize_url(url))
    sqlite = is_sqlite(url)
    lock = "" if sqlite else " FOR UPDATE OF e SKIP LOCKED"
    claim = text(
        "SELECT e.id, e.step_id, e.visit, s.email, s.fields FROM enrollments e "
        "JOIN subscribers s ON s.id = e.subscriber_id "
        "WHERE e.status = 'active' AND e.due_at <= :now ORDER BY e.due_at LIMIT :n" + lock
    )
    done, began = 0, time.perf_counter()
    now = SystemClock().now()
    try:
        while True:
            with engine.begin() as conn:
                rows = conn.execute(claim, {"now": now, "n": batch}).all()
                if not rows:
                    break
                ids = [r.id for r in rows]
                conn.execute(
                    text(
                        "UPDATE enrollments SET phase = 'wait', due_at = NULL, updated_at = :now "
                        "WHERE id IN (" + ",".join(str(i) for i in ids) + ")"
                    ),
                    {"now": now},
                )
                done += len(rows)
    finally:
        engine.dispose()
    return done, time.perf_counter() - began


def ours(url: str, workdir: Path) -> tuple[int, float]:
    services = build_services(settings(url, workdir), transport=NoRelay())
    try:
        settle_heap()
        dispatcher = services.dispatcher
        now = services.clock.now()
        done, began = 0, time.perf_counter()
        while True:
            claimed, _ = dispatcher.plan(now)
            if claimed == 0:
                break
            done += claimed
        return done, time.perf_counter() - began
    finally:
        services.store.dispose()


def main(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="nurture-bench-plan-"))
    try:
        began = time.perf_counter()
        with copies(args.database, args.n, workdir) as (a, b):
            print(f"N={args.n} due enrollments ({time.perf_counter() - began:.0f} s to set up)")
            n_raw, t_raw = raw(a, 200)
            n_ours, t_ours = ours(b, workdir)
        assert n_raw == n_ours == args.n, (n_raw, n_ours)
        r_raw, r_ours = n_raw / t_raw, n_ours / t_ours
        print(f"  raw SQL claim + update: {r_raw:8.0f} rows/s ({1e6 / r_raw:5.0f} us a row)")
        print(f"  nurture plan:           {r_ours:8.0f} rows/s ({1e6 / r_ours:5.0f} us a row)")
        print(f"  ratio {r_ours / r_raw:.2f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--database", default="sqlite", help="sqlite (temporary files) or a URL")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
