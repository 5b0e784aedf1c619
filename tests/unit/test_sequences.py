"""The YAML loader: shipped files load, every marketer mistake is a Problem with file, line and
a sentence, several at once; and the frozen domain objects it builds."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import jinja2
import pytest
from support.paths import DATA, REPO

from nurture.errors import Problem, SequenceError
from nurture.mail.render import make_environment
from nurture.sequences import (
    AdvanceOn,
    Reminder,
    Sequence,
    Step,
    Timeout,
    load_catalog,
    load_sequence_file,
)
from nurture.vocabulary import MessageKind, YesBy

TEMPLATES = {
    "a.html": '<p>A <a href="https://acme.example/a" data-micro-yes>a</a></p>\n',
    "a.txt": "A https://acme.example/a\n",
    "r.html": "<p>Reminder</p>\n",
    # A syntax error on line 3 of the template.
    "broken.html": "<p>one</p>\n<p>two</p>\n<p>{{ 1 + }}</p>\n<p>four</p>\n",
}


@pytest.fixture
def templates_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "templates"
    folder.mkdir()
    for name, body in TEMPLATES.items():
        (folder / name).write_text(body, encoding="utf-8")
    return folder


@pytest.fixture
def env(templates_dir: Path) -> jinja2.Environment:
    return make_environment(templates_dir)


@pytest.fixture
def seq_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "sequences"
    folder.mkdir()
    return folder


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def load(path: Path, env: jinja2.Environment | None) -> tuple[Sequence | None, list[Problem]]:
    problems: list[Problem] = []
    seq = load_sequence_file(path, env=env, problems=problems)
    return seq, problems


# A valid two-step file; the line numbers are what the error cases below refer to.
VALID = """
id: demo                                        # 1
name: Demo                                      # 2
from: "Ada <ada@acme.example>"                  # 3
steps:                                          # 4
  - id: one                                     # 5
    subject: "Hi {{ subscriber.first_name | default('there') }}"
    template: a.html                            # 7
    wait: 3d                                    # 8
    on_timeout: next                            # 9
  - id: two                                     # 10
    subject: Two                                # 11
    template: a.html                            # 12
    wait: 1d                                    # 13
"""


# ---------------------------------------------------------------------------------------------
# Files that load


def test_shipped_sequences_load_with_shipped_templates() -> None:
    env = make_environment(REPO / "templates")
    for path in sorted((REPO / "sequences").glob("*.y*ml")):
        seq, problems = load(path, env)
        assert problems == []
        assert seq is not None
    catalog = load_catalog(REPO / "sequences", env=env)
    assert catalog.get("starter") is not None


def test_test_journey_loads_with_test_templates() -> None:
    catalog = load_catalog(DATA / "sequences", env=make_environment(DATA / "templates"))
    journey = catalog.get("journey")
    assert journey is not None
    assert [s.id for s in journey.steps] == ["confirm", "read", "ask", "offer"]


def test_valid_file_loads(seq_dir: Path, env: jinja2.Environment) -> None:
    path = write(seq_dir, "demo.yaml", VALID)
    seq, problems = load(path, env)
    assert problems == []
    assert seq is not None
    assert (seq.id, seq.name, seq.sender, seq.source) == (
        "demo",
        "Demo",
        "Ada <ada@acme.example>",
        str(path),
    )


def test_without_env_templates_are_not_checked(seq_dir: Path) -> None:
    path = write(seq_dir, "demo.yaml", VALID.replace("template: a.html ", "template: zz.html"))
    seq, problems = load(path, None)
    assert problems == []
    assert seq is not None


# ---------------------------------------------------------------------------------------------
# One mistake each: (file text, [(line, words the sentence must contain), ...])

STEP = """
id: demo
name: Demo
from: "Ada <ada@acme.example>"
steps:
  - id: one
    subject: Hi
    template: a.html
    wait: 3d
