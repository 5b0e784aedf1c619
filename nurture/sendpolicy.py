"""How the dispatcher sends, as configured: batch size, retries and their backoff, the
circuit breaker and pauses, and what every email carries (reply and bounce addresses, DKIM,
Feedback-ID) and how fast it may go (domain pacing)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from nurture.config import Settings
from nurture.mail.dkim import DkimSigner
from nurture.pacing import DomainRates, parse_rate, parse_rates

__all__ = ["DispatchPolicy"]


@dataclass(frozen=True)
class DispatchPolicy:
    batch_size: int = 200
    retry_base: timedelta = timedelta(seconds=30)
    retry_max: timedelta = timedelta(hours=1)
    max_attempts: int = 12
    unknown_retry: timedelta = timedelta(minutes=10)
    breaker_failures: int = 20
    pause: timedelta = timedelta(minutes=5)
    pause_max: timedelta = timedelta(hours=1)
    reply_address: str | None = None
    message_id_domain: str | None = None
    dkim: DkimSigner | None = None
    feedback_id: str | None = None
    bounce_address: str | None = None
    domain_rates: DomainRates | None = None
    max_rate: float | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> DispatchPolicy:
        return cls(
            batch_size=settings.batch_size,
            retry_base=timedelta(seconds=settings.retry_base_seconds),
            retry_max=timedelta(seconds=settings.retry_max_seconds),
            max_attempts=settings.retry_max_attempts,
            unknown_retry=timedelta(seconds=settings.unknown_retry_seconds),
            breaker_failures=settings.breaker_failures,
            pause=timedelta(seconds=settings.pause_seconds),
            pause_max=timedelta(seconds=settings.pause_max_seconds),
            reply_address=settings.reply_address,
            message_id_domain=settings.message_id_domain,
            dkim=DkimSigner.from_settings(settings),
            feedback_id=settings.feedback_id,
            bounce_address=settings.bounce_address,
            domain_rates=parse_rates(settings.domain_rates) if settings.domain_rates else None,
            max_rate=parse_rate(settings.max_rate) if settings.max_rate else None,
        )
