"""The real ASGI app under uvicorn on a loopback port, and the headers of real clients."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import uvicorn

from support.net import wait_for

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)
# What a person's browser sends when they follow a link from their mail (or press a button).
BROWSER = {
    "User-Agent": CHROME,
    "Accept": "text/html,application/xhtml+xml,*/*;q=0.8",
    "Accept-Language": "en-GB,en;q=0.9",
    "Sec-Fetch-Mode": "navigate",
    "Sec-Fetch-Site": "cross-site",
    "Sec-Fetch-User": "?1",
}


class ServedApp:
    """The real ASGI app under uvicorn, on a free loopback port, in a thread."""

    def __init__(self, app: Any) -> None:
        self.server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=0, log_config=None, lifespan="off", access_log=False
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        wait_for("uvicorn to start", lambda: self.server.started, timeout=10)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@contextlib.contextmanager
def served_client(services: Any) -> Iterator[httpx.Client]:
    """The real app of ``services`` served on loopback, and an HTTP client for it that does
    not follow redirects."""
    from nurture.web.app import create_app

    with (
        ServedApp(create_app(services)) as base,
        httpx.Client(base_url=base, follow_redirects=False, timeout=10) as client,
    ):
        yield client
