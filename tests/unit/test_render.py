"""Rendering (templates -> subject, text, HTML with tracked links) and composing the bytes."""

from __future__ import annotations

import email
import email.errors
import email.policy
import html
import re
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import jinja2
import pytest
from jinja2.exceptions import SecurityError
from support.paths import DATA, REPO

from nurture.errors import SubscribeError
from nurture.mail.compose import compose
from nurture.mail.render import Rendered, Renderer, html_to_text, make_environment
from nurture.sequences import AdvanceOn, Sequence, Step, load_catalog
from nurture.subscriptions import normalize_email
from nurture.tokens import Signer, Token, TokenKind
from nurture.vocabulary import Link, MessageKind

BASE = "http://nurture.test"
MESSAGE_ID = 42
SIGNER = Signer("test-secret-key")
HREF = re.compile(r"""<a\b[^>]*?\shref="([^"]*)\"""", re.IGNORECASE)


@pytest.fixture(scope="module")
def env() -> jinja2.Environment:
    return make_environment(DATA / "templates")


@pytest.fixture(scope="module")
def journey(env: jinja2.Environment) -> Sequence:
    seq = load_catalog(DATA / "sequences", env=env).get("journey")
    assert seq is not None
    return seq


@pytest.fixture(scope="module")
def renderer(env: jinja2.Environment) -> Renderer:
    # (the honeypot link has its own test below)
    return Renderer(env, SIGNER, BASE + "/", honeypot=False)  # a trailing slash must not double up


def render(
    renderer: Renderer, seq: Sequence, step: str, kind: str = "step", **fields: str
) -> Rendered:
    return renderer.render(
        seq,
        step,
        MessageKind.parse(kind),
        message_id=MESSAGE_ID,
        email="bob@example.com",
        fields=fields,
    )


def pairs(out: Rendered) -> list[tuple[str, bool]]:
    """(url, counts as the micro-yes) of each tracked link."""
    return [(link.url, link.counts) for link in out.links]


def hrefs(body: str) -> list[str]:
    return [html.unescape(h) for h in HREF.findall(body)]


def click_of(url: str) -> Token:
    assert url.startswith(BASE + "/c/"), url
    return SIGNER.read(url.removeprefix(BASE + "/c/"), TokenKind.click)


def unsubscribe_url(message_id: int = MESSAGE_ID) -> str:
    return f"{BASE}/u/{SIGNER.make(TokenKind.unsubscribe, message_id)}"


def one_step(template: str, subject: str = "Hi") -> Sequence:
    step = Step("only", subject, template, AdvanceOn.click, timedelta(days=1))
    return Sequence("adhoc", "Ad hoc", "Ada <ada@acme.example>", (step,))


@pytest.fixture
def adhoc(tmp_path: Path) -> tuple[Path, Renderer]:
    """An empty templates directory and a renderer over it, for templates written per test."""
    folder = tmp_path / "templates"
    folder.mkdir()
    return folder, Renderer(
        make_environment(folder), SIGNER, BASE, open_pixel=False, honeypot=False
    )


def render_adhoc(adhoc: tuple[Path, Renderer], files: dict[str, str], **fields: str) -> Rendered:
    folder, rend = adhoc
    for name, body in files.items():
        (folder / name).write_text(body, encoding="utf-8")
    return rend.render(
        one_step("t.html"),
        "only",
        MessageKind.STEP,
        message_id=MESSAGE_ID,
        email="bob@example.com",
        fields=fields,
    )


# ---------------------------------------------------------------------------------------------
# Links


@pytest.mark.parametrize(
    ("step", "kind", "targets"),
    [
        (
            "confirm",
            "step",
            ["http://nurture.test/confirmed", "https://acme.example/about?a=1&b=2"],
        ),
        ("confirm", "reminder1", ["http://nurture.test/confirmed"]),
        ("read", "step", ["https://acme.example/post"]),
        ("ask", "step", ["https://acme.example/faq"]),
        ("offer", "step", ["https://acme.example/offer"]),
    ],
)
def test_every_link_is_tracked_and_decodes_to_its_target(
    renderer: Renderer, journey: Sequence, step: str, kind: str, targets: list[str]
) -> None:
    out = render(renderer, journey, step, kind)
    *tracked, unsubscribe = hrefs(out.html)
    assert unsubscribe == unsubscribe_url()
    assert [link.url for link in out.links] == targets
    for index, url in enumerate(tracked):
        assert click_of(url) == Token(TokenKind.click, MESSAGE_ID, index)
        assert out.links[index].url == targets[index]
    assert len(tracked) == len(targets)
    for target in targets:  # no original URL is left in the HTML
        assert target not in html.unescape(out.html)


