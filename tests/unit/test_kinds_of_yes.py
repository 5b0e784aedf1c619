"""The newer kinds of small yes, without a database: the loader's checks of answers, when,
events, variants, pick_winner and reenter (each mistake with its file and line), the engine's
routing on a fixed clock, conditions, and the A/B statistics."""

from __future__ import annotations

import textwrap
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from support.clock import T0
from support.steps import step

from nurture import engine
from nurture.abtest import Arm, assign, fisher_exact, judge, two_proportions
from nurture.conditions import Conditions
from nurture.engine import Remember, SendEmail, Skipped, Yes
from nurture.errors import Problem
from nurture.mail.render import Renderer, make_environment, sample_problems
from nurture.sequences import (
    AdvanceOn,
    Answer,
    Catalog,
    Reentry,
    Sequence,
    Timeout,
    Variant,
    load_sequence_file,
)
from nurture.tokens import Signer
from nurture.vocabulary import EnrollmentStatus, Phase, YesBy

D = timedelta(days=1)
TEMPLATES = {
    "a.html": '<p><a href="https://acme.example/a" data-micro-yes>a</a></p>\n',
    "q.html": (
        '<p><a href="https://acme.example/q?x" data-answer="x">X</a>'
        '<a href="https://acme.example/q?y" data-answer="y">Y</a></p>\n'
    ),
}
HEAD = 'id: s\nname: S\nfrom: "Ada <ada@acme.example>"\nconfirmed_elsewhere: true\n'


def load(tmp_path: Path, body: str) -> tuple[Sequence | None, list[Problem]]:
    templates = tmp_path / "templates"
    templates.mkdir(exist_ok=True)
    for name, text in TEMPLATES.items():
        (templates / name).write_text(text)
    path = tmp_path / "s.yaml"
    path.write_text(HEAD + textwrap.dedent(body).lstrip("\n"))
    problems: list[Problem] = []
    seq = load_sequence_file(path, env=make_environment(templates), problems=problems)
    return seq, problems


def test_every_new_key_loads_into_the_step(tmp_path: Path) -> None:
    seq, problems = load(
        tmp_path,
        """
        reenter: {after: 30d}
        steps:
          - id: q
            subject: Q
            template: q.html
            wait: 1d
            answers:
              x: {goto: t, tag: [a, b], set: {stage: 2}}
              y: {next: true}
          - id: w
            subject: W
            template: a.html
            when: "'a' in subscriber.tags"
            advance_on: click_or_event
            events: [trial_started]
            wait: 1d
          - id: t
            variants:
              - {id: a, subject: A, template: a.html}
              - {id: b, subject: B, template: q.html, weight: 3}
            pick_winner: {after_sent: 500, min_sent: 50}
            advance_on: click
            wait: 1d
        """,
    )
    assert problems == [] and seq is not None
    q, w, t = seq.steps
    assert q.answers == (Answer("x", "t", ("a", "b"), (("stage", 2),)), Answer("y"))
    assert w.when == "'a' in subscriber.tags" and w.events == ("trial_started",)
    assert w.advance_on is AdvanceOn.click_or_event
    assert t.variants == (Variant("a", "A", "a.html"), Variant("b", "B", "q.html", 3))
    assert (t.subject, t.template) == ("A", "a.html")  # the first variant stands for the step
    assert t.pick_winner is not None and t.pick_winner.after_sent == 500
    assert seq.reenter == Reentry("after", 30 * D)


