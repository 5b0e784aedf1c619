"""A bulk send never stalls anyone's yes (issue 19, finding 8): while the daemon, as users run
it (its default tick and click window), sends a fresh import's confirmations through a relay
that takes its time, a person waiting at a click step clicks; their click is judged and their
next email goes out before the bulk send is over, on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
from support.daemon import NURTURE, Daemon, e2e_env
from support.faults import Fault, FaultyHandler
from support.mail import visible_links
from support.net import wait_for
from support.paths import DATA
from support.web import BROWSER

from nurture.mail.catcher import SmtpServerThread

BULK = 3000


def test_a_click_during_a_bulk_send_is_answered_before_it_ends(
    tmp_path: Path, database_url: str
) -> None:
    # 20 ms a message over four connections: the bulk takes about 15 s or more.
    handler = FaultyHandler(faults=[Fault("data", delay=0.02)])
    server = SmtpServerThread(handler).start()
    env = e2e_env(
        tmp_path,
        NURTURE_DATABASE_URL=database_url,
        NURTURE_SEQUENCES_DIR=str(DATA / "confirm"),
        NURTURE_SMTP_HOST="127.0.0.1",
        NURTURE_SMTP_PORT=str(server.port),
        NURTURE_API_TOKEN="bulk-token",
        NURTURE_TICK_SECONDS="1",  # the defaults people run
        NURTURE_CLICK_WINDOW_SECONDS="10",
    )
    daemon = Daemon(tmp_path, env)
    daemon.start()
    try:
        r = httpx.post(
            daemon.base + "/subscribe",
            json={"email": "wai@example.com", "first_name": "Wai", "sequence": "prompt",
                  "confirmed": True},
            headers={"Authorization": "Bearer bulk-token"},
        )  # fmt: skip
        assert r.status_code == 201, r.text
        [welcome] = wait_for("Wai's welcome", lambda: handler.to("wai@example.com"), timeout=60)
        delivered = time.monotonic()
        people = tmp_path / "people.csv"
        people.write_text(
            "email,first_name\n" + "".join(f"p{i}@example.com,P{i}\n" for i in range(BULK))
        )
        imported = subprocess.run(
            [str(NURTURE), "import", str(people), "--sequence", "prompt"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert imported.returncode == 0, imported.stderr

        def confirmations() -> int:
            with handler.lock:
                return sum(c.recipient.startswith("p") for c in handler.caught)

        wait_for("the bulk send to start", lambda: confirmations() >= 50, timeout=60)
        # A person reads before they click (a click seconds after delivery is in doubt).
        time.sleep(max(0.0, 5.5 - (time.monotonic() - delivered)))
        assert confirmations() < BULK // 2, "the relay was too quick for this test to mean much"
        link = visible_links(welcome.part("html"))[0]
        r = httpx.get(link, headers=BROWSER, follow_redirects=False)
        assert r.status_code == 302

        def thanked() -> int | None:
            if len(handler.to("wai@example.com")) < 2:
                return None
            return confirmations() + 1  # +1: true even when it came first

        sent_before = wait_for("Wai's next email", thanked, timeout=120) - 1
        assert handler.to("wai@example.com")[1].subject == "Thanks for reading, Wai"
        assert sent_before < BULK, "Wai's next email waited for the whole bulk send"
        wait_for("the bulk send to end", lambda: confirmations() == BULK, timeout=300)
    finally:
        daemon.stop()
        server.stop()
