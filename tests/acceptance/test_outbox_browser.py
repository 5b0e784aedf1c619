"""A newcomer's first minutes, in a real browser: the daemon with no SMTP server configured,
the subscribe form, the outbox, the confirmation link, a reply from the outbox's form.

Debian's chromium, driven by Playwright; a screenshot of each page is kept in
test-artifacts/ for people to look at.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.browser import click_ask_in_frame, open_mail, person_page, require_chromium
from support.daemon import NURTURE, Daemon, e2e_env
from support.paths import DATA, REPO

require_chromium()

from playwright.sync_api import Page  # noqa: E402

ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture
def catcher_daemon(tmp_path: Path) -> Iterator[Daemon]:
    # Its own sequence: a browser on a busy machine may take seconds per page.
    d = Daemon(tmp_path, e2e_env(tmp_path, NURTURE_SEQUENCES_DIR=str(DATA / "browser")))
    d.start_module()
    yield d
    d.stop()


@pytest.fixture
def page() -> Iterator[Page]:
    yield from person_page(
        viewport={"width": 1000, "height": 900},
        timezone_id="Pacific/Auckland",  # the form sends it: send windows read it
    )


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_a_newcomer_walks_the_journey_in_a_browser(catcher_daemon: Daemon, page: Page) -> None:
    base = catcher_daemon.base
    page.goto(base + "/subscribe")
    shot(page, "subscribe-form")
    page.get_by_label("Email").fill("newcomer@example.com")
    page.get_by_label("First name").fill("Nia")
    page.get_by_role("button", name="Subscribe").click()
    page.wait_for_load_state()
    assert "Check your inbox" in page.content()
    told = subprocess.run(
        [str(NURTURE), "person", "newcomer@example.com", "--json"],
        env=catcher_daemon.env, cwd=catcher_daemon.workdir, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert json.loads(told.stdout)["fields"]["timezone"] == "Pacific/Auckland", told.stderr

    open_mail(page, base, "Confirm, Nia")
    shot(page, "outbox-confirm-email")
    confirm = click_ask_in_frame(page, "Yes, confirm me")
    # A GET never confirms: the person sees one button and presses it.
    assert "Confirm your subscription" in confirm.content()
    shot(confirm, "confirm-page")
    confirm.get_by_role("button", name="Yes, confirm my subscription").click()
    confirm.wait_for_load_state()
    assert confirm.url == base + "/confirmed"
    assert "You are confirmed" in confirm.content()
    shot(confirm, "confirmed-page")
    confirm.close()

    open_mail(page, base, "Read this, Nia")
    post = click_ask_in_frame(page, "the post")
    # The target is outside this machine; what matters is that the click went through us.
    assert "acme.example/post" in post.url or post.url.startswith("chrome-error://")
    post.close()

    open_mail(page, base, "Tell me by reply")
    page.get_by_role("textbox").fill("Subject lines, please!")
    page.get_by_role("button", name="Send reply").click()
    page.wait_for_load_state()
    assert "Your reply was delivered to nurture: matched" in page.content()
    shot(page, "outbox-replied")

    open_mail(page, base, "The offer")
    page.goto(base + "/outbox")
    shot(page, "outbox-list")
    subjects = page.locator("table a").all_inner_texts()
    assert subjects == ["The offer", "Tell me by reply", "Read this, Nia", "Confirm, Nia"]

    # Unsubscribing also takes a button press: the link alone changes nothing.
    open_mail(page, base, "The offer")
    leave = click_ask_in_frame(page, "Unsubscribe")
    assert "newcomer@example.com" in leave.content()
    shot(leave, "unsubscribe-page")
    leave.get_by_role("button", name="Unsubscribe").click()
    leave.wait_for_load_state()
    assert "You are unsubscribed" in leave.content()
    shot(leave, "unsubscribed-page")


def test_the_dashboard_in_a_browser_and_its_401(tmp_path: Path, page: Page) -> None:
    """With a password, /admin is a 401 until the browser signs in; then the funnel, the
    table and one person's story are there. (The catcher-only loopback door is the other.)"""
    env = e2e_env(
        tmp_path, NURTURE_SEQUENCES_DIR=str(DATA / "browser"), NURTURE_ADMIN_PASSWORD="pw-for-test"
    )
    daemon = Daemon(tmp_path, env)
    daemon.start_module()
    try:
        base = daemon.base
        page.goto(base + "/subscribe")
        page.get_by_label("Email").fill("dash@example.com")
        page.get_by_label("First name").fill("Dee")
        page.get_by_role("button", name="Subscribe").click()
        page.wait_for_load_state()
        # Headless Chromium turns a Basic challenge it cannot answer into a navigation error,
        # so the 401 is fetched by the browser's request context, then shown.
        refused = page.request.get(base + "/admin")
        assert refused.status == 401 and refused.headers["www-authenticate"].startswith("Basic")
        page.set_content(f"<pre>{refused.text()}</pre>")
        shot(page, "admin-401")
        # Signed in as a browser is after its Basic prompt: the header on every request.
        token = base64.b64encode(b"admin:pw-for-test").decode()
        signed_in = page.context.browser.new_context(  # type: ignore[union-attr]
            extra_http_headers={"Authorization": f"Basic {token}"},
            viewport={"width": 1100, "height": 900},
        )
        admin = signed_in.new_page()
        for _ in range(100):  # the confirmation email goes out within a tick or two
            admin.goto(base + "/admin")
            if "<td>confirm</td><td>1</td><td>1</td>" in admin.content():
                break
            admin.wait_for_timeout(200)
        assert admin.locator("svg[aria-label^='funnel of']").count() >= 1
        assert "<td>confirm</td><td>1</td><td>1</td>" in admin.content()
        admin.get_by_label("Email").fill("dash@example.com")
        admin.get_by_role("button", name="Look up").click()
        admin.wait_for_load_state()
        assert "dash@example.com</strong>: pending" in admin.content()
        shot(admin, "admin-dashboard")
        signed_in.close()
    finally:
        daemon.stop()
