"""Import benchmark: how fast ``nurture import`` brings a CSV list in, next to the bare
inserts of the same rows.

Two sides, in the same run, each on a fresh database (SQLite file or PostgreSQL schema):

* ``bare inserts``: the same N people and N enrollments, already parsed, written with two
  SQLAlchemy Core ``executemany`` statements per chunk of 500, one transaction each: what the
  database costs, with no parsing, no address validation and no rules.
* ``nurture import``: ``nurture.importer.import_csv`` on the CSV file: reading it, checking
  every address (email-validator), fields and tags, duplicates in the file, then enrolling in
  chunks.

Run: ``.venv/bin/python bench/importing.py [--n 10000] [--database URL] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine, insert

from nurture import engine
from nurture.clock import SystemClock
from nurture.config import Settings
from nurture.db.migrate import upgrade
from nurture.db.models import ENROLLMENTS, SUBSCRIBERS
from nurture.importer import CHUNK, import_csv
from nurture.services import build_services

sys.path.insert(0, str(Path(__file__).resolve().parent))
from send import describe_database, fresh_database  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SEQUENCE = "trial"


def write_csv(path: Path, n: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as out:
        w = csv.writer(out)
        w.writerow(["email", "first_name", "city", "tags"])
        for i in range(n):
            w.writerow([f"person{i}@example.com", f"P{i}", "Lyon", "vip;beta" if i % 3 else ""])


def settings(url: str, workdir: Path) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=url,
        sequences_dir=ROOT / "sequences",
        templates_dir=ROOT / "templates",
        data_dir=workdir,
        secret_key="bench",
    )


def bare(url: str, n: int) -> float:
    services = build_services(settings(url, Path(tempfile.gettempdir())))
    sequence = services.catalog.get(SEQUENCE)
    assert sequence is not None
    database = create_engine(url)
    now = SystemClock().now()
    state = engine.start(sequence, now=now, confirmed=True)
    values = {
        "status": state.status.value,
        "step_id": state.step_id,
        "phase": state.phase.value,
        "visit": state.visit,
        "due_at": state.due_at,
        "reminders_sent": 0,
        "done": [],
        "created_at": now,
        "updated_at": now,
    }
    began = time.perf_counter()
    for start in range(0, n, CHUNK):
        emails = [f"person{i}@example.com" for i in range(start, min(n, start + CHUNK))]
        with database.begin() as conn:
            conn.execute(
                insert(SUBSCRIBERS),
                [
                    {
                        "email": e,
                        "fields": {"first_name": "P", "city": "Lyon"},
                        "tags": ["beta", "vip"],
                        "status": "confirmed",
                        "created_at": now,
                    }
                    for e in emails
                ],
            )
            ids = [
                r.id
                for r in conn.execute(SUBSCRIBERS.select().where(SUBSCRIBERS.c.email.in_(emails)))
            ]
            conn.execute(
                insert(ENROLLMENTS),
                [{"subscriber_id": i, "sequence_id": SEQUENCE, **values} for i in ids],
            )
    took = time.perf_counter() - began
    database.dispose()
    services.store.dispose()
    return took


def nurture_side(url: str, path: Path, n: int, workdir: Path) -> float:
    services = build_services(settings(url, workdir))
    began = time.perf_counter()
    report = import_csv(
        services.subscriptions, path, sequence_id=SEQUENCE, now=services.clock.now, confirmed=True
    )
    took = time.perf_counter() - began
    assert report.enrolled == n and not report.refused, report
    services.store.dispose()
    return took


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--database", default="sqlite")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        path = workdir / "list.csv"
        write_csv(path, args.n)
        times: dict[str, list[float]] = {"bare": [], "nurture": []}
        for run in range(args.repeat):
            for side in ("bare", "nurture"):
                with fresh_database(args.database, workdir, run * 2 + (side == "nurture")) as url:
                    upgrade(url)
                    took = (
                        bare(url, args.n)
                        if side == "bare"
                        else nurture_side(url, path, args.n, workdir)
                    )
                times[side].append(took)
                print(f"run {run + 1} {side}: {took:.3f} s", file=sys.stderr)
    print(f"database: {describe_database(args.database)}; {args.n} rows, chunks of {CHUNK}")
    print(f"{'side':<16}{'rows':>8}{'median s':>10}{'best s':>9}{'rows/s':>10}")
    for side, label in (("bare", "bare inserts"), ("nurture", "nurture import")):
        median = statistics.median(times[side])
        print(
            f"{label:<16}{args.n:>8}{median:>10.3f}{min(times[side]):>9.3f}{args.n / median:>10.0f}"
        )
    ratios = [b / n for b, n in zip(times["bare"], times["nurture"], strict=True)]
    print(
        f"ratio nurture / bare (rows per second) = {statistics.median(ratios):.2f} "
        f"(median of {args.repeat} paired runs; range {min(ratios):.2f}-{max(ratios):.2f})"
    )
    limit = 10 * args.n / 10_000
    met = statistics.median(times["nurture"]) < limit
    print(f"target: {args.n} rows in under {limit:.0f} s: {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
