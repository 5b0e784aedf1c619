"""Rendering: Jinja2 templates -> subject, text and HTML, with every link tracked.

Templates run in a bounded sandbox (``nurture.mail.sandbox``): strict, capped in size and
time; their context holds the subscriber's fields and a few URLs, never settings or secrets.
Every http(s) link is rewritten to a signed ``/c/{token}`` link whose target is stored with
the message; links marked ``data-micro-yes`` are the ask (when a template marks none, every
tracked link counts); a link marked ``data-answer="ID"`` is one answer of the step's question
(it counts, and carries its answer).
"""

from __future__ import annotations

import html
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from functools import lru_cache
from html.parser import HTMLParser
from typing import Any

import jinja2

from nurture.conditions import sample_person, subscriber_context
from nurture.errors import Problem
from nurture.mail.sandbox import Limits, Sandbox, make_environment
from nurture.sequences import TEMPLATE_NAMES, Sequence, Step
from nurture.tokens import Signer, TokenKind
from nurture.vocabulary import HONEYPOT_PATH, Link, MessageKind

__all__ = [
    "make_environment",
    "Rendered",
    "Renderer",
    "html_to_text",
    "sample_problems",
    "safe_name",
    "confirmation_fields",
]


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str
    links: list[Link]  # index = link number in the click token
    unsubscribe_url: str


# An <a> tag, quoted attribute values included (a '>' inside quotes does not end it).
_A_TAG = re.compile(r"""<a(?=[\s>/])(?:[^>"']|"[^"]*"|'[^']*')*>""", re.IGNORECASE)
# One attribute, read in order: a name inside another attribute's quoted value (say a
# subscriber's first name "x href=https://evil.example") is never taken for an attribute.
_ATTR = re.compile(r"""\s*([^\s"'>/=]+)(?:\s*=\s*("[^"]*"|'[^']*'|[^\s"'=<>`]+))?|\s*/""")
_TEXT_URL = re.compile(r"""https?://[^\s<>"'\)\]]+""")


# A confirmation goes to an address anyone can type, before its owner agreed to anything:
# of what was typed with it, it shows only a first name of a name's shape (letters, with
# spaces, apostrophes, hyphens or dots between them, at most 40). Anything else (a URL, a
# domain, an address, digits, a slogan's punctuation, another field) is kept for after the
# yes, and shown as undefined here: "{{ subscriber.first_name | default('there') }}" reads
# "there", a bare "{{ subscriber.company }}" reads "".
CONFIRMATION_FIELDS = frozenset({"first_name"})
MAX_NAME = 40
_NAME = re.compile(r"[^\W\d_]+(?:[ '\u2019.-]{1,2}[^\W\d_]+)*\.?")
_DOMAIN_LIKE = re.compile(r"[^\W\d_]\.[^\W\d_]{2,}|\bwww\b", re.IGNORECASE)


def safe_name(value: object) -> bool:
    """Whether ``value`` may be shown in a confirmation (see ``CONFIRMATION_FIELDS``)."""
    return (
        isinstance(value, str)
        and len(value) <= MAX_NAME
        and _NAME.fullmatch(value) is not None
        and _DOMAIN_LIKE.search(value) is None
    )


def confirmation_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """The fields a confirmation email renders: the safe ones as they are, the others
    undefined (lenient: they render empty, and ``default(...)`` replaces them)."""
    return {
        key: value
        if key in CONFIRMATION_FIELDS and safe_name(value)
        else jinja2.ChainableUndefined(name=key)
        for key, value in fields.items()
    }


