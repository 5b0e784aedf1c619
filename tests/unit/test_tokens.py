"""Signed tokens and Message-IDs: round trips, and every kind of bad input ends in TokenError."""

from __future__ import annotations

import base64
import re
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nurture.errors import TokenError
from nurture.tokens import Signer, Token, TokenKind, split_keys

SIGNER = Signer("test-secret-key")
B64_ALPHABET = string.ascii_letters + string.digits + "-_"
B32_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"


def alphabet_of(kind: TokenKind) -> str:
    return B32_ALPHABET if kind.in_address else B64_ALPHABET


def raw_bytes(token: str, kind: TokenKind) -> bytes:
    if kind.in_address:
        return base64.b32decode(token.upper() + "=" * (-len(token) % 8))
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def encode(raw: bytes, kind: TokenKind) -> str:
    if kind.in_address:
        return base64.b32encode(raw).decode().rstrip("=").lower()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# ---------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("kind", list(TokenKind))
@pytest.mark.parametrize(
    ("message_id", "link"), [(0, 0), (1, 0), (42, 3), (123_456_789, 7), (2**64 - 1, 2**16 - 1)]
)
def test_round_trip(kind: TokenKind, message_id: int, link: int) -> None:
    token = SIGNER.make(kind, message_id, link)
    assert SIGNER.read(token, kind) == Token(kind, message_id, link)


def test_link_defaults_to_zero() -> None:
    token = SIGNER.make(TokenKind.open, 9)
    assert SIGNER.read(token, TokenKind.open) == Token(TokenKind.open, 9, 0)


@pytest.mark.parametrize("kind", [TokenKind.click, TokenKind.unsubscribe, TokenKind.open])
def test_url_tokens_are_url_safe_and_short(kind: TokenKind) -> None:
    token = SIGNER.make(kind, 2**64 - 1, 2**16 - 1)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)
    assert len(token) == 31


def test_same_input_same_token_and_different_links_differ() -> None:
    assert SIGNER.make(TokenKind.click, 5, 1) == SIGNER.make(TokenKind.click, 5, 1)
    assert SIGNER.make(TokenKind.click, 5, 1) != SIGNER.make(TokenKind.click, 5, 2)


@pytest.mark.parametrize("message_id", [0, 1, 77, 2**40, 2**64 - 1])
def test_reply_tokens_fit_an_address_local_part(message_id: int) -> None:
    token = SIGNER.make(TokenKind.reply, message_id)
    assert re.fullmatch(r"[a-z2-7]+", token)


@pytest.mark.parametrize("change", [str.upper, str.lower, str.title, str.swapcase])
def test_reply_tokens_survive_case_changes(change: object) -> None:
    token = SIGNER.make(TokenKind.reply, 4242)
    changed = change(token)  # type: ignore[operator]
    assert SIGNER.read(changed, TokenKind.reply) == Token(TokenKind.reply, 4242, 0)


def test_secret_key_is_required() -> None:
    with pytest.raises(ValueError):
        Signer("")


# ---------------------------------------------------------------------------------------------
# Forgery and damage


@pytest.mark.parametrize("kind", list(TokenKind))
def test_forged_signature_is_rejected(kind: TokenKind) -> None:
    raw = raw_bytes(SIGNER.make(kind, 1000, 2), kind)
    forged = encode(raw[:-1] + bytes([raw[-1] ^ 0x01]), kind)
    with pytest.raises(TokenError):
        SIGNER.read(forged, kind)


@pytest.mark.parametrize("kind", list(TokenKind))
def test_changed_payload_with_old_signature_is_rejected(kind: TokenKind) -> None:
    raw = raw_bytes(SIGNER.make(kind, 1000, 2), kind)
    # Byte 8 is the low byte of the message id: 1000 -> 1001, signature unchanged.
    forged = encode(raw[:8] + bytes([raw[8] ^ 0x01]) + raw[9:], kind)
    with pytest.raises(TokenError):
        SIGNER.read(forged, kind)


@pytest.mark.parametrize("kind", list(TokenKind))
def test_truncated_and_extended_tokens_are_rejected(kind: TokenKind) -> None:
    token = SIGNER.make(kind, 31337, 4)
    for n in range(len(token)):
        with pytest.raises(TokenError):
            SIGNER.read(token[:n], kind)
    for extra in ("a", "aa", "aaaa", "aaaaaaaa"):
        with pytest.raises(TokenError):
            SIGNER.read(token + extra, kind)