def test_html_entities_in_links_are_unescaped(renderer: Renderer, journey: Sequence) -> None:
    out = render(renderer, journey, "confirm")
    assert ("https://acme.example/about?a=1&b=2", False) in pairs(out)
    assert not any("&amp;" in link.url for link in out.links)


@pytest.mark.parametrize(
    ("step", "kind"),
    [("confirm", "step"), ("confirm", "reminder1"), ("read", "step"), ("offer", "step")],
)
def test_data_micro_yes_never_reaches_the_reader(
    renderer: Renderer, journey: Sequence, step: str, kind: str
) -> None:
    out = render(renderer, journey, step, kind)
    assert "data-micro-yes" not in out.html
    assert "micro" not in out.text


def test_only_marked_links_count_when_a_template_marks_some(
    renderer: Renderer, journey: Sequence
) -> None:
    out = render(renderer, journey, "confirm")
    assert pairs(out) == [
        ("http://nurture.test/confirmed", True),
        ("https://acme.example/about?a=1&b=2", False),
    ]


@pytest.mark.parametrize("step", ["read", "ask"])
def test_every_tracked_link_counts_when_none_is_marked(
    renderer: Renderer, journey: Sequence, step: str
) -> None:
    out = render(renderer, journey, step)
    assert out.links
    assert all(link.counts for link in out.links)


def test_unsubscribe_link_is_not_tracked(renderer: Renderer, journey: Sequence) -> None:
    out = render(renderer, journey, "read")
    unsub = unsubscribe_url()
    assert hrefs(out.html)[-1] == unsub
    assert renderer.unsubscribe_url(MESSAGE_ID) == unsub
    token = unsub.removeprefix(BASE + "/u/")
    assert SIGNER.read(token, TokenKind.unsubscribe).message_id == MESSAGE_ID
    assert unsub not in [link.url for link in out.links]
    assert unsub in out.text


def test_text_twin_uses_the_same_tracked_urls_as_the_html(
    renderer: Renderer, journey: Sequence
) -> None:
    out = render(renderer, journey, "confirm", first_name="Ada")
    tracked = hrefs(out.html)[:-1]
    assert out.text == (
        "Hi Ada, please confirm:\n"
        f"{tracked[0]}\n"
        "\n"
        f"About us: {tracked[1]}\n"
        f"Unsubscribe: {unsubscribe_url()}\n"
    )
    assert "acme.example" not in out.text
    assert len(out.links) == 2  # the text twin added no link of its own


def test_template_without_twin_gets_a_generated_text_part(
    renderer: Renderer, journey: Sequence
) -> None:
    out = render(renderer, journey, "read", first_name="Ada")
    [tracked, unsub] = hrefs(out.html)
    assert out.text.startswith("A short read\n")
    for words in ("Here is", "the post", "Ada."):
        assert words in out.text
    assert f"({tracked})" in out.text
    assert f"({unsub})" in out.text
    assert "<" not in out.text.replace(f"({tracked})", "").replace(f"({unsub})", "")


def test_generated_text_keeps_spaces_around_links(renderer: Renderer, journey: Sequence) -> None:
    out = render(renderer, journey, "read", first_name="Ada")
    assert "Here is the post (" in out.text


def test_link_variants(adhoc: tuple[Path, Renderer]) -> None:
    out = render_adhoc(
        adhoc,
        {
            "t.html": (
                "<p><a href='https://x.example/single'>single</a>\n"
                "<A HREF=https://x.example/bare>bare</A>\n"
                '<a class="b" data-micro-yes="yes" href="https://x.example/yes">yes</a>\n'
                '<a href="https://x.example/single" data-micro-yes>again, marked</a>\n'
                '<a href="mailto:ada@acme.example">mail</a>\n'
                '<a href="#top">anchor</a>\n'
                '<a href="/relative">relative</a>\n'
                '<a data-no-track href="https://x.example/private">private</a>\n'
                '<a name="no-href">no href</a></p>\n'
            )
        },
    )
    assert pairs(out) == [
        ("https://x.example/single", True),  # marked on its second occurrence
        ("https://x.example/bare", False),
        ("https://x.example/yes", True),
    ]
    found = hrefs(out.html)
    assert [click_of(u).link for u in found[:4]] == [0, 1, 2, 0]  # same URL, same token
    assert found[4:] == [
        "mailto:ada@acme.example",
        "#top",
        "/relative",
        "https://x.example/private",
    ]
    assert '<a class="b" href=' in out.html
    assert "data-micro-yes" not in out.html