class _Links:
    """Collects the links of one message and hands out their tracked URLs: one per URL and
    answer (two answers may lead to the same page)."""

    def __init__(self, tracked_url: Any) -> None:
        self._tracked_url = tracked_url
        self.items: list[list[Any]] = []  # [url, counts, honeypot, answer]
        self._index: dict[tuple[str, str | None], int] = {}
        self._first: dict[str, int] = {}

    def knows(self, url: str) -> bool:
        return url in self._first

    def track(
        self, url: str, marked: bool, *, honeypot: bool = False, answer: str | None = None
    ) -> str:
        i = self._index.get((url, answer))
        if i is None:
            i = len(self.items)
            self._index[(url, answer)] = i
            self._first.setdefault(url, i)
            self.items.append([url, marked or answer is not None, honeypot, answer])
        elif marked:
            self.items[i][1] = True
        return str(self._tracked_url(i))

    def track_known(self, url: str) -> str:
        """The tracked URL of the first link to ``url`` (for the text part)."""
        return str(self._tracked_url(self._first[url]))


class Renderer:
    def __init__(
        self,
        env: Sandbox,
        signer: Signer,
        base_url: str,
        *,
        open_pixel: bool = True,
        honeypot: bool = True,
        limits: Limits | None = None,
    ) -> None:
        self.env = env
        self.limits = limits or Limits()
        self.signer = signer
        self.base_url = base_url.rstrip("/")
        self.open_pixel = open_pixel
        self.honeypot = honeypot
        self._subjects = lru_cache(maxsize=1024)(env.from_string)
        self._cache: dict[str, tuple[jinja2.Template, jinja2.Template | None]] = {}

    def _templates(self, name: str) -> tuple[jinja2.Template, jinja2.Template | None]:
        """A template and its .txt twin (None when there is none), looked up once."""
        found = self._cache.get(name)
        if found is None:
            try:
                twin: jinja2.Template | None = self.env.get_template(
                    name.rsplit(".", 1)[0] + ".txt"
                )
            except jinja2.TemplateNotFound:
                twin = None
            found = self._cache[name] = (self.env.get_template(name), twin)
        return found

    def render(
        self,
        sequence: Sequence,
        step_id: str,
        kind: MessageKind,
        *,
        message_id: int,
        email: str,
        fields: dict[str, Any],
        tags: tuple[str, ...] | list[str] = (),
        variant: str | None = None,
    ) -> Rendered:
        step = sequence.step(step_id)
        subject_src, template_name = step.email(kind, variant)
        unsubscribe_url = self.unsubscribe_url(message_id)
        if step.confirms:
            fields = confirmation_fields(fields)
        context = {
            "subscriber": subscriber_context(email, fields, tags),
            "unsubscribe_url": unsubscribe_url,
            "base_url": self.base_url,
            "sequence": {"id": sequence.id, "name": sequence.name},
            "step": {"id": step.id},
        }
        assert context.keys() == TEMPLATE_NAMES
        env, limits = self.env, self.limits
        if "{" in subject_src:
            subject_src = env.render(self._subjects(subject_src), context, limits)
        subject = " ".join(subject_src.split())
        html_template, twin = self._templates(template_name)
        html_body = env.render(html_template, context, limits)
        text_body = env.render(twin, context, limits) if twin is not None else None

        base = f"{self.base_url}/c/"
        signer = self.signer
        links = _Links(lambda i: base + signer.make(TokenKind.click, message_id, i))
        html_body, marked_any = _rewrite_html(html_body, links, skip=unsubscribe_url)
        if not marked_any:
            for item in links.items:
                item[1] = True
        if text_body is None:
            text_body = html_to_text(html_body)
        else:
            text_body = _rewrite_text(text_body, links)
        extra = ""
        if self.honeypot:
            # Invisible to people (hidden, no text, out of the tab order); scanners that
            # fetch every link fetch it too, and give themselves away.
            trap = links.track(self.base_url + HONEYPOT_PATH, False, honeypot=True)
            extra += f'<a href="{trap}" style="display:none" aria-hidden="true" tabindex="-1"></a>'
        if self.open_pixel:
            pixel = f"{self.base_url}/o/{signer.make(TokenKind.open, message_id)}"
            extra += (
                f'<img src="{pixel}" width="1" height="1" alt="" '
                'style="display:block;width:1px;height:1px;border:0">'
            )
        if extra:
            html_body = _before_body_end(html_body, extra)
        found = [Link(u, bool(c), honeypot=h, answer=a) for u, c, h, a in links.items]
        return Rendered(subject, text_body, html_body, found, unsubscribe_url)

    def unsubscribe_url(self, message_id: int) -> str:
        return f"{self.base_url}/u/{self.signer.make(TokenKind.unsubscribe, message_id)}"


