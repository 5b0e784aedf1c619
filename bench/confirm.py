"""Confirmation benchmark (issue 19): how long from a person opening the confirmation link in
their browser to their next email, in the process people run.

`nurture run` with its defaults (a tick a second, the 10 s click window, the 1 s quick wait)
sends into an in-process SMTP server (aiosmtpd) that notes when each email arrives. Debian's
Chromium, driven by Playwright, opens each person's confirmation link (the GET shows the
page) and presses its button (the POST, from the page), more than
`NURTURE_CLICK_MIN_SECONDS` after delivery; the time is from the GET to the arrival of the
next step's email (`delay: 0`). Rows, each N presses:

* ``reply`` (the baseline, alternated with the presses of ``alone``): a reply to the first
  email of a click-or-reply step, posted to `/inbound`, to its next email;
* ``alone``: the press with nothing else going on;
* ``after a scanner walk``: a mail scanner fetched every link of the email (and posted the
  confirmation form) from another network three seconds before the person's GET;
* ``during a bulk send``: while the daemon sends a fresh import's confirmations (``--bulk``,
  10,000) into the same SMTP server; only the presses made and answered before the bulk send
  ended are counted (how many is printed).

Run: ``.venv/bin/python bench/confirm.py [--n 10] [--bulk 10000]`` (needs `scripts/setup test`
for Chromium and Playwright).
"""

from __future__ import annotations

import argparse
import email
import email.policy
import statistics
import subprocess
import tempfile
import textwrap
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from daemons import NURTURE, nurture_env, serving
from send import ROOT, free_port
from yes import LINK, Arrivals, percentile, reply_to, wait
from yes import SEQUENCE as LATENCY

from nurture.clock import SystemClock
from nurture.config import Settings
from nurture.db.migrate import upgrade
from nurture.mail.catcher import SmtpServerThread
from nurture.services import build_services

SEQUENCES = {
    "confirming": """
        id: confirming
        name: Confirm, then the next email at once
        from: "Bench <bench@acme.example>"
        steps:
          - id: confirm
            confirms: true
            subject: "Confirm"
            template: confirm.html
            wait: 1d
            on_timeout: exit
          - id: second
            subject: "Second"
            template: welcome.html
            wait: 1d
        """,
    "latency": LATENCY,  # a click-or-reply step, then its next email
    "bulk": """
        id: bulk
        name: A fresh import
        from: "Bench <bench@acme.example>"
        steps:
          - id: confirm
            confirms: true
            subject: "Please confirm"
            template: confirm.html
            wait: 1d
            on_timeout: exit
          - id: welcome
            subject: "Welcome"
            template: welcome.html
            wait: 1d
        """,
}
SCANNER = {
    "User-Agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36",
    "Accept": "*/*",
    "X-Forwarded-For": "198.51.100.9",
}
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def html_of(raw: bytes) -> str:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    return message.get_body(("html",)).get_content()  # type: ignore[union-attr,no-any-return]


def press(page: Any, link: str) -> None:
    """The person: the link opened (the page), then its button pressed."""
    page.goto(link)
    page.get_by_role("button", name="Yes, confirm my subscription").click()
    page.wait_for_load_state()


def walk(http: httpx.Client, raw: bytes) -> None:
    for url in LINK.findall(html_of(raw)):
        http.get(url, headers=SCANNER)
        http.post(url, headers=SCANNER, data={"confirm": "yes"})