def test_generated_text_has_no_link_the_html_does_not_have(adhoc: tuple[Path, Renderer]) -> None:
    out = render_adhoc(adhoc, {"t.html": '<p><a href="https://x.example/a">a</a></p>\n'})
    assert pairs(out) == [("https://x.example/a", True)]
    assert hrefs(out.html)[0] in out.text


def test_text_only_urls_stay_as_they_are(adhoc: tuple[Path, Renderer]) -> None:
    # Only URLs the HTML part links to are tracked in the text twin; a URL only in the text
    # stays untracked and adds no link.
    out = render_adhoc(
        adhoc,
        {
            "t.html": '<p><a href="https://x.example/yes" data-micro-yes>yes</a></p>\n',
            "t.txt": "Yes: https://x.example/yes.\nMore (https://x.example/more), bye\n",
        },
    )
    assert pairs(out) == [("https://x.example/yes", True)]
    yes = f"{BASE}/c/{SIGNER.make(TokenKind.click, MESSAGE_ID, 0)}"
    assert out.text == f"Yes: {yes}.\nMore (https://x.example/more), bye\n"


@pytest.mark.parametrize("twin", [True, False], ids=["text twin", "generated text"])
def test_a_url_in_a_subscriber_field_is_never_tracked(
    adhoc: tuple[Path, Renderer], twin: bool
) -> None:
    # A subscriber's field must never become a link nurture redirects to.
    evil = "http://evil.example"
    files = {
        "t.html": (
            '<p>Hi {{ subscriber.first_name }}, <a href="https://x.example/yes">yes</a></p>\n'
        ),
    }
    if twin:
        files["t.txt"] = "Hi {{ subscriber.first_name }}, yes: https://x.example/yes\n"
    out = render_adhoc(adhoc, files, first_name=evil)
    assert pairs(out) == [("https://x.example/yes", True)]
    [tracked] = hrefs(out.html)
    assert click_of(tracked) == Token(TokenKind.click, MESSAGE_ID, 0)
    assert f"<p>Hi {evil}, " in out.html
    assert f"Hi {evil}, yes" in out.text
    assert tracked in out.text
    assert out.text.count(f"{BASE}/c/") == 1  # only the template's link is tracked


# ---------------------------------------------------------------------------------------------
# Subject and context


def test_subject_uses_first_name_and_falls_back(renderer: Renderer, journey: Sequence) -> None:
    assert render(renderer, journey, "confirm", first_name="Ada").subject == "Confirm, Ada"
    assert render(renderer, journey, "confirm").subject == "Confirm, friend"
    assert render(renderer, journey, "confirm", "reminder1").subject == "Reminder: please confirm"


def test_subject_is_one_line_and_not_html_escaped(adhoc: tuple[Path, Renderer]) -> None:
    folder, rend = adhoc
    (folder / "t.html").write_text("<p>x</p>\n", encoding="utf-8")
    seq = one_step("t.html", subject="Tom & {{ subscriber.first_name }}\n  again")
    out = rend.render(
        seq,
        "only",
        MessageKind.STEP,
        message_id=1,
        email="b@example.com",
        fields={"first_name": "Jerry\r\nBcc: x@evil.example"},
    )
    assert out.subject == "Tom & Jerry Bcc: x@evil.example again"


def test_fields_are_escaped_in_html(renderer: Renderer, journey: Sequence) -> None:
    out = render(renderer, journey, "read", first_name="<b>Ada</b>")
    assert "the post</a>, &lt;b&gt;Ada&lt;/b&gt;." in out.html
    assert "<b>" not in out.html


SPAM = "WIN a FREE iPhone https://spam.example/claim"


