"""Values that cannot hurt (issue 20, finding 2): a NUL, a control character or a lone
surrogate in a person's field is refused where it comes in (the form, the API, an import), and
one already stored, or one row a database refuses, fails its own email and no other of the
batch; a CSV in UTF-16 or Latin-1 is read, or refused with one clear line. On SQLite and
PostgreSQL."""

from __future__ import annotations

import codecs
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text, update
from support.db import EVENTS, MESSAGES, SUBSCRIBERS, rows
from support.paths import DATA
from support.world import World

from nurture.vocabulary import EnrollmentStatus, ExitReason

ASKS = DATA / "asks"
NURTURE = Path(sys.executable).parent / "nurture"
TOKEN = {"authorization": "Bearer test-api-token"}

# One of each kind a single-line field refuses: NUL, ESC (a terminal's commands), a tab and a
# newline (a name is one line), DEL, a C1 control (CSI), and, through JSON, a lone surrogate.
POISON = ["\x00", "\x1b[2J", "\t", "\n", "\x7f", "\x9b"]


def post_json(http: httpx.Client, url: str, body: dict[str, Any]) -> httpx.Response:
    """JSON as a client's library sends it: characters outside ASCII escaped, so that a lone
    surrogate arrives as its escape, as JavaScript's JSON.stringify writes it."""
    headers = {**TOKEN, "content-type": "application/json"}
    return http.post(url, content=json.dumps(body), headers=headers)


def people(world: World) -> list[str]:
    return [r.email for r in rows(world.services.store, SUBSCRIBERS)]


@pytest.mark.parametrize("poison", POISON, ids=repr)
def test_the_form_refuses_a_name_with_a_control_character(
    world: World, http: httpx.Client, poison: str
) -> None:
    body = {"email": "ann@example.com", "sequence": "journey", "first_name": f"An{poison}n"}
    r = http.post("/subscribe", data=body)
    assert r.status_code == 422, r.text
    assert "first_name" in r.text and "one line of text" in r.text
    assert people(world) == []
    # The same person with a clean name is subscribed: nothing else was wrong.
    r = http.post("/subscribe", data={**body, "first_name": "Ann"})
    assert r.is_success and people(world) == ["ann@example.com"]