def sample_problems(
    sequences: Iterable[Sequence], renderer: Renderer, *, skip: Collection[tuple[str, str]] = ()
) -> list[Problem]:
    """Render every email of every sequence for its sample subscriber (the sequence's
    ``sample:`` fields): what would fail at send time (a name the template lacks, a sandbox
    refusal, a bound passed) fails here, with the file and the step's line. A reminder that
    follows the person's A/B variant is rendered for each variant. ``skip``: the steps (file,
    step id) whose emails are known broken already."""
    problems = []
    for sequence in sequences:
        fields, tags = sample_person(sequence)
        for step in sequence.steps:
            if (sequence.source, step.id) in skip:
                continue
            for kind, variant in _emails(step):
                which = f"step '{step.id}'"
                which += f", reminder {kind.reminder}" if kind.reminder else ""
                which += f", variant '{variant}'" if variant else ""
                try:
                    out = renderer.render(
                        sequence,
                        step.id,
                        kind,
                        message_id=1,
                        email="sample@example.com",
                        fields=fields,
                        tags=tags,
                        variant=variant,
                    )
                except Exception as exc:  # noqa: BLE001 - each mistake becomes one sentence
                    message = f"{which}: {_render_error(exc, fields)}"
                    problems.append(Problem(sequence.source, step.line, message))
                    continue
                for message in _answer_problems(step, kind, out.links):
                    problems.append(Problem(sequence.source, step.line, f"{which}: {message}"))
    return problems


def _emails(step: Step) -> list[tuple[MessageKind, str | None]]:
    """Every email a step can send: its own for each variant, each reminder (for each variant
    where it follows the person's)."""
    variants: list[str | None] = [v.id for v in step.variants] or [None]
    out = [(MessageKind.STEP, v) for v in variants]
    for n, reminder in enumerate(step.reminders, start=1):
        follows = reminder.subject is None or reminder.template is None
        out += [(MessageKind(n), v) for v in (variants if follows else [None])]
    return out


def _answer_problems(step: Step, kind: MessageKind, links: list[Link]) -> list[str]:
    """Every answer of the step has a link in its email; every link's answer is one of the
    step's (a reminder may leave answers out)."""
    given = {x.answer for x in links if x.answer is not None}
    wanted = {a.id for a in step.answers}
    out = [
        f'the template marks data-answer="{a}", which the step\'s answers do not have'
        + (f" (answers: {', '.join(sorted(wanted))})" if wanted else "; add answers: to the step")
        for a in sorted(given - wanted)
    ]
    if kind.is_step:
        out += [
            f"answer '{a}' has no link in the template (mark one data-answer=\"{a}\")"
            for a in sorted(wanted - given)
        ]
    elif wanted and not given:
        out.append(
            "a reminder of a question has no answer links: a click on it can never answer; "
            'mark its links data-answer="ID" like the step\'s email'
        )
    urls: dict[str, str] = {}
    for x in links:
        if x.answer is not None and urls.setdefault(x.url, x.answer) != x.answer:
            out.append(
                f"answers '{urls[x.url]}' and '{x.answer}' lead to the same URL {x.url}: the "
                "text part cannot tell them apart; give each answer its own URL (?a=...)"
            )
    return out


