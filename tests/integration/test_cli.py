"""The command line as a marketer and an operator use it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.paths import DATA, REPO

from nurture.cli import main

NURTURE = Path(sys.executable).parent / "nurture"
# The shipped sequences and templates, named on the command line.
SHIPPED_ARGS = ("--sequences", str(REPO / "sequences"), "--templates", str(REPO / "templates"))


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_")}
    base.update(env or {})
    return subprocess.run(
        [str(NURTURE), *args], cwd=cwd, env=base, capture_output=True, text=True, timeout=120
    )


def test_validate_the_shipped_sequences(tmp_path: Path) -> None:
    r = run(
        "validate",
        *SHIPPED_ARGS,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "ok  starter: 5 steps (confirm, welcome, guide, webinar, offer)" in r.stdout


def test_validate_lists_every_problem_and_exits_1(tmp_path: Path) -> None:
    seq = tmp_path / "sequences"
    seq.mkdir()
    shutil.copytree(DATA / "templates", tmp_path / "templates")
    (seq / "broken.yaml").write_text(
        "id: broken\n"
        "name: Broken\n"
        "from: Ada <ada@acme.example>\n"
        "steps:\n"
        "  - id: one\n"
        "    subject: Hi\n"
        "    template: missing.html\n"
        "    wait: 3 days\n"
        "  - id: one\n"
        "    subject: Again\n"
        "    template: read.html\n"
        "    wait: 1d\n"
        "    on_timeout: {goto: nowhere}\n"
        "    colour: blue\n"
    )
    (seq / "syntax.yaml").write_text("id: x\nname: [oops\nsteps:\n")
    r = run("validate", cwd=tmp_path)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    broken = str(Path("sequences") / "broken.yaml")
    assert lines == [
        f"{broken}:7: step 'one': unknown template 'missing.html' (not found in the templates "
        "directory)",
        f"{broken}:8: step 'one': wait: '3 days' is not a duration: write a number and a unit, "
        "e.g. 3d, 12h, 30m, 1s (units: s, m, h, d, w)",
        f"{broken}:9: duplicate step id 'one' (step 1 has it already)",
        f"{broken}:13: step 'one': on_timeout goes to step 'nowhere', which this sequence does "
        "not have (steps: one)",
        f"{broken}:14: step 'one': unknown key 'colour'",
        f"{Path('sequences') / 'syntax.yaml'}:3: YAML syntax error: expected ',' or ']', but got "
        "':' (while parsing a flow sequence that starts at line 2)",
        "6 problems found",
    ]


def test_validate_reports_every_kind_of_mistake_of_every_file_in_one_run(tmp_path: Path) -> None:
    """Issue 19: five seeded mistakes took three runs to see. A YAML error in one file, schema
    errors, a bad step, or a problem in one sequence hid the checks that render each email and
    evaluate each condition for the sample subscriber, everywhere; a step with an unknown key
    hid its own rules. Now one run says everything, each with its file and line."""
    seq, templates = tmp_path / "sequences", tmp_path / "templates"
    seq.mkdir()
    templates.mkdir()
    (templates / "hello.html").write_text(
        "<p>Hi {{ subscriber.first_name }} of {{ subscriber.company }}</p>\n"
        '<a href="https://acme.example/go" data-micro-yes>Go</a>\n'
    )
    (templates / "plain.html").write_text('<a href="https://acme.example/p">Go</a>\n')
    (seq / "a.yaml").write_text(
        "id: alpha\n"  # 1
        "name: Alpha\n"
        'from: "Ada <ada@acme.example>"\n'
        "steps:\n"
        "  - id: confirm\n"  # 5
        "    confirms: true\n"
        "    subject: Confirm\n"
        "    template: plain.html\n"
        "    wait: 2d\n"
        "  - id: welcome\n"  # 10: renders for the sample though the step has mistakes
        "    subject: Welcome\n"
        "    template: hello.html\n"
        "    wait: 3 days\n"
        "    colour: blue\n"
        "  - id: pros\n"  # 15
        "    subject: For pros\n"
        "    template: nope.html\n"
        "    when: \"'pro' in subscriber.tag\"\n"
        "    wait: 1d\n"
        "    delya: 1h\n"  # 20
        "    reminders:\n"
        "      - after: 2d\n"
        "    on_timeout: {goto: nowhere}\n"
    )
    (seq / "b.yaml").write_text("id: beta\nname: [oops\nsteps:\n")
    (seq / "c.yaml").write_text(
        "id: gamma\n"  # 1
        "name: Gamma\n"
        'from: "Ada <ada@acme.example>"\n'
        "sample: {first_name: Ada, plans: trial}\n"
        "steps:\n"  # 5
        "  - id: one\n"
        "    subject: One\n"
        "    template: hello.html\n"
        "    wait: 1d\n"
        "    when: \"subscriber.plan == 'trial'\"\n"  # 10
        "  - id: two\n"
        "    subject: Two\n"
        "    template: plain.html\n"
        "    wait: 1d\n"
        "    when: \"'vip' in tags\"\n"  # 15
    )
    r = run("validate", cwd=tmp_path)
    assert r.returncode == 1
    a, b, c = (str(Path("sequences") / name) for name in ("a.yaml", "b.yaml", "c.yaml"))
    company = (
        "'dict object' has no attribute 'company'; give it a default "
        "({{ subscriber.x | default('') }}) or add the field to the sequence's sample:"
    )
    assert r.stderr.splitlines() == [
        f"{a}:10: step 'welcome': cannot be rendered for the sample subscriber "
        f"{{'first_name': 'Ada'}}: {company}",
        f"{a}:13: step 'welcome': wait: '3 days' is not a duration: write a number and a unit, "
        "e.g. 3d, 12h, 30m, 1s (units: s, m, h, d, w)",
        f"{a}:14: step 'welcome': unknown key 'colour'",
        f"{a}:17: step 'pros': unknown template 'nope.html' (not found in the templates directory)",
        f"{a}:18: step 'pros': when reads subscriber.tag, but 'tag' is not a field of the "
        "sample subscriber; add it to sample: if people have it, or did you mean 'tags'?",
        f"{a}:20: step 'pros': unknown key 'delya'",
        f"{a}:22: step 'pros': reminder 1 at 2d comes after the wait of 1d is over; it would "
        "never be sent",
        f"{a}:23: step 'pros': on_timeout goes to step 'nowhere', which this sequence does not "
        "have (steps: confirm, welcome, pros)",
        f"{b}:3: YAML syntax error: expected ',' or ']', but got ':' (while parsing a flow "
        "sequence that starts at line 2)",
        f"{c}:6: step 'one': cannot be rendered for the sample subscriber "
        f"{{'first_name': 'Ada', 'plans': 'trial'}}: {company}",
        f"{c}:10: step 'one': when reads subscriber.plan, but 'plan' is not a field of the "
        "sample subscriber; add it to sample: if people have it, or did you mean 'plans'?",
        f"{c}:15: step 'two': when uses 'tags'; a condition sees only subscriber (its fields, "
        "subscriber.tags and subscriber.email); did you mean subscriber.tags?",
        "12 problems found",
    ]


def test_preview_prints_subject_text_html_and_the_ask(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "preview",
            "starter",
            "confirm",
            "--field",
            "first_name=Grace",
            *SHIPPED_ARGS,
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "Subject: One click to confirm, Grace" in out
    assert "----- text -----" in out and "----- html -----" in out
    assert "Hi Grace" in out
    assert "/confirmed   (micro-yes)" in out
    code = main(
        [
            "preview",
            "starter",
            "guide",
            "--reminder",
            "1",
            *SHIPPED_ARGS,
        ]
    )
    assert code == 0
    code = main(
        [
            "preview",
            "starter",
            "nope",
            *SHIPPED_ARGS,
        ]
    )
    assert code == 1
    assert "has no step 'nope'" in capsys.readouterr().err


def test_subscribe_status_and_unsubscribe(database_url: str, tmp_path: Path) -> None:
    env = {
        "NURTURE_DATABASE_URL": database_url,
        "NURTURE_SEQUENCES_DIR": str(DATA / "sequences"),
        "NURTURE_TEMPLATES_DIR": str(DATA / "templates"),
    }
    r = run(
        "subscribe",
        "amy@example.com",
        "--sequence",
        "journey",
        "--field",
        "first_name=Amy",
        cwd=tmp_path,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert "enrolled amy@example.com in journey" in r.stdout
    r = run("subscribe", "amy@example.com", "--sequence", "journey", cwd=tmp_path, env=env)
    assert "already in journey; nothing changed" in r.stdout
    r = run("subscribe", "not-an-address", "--sequence", "journey", cwd=tmp_path, env=env)
    assert r.returncode == 1 and "not a valid email address" in r.stderr
    ben = ("subscribe", "ben@example.com", "--sequence", "journey", "--confirmed")
    r = run(*ben, cwd=tmp_path, env=env)
    assert r.returncode == 0
    r = run("status", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert "journey: 2 enrollments" in r.stdout
    journey = r.stdout.split("journey: 2 enrollments", 1)[1].split("\n\n", 1)[0]
    assert [
        line.split()
        for line in journey.splitlines()
        if line.strip().startswith(("confirm ", "read "))
    ] == [["confirm", "1", "0", "0", "0", "0", "-"], ["read", "1", "0", "0", "0", "0", "-"]]
    assert "second: 0 enrollments" in r.stdout
    r = run("unsubscribe", "amy@example.com", cwd=tmp_path, env=env)
    assert r.returncode == 0 and "amy@example.com unsubscribed" in r.stdout
    r = run("status", cwd=tmp_path, env=env)
    assert "unsubscribed 1" in r.stdout
    r = run("subscribe", "amy@example.com", "--sequence", "journey", cwd=tmp_path, env=env)
    assert r.returncode == 1 and "unsubscribed" in r.stderr
    again = ("subscribe", "amy@example.com", "--sequence", "journey", "--resubscribe")
    r = run(*again, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("NURTURE_SMTP_PORT", "abc"),
        ("NURTURE_SMTP_TLS", "ssl3"),
        ("NURTURE_BASE_URL", "ftp://x"),
        ("NURTURE_TICK_SECONDS", "-1"),
    ],
)
def test_a_bad_setting_stops_start_up_with_one_line_naming_it(
    tmp_path: Path, name: str, value: str
) -> None:
    r = run("run", cwd=tmp_path, env={name: value})
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"configuration error: {name}: "), r.stderr


def test_python_dash_m_is_the_same_command(tmp_path: Path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "nurture",
            "validate",
            *SHIPPED_ARGS,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and "ok  starter" in r.stdout


def test_db_upgrade(empty_database_url: str, tmp_path: Path) -> None:
    r = run("db", "upgrade", cwd=tmp_path, env={"NURTURE_DATABASE_URL": empty_database_url})
    assert r.returncode == 0, r.stderr
    assert "database upgraded to head" in r.stdout


def preview(*extra: str, env: dict[str, str] | None = None, cwd: Path) -> str:
    r = run(
        "preview",
        "starter",
        "welcome",
        *SHIPPED_ARGS,
        *extra,
        cwd=cwd,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_the_preview_is_what_is_sent(tmp_path: Path) -> None:
    """B5: preview built its own renderer and ignored NURTURE_OPEN_TRACKING and
    NURTURE_HONEYPOT, so it showed a pixel and a trap link that were not sent (or the
    reverse)."""
    sent = preview(cwd=tmp_path)
    assert "/o/" in sent and "(hidden honeypot)" in sent
    off = {"NURTURE_OPEN_TRACKING": "false", "NURTURE_HONEYPOT": "false"}
    bare = preview(cwd=tmp_path, env=off)
    assert "/o/" not in bare and "honeypot" not in bare and "/hp" not in bare


def test_status_of_one_sequence(database_url: str, tmp_path: Path) -> None:
    """`--sequence X` was read as `--sequences X` (argparse abbreviations)."""
    env = {
        "NURTURE_DATABASE_URL": database_url,
        "NURTURE_SEQUENCES_DIR": str(DATA / "sequences"),
        "NURTURE_TEMPLATES_DIR": str(DATA / "templates"),
    }
    assert (
        run("subscribe", "a@example.com", "--sequence", "second", cwd=tmp_path, env=env).returncode
        == 0
    )
    r = run("status", "--sequence", "second", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert "second: 1 enrollments" in r.stdout and "journey:" not in r.stdout
    r = run("status", "--sequence", "nope", cwd=tmp_path, env=env)
    assert r.returncode == 1 and "unknown sequence 'nope'" in r.stderr
    r = run("status", "--seq", "second", cwd=tmp_path, env=env)
    assert r.returncode == 2  # no abbreviations at all


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql://nobody@127.0.0.1:9/nowhere", "cannot connect to the database"),
        ("foo://x", "NURTURE_DATABASE_URL foo://x cannot be used"),
        ("not a url", "NURTURE_DATABASE_URL 'not a url' cannot be used"),
    ],
)
@pytest.mark.parametrize("command", [["status"], ["run"], ["db", "upgrade"]])
def test_a_database_that_cannot_be_used_is_one_line(
    tmp_path: Path, url: str, says: str, command: list[str]
) -> None:
    r = run(*command, cwd=tmp_path, env={"NURTURE_DATABASE_URL": url, **SHIPPED})
    assert r.returncode == 1
    lines = [x for x in r.stderr.strip().splitlines() if "unknown setting" not in x]
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], r.stderr
    assert "Traceback" not in r.stderr


SHIPPED = {
    "NURTURE_SEQUENCES_DIR": str(REPO / "sequences"),
    "NURTURE_TEMPLATES_DIR": str(REPO / "templates"),
}


def test_a_busy_port_is_one_line_and_exit_1(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"NURTURE_HTTP_PORT": str(port), **SHIPPED}
        r = run("run", cwd=tmp_path, env=env)
    assert r.returncode == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"configuration error: cannot listen on 127.0.0.1:{port}"), r.stderr
    assert "Traceback" not in r.stderr


def test_an_unknown_setting_stops_start_up_naming_the_right_one(tmp_path: Path) -> None:
    """A typo such as NURTURE_SMTP_HOTS was ignored without a word, and mail quietly went to
    the built-in catcher; then it only warned (issue 20: it refuses; test_operator_errors.py)."""
    (tmp_path / ".env").write_text("NURTURE_CLICK_WINDOW_SECOND=20\n")
    env = {"NURTURE_SMTP_HOTS": "mail.example.com", "NURTURE_TEST_DATABASE_URL": "x", **SHIPPED}
    r = run("validate", cwd=tmp_path, env=env)
    assert r.returncode == 1
    assert "unknown setting NURTURE_SMTP_HOTS; did you mean NURTURE_SMTP_HOST?" in r.stderr
    assert "NURTURE_CLICK_WINDOW_SECOND; did you mean NURTURE_CLICK_WINDOW_SECONDS?" in r.stderr
    assert "NURTURE_TEST_DATABASE_URL" not in r.stderr  # the test suite's own variable


def test_people_at_a_step_the_files_lost_are_reported_and_moved_or_ended(
    database_url: str, tmp_path: Path
) -> None:
    """Issue 8.9: removing or renaming a step that people wait at left them retried hourly
    for ever with nothing visible."""
    sequences = tmp_path / "sequences"
    shutil.copytree(DATA / "sequences", sequences)
    env = {
        "NURTURE_DATABASE_URL": database_url,
        "NURTURE_SEQUENCES_DIR": str(sequences),
        "NURTURE_TEMPLATES_DIR": str(DATA / "templates"),
    }
    for who in ("amy", "ben"):
        r = run(
            "subscribe",
            f"{who}@example.com",
            "--sequence",
            "journey",
            "--confirmed",
            cwd=tmp_path,
            env=env,
        )
        assert r.returncode == 0, r.stderr
    r = run("validate", "--against-db", cwd=tmp_path, env=env)
    assert r.returncode == 0 and "nobody in the database waits" in r.stdout
    journey = sequences / "journey.yaml"
    journey.write_text(journey.read_text().replace("  - id: read\n", "  - id: reading\n"))
    r = run("validate", "--against-db", cwd=tmp_path, env=env)
    assert r.returncode == 1
    assert (
        "2 people wait at journey/read, which the loaded sequences do not have: "
        "`nurture move journey --from read --to STEP` or `nurture end journey --step read`"
    ) in r.stderr
    r = run("move", "journey", "--from", "read", "--to", "nowhere", cwd=tmp_path, env=env)
    assert r.returncode == 1 and "has no step 'nowhere'" in r.stderr
    r = run("move", "journey", "--from", "read", "--to", "reading", cwd=tmp_path, env=env)
    assert r.returncode == 0 and "moved 2 from journey/read to reading" in r.stdout
    assert run("validate", "--against-db", cwd=tmp_path, env=env).returncode == 0
    r = run("end", "journey", "--step", "reading", cwd=tmp_path, env=env)
    assert "ended journey for 2 waiting at reading" in r.stdout
    assert "ended 2" in run("status", cwd=tmp_path, env=env).stdout
