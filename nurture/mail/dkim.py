"""DKIM signing (RFC 6376, with dkimpy): every email signed by the sender's domain, so
receivers that ask for authentication (Gmail, Yahoo, Microsoft) take it.

Keys are PEM files: RSA (2048 bits or more), Ed25519 (RFC 8463), or one of each (two
signatures under two selectors, for receivers that do not know Ed25519 yet). Signed headers
include From, To, Subject, Date, Message-ID, MIME-Version, Content-Type, both
List-Unsubscribe headers (Gmail wants them under the signature for one-click), and Reply-To,
List-Id and Feedback-ID when present; relaxed/relaxed canonicalization. ``keygen`` writes a
key pair without any third-party crypto library: ``openssl`` for RSA, PyNaCl for Ed25519;
``check_records`` looks the published records up (dnspython) and says whether each holds
its key.
"""

from __future__ import annotations

import base64
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import dkim

from nurture.config import Settings
from nurture.errors import ConfigError

__all__ = [
    "DkimKey",
    "DkimSigner",
    "load_key",
    "keygen",
    "dns_record",
    "dns_lookup",
    "check_records",
    "SIGNED",
]

SIGNED = (
    b"from",
    b"to",
    b"subject",
    b"date",
    b"message-id",
    b"mime-version",
    b"content-type",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
    b"reply-to",
    b"list-id",
    b"feedback-id",
)
# PKCS#8 DER of an Ed25519 private key: this prefix, then the 32-byte seed (RFC 8410).
_ED25519_PREFIX = bytes.fromhex("302e020100300506032b657004220420")
_PEM = re.compile(rb"-----BEGIN ([A-Z ]+)-----(.*?)-----END \1-----", re.S)


@dataclass(frozen=True)
class DkimKey:
    algorithm: bytes  # b"rsa-sha256" or b"ed25519-sha256"
    private: bytes  # what dkim.sign takes: the PEM for RSA, the base64 seed for Ed25519
    source: str


def load_key(path: Path) -> DkimKey:
    """A PEM private key; ConfigError naming the file when it is not one."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"NURTURE_DKIM_PRIVATE_KEY_FILE: cannot read {path}: {exc}") from None
    match = _PEM.search(data)
    if match is None:
        raise ConfigError(f"NURTURE_DKIM_PRIVATE_KEY_FILE: {path} is not a PEM private key")
    kind, body = match.group(1), base64.b64decode(b"".join(match.group(2).split()))
    if kind == b"PRIVATE KEY" and body.startswith(_ED25519_PREFIX) and len(body) == 48:
        return DkimKey(b"ed25519-sha256", base64.b64encode(body[16:]), str(path))
    if kind in (b"RSA PRIVATE KEY", b"PRIVATE KEY"):
        return DkimKey(b"rsa-sha256", data, str(path))
    raise ConfigError(
        f"NURTURE_DKIM_PRIVATE_KEY_FILE: {path}: a {kind.decode()} is not RSA or Ed25519"
    )


class DkimSigner:
    """Signs with each key under its own selector (one DNS record each: RSA and Ed25519 at
    once need two selectors, RFC 8463 section 4)."""

    def __init__(
        self, selector: str | Sequence[str], keys: Sequence[DkimKey], domain: str | None = None
    ) -> None:
        selectors = [selector] if isinstance(selector, str) else list(selector)
        if len(selectors) != len(keys):
            raise ConfigError(
                f"NURTURE_DKIM_SELECTOR names {len(selectors)} selector(s) for {len(keys)} "
                "key(s): each key needs its own selector (one DNS record each), in the order "
                "of NURTURE_DKIM_PRIVATE_KEY_FILE, e.g. rsa2026,ed2026"
            )
        self.signing = tuple(zip(selectors, keys, strict=True))
        self.domain = domain

    @classmethod
    def from_settings(cls, settings: Settings) -> DkimSigner | None:
        """The signer the settings ask for, or None; ConfigError for a half-done setup."""
        if not settings.dkim_selector and not settings.dkim_private_key_file:
            return None
        if not settings.dkim_selector or not settings.dkim_private_key_file:
            raise ConfigError(
                "DKIM needs both NURTURE_DKIM_SELECTOR and NURTURE_DKIM_PRIVATE_KEY_FILE"
            )
        files = [Path(p.strip()) for p in settings.dkim_private_key_file.split(",") if p.strip()]
        keys = [load_key(p) for p in files]
        if len({k.algorithm for k in keys}) != len(keys):
            raise ConfigError("NURTURE_DKIM_PRIVATE_KEY_FILE: at most one RSA and one Ed25519 key")
        selectors = [x.strip() for x in settings.dkim_selector.split(",") if x.strip()]
        return cls(selectors, keys, settings.dkim_domain)

    def sign(self, message: bytes, *, sender_domain: str) -> bytes:
        """``message`` (LF line ends, as composed) with a DKIM-Signature per key on top."""
        domain = (self.domain or sender_domain).encode("ascii")
        wire = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        headers = []
        for selector, key in self.signing:
            signature = dkim.sign(
                wire,
                selector.encode("ascii"),
                domain,
                key.private,
                canonicalize=(b"relaxed", b"relaxed"),
                signature_algorithm=key.algorithm,
                include_headers=[h for h in SIGNED if _has(wire, h)],
            )
            headers.append(signature.replace(b"\r\n", b"\n"))
        return b"".join(headers) + message


def _has(wire: bytes, name: bytes) -> bool:
    head = wire.split(b"\r\n\r\n", 1)[0].lower()
    return head.startswith(name + b":") or (b"\r\n" + name + b":") in head


def dns_record(key: DkimKey) -> str:
    """The TXT record's value to publish at SELECTOR._domainkey.DOMAIN."""
    if key.algorithm == b"ed25519-sha256":
        import nacl.signing

        seed = base64.b64decode(key.private)
        public = bytes(nacl.signing.SigningKey(seed).verify_key)
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(public).decode()}"
    out = subprocess.run(
        ["openssl", "rsa", "-pubout", "-outform", "DER"],
        input=key.private,
        capture_output=True,
        check=True,
    ).stdout
    return f"v=DKIM1; k=rsa; p={base64.b64encode(out).decode()}"