def _render_error(exc: Exception, fields: dict[str, Any]) -> str:
    if isinstance(exc, jinja2.UndefinedError):
        return (
            f"cannot be rendered for the sample subscriber {fields}: {exc.message}; give it "
            "a default ({{ subscriber.x | default('') }}) or add the field to the sequence's "
            "sample:"
        )
    return f"cannot be rendered for the sample subscriber: {type(exc).__name__}: {exc}"


def _attributes(inner: str) -> list[tuple[str, str, str]] | None:
    """The attributes of a tag as (lower-case name, raw value, source text); None when the tag
    cannot be read attribute by attribute (then it is left as it is)."""
    out: list[tuple[str, str, str]] = []
    pos = 0
    end = len(inner.rstrip())
    while pos < end:
        m = _ATTR.match(inner, pos)
        if m is None or m.end() == pos:
            return None
        if m.group(1) is not None:
            out.append((m.group(1).lower(), m.group(2) or "", m.group(0)))
        pos = m.end()
    return out


def _value(raw: str) -> str:
    return html.unescape(raw[1:-1] if raw[:1] in ("'", '"') else raw)


def _rewrite_html(body: str, links: _Links, *, skip: str) -> tuple[str, bool]:
    marked_any = False

    def tag(match: re.Match[str]) -> str:
        nonlocal marked_any
        source = match.group(0)
        attrs = _attributes(source[2:-1])
        if attrs is None:
            return source
        names = {name for name, _, _ in attrs}
        marked = "data-micro-yes" in names
        answer = next((_value(v).strip() for n, v, _ in attrs if n == "data-answer"), None)
        kept = [(n, v, text) for n, v, text in attrs if n not in ("data-micro-yes", "data-answer")]
        href = next((v for n, v, _ in kept if n == "href"), "")
        url = _value(href).strip()
        if (
            "data-no-track" in names
            or url == skip
            or not url.lower().startswith(("http://", "https://"))
        ):
            return "<a" + "".join(text for _, _, text in kept) + ">"
        marked_any = marked_any or marked or bool(answer)
        tracked = links.track(url, marked, answer=answer or None)
        parts = [f' href="{tracked}"' if n == "href" else text for n, _, text in kept]
        return "<a" + "".join(parts) + ">"

    return _A_TAG.sub(tag, body), marked_any


_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)


def _before_body_end(body: str, extra: str) -> str:
    """The honeypot link and the open pixel go just before </body>."""
    ends = list(_BODY_END.finditer(body))
    if not ends:
        return body + extra
    at = ends[-1].start()
    return body[:at] + extra + body[at:]


def _rewrite_text(body: str, links: _Links) -> str:
    """Track the text part's URLs that the HTML part links to. Other URLs stay as they are:
    a URL that came from a subscriber's field must never become a link we redirect to."""

    def url(match: re.Match[str]) -> str:
        found = match.group(0).rstrip(".,;:!?")
        rest = match.group(0)[len(found) :]
        if not links.knows(found):
            return match.group(0)
        return links.track_known(found) + rest

    return _TEXT_URL.sub(url, body)


class _TextMaker(HTMLParser):
    BLOCK = {"p", "div", "br", "tr", "h1", "h2", "h3", "h4", "li", "table", "hr"}
    SKIP = {"style", "script", "head", "title"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0
        self.href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self.skipping += 1
        elif tag in self.BLOCK:
            self.parts.append("\n")
        if tag == "li":
            self.parts.append("- ")
        if tag == "a":
            self.href = dict(attrs).get("href")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in self.BLOCK:
            self.parts.append("\n")
        if tag == "a" and self.href:
            self.parts.append(f" ({self.href})")
            self.href = None

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(re.sub(r"\s+", " ", data))


def html_to_text(body: str) -> str:
    """A readable text part for templates that have no .txt twin."""
    maker = _TextMaker()
    maker.feed(body)
    maker.close()
    lines = [line.strip() for line in "".join(maker.parts).splitlines()]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip() + "\n"