@pytest.mark.parametrize(
    ("body", "line", "words"),
    [
        (
            "  - {id: q, subject: Q, template: q.html, wait: 1d,"
            " answers: {x: {goto: nope}, y: {}}}",
            2,
            "answer 'x' goes to step 'nope', which this sequence does not have",
        ),
        (
            "  - {id: q, subject: Q, template: q.html, wait: 1d, advance_on: reply,"
            " answers: {x: {}, y: {}}}",
            2,
            "answers are links to click",
        ),
        (
            "  - {id: q, subject: Q, template: a.html, wait: 1d, advance_on: event}",
            2,
            "needs the events that say yes",
        ),
        (
            "  - {id: q, subject: Q, template: a.html, wait: 1d, events: [paid]}",
            2,
            "events are an ask only with advance_on: event",
        ),
        ("  - {id: q, subject: Q, template: a.html, wait: 1d, when: 'x ==' }", 2, "not a valid"),
        (
            "  - {id: q, subject: Q, template: a.html, wait: 1d, when: 'plan == 1' }",
            2,
            "a condition sees only subscriber",
        ),
        (
            "  - {id: q, subject: Q, wait: 1d, variants: [{id: a, subject: A, template: a.html},"
            " {id: b, subject: B, template: a.html}]}",
            2,
            "takes its subject from each variant",
        ),
        (
            "  - {id: q, wait: 1d, variants: [{id: a, subject: A, template: a.html}]}",
            2,
            "at least two variants",
        ),
        (
            "  - {id: q, wait: 1d, variants: [{id: a, subject: A, template: a.html},"
            " {id: a, subject: B, template: a.html}]}",
            2,
            "duplicate variant id 'a'",
        ),
        (
            "  - {id: q, subject: Q, template: a.html, wait: 1d, pick_winner: {after_sent: 9}}",
            2,
            "pick_winner needs variants",
        ),
        (
            "  - {id: q, wait: 1d, pick_winner: {}, variants: [{id: a, subject: A,"
            " template: a.html}, {id: b, subject: B, template: a.html}]}",
            2,
            "one of after_sent: N or after: DURATION",
        ),
        (
            "  - {id: q, wait: 1d, variants: [{id: a, subject: A, template: nope.html},"
            " {id: b, subject: B, template: a.html}]}",
            2,
            "variant 'a': unknown template 'nope.html'",
        ),
    ],
)
def test_each_mistake_in_the_new_keys_names_its_line(
    tmp_path: Path, body: str, line: int, words: str
) -> None:
    seq, problems = load(tmp_path, "steps:\n" + body + "\n")
    assert seq is None
    assert any(
        p.line is not None and p.line >= line + 4 and words in p.message for p in problems
    ), (
        words,
        problems,
    )


def test_a_bad_reenter_is_one_sentence(tmp_path: Path) -> None:
    _, problems = load(
        tmp_path,
        "reenter: sometimes\nsteps:\n  - {id: a, subject: A, template: a.html, wait: 1d}\n",
    )
    [problem] = problems
    assert (
        problem.line == 5
        and "reenter must be never, always or {after: DURATION}" in problem.message
    )


def test_validate_matches_answers_with_the_templates_links(tmp_path: Path) -> None:
    """Every answer of the YAML has a link marked data-answer, and every marked link is an
    answer of the YAML: the sample render of each email says which is missing."""
    seq, problems = load(
        tmp_path,
        """
        steps:
          - id: q
            subject: Q
            template: q.html
            wait: 1d
            answers: {x: {}, z: {}}
        """,
    )
    assert problems == [] and seq is not None
    env = make_environment(tmp_path / "templates")
    found = sample_problems(Catalog({"s": seq}), Renderer(env, Signer("k"), "http://n.test"))
    messages = sorted(p.message for p in found)
    assert all(p.line == 6 for p in found)
    assert messages == [
        "step 'q': answer 'z' has no link in the template (mark one data-answer=\"z\")",
        "step 'q': the template marks data-answer=\"y\", which the step's answers do not have"
        " (answers: x, z)",
    ]


SURVEY = Sequence(
    id="s",
    name="S",
    sender="a@b.c",
    steps=(
        step(
            "q",
            advance_on=AdvanceOn.click_or_reply,
            answers=(Answer("x", "t", ("beginner",)), Answer("y", None, (), (("stage", "y"),))),
            on_timeout=Timeout("next"),
        ),
        step("w", when="'beginner' in subscriber.tags", on_timeout=Timeout("next")),
        step("t", advance_on=AdvanceOn.event, events=("trial_started",)),
    ),
)


