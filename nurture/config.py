"""Settings: every knob of nurture, read once at start-up from ``NURTURE_*`` variables and ``.env``.

The ``Settings`` object is built by the CLI (or a test) and passed down; nothing reads it as a
module-level global.
"""

from __future__ import annotations

import difflib
import logging
import os
import secrets
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from dotenv import dotenv_values
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from nurture.errors import ConfigError
from nurture.tokens import split_keys

__all__ = [
    "Settings",
    "SmtpTls",
    "load_settings",
    "unknown_variables",
    "check_unknown_variables",
    "ensure_secret_key",
]

log = logging.getLogger(__name__)

ENV_PREFIX = "NURTURE_"
# Read by the test suite, not by nurture: never a typo.
NOT_SETTINGS = frozenset({"NURTURE_TEST_DATABASE_URL"})


class SmtpTls(StrEnum):
    none = "none"
    starttls = "starttls"
    tls = "tls"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    database_url: str = "sqlite:///nurture.db"
    sequences_dir: Path = Path("sequences")
    templates_dir: Path = Path("templates")
    data_dir: Path = Field(
        default=Path("."), description="where the secret key file and the catcher's outbox live"
    )

    base_url: str | None = Field(
        default=None, description="public base of every link; default http://HTTP_HOST:HTTP_PORT"
    )
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8025, ge=0, le=65535)

    smtp_host: str | None = None
    smtp_port: int = Field(default=25, ge=0, le=65535)
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_tls: SmtpTls = SmtpTls.none
    smtp_timeout: float = Field(default=30.0, gt=0)  # each command but the end of DATA
    smtp_data_timeout: float = Field(default=600.0, gt=0)  # the final dot (RFC 5321: 10 min)
    smtp_helo: str | None = None  # the EHLO name; unset: this machine's fully qualified name
    # DKIM: a selector and one or two PEM private keys (comma-separated: RSA and Ed25519).
    dkim_selector: str | None = None
    dkim_private_key_file: str | None = None
    dkim_domain: str | None = None  # the d= domain; unset: each sequence's From domain
    feedback_id: str | None = None  # Gmail's Feedback-ID header, e.g. "nurture:acme"
    # VERP: every message's envelope sender, e.g. "bounces+{token}@acme.example"
    bounce_address: str | None = None
    smtp_connections: int = Field(default=4, ge=1, le=100)
    # Send windows read a person's `timezone` field; without one (or a bad one), this zone.
    default_timezone: str = "UTC"
    # At most this many emails to one person per day / per week (their local calendar),
    # across all sequences; confirmations are exempt. Unset: no cap.
    max_emails_per_day: int | None = Field(default=None, ge=1)
    max_emails_per_week: int | None = Field(default=None, ge=1)
    # Pacing: "gmail.com+googlemail.com=20/s,outlook.com=10/s,*=50/s" (per receiving domain,
    # for the whole deployment) and a global ceiling such as "100/s". Unset: no limit.
    domain_rates: str | None = None
    max_rate: str | None = None
    catcher_port: int = Field(default=0, ge=0, le=65535)

    # Several keys, comma-separated, rotate it: the first signs, every one verifies.
    secret_key: str | None = None
    api_token: str | None = None
    reply_address: str | None = Field(
        default=None, description="per-message reply address, e.g. replies+{token}@acme.example"
    )
    message_id_domain: str | None = None
    inbound_secret: str | None = Field(
        default=None,
        description="shared secret POST /inbound requires; also lets it match by address",
    )

    imap_host: str | None = None
    imap_port: int | None = Field(default=None, ge=1, le=65535)  # 993 with tls, else 143
    imap_username: str | None = None
    imap_password: str | None = None
    imap_tls: SmtpTls = SmtpTls.tls
    imap_folder: str = "INBOX"
    imap_processed_folder: str | None = None  # move handled mail there (else: flag it)
    imap_delete_processed: bool = False  # delete handled mail: only when this says so
    imap_poll_seconds: float = Field(default=30.0, gt=0)

    max_email_bytes: int = Field(default=2 * 1024 * 1024, ge=10_000)  # one email, rendered
    render_seconds: float = Field(default=2.0, gt=0)  # to render one email
    open_tracking: bool = True  # an open pixel in every HTML part (opens never advance anyone)
    honeypot: bool = True  # an invisible link in every HTML part: only machines follow it
    click_min_seconds: float = Field(default=5.0, ge=0)  # sooner after sending is suspect
    click_window_seconds: float = Field(default=10.0, ge=0)  # clicks judged together
    click_burst_links: int = Field(default=3, ge=2)  # links of one message in a window: bot
    # A click with a person's signals and nothing else clicked on its email: judged this soon.
    click_quick_seconds: float = Field(default=1.0, ge=0)
    # Abuse limits (nurture.limits): clicks on one link / from one client address in a window
    # past which they are summarised; form posts per client address a minute; sign-ups posted
    # with the API token (the marketer's own servers, from one address) a minute, 0: no limit.
    click_flood_limit: int = Field(default=20, ge=1)
    client_flood_limit: int = Field(default=1000, ge=1)
    click_flood_seconds: float = Field(default=10.0, gt=0)
    subscribe_per_minute: int = Field(default=10, ge=1)
    api_subscribe_per_minute: int = Field(default=600, ge=0)
    # The form's sign-ups of all addresses together a minute (each may mail a stranger's
    # address); past it they are dropped, answered as usual and logged. 0: no limit.
    subscribe_global_per_minute: int = Field(default=60, ge=0)
    click_tarpit_seconds: float = Field(default=0.1, ge=0)  # each click past a limit waits
    # A/B tests: each variant's step emails sent before a verdict (a step's pick_winner may
    # say its own min_sent).
    ab_min_sent: int = Field(default=100, ge=1)
    # The dashboard (/admin) and /metrics: HTTP Basic with this password (or, with the
    # built-in catcher only, from a loopback address); /metrics may be opened alone.
    admin_password: str | None = None
    metrics_public: bool = False
    log_format: Literal["text", "json"] = "text"

    tick_seconds: float = Field(default=1.0, gt=0)
    batch_size: int = Field(default=200, ge=1, le=10_000)
    retry_base_seconds: float = Field(default=30.0, gt=0)
    retry_max_seconds: float = Field(default=3600.0, gt=0)
    retry_max_attempts: int = Field(default=12, ge=1)
    unknown_retry_seconds: float = Field(default=600.0, ge=0)  # resend after no known outcome
    worker_timeout_seconds: float = Field(default=30.0, gt=0)  # silent this long: gone
    # Tests only: a file holding seconds added to this process's wall clock (re-read when it
    # changes), to run a real daemon whose clock is off or steps (nurture.clock.OffsetClock).
    clock_offset_file: Path | None = None
    shutdown_timeout_seconds: float = Field(default=30.0, ge=0)  # for the mail on the wire
    breaker_failures: int = Field(default=20, ge=2)  # the same refusal in a row: pause
    pause_seconds: float = Field(default=300.0, gt=0)  # first pause; doubles while it recurs
    pause_max_seconds: float = Field(default=3600.0, gt=0)
    log_level: str = "INFO"
    # NURTURE_* names that are not nurture's (another tool's, a newer nurture's), comma-separated,
    # or "*": start in spite of them. Any other unknown name stops start-up.
    ignore_settings: str | None = None

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _default_base_url(self) -> Settings:
        if self.base_url is None:
            object.__setattr__(self, "base_url", f"http://{self.http_host}:{self.http_port}")
        return self

    @property
    def public_url(self) -> str:
        assert self.base_url is not None
        return self.base_url

    @field_validator("reply_address", "bounce_address")
    @classmethod
    def _reply_address(cls, value: str | None) -> str | None:
        if value is not None and ("{token}" not in value or "@" not in value):
            raise ValueError(
                "must be an address holding {token}, e.g. replies+{token}@acme.example"
            )
        return value

    @field_validator("default_timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        from nurture.sendtimes import zone_named

        if zone_named(value) is None:
            raise ValueError("must be an IANA time zone name such as Europe/Paris")
        return value

    @field_validator("domain_rates", "max_rate")
    @classmethod
    def _rates(cls, value: str | None, info: Any) -> str | None:
        from nurture.pacing import parse_rate, parse_rates

        if value is not None:
            parse_rate(value) if info.field_name == "max_rate" else parse_rates(value)
        return value

    @field_validator("secret_key")
    @classmethod
    def _secret_key(cls, value: str | None) -> str | None:
        if value is not None and not split_keys(value):
            raise ValueError("must hold a key (several, to rotate it: NEW,OLD)")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        upper = value.upper()
        if upper not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
        return upper

    @property
    def uses_catcher(self) -> bool:
        """No SMTP server configured: mail goes to the built-in catcher and /outbox exists."""
        return not self.smtp_host

    @property
    def heartbeat_seconds(self) -> float:
        """How often a worker says it is alive: six times per worker timeout."""
        return self.worker_timeout_seconds / 6

    @property
    def secret_key_file(self) -> Path:
        return self.data_dir / "nurture-secret.key"

    @property
    def outbox_dir(self) -> Path:
        return self.data_dir / "outbox"


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment; a bad value becomes one clear ConfigError line."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            message = err["msg"].removeprefix("Value error, ")
            if not err["loc"]:  # a rule across several settings names them itself
                lines.append(message)
                continue
            name = ENV_PREFIX + "_".join(str(p) for p in err["loc"]).upper()
            value = err.get("input")
            shown = f" (got {value!r})" if isinstance(value, str | int | float) else ""
            lines.append(f"{name}: {message}{shown}")
        raise ConfigError("; ".join(lines)) from None


def unknown_variables(
    environ: Mapping[str, str] | None = None, env_file: Path = Path(".env")
) -> list[str]:
    """One sentence per ``NURTURE_*`` variable (in the environment or ``.env``) that no setting
    has, and ``NURTURE_IGNORE_SETTINGS`` does not name: a typo such as NURTURE_SMTP_HOTS would
    otherwise be ignored, and production mail would go to the built-in catcher."""
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | NOT_SETTINGS
    values: dict[str, str | None] = {}
    if env_file.is_file():
        values |= {k.upper(): v for k, v in dotenv_values(env_file).items()}
    values |= {k.upper(): v for k, v in (os.environ if environ is None else environ).items()}
    ignored = {
        n.strip().upper() for n in (values.get(ENV_PREFIX + "IGNORE_SETTINGS") or "").split(",")
    }
    if "*" in ignored:
        return []
    out = []
    for name in sorted(n for n in values if n.startswith(ENV_PREFIX) and n not in known | ignored):
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
        hint = f"did you mean {close[0]}?" if close else "no setting is called that"
        out.append(f"unknown setting {name}; {hint}")
    return out


def check_unknown_variables(
    environ: Mapping[str, str] | None = None, env_file: Path = Path(".env")
) -> None:
    """A ConfigError naming every unknown ``NURTURE_*`` variable, with the way past it."""
    unknown = unknown_variables(environ, env_file)
    if unknown:
        raise ConfigError(
            "; ".join(unknown)
            + " (a name that is not nurture's: list it in NURTURE_IGNORE_SETTINGS)"
        )


def ensure_secret_key(settings: Settings) -> Settings:
    """Return settings with a secret key: the configured one, else one kept in a local file."""
    if settings.secret_key:
        return settings
    path = settings.secret_key_file
    try:
        if path.exists():
            key = path.read_text().strip()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            key = secrets.token_urlsafe(32)
            path.touch(mode=0o600)
            path.write_text(key + "\n")
    except OSError as exc:
        raise ConfigError(
            f"cannot keep the generated secret key in {path}: {exc.strerror or exc}; "
            "NURTURE_DATA_DIR must be a folder nurture can write, or set NURTURE_SECRET_KEY"
        ) from None
    if not split_keys(key):
        raise ConfigError(f"{path} holds no key; delete it or set NURTURE_SECRET_KEY")
        log.warning(
            "NURTURE_SECRET_KEY is not set: generated one and kept it in %s; "
            "every process that signs or checks links must share it",
            path,
            extra={"action": "secret_key_generated", "path": str(path)},
        )
    return settings.model_copy(update={"secret_key": key})
