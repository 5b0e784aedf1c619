"""Report benchmark: ``nurture report`` on a large database, next to the bare count of the
same rows.

Setup (not timed): a fresh database with N enrolled people in the shipped ``starter``
sequence, spread over its steps as a real funnel is (each step keeps about 60% of the one
before), one step email per step reached, about a third of them answered (yes_at, yes_by),
reminders for a quarter, and a click event per answer. Then, timed, in the same process:

* ``bare count``: ``SELECT step_id, count(*) FROM messages GROUP BY step_id``: one pass over
  the messages, what any report costs at least;
* ``nurture report``: ``nurture.report.build_report`` for the sequence, every figure.

Run: ``.venv/bin/python bench/report.py [--n 1000000] [--database URL] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, func, insert, select

from nurture.config import Settings
from nurture.db.migrate import upgrade
from nurture.db.models import ENROLLMENTS, EVENTS, MESSAGES, SUBSCRIBERS
from nurture.report import build_report
from nurture.services import build_services

sys.path.insert(0, str(Path(__file__).resolve().parent))
from send import describe_database, fresh_database  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STEPS = ["confirm", "welcome", "guide", "webinar", "offer"]
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def fill(url: str, n: int, chunk: int = 20_000) -> int:
    """N people through the funnel; returns the number of messages written."""
    database = create_engine(url)
    rng = random.Random(1)
    written = 0
    with database.begin() as conn:
        for start in range(0, n, chunk):
            ids = range(start + 1, min(n, start + chunk) + 1)
            conn.execute(
                insert(SUBSCRIBERS),
                [
                    {
                        "id": i,
                        "email": f"p{i}@example.com",
                        "fields": {},
                        "tags": [],
                        "status": "confirmed",
                        "created_at": T0,
                    }
                    for i in ids
                ],
            )
            enrollments, messages, events = [], [], []
            for i in ids:
                reached = 1 + sum(1 for _ in range(4) if rng.random() < 0.6)
                step = STEPS[reached - 1]
                finished = rng.random() < 0.5
                enrollments.append(
                    {
                        "id": i,
                        "subscriber_id": i,
                        "sequence_id": "starter",
                        "status": "exited" if finished else "active",
                        "step_id": step,
                        "phase": "wait",
                        "visit": reached,
                        "due_at": None if finished else T0,
                        "reminders_sent": 0,
                        "done": STEPS[: reached - 1],
                        "exit_reason": "timeout" if finished else None,
                        "created_at": T0,
                        "updated_at": T0 + timedelta(days=reached),
                    }
                )
                for k in range(reached):
                    sent = T0 + timedelta(days=k)
                    yes = k < reached - 1 or rng.random() < 0.3
                    message_id = i * 10 + k
                    took = rng.randint(1, 3000)  # minutes from delivery to the yes
                    messages.append(
                        {
                            "id": message_id,
                            "enrollment_id": i,
                            "subscriber_id": i,
                            "sequence_id": "starter",
                            "step_id": STEPS[k],
                            "visit": k + 1,
                            "kind": "step",
                            "status": "sent",
                            "attempts": 1,
                            "links": [],
                            "created_at": sent,
                            "sent_at": sent,
                            "yes_at": sent + timedelta(minutes=took) if yes else None,
                            "yes_by": "click" if yes else None,
                            "yes_seconds": took * 60 if yes else None,
                            "after_reminder": False if yes else None,
                            "clicked_at": sent if yes else None,
                            "bot_clicks": 0,
                        }
                    )
                    if rng.random() < 0.25:
                        messages.append(
                            {
                                **messages[-1],
                                "id": message_id + 5,
                                "kind": "reminder1",
                                "yes_at": None,
                                "yes_by": None,
                                "yes_seconds": None,
                                "after_reminder": None,
                                "clicked_at": None,
                                "sent_at": sent + timedelta(hours=20),
                            }
                        )
                    if yes:
                        events.append(
                            {
                                "subscriber_id": i,
                                "enrollment_id": i,
                                "message_id": message_id,
                                "kind": "click",
                                "outcome": "advanced",
                                "verdict": "human",
                                "detail": {"link": 0},
                                "created_at": sent,
                            }
                        )
            conn.execute(insert(ENROLLMENTS), enrollments)
            conn.execute(insert(MESSAGES), messages)
            conn.execute(insert(EVENTS), events)
            written += len(messages)
            print(f"  {min(n, start + chunk)}/{n} people", file=sys.stderr)
    database.dispose()
    return written


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--database", default="sqlite")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp, fresh_database(args.database, Path(tmp), 0) as url:
        upgrade(url)
        began = time.perf_counter()
        messages = fill(url, args.n)
        print(f"setup: {messages} messages in {time.perf_counter() - began:.0f} s", file=sys.stderr)
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            database_url=url,
            sequences_dir=ROOT / "sequences",
            templates_dir=ROOT / "templates",
            data_dir=Path(tmp),
            secret_key="bench",
        )
        services = build_services(settings)
        bare, full = [], []
        for _ in range(args.repeat):
            began = time.perf_counter()
            with services.store.database.connect() as conn:
                q = select(MESSAGES.c.step_id, func.count()).group_by(MESSAGES.c.step_id)
                list(conn.execute(q))
            bare.append(time.perf_counter() - began)
            began = time.perf_counter()
            with services.store.transaction() as tx:
                report = build_report(tx, services.catalog, services.journey.experiments, "starter")
            full.append(time.perf_counter() - began)
        services.store.dispose()
    steps = report["sequences"][0]["steps"]
    print(
        f"database: {describe_database(args.database)}; {args.n} enrollments, {messages} messages"
    )
    print(f"bare count        median {statistics.median(bare):.2f} s")
    print(f"nurture report    median {statistics.median(full):.2f} s")
    print(f"ratio report / bare count = {statistics.median(full) / statistics.median(bare):.1f}x")
    print("steps: " + ", ".join(f"{s['id']} sent {s['sent']} yes {s['yes']}" for s in steps))


if __name__ == "__main__":
    main()
