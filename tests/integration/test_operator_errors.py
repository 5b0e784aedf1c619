"""An operator's mistakes (issue 20, finding 10): a mistyped setting, a database URL or folder
nurture cannot use, are one line with the fix and no traceback, before anything starts; the
files nurture creates are its owner's only; and text that came from outside never reaches the
operator's terminal as control characters."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import update
from support.daemon import Daemon, clean_env
from support.paths import REPO
from support.world import World

from nurture.db.models import INBOUND, MESSAGES
from nurture.vocabulary import InboundSource

NURTURE = Path(sys.executable).parent / "nurture"
SHIPPED = {
    "NURTURE_SEQUENCES_DIR": str(REPO / "sequences"),
    "NURTURE_TEMPLATES_DIR": str(REPO / "templates"),
}
PWNED = "\x1b]0;pwned\x07"  # sets the terminal's title: any ESC must never be printed as is


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None, readonly: bool = False
) -> subprocess.CompletedProcess[str]:
    command = [str(NURTURE), *args]
    if readonly and os.geteuid() == 0:
        # root writes anywhere: drop the capabilities that let it, as any other user is.
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *command]
    return subprocess.run(
        command,
        cwd=cwd,
        env=clean_env(**{**SHIPPED, **(env or {})}),
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    """The command failed with one line on stderr (beside `nurture run`'s log of what went
    well) and no traceback; that line."""
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [x for x in r.stderr.strip().splitlines() if not re.match(r"\d{4}-.* INFO ", x)]
    assert len(lines) == 1, r.stderr
    return lines[0]


# -- settings ------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["run"], ["status"], ["validate"], ["db", "upgrade"]])
def test_a_mistyped_setting_refuses_to_start_and_names_the_right_one(
    tmp_path: Path, command: list[str]
) -> None:
    """NURTURE_SMTP_HOTS only warned, and the daemon sent production mail to the catcher."""
    r = run(*command, cwd=tmp_path, env={"NURTURE_SMTP_HOTS": "relay.example"})
    line = one_line(r)
    assert line.startswith(
        "configuration error: unknown setting NURTURE_SMTP_HOTS; did you mean NURTURE_SMTP_HOST?"
    ), line
    assert "NURTURE_IGNORE_SETTINGS" in line
    assert not (tmp_path / "nurture.db").exists()  # nothing started


def test_a_mistyped_setting_in_dot_env_too_and_ignore_settings_lets_it_start(
    tmp_path: Path,
) -> None:
    (tmp_path / ".env").write_text("NURTURE_CLICK_WINDOW_SECOND=20\n")
    line = one_line(run("validate", cwd=tmp_path))
    assert "NURTURE_CLICK_WINDOW_SECOND; did you mean NURTURE_CLICK_WINDOW_SECONDS?" in line
    # A variable of another tool (or of a newer nurture) is named as not nurture's.
    ok = run(
        "validate",
        cwd=tmp_path,
        env={
            "NURTURE_IGNORE_SETTINGS": "NURTURE_CLICK_WINDOW_SECOND, NURTURE_DEPLOY_ID",
            "NURTURE_DEPLOY_ID": "42",
        },
    )
    assert ok.returncode == 0, ok.stderr
    assert "unknown" not in ok.stderr
    # The test suite's own variable is never a typo.
    (tmp_path / ".env").unlink()
    ok = run("validate", cwd=tmp_path, env={"NURTURE_TEST_DATABASE_URL": "x"})
    assert ok.returncode == 0, ok.stderr


# -- the database --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (
            "mysql://ann:secret@db.example/nurture",
            "cannot be used: only sqlite:///PATH and postgresql://USER@HOST/NAME databases are "
            "supported",
        ),
        (
            "postgresql://ann:secret@db.example:54x2/nurture",
            "cannot be used: its port is not a number",
        ),
        (
            "sqlite:///no/such/folder/nurture.db",
            "the folder {cwd}/no/such/folder does not exist; create it, or point the URL at a "
            "folder that does",
        ),
    ],
)
@pytest.mark.parametrize("command", [["run"], ["status"], ["db", "upgrade"]])
def test_a_database_url_nurture_cannot_use_is_one_line_with_the_fix(
    tmp_path: Path, url: str, says: str, command: list[str]
) -> None:
    line = one_line(run(*command, cwd=tmp_path, env={"NURTURE_DATABASE_URL": url}))
    assert line.startswith("error: NURTURE_DATABASE_URL "), line
    assert line.endswith(says.format(cwd=tmp_path)), line
    assert "secret" not in line  # the password


@contextmanager
def read_only(folder: Path) -> Iterator[Path]:
    folder.mkdir(exist_ok=True)
    folder.chmod(0o555)
    try:
        yield folder
    finally:
        folder.chmod(0o755)


@pytest.mark.parametrize("command", [["run"], ["status"]])
def test_a_read_only_data_folder_is_one_line_naming_it(tmp_path: Path, command: list[str]) -> None:
    """nurture.db.lock (and nurture.db) could not be created: a PermissionError traceback."""
    with read_only(tmp_path / "data") as data:
        line = one_line(run(*command, cwd=data, readonly=True))
    assert line == (
        f"error: NURTURE_DATABASE_URL sqlite:///nurture.db: nurture cannot write in the folder "
        f"{data}; it must be writable (the database and its -wal, -shm and .lock files live "
        "there)"
    ), line


def test_a_read_only_data_folder_beside_a_server_database_is_one_line(
    database_url: str, tmp_path: Path
) -> None:
    """The database elsewhere (or on PostgreSQL): the key file and the catcher's outbox."""
    env = {"NURTURE_DATABASE_URL": database_url, "NURTURE_HTTP_PORT": "0"}
    if database_url.startswith("sqlite"):
        env["NURTURE_DATA_DIR"] = str(tmp_path / "data")
    with read_only(tmp_path / "data") as data:
        cwd = data if not database_url.startswith("sqlite") else tmp_path
        ran = one_line(run("run", cwd=cwd, env=env, readonly=True))
        status = one_line(run("status", cwd=cwd, env=env, readonly=True))
    assert ran.startswith("configuration error: cannot keep the catcher's mail in "), ran
    assert ran.endswith("NURTURE_DATA_DIR must be a folder nurture can write"), ran
    assert status.startswith("configuration error: cannot keep the generated secret key in "), (
        status
    )
    assert status.endswith(
        "NURTURE_DATA_DIR must be a folder nurture can write, or set NURTURE_SECRET_KEY"
    ), status


