"""Generated journeys (issue 19): sequences drawn from the marketer's vocabulary and people
drawn from how people and machines behave, run through the real services (the journey, the
dispatcher into a real SMTP server, the click path over real HTTP, the inbox, outside events)
on a virtual clock, then checked against the product's invariants and against
``nurture simulate``, the reference model.

- ``scenarios()`` draws a ``Scenario``: a sequence (its YAML) and a few ``Plan``s, one per
  person: when they say yes to each step (or never) and how, which answer they give, and the
  noise around them: a mail scanner walking every email from another network, an automatic
  reply to every email, an app retrying its events, an event nobody waits for, a click on a
  link that is no ask, an unsubscribe; and for the whole run a restart with an edited file.
- ``Journey.run()`` drives them: the clock jumps to the next thing due (an enrollment, a
  queued email, a click's judgement, a person's action); each jump runs what the daemon's
  two lanes run (judge the clicks, then plan and send).
- ``Journey.check()`` asserts the invariants listed in the README ("Generated journeys").
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml
from hypothesis import strategies as st
from sqlalchemy import delete, func, select

from nurture.clicks import client_of
from nurture.db.models import ENROLLMENTS, EVENTS, MESSAGES, Base
from nurture.durations import format_duration
from nurture.mail.catcher import SmtpServerThread
from nurture.sequences import Sequence, Step
from nurture.services import Services, build_services
from nurture.simulate import Persona, Run, simulate
from nurture.vocabulary import EnrollmentStatus, InboundSource, YesBy
from support.clock import T0, FixedClock
from support.mail import reply, visible_links
from support.paths import DATA
from support.settings import make_settings
from support.smtp import Caught, RecordingHandler
from support.web import BROWSER, CHROME, ServedApp

TEMPLATES = DATA / "journeys"
EVENT_NAMES = ("trial", "payment")  # few names, so steps share them (one event, one step)
ASKS = ("click", "reply", "click_or_reply", "event", "click_or_event", "reply_or_event")
WAITS = ("2h", "1d", "3d")
REMINDERS = ("30m", "1h", "20h")
DELAYS = ("0s", "10m")
# When a person says yes after a step's email: never, or after one of these (none of them
# near a reminder or a wait, so a second's judging never changes which came first).
YES_AFTER = (None, timedelta(minutes=5), timedelta(minutes=50), timedelta(hours=5),
             timedelta(hours=30))  # fmt: skip
# ...and the hard case: a click in doubt (no browser headers: judged after the whole window)
# made five seconds before the step's first reminder (or its timeout) falls due. It counts as
# of its click: no reminder, no timeout, no softer ask.
EDGE = timedelta(seconds=-1)
BEFORE_EDGE = timedelta(seconds=5)
IN_DOUBT = {"User-Agent": CHROME, "Accept": "*/*"}
STARTS = (timedelta(0), timedelta(minutes=17), timedelta(hours=2, minutes=3))
HORIZON = timedelta(days=40)
SCANNER_IP = "198.51.100.9"  # another network than every person's
SCANNER = {"User-Agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64)", "Accept": "*/*"}


def _human(delta: timedelta) -> str:
    return format_duration(delta) if delta else "0s"


def _seconds(text: str) -> timedelta:
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[text[-1]]
    return timedelta(seconds=int(text[:-1]) * unit)


# -- what is drawn ------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """One person: when they answer each step's email (None: never) and with which answer;
    and the noise around them."""

    email: str
    start: timedelta
    yes: dict[str, timedelta | None]
    answers: dict[str, str]
    scanner: bool = False  # a scanner walks every email two seconds after delivery
    auto_reply: bool = False  # an out-of-office answer (no date) to every email
    retry_events: bool = False  # the app sends every event twice (same id)
    stray_event: bool = False  # an event no step asks for, an hour after subscribing
    about_click: bool = False  # a click on a link that is no ask, a minute after each email
    unsubscribe_at: timedelta | None = None  # since they subscribed
    purchase_at: timedelta | None = None  # the shop reports the goal, since they subscribed

    def describe(self) -> str:
        def when(after: timedelta | None) -> str:
            if after is None:
                return "never"
            return "5s before its first reminder or timeout, in doubt" if after == EDGE else (
                _human(after)
            )  # fmt: skip

        yes = ", ".join(f"{step}: {when(after)}" for step, after in self.yes.items())
        noise = [
            name
            for name, on in (
                ("a scanner walks every email", self.scanner),
                ("auto-replies to every email", self.auto_reply),
                ("the app sends every event twice", self.retry_events),
                ("an event no step asks for", self.stray_event),
                ("clicks a link that is no ask", self.about_click),
            )
            if on
        ]
        if self.unsubscribe_at is not None:
            noise.append(f"unsubscribes at +{_human(self.unsubscribe_at)}")
        if self.purchase_at is not None:
            noise.append(f"buys (the goal) at +{_human(self.purchase_at)}")
        return (
            f"{self.email} subscribes at +{_human(self.start)}; says yes after each step's "
            f"email: {{{yes}}}; answers {self.answers or '-'}; {'; '.join(noise) or 'no noise'}"
        )

    def after(self, step: Step) -> timedelta | None:
        """When, after the step's email, this person says yes (None: never)."""
        after = self.yes.get(step.id)
        if after != EDGE:
            return after
        due = step.reminders[0].after if step.reminders else step.wait
        return due - BEFORE_EDGE

    def persona(self, sequence: Sequence) -> Persona:
        steps = {s.id: self.after(s) for s in sequence.steps}
        return Persona(self.email, None, steps=steps, answers=dict(self.answers))


