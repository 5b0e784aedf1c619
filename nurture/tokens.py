"""Signed tokens: every link and reply address nurture issues carries one.

A token names a message (and, for clicks, which link in it) and is signed with HMAC-SHA256
under the secret key, with the token's kind inside the signed bytes so that an unsubscribe
token can never be used as a click token. Tokens are short: 31 characters for a click.

``NURTURE_SECRET_KEY`` may hold several keys, separated by commas: the first signs,
every one verifies. A key is rotated by putting the new one first and keeping the old one
after it while mail signed with it is still read (links, one-click unsubscribe, replies).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from nurture.errors import TokenError

__all__ = ["TokenKind", "Token", "Signer", "split_keys"]

_SIG_BYTES = 12
_LAYOUT = struct.Struct(">cQH")  # kind, message id, link index


def split_keys(value: str) -> list[str]:
    """The keys of ``NURTURE_SECRET_KEY``: separated by commas (not spaces: a passphrase
    keeps working), signing key first; a key repeated counts once."""
    keys = [k.strip() for k in value.split(",") if k.strip()]
    return list(dict.fromkeys(keys))


class TokenKind(StrEnum):
    click = "c"
    unsubscribe = "u"
    open = "o"
    reply = "r"
    bounce = "b"  # the envelope sender (Return-Path) of one message: VERP

    @property
    def in_address(self) -> bool:
        """Tokens that live in an address's local part: lower case, no '-' or '_'."""
        return self in (TokenKind.reply, TokenKind.bounce)


@dataclass(frozen=True)
class Token:
    kind: TokenKind
    message_id: int
    link: int = 0


class Signer:
    """Makes tokens and Message-IDs under the first secret key; checks them under every key.

    ``secret_key``: one key, several in one string (see ``split_keys``), or a list of keys."""

    def __init__(self, secret_key: str | Sequence[str]) -> None:
        keys = split_keys(secret_key) if isinstance(secret_key, str) else list(secret_key)
        if not keys or not all(keys):
            raise ValueError("a secret key is required")
        self._keys = [hashlib.sha256(b"nurture-tokens:" + k.encode()).digest() for k in keys]
        # Keyed once, copied per use.
        self._macs = [hmac.new(key, digestmod=hashlib.sha256) for key in self._keys]

    @property
    def fingerprints(self) -> list[str]:
        """One short name per key, signing key first, that gives the key away no more than a
        token does: how the database remembers which key signed its mail (nurture.keys)."""
        return [hmac.new(k, b"fingerprint", hashlib.sha256).hexdigest()[:12] for k in self._keys]

    def _sig(self, payload: bytes, mac: hmac.HMAC | None = None) -> bytes:
        mac = (mac or self._macs[0]).copy()
        mac.update(payload)
        return mac.digest()[:_SIG_BYTES]

    def make(self, kind: TokenKind, message_id: int, link: int = 0) -> str:
        payload = _LAYOUT.pack(kind.value.encode(), message_id, link)
        return self._encode(payload + self._sig(payload), kind)

    @staticmethod
    def _encode(raw: bytes, kind: TokenKind) -> str:
        if kind.in_address:
            # Reply and bounce tokens live in an address's local part.
            return base64.b32encode(raw).decode().rstrip("=").lower()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def read(self, token: str, kind: TokenKind) -> Token:
        """Decode and verify a token; anything wrong raises TokenError (never another error)."""
        if not isinstance(token, str) or not 10 <= len(token) <= 64:
            raise TokenError("bad token length")
        try:
            if kind.in_address:
                padded = token.upper() + "=" * (-len(token) % 8)
                raw = base64.b32decode(padded)
            else:
                if not re.fullmatch(r"[A-Za-z0-9_-]+", token):
                    raise TokenError("bad token alphabet")
                raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError) as exc:
            raise TokenError("undecodable token") from exc
        if len(raw) != _LAYOUT.size + _SIG_BYTES:
            raise TokenError("bad token size")
        # The last character carries unused bits that decoding ignores: accept only the one
        # spelling we issue, so a token has exactly one valid form.
        if self._encode(raw, kind) != (token.lower() if kind.in_address else token):
            raise TokenError("non-canonical token")
        payload, sig = raw[: _LAYOUT.size], raw[_LAYOUT.size :]
        if not any(hmac.compare_digest(sig, self._sig(payload, mac)) for mac in self._macs):
            raise TokenError("bad signature")
        kind_byte, message_id, link = _LAYOUT.unpack(payload)
        if kind_byte != kind.value.encode():
            raise TokenError("wrong token kind")
        return Token(kind, message_id, link)

    # Message-IDs derive from the message row: <id.signature@domain>. A reply's In-Reply-To
    # or References header then leads back to the row without a lookup table.
    def message_id(self, message_id: int, domain: str) -> str:
        return f"<{message_id}.{self._mid_sig(self._keys[0], message_id)}@{domain}>"

    @staticmethod
    def _mid_sig(key: bytes, message_id: int) -> str:
        return hmac.new(key, b"mid:%d" % message_id, hashlib.sha256).hexdigest()[:16]

    _MID = re.compile(r"<?(\d{1,19})\.([0-9a-f]{16})@[^>\s]+>?")

    def read_message_id(self, header_value: str) -> int | None:
        match = self._MID.fullmatch(header_value.strip())
        if not match:
            return None
        number = int(match.group(1))
        signed = any(
            hmac.compare_digest(self._mid_sig(key, number), match.group(2)) for key in self._keys
        )
        return number if signed else None
