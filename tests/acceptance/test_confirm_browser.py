"""The double opt-in in a person's own browser (issue 19, finding 1): Chromium opens the
confirmation link from the outbox (a GET: the page) and presses its button (a POST from that
page, with its own Sec-Fetch-Site, Origin, Referer and form body). That is one person, judged
at once, with or without a scanner walking the email from another network first.

The daemon runs with a click window of ten minutes: a click in doubt waits that long, so the
next email arriving within the test's deadline proves the quick path (a person's click
judged after a second) was taken, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select
from support.browser import click_ask_in_frame, open_mail, person_page, require_chromium
from support.daemon import Daemon, e2e_env
from support.net import wait_for
from support.paths import DATA

from nurture.db.connect import normalize_url
from nurture.db.models import EVENTS
from nurture.mail.catcher import Outbox

require_chromium()

SCANNER = {
    "User-Agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36",
    "Accept": "*/*",
    "X-Forwarded-For": "198.51.100.9",  # another network: the app trusts its loopback proxy
}
LINK = re.compile(r'href="(http://127\.0\.0\.1:\d+/c/[^"]+)"')


@pytest.fixture
def page() -> Iterator[Any]:
    yield from person_page(viewport={"width": 900, "height": 800})


def walk(mail_html: str) -> None:
    """A mail security sandbox, seconds after delivery: every link fetched, and the
    confirmation page's form submitted, from its own network."""
    with httpx.Client(timeout=10) as client:
        for url in LINK.findall(mail_html):
            client.get(url, headers=SCANNER)
            client.post(url, headers=SCANNER, data={"confirm": "yes"})


def clicks(url: str) -> list[Any]:
    engine = create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            q = select(EVENTS).where(EVENTS.c.kind == "click").order_by(EVENTS.c.id)
            return list(conn.execute(q))
    finally:
        engine.dispose()


@pytest.mark.parametrize("scanner", [False, True], ids=["alone", "after-a-scanner-walk"])
def test_a_persons_confirmation_in_their_browser_moves_them_on_at_once(
    tmp_path: Path, database_url: str, page: Any, scanner: bool
) -> None:
    env = e2e_env(
        tmp_path,
        NURTURE_DATABASE_URL=database_url,
        NURTURE_SEQUENCES_DIR=str(DATA / "confirm"),
        NURTURE_DATA_DIR=str(tmp_path),
        NURTURE_CLICK_WINDOW_SECONDS="600",
    )
    daemon = Daemon(tmp_path, env)
    daemon.start()
    try:
        r = httpx.post(
            daemon.base + "/subscribe",
            json={"email": "nia@example.com", "first_name": "Nia", "sequence": "prompt"},
        )
        assert r.status_code == 202, r.text
        outbox = Outbox(tmp_path / "outbox")

        def confirmation() -> Any:
            return next((m for m in outbox.list() if m.subject == "Confirm, Nia"), None)

        wait_for("the confirmation email", lambda: confirmation() is not None, timeout=60)
        delivered = time.monotonic()
        if scanner:
            walk(confirmation().part("html"))
        open_mail(page, daemon.base, "Confirm, Nia")
        # A person reads before they click: a click seconds after delivery is in doubt.
        page.wait_for_timeout(max(0.0, 5.5 - (time.monotonic() - delivered)) * 1000)
        confirm = click_ask_in_frame(page, "Yes, confirm me")
        assert "Confirm your subscription" in confirm.content()
        confirm.get_by_role("button", name="Yes, confirm my subscription").click()
        confirm.wait_for_load_state()
        assert "You are confirmed" in confirm.content()

        def welcomed() -> bool:
            return any(m.subject == "Welcome, Nia" for m in outbox.list())

        wait_for("the next step's email, without the 600 s window", welcomed, timeout=60)
    finally:
        daemon.stop()
    seen = clicks(database_url)
    person = [e for e in seen if e.detail.get("ua", "").startswith("Mozilla/5.0 (X11")]
    get, post = (
        next(e for e in person if e.detail["method"] == "GET"),
        next(e for e in person if e.detail["method"] == "POST"),
    )
    assert get.outcome == "shown:confirm_page"
    assert (post.verdict, post.outcome) == ("human", "advanced")
    assert post.detail["client"] == get.detail["client"]  # one browser, one client
    others = [e for e in seen if e not in person]
    assert bool(others) is scanner
    assert all(e.detail["client"] != get.detail["client"] for e in others)
    assert all(e.outcome != "advanced" for e in others)