"""  # lines 1-8; a case's extra lines start at line 9

CASES = {
    "unknown template": (
        VALID.replace("template: a.html                            # 12", "template: nope.html"),
        [(12, "step 'two': unknown template 'nope.html' (not found in the templates")],
    ),
    "template with a syntax error": (
        VALID.replace("template: a.html                            # 7", "template: broken.html"),
        [(7, "step 'one': template 'broken.html' has a syntax error at line 3")],
    ),
    "template that is not html": (
        VALID.replace("template: a.html                            # 7", "template: a.txt"),
        [(7, "must be an HTML file")],
    ),
    "subject with a syntax error": (
        VALID.replace("subject: Two", "subject: '{{ oops'"),
        [(11, "step 'two': the subject is not a valid template")],
    ),
    "duplicate step id": (
        VALID.replace("id: two ", "id: one "),
        [(10, "duplicate step id 'one' (step 1 has it already)")],
    ),
    "goto a missing step": (
        VALID.replace("on_timeout: next", "on_timeout: {goto: missing}"),
        [(9, "step 'one': on_timeout goes to step 'missing', which this sequence does not have")],
    ),
    "goto the step itself": (
        VALID.replace("on_timeout: next", "on_timeout: {goto: one}"),
        [(9, "on_timeout cannot go to the step itself")],
    ),
    "wait in words": (
        VALID.replace("wait: 3d", "wait: 3 days"),
        [(8, "step 'one': wait: '3 days' is not a duration")],
    ),
    "wait without unit": (
        VALID.replace("wait: 3d", "wait: 10"),
        [(8, "step 'one': wait: 10 has no unit")],
    ),
    "wait of zero": (
        VALID.replace("wait: 3d", "wait: 0"),
        [(8, "wait must be longer than 0")],
    ),
    "bad delay": (
        STEP + "    delay: soon\n",
        [(9, "step 'one': delay: 'soon' is not a duration")],
    ),
    "typo in a step key": (
        VALID.replace("subject: Two", "subjct: Two\n    subject: Two"),
        [(11, "step 'two': unknown key 'subjct'")],
    ),
    "typo in a top-level key": (
        VALID.replace("name: Demo ", "name: Demo\ncolour: blue "),
        [(3, "unknown key 'colour'")],
    ),
    "missing subject": (
        VALID.replace("    subject: Two                                # 11\n", ""),
        [(10, "step 'two': missing required key 'subject'")],
    ),
    "missing from": (
        VALID.replace('from: "Ada <ada@acme.example>"                  # 3\n', ""),
        [(1, "missing required key 'from'")],
    ),
    "bad advance_on": (
        STEP + "    advance_on: open\n",
        [
            (
                9,
                "step 'one': advance_on must be one of 'click', 'reply', 'event', "
                "'click_or_reply', 'click_or_event', 'reply_or_event' or "
                "'click_or_reply_or_event' (got 'open')",
            )
        ],
    ),
    "bad step id": (
        VALID.replace("id: two ", "id: 'two words'"),
        [(10, "step 'two words': id 'two words' may hold only letters, digits")],
    ),
    "next on the last step": (
        STEP + "    on_timeout: next\n",
        [(9, "step 'one' is the last step: there is no next step; use exit")],
    ),
    "reminder at the wait": (
        STEP + "    reminders:\n      - after: 3d\n        subject: R\n        template: r.html\n",
        [(10, "reminder 1 at 3d comes after the wait of 3d is over")],
    ),
    "reminder after the wait": (
        STEP + "    reminders:\n      - after: 1w\n        subject: R\n        template: r.html\n",
        [(10, "reminder 1 at 1w comes after the wait of 3d is over")],
    ),
    "reminders not ascending": (
        STEP
        + "    reminders:\n"
        + "      - after: 2d\n        subject: R\n        template: r.html\n"
        + "      - after: 1d\n        subject: R\n        template: r.html\n",
        [(13, "reminder 2 must come after reminder 1")],
    ),
    "reminder with an unknown template": (
        STEP + "    reminders:\n      - after: 1d\n        subject: R\n        template: rr.html\n",
        [(12, "step 'one', reminder 1: unknown template 'rr.html' (not found in the templates")],
    ),
    "confirms on the second step": (
        VALID + "    confirms: true\n",
        [(14, "step 'two': only the first step can confirm the subscription")],
    ),
    "empty steps": (
        'id: demo\nname: Demo\nfrom: "a@acme.example"\nsteps: []\n',
        [(4, "a sequence needs at least one step")],
    ),
    "duplicate yaml key": (
        STEP + "    wait: 4d\n",
        [(9, "duplicate key 'wait'")],
    ),
    "a list, not a mapping": ("- id: demo\n- name: Demo\n", [(1, "must be a mapping")]),
    "a scalar, not a mapping": ("just some words\n", [(1, "must be a mapping")]),
    "an empty file": ("", [(1, "must be a mapping")]),
    "yaml syntax error": (
        STEP.replace("    template: a.html", "   template: a.html"),
        [(7, "YAML syntax error")],  # the badly indented line
    ),
}


@pytest.mark.parametrize(("text", "expected"), CASES.values(), ids=list(CASES))
def test_each_mistake_is_reported_with_file_line_and_sentence(
    seq_dir: Path, env: jinja2.Environment, text: str, expected: list[tuple[int, str]]
) -> None:
    path = write(seq_dir, "demo.yaml", text)
    _seq, problems = load(path, env)
    assert {p.file for p in problems} == {str(path)}
    lines = sorted({line for line, _ in expected})
    assert sorted(p.line for p in problems) == lines
    for line, words in expected:
        assert any(p.line == line and words in p.message for p in problems), (words, problems)
    # str(Problem) is what the marketer reads: "file:line: sentence".
    assert str(problems[0]).startswith(f"{path}:{problems[0].line}: ")


@pytest.mark.parametrize("case", [c for c in CASES if c != "duplicate yaml key"])
def test_a_file_with_problems_yields_no_sequence(
    seq_dir: Path, env: jinja2.Environment, case: str
) -> None:
    seq, problems = load(write(seq_dir, "demo.yaml", CASES[case][0]), env)
    assert problems
    assert seq is None


def test_a_file_with_a_duplicate_key_yields_no_sequence(
    seq_dir: Path, env: jinja2.Environment
) -> None:
    seq, problems = load(write(seq_dir, "demo.yaml", CASES["duplicate yaml key"][0]), env)
    assert [p.message for p in problems] == ["duplicate key 'wait'"]
    assert seq is None


def test_yaml_syntax_error_inside_brackets(seq_dir: Path, env: jinja2.Environment) -> None:
    path = write(seq_dir, "demo.yaml", STEP + "    reminders: [1d, 2d\n    on_timeout: exit\n")
    _seq, problems = load(path, env)
    assert len(problems) == 1
    # The bracket opened on line 9 is still open when the parser meets the ':' on line 10.
    assert problems[0].line == 10
    assert problems[0].message.startswith("YAML syntax error: ")


def test_unreadable_file_is_a_problem_without_line(seq_dir: Path, env: jinja2.Environment) -> None:
    path = seq_dir / "latin1.yaml"
    path.write_bytes("id: caf\xe9\n".encode("latin-1"))
    seq, problems = load(path, env)
    assert seq is None
    assert len(problems) == 1
    assert (problems[0].file, problems[0].line) == (str(path), None)
    assert "cannot read the file" in problems[0].message


# ---------------------------------------------------------------------------------------------
# Several mistakes at once


def test_several_schema_mistakes_are_all_reported(seq_dir: Path, env: jinja2.Environment) -> None:
    text = """
    id: demo
    name: Demo
    from: "Ada <ada@acme.example>"
    steps:
      - id: one
        subjct: Hi
        template: a.html
        wait: 3 days
        advance_on: open
      - id: two
        subject: Two
        template: a.html
        wait: 10
        confirms: maybe
    """
    path = write(seq_dir, "demo.yaml", text)
    seq, problems = load(path, env)
    assert seq is None
    assert {p.file for p in problems} == {str(path)}
    # "step 'one': wait: '3 days' is not ..." -> "step 'one': wait"
    found = sorted((p.line, ":".join(p.message.split(":")[:2]).split(" must")[0]) for p in problems)
    assert found == [
        (5, "step 'one': missing required key 'subject'"),
        (6, "step 'one': unknown key 'subjct'"),
        (8, "step 'one': wait"),
        (9, "step 'one': advance_on"),
        (13, "step 'two': wait"),
        (14, "step 'two': confirms"),
    ]


def test_several_semantic_mistakes_are_all_reported(seq_dir: Path, env: jinja2.Environment) -> None:
    text = """
    id: demo
    name: Demo
    from: "Ada <ada@acme.example>"
    steps:
      - id: one
        subject: Hi
        template: nope.html
        wait: 1d
        reminders:
          - after: 2d
            subject: R
            template: r.html
        on_timeout: {goto: missing}
      - id: one
        subject: "{{ oops"
        template: a.html
        wait: 1d
        confirms: true
        on_timeout: next
    """
    path = write(seq_dir, "demo.yaml", text)
    seq, problems = load(path, env)
    assert seq is None
    assert {p.file for p in problems} == {str(path)}
    found = sorted((p.line, p.message) for p in problems)
    assert [line for line, _ in found] == [7, 10, 13, 14, 15, 18, 19, 19]
    messages = " | ".join(m for _, m in found)
    for words in (
        "unknown template 'nope.html'",
        "reminder 1 at 2d comes after the wait of 1d",
        "on_timeout goes to step 'missing'",
        "duplicate step id 'one' (step 1 has it already)",
        "the subject is not a valid template",
        "only the first step can confirm",
        "is the last step",
        "a confirmation step can only exit when nobody confirms",
    ):
        assert words in messages


def test_schema_and_semantic_mistakes_are_reported_together(
    seq_dir: Path, env: jinja2.Environment
) -> None:
    text = """
    id: demo
    name: Demo
    from: "Ada <ada@acme.example>"
    steps:
      - id: one
        subjct: Hi
        template: a.html
        wait: 1d
      - id: two
        subject: Two
        template: nope.html
        wait: 1d
    """
    seq, problems = load(write(seq_dir, "demo.yaml", text), env)
    assert seq is None
    assert sorted((p.line, p.message) for p in problems) == [
        (5, "step 'one': missing required key 'subject'"),
        (6, "step 'one': unknown key 'subjct'"),
        (11, "step 'two': unknown template 'nope.html' (not found in the templates directory)"),
    ]


# ---------------------------------------------------------------------------------------------
# Mistakes the loader used to miss (each test guards its fix)


@pytest.mark.parametrize(
    ("files", "words"),
    [
        (
            {"t.html": "<p>fine</p>\n", "t.txt": "fine\n{{ oops(\n"},
            "step 'one': template 't.txt' has a syntax error at line 2",
        ),
        (
            {"t.html": '{% extends "_layout.html" %}\n', "_layout.html": "<p>\n{% if x %}\n"},
            "step 'one': template '_layout.html' has a syntax error at line 2",
        ),
        (
            {"t.html": '{% extends "_missing.html" %}\n'},
            "step 'one': template 't.html' uses unknown template '_missing.html'",
        ),
        (
            {"t.html": '{% include "_part.html" %}\n', "_part.html": "{{ 1 + }}\n"},
            "step 'one': template '_part.html' has a syntax error at line 1",
        ),
    ],
    ids=["twin", "parent", "missing parent", "include"],
)
def test_errors_in_related_templates_are_reported(
    seq_dir: Path, templates_dir: Path, files: dict[str, str], words: str
) -> None:
    for name, body in files.items():
        (templates_dir / name).write_text(body, encoding="utf-8")
    path = write(seq_dir, "demo.yaml", STEP.replace("a.html", "t.html"))
    seq, problems = load(path, make_environment(templates_dir))
    assert [(p.file, p.line) for p in problems] == [(str(path), 7)]  # the `template:` line
    assert words in problems[0].message, problems
    assert seq is None


def test_negative_wait_is_a_problem_not_a_crash(seq_dir: Path, env: jinja2.Environment) -> None:
    # parse_duration(-1) must raise ValueError (see test_durations.py); any other exception
    # escapes the pydantic validator and load_sequence_file.
    path = write(seq_dir, "demo.yaml", STEP.replace("wait: 3d", "wait: -1"))
    seq, problems = load(path, env)
    assert seq is None
    assert [(p.file, p.line) for p in problems] == [(str(path), 8)]
    assert "step 'one': wait: -1 is not a duration" in problems[0].message


def test_recursive_alias_is_a_problem_not_a_crash(seq_dir: Path, env: jinja2.Environment) -> None:
    path = write(seq_dir, "demo.yaml", STEP.replace("steps:", "goals: &g [*g]\nsteps:"))
    seq, problems = load(path, env)
    assert seq is None
    assert [(p.file, p.line) for p in problems] == [(str(path), 4)]  # the `goals:` line
    assert "YAML anchor '&g': sequence files take no anchors or aliases" in problems[0].message


def test_a_yaml_alias_bomb_is_refused_before_it_grows(
    seq_dir: Path, env: jinja2.Environment
) -> None:
    """Issue 8.8: nine lines of aliases ("billion laughs") took validate to 2.97 GB."""
    bomb = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9))
    path = write(seq_dir, "demo.yaml", 'l0: &l0 "lol"\n' + bomb + STEP.lstrip("\n"))
    seq, problems = load(path, env)
    assert seq is None and len(problems) == 1
    assert (problems[0].line, problems[0].message.split(":")[0]) == (1, "YAML anchor '&l0'")


def test_a_file_over_a_megabyte_is_refused(seq_dir: Path, env: jinja2.Environment) -> None:
    path = write(seq_dir, "demo.yaml", STEP + "#" + "x" * (1024 * 1024) + "\n")
    seq, problems = load(path, env)
    assert seq is None and problems[0].message == "the file is larger than 1024 KiB"


LOOP = """
id: demo
name: Demo
from: "Ada <ada@acme.example>"
steps:
  - id: a
    subject: A
    template: a.html
    wait: 1d
    on_timeout: next
  - id: b
    subject: B
    template: a.html
    wait: 1d
    on_timeout: {goto: a}
  - id: c
    subject: C
    template: a.html
    wait: 1d
