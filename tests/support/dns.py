"""A tiny real DNS server for the tests (UDP on 127.0.0.1, built with dnspython): it answers
TXT queries from a dict and NXDOMAIN for every other name, so `nurture dkim check` asks a
real resolver over the network stack without leaving the machine."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


@contextmanager
def txt_server(records: dict[str, list[str]]) -> Iterator[str]:
    """Serve ``records`` (name -> TXT texts); yields "127.0.0.1:PORT"."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                wire, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(wire)
            reply = dns.message.make_response(query)
            question = query.question[0]
            name = question.name.to_text().rstrip(".").lower()
            texts = records.get(name)
            if texts is None:
                reply.set_rcode(dns.rcode.NXDOMAIN)
            elif question.rdtype == dns.rdatatype.TXT:
                # Long values are split into 255-byte strings, as real zones hold them.
                quoted = [
                    " ".join(f'"{t[i : i + 255]}"' for i in range(0, len(t), 255)) for t in texts
                ]
                reply.answer.append(
                    dns.rrset.from_text_list(question.name, 300, dns.rdataclass.IN, "TXT", quoted)
                )
            sock.sendto(reply.to_wire(), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        sock.close()