@dataclass(frozen=True)
class Scenario:
    document: dict[str, Any]  # the sequence file
    plans: tuple[Plan, ...]
    restart_at: timedelta | None = None  # the daemon restarts, the file's subjects edited

    def describe(self) -> str:
        """What a person needs to replay it: the YAML and each person's plan."""
        lines = [yaml.safe_dump(self.document, sort_keys=False), "people:"]
        lines += [f"  {p.describe()}" for p in self.plans]
        if self.restart_at is not None:
            lines.append(f"restart (file edited) at +{_human(self.restart_at)}")
        return "\n".join(lines)


def _step(draw: st.DrawFn, i: int, n: int) -> dict[str, Any]:
    sid = f"s{i}"
    later = [f"s{j}" for j in range(i + 1, n + 1)]
    asks = draw(st.sampled_from(ASKS))
    step: dict[str, Any] = {"id": sid}
    if draw(st.booleans()) and "click" in asks and draw(st.booleans()):
        answers: dict[str, Any] = {"a": {"next": True}, "b": {"next": True}}
        if later and draw(st.booleans()):
            answers["a"] = {"goto": draw(st.sampled_from(later))}
        if draw(st.booleans()):
            answers["b"] = {**answers["b"], "tag": "vip"}
        step["template"] = "answers.html"
        step["answers"] = answers
    else:
        step["template"] = "ask.html"
    if draw(st.integers(0, 4)) == 4:
        del step["template"]
        step["variants"] = [
            {"id": "a", "subject": f"Step {sid}, version A", "template": "ask.html"},
            {"id": "b", "subject": f"Step {sid}, version B", "template": "ask.html"},
        ]
        step.pop("answers", None)
    else:
        step["subject"] = f"Step {sid}"
    step["advance_on"] = asks
    if "event" in asks:
        step["events"] = [draw(st.sampled_from(EVENT_NAMES))]
    if i > 1 and draw(st.integers(0, 4)) == 4:
        step["when"] = draw(
            st.sampled_from(["'vip' in subscriber.tags", "'vip' not in subscriber.tags"])
        )
    step["delay"] = draw(st.sampled_from(DELAYS))
    wait = draw(st.sampled_from(WAITS))
    step["wait"] = wait
    fits = [r for r in REMINDERS if _seconds(r) < _seconds(wait)]
    chosen = draw(st.lists(st.sampled_from(fits), max_size=2, unique=True))
    if chosen:
        # A question's reminder asks the same question (its answer links).
        again = "answers.html" if "answers" in step else "ask.html"
        step["reminders"] = [
            {"after": r, "subject": f"Reminder of {sid}, {r}", "template": again}
            for r in sorted(chosen, key=_seconds)
        ]
    # The last step has no next one to go to on timeout: exit.
    timeout = draw(st.sampled_from(["exit", "next", "goto"])) if later else "exit"
    if timeout == "goto":
        step["on_timeout"] = {"goto": draw(st.sampled_from(later))}
    else:
        step["on_timeout"] = timeout
    return step


