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
 <input type="hidden" name="timezone" id="timezone" value="">
 <div style="position:absolute;left:-10000px" aria-hidden="true"><label>Leave this empty
  <input type="text" name="nurture_trap" tabindex="-1" autocomplete="off" value=""></label></div>
 <button type="submit">Subscribe</button>
</form>
<script>/* the browser's time zone, for send windows in the person's own time */
document.getElementById("timezone").value =
  (Intl.DateTimeFormat().resolvedOptions().timeZone || "");</script>
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
    "admin.html": """{% extends "base.html" %}{% block main %}
<h1>nurture</h1>
<h2>Sending</h2>
<p>{% if pause %}<strong class="error">Paused since {{ pause.since.strftime('%Y-%m-%d %H:%M') }} UTC:
{{ pause.reason }}</strong> (retried at {{ pause.until.strftime('%H:%M') }}; <code>nurture resume</code>)
{% else %}Sending normally.{% endif %}
Emails (steps' and reminders'), by status: {% for k, v in messages|dictsort %}{{ k }} {{ v }}{% if not loop.last %}, {% endif %}{% else %}none{% endfor %}.</p>
{% for q in report.sequences %}
<h2>{{ q.name }} <span class="muted">({{ q.id }}): {{ q.enrolled }} enrolled, {{ q.converted }} converted{% if q.converted %}, median {{ span(q.median_seconds_to_convert) }} from enrolling{% endif %}</span></h2>
{{ charts[q.id] }}
<table><tr><th>step</th><th>entered</th><th>sent</th><th>reminders sent</th><th>yes</th><th>rate</th><th>click / reply / event</th>
<th>answered before its email</th><th>skipped by when</th><th>median to yes</th><th>people who clicked</th><th>bot clicks</th><th>waiting</th><th>left</th></tr>
{% for st in q.steps %}<tr><td>{{ st.id }}</td><td>{{ st.entered }}</td><td>{{ st.sent }}</td><td>{{ st.reminded }}</td><td>{{ st.yes }}</td>
<td>{{ pct(st.yes_rate) }}</td><td>{{ st.by_click }} / {{ st.by_reply }} / {{ st.by_event }}</td>
<td>{{ st.answered_early }}</td><td>{{ st.skipped }}{% for w in st.skipped_why %}<br><span class="muted">{{ w.reason }}: {{ w.count }}</span>{% endfor %}</td>
<td>{{ span(st.time_to_yes.median_seconds) }}</td>
<td>{{ st.human_clickers }}</td><td>{{ st.bot_clicks }}</td><td>{{ st.waiting }}</td>
<td>{% for k, v in st.left|dictsort %}{{ k }} {{ v }} {% else %}-{% endfor %}</td></tr>{% endfor %}
</table>
<p class="muted">{% for label, meaning in legend %}{{ label }}: {{ meaning }}.{% if not loop.last %} {% endif %}{% endfor %}</p>{% endfor %}
<h2>One person</h2>
<form method="get" action="/admin"><label>Email <input type="email" name="email" value="{{ email }}"></label>
<button type="submit">Look up</button></form>
{% if email and not story %}<p>No subscriber {{ email }}.</p>{% endif %}
{% if story %}<p><strong>{{ story.email }}</strong>: {{ story.status }}{% if story.tags %}; tags {{ story.tags|join(', ') }}{% endif %}</p>
{% for en in story.enrollments %}<h3>{{ en.sequence }}: {{ en.status }} at {{ en.step }}</h3>
<p class="muted">Next: {{ en.next }}</p>
<table><tr><th>sent (UTC)</th><th>email</th><th>subject</th><th>status</th><th>yes</th><th>events</th></tr>
{% for m in en.emails %}<tr><td>{{ m.sent_at or '-' }}</td><td>{{ m.step }} {{ m.kind }}{% if m.variant %} [{{ m.variant }}]{% endif %}</td>
<td>{{ m.subject or '-' }}</td><td>{{ m.status }}</td><td>{% if m.yes %}{{ m.yes.by }}{% if m.yes.answer %} ({{ m.yes.answer }}){% endif %}{% else %}-{% endif %}</td>
<td>{% for e in m.events %}{{ e.kind }} {{ e.verdict or '' }} {{ e.outcome }}{% if not loop.last %}; {% endif %}{% endfor %}</td></tr>{% endfor %}
</table>{% endfor %}{% endif %}
<h2>Recent inbound mail</h2>
{% if not inbound %}<p>None yet.</p>{% else %}<table><tr><th>received (UTC)</th><th>from</th><th>kind</th><th>status</th><th>what was done</th></tr>
{% for r in inbound %}<tr><td>{{ r.received_at.strftime('%Y-%m-%d %H:%M') }}</td><td>{{ r.sender or '-' }}</td>
<td>{{ r.kind or '-' }}</td><td>{{ r.status.value }}</td><td>{{ r.note or '' }}</td></tr>{% endfor %}</table>{% endif %}
{% if unmatched %}<h2 id="unmatched-reports">Reports that matched no email we sent</h2>
<p class="muted">Bounces and complaints that reference no email nurture sent to the address they name: nobody was changed. Each is kept (<code>nurture inbound --raw ID</code>).</p>
<table><tr><th>id</th><th>received (UTC)</th><th>from</th><th>kind</th><th>why</th></tr>
{% for r in unmatched %}<tr><td>{{ r.id }}</td><td>{{ r.received_at.strftime('%Y-%m-%d %H:%M') }}</td><td>{{ r.sender or '-' }}</td>
<td>{{ r.kind }}</td><td>{{ r.note or '' }}</td></tr>{% endfor %}</table>{% endif %}
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