"""


def test_steps_that_loop_on_timeout_are_refused(seq_dir: Path, env: jinja2.Environment) -> None:
    """Issue 8.8: a goto cycle with no exit mailed a silent person forever."""
    path = write(seq_dir, "demo.yaml", LOOP)
    seq, problems = load(path, env)
    assert seq is None
    assert [(p.line, p.message) for p in problems] == [
        (
            14,
            "steps 'a' -> 'b' -> 'a' lead back to each other when nobody answers: a silent "
            "person would be emailed round this loop forever; end it with on_timeout: exit "
            "on one of them",
        )
    ]
    # A goto back that is not a loop (the step it goes to ends the way) is fine.
    fine = LOOP.replace("    on_timeout: next\n", "    on_timeout: exit\n", 1)
    seq, problems = load(write(seq_dir, "demo.yaml", fine), env)
    assert problems == [] and seq is not None


def test_bad_on_timeout_is_one_plain_sentence(seq_dir: Path, env: jinja2.Environment) -> None:
    path = write(seq_dir, "demo.yaml", STEP + "    on_timeout: stay\n")
    _seq, problems = load(path, env)
    assert [(p.file, p.line, p.message) for p in problems] == [
        (str(path), 9, "step 'one': on_timeout must be exit, next or {goto: STEP_ID} (got 'stay')")
    ]


@pytest.mark.parametrize(
    "sender", ["Acme, Inc. <news@acme.example>", "not an address", "a@acme.example, b@acme.example"]
)
def test_from_must_be_one_address(seq_dir: Path, env: jinja2.Environment, sender: str) -> None:
    text = VALID.replace('"Ada <ada@acme.example>"', f"'{sender}'")
    path = write(seq_dir, "demo.yaml", text)
    seq, problems = load(path, env)
    assert [(p.file, p.line) for p in problems] == [(str(path), 3)]
    assert f"from {sender!r} is not an address like" in problems[0].message
    assert seq is None


# ---------------------------------------------------------------------------------------------
# The catalog


OPT_IN = """
id: optin
name: Opt-in
from: "Ada <ada@acme.example>"
steps:
  - id: confirm
    confirms: true
    subject: Confirm
    template: a.html
    wait: 1d
