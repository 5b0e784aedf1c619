"""The secret keys' history: which key signed the mail of the last 30 days, kept in the control
table by fingerprint (never the key), so that a key changed without its predecessor is a loud
line at start instead of a silent 404 on every link already sent, one-click unsubscribe
included (Gmail and Yahoo require it to keep working; CAN-SPAM, for 30 days).

That happens when ``NURTURE_SECRET_KEY`` is replaced instead of rotated (``NEW,OLD``), or when
a container starts without its data folder and generates a new key file next to a database
that has sent mail. A web process whose keys lack the worker's signing key is told the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from nurture.db.store import Store
from nurture.tokens import Signer

__all__ = ["KEEP", "KeyHistory", "check_keys"]

KEEP = timedelta(days=30)  # how long a link must keep working after its email was sent
NAME = "secret_keys"  # its row in the control table


@dataclass(frozen=True)
class KeyHistory:
    """The signing key (fingerprint) since when, and the keys that signed before it, each
    with when it stopped; a key that stopped more than ``KEEP`` ago is forgotten."""

    signing: str
    since: datetime
    retired: tuple[tuple[str, datetime], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "signing": self.signing,
            "since": self.since.isoformat(),
            "retired": [[key, until.isoformat()] for key, until in self.retired],
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> KeyHistory:
        return cls(
            str(value["signing"]),
            datetime.fromisoformat(value["since"]),
            tuple((str(key), datetime.fromisoformat(until)) for key, until in value["retired"]),
        )

    def signed_by(self, signing: str, now: datetime) -> KeyHistory:
        """The history once ``signing`` signs: the key before it retired as of ``now``."""
        if signing == self.signing:
            return self
        retired = [(k, t) for k, t in self.retired if k not in (signing, self.signing)]
        return KeyHistory(signing, now, (*retired, (self.signing, now)))


def check_keys(
    store: Store, signer: Signer, *, now: datetime, record: bool, generated: Path | None = None
) -> list[str]:
    """One sentence per key that signed mail of the last 30 days and that ``signer`` no
    longer holds. ``record``: remember this process's signing key (the worker that sends);
    ``generated``: the key file this start has just generated."""
    keys = signer.fingerprints
    problems = []
    with store.transaction() as tx:
        found = tx.control.value(NAME)
        if found is None:
            # Nothing recorded yet (a new database, or one from before this history): only a
            # key generated just now is certainly not the one that signed its mail.
            sent = tx.reports.sent_between(now - KEEP, now) if generated else 0
            if sent:
                problems.append(
                    f"NURTURE_SECRET_KEY is not set and its key file {generated} was just "
                    f"generated, but {sent} emails of the last 30 days were signed by another "
                    "key: their links, one-click unsubscribe included, answer 404 and replies "
                    "to them go unmatched. Was the data folder lost? Put the old key file back, "
                    "or set NURTURE_SECRET_KEY=<new>,<old>"
                )
            history = KeyHistory(keys[0], now)
        else:
            history = KeyHistory.from_json(found).signed_by(keys[0], now)
            kept = tuple((k, t) for k, t in history.retired if t > now - KEEP)
            history = KeyHistory(history.signing, history.since, kept)
            for key, until in kept:
                sent = 0 if key in keys else tx.reports.sent_between(now - KEEP, until)
                if not sent:
                    continue
                how = (
                    f"its key file {generated} was just generated (was the data folder lost?)"
                    if generated
                    else "NURTURE_SECRET_KEY no longer holds it"
                )
                problems.append(
                    f"{sent} emails of the last 30 days were signed by the secret key {key} "
                    f"(a fingerprint; it signed until {until:%Y-%m-%d %H:%M} UTC) and {how}: "
                    "their links, one-click unsubscribe included, answer 404 and replies to "
                    "them go unmatched. Set NURTURE_SECRET_KEY=<new>,<old> (the new key signs, "
                    "the old one still verifies) and keep the old one 30 days"
                )
        if record:
            tx.control.put(NAME, history.to_json(), now=now)
    return problems
