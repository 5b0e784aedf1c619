"""Click benchmark: how fast `GET /c/{token}` answers under load, next to a bare Starlette
redirect on the same server settings, in the same run.

* ``bare``: a Starlette app with one route that answers 302 to a fixed URL with
  ``Cache-Control: no-store``, served by uvicorn as ``nurture run`` serves its app (one
  process, no access log, no server header, no lifespan).
* ``nurture``: `nurture run --role web` on a database holding N people whose welcome email
  was sent (so their links are stored); wrk requests their real tracked links at random, with
  a browser's headers, so every request is a click that is checked, judged and written.

wrk drives both (``-t2 -c64 -d8s``, its latency percentiles), after a 2 s warm-up of each
(nurture reads each email from the database at its first click only). After the nurture side the
script counts the click events in the database: every click wrk saw answered must be there
(a click is answered only once its row is committed). Each side runs ``--repeat`` times,
alternating; the ratio is taken per pair, and the median pair is shown.

Run: ``.venv/bin/python bench/clicks.py [--n 500] [--database URL] [--seconds 8]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from daemons import NURTURE, nurture_env, serving
from send import ROOT, describe_database, free_port, fresh_database
from sqlalchemy import create_engine, text

from nurture.clock import SystemClock
from nurture.config import Settings
from nurture.db.migrate import upgrade
from nurture.errors import SendError
from nurture.services import build_services
from nurture.tokens import TokenKind

SECRET = "bench-secret-key"
CHROME = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
BARE_APP = textwrap.dedent(
    """
    import sys, uvicorn
    from starlette.applications import Starlette
    from starlette.responses import RedirectResponse
    from starlette.routing import Route

    async def click(request):
        return RedirectResponse(
            "https://acme.example/post", status_code=302, headers={"Cache-Control": "no-store"}
        )

    app = Starlette(routes=[Route("/c/{token}", click, methods=["GET", "HEAD", "POST"])])
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_config=None,
                access_log=False, lifespan="off", server_header=False)
    """
)


class _Accept:
    """A relay that takes every email at once: the bench needs sent emails, not SMTP."""

    size = 4

    def connection(self) -> AbstractAsyncContextManager[_Accept]:
        return contextlib.nullcontext(self)  # type: ignore[return-value]

    async def send(self, sender: str, recipient: str, data: bytes) -> SendError | None:
        return None

    async def close(self) -> None:
        return None


@dataclass
class Load:
    side: str
    requests: int
    per_second: float
    p50_ms: float
    p99_ms: float
    errors: int


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit("wrk is missing: apt-get install wrk")
    print("installing Debian's wrk for the benchmark", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, env=env)
    return shutil.which("wrk") or "/usr/bin/wrk"


def prepare(url: str, n: int, workdir: Path) -> list[str]:
    """N people whose welcome email went out; the paths of their first visible link."""
    import asyncio

    upgrade(url)
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=url,
        sequences_dir=ROOT / "sequences",
        templates_dir=ROOT / "templates",
        data_dir=workdir,
        secret_key=SECRET,
        base_url="https://news.acme.example",
    )
    clock = SystemClock()
    services = build_services(settings, clock=clock, transport=_Accept())
    try:
        then = clock.now() - timedelta(hours=1)
        for i in range(n):
            services.subscriptions.subscribe(
                email=f"clicker{i:05d}@example.com",
                sequence_id="starter",
                fields={"first_name": "Ada"},
                now=then,
                confirmed=True,
            )
        asyncio.run(services.dispatcher.run_once(max_batches=n // 200 + 5))
        paths = []
        with services.store.transaction() as tx:
            for message_id in range(1, 10 * n):
                message = tx.outbox.get(message_id)
                if message is None:
                    break
                index = next(i for i, link in enumerate(message.links) if not link.honeypot)
                token = services.signer.make(TokenKind.click, message.id, link=index)
                paths.append(f"/c/{token}")
        if len(paths) != n:
            raise SystemExit(f"expected {n} sent emails, found {len(paths)}")
        return paths
    finally:
        services.store.dispose()


def lua_script(paths: list[str], workdir: Path) -> Path:
    script = workdir / "clicks.lua"
    listed = ",\n".join(f'  "{p}"' for p in paths)
    script.write_text(
        f"local paths = {{\n{listed}\n}}\n"
        "math.randomseed(os.time())\n"
        "request = function()\n"
        "  return wrk.format('GET', paths[math.random(#paths)])\n"
        "end\n"
    )
    return script


def wrk(binary: str, port: int, script: Path, seconds: int, side: str) -> Load:
    out = subprocess.run(
        [binary, "-t2", "-c64", f"-d{seconds}s", "--latency", "-s", str(script),
         "-H", f"User-Agent: {CHROME}", "-H", "Accept-Language: en-GB,en;q=0.9",
         "-H", "Sec-Fetch-Mode: navigate", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip

    def millis(label: str) -> float:
        found = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\b", out, re.M)
        assert found, out
        value, unit = float(found.group(1)), found.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    total = re.search(r"(\d+) requests in", out)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    assert total and rate, out
    failed = int(bad.group(1)) if bad else 0
    failed += sum(int(x) for x in errors.groups()) if errors else 0
    return Load(
        side, int(total.group(1)), float(rate.group(1)), millis("50%"), millis("99%"), failed
    )


def profile(pid: int, seconds: int, workdir: Path) -> subprocess.Popen[bytes]:
    """py-spy (pip install py-spy) sampling the web process while wrk runs."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = workdir / "stacks.txt"
    return subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--duration", str(seconds), "--format", "raw",
         "--output", str(out), "--nonblocking", "--threads"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def hotspots(stacks: Path, top: int = 25) -> str:
    """Where the web process's samples were: by frame (inclusive), the top ones."""
    inclusive: dict[str, int] = {}
    total = 0
    for line in stacks.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        total += int(count)
        for frame in set(frames.split(";")):
            name = re.sub(r" \(.*?/(site-packages|nurture|lib/python3\.\d+)/", " (", frame)
            inclusive[name] = inclusive.get(name, 0) + int(count)
    best = sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]
    return "\n".join(f"{100 * n / total:5.1f}%  {name}" for name, n in best)