@pytest.mark.parametrize("kind", list(TokenKind))
def test_one_changed_character_before_the_last_is_rejected(kind: TokenKind) -> None:
    token = SIGNER.make(kind, 31337, 4)
    for i in range(len(token) - 1):
        for c in alphabet_of(kind):
            if c == token[i].lower() or c == token[i]:
                continue
            with pytest.raises(TokenError):
                SIGNER.read(token[:i] + c + token[i + 1 :], kind)


@pytest.mark.parametrize("kind", list(TokenKind))
def test_one_changed_last_character_is_rejected(kind: TokenKind) -> None:
    token = SIGNER.make(kind, 123_456_789, 7)
    accepted = []
    for c in alphabet_of(kind):
        if c == token[-1]:
            continue
        try:
            SIGNER.read(token[:-1] + c, kind)
        except TokenError:
            continue
        accepted.append(c)
    assert accepted == []


JUNK = [
    "",
    "abc",
    "../../etc",
    "../../etc/passwd",
    "%00",
    "%00%00%00%00%00",
    "\x00" * 31,
    "a" * 10_000,
    "A" * 31,
    "a" * 37,
    "é" * 31,
    "токен-токен-токен-токен-токен",
    "😀" * 20,
    " " * 31,
    "=" * 31,
    "YwAAAAAHW80VAAdZKLvo54CygytPmQ8=",  # padding is never part of a token
    "YwAAAAAHW80VAAdZ KLvo54CygytPmQ8",
    "YwAAAAAHW80VAAdZKLvo54CygytPmQ8\n",
    "YwAAAAAHW80VAAdZ+Lvo54CygytPmQ8",  # '+' and '/' are not the URL-safe alphabet
    "<script>alert(1)</script>",
]


@pytest.mark.parametrize("kind", list(TokenKind))
@pytest.mark.parametrize("junk", JUNK, ids=lambda j: repr(j[:20]))
def test_junk_is_rejected_with_token_error(junk: str, kind: TokenKind) -> None:
    with pytest.raises(TokenError):
        SIGNER.read(junk, kind)


@pytest.mark.parametrize("kind", list(TokenKind))
@pytest.mark.parametrize("value", [None, 12345, b"YwAAAAAHW80VAAdZKLvo54CygytPmQ8", ["x"]])
def test_non_strings_are_rejected_with_token_error(value: object, kind: TokenKind) -> None:
    with pytest.raises(TokenError):
        SIGNER.read(value, kind)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("made", "read_as"), [(a, b) for a in TokenKind for b in TokenKind if a is not b]
)
def test_token_of_another_kind_is_rejected(made: TokenKind, read_as: TokenKind) -> None:
    token = SIGNER.make(made, 55, 1)
    with pytest.raises(TokenError):
        SIGNER.read(token, read_as)


def test_unsubscribe_token_cannot_be_used_as_click() -> None:
    token = SIGNER.make(TokenKind.unsubscribe, 55)
    with pytest.raises(TokenError, match="kind"):
        SIGNER.read(token, TokenKind.click)


@pytest.mark.parametrize("kind", list(TokenKind))
def test_token_signed_with_another_key_is_rejected(kind: TokenKind) -> None:
    token = Signer("another-secret-key").make(kind, 55, 1)
    with pytest.raises(TokenError):
        SIGNER.read(token, kind)


@settings(database=None, max_examples=500)
@given(st.text(), st.sampled_from(list(TokenKind)))
def test_read_of_any_text_returns_a_token_or_raises_token_error(text: str, kind: TokenKind) -> None:
    try:
        result = SIGNER.read(text, kind)
    except TokenError:
        return
    assert isinstance(result, Token)


@settings(database=None, max_examples=500)
@given(
    st.text(alphabet=B64_ALPHABET + B32_ALPHABET.upper() + "=", min_size=10, max_size=64),
    st.sampled_from(list(TokenKind)),
)
def test_read_of_token_alphabet_text_only_raises_token_error(text: str, kind: TokenKind) -> None:
    # Text in the right alphabet and length gets past the cheap checks into base64 decoding.
    try:
        result = SIGNER.read(text, kind)
    except TokenError:
        return
    assert isinstance(result, Token)


