"""What one process of nurture holds for its life: on SQLite, the lock that keeps a second
worker off the same file; for the web app, the HTTP socket, bound before anything starts."""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from typing import IO

from nurture.db.connect import sqlite_file
from nurture.errors import ConfigError

__all__ = ["lock_sqlite_file", "listen"]


def lock_sqlite_file(url: str) -> IO[str] | None:
    """One daemon per SQLite file: a lock beside it, held while the daemon runs."""
    database = sqlite_file(url)  # its folder exists and is writable, or a DatabaseError
    if database is None:
        return None
    path = str(database)
    lock_path = Path(path + ".lock")
    try:
        # Owner only, like the database: it names the daemon's pid.
        handle = os.fdopen(os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600), "a+")
    except OSError as exc:
        raise ConfigError(
            f"cannot create the lock file {lock_path}: {exc.strerror or exc}; its folder must "
            "be writable by nurture"
        ) from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise ConfigError(
            f"another nurture daemon is running on {path} (pid {holder}); stop it first "
            "(one daemon per SQLite file; use PostgreSQL for several)"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def listen(host: str, port: int, *, shared: bool = False) -> socket.socket:
    """The HTTP socket, bound before anything else starts. ``shared``: several web processes
    may listen on the same port (SO_REUSEPORT; the kernel spreads the connections)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if shared:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port} (NURTURE_HTTP_HOST/NURTURE_HTTP_PORT): "
            f"{exc.strerror or exc}"
        ) from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock
