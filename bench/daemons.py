"""What the benchmarks that start `nurture run` share: its environment and a context that
starts it, waits for /healthz, and stops it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from send import ROOT

__all__ = ["NURTURE", "nurture_env", "serving"]

NURTURE = str(Path(sys.executable).parent / "nurture")


def nurture_env(
    url: str,
    workdir: Path,
    port: int,
    *,
    secret: str = "bench-key",
    sequences: Path = ROOT / "sequences",
    **extra: str,
) -> dict[str, str]:
    """This process's environment without NURTURE_*, plus a daemon's settings: the database,
    the shipped templates, ``sequences``, a quiet log, and ``extra`` (NURTURE_ names)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_")}
    return env | {
        "NURTURE_DATABASE_URL": url,
        "NURTURE_SEQUENCES_DIR": str(sequences),
        "NURTURE_TEMPLATES_DIR": str(ROOT / "templates"),
        "NURTURE_DATA_DIR": str(workdir),
        "NURTURE_SECRET_KEY": secret,
        "NURTURE_HTTP_PORT": str(port),
        "NURTURE_LOG_LEVEL": "WARNING",
        **extra,
    }


@contextlib.contextmanager
def serving(
    command: list[str], port: int, env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` until the block ends, once it answers HTTP on ``port``."""
    with log.open("ab") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited: {log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                # Any answer: the server is up (a bare baseline app has no /healthz).
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            if time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        proc.wait(60)