@st.composite
def sequences(draw: st.DrawFn, *, sequence_id: str = "gen") -> dict[str, Any]:
    """A sequence file: a confirmation, then 2 to 5 steps of every kind of ask."""
    n = draw(st.integers(2, 5))
    confirm: dict[str, Any] = {
        "id": "confirm",
        "confirms": True,
        "subject": "Please confirm",
        "template": "confirm.html",
        "wait": "3d",
        "on_timeout": "exit",
    }
    if draw(st.booleans()):
        confirm["reminders"] = [
            {"after": "1d", "subject": "Reminder: please confirm", "template": "confirm.html"}
        ]
    document: dict[str, Any] = {
        "id": sequence_id,
        "name": "Generated",
        "from": "Ada <ada@acme.example>",
        "goals": ["purchase"],
        "sample": {"first_name": "Ada"},
    }
    if draw(st.integers(0, 3)) == 3:
        # Office hours on weekdays, in the person's zone (UTC here); no spread, so the
        # simulator's time is the daemon's. The confirmation ignores it.
        document["send_window"] = {
            "days": ["mon", "tue", "wed", "thu", "fri"],
            "from": "09:00",
            "to": "17:00",
            "spread": "0s",
        }
    document["steps"] = [confirm, *(_step(draw, i, n) for i in range(1, n + 1))]
    return document


@st.composite
def plans(draw: st.DrawFn, document: dict[str, Any], index: int) -> Plan:
    steps = document["steps"]
    answers = {
        s["id"]: draw(st.sampled_from(sorted(s["answers"]))) for s in steps if s.get("answers")
    }
    unsubscribe = None
    if draw(st.integers(0, 5)) == 5:
        hours = draw(st.integers(1, 24 * 6))
        unsubscribe = timedelta(hours=hours, minutes=7, seconds=13)
    purchase = None
    if draw(st.integers(0, 5)) == 5:
        purchase = timedelta(hours=draw(st.integers(1, 24 * 6)), minutes=11, seconds=3)
    return Plan(
        email=f"p{index}@example.com",
        start=draw(st.sampled_from(STARTS)),
        yes={s["id"]: draw(st.sampled_from((*YES_AFTER, EDGE))) for s in steps},
        answers=answers,
        scanner=draw(st.booleans()),
        # Each "== 3" shrinks toward no noise: a failing case keeps only what it needs.
        auto_reply=draw(st.integers(0, 3)) == 3,
        retry_events=draw(st.booleans()),
        stray_event=draw(st.integers(0, 3)) == 3,
        about_click=draw(st.integers(0, 3)) == 3,
        unsubscribe_at=unsubscribe,
        purchase_at=purchase,
    )


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    document = draw(sequences())
    people = draw(st.integers(1, 3))
    drawn = tuple(draw(plans(document, i)) for i in range(people))
    restart = None
    if draw(st.integers(0, 3)) == 3:
        restart = timedelta(hours=draw(st.integers(1, 72)), minutes=31)
    return Scenario(document, drawn, restart)


# -- running it ---------------------------------------------------------------------------


@dataclass
class Sent:
    """An email as the person got it, with when (on the virtual clock) it arrived."""

    at: datetime
    caught: Caught
    message_id: int
    email: str
    step_id: str
    visit: int
    kind: str
    enrollment_id: int
    html: str = ""  # parsed once: the tracked links a person and a scanner follow
    subject: str = ""
    header_id: str = ""  # its Message-ID header


