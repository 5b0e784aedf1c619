"""Bringing a list in: a CSV of 10,000 rows with a few bad ones, on SQLite and PostgreSQL, and
the command a marketer runs."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from support.paths import DATA
from support.world import MakeWorld, World

from nurture.importer import import_csv

ASKS = DATA / "asks"
NURTURE = Path(sys.executable).parent / "nurture"


def write_csv(path: Path, n: int) -> None:
    """n good rows, then the bad ones, each on a known line (the header is line 1)."""
    with path.open("w", newline="", encoding="utf-8") as out:
        w = csv.writer(out)
        w.writerow(["email", "first_name", "tags", "city"])
        for i in range(n):
            w.writerow([f"p{i}@example.com", f"P{i}", "vip;beta" if i % 2 else "", "Lyon"])
        w.writerow(["not-an-address", "X", "", ""])  # line n+2
        w.writerow(["p7@example.com", "Again", "", ""])  # line n+3: a duplicate of line 9
        w.writerow(["left@example.com", "Lee", "", ""])  # line n+4: unsubscribed before
        w.writerow(["bad@example.com", "B", "has space", ""])  # line n+5: a bad tag
        w.writerow(["odd@example.com", "O", "", "", "extra"])  # line n+6: too many values


def test_ten_thousand_rows_with_a_few_bad_ones(make_world: MakeWorld, tmp_path: Path) -> None:
    world: World = make_world(sequences_dir=ASKS / "sequences", templates_dir=ASKS / "templates")
    world.subscribe("left@example.com", "asks", confirmed=True)
    world.services.subscriptions.unsubscribe_address("left@example.com", now=world.clock.now())
    world.subscribe("p3@example.com", "asks", confirmed=True)  # already in: nothing changes
    n = 10_000
    path = tmp_path / "list.csv"
    write_csv(path, n)
    seen: list[tuple[int, int]] = []
    report = import_csv(
        world.services.subscriptions,
        path,
        sequence_id="asks",
        now=world.clock.now,
        confirmed=True,
        tags=["imported"],
        progress=lambda done, total: seen.append((done, total)),
    )
    assert report.rows == n + 5
    assert (report.enrolled, report.already, report.reentered) == (n - 1, 1, 0)
    refused = [(r.line, r.reason) for r in report.refused]
    assert [line for line, _ in refused] == [n + 2, n + 3, n + 4, n + 5, n + 6]
    assert "not a valid email address" in refused[0][1]
    assert refused[1][1] == "a duplicate of line 9"
    assert "unsubscribed" in refused[2][1]
    assert "tag 'has space'" in refused[3][1]
    assert refused[4][1] == "more values than columns"
    assert seen[-1] == (n + 1, n + 1) and len(seen) > 1  # one report per chunk
    with world.services.store.transaction() as tx:
        one = tx.subscribers.by_email("p1@example.com")
        two = tx.subscribers.by_email("p2@example.com")
        assert tx.subscribers.by_email("bad@example.com") is None  # nothing half-imported
    assert one is not None and two is not None
    assert one.tags == ("beta", "imported", "vip") and two.tags == ("imported",)
    assert one.fields == {"first_name": "P1", "city": "Lyon"}
    assert one.confirmed
    # Everyone imported waits for the survey's email, due now (the daemon sends it).
    state = world.state("p0@example.com", "asks")
    assert (state.step_id, state.phase.value, state.due_at) == ("survey", "send", world.clock.now())


def test_the_import_command_reports_each_refused_row_and_exits_1(
    tmp_path: Path, database_url: str
) -> None:
    path = tmp_path / "list.csv"
    path.write_text("email,first_name\nann@example.com,Ann\nnope,X\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_")}
    env.update(
        NURTURE_DATABASE_URL=database_url,
        NURTURE_SEQUENCES_DIR=str(ASKS / "sequences"),
        NURTURE_TEMPLATES_DIR=str(ASKS / "templates"),
        NURTURE_DATA_DIR=str(tmp_path),
    )
    args = [str(NURTURE), "import", str(path), "--sequence", "asks", "--confirmed"]
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert f"{path}:3: nope: " in r.stderr and "not a valid email address" in r.stderr
    assert "2 rows: 1 enrolled in asks, 0 entered it again, 0 were in it already, 1 refused" in (
        r.stdout
    )
    again = subprocess.run(
        args[:3] + ["--sequence", "nope"], env=env, capture_output=True, text=True
    )
    assert again.returncode == 1 and "unknown sequence 'nope'" in again.stderr
