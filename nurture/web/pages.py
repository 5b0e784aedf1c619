"""The few HTML pages recipients and newcomers see, as autoescaped Jinja2 templates."""

from __future__ import annotations

from typing import Any

import jinja2
from starlette.responses import HTMLResponse

__all__ = ["page", "not_found"]

_BASE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{{ title }}</title>
<style>
 body{font:16px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d2330;background:#f5f6f8;margin:0}
 main{max-width:760px;margin:2rem auto;padding:1.5rem 2rem;background:#fff;border-radius:10px;
      box-shadow:0 1px 3px rgba(0,0,0,.08)}
 h1{font-size:1.4rem;margin-top:0} .muted{color:#687082;font-size:.9rem}
 button,.button{background:#2f5bea;color:#fff;border:0;border-radius:6px;padding:.6rem 1.1rem;
      font-size:1rem;cursor:pointer;text-decoration:none;display:inline-block}
 input,select,textarea{font:inherit;padding:.45rem;border:1px solid #c9ced8;border-radius:6px;width:100%;
      box-sizing:border-box;margin:.2rem 0 .8rem}
 table{border-collapse:collapse;width:100%} td,th{text-align:left;padding:.45rem;border-bottom:1px solid #eceef2}
 iframe{width:100%;height:520px;border:1px solid #e1e4ea;border-radius:6px;background:#fff}
 pre{white-space:pre-wrap;background:#f5f6f8;padding:1rem;border-radius:6px;font-size:.85rem}
 .error{color:#b42318}
</style></head>
<body><main>{% block main %}{% endblock %}</main></body></html>"""

_PAGES = {
    "base.html": _BASE,
    "message.html": """{% extends "base.html" %}{% block main %}
<h1>{{ title }}</h1><p>{{ text }}</p>{% endblock %}""",
    "confirm.html": """{% extends "base.html" %}{% block main %}
<h1>Confirm your subscription</h1>
<p>One click and you are in. (This button is here so that nobody, and no mail scanner, can
confirm an address without its owner.)</p>
<form method="post"><button type="submit" name="confirm" value="yes">Yes, confirm my subscription</button></form>
{% endblock %}""",
    "unsubscribe.html": """{% extends "base.html" %}{% block main %}
<h1>Unsubscribe</h1>
<p>Stop every email to <strong>{{ email }}</strong>?</p>
<form method="post"><button type="submit" name="confirm" value="yes">Unsubscribe</button></form>
{% endblock %}""",
    "subscribe.html": """{% extends "base.html" %}{% block main %}
<h1>Subscribe</h1>
{% if error %}<p class="error">{{ error }}</p>{% endif %}
<form method="post" action="/subscribe">
 <label>Email <input type="email" name="email" required value="{{ email or '' }}"></label>
 <label>First name <input type="text" name="first_name" value="{{ first_name or '' }}"></label>
 <label>Sequence <select name="sequence">{% for s in sequences %}
  <option value="{{ s.id }}">{{ s.name }} ({{ s.id }})</option>{% endfor %}</select></label>
 <button type="submit">Subscribe</button>
</form>
{% if outbox %}<p class="muted">No SMTP server is configured: every email goes to the
<a href="/outbox">outbox</a>.</p>{% endif %}
{% endblock %}""",
    "outbox.html": """{% extends "base.html" %}{% block main %}
<h1>Outbox</h1>
<p class="muted">No SMTP server is configured, so nurture delivers to its built-in mail catcher.
Every email it sent is here. <a href="/subscribe">Subscribe someone</a>.</p>
{% if not mails %}<p>No email yet.</p>{% else %}
<table><tr><th>When (UTC)</th><th>To</th><th>Subject</th></tr>
{% for m in mails %}<tr><td>{{ m.received.strftime('%Y-%m-%d %H:%M:%S') }}</td><td>{{ m.to }}</td>
<td><a href="/outbox/{{ m.key }}">{{ m.subject }}</a></td></tr>{% endfor %}</table>{% endif %}
{% endblock %}""",
    "outbox_message.html": """{% extends "base.html" %}{% block main %}
<p><a href="/outbox">&larr; Outbox</a></p>
<h1>{{ mail.subject }}</h1>
<p class="muted">From {{ mail.message['From'] }} to {{ mail.to }}, {{ mail.received.strftime('%Y-%m-%d %H:%M:%S') }} UTC
{% if mail.message['Reply-To'] %}<br>Reply-To {{ mail.message['Reply-To'] }}{% endif %}</p>
<iframe title="HTML part" sandbox="allow-popups allow-popups-to-escape-sandbox"
 src="/outbox/{{ mail.key }}/html"></iframe>
<h2>Reply</h2>
{% if replied %}<p>Your reply was delivered to nurture: {{ replied }}.</p>{% endif %}
<form method="post" action="/outbox/{{ mail.key }}/reply">
 <textarea name="body" rows="4" required>Count me in!</textarea>
 <button type="submit">Send reply</button>
</form>
<h2>Text part</h2><pre>{{ mail.part('plain') }}</pre>
<details><summary>Headers</summary><pre>{% for k, v in mail.message.items() %}{{ k }}: {{ v }}
{% endfor %}</pre></details>
{% endblock %}""",
}

_env = jinja2.Environment(loader=jinja2.DictLoader(_PAGES), autoescape=True)


def page(name: str, **context: Any) -> str:
    return _env.get_template(name).render(**context)


def not_found() -> HTMLResponse:
    """The answer to any link we did not issue: a 404 page, never a redirect."""
    text = "This link is not valid. If you copied it, check that it is complete."
    return HTMLResponse(page("message.html", title="Link not found", text=text), status_code=404)