@pytest.mark.parametrize(
    "typed",
    [SPAM, "spam.example", "www spam", "bit.ly", "ann@spam.example", "Call 555 0100", "x" * 41],
)
def test_a_confirmation_shows_no_stranger_text(
    renderer: Renderer, journey: Sequence, typed: str
) -> None:
    """A confirmation goes to an address anyone typed: a first name that is no name's shape
    is not in it (the default reads instead), nor is any other field; after the yes it is."""
    for kind in ("step", "reminder1"):
        out = render(renderer, journey, "confirm", kind, first_name=typed, note=typed)
        for part in (out.subject, out.html, out.text):
            assert typed not in part and "spam" not in part.lower()
    out = render(renderer, journey, "confirm", first_name=typed)
    assert out.subject == "Confirm, friend" and "Hi friend, please confirm." in out.html
    assert render(renderer, journey, "read", first_name=typed).subject == f"Read this, {typed}"


@pytest.mark.parametrize("name", ["Ann", "María José de la Cruz", "O'Brien", "Jean-Luc", "李小龍"])
def test_a_confirmation_shows_a_first_name_of_a_names_shape(
    renderer: Renderer, journey: Sequence, name: str
) -> None:
    assert render(renderer, journey, "confirm", first_name=name).subject == f"Confirm, {name}"


def test_a_confirmation_template_reading_another_field_renders_it_empty(
    adhoc: tuple[Path, Renderer],
) -> None:
    folder, rend = adhoc
    (folder / "t.html").write_text("<p>[{{ subscriber.company }}]</p>\n", encoding="utf-8")
    step = Step("only", "Hi", "t.html", AdvanceOn.click, timedelta(days=1), confirms=True)
    seq = Sequence("adhoc", "Ad hoc", "Ada <ada@acme.example>", (step,))
    out = rend.render(
        seq, "only", MessageKind.STEP, message_id=1, email="b@example.com",
        fields={"company": "Spam Inc"},
    )  # fmt: skip
    assert "<p>[]</p>" in out.html


@pytest.mark.parametrize(
    "source",
    ["{{ nope }}", "{{ subscriber.nickname }}", "{{ subscriber.first_name }}", "{{ step.wait }}"],
)
def test_undefined_variables_raise(adhoc: tuple[Path, Renderer], source: str) -> None:
    with pytest.raises(jinja2.UndefinedError):
        render_adhoc(adhoc, {"t.html": source})


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ subscriber.email.__class__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ subscriber.__class__.__subclasses__() }}",
    ],
)
def test_sandbox_blocks_python_internals(adhoc: tuple[Path, Renderer], source: str) -> None:
    with pytest.raises(SecurityError):
        render_adhoc(adhoc, {"t.html": source})


@pytest.mark.parametrize(
    "name", ["settings", "secret_key", "config", "signer", "api_token", "database_url", "env"]
)
def test_context_holds_no_settings_or_secrets(adhoc: tuple[Path, Renderer], name: str) -> None:
    with pytest.raises(jinja2.UndefinedError):
        render_adhoc(adhoc, {"t.html": f"{{{{ {name} }}}}"})


def test_context_holds_subscriber_and_urls(adhoc: tuple[Path, Renderer]) -> None:
    out = render_adhoc(
        adhoc,
        {
            "t.html": (
                "{{ subscriber.email }}|{{ subscriber.first_name }}|{{ sequence.id }}|"
                "{{ sequence.name }}|{{ step.id }}|{{ base_url }}|{{ unsubscribe_url }}\n"
            )
        },
        first_name="Ada",
    )
    assert out.html == (f"bob@example.com|Ada|adhoc|Ad hoc|only|{BASE}|{unsubscribe_url()}\n")


# ---------------------------------------------------------------------------------------------
# html_to_text and the shipped templates


def test_html_to_text() -> None:
    body = (
        "<html><head><title>T</title><style>p { color: red }</style></head><body>"
        "<h1>Title</h1><p>First   para.</p><p>Tom &amp; Jerry</p>"
        "<ul><li>One</li><li>Two</li></ul>"
        '<p><a href="https://x.example/a">Link</a></p>'
        "<script>var a = 1;</script><br>Bye</body></html>"
    )
    assert html_to_text(body) == (
        "Title\n\nFirst para.\n\nTom & Jerry\n\n- One\n\n- Two\n\nLink (https://x.example/a)\n\nBye\n"
    )


def test_html_to_text_keeps_spaces_around_inline_tags() -> None:
    assert html_to_text("<p>Hello <b>World</b> and <i>more</i>.</p>") == "Hello World and more.\n"


