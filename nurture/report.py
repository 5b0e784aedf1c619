"""``nurture report``: the staircase. Per sequence and step: how many reached the step, got its
email and its reminders, said yes (by click, reply or event; after a reminder or not; how fast
after delivery), clicked as people or were judged machines, and where everyone is now; each
answer's count; each A/B variant's yes rate and the verdict. Per sequence: converted, and how
fast.

Counts are of enrollments' visits of a step (a person sent back to a step by a ``goto``, or
entering again, counts once more there: ``revisits`` says how many), never of raw events: one
person's three clicks are one yes. Everything comes from a few aggregate queries per
sequence (``nurture.db.funnel``), whatever the number of people.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nurture.db.answers import StepTally
from nurture.db.funnel import StepFunnel
from nurture.db.store import Tx
from nurture.experiments import Experiments
from nurture.sequences import Catalog, Sequence, Step

__all__ = ["build_report", "format_report"]


def _rate(yes: int, sent: int) -> float | None:
    return round(yes / sent, 4) if sent else None


def _times(seconds: list[float]) -> dict[str, float | None]:
    """Median and 90th percentile (nearest rank) of the seconds to a yes."""
    if not seconds:
        return {"median_seconds": None, "p90_seconds": None}
    ordered = sorted(seconds)
    p90 = ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]
    return {"median_seconds": round(statistics.median(ordered), 1), "p90_seconds": round(p90, 1)}


@dataclass(frozen=True)
class _Facts:
    """What the queries found for one step."""

    funnel: StepFunnel
    tallies: list[StepTally]
    where: dict[str, int]
    skipped: int
    entering: int
    picked: dict[str, Any] | None
    times: dict[str | None, list[float]]


def _step(step: Step, facts: _Facts, experiments: Experiments) -> dict[str, Any]:
    f, where = facts.funnel, facts.where
    answers: dict[str, int] = defaultdict(int)
    for t in facts.tallies:
        for k, n in t.answers.items():
            answers[k] += n
    out: dict[str, Any] = {
        "id": step.id,
        "entered": f.decided + facts.skipped + facts.entering,
        "revisits": f.revisits,
        "sent": f.sent,
        "reminded": f.reminded,
        "yes": f.yes,
        "by_click": f.by.get("click", 0),
        "by_reply": f.by.get("reply", 0),
        "by_event": f.by.get("event", 0),
        "yes_rate": _rate(f.yes, f.sent),
        "after_reminder": f.after_reminder,
        "time_to_yes": {"median_seconds": f.median_seconds, "p90_seconds": f.p90_seconds},
        "human_clickers": f.human_clickers,
        "bot_clicks": f.bot_clicks,
        "bot_reasons": [{"reason": r, "clicks": n} for r, n in f.bot_reasons],
        "skipped": facts.skipped,
        "waiting": where.get("active", 0),
        "held": where.get("held", 0),
        "completed": where.get("completed", 0),
        "left": {k.split(":", 1)[1]: n for k, n in sorted(where.items()) if k.startswith("left:")},
    }
    if step.when:
        out["when"] = step.when
    if step.answers:
        out["answers"] = [{"id": a.id, "chose": answers.get(a.id, 0)} for a in step.answers]
    if step.variants:
        verdict = experiments.verdict(step, facts.tallies)
        out["variants"] = [
            {
                "id": arm.id,
                "sent": arm.sent,
                "yes": arm.yes,
                "yes_rate": None if arm.yes_rate is None else round(arm.yes_rate, 4),
                "p_value": None if arm.p_value is None else float(f"{arm.p_value:.4g}"),
                "lift": None if arm.lift is None else round(arm.lift, 4),
                "winner": arm.winner,
                "time_to_yes": _times(facts.times.get(arm.id, [])),
            }
            for arm in verdict.arms
        ]
        out["verdict"] = verdict.note
        out["min_sent"] = experiments.min_sent_for(step)
        if facts.picked:
            out["picked"] = {
                "variant": facts.picked.get("variant"),
                "at": facts.picked.get("at"),
                "why": facts.picked.get("why"),
            }
    return out


def _sequence(
    tx: Tx,
    sequence: Sequence,
    where: dict[str, dict[str, int]],
    experiments: Experiments,
    since: datetime | None,
    scanned: tuple[dict[str, dict[str, StepFunnel]], list[StepTally]],
) -> dict[str, Any]:
    funnel = scanned[0].get(sequence.id, {})
    tallies = [t for t in scanned[1] if t.sequence_id == sequence.id]
    skipped = tx.reports.skipped_by_step(sequence.id, [s.id for s in sequence.steps])
    entering = tx.funnel.entering(sequence.id)
    steps = []
    for step in sequence.steps:
        facts = _Facts(
            funnel=funnel.get(step.id, StepFunnel()),
            tallies=[t for t in tallies if t.step_id == step.id],
            where=where.get(step.id, {}),
            skipped=skipped.get(step.id, 0),
            entering=entering.get(step.id, 0),
            picked=tx.answers.winner(sequence.id, step.id) if step.pick_winner else None,
            times=tx.answers.yes_times(sequence.id, step.id) if step.variants else {},
        )
        steps.append(_step(step, facts, experiments))
    enrolled, converted, median = tx.funnel.conversions(sequence.id, since)
    return {
        "id": sequence.id,
        "name": sequence.name,
        "enrolled": enrolled,
        "converted": converted,
        "conversion_rate": _rate(converted, enrolled),
        "median_seconds_to_convert": median,
        "steps": steps,
    }


def build_report(
    tx: Tx,
    catalog: Catalog,
    experiments: Experiments,
    sequence_id: str | None = None,
    *,
    since: datetime | None = None,
) -> dict[str, Any]:
    """The report as one JSON-ready object. ``since`` counts only the emails, clicks and
    enrollments since then; where people are now (waiting, held, left) is always now."""
    where: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    for r in tx.reports.status_counts():
        label = r.status if r.status != "exited" else f"left:{r.exit_reason}"
        where[r.sequence_id][r.step_id][label] = r.count
    scanned = tx.funnel.scan(since)
    return {
        "since": since.isoformat() if since else None,
        "sequences": [
            _sequence(tx, seq, where.get(seq.id, {}), experiments, since, scanned)
            for seq in catalog
            if sequence_id is None or seq.id == sequence_id
        ],
    }


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def _span(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def format_report(report: dict[str, Any]) -> str:
    lines: list[str] = []
    for seq in report["sequences"]:
        convert = _span(seq["median_seconds_to_convert"])
        lines.append(
            f"\n{seq['id']} ({seq['name']}): {seq['enrolled']} enrolled, "
            f"{seq['converted']} converted ({_pct(seq['conversion_rate'])}; median {convert})"
        )
        lines.append(
            f"  {'step':<14}{'entered':>8}{'sent':>7}{'yes':>7}{'rate':>7}  "
            f"{'click/reply/event':<18}{'median':>7}{'p90':>7}{'rem.':>6}"
            f"{'people/bots':>13}{'waiting':>8}  left"
        )
        for st in seq["steps"]:
            kinds = f"{st['by_click']}/{st['by_reply']}/{st['by_event']}"
            left = ", ".join(f"{k} {n}" for k, n in st["left"].items()) or "-"
            clicks = f"{st['human_clickers']}/{st['bot_clicks']}"
            t = st["time_to_yes"]
            lines.append(
                f"  {st['id']:<14}{st['entered']:>8}{st['sent']:>7}{st['yes']:>7}"
                f"{_pct(st['yes_rate']):>7}  {kinds:<18}{_span(t['median_seconds']):>7}"
                f"{_span(t['p90_seconds']):>7}{st['after_reminder']:>6}{clicks:>13}"
                f"{st['waiting']:>8}  {left}"
            )
            if st["yes_rate"]:
                lines.append(f"  {'':<14}{'#' * round(st['yes_rate'] * 40)}")
            lines += _details(st)
    if report["sequences"]:
        lines.append(
            "\nentered: reached the step (a revisit counts again); rate: yes / sent; median and"
            " p90: time from delivery to the yes; rem.: yeses after a reminder; people/bots:"
            " distinct people with a human click / clicks judged machines"
        )
    return "\n".join(lines).lstrip("\n")


def _details(st: dict[str, Any]) -> list[str]:
    lines = []
    if st["skipped"]:
        lines.append(f"      skipped {st['skipped']} (when: {st.get('when', '')})")
    if st["bot_reasons"]:
        reasons = ", ".join(f"{r['reason']} {r['clicks']}" for r in st["bot_reasons"])
        lines.append(f"      bot clicks mostly: {reasons}")
    for a in st.get("answers", []):
        lines.append(f"      answer {a['id']:<14} chosen by {a['chose']}")
    for v in st.get("variants", []):
        p = "" if v["p_value"] is None else f"  p={v['p_value']:.3g}"
        lift = "" if v["lift"] is None else f"  lift {v['lift'] * 100:+.1f}%"
        median = v["time_to_yes"]["median_seconds"]
        more = f"  median {_span(median)} to yes" if median is not None else ""
        more += "  WINNER" if v["winner"] else ""
        lines.append(
            f"      variant {v['id']:<12} sent {v['sent']:>6}  yes {v['yes']:>6}  "
            f"{_pct(v['yes_rate']):>7}{p}{lift}{more}"
        )
    if "verdict" in st:
        lines.append(f"      {st['verdict']}")
        picked = st.get("picked")
        if picked and picked["variant"]:
            lines.append(f"      since {picked['at']} everyone gets variant {picked['variant']}")
        elif picked:
            lines.append(f"      looked at once on {picked['at']}: no winner; the split goes on")
    return lines