def waiting(step_id: str, visit: int = 1) -> engine.EnrollmentState:
    return engine.EnrollmentState(
        EnrollmentStatus.active, step_id, Phase.wait, visit, T0 + D, step_sent_at=T0
    )


def test_an_answer_with_goto_jumps_and_remembers() -> None:
    decision = engine.on_yes(waiting("q"), SURVEY, Yes(YesBy.click, "q", 1, answer="x"), now=T0)
    assert decision.state.step_id == "t" and decision.state.visit == 2
    assert decision.state.done == ("q",) and decision.state.phase is Phase.send
    assert decision.actions == (Remember("q", "x", ("beginner",), ()),)


def test_an_answer_with_next_moves_on_and_sets_fields() -> None:
    decision = engine.on_yes(waiting("q"), SURVEY, Yes(YesBy.click, "q", 1, answer="y"), now=T0)
    assert decision.state.step_id == "w"
    assert decision.actions == (Remember("q", "y", (), (("stage", "y"),)),)


def test_a_click_that_is_no_answer_is_not_a_yes_but_a_reply_is() -> None:
    state = waiting("q")
    for answer in (None, "nope"):
        no = engine.on_yes(state, SURVEY, Yes(YesBy.click, "q", 1, answer=answer), now=T0)
        assert no.state == state and no.outcome == "ignored:not_an_answer"
    reply = engine.on_yes(state, SURVEY, Yes(YesBy.reply, "q", 1), now=T0)
    assert reply.state.step_id == "w" and reply.actions == ()


def test_only_a_listed_event_answers_an_event_step() -> None:
    state = waiting("t")
    other = engine.on_yes(state, SURVEY, Yes(YesBy.event, "t", 1, event="paid"), now=T0)
    assert other.state == state and other.outcome == "ignored:not_this_steps_event"
    click = engine.on_yes(state, SURVEY, Yes(YesBy.click, "t", 1), now=T0)
    assert click.state == state
    yes = engine.on_yes(state, SURVEY, Yes(YesBy.event, "t", 1, event="trial_started"), now=T0)
    assert yes.state.status is EnrollmentStatus.completed


def due(step_id: str) -> engine.EnrollmentState:
    return engine.EnrollmentState(EnrollmentStatus.active, step_id, Phase.send, 2, T0)


def test_a_false_condition_skips_the_step_and_says_why() -> None:
    decision = engine.on_due(
        due("w"), SURVEY, now=T0, confirmed=True, admits=lambda s: (False, "it was false")
    )
    assert decision.state.step_id == "t" and decision.state.phase is Phase.send
    assert decision.actions == (Skipped("w", 2, "it was false"),)
    assert decision.outcome == "skipped:when"


def test_a_true_condition_sends_the_step() -> None:
    decision = engine.on_due(due("w"), SURVEY, now=T0, confirmed=True, admits=lambda s: (True, ""))
    assert decision.actions == (SendEmail("w", 2),)


def test_conditions_are_lenient_about_missing_fields_and_sandboxed() -> None:
    c = Conditions()
    person = {"email": "a@b.c", "tags": ["pro"], "plan": "trial", "seats": 3}
    assert c.holds("'pro' in subscriber.tags", person)[0]
    assert c.holds("subscriber.plan == 'trial' and subscriber.seats > 2", person)[0]
    assert not c.holds("subscriber.missing == 'x'", person)[0]
    assert not c.holds("subscriber.missing.deeper", person)[0]
    holds, why = c.holds("subscriber.missing > 3", person)
    assert not holds and "could not be evaluated" in why
    holds, why = c.holds("subscriber.email.__class__.__mro__", person)
    assert not holds


