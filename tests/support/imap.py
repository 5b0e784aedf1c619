"""A scripted IMAP server on a loopback port, for what a real server will not do on demand:
answer IDLE with untagged data before its continuation, or refuse one IDLE. Everything else
(login, select, logout) it answers as a server would; replies and mailboxes are tested
against Dovecot (support.dovecot)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

# What the server sends when it receives "TAG IDLE"; {tag} is the command's tag.
IdleScript = Callable[[str], bytes]


class ScriptedImap:
    def __init__(self, idle: IdleScript) -> None:
        self.idle = idle
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.commands: list[str] = []

    def __enter__(self) -> ScriptedImap:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.close()
        self._thread.join(5)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with conn, conn.makefile("rb") as lines:
                conn.sendall(b"* OK [CAPABILITY IMAP4rev1 IDLE] scripted\r\n")
                idle_tag = None
                for raw in lines:
                    line = raw.decode().strip()
                    self.commands.append(line)
                    if line == "DONE" and idle_tag:
                        conn.sendall(f"{idle_tag} OK IDLE done\r\n".encode())
                        idle_tag = None
                        continue
                    tag, _, rest = line.partition(" ")
                    verb = rest.split(" ", 1)[0].upper()
                    if verb == "CAPABILITY":
                        conn.sendall(f"* CAPABILITY IMAP4rev1 IDLE\r\n{tag} OK done\r\n".encode())
                    elif verb in ("LOGIN", "NOOP"):
                        conn.sendall(f"{tag} OK done\r\n".encode())
                    elif verb == "SELECT":
                        selected = "* 0 EXISTS\r\n* OK [UIDVALIDITY 1] ok\r\n"
                        conn.sendall(f"{selected}{tag} OK [READ-WRITE] done\r\n".encode())
                    elif verb == "IDLE":
                        script = self.idle(tag)
                        conn.sendall(script)
                        if b"+ " in script:
                            idle_tag = tag
                    elif verb == "LOGOUT":
                        conn.sendall(f"* BYE bye\r\n{tag} OK done\r\n".encode())
                        break
                    else:
                        conn.sendall(f"{tag} BAD unknown\r\n".encode())