def keygen(path: Path, algorithm: str = "rsa", *, bits: int = 2048) -> DkimKey:
    """Write a new private key (mode 600) to ``path`` and return it."""
    if algorithm == "ed25519":
        import nacl.signing

        seed = bytes(nacl.signing.SigningKey.generate())
        der = base64.encodebytes(_ED25519_PREFIX + seed).decode()
        pem = f"-----BEGIN PRIVATE KEY-----\n{der}-----END PRIVATE KEY-----\n".encode()
    else:
        pem = subprocess.run(
            ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{bits}"],
            capture_output=True,
            check=True,
        ).stdout
    path.touch(mode=0o600, exist_ok=False)
    path.write_bytes(pem)
    return load_key(path)


Lookup = Callable[[str], list[str]]  # a DNS name -> its TXT records' texts


def dns_lookup(resolver: str | None = None, *, timeout: float = 5.0) -> Lookup:
    """TXT records by dnspython: from the system's resolver, or from ``HOST[:PORT]``."""
    import dns.exception
    import dns.resolver

    r = dns.resolver.Resolver(configure=resolver is None)
    if resolver is not None:
        host, _, port = resolver.partition(":")
        r.nameservers = [host]
        r.port = int(port or 53)
    r.lifetime = timeout

    def lookup(name: str) -> list[str]:
        try:
            answer = r.resolve(name, "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as exc:
            raise OSError(f"cannot look up {name}: {exc}") from exc
        return [b"".join(rdata.strings).decode("ascii", "replace") for rdata in answer]

    return lookup


def _tags(record: str) -> dict[str, str]:
    pairs = (t.strip().split("=", 1) for t in record.split(";") if "=" in t)
    return {k.strip(): "".join(v.split()) for k, v in pairs}


def check_records(signer: DkimSigner, domains: Sequence[str], lookup: Lookup) -> list[str]:
    """One line per (selector, domain): whether its published record holds this key; lines
    starting "ok" are fine, any other is a problem to fix."""
    out = []
    for selector, key in signer.signing:
        want = _tags(dns_record(key))
        for domain in domains:
            name = f"{selector}._domainkey.{domain.rstrip('.')}"
            try:
                found = [_tags(t) for t in lookup(name) if "p=" in t]
            except OSError as exc:
                out.append(f"unknown  {name}: {exc}")
                continue
            if not found:
                out.append(f'missing  {name}: no DKIM record; publish: "{dns_record(key)}"')
            elif len(found) > 1:
                out.append(f"ambiguous  {name}: {len(found)} DKIM records; keep only this key's")
            elif found[0].get("p") == want["p"] and found[0].get("k", "rsa") == want["k"]:
                out.append(f"ok  {name}: the published {want['k']} key is this key")
            else:
                out.append(
                    f"mismatch  {name}: the published key is not {key.source}; publish: "
                    f'"{dns_record(key)}"'
                )
    return out