@dataclass(order=True)
class _Action:
    at: datetime
    order: int
    what: Callable[[], None] = field(compare=False)


class Web:
    """The real app under uvicorn on loopback, kept across scenarios (starting and stopping
    uvicorn is a good part of a scenario's time): each scenario, and each restart within one,
    puts its own services in the app's state."""

    def __init__(self) -> None:
        self.served: ServedApp | None = None
        self.app: Any = None
        self.base = ""
        self.http: httpx.Client | None = None

    def serve(self, services: Services) -> httpx.Client:
        if self.served is None:
            from nurture.web.app import create_app

            self.app = create_app(services)
            self.served = ServedApp(self.app)
            self.base = self.served.__enter__()
            self.http = httpx.Client(base_url=self.base, follow_redirects=False, timeout=30)
        self.app.state.services = services
        assert self.http is not None
        return self.http

    def close(self) -> None:
        if self.http is not None:
            self.http.close()
        if self.served is not None:
            self.served.__exit__(None, None, None)


class Journey:
    """One scenario through the real services of one database."""

    def __init__(self, scenario: Scenario, database_url: str, workdir: Path, web: Web) -> None:
        self.scenario = scenario
        self.database_url = database_url
        self.workdir = workdir
        self.clock = FixedClock(T0)
        self.handler = RecordingHandler()
        self.server = SmtpServerThread(self.handler).start()
        self.sent: list[Sent] = []
        self.actions: list[_Action] = []
        self.counter = itertools.count()
        self.unsubscribed: dict[str, datetime] = {}
        self.left: dict[str, datetime] = {}  # when a person left: an unsubscribe, a goal
        self.restarted: datetime | None = None
        self.events_sent = 0
        self.doubts: dict[str, int] = {}  # clicks in doubt (judged after the window) by person
        self._write_files(edited=False)
        self.services = self._build()
        self.web = web
        self.http = web.serve(self.services)
        self.base = web.base

    # -- setting up -----------------------------------------------------------------------

    def _write_files(self, *, edited: bool) -> None:
        folder = self.workdir / "sequences"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        document = self.scenario.document
        if edited:  # a live edit: every step's subject says which version of the file it is
            document = _edited(document)
        (folder / "gen.yaml").write_text(yaml.safe_dump(document, sort_keys=False))

    def _build(self) -> Services:
        settings = make_settings(
            self.workdir,
            self.database_url,
            sequences_dir=self.workdir / "sequences",
            templates_dir=TEMPLATES,
            smtp_host="127.0.0.1",
            smtp_port=self.server.port,
        )
        return build_services(settings, clock=self.clock)

    @property
    def sequence(self) -> Sequence:
        found = self.services.catalog.get("gen")
        assert found is not None
        return found

    def close(self) -> None:
        # As the daemon stops: the click writer's thread, SMTP, then the database.
        asyncio.run(self.services.close())
        self.server.stop()

    # -- the loop -------------------------------------------------------------------------

    def at(self, when: datetime, what: Callable[[], None]) -> None:
        heapq.heappush(self.actions, _Action(when, next(self.counter), what))

    def run(self) -> None:
        for plan in self.scenario.plans:
            self.at(T0 + plan.start, lambda p=plan: self._subscribe(p))
            if plan.unsubscribe_at is not None:
                leave = T0 + plan.start + plan.unsubscribe_at
                self.at(leave, lambda p=plan: self._unsubscribe(p))
            if plan.purchase_at is not None:
                bought = T0 + plan.start + plan.purchase_at
                self.at(bought, lambda p=plan: self._purchase(p))
            if plan.stray_event:
                self.at(T0 + plan.start + timedelta(hours=1), lambda p=plan: self._stray(p))
        if self.scenario.restart_at is not None:
            self.at(T0 + self.scenario.restart_at, self._restart)
        end = T0 + HORIZON
        stuck = 0
        for _ in range(5000):
            when = min(
                [t for t in (self._next_due(), self.actions[0].at if self.actions else None) if t],
                default=None,
            )
            if when is None or when > end:
                return
            # Something due now that a tick does not take (held a moment) must not spin.
            stuck = stuck + 1 if when <= self.clock.current else 0
            assert stuck < 20, f"nothing moves at {self.clock.current}: a tick leaves work due"
            self.clock.current = max(self.clock.current, when)
            while self.actions and self.actions[0].at <= self.clock.current:
                heapq.heappop(self.actions).what()
            self._tick()
        raise AssertionError("the run did not end within 5,000 moments")

    def _next_due(self) -> datetime | None:
        e, m, v = ENROLLMENTS.c, MESSAGES.c, EVENTS.c
        with self.services.store.database.connect() as conn:
            times = [
                conn.scalar(select(func.min(e.due_at)).where(e.status == "active")),
                conn.scalar(
                    select(func.min(m.next_attempt_at)).where(m.status.in_(["queued", "sending"]))
                ),
                conn.scalar(select(func.min(v.evaluate_at)).where(v.verdict == "pending")),
            ]
        found = [t for t in times if t is not None]
        return max(min(found), self.clock.current) if found else None

    def _tick(self) -> None:
        """What the daemon's lanes do at this moment: judge the clicks due, then send."""
        self.services.tracker.evaluate_clicks(self.clock.now())
        dispatcher = self.services.dispatcher

        async def send() -> None:
            try:
                await dispatcher.run_once()
            finally:
                await dispatcher.transport.close()

        asyncio.run(send())
        self._arrived()

    def _arrived(self) -> None:
        with self.handler.lock:
            fresh = self.handler.caught[len(self.sent) :]
        parsed = [c.message for c in fresh]
        ids = [int(str(m["Message-ID"]).strip("<>").split(".")[0]) for m in parsed]
        m = MESSAGES.c
        with self.services.store.database.connect() as conn:
            found = {
                r.id: r
                for r in conn.execute(
                    select(m.id, m.step_id, m.visit, m.kind, m.enrollment_id).where(m.id.in_(ids))
                )
            }
        for caught, message, message_id in zip(fresh, parsed, ids, strict=True):
            row = found[message_id]
            html = message.get_body(preferencelist=("html",))
            sent = Sent(
                self.clock.now(), caught, message_id, caught.recipient, row.step_id, row.visit,
                row.kind, row.enrollment_id, html.get_content() if html else "",
                str(message["Subject"]), str(message["Message-ID"]),
            )  # fmt: skip
            self.sent.append(sent)
            self._respond(sent)

    # -- what people (and machines) do ----------------------------------------------------

    def _plan(self, email: str) -> Plan:
        return next(p for p in self.scenario.plans if p.email == email)

    def _respond(self, sent: Sent) -> None:
        plan = self._plan(sent.email)
        now = sent.at
        if plan.scanner:
            self.at(now + timedelta(seconds=2), lambda: self._walk(sent))
        if plan.auto_reply:
            self.at(now + timedelta(minutes=1), lambda: self._auto_reply(sent))
        if plan.about_click and sent.step_id != "confirm":
            self.at(now + timedelta(minutes=1, seconds=30), lambda: self._about(sent))
        step = self.sequence.step(sent.step_id)
        after = plan.after(step)
        if sent.kind != "step" or after is None:
            return
        self.at(now + after, lambda: self._yes(sent, in_doubt=plan.yes.get(step.id) == EDGE))

    def _yes(self, sent: Sent, *, in_doubt: bool = False) -> None:
        """The person's yes to a step's email, as ``nurture simulate`` makes it: a click if
        the step takes one (on the answer they chose), else a reply, else the step's event."""
        step = self.sequence.step(sent.step_id)
        by = _kind_of_yes(step)
        if by is YesBy.click:
            links = visible_links(sent.html)
            if step.answers:
                choice = self._plan(sent.email).answers.get(step.id) or step.answers[0].id
                link = links[[a.id for a in step.answers].index(choice)]
            else:
                link = links[0]
            if in_doubt:
                self.doubts[sent.email] = self.doubts.get(sent.email, 0) + 1
            self._click(link, IN_DOUBT if in_doubt else BROWSER, ip=_person_ip(sent.email))
        elif by is YesBy.reply:
            self.services.inbox.receive(
                reply(sent.caught), now=self.clock.now(), source=InboundSource.webhook
            )
        else:
            # The app reports what the person did; only while the ask is current (a person
            # pays the instalment they are asked for, not one of an email left behind).
            if not self._waiting_at(sent):
                return
            self._event(sent.email, step.events[0])

    def _event(self, email: str, name: str) -> None:
        self.events_sent += 1
        key = f"evt-{self.events_sent}"
        retries = 2 if self._plan(email).retry_events else 1
        for _ in range(retries):
            self.services.events.event(
                email=email, event=name, external_id=key, now=self.clock.now()
            )

    def _waiting_at(self, sent: Sent) -> bool:
        e = ENROLLMENTS.c
        with self.services.store.database.connect() as conn:
            row = conn.execute(
                select(e.status, e.step_id, e.visit, e.phase).where(e.id == sent.enrollment_id)
            ).one()
        return (row.status, row.step_id, row.visit, row.phase) == (
            "active", sent.step_id, sent.visit, "wait"
        )  # fmt: skip

    def _click(self, url: str, headers: dict[str, str], *, ip: str) -> None:
        """A browser follows a link (over real HTTP to the app); on a confirmation page it
        presses the button, as the page's form does."""
        path = "/" + url.split("/", 3)[3]
        sent = {**headers, "X-Forwarded-For": ip}
        r = self.http.get(path, headers=sent)
        assert r.status_code in (200, 302), (r.status_code, r.text[:200])
        if r.status_code == 200 and '<form method="post">' in r.text:
            # The press comes from the page: a browser says so (same-origin, Origin, Referer).
            press = {**sent, "Origin": self.base, "Referer": self.base + path}
            if "Sec-Fetch-Mode" in sent:
                press["Sec-Fetch-Site"] = "same-origin"
            r = self.http.post(path, data={"confirm": "yes"}, headers=press)
            assert r.status_code == 303, r.status_code

    def _walk(self, sent: Sent) -> None:
        """A mail scanner: every link of the email (the honeypot too), and the confirmation
        page's form, from its own network, with no browser headers."""
        html = sent.html
        for url in [u for u, _ in _all_links(html)]:
            path = "/" + url.split("/", 3)[3]
            headers = {**SCANNER, "X-Forwarded-For": SCANNER_IP}
            self.http.get(path, headers=headers)
            self.http.post(path, data={"confirm": "yes"}, headers=headers)

    def _about(self, sent: Sent) -> None:
        links = visible_links(sent.html)
        self._click(links[-1], BROWSER, ip=_person_ip(sent.email))

    def _auto_reply(self, sent: Sent) -> None:
        text = "I am out of the office with limited access to email."
        raw = reply(sent.caught, text, Auto_Submitted="auto-replied",
                    Subject="Automatic reply: " + sent.subject)  # fmt: skip
        self.services.inbox.receive(raw, now=self.clock.now(), source=InboundSource.webhook)

    def _subscribe(self, plan: Plan) -> None:
        self.services.subscriptions.subscribe(
            email=plan.email,
            sequence_id="gen",
            fields={"first_name": plan.email.split("@")[0].title()},
            now=self.clock.now(),
        )

    def _unsubscribe(self, plan: Plan) -> None:
        self.services.subscriptions.unsubscribe_address(plan.email, now=self.clock.now())
        self.unsubscribed[plan.email] = self.clock.now()
        self.left.setdefault(plan.email, self.clock.now())

    def _purchase(self, plan: Plan) -> None:
        self._event(plan.email, "purchase")
        self.left.setdefault(plan.email, self.clock.now())

    def _stray(self, plan: Plan) -> None:
        self._event(plan.email, "newsletter_read")

    def _restart(self) -> None:
        """The daemon stops and starts again on an edited file: nothing in memory is kept."""
        asyncio.run(self.services.close())
        self._write_files(edited=True)
        self.services = self._build()
        self.http = self.web.serve(self.services)
        self.restarted = self.clock.now()

    # -- what must hold -------------------------------------------------------------------

    def expected(self, plan: Plan) -> Run:
        sample = {"first_name": plan.email.split("@")[0].title()}
        return simulate(
            self.sequence, plan.persona(self.sequence), sample=sample, start=T0 + plan.start
        )

    def check(self) -> None:
        self._no_email_twice()
        self._nothing_after_leaving_or_before_confirming()
        self._no_reminder_after_a_yes()
        self._machines_never_advance()
        self._one_event_one_step()
        self._edits_apply_after_the_restart()
        for plan in self.scenario.plans:
            self._as_simulated(plan)

    def _no_email_twice(self) -> None:
        ids = [s.header_id for s in self.sent]
        assert len(ids) == len(set(ids)), "an email was sent twice"
        keys = [(s.enrollment_id, s.visit, s.kind) for s in self.sent]
        assert len(keys) == len(set(keys)), "a step visit's email was sent twice"

    def _nothing_after_leaving_or_before_confirming(self) -> None:
        for s in self.sent:
            left = self.unsubscribed.get(s.email)
            assert left is None or s.at < left, f"{s.email} got {s.step_id} after unsubscribing"
        for email in {s.email for s in self.sent}:
            mine = [s for s in self.sent if s.email == email]
            first_other = next((s for s in mine if s.step_id != "confirm"), None)
            if first_other is None:
                continue
            confirmed = self._confirmed_at(email)
            assert confirmed is not None and confirmed <= first_other.at, (
                f"{email} got {first_other.step_id} before confirming"
            )

    def _confirmed_at(self, email: str) -> datetime | None:
        from nurture.db.models import SUBSCRIBERS

        s = SUBSCRIBERS.c
        with self.services.store.database.connect() as conn:
            found: datetime | None = conn.scalar(select(s.confirmed_at).where(s.email == email))
        return found

    def _no_reminder_after_a_yes(self) -> None:
        m = MESSAGES.c
        with self.services.store.database.connect() as conn:
            yeses = {
                (r.enrollment_id, r.visit): r.yes_at
                for r in conn.execute(
                    select(m.enrollment_id, m.visit, m.yes_at).where(m.yes_at.is_not(None))
                )
            }
        for s in self.sent:
            yes_at = yeses.get((s.enrollment_id, s.visit))
            if s.kind != "step" and yes_at is not None:
                assert s.at <= yes_at, f"{s.email} was reminded of {s.step_id} after saying yes"

    def _machines_never_advance(self) -> None:
        v = EVENTS.c
        scanner = client_of(SCANNER_IP, SCANNER["User-Agent"], ["", "", ""])
        with self.services.store.database.connect() as conn:
            clicks = list(conn.execute(select(v.outcome, v.detail).where(v.kind == "click")))
        for outcome, detail in clicks:
            if detail.get("client") == scanner:
                assert outcome != "advanced", "a scanner's click advanced someone"

    def _one_event_one_step(self) -> None:
        v = EVENTS.c
        with self.services.store.database.connect() as conn:
            reported = list(conn.execute(select(v.detail).where(v.kind == "event")))
            skips = list(conn.execute(select(v.detail).where(v.kind == "skipped")))
        used: dict[str, int] = {}
        for (detail,) in reported:
            for enrollment in detail.get("answered") or {}:
                used[enrollment] = used.get(enrollment, 0) + 1
        early = sum(1 for (d,) in skips if d.get("answered_by"))
        assert sum(used.values()) + early <= len(reported)

    def _edits_apply_after_the_restart(self) -> None:
        if self.restarted is None:
            return
        for s in self.sent:
            if s.kind == "step" and s.step_id != "confirm":
                edited = s.subject.endswith("(v2)")
                assert edited == (s.at >= self.restarted), (s.subject, s.at)

    def _as_simulated(self, plan: Plan) -> None:
        """The path each person took is the one ``nurture simulate`` predicts for the same
        behaviour (up to their unsubscribing), each email within seconds of its time."""
        run = self.expected(plan)
        left = self.left.get(plan.email)
        start = T0 + plan.start
        want = [(e.step, e.kind, start + e.at) for e in run.emails]
        if left is not None:
            want = [w for w in want if w[2] < left]
        got = [(s.step_id, s.kind, s.at) for s in self.sent if s.email == plan.email]
        assert [(a, b) for a, b, _ in got] == [(a, b) for a, b, _ in want], (
            f"{plan.email}: real path {[(a, b) for a, b, _ in got]} != simulated "
            f"{[(a, b) for a, b, _ in want]}"
        )
        window = self.services.settings.click_window_seconds
        doubts = self.doubts.get(plan.email, 0)
        for n, ((step, kind, real), (_, _, model)) in enumerate(zip(got, want, strict=True)):
            # A person's click is judged a second or so after it is made (a click in doubt
            # after the whole window), and the next step's delay counts from then.
            slack = timedelta(seconds=2 * (n + 1) + (window + 2) * doubts)
            assert abs(real - model) <= slack, f"{plan.email}: {step} {kind} at {real}, not {model}"
        expected = run.outcome
        if left is not None and start + run.elapsed > left:
            # They left before their path would have ended: by the goal, or unsubscribing
            # (whichever came first); a finished enrollment stays as it finished.
            unsubscribed = self.unsubscribed.get(plan.email)
            expected = "exited:unsubscribed" if unsubscribed == left else "exited:converted"
        status = self._status(plan.email)
        assert status == expected, f"{plan.email}: ended {status}, expected {expected}"

    def _status(self, email: str) -> str:
        from nurture.db.models import SUBSCRIBERS

        e, s = ENROLLMENTS.c, SUBSCRIBERS.c
        with self.services.store.database.connect() as conn:
            row = conn.execute(
                select(e.status, e.exit_reason)
                .join(SUBSCRIBERS, s.id == e.subscriber_id)
                .where(s.email == email)
            ).one()
        if row.status == EnrollmentStatus.exited.value:
            return f"exited:{row.exit_reason}"
        return str(row.status)