def test_assignment_is_deterministic_and_honours_weights() -> None:
    ab = step("g", variants=(Variant("a", "A", "a.html", 1), Variant("b", "B", "b.html", 3)))
    picks = Counter(v.id for i in range(4000) if (v := assign(ab, i)) is not None)
    assert 0.7 < picks["b"] / 4000 < 0.8
    assert all(assign(ab, i) == assign(ab, i) for i in range(50))
    assert {assign(ab, i, winner="a") for i in range(50)} == {ab.variants[0]}
    assert assign(step("plain"), 1) is None


def test_the_statistics_match_known_values() -> None:
    # Fisher's exact test, two-sided (values as scipy.stats.fisher_exact gives them).
    assert fisher_exact(1, 9, 11, 3) == pytest.approx(0.002759, abs=1e-6)
    assert fisher_exact(8, 2, 1, 5) == pytest.approx(0.034965, abs=1e-6)
    assert fisher_exact(3, 3, 3, 3) == pytest.approx(1.0)
    # Large counts: the pooled z-test (12% vs 9% of 1,000: z = 2.19).
    assert two_proportions(120, 1000, 90, 1000) == pytest.approx(0.02865, abs=1e-4)
    assert two_proportions(0, 0, 1, 10) == 1.0


def test_the_verdict_needs_the_minimum_sample_and_significance() -> None:
    early = judge([Arm("a", 10, 0), Arm("b", 10, 10)], min_sent=100)
    assert early.winner is None and "needs 100 sent" in early.note
    won = judge([Arm("a", 100, 5), Arm("b", 100, 30)], min_sent=100)
    assert won.winner == "b" and [a.winner for a in won.arms] == [False, True]
    assert won.arms[1].lift == pytest.approx(5.0) and won.arms[1].p_value is not None
    assert won.arms[0].p_value is None
    tie = judge([Arm("a", 200, 20), Arm("b", 200, 22)], min_sent=100)
    assert tie.winner is None and "no winner" in tie.note
    control = judge([Arm("a", 200, 60), Arm("b", 200, 10)], min_sent=100)
    assert control.winner == "a"


def test_without_goals_an_event_a_step_asks_for_is_no_goal() -> None:
    open_goals = Sequence(id="o", name="O", sender="a@b.c", steps=SURVEY.steps)
    assert not open_goals.counts_as_goal("trial_started")  # step t asks for it
    assert open_goals.counts_as_goal("purchase")
    listed = Sequence(id="g", name="G", sender="a@b.c", steps=SURVEY.steps, goals=("paid",))
    assert listed.counts_as_goal("paid") and not listed.counts_as_goal("purchase")


def test_an_event_reported_before_its_step_answers_it_without_an_email() -> None:
    decision = engine.on_due(due("t"), SURVEY, now=T0, confirmed=True, reported=frozenset({"x"}))
    assert decision.actions == (SendEmail("t", 2),)
    early = engine.on_due(
        due("t"), SURVEY, now=T0, confirmed=True, reported=frozenset({"trial_started"})
    )
    assert early.state.status is EnrollmentStatus.completed and early.state.done == ("t",)
    [skipped] = early.actions
    assert isinstance(skipped, Skipped) and "trial_started was reported before" in skipped.reason


def test_a_condition_cannot_compute_without_bound() -> None:
    holds, why = Conditions().holds("(((9**100)**100)**100)**100", {"tags": []})
    assert not holds and "too large" in why


def test_validation_evaluates_each_condition_for_the_sample(tmp_path: Path) -> None:
    from nurture.conditions import condition_problems

    seq, problems = load(
        tmp_path,
        """
        sample: {first_name: Ada, seats: many, plan: y}
        steps:
          - {id: a, subject: A, template: a.html, wait: 1d, when: "subscriber.seats > 5"}
          - {id: b, subject: B, template: a.html, wait: 1d, when: "subscriber.plan == 'x'"}
        """,
    )
    assert problems == [] and seq is not None
    [problem] = condition_problems(Catalog({"s": seq}), Conditions())
    assert problem.line == 7 and "step 'a'" in problem.message and "| int > 5" in problem.message
    _, bad = load(
        tmp_path,
        "steps:\n  - {id: a, subject: A, template: a.html, wait: 1d,"
        " when: 'subscriber.x | nosuch'}\n",
    )
    assert any("No filter named 'nosuch'" in p.message for p in bad)