def test_the_files_nurture_creates_are_its_owners_only(tmp_path: Path) -> None:
    """nurture.db (every address) was created 0644 while the key file was 0600."""
    daemon = Daemon(tmp_path, clean_env(**SHIPPED))
    try:
        daemon.start()
        names = ["nurture.db", "nurture.db-wal", "nurture.db-shm", "nurture.db.lock"]
        names.append("nurture-secret.key")
        modes = {n: oct(stat.S_IMODE((tmp_path / n).stat().st_mode)) for n in names}
        assert modes == dict.fromkeys(names, "0o600")
    finally:
        assert daemon.stop() == 0


# -- what the commands print ---------------------------------------------------------------


def test_text_from_outside_is_printed_escaped(
    world: World, database_url: str, tmp_path: Path
) -> None:
    """A name from a form and an inbound From reached the terminal as raw escape sequences
    (they can retitle or clear the operator's terminal)."""
    # Stored before input was checked for control characters (or through a path that does
    # not check): what is printed must be safe whatever the database holds.
    world.first_email("ann@example.com", confirmed=True)
    with world.services.store.database.begin() as conn:
        conn.execute(update(MESSAGES).values(subject=f"Read this, {PWNED}"))
    raw = (
        f'From: "{PWNED}" <bob{PWNED}@example.com>\r\n'
        "To: ada@acme.example\r\n"
        f"Subject: hello {PWNED}\r\n"
        "Message-ID: <x1@example.com>\r\n\r\n"
        "Hi\r\n"
    ).encode()
    world.services.inbox.receive(raw, now=world.clock.now(), source=InboundSource.webhook)
    with world.services.store.database.begin() as conn:  # as an older nurture kept them
        conn.execute(update(INBOUND).values(sender=f"bob{PWNED}@example.com", note=PWNED))
    env = {
        "NURTURE_DATABASE_URL": database_url,
        "NURTURE_SECRET_KEY": "test-secret-key",
        "NURTURE_SEQUENCES_DIR": str(world.services.settings.sequences_dir),
        "NURTURE_TEMPLATES_DIR": str(world.services.settings.templates_dir),
    }
    person = run("person", "ann@example.com", cwd=tmp_path, env=env)
    assert person.returncode == 0, person.stderr
    assert "Read this, \\x1b]0;pwned\\x07" in person.stdout, person.stdout
    inbound = run("inbound", cwd=tmp_path, env=env)
    assert inbound.returncode == 0, inbound.stderr
    assert "\\x1b]0;pwned\\x07" in inbound.stdout, inbound.stdout
    for out in (person, inbound):
        assert "\x1b" not in out.stdout + out.stderr and "\x07" not in out.stdout + out.stderr