def clicks_recorded(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(text("SELECT count(*) FROM events WHERE kind = 'click'")).scalar() or 0
            )
    finally:
        engine.dispose()


def main(args: argparse.Namespace) -> int:
    binary = ensure_wrk()
    workdir = Path(tempfile.mkdtemp(prefix="nurture-bench-clicks-"))
    where = describe_database(args.database)
    print(f"database: {where}; N={args.n} people; wrk -t2 -c64 -d{args.seconds}s")
    pairs: list[tuple[Load, Load, int]] = []
    with fresh_database(args.database, workdir, 0) as url:
        paths = prepare(url, args.n, workdir)
        random.shuffle(paths)
        script = lua_script(paths, workdir)
        # The whole path for every click: no flood limit summarising (bench/storm.py
        # measures that).
        limits = {"NURTURE_CLICK_FLOOD_LIMIT": "1000000", "NURTURE_CLIENT_FLOOD_LIMIT": "1000000"}
        for run in range(args.repeat):
            port = free_port()
            bare_cmd = [sys.executable, "-c", BARE_APP, str(port)]
            with serving(bare_cmd, port, nurture_env(url, workdir, port), workdir / "bare.log"):
                wrk(binary, port, script, args.warmup, "bare")
                bare = wrk(binary, port, script, args.seconds, "bare")
            port = free_port()
            web = [NURTURE, "run", "--role", "web"]
            env = nurture_env(url, workdir, port, secret=SECRET, **limits)
            with serving(web, port, env, workdir / "web.log") as proc:
                # Each email's first click reads it from the database: warm up first.
                wrk(binary, port, script, args.warmup, "nurture")
                before = clicks_recorded(url)
                spy = profile(proc.pid, args.seconds, workdir) if args.profile else None
                ours = wrk(binary, port, script, args.seconds, "nurture")
                if spy is not None:
                    spy.wait(60)
                    print(hotspots(workdir / "stacks.txt"))
                    shutil.copy(workdir / "stacks.txt", Path(tempfile.gettempdir()) / "stacks.txt")
            recorded = clicks_recorded(url) - before
            pairs.append((bare, ours, recorded))
            print(
                f"run {run + 1}: bare {bare.per_second:7.0f} req/s p99 {bare.p99_ms:6.1f} ms | "
                f"nurture {ours.per_second:7.0f} req/s p50 {ours.p50_ms:5.1f} ms p99 "
                f"{ours.p99_ms:6.1f} ms, {ours.errors} errors, {recorded} clicks recorded for "
                f"{ours.requests} answered | ratio {ours.per_second / bare.per_second:.2f}"
            )
            if recorded < ours.requests - ours.errors:
                print(f"  LOST: {ours.requests - recorded} answered clicks are not in the database")
    ratios = sorted(o.per_second / b.per_second for b, o, _ in pairs)
    median = statistics.median(ratios)
    bare, ours, _ = min(pairs, key=lambda p: abs(p[1].per_second / p[0].per_second - median))
    print(
        f"\nmedian pair: bare {bare.per_second:.0f} req/s (p99 {bare.p99_ms:.1f} ms), nurture "
        f"{ours.per_second:.0f} req/s (p50 {ours.p50_ms:.1f} ms, p99 {ours.p99_ms:.1f} ms); "
        f"ratio {median:.2f} (range {ratios[0]:.2f}-{ratios[-1]:.2f})"
    )
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=500, help="people, each with a tracked link")
    p.add_argument("--database", default="sqlite", help="sqlite (a temporary file) or a URL")
    p.add_argument("--seconds", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2, help="seconds of load before each measure")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--profile", action="store_true", help="py-spy the web process's hot frames")
    return p.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
