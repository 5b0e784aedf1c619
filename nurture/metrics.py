"""``/metrics`` in Prometheus' text format (prometheus-client): what an operator graphs and
alerts on. Counts come from the database at each scrape (so every worker of a deployment
shows the same totals, and a restart loses none); the tick's duration is this process's own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from nurture.services import Services

__all__ = [
    "TICK_SECONDS",
    "TICK_OVERRUNS",
    "SMTP_CONNECT_ERRORS",
    "CLOCK_SKEW",
    "render_metrics",
]

# Observed by the daemon's tick (nurture.daemon), in this process.
TICK_SECONDS = Histogram(
    "nurture_tick_seconds",
    "How long one scheduler tick took (judging clicks, planning, sending)",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=None,
)
TICK_OVERRUNS = PromCounter(
    "nurture_tick_overruns",
    "Ticks that ran past their interval (the intervals meanwhile were skipped)",
    registry=None,
)
# Counted by the SMTP pool (nurture.mail.send), in this process.
SMTP_CONNECT_ERRORS = PromCounter(
    "nurture_smtp_connection_errors",
    "Connections to the SMTP server that failed (refused, unreachable, timed out)",
    registry=None,
)

# Measured by the heartbeat (nurture.handover), in this process.
CLOCK_SKEW = Gauge(
    "nurture_clock_skew_seconds",
    "This process's clock less the database's, at its last heartbeat (a web process: at start)",
    registry=None,
)


class _Database(Collector):
    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[Metric]:
        s = self.services
        with s.store.transaction() as tx:
            messages = tx.reports.message_totals()
            yes = tx.reports.yes_totals()
            clicks = tx.reports.click_counts()
            inbound = tx.inbound.counts()
            due = tx.reports.due_enrollments(s.clock.now())
            pause = tx.control.pause()
            waiting = tx.reports.waiting_counts()
        labels = ["sequence", "step", "kind"]
        emails = {
            status: CounterMetricFamily(
                f"nurture_emails_{status}",
                f"Emails {status} (by sequence, step and kind)",
                labels=labels,
            )
            for status in ("sent", "failed", "cancelled")
        }
        retried = CounterMetricFamily(
            "nurture_emails_retried", "Emails that needed more than one attempt", labels=labels
        )
        queued = 0
        for seq, step, kind, status, n, again in messages:
            if status in emails:
                emails[status].add_metric([seq, step, kind], n)
            if status in ("queued", "sending"):
                queued += n
            if again:
                retried.add_metric([seq, step, kind], again)
        yield from emails.values()
        yield retried
        micro = CounterMetricFamily("nurture_micro_yes", "Micro-yeses by kind", labels=["by"])
        for by, n in sorted(yes.items()):
            micro.add_metric([by], n)
        yield micro
        verdicts: Counter[str] = Counter()
        for _, _, verdict, n in clicks:
            verdicts[verdict] += n
        judged = CounterMetricFamily("nurture_clicks", "Clicks by verdict", labels=["verdict"])
        for verdict, n in sorted(verdicts.items()):
            judged.add_metric([verdict], n)
        yield judged
        mail = CounterMetricFamily("nurture_inbound", "Inbound mail by class", labels=["status"])
        for status, n in sorted(inbound.items()):
            mail.add_metric([status], n)
        yield mail
        yield GaugeMetricFamily(
            "nurture_enrollments_due", "Enrollments whose next thing is due", value=due
        )
        yield GaugeMetricFamily(
            "nurture_messages_queued", "Emails queued or being sent", value=queued
        )
        held = GaugeMetricFamily(
            "nurture_messages_waiting",
            "Queued emails held back by their send window, the per-person cap or pacing",
            labels=["reason"],
        )
        for reason in ("window", "cap", "pace"):
            held.add_metric([reason], waiting.get(reason, 0))
        yield held
        rates = GaugeMetricFamily(
            "nurture_domain_rate",
            "Emails a second this worker may send to each paced domain, now",
            labels=["domain"],
        )
        for domain, rate in sorted(s.dispatcher.pacer.rates_now().items()):
            rates.add_metric([domain], rate)
        yield rates
        yield GaugeMetricFamily(
            "nurture_sending_paused",
            "1 while sending is paused (the relay refuses us)",
            value=1 if pause else 0,
        )


def render_metrics(services: Services) -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TICK_SECONDS)
    registry.register(TICK_OVERRUNS)
    registry.register(SMTP_CONNECT_ERRORS)
    registry.register(CLOCK_SKEW)
    registry.register(_Database(services))
    return generate_latest(registry), CONTENT_TYPE_LATEST