def _kind_of_yes(step: Step) -> YesBy:
    takes = step.advance_on.value.split("_or_")
    return YesBy.click if "click" in takes else YesBy(takes[0])


def _person_ip(email: str) -> str:
    """Each person's own network, never the scanner's."""
    return f"203.0.{int(email[1:].split('@')[0]) + 10}.7"


def _all_links(html: str) -> Iterator[tuple[str, str]]:
    import re

    yield from re.findall(r'<a href="(https?://[^"]+/c/[^"]+)"([^>]*)>', html)


def _edited(document: dict[str, Any]) -> dict[str, Any]:
    steps = []
    for step in document["steps"]:
        step = dict(step)
        if step["id"] != "confirm":
            if "subject" in step:
                step["subject"] = f"{step['subject']} (v2)"
            if "variants" in step:
                step["variants"] = [
                    {**v, "subject": f"{v['subject']} (v2)"} for v in step["variants"]
                ]
        steps.append(step)
    return {**document, "steps": steps}


def reset(database_url: str, workdir: Path) -> Path:
    """An empty database for the next scenario (the same schema, every row deleted) and a
    fresh folder for its files."""
    from nurture.db.connect import connect_database

    database = connect_database(database_url)
    try:
        with database.begin() as conn:
            for table in reversed(Base.metadata.sorted_tables):
                conn.execute(delete(table))
    finally:
        database.dispose()
    folder = workdir / uuid.uuid4().hex[:8]
    folder.mkdir()
    return folder


__all__ = ["Journey", "Plan", "Scenario", "Web", "reset", "scenarios", "sequences"]