@pytest.mark.parametrize("poison", [*POISON, "\ud800"], ids=repr)
def test_the_api_refuses_a_field_with_a_control_character_or_a_lone_surrogate(
    world: World, http: httpx.Client, poison: str
) -> None:
    body = {"email": "bo@example.com", "sequence": "journey", "first_name": f"B{poison}o"}
    r = post_json(http, "/subscribe", body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error.startswith("field 'first_name' holds ") and f"U+{ord(poison[0]):04X}" in error
    assert people(world) == []


def test_the_api_refuses_a_control_character_in_the_address_and_in_an_event(
    world: World, http: httpx.Client
) -> None:
    r = http.post(
        "/subscribe", json={"email": "bo\x00@example.com", "sequence": "journey"}, headers=TOKEN
    )
    assert r.status_code == 422 and r.json()["error"].startswith("email holds NUL (U+0000)")
    world.subscribe("cy@example.com", confirmed=True)
    base = {"email": "cy@example.com", "event": "trial_started"}
    for body, named in [
        ({**base, "properties": {"set": {"plan": "pro\x1b"}}}, "field 'plan'"),
        ({**base, "properties": {"note": ["ok", "a\x00b"]}}, "properties.note"),
        ({**base, "properties": {"n\ud800": 1}}, "properties"),
        ({**base, "id": "42\x00"}, "id"),
    ]:
        r = post_json(http, "/events", body)
        assert r.status_code == 422, r.text
        assert r.json()["error"].startswith(f"{named} holds "), r.json()
    assert [e.kind for e in rows(world.services.store, EVENTS) if e.kind == "event"] == []
    # A multi-line property (a note) is text, not a name: tabs and newlines are kept.
    note = {"note": "line one\n\tline two"}
    r = http.post("/events", json={**base, "properties": note}, headers=TOKEN)
    assert r.status_code == 200, r.text


def _poison(world: World, email: str, fields: dict[str, Any]) -> None:
    """A value stored by an older nurture (or by hand), as it is in the database."""
    store = world.services.store
    with store.database.begin() as conn:
        conn.execute(update(SUBSCRIBERS).where(SUBSCRIBERS.c.email == email).values(fields=fields))


@pytest.mark.parametrize("poison", ["\x00", "\x1b", "\ud800"], ids=repr)
def test_a_poisoned_name_already_stored_fails_its_own_email_and_no_other(
    world: World, poison: str
) -> None:
    everyone = [f"p{i:02}@example.com" for i in range(21)]
    for email in everyone:
        world.subscribe(email, confirmed=True)
    _poison(world, "p07@example.com", {"first_name": f"Zo{poison}e"})
    world.tick()  # no traceback: the batch goes on
    sent = {m.recipient for m in world.smtp.caught}
    assert sent == set(everyone) - {"p07@example.com"}
    [bad] = [
        m
        for m in rows(world.services.store, MESSAGES)
        if m.subscriber_id == world.subscriber_id("p07@example.com")
    ]
    assert bad.status == "failed" and bad.last_error.startswith("cannot render: "), bad
    assert f"U+{ord(poison):04X}" in bad.last_error or "surrogate" in bad.last_error
    state = world.state("p07@example.com")
    assert (state.status, state.exit_reason) == (EnrollmentStatus.exited, ExitReason.failed)
    # The next ticks do not try it again.
    world.clock.advance(hours=2)
    world.tick()
    assert [r.attempts for r in rows(world.services.store, MESSAGES, id=bad.id)] == [1]
    assert "p07@example.com" not in {m.recipient for m in world.smtp.caught}


def _refuse_subjects_with(world: World, word: str) -> None:
    """The database refuses to store one row of a batch (here a trigger, as a constraint a
    DBA added would): a failure of the write that nurture cannot foresee."""
    with world.services.store.database.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_subject BEFORE UPDATE OF subject ON messages "
                    f"WHEN NEW.subject LIKE '%{word}%' "
                    "BEGIN SELECT RAISE(ABORT, 'subject refused by the database'); END"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE FUNCTION refuse_subject() RETURNS trigger LANGUAGE plpgsql AS $$ "
                    f"BEGIN IF NEW.subject LIKE '%{word}%' THEN RAISE EXCEPTION "
                    "'subject refused by the database' USING ERRCODE = 'check_violation'; "
                    "END IF; RETURN NEW; END $$"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_subject BEFORE UPDATE OF subject ON messages "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_subject()"
                )
            )


def test_a_row_the_database_refuses_fails_alone_and_the_batch_is_sent(world: World) -> None:
    everyone = [f"q{i:02}@example.com" for i in range(21)]
    for email in everyone:
        name = "Refusedname" if email == "q03@example.com" else email[:3].title()
        world.subscribe(email, confirmed=True, fields={"first_name": name})
    _refuse_subjects_with(world, "Refusedname")
    world.tick()
    assert {m.recipient for m in world.smtp.caught} == set(everyone) - {"q03@example.com"}
    [bad] = [m for m in rows(world.services.store, MESSAGES) if m.status != "sent"]
    assert bad.subscriber_id == world.subscriber_id("q03@example.com")
    assert bad.status == "failed" and "subject refused by the database" in bad.last_error
    assert bad.last_error.startswith("cannot store the rendered email: ")
    world.clock.advance(hours=2)
    world.tick()
    assert [r.attempts for r in rows(world.services.store, MESSAGES, id=bad.id)] == [1]
    assert len(world.smtp.caught) == 20


# -- imports --------------------------------------------------------------------------------


def run_import(database_url: str, tmp_path: Path, path: Path, *extra: str) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_")}
    env.update(
        NURTURE_DATABASE_URL=database_url,
        NURTURE_SEQUENCES_DIR=str(ASKS / "sequences"),
        NURTURE_TEMPLATES_DIR=str(ASKS / "templates"),
        NURTURE_DATA_DIR=str(tmp_path),
    )
    args = [str(NURTURE), "import", str(path), "--sequence", "asks", "--confirmed", *extra]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)