def test_shipped_templates_render_every_step_and_reminder() -> None:
    env = make_environment(REPO / "templates")
    rend = Renderer(env, SIGNER, BASE, honeypot=False)
    catalog = load_catalog(REPO / "sequences", env=env)
    rendered = 0
    for seq in catalog:
        for step in seq.steps:
            kinds = ["step"] + [f"reminder{i + 1}" for i in range(len(step.reminders))]
            for kind in kinds:
                for fields in ({}, {"first_name": "Ada"}):
                    out = rend.render(
                        seq,
                        step.id,
                        MessageKind.parse(kind),
                        message_id=7,
                        email="bob@example.com",
                        fields=fields,
                    )
                    assert out.subject and "{{" not in out.subject
                    assert unsubscribe_url(7) in out.html and unsubscribe_url(7) in out.text
                    assert any(link.counts for link in out.links)
                    rendered += 1
    assert rendered >= 2


# ---------------------------------------------------------------------------------------------
# compose


def build(**overrides: object) -> EmailMessage:
    values: dict[str, object] = {
        "sender": "Ada Test <ada@acme.example>",
        "to": "bob@example.com",
        "subject": "Grüße 👋",
        "text": "Hällo text https://x.example/a\n",
        "html": "<p>Hällo <b>html</b></p>\n",
        "message_id": "<42.0123456789abcdef@acme.example>",
        "date": datetime(2026, 1, 5, 9, 0, tzinfo=UTC),
        "unsubscribe_url": "https://nurture.test/u/TOKEN",
    }
    values.update(overrides)
    data = compose(**values)  # type: ignore[arg-type]
    assert isinstance(data, bytes)
    msg = email.message_from_bytes(data, policy=email.policy.strict)
    assert isinstance(msg, EmailMessage)
    return msg


def test_compose_is_multipart_alternative_text_then_html() -> None:
    msg = build()
    assert msg.get_content_type() == "multipart/alternative"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert parts[0].get_content() == "Hällo text https://x.example/a\n"
    assert parts[1].get_content() == "<p>Hällo <b>html</b></p>\n"
    assert msg.defects == [] and all(p.defects == [] for p in parts)


