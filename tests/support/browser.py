"""A person's browser: Debian's chromium driven by Playwright, as the browser tests launch it,
and what a person does with it in the catcher's outbox."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without the background-networking flags Chromium calls home, and this machine refuses it.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def require_chromium() -> None:
    """Skip a browser test module where chromium is missing, except under CI, where it must
    run (``scripts/setup test`` installs it)."""
    if Path(CHROMIUM).exists():
        return
    if os.environ.get("CI") == "true":
        raise RuntimeError("chromium is required under CI: scripts/setup test installs it")
    pytest.skip(
        "Debian's chromium is not installed (scripts/setup test installs it)",
        allow_module_level=True,
    )


def person_page(**options: Any) -> Iterator[Any]:
    """A page of a person's browser (a fixture's body): headless Chromium says "HeadlessChrome",
    which scanners say too, so the page uses the user agent of the same browser with a head."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            agent = browser.new_page().evaluate("navigator.userAgent").replace("Headless", "")
            yield browser.new_page(user_agent=agent, **options)
        finally:
            browser.close()


def open_mail(page: Any, base: str, subject: str) -> None:
    """Go to the outbox and open the email with that subject, reloading until it arrives."""
    for _ in range(100):
        page.goto(base + "/outbox")
        link = page.get_by_role("link", name=subject)
        if link.count():
            link.first.click()
            page.wait_for_load_state()
            return
        page.wait_for_timeout(200)
    raise AssertionError(f"{subject!r} never reached the outbox")


def click_ask_in_frame(page: Any, text: str) -> Any:
    """Click a link of the email shown in the outbox (it opens a new tab, as from a mail
    client); the new tab, loaded."""
    frame = page.frame_locator("iframe")
    with page.context.expect_page() as popup_info:
        frame.get_by_role("link", name=text).click()
    popup = popup_info.value
    popup.wait_for_load_state()
    return popup