def imported(database_url: str) -> dict[str, Any]:
    from sqlalchemy import create_engine, select

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            q = select(SUBSCRIBERS.c.email, SUBSCRIBERS.c.fields)
            return {r.email: r.fields for r in conn.execute(q)}
    finally:
        engine.dispose()


def test_an_import_refuses_the_rows_with_control_characters_and_imports_the_rest(
    tmp_path: Path, database_url: str
) -> None:
    path = tmp_path / "list.csv"
    path.write_text(
        "email,first_name,city\n"
        "ann@example.com,Ann,Lyon\n"
        "nul@example.com,Nu\x00l,Lyon\n"  # line 3
        'tab@example.com,"Ta\tb",Lyon\n'  # line 4
        "esc@example.com,Ann,Ly\x1b[31mon\n"  # line 5
        "c1@example.com,C\x85one,Lyon\n"  # line 6
        "bo@example.com,Bo,Lyon\n",
        encoding="utf-8",
    )
    r = run_import(database_url, tmp_path, path)
    assert r.returncode == 1, r.stderr
    assert "6 rows: 2 enrolled in asks, 0 entered it again, 0 were in it already, 4 refused" in (
        r.stdout
    )
    lines = r.stderr.splitlines()
    for line, field, code in [
        (3, "first_name", "U+0000"),
        (4, "first_name", "U+0009"),
        (5, "city", "U+001B"),
        (6, "first_name", "U+0085"),
    ]:
        [said] = [s for s in lines if s.startswith(f"{path}:{line}: ")]
        assert f"field {field!r} holds " in said and code in said, said
    assert imported(database_url) == {
        "ann@example.com": {"first_name": "Ann", "city": "Lyon"},
        "bo@example.com": {"first_name": "Bo", "city": "Lyon"},
    }


ROWS = "email,first_name,city\nzoe@example.com,Zoé,Besançon\nxi@example.com,Xīn,Zürich\n"
WANTED = {
    "zoe@example.com": {"first_name": "Zoé", "city": "Besançon"},
    "xi@example.com": {"first_name": "Xīn", "city": "Zürich"},
}


@pytest.mark.parametrize(
    "bom, encoding",
    [(codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"), (b"", "utf-16")],
    ids=["utf-16-le", "utf-16-be", "utf-16-python"],
)
def test_an_import_reads_utf16_with_its_bom(
    tmp_path: Path, database_url: str, bom: bytes, encoding: str
) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes(bom + ROWS.replace("\n", "\r\n").encode(encoding))
    r = run_import(database_url, tmp_path, path)
    assert r.returncode == 0, r.stderr
    assert "2 rows: 2 enrolled in asks" in r.stdout
    assert imported(database_url) == WANTED


def test_an_import_in_latin1_is_refused_with_one_line_then_read_with_encoding(
    tmp_path: Path, database_url: str
) -> None:
    path = tmp_path / "file.csv"
    latin = "email,first_name,city\nann@example.com,Ann,Lyon\nzoe@example.com,Zoé,Besançon\n"
    path.write_bytes(latin.encode("latin-1"))
    r = run_import(database_url, tmp_path, path)
    assert r.returncode == 1
    assert r.stderr.strip() == (
        f"error: {path} is not UTF-8 (byte 0xE9 at line 3); save it as UTF-8, "
        "or pass --encoding latin-1"
    )
    assert imported(database_url) == {}  # nothing half-imported
    r = run_import(database_url, tmp_path, path, "--encoding", "latin-1")
    assert r.returncode == 0, r.stderr
    assert imported(database_url) == {
        "ann@example.com": {"first_name": "Ann", "city": "Lyon"},
        "zoe@example.com": {"first_name": "Zoé", "city": "Besançon"},
    }
    r = run_import(database_url, tmp_path, path, "--encoding", "klingon")
    assert r.returncode == 1 and "unknown encoding 'klingon'" in r.stderr