def test_reminders_of_a_question_and_answers_sharing_a_url_are_problems(tmp_path: Path) -> None:
    TEMPLATES["same.html"] = (
        '<a href="https://acme.example/q" data-answer="x">X</a>'
        '<a href="https://acme.example/q" data-answer="y">Y</a>\n'
    )
    try:
        seq, problems = load(
            tmp_path,
            """
            steps:
              - id: q
                subject: Q
                template: same.html
                wait: 2d
                answers: {x: {}, y: {}}
                reminders: [{after: 1d, subject: R, template: a.html}]
            """,
        )
    finally:
        del TEMPLATES["same.html"]
    assert problems == [] and seq is not None
    env = make_environment(tmp_path / "templates")
    found = [
        p.message
        for p in sample_problems(Catalog({"s": seq}), Renderer(env, Signer("k"), "http://n.test"))
    ]
    assert any("lead to the same URL https://acme.example/q" in m for m in found), found
    assert any("reminder 1: a reminder of a question has no answer links" in m for m in found)


@pytest.mark.parametrize(
    ("sample", "when", "says"),
    [
        (
            "{first_name: Ada}",
            "'pro' in subscriber.tag",
            "step 'a': when reads subscriber.tag, but 'tag' is not a field of the sample "
            "subscriber; add it to sample: if people have it, or did you mean 'tags'?",
        ),
        (
            "{first_name: Ada, plans: trial}",
            "subscriber['plan'] == 'trial'",
            "but 'plan' is not a field of the sample subscriber; add it to sample: if people "
            "have it, or did you mean 'plans'?",
        ),
        (
            "{first_name: Ada}",
            "subscriber.seats | int > 5",
            "add it to sample: if people have it (the sample has: answers, email, first_name, "
            "tags)",
        ),
        ("{first_name: Ada}", "'pro' in tags", "when uses 'tags'; a condition sees only"),
        ("{first_name: Ada}", "'pro' in tags", "; did you mean subscriber.tags?"),
        ("{first_name: Ada}", "subscribr.plan == 'x'", "; did you mean 'subscriber'?"),
    ],
)
def test_a_condition_that_reads_a_name_the_sample_lacks_is_a_problem(
    tmp_path: Path, sample: str, when: str, says: str
) -> None:
    """A typo (subscriber.tag for tags) would skip the step for everyone, silently: each name
    a condition reads must be one the sample subscriber has, like the templates' names."""
    seq, problems = load(
        tmp_path,
        f"""
        sample: {sample}
        steps:
          - id: a
            subject: A
            template: a.html
            when: "{when}"
            wait: 1d
        """,
    )
    assert seq is None
    [problem] = problems
    assert problem.line == 10 and says in problem.message  # the line of when:


def test_a_condition_may_read_every_name_the_sample_has(tmp_path: Path) -> None:
    seq, problems = load(
        tmp_path,
        """
        sample: {first_name: Ada, plan: trial, tags: [pro]}
        steps:
          - id: a
            subject: A
            template: a.html
            when: >-
              subscriber.plan == 'trial' and 'pro' in subscriber['tags']
              and subscriber.email and subscriber.answers.survey != 'no'
              and subscriber.get('first_name')
            wait: 1d
        """,
    )
    assert problems == [] and seq is not None


def test_the_names_every_subscriber_has_are_those_conditions_see() -> None:
    from nurture.conditions import subscriber_context
    from nurture.sequences.checks import SUBSCRIBER_NAMES

    # answers is a field nurture keeps (absent until a first answer); the rest come from here.
    assert set(subscriber_context("a@example.com", {}, [])) == SUBSCRIBER_NAMES - {"answers"}