"""


def test_catalog_collects_problems_from_several_files(
    seq_dir: Path, env: jinja2.Environment
) -> None:
    write(seq_dir, "0_optin.yaml", OPT_IN)
    good = write(seq_dir, "a_good.yaml", VALID)
    typo = write(
        seq_dir,
        "b_typo.yaml",
        VALID.replace("id: demo", "id: b").replace("subject: Two", "subjct: Two"),
    )
    template = write(
        seq_dir,
        "c_template.yml",
        VALID.replace("id: demo", "id: c").replace(
            "template: a.html                            # 7", "template: nope.html"
        ),
    )
    with pytest.raises(SequenceError) as info:
        load_catalog(seq_dir, env=env)
    problems = info.value.problems
    assert [(p.file, p.line) for p in problems] == [
        (str(typo), 10),  # missing required key 'subject' in steps[1]
        (str(typo), 11),  # unknown key 'subjct' in steps[1]
        (str(template), 7),
    ]
    assert str(good) not in str(info.value)
    assert f"{typo}:10: step 'two': missing required key 'subject'" in str(info.value)
    assert f"{typo}:11: step 'two': unknown key 'subjct'" in str(info.value)
    assert f"{template}:7: step 'one': unknown template 'nope.html'" in str(info.value)


def test_catalog_sorts_problems_by_file_and_line(seq_dir: Path, env: jinja2.Environment) -> None:
    # Within one file the loader finds the duplicate step id (line 10) before the unknown
    # template of the first step (line 7); the catalog reports them in file order.
    text = (
        VALID.replace("id: two ", "id: one ")
        .replace("template: a.html                            # 7", "template: nope.html")
        .replace("id: demo", "id: other")
    )
    write(seq_dir, "0_optin.yaml", OPT_IN)  # someone can confirm: no silent holds
    second = write(seq_dir, "b.yaml", text)
    first = write(seq_dir, "a.yaml", VALID.replace("wait: 1d ", "wait: 1 day"))
    with pytest.raises(SequenceError) as info:
        load_catalog(seq_dir, env=env)
    assert [(p.file, p.line) for p in info.value.problems] == [
        (str(first), 13),
        (str(second), 7),
        (str(second), 10),
    ]
    assert "unknown template 'nope.html'" in info.value.problems[1].message
    assert "duplicate step id 'one'" in info.value.problems[2].message


def test_catalog_loads_yaml_and_yml(seq_dir: Path, env: jinja2.Environment) -> None:
    write(seq_dir, "a.yaml", VALID)
    write(seq_dir, "b.yml", VALID.replace("id: demo", "id: other"))
    write(seq_dir, "c.yaml", OPT_IN)
    write(seq_dir, "notes.txt", "not a sequence")
    catalog = load_catalog(seq_dir, env=env)
    assert sorted(s.id for s in catalog) == ["demo", "optin", "other"]
    assert catalog.get("missing") is None


def test_duplicate_sequence_id_across_files(seq_dir: Path, env: jinja2.Environment) -> None:
    write(seq_dir, "0_optin.yaml", OPT_IN)
    first = write(seq_dir, "a.yaml", VALID)
    second = write(seq_dir, "b.yaml", VALID)
    with pytest.raises(SequenceError) as info:
        load_catalog(seq_dir, env=env)
    [problem] = info.value.problems
    assert problem.file == str(second)
    assert problem.line == 1
    assert f"sequence id 'demo' is already used by {first}" in problem.message


def test_duplicate_sequence_id_points_at_the_id_line(
    seq_dir: Path, env: jinja2.Environment
) -> None:
    write(seq_dir, "0_optin.yaml", OPT_IN)
    first = write(seq_dir, "a.yaml", VALID)
    # VALID starts with a newline: without lstrip the `id:` line would be line 4.
    second = write(
        seq_dir, "b.yaml", "# A copy of a.yaml\n# that kept its id\n" + VALID.lstrip("\n")
    )
    assert second.read_text().splitlines()[2].startswith("id: demo")
    with pytest.raises(SequenceError) as info:
        load_catalog(seq_dir, env=env)
    assert [(p.file, p.line) for p in info.value.problems] == [(str(second), 3)]
    assert f"sequence id 'demo' is already used by {first}" in info.value.problems[0].message


def test_catalog_of_missing_or_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(SequenceError, match="does not exist"):
        load_catalog(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SequenceError, match="no sequence files"):
        load_catalog(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------
# Domain objects


FULL = """
id: full
name: Full
from: "Ada <ada@acme.example>"
goals: [purchase, booked]
steps:
  - id: confirm
    confirms: true
    subject: Confirm
    template: a.html
    wait: 2d
    reminders:
      - after: 12h
        subject: R1
        template: r.html
      - after: 1d6h
        subject: R2
        template: r.html
    on_timeout: exit
  - id: read
    subject: Read
    template: a.html
    advance_on: click_or_reply
    delay: 1h
    wait: 1w
    on_timeout: next
  - id: ask
    subject: Ask
    template: a.html
    advance_on: reply
    wait: 30m
    on_timeout: {goto: last}
  - id: last
    subject: Last
    template: a.html
    wait: 1d