def test_compose_headers() -> None:
    msg = build()
    assert msg["From"].addresses[0].display_name == "Ada Test"
    assert msg["From"].addresses[0].addr_spec == "ada@acme.example"
    assert str(msg["To"]) == "bob@example.com"
    assert str(msg["Subject"]) == "Grüße 👋"
    assert str(msg["Message-ID"]) == "<42.0123456789abcdef@acme.example>"
    assert msg["Date"].datetime == datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    assert str(msg["List-Unsubscribe"]) == "<https://nurture.test/u/TOKEN>"
    assert str(msg["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"


@pytest.mark.parametrize(
    "subject", ["Plain ASCII", "Grüße 👋", "Ünïcödé " * 20, 'Quote " and = and ?= and _']
)
def test_compose_subject_round_trips(subject: str) -> None:
    assert str(build(subject=subject)["Subject"]) == subject


@pytest.mark.parametrize(
    ("sender", "name", "address"),
    [
        ("ada@acme.example", "", "ada@acme.example"),
        ("Ada Test <ada@acme.example>", "Ada Test", "ada@acme.example"),
        ("Zoë Müller <zoe@acme.example>", "Zoë Müller", "zoe@acme.example"),
        ('"Acme, Inc." <news@acme.example>', "Acme, Inc.", "news@acme.example"),
    ],
)
def test_compose_from_round_trips(sender: str, name: str, address: str) -> None:
    [found] = build(sender=sender)["From"].addresses
    assert (found.display_name, found.addr_spec) == (name, address)


@pytest.mark.parametrize("reply_to", [None, ""])
def test_compose_without_reply_to(reply_to: str | None) -> None:
    assert "Reply-To" not in build(reply_to=reply_to)


def test_compose_with_reply_to() -> None:
    msg = build(reply_to="reply+abc234@acme.example")
    assert str(msg["Reply-To"]) == "reply+abc234@acme.example"


def test_a_line_break_in_the_subject_cannot_inject_a_header() -> None:
    msg = build(subject="Hi\r\nBcc: evil@x.example")
    assert msg["Bcc"] is None
    assert str(msg["Subject"]) == "Hi  Bcc: evil@x.example"


@pytest.mark.parametrize("field", ["to", "message_id", "unsubscribe_url", "reply_to"])
def test_compose_refuses_a_line_break_in_other_headers(field: str) -> None:
    with pytest.raises(ValueError, match="one line of ASCII"):
        build(**{field: "x@example.com\r\nBcc: evil@x.example"})


def test_non_ascii_local_part_is_refused_at_subscribe_time() -> None:
    # compose writes a non-ASCII To: as an RFC 2047 encoded-word, which is not an address; such
    # addresses never get that far: normalize_email refuses them.
    with pytest.raises(SubscribeError, match="zoë@acme.example.* is not a valid email address"):
        normalize_email("zoë@acme.example")


def test_non_ascii_domain_is_kept_in_ascii_and_composes() -> None:
    to = normalize_email("Bob@Bücher.example")
    assert to == "bob@xn--bcher-kva.example"
    [found] = build(to=to)["To"].addresses
    assert found.addr_spec == to


def test_a_field_value_inside_another_attribute_is_never_taken_for_the_link() -> None:
    from nurture.mail.render import _Links, _rewrite_html

    links = _Links(lambda i: f"https://nurture.test/c/{i}")
    html, marked = _rewrite_html(
        '<a title="x href=https://evil.example/ data-micro-yes" href="https://acme.example/a">'
        'Go</a> <a href="https://acme.example/b" title="a>b" data-micro-yes>B</a>',
        links,
        skip="",
    )
    assert links.items == [
        ["https://acme.example/a", False, False, None],
        ["https://acme.example/b", True, False, None],
    ]
    assert marked
    assert "evil.example" in html and 'href="https://nurture.test/c/0"' in html
    assert 'title="a>b"' in html and "data-micro-yes>" not in html


def test_the_open_pixel_goes_just_before_the_end_of_the_body(
    renderer: Renderer, journey: Sequence
) -> None:
    out = renderer.render(
        journey, "read", MessageKind.STEP, message_id=42, email="a@example.com", fields={}
    )
    pixel = re.search(r'<img src="(http://nurture\.test/o/([^"]+))" width="1" height="1"', out.html)
    assert pixel is not None
    assert SIGNER.read(pixel.group(2), TokenKind.open).message_id == 42
    assert out.html.index(pixel.group(0)) < out.html.lower().rindex("</body>")
    assert pixel.group(1) not in [link.url for link in out.links]  # opens are never a micro-yes


def test_every_html_part_carries_an_invisible_honeypot_link(
    journey: Sequence, env: jinja2.Environment
) -> None:
    rend = Renderer(env, SIGNER, BASE)
    out = rend.render(
        journey, "read", MessageKind.STEP, message_id=7, email="a@example.com", fields={}
    )
    assert out.links[-1] == Link(f"{BASE}/hp", False, honeypot=True)  # never a micro-yes
    assert not any(link.honeypot for link in out.links[:-1])
    token = SIGNER.make(TokenKind.click, 7, len(out.links) - 1)
    trap = re.search(rf'<a href="{BASE}/c/{token}"[^>]*>', out.html)
    assert trap is not None and 'style="display:none"' in trap.group(0)
    assert f"{BASE}/hp" not in out.text and token not in out.text


# ---------------------------------------------------------------------------------------------
# Bounds: one template must not stop the sending for everyone (issue 8.8)


@pytest.mark.parametrize(
    ("template", "says"),
    [
        (
            "{% for i in range(100000) %}{% for j in range(100) %}xxxxxxxxxx{% endfor %}"
            "{% endfor %}",
            "larger than",
        ),
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "took too long",
        ),
        ("{{ 'x' * 10000000 }}", "more than 100000 items or characters"),
        ("{{ [1, 2] * 1000000 }}", "more than 100000 items or characters"),
        ("{{ 10 ** 100000 }}", "an exponent over 100"),
        ("{% for i in range(10000000) %}{% endfor %}", "range() of more than 100000"),
    ],
    ids=["size", "time", "string-times", "list-times", "power", "range"],
)
def test_a_template_past_a_bound_stops_with_a_reason(
    adhoc: tuple[Path, Renderer], template: str, says: str
) -> None:
    from nurture.mail.sandbox import Limits, RenderLimit

    folder, _ = adhoc
    rend = Renderer(
        make_environment(folder),
        SIGNER,
        BASE,
        open_pixel=False,
        honeypot=False,
        limits=Limits(max_bytes=100_000, seconds=0.5),
    )
    with pytest.raises(RenderLimit, match=re.escape(says)):
        render_adhoc((folder, rend), {"t.html": template})


def test_validation_renders_every_email_for_the_sample_subscriber(tmp_path: Path) -> None:
    """A name the context lacks or a sandbox refusal failed only at send time; now the file
    and the step's line say it at validation, and the sequence's `sample:` names the fields
    every subscriber has."""
    from nurture.mail.render import sample_problems

    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "company.html").write_text("<p>Hello {{ subscriber.company }}</p>\n")
    (templates / "escape.html").write_text("<p>{{ ''.__class__.__mro__ }}</p>\n")
    sequences = tmp_path / "sequences"
    sequences.mkdir()
    head = 'name: N\nfrom: "Ada <ada@acme.example>"\nconfirmed_elsewhere: true\n'
    step = "steps:\n  - id: one\n    subject: Hi\n    template: {t}\n    wait: 1d\n"
    (sequences / "a.yaml").write_text("id: a\n" + head + step.format(t="company.html"))
    (sequences / "b.yaml").write_text("id: b\n" + head + step.format(t="escape.html"))
    (sequences / "c.yaml").write_text(
        "id: c\n" + head + "sample: {company: Acme}\n" + step.format(t="company.html")
    )
    env = make_environment(templates)
    catalog = load_catalog(sequences, env=env)
    problems = sample_problems(catalog, Renderer(env, SIGNER, BASE))
    by_file = {Path(p.file).name: p for p in problems}
    assert set(by_file) == {"a.yaml", "b.yaml"}  # c names the field in its sample
    assert by_file["a.yaml"].line == 6  # the step's line
    assert "'dict object' has no attribute 'company'" in by_file["a.yaml"].message
    assert "default" in by_file["a.yaml"].message and "sample:" in by_file["a.yaml"].message
    assert "SecurityError" in by_file["b.yaml"].message