@settings(database=None, max_examples=300)
@given(
    st.sampled_from(list(TokenKind)),
    st.integers(min_value=0, max_value=30),
    st.text(alphabet=B64_ALPHABET, max_size=3),
    st.integers(min_value=0, max_value=3),
)
def test_mangled_real_tokens_only_raise_token_error(
    kind: TokenKind, at: int, insert: str, delete: int
) -> None:
    token = SIGNER.make(kind, 987_654, 3)
    mangled = token[:at] + insert + token[at + delete :]
    try:
        result = SIGNER.read(mangled, kind)
    except TokenError:
        return
    # A token has one spelling (reply tokens: in any case), so only the untouched token decodes.
    assert result == Token(kind, 987_654, 3)
    if kind.in_address:
        assert mangled.lower() == token
    else:
        assert mangled == token


# ---------------------------------------------------------------------------------------------
# Message-IDs


@pytest.mark.parametrize("message_id", [0, 1, 42, 2**63 - 1])
def test_message_id_round_trip(message_id: int) -> None:
    header = SIGNER.message_id(message_id, "acme.example")
    assert re.fullmatch(r"<\d+\.[0-9a-f]{16}@acme\.example>", header)
    assert SIGNER.read_message_id(header) == message_id
    assert SIGNER.read_message_id(f"  {header}\r\n") == message_id
    assert SIGNER.read_message_id(header.strip("<>")) == message_id


def test_tampered_message_id_returns_none() -> None:
    header = SIGNER.message_id(42, "acme.example")
    number, rest = header[1:].split(".", 1)
    sig = rest[:16]
    other_sig = ("0" if sig[0] != "0" else "1") + sig[1:]
    assert SIGNER.read_message_id(f"<43.{sig}@acme.example>") is None
    assert SIGNER.read_message_id(f"<{number}.{other_sig}@acme.example>") is None
    assert SIGNER.read_message_id(f"<{number}.{sig[:-1]}@acme.example>") is None


def test_message_id_from_another_key_returns_none() -> None:
    header = Signer("another-secret-key").message_id(42, "acme.example")
    assert SIGNER.read_message_id(header) is None


@pytest.mark.parametrize(
    "value",
    ["", "<>", "<42@acme.example>", "<CAF=abc123@mail.gmail.com>", "42", "<a.b@c>", "garbage"],
)
def test_foreign_message_ids_return_none(value: str) -> None:
    assert SIGNER.read_message_id(value) is None


@settings(database=None, max_examples=500)
@given(st.text())
def test_read_message_id_of_arbitrary_text_returns_none(text: str) -> None:
    assert SIGNER.read_message_id(text) is None


# ---------------------------------------------------------------------------------------------
# Several keys (issue 20): the first signs, every one verifies


@pytest.mark.parametrize("kind", list(TokenKind))
def test_a_rotated_key_still_verifies_what_the_old_one_signed(kind: TokenKind) -> None:
    old, rotated, replaced = Signer("key-a"), Signer("key-b, key-a"), Signer("key-b")
    token = old.make(kind, 42, 3)
    assert rotated.read(token, kind) == Token(kind, 42, 3)
    with pytest.raises(TokenError):
        replaced.read(token, kind)
    # New tokens are signed with the first key: the old one alone does not read them.
    assert replaced.read(rotated.make(kind, 7), kind) == Token(kind, 7, 0)
    with pytest.raises(TokenError):
        old.read(rotated.make(kind, 7), kind)


def test_a_rotated_key_still_reads_the_old_message_ids() -> None:
    old, rotated, replaced = Signer("key-a"), Signer(["key-b", "key-a"]), Signer("key-b")
    mid = old.message_id(42, "acme.example")
    assert rotated.read_message_id(mid) == 42
    assert replaced.read_message_id(mid) is None
    assert rotated.message_id(42, "acme.example") == replaced.message_id(42, "acme.example")


def test_keys_are_separated_by_commas_only() -> None:
    assert split_keys(" new ,old,,new ") == ["new", "old"]
    # A passphrase with spaces stays one key, as it was before keys could be several.
    assert split_keys("correct horse battery") == ["correct horse battery"]
    assert Signer("a,b").fingerprints == [Signer("a").fingerprints[0], Signer("b").fingerprints[0]]
    with pytest.raises(ValueError):
        Signer(" , ")
