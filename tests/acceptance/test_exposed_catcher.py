"""The daemon with the built-in catcher on every address (``NURTURE_HTTP_HOST=0.0.0.0``, usual
in a container; issue 20, finding 7): it says so at start, with the fix, and its outbox and
dashboard answer a browser on this machine, not one reaching it from the network."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import httpx
import pytest
from support.daemon import Daemon, e2e_env


def machine_address() -> str | None:
    """An address of this machine that is not loopback (the one its route out leaves from),
    or None where it has none."""
    for far in ("192.0.2.1", "10.255.255.254", "203.0.113.1"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.connect((far, 9))  # UDP: no packet is sent, the route is chosen
            except OSError:
                continue
            address = str(s.getsockname()[0])
        if not ipaddress.ip_address(address).is_loopback:
            return address
    return None


def test_a_catcher_on_every_address_keeps_its_pages_for_this_machine(tmp_path: Path) -> None:
    address = machine_address()
    if address is None:
        pytest.skip("this machine has no address but loopback")
    daemon = Daemon(tmp_path, e2e_env(tmp_path, NURTURE_HTTP_HOST="0.0.0.0"))
    daemon.start()
    try:
        port = daemon.env["NURTURE_HTTP_PORT"]
        outside = f"http://{address}:{port}"
        with httpx.Client(base_url=outside, timeout=10) as stranger:
            # The outbox and the dashboard are not for everyone; the form is.
            for path in ("/outbox", "/admin"):
                assert stranger.get(path).status_code == 401, path
            r = stranger.post("/subscribe", data={"email": "v@example.com", "sequence": "e2e"})
            assert r.status_code == 202
        with httpx.Client(base_url=daemon.base, timeout=10) as operator:
            assert operator.get("/outbox").status_code == 200
        log = daemon.log.read_text()
        assert "NURTURE_HTTP_HOST=0.0.0.0 with the built-in catcher" in log
        assert "NURTURE_ADMIN_PASSWORD" in log and "WARNING" in log
    finally:
        daemon.stop()