def main(args: argparse.Namespace) -> int:
    from playwright.sync_api import sync_playwright

    workdir = Path(tempfile.mkdtemp(prefix="nurture-bench-confirm-"))
    (workdir / "sequences").mkdir()
    for name, text in SEQUENCES.items():
        (workdir / "sequences" / f"{name}.yaml").write_text(textwrap.dedent(text))
    url = f"sqlite:///{workdir / 'bench.db'}"
    upgrade(url)
    n = args.n
    rows = ("alone", "after a scanner walk", "during a bulk send")
    pressing = {row: [f"{i}-{k}@example.com" for k in range(n)] for i, row in enumerate(rows)}
    replying = [f"r-{k}@example.com" for k in range(n)]
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=url,
        sequences_dir=workdir / "sequences",
        templates_dir=ROOT / "templates",
        data_dir=workdir,
        secret_key="bench-key",
    )
    services = build_services(settings, clock=SystemClock())
    before = services.clock.now() - timedelta(minutes=1)
    for person in [p for people in pressing.values() for p in people]:
        services.subscriptions.subscribe(
            email=person, sequence_id="confirming", fields={}, now=before
        )
    for person in replying:
        services.subscriptions.subscribe(
            email=person, sequence_id="latency", fields={}, now=before, confirmed=True
        )
    arrivals = Arrivals()
    smtp = SmtpServerThread(arrivals).start()  # type: ignore[arg-type]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = nurture_env(
        url,
        workdir,
        port,
        sequences=workdir / "sequences",
        NURTURE_SMTP_HOST="127.0.0.1",
        NURTURE_SMTP_PORT=str(smtp.port),
        NURTURE_BASE_URL=base,
    )
    took: dict[str, list[float]] = {"reply": [], **{row: [] for row in rows}}
    bulk_done_at: float | None = None
    try:
        with (
            serving([NURTURE, "run"], port, env, workdir / "daemon.log"),
            httpx.Client(timeout=30) as http,
            sync_playwright() as pw,
        ):
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
            agent = browser.new_page().evaluate("navigator.userAgent").replace("Headless", "")
            page = browser.new_page(user_agent=agent)
            firsts = [wait(p, lambda p=p: arrivals.get(p, "Confirm")) for p in pressing[rows[0]]]
            firsts += [wait(p, lambda p=p: arrivals.get(p, "First")) for p in replying]
            # Past NURTURE_CLICK_MIN_SECONDS after delivery: no soft signal.
            time.sleep(max(0.0, 6 - (time.monotonic() - max(t for t, _ in firsts))))  # type: ignore[misc]

            def timed(row: str, person: str, act: Any) -> None:
                began = time.monotonic()
                act()
                subject = "Second"
                arrived = wait(f"{person}'s next email", lambda: arrivals.get(person, subject))
                took[row].append(arrived[0] - began)  # type: ignore[index]

            for k in range(n):  # alternated: a reply, a press
                person = replying[k]
                _, raw = arrivals.get(person, "First")  # type: ignore[misc]

                def post(raw: bytes = raw, person: str = person) -> None:
                    r = http.post(base + "/inbound", content=reply_to(raw, person))
                    assert r.status_code == 200, r.text

                timed("reply", person, post)
                person = pressing["alone"][k]
                _, raw = arrivals.get(person, "Confirm")  # type: ignore[misc]
                link = LINK.findall(html_of(raw))[0]
                timed("alone", person, lambda link=link: press(page, link))
            for person in pressing["after a scanner walk"]:
                _, raw = wait(person, lambda p=person: arrivals.get(p, "Confirm"))  # type: ignore[misc]
                walk(http, raw)
                time.sleep(3)  # the person reads for a moment after their scanner's walk
                link = LINK.findall(html_of(raw))[0]
                timed("after a scanner walk", person, lambda link=link: press(page, link))
            # The bulk: a fresh import's confirmations, then presses while they go out.
            late = [wait(p, lambda p=p: arrivals.get(p, "Confirm"))
                    for p in pressing["during a bulk send"]]  # fmt: skip
            people = workdir / "bulk.csv"
            people.write_text(
                "email\n" + "".join(f"bulk-{i}@example.com\n" for i in range(args.bulk))
            )
            imported = subprocess.run(
                [NURTURE, "import", str(people), "--sequence", "bulk"],
                env=env, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            assert imported.returncode == 0, imported.stderr

            def bulk_sent() -> int:
                with arrivals.lock:
                    return sum(1 for (to, _) in arrivals.mail if to.startswith("bulk-"))

            wait("the bulk send to start", lambda: bulk_sent() >= 100, timeout=120)
            time.sleep(max(0.0, 6 - (time.monotonic() - max(t for t, _ in late))))  # type: ignore[misc]
            for person in pressing["during a bulk send"]:
                if bulk_sent() >= args.bulk:
                    break
                _, raw = arrivals.get(person, "Confirm")  # type: ignore[misc]
                link = LINK.findall(html_of(raw))[0]
                timed("during a bulk send", person, lambda link=link: press(page, link))
                if bulk_sent() >= args.bulk:  # answered after the bulk ended: not counted
                    took["during a bulk send"].pop()
                    break
            wait("the bulk send to end", lambda: bulk_sent() >= args.bulk, timeout=600)
            bulk_done_at = time.monotonic()
            browser.close()
    finally:
        smtp.stop()
        services.store.dispose()
    print(
        "from the request (a reply's POST, or the browser's GET of the confirmation link) to "
        "the next email's arrival (delay: 0); default `nurture run` on SQLite"
    )
    for row, values in took.items():
        if not values:
            print(f"  {row:<22} none measured")
            continue
        p50, p99 = statistics.median(values), percentile(values, 0.99)
        print(
            f"  {row:<22} n={len(values):<3} p50 {p50:5.2f} s   p99 {p99:5.2f} s   "
            f"max {max(values):5.2f} s"
        )
    if took["reply"] and took["alone"]:
        ratio = statistics.median(took["reply"]) / statistics.median(took["alone"])
        print(f"  ratio reply/alone (p50): {ratio:.3f}")
    print(f"  bulk of {args.bulk} ended: {bulk_done_at is not None}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10, help="presses per row")
    p.add_argument("--bulk", type=int, default=10_000, help="emails of the bulk send")
    return p.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