"""


@pytest.fixture
def full(seq_dir: Path, env: jinja2.Environment) -> Sequence:
    seq, problems = load(write(seq_dir, "full.yaml", FULL), env)
    assert problems == []
    assert seq is not None
    return seq


def test_steps_carry_typed_values(full: Sequence) -> None:
    confirm, read, ask, last = full.steps
    assert confirm == Step(
        id="confirm",
        subject="Confirm",
        template="a.html",
        advance_on=AdvanceOn.click,
        wait=timedelta(days=2),
        delay=timedelta(0),
        reminders=(
            Reminder(timedelta(hours=12), "R1", "r.html"),
            Reminder(timedelta(days=1, hours=6), "R2", "r.html"),
        ),
        on_timeout=Timeout("exit"),
        confirms=True,
        line=6,
    )
    assert (read.advance_on, read.delay, read.wait) == (
        AdvanceOn.click_or_reply,
        timedelta(hours=1),
        timedelta(weeks=1),
    )
    assert read.on_timeout == Timeout("next")
    assert read.reminders == ()
    assert ask.on_timeout == Timeout("goto", "last")
    assert ask.advance_on is AdvanceOn.reply
    assert last.on_timeout == Timeout("exit")
    assert [s.line for s in full.steps] == [6, 19, 26, 32]


def test_steps_are_frozen(full: Sequence) -> None:
    with pytest.raises(AttributeError):
        full.steps[0].wait = timedelta(0)  # type: ignore[misc]


def test_navigation(full: Sequence) -> None:
    assert full.step("ask").subject == "Ask"
    assert full.has_step("read") and not full.has_step("nope")
    assert full.next_step("confirm") == full.step("read")
    assert full.next_step("ask") == full.step("last")
    assert full.next_step("last") is None
    with pytest.raises(KeyError):
        full.next_step("nope")


def test_counts_as_goal(full: Sequence, seq_dir: Path, env: jinja2.Environment) -> None:
    assert full.goals == ("purchase", "booked")
    assert full.counts_as_goal("purchase")
    assert full.counts_as_goal("booked")
    assert not full.counts_as_goal("signup")
    no_goals, _ = load(write(seq_dir, "plain.yaml", VALID), env)
    assert no_goals is not None and no_goals.goals == ()
    assert no_goals.counts_as_goal("anything")


@pytest.mark.parametrize(
    ("advance_on", "accepts"),
    [
        (AdvanceOn.click, {"click"}),
        (AdvanceOn.reply, {"reply"}),
        (AdvanceOn.click_or_reply, {"click", "reply"}),
        (AdvanceOn.event, {"event"}),
        (AdvanceOn.click_or_event, {"click", "event"}),
        (AdvanceOn.reply_or_event, {"reply", "event"}),
        (AdvanceOn.click_or_reply_or_event, {"click", "reply", "event"}),
    ],
)
def test_advance_on_accepts(advance_on: AdvanceOn, accepts: set[str]) -> None:
    assert {k.value for k in YesBy if advance_on.accepts(k)} == accepts


@pytest.mark.parametrize("kind", ["open", "bounce", ""])
def test_click_or_reply_accepts_only_clicks_and_replies(kind: str) -> None:
    assert not AdvanceOn.click_or_reply.accepts(kind)  # type: ignore[arg-type]


def test_names_a_template_will_never_have_are_reported(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "a.html").write_text('<a href="{{ unsubscribe_ur }}">x</a> {{ subscriber.email }}')
    seq_dir = tmp_path / "sequences"
    seq_dir.mkdir()
    path = write(
        seq_dir,
        "demo.yaml",
        """
    id: demo
    name: Demo
    from: "Ada <ada@acme.example>"
    steps:
      - id: one
        subject: "Hi {{ first_name }}"
        template: a.html
        wait: 1d
    """,
    )
    seq, problems = load(path, make_environment(templates))
    assert seq is None
    found = sorted((p.line, p.message) for p in problems)
    assert found == [
        (
            6,
            "step 'one': the subject uses 'first_name', which templates do not have (they have: "
            "base_url, sequence, step, subscriber, unsubscribe_url)",
        ),
        (
            7,
            "step 'one': template 'a.html' uses 'unsubscribe_ur', which templates do not have "
            "(they have: base_url, sequence, step, subscriber, unsubscribe_url)",
        ),
    ]


def test_no_confirmation_step_anywhere_is_a_problem_with_its_fix(
    seq_dir: Path, env: jinja2.Environment
) -> None:
    """Issue 8.10: a sequence whose first step confirms but is not marked `confirms: true`
    passed validate, and everyone who subscribed was held for ever with nothing sent."""
    path = write(seq_dir, "a.yaml", VALID)
    with pytest.raises(SequenceError) as info:
        load_catalog(seq_dir, env=env)
    [problem] = info.value.problems
    assert (problem.file, problem.line) == (str(path), 1)
    assert "nobody who subscribes can ever get an email here" in problem.message
    assert (
        "`confirms: true`" in problem.message and "`confirmed_elsewhere: true`" in problem.message
    )
    # Said so explicitly (everyone here confirmed outside nurture): fine.
    write(seq_dir, "a.yaml", VALID.replace("steps:", "confirmed_elsewhere: true\nsteps:"))
    assert load_catalog(seq_dir, env=env).get("demo") is not None
    # Or with a confirmation step in any sequence: people confirm there.
    write(seq_dir, "a.yaml", VALID)
    write(seq_dir, "b.yaml", OPT_IN)
    assert load_catalog(seq_dir, env=env).get("demo") is not None


def test_send_windows_load_and_each_mistake_names_its_line(
    seq_dir: Path, env: jinja2.Environment
) -> None:
    good = VALID.replace(
        "steps:                                          # 4",
        'send_window: {days: [mon, fri], from: "08:30", to: "24:00"}\nsteps:',
    ).replace(
        "    on_timeout: next                            # 9",
        "    on_timeout: next\n    send_window: anytime",
    )
    seq, problems = load(write(seq_dir, "good.yaml", good), env)
    assert problems == [] and seq is not None
    assert seq.send_window is not None and sorted(seq.send_window.days) == [0, 4]
    assert seq.send_window.end is None and seq.window_for(seq.step("one")) is None  # anytime
    assert seq.window_for(seq.step("two")) == seq.send_window
    text = """
    id: demo
    name: Demo
    from: "Ada <ada@acme.example>"
    send_window: {days: [mon, funday], from: "9am", to: "17:00"}
    steps:
      - id: one
        subject: Hi
        template: a.html
        wait: 3d
        send_window: {from: "18:00", to: "09:00"}
      - id: two
        subject: Two
        template: a.html
        wait: 1d
        send_window: weekdays
    """
    seq, problems = load(write(seq_dir, "bad.yaml", text), env)
    assert seq is None
    assert [(p.line, p.message) for p in problems] == [
        (
            4,
            "send_window.days[1] must be one of 'mon', 'tue', 'wed', 'thu', 'fri', 'sat' or "
            "'sun' (got 'funday')",
        ),
        (4, "send_window.from must be a time like \"09:00\" (got '9am')"),
        (10, "step 'one': send_window: to (09:00) must be later than from (18:00) on the same day"),
        (
            15,
            "step 'two': send_window must be anytime or {days: [mon, ...], from: \"09:00\", "
            "to: \"17:30\"} (got 'weekdays')",
        ),
    ]


def test_a_reminder_may_follow_the_persons_email(seq_dir: Path, env: jinja2.Environment) -> None:
    """A reminder without subject says "Re: " and the subject of the email the person got
    (their variant's); without template it is that email's template again."""
    text = VALID.replace(
        "    on_timeout: next                            # 9\n",
        "    reminders: [{after: 1d}, {after: 2d, template: r.html}]\n    on_timeout: next\n",
    ).replace(
        "    subject: Two                                # 11\n    template: a.html",
        "    variants:\n"
        "      - {id: a, subject: A, template: a.html}\n"
        "      - {id: b, subject: 'B {{ subscriber.first_name }}', template: r.html}\n"
        "    reminders: [{after: 12h}, {after: 18h, subject: Last}]",
    )
    seq, problems = load(write(seq_dir, "demo.yaml", text), env)
    assert problems == [] and seq is not None
    one, two = seq.steps
    assert one.reminders == (
        Reminder(timedelta(days=1)),
        Reminder(timedelta(days=2), None, "r.html"),
    )
    first, second = MessageKind(1), MessageKind(2)
    hi = "Hi {{ subscriber.first_name | default('there') }}"
    assert one.email(first) == (f"Re: {hi}", "a.html")
    assert one.email(second) == (f"Re: {hi}", "r.html")
    assert two.email(MessageKind.STEP, "b") == ("B {{ subscriber.first_name }}", "r.html")
    assert two.email(first, "b") == ("Re: B {{ subscriber.first_name }}", "r.html")
    assert two.email(first, "a") == ("Re: A", "a.html")
    assert two.email(second, "b") == ("Last", "r.html")
    # A variant the step no longer has (the file changed under a running deployment): the
    # first variant, as the step's own email.
    assert two.email(first, "gone") == ("Re: A", "a.html")


def test_a_following_reminder_still_checks_what_it_names(
    seq_dir: Path, env: jinja2.Environment
) -> None:
    text = VALID.replace(
        "    on_timeout: next                            # 9\n",
        "    reminders:\n"
        "      - {after: 1d, template: rr.html}\n"
        "      - {after: 2d, subject: '{{'}\n"
        "    on_timeout: next\n",
    )
    _, problems = load(write(seq_dir, "demo.yaml", text), env)
    assert [(p.line, p.message.split(":")[0]) for p in problems] == [
        (10, "step 'one', reminder 1"),
        (11, "step 'one', reminder 2"),
    ]
    assert "unknown template 'rr.html'" in problems[0].message
    assert "the subject is not a valid template" in problems[1].message


# ---------------------------------------------------------------------------------------------
# One mistake hides no other


def test_a_step_with_a_wrong_key_still_has_its_other_rules_checked(
    seq_dir: Path, env: jinja2.Environment
) -> None:
    text = VALID.replace(
        "    on_timeout: next                            # 9\n",
        "    reminders: [{after: 4d, subject: R, template: r.html}]\n    delya: 1h\n",
    )
    _, problems = load(write(seq_dir, "demo.yaml", text), env)
    assert sorted((p.line, p.message) for p in problems) == [
        (
            9,
            "step 'one': reminder 1 at 4d comes after the wait of 3d is over; it would never "
            "be sent",
        ),
        (10, "step 'one': unknown key 'delya'"),
    ]


def test_a_key_left_out_says_nothing_untrue_about_the_rest(
    seq_dir: Path, env: jinja2.Environment
) -> None:
    # A wrong advance_on leaves the events unjudged (the stand-in click takes none); a wrong
    # wait leaves the reminders unjudged (against which wait?).
    text = VALID.replace(
        "    wait: 3d ", "    advance_on: evnt\n    events: [paid]\n    wait: 3 days "
    ).replace(
        "    on_timeout: next                            # 9\n",
        "    reminders: [{after: 4d, subject: R, template: r.html}]\n    on_timeout: next\n",
    )
    _, problems = load(write(seq_dir, "demo.yaml", text), env)
    assert sorted(p.line or 0 for p in problems) == [8, 10]
    assert "advance_on must be one of" in problems[0].message
    assert "'3 days' is not a duration" in problems[1].message


def test_a_file_with_mistakes_is_still_read_for_the_checks_of_whole_sequences(
    seq_dir: Path, env: jinja2.Environment
) -> None:
    """Rendering each email and evaluating each condition for the sample need whole sequences:
    they get every file as far as it reads (a draft), without the parts already said broken."""
    from nurture.sequences import read_sequences

    write(seq_dir, "0_optin.yaml", OPT_IN)
    text = (
        VALID.replace('from: "Ada <ada@acme.example>"', "from: nobody")
        .replace("template: a.html                            # 7", "template: nope.html")
        .replace("    wait: 1d ", '    when: "subscriber.x"\n    wait: 1d ')
    )
    broken = write(seq_dir, "demo.yaml", text)
    reading = read_sequences(seq_dir, env=env)
    assert sorted(p.line or 0 for p in reading.problems) == [3, 7, 13]
    optin, demo = reading.sequences
    assert optin.id == "optin" and demo.id == "demo" and demo.source == str(broken)
    assert [s.id for s in demo.steps] == ["one", "two"]
    assert reading.unrendered == {(str(broken), "one")}  # its template is unknown: said
    assert demo.step("two").when is None  # its condition is wrong: said
    with pytest.raises(SequenceError) as info:
        reading.catalog()
    assert len(info.value.problems) == 3


def test_nobody_can_say_that_none_confirms_while_a_file_is_unread(
    seq_dir: Path, env: jinja2.Environment
) -> None:
    # The only confirmation step is in a file with a YAML error: only that error is said,
    # not "nobody who subscribes can ever get an email" for every other sequence.
    write(seq_dir, "0_optin.yaml", OPT_IN + "  - [oops\n")
    write(seq_dir, "demo.yaml", VALID)
    with pytest.raises(SequenceError) as info:
        load_catalog(seq_dir, env=env)
    [problem] = info.value.problems
    assert "YAML syntax error" in problem.message
