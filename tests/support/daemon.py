"""`nurture run` as a user starts it: a subprocess with its own environment and log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from support.net import free_port, wait_for
from support.paths import DATA
from support.web import BROWSER

NURTURE = Path(sys.executable).parent / "nurture"


def clean_env(**values: str) -> dict[str, str]:
    """The test process's environment without any NURTURE_* variable, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_")}
    env.update(values)
    return env


def e2e_env(workdir: Path, **values: str) -> dict[str, str]:
    """The acceptance tests' daemon: SQLite in ``workdir``, the real-time e2e sequence (waits
    in seconds), a fast tick and a one-second click window; plus ``values``."""
    env = {
        "NURTURE_DATABASE_URL": f"sqlite:///{workdir / 'nurture.db'}",
        "NURTURE_SEQUENCES_DIR": str(DATA / "e2e"),
        "NURTURE_TEMPLATES_DIR": str(DATA / "templates"),
        "NURTURE_TICK_SECONDS": "0.2",
        "NURTURE_CLICK_WINDOW_SECONDS": "1",
    }
    return clean_env(**{**env, **values})


class Daemon:
    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = env
        self.env.setdefault("NURTURE_HTTP_PORT", str(free_port()))
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = f"http://127.0.0.1:{env['NURTURE_HTTP_PORT']}"
        self.log = workdir / "daemon.log"

    def start(self, command: list[str] | None = None) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                command or [str(NURTURE), "run"],
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited: {self.log.read_text()[-3000:]}")
            try:
                return httpx.get(self.base + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for("the daemon to answer /healthz", healthy)

    def start_worker(self) -> None:
        """`nurture run --role worker`: no HTTP to ask, so wait for it to say it runs."""
        self.start_role("worker", wait=False)

        def running() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited: {self.log.read_text()[-3000:]}")
            return self.log.exists() and "nurture is running (worker)" in self.log.read_text()

        wait_for("the worker to start", running)

    def start_role(self, role: str, *, wait: bool = True) -> None:
        if wait:
            self.start([str(NURTURE), "run", "--role", role])
            return
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(NURTURE), "run", "--role", role],
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def start_module(self) -> None:
        """Started as `python -m nurture run`."""
        self.start([sys.executable, "-m", "nurture", "run"])

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(30)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def press(http: httpx.Client, url: str) -> None:
    """What a person does with the ask, in their browser: follow the link; on a confirmation,
    press the page's button (a GET alone never confirms)."""
    path = "/" + url.split("/", 3)[3]
    r = http.get(path, follow_redirects=False, headers=BROWSER)
    if r.status_code == 200 and '<form method="post">' in r.text:
        r = http.post(path, data={"confirm": "yes"}, follow_redirects=False, headers=BROWSER)
        assert r.status_code == 303, r.status_code
    else:
        assert r.status_code == 302, r.status_code
