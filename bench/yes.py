"""Yes benchmark: how long from a person's micro-yes to their next email, with `delay: 0`.

`nurture run` (its defaults: a tick a second, the 10 s click window, the 1 s quick wait)
sends into an in-process SMTP server (aiosmtpd) that notes when each email arrives. N people
get the first email of a two-step sequence; then, one at a time:

* ``reply`` (the baseline: a reply is judged at once): a reply to the first email is posted
  to `/inbound`;
* ``click``: the first email's tracked link is fetched with a browser's headers, more than
  `NURTURE_CLICK_MIN_SECONDS` after delivery.

The time is from the request to the arrival of the second email at the SMTP server.

Run: ``.venv/bin/python bench/yes.py [--n 20]``.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import re
import statistics
import tempfile
import textwrap
import threading
import time
from datetime import timedelta
from pathlib import Path

import httpx
from aiosmtpd.smtp import SMTP, Envelope, Session
from daemons import NURTURE, nurture_env, serving
from send import ROOT, free_port

from nurture.clock import SystemClock
from nurture.config import Settings
from nurture.db.migrate import upgrade
from nurture.mail.catcher import SmtpServerThread
from nurture.services import build_services

SEQUENCE = textwrap.dedent(
    """
    id: latency
    name: Latency
    from: "Bench <bench@acme.example>"
    confirmed_elsewhere: true
    steps:
      - id: first
        subject: "First"
        template: welcome.html
        advance_on: click_or_reply
        wait: 1d
      - id: second
        subject: "Second"
        template: welcome.html
        wait: 1d
    """
)
BROWSER = {
    "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Accept-Language": "en-GB,en;q=0.9",
    "Sec-Fetch-Mode": "navigate",
}
LINK = re.compile(r'href="(https?://[^"]+/c/[^"]+)"')


class Arrivals:
    """An SMTP handler that keeps each email and the monotonic time it arrived."""

    def __init__(self) -> None:
        self.mail: dict[tuple[str, str], tuple[float, bytes]] = {}
        self.lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        subject = str(email.message_from_bytes(raw, policy=email.policy.default)["Subject"])
        with self.lock:
            for rcpt in envelope.rcpt_tos:
                self.mail.setdefault((rcpt, subject), (time.monotonic(), raw))
        return "250 OK"

    def get(self, to: str, subject: str) -> tuple[float, bytes] | None:
        with self.lock:
            return self.mail.get((to, subject))


def wait(what: str, check: object, timeout: float = 60) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = check()  # type: ignore[operator]
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.005)


def reply_to(raw: bytes, person: str) -> bytes:
    original = email.message_from_bytes(raw, policy=email.policy.default)
    return (
        f"From: {person}\r\nTo: {original['From']}\r\nSubject: Re: {original['Subject']}\r\n"
        f"In-Reply-To: {original['Message-ID']}\r\nReferences: {original['Message-ID']}\r\n"
        f"Message-ID: <reply-{person}>\r\nDate: {email.utils.formatdate()}\r\n\r\n"
        "Yes, please. Tell me more.\r\n"
    ).encode()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


def main(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="nurture-bench-yes-"))
    (workdir / "sequences").mkdir()
    (workdir / "sequences" / "latency.yaml").write_text(SEQUENCE)
    url = f"sqlite:///{workdir / 'bench.db'}"
    upgrade(url)
    people = [f"p{i:03d}@example.com" for i in range(2 * args.n)]
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=url,
        sequences_dir=workdir / "sequences",
        templates_dir=ROOT / "templates",
        data_dir=workdir,
        secret_key="bench-key",
    )
    services = build_services(settings, clock=SystemClock())
    for person in people:
        services.subscriptions.subscribe(
            email=person,
            sequence_id="latency",
            fields={},
            now=services.clock.now() - timedelta(minutes=1),
            confirmed=True,
        )
    services.store.dispose()
    arrivals = Arrivals()
    smtp = SmtpServerThread(arrivals).start()  # type: ignore[arg-type]
    port = free_port()
    env = nurture_env(
        url,
        workdir,
        port,
        sequences=workdir / "sequences",
        NURTURE_SMTP_HOST="127.0.0.1",
        NURTURE_SMTP_PORT=str(smtp.port),
        NURTURE_BASE_URL=f"http://127.0.0.1:{port}",
    )
    took: dict[str, list[float]] = {"reply": [], "click": []}
    try:
        with (
            serving([NURTURE, "run"], port, env, workdir / "daemon.log"),
            httpx.Client(timeout=10) as http,
        ):
            firsts = [wait(p, lambda p=p: arrivals.get(p, "First")) for p in people]
            # Past NURTURE_CLICK_MIN_SECONDS after the last delivery: no soft signal.
            time.sleep(max(0.0, 6 - (time.monotonic() - max(t for t, _ in firsts))))  # type: ignore[misc]
            for i, person in enumerate(people):
                _, raw = arrivals.get(person, "First")  # type: ignore[misc]
                side = "reply" if i % 2 == 0 else "click"
                began = time.monotonic()
                if side == "reply":
                    r = http.post(f"http://127.0.0.1:{port}/inbound", content=reply_to(raw, person))
                else:
                    html = email.message_from_bytes(raw, policy=email.policy.default)
                    body = html.get_body(("html",)).get_content()  # type: ignore[union-attr]
                    r = http.get(LINK.findall(body)[0], headers=BROWSER)
                assert r.status_code in (200, 302), r.text
                arrived = wait(
                    f"{person}'s second email", lambda p=person: arrivals.get(p, "Second")
                )
                took[side].append(arrived[0] - began)  # type: ignore[index]
    finally:
        smtp.stop()
    print(f"N={args.n} of each; from the request to the next email's arrival (delay: 0)")
    for side in ("reply", "click"):
        values = took[side]
        p50, p99 = statistics.median(values), percentile(values, 0.99)
        print(f"  {side:<6} p50 {p50:5.2f} s   p99 {p99:5.2f} s   max {max(values):5.2f} s")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=20, help="people per side")
    return p.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
