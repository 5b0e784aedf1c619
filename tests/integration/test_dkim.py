"""Mail that arrives: every email DKIM-signed (RSA, Ed25519, or both), verified with dkimpy
against the published records served by a lookup function (no network); List-Id, Feedback-ID
and the EHLO name as a real SMTP server (aiosmtpd) sees them."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import dkim
import pytest
from support.dns import txt_server
from support.paths import DATA
from support.world import MakeWorld, World

from nurture.errors import ConfigError
from nurture.mail.dkim import DkimSigner, dns_record, keygen, load_key

NURTURE = Path(sys.executable).parent / "nurture"


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    keygen(tmp_path / "rsa.pem")
    keygen(tmp_path / "ed.pem", "ed25519")
    return {"rsa": tmp_path / "rsa.pem", "ed": tmp_path / "ed.pem"}


def verify_all(data: bytes, dkim_records: dict[str, bytes]) -> int:
    """Verify each DKIM-Signature of the message against the records published by name
    (``s1._domainkey.acme.example``); how many pass."""
    wire = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return dkim_records.get(name.decode().rstrip("."))

    passed = 0
    for index in range(wire.count(b"DKIM-Signature:")):
        with contextlib.suppress(dkim.ValidationError):  # a body hash that does not match
            passed += bool(dkim.DKIM(wire).verify(idx=index, dnsfunc=dnsfunc))
    return passed


@pytest.mark.parametrize("which", ["rsa", "ed", "both"])
def test_every_email_is_signed_and_verifies(
    make_world: MakeWorld, keys: dict[str, Path], which: str
) -> None:
    chosen = [keys["rsa"], keys["ed"]] if which == "both" else [keys[which]]
    selectors = ["s1", "e1"][: len(chosen)]
    world: World = make_world(
        dkim_selector=",".join(selectors),
        dkim_private_key_file=",".join(str(p) for p in chosen),
        feedback_id="nurture:journey",
        smtp_helo="mail.acme.example",
    )
    # A non-ASCII name: an encoded subject, a quoted-printable body.
    world.subscribe("zoe@example.com", fields={"first_name": "Zoë"})
    world.tick()
    [mail] = world.smtp.caught
    msg = mail.message
    assert mail.helo == "mail.acme.example"
    assert msg["List-Id"] == '"Test journey" <journey.acme.example>'
    assert msg["Feedback-ID"] == "nurture:journey"
    signatures = msg.get_all("DKIM-Signature")
    assert len(signatures) == len(chosen)
    for sig in signatures:
        tags = dict(t.strip().split("=", 1) for t in sig.replace("\n", "").split(";") if "=" in t)
        signed = {h.strip().lower() for h in tags["h"].split(":")}
        assert {
            "from",
            "to",
            "subject",
            "date",
            "message-id",
            "list-unsubscribe",
            "list-unsubscribe-post",
            "list-id",
            "mime-version",
            "content-type",
        } <= signed
        assert tags["c"] == "relaxed/relaxed" and tags["d"] == "acme.example"
    records = {
        f"{s}._domainkey.acme.example": dns_record(load_key(p)).encode()
        for s, p in zip(selectors, chosen, strict=True)
    }
    assert verify_all(mail.data, records) == len(chosen)
    # A changed byte in the body breaks it: the check can fail.
    head, _, body = mail.data.replace(b"\r\n", b"\n").partition(b"\n\n")
    assert b"Zo" in body
    tampered = head + b"\n\n" + body.replace(b"Zo", b"Xo", 1)
    assert verify_all(tampered, records) == 0


def test_a_half_done_dkim_setup_is_a_clear_error(make_world: MakeWorld, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="both NURTURE_DKIM_SELECTOR"):
        make_world(dkim_selector="s1")
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key\n")
    with pytest.raises(ConfigError, match="is not a PEM private key"):
        make_world(dkim_selector="s1", dkim_private_key_file=str(bad))


def keygen_command(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    args = ["dkim", "keygen", "--selector", "s2", "--domain", "acme.example", "--out", str(out)]
    return subprocess.run(
        [str(NURTURE), *args, *extra], capture_output=True, text=True, timeout=60, cwd=out.parent
    )


def test_keygen_writes_a_key_and_prints_the_record(tmp_path: Path) -> None:
    out = tmp_path / "s2.pem"
    r = keygen_command(out, "--algorithm", "ed25519")
    assert r.returncode == 0, r.stderr
    assert "s2._domainkey.acme.example. IN TXT" in r.stdout and "k=ed25519; p=" in r.stdout
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    signer = DkimSigner("s2", [load_key(out)])
    signed = signer.sign(
        b"From: a@acme.example\nTo: b@x.example\nSubject: hi\n\nbody\n",
        sender_domain="acme.example",
    )
    record = dns_record(load_key(out)).encode()
    assert dkim.verify(signed.replace(b"\n", b"\r\n"), dnsfunc=lambda name, timeout=5: record)
    again = keygen_command(out)
    assert again.returncode == 1 and "exists" in again.stderr


def test_a_bounce_to_the_verp_address_finds_its_message_without_any_header(
    make_world: MakeWorld,
) -> None:
    world: World = make_world(bounce_address="bounces+{token}@acme.example")
    world.subscribe("gone@example.com", confirmed=True)
    world.tick()
    [mail] = world.smtp.to("gone@example.com")
    assert mail.sender.startswith("bounces+") and mail.sender.endswith("@acme.example")
    assert mail.message["From"].endswith("<ada@acme.example>")  # the From is unchanged
    # A DSN that kept none of the original's headers (no Message-ID, nothing quoted).
    dsn = (
        f"From: MAILER-DAEMON@mx.example.com\nTo: {mail.sender}\nSubject: Undelivered Mail\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\n\n'
        "--b\nContent-Type: text/plain\n\nThe mail could not be delivered.\n\n"
        "--b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.com\n\n"
        "Final-Recipient: rfc822; gone@example.com\nAction: failed\nStatus: 5.1.1\n"
        "Diagnostic-Code: smtp; 550 5.1.1 no such user\n\n--b--\n"
    ).encode()
    from nurture.vocabulary import InboundSource, InboundStatus, SubscriberStatus

    result = world.services.inbox.receive(dsn, now=world.clock.now(), source=InboundSource.webhook)
    assert result.status is InboundStatus.bounce, result
    with world.services.store.transaction() as tx:
        person = tx.subscribers.by_email("gone@example.com")
    assert person is not None and person.status is SubscriberStatus.bounced
    # A forged VERP address ties nothing to anyone.
    forged = dsn.replace(mail.sender.encode(), b"bounces+aaaaaaaaaaaaaaaaaaaaaaaaaa@acme.example")
    other = world.services.inbox.receive(
        forged, now=world.clock.now(), source=InboundSource.webhook
    )
    assert other.status is InboundStatus.unmatched


def test_list_id_quotes_any_sequence_name() -> None:
    from nurture.mail.compose import list_id

    assert list_id("Confirm, then a pause", "delayed", "acme.example") == (
        '"Confirm, then a pause" <delayed.acme.example>'
    )
    assert list_id('Say "hi"', "Trial_2", "acme.example") == '"Say \\"hi\\"" <trial-2.acme.example>'
    assert list_id("Grüße", "de", "acme.example").startswith("=?utf-8?")


def test_two_keys_under_one_selector_is_a_clear_error(
    make_world: MakeWorld, keys: dict[str, Path]
) -> None:
    with pytest.raises(ConfigError, match="each key needs its own selector"):
        make_world(dkim_selector="s1", dkim_private_key_file=f"{keys['rsa']},{keys['ed']}")


def dkim_check(
    keys: dict[str, Path], resolver: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    env = {
        "NURTURE_SEQUENCES_DIR": str(DATA / "sequences"),
        "NURTURE_TEMPLATES_DIR": str(DATA / "templates"),
        "NURTURE_DKIM_SELECTOR": "s1,e1",
        "NURTURE_DKIM_PRIVATE_KEY_FILE": f"{keys['rsa']},{keys['ed']}",
        "NURTURE_SECRET_KEY": "k",
        "PATH": "/usr/bin:/bin",  # openssl, for the RSA key's public half
    }
    return subprocess.run(
        [str(NURTURE), "dkim", "check", "--resolver", resolver, *extra],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_dkim_check_asks_dns_and_says_which_records_hold_the_keys(keys: dict[str, Path]) -> None:
    rsa, ed = (dns_record(load_key(keys[k])) for k in ("rsa", "ed"))
    other = dns_record(keygen(keys["rsa"].parent / "other.pem"))
    # The test sequences send from acme.example: that is the domain checked.
    with txt_server(
        {"s1._domainkey.acme.example": [rsa], "e1._domainkey.acme.example": [ed]}
    ) as at:
        good = dkim_check(keys, at)
    assert good.returncode == 0, good.stdout + good.stderr
    assert good.stdout.splitlines() == [
        "ok  s1._domainkey.acme.example: the published rsa key is this key",
        "ok  e1._domainkey.acme.example: the published ed25519 key is this key",
    ]
    with txt_server({"s1._domainkey.acme.example": [other, "v=spf1 -all"]}) as at:
        bad = dkim_check(keys, at)
    assert bad.returncode == 1
    first, second = bad.stdout.splitlines()
    assert first.startswith("mismatch  s1._domainkey.acme.example: the published key is not")
    assert rsa in first  # what to publish instead
    assert second.startswith("missing  e1._domainkey.acme.example: no DKIM record; publish:")
    with txt_server({}) as at:
        elsewhere = dkim_check(keys, at, "--domain", "mail.example")
    assert elsewhere.returncode == 1 and "s1._domainkey.mail.example" in elsewhere.stdout