def test_a_reminder_that_follows_the_variant_is_rendered_for_each_variant(tmp_path: Path) -> None:
    """A reminder without subject and template is "Re: " and the email of the person's
    variant: each variant's, so validation renders it for each (variant b's template needs a
    field the sample lacks: its email and its reminder say so, named by variant)."""
    from nurture.mail.render import sample_problems

    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "a.html").write_text("<p>Body A, {{ subscriber.first_name }}</p>\n")
    (templates / "b.html").write_text("<p>Body B, {{ subscriber.company }}</p>\n")
    sequences = tmp_path / "sequences"
    sequences.mkdir()
    (sequences / "ab.yaml").write_text(
        'id: ab\nname: N\nfrom: "Ada <ada@acme.example>"\nconfirmed_elsewhere: true\n'
        "steps:\n"
        "  - id: one\n"
        "    variants:\n"
        "      - {id: a, subject: 'Hi {{ subscriber.first_name }}', template: a.html}\n"
        "      - {id: b, subject: Hello, template: b.html}\n"
        "    wait: 3d\n"
        "    reminders: [{after: 1d}, {after: 2d, subject: Last}]\n"
    )
    env = make_environment(templates)
    seq = load_catalog(sequences, env=env).get("ab")
    assert seq is not None
    rend = Renderer(env, SIGNER, BASE)
    fields = {"first_name": "Ann", "company": "Acme"}
    for kind, variant, subject, body in [
        (MessageKind(1), "a", "Re: Hi Ann", "Body A, Ann"),
        (MessageKind(1), "b", "Re: Hello", "Body B, Acme"),
        (MessageKind(2), "a", "Last", "Body A, Ann"),
        (MessageKind(2), "b", "Last", "Body B, Acme"),
    ]:
        out = rend.render(
            seq, "one", kind, message_id=1, email="a@b.c", fields=fields, variant=variant
        )
        assert (out.subject, body in out.html) == (subject, True)
    problems = sample_problems([seq], rend)
    assert [p.message.split(":")[0] for p in problems] == [
        "step 'one', variant 'b'",
        "step 'one', reminder 1, variant 'b'",
        "step 'one', reminder 2, variant 'b'",
    ]
    assert all(p.line == 6 for p in problems)
    assert sample_problems([seq], rend, skip={(seq.source, "one")}) == []
