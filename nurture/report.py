"""``nurture report``: per sequence and step, what people said yes to, how, by which answer,
and, for a step with A/B variants, each variant's yes rate and the verdict.

Counts are of enrollments (each step's own email is one enrollment's visit of that step, and
its yes is stored on it), read with a few aggregate queries whatever the number of people.
The JSON keys are the ones issue 10's funnel keeps; it adds the rest of the funnel.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any

from nurture.db.answers import StepTally
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


def _step(
    step: Step,
    tallies: list[StepTally],
    where: dict[str, int],
    skipped: int,
    experiments: Experiments,
    picked: dict[str, Any] | None,
    times: dict[str | None, list[float]],
) -> dict[str, Any]:
    mine = [t for t in tallies if t.step_id == step.id]
    sent = sum(t.sent for t in mine)
    yes = sum(t.yes for t in mine)
    by: dict[str, int] = defaultdict(int)
    answers: dict[str, int] = defaultdict(int)
    for t in mine:
        for k, n in t.by.items():
            by[k] += n
        for k, n in t.answers.items():
            answers[k] += n
    out: dict[str, Any] = {
        "id": step.id,
        "sent": sent,
        "yes": yes,
        "by_click": by.get("click", 0),
        "by_reply": by.get("reply", 0),
        "by_event": by.get("event", 0),
        "yes_rate": _rate(yes, sent),
        "skipped": skipped,
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
        verdict = experiments.verdict(step, mine)
        out["variants"] = [
            {
                "id": arm.id,
                "sent": arm.sent,
                "yes": arm.yes,
                "yes_rate": None if arm.yes_rate is None else round(arm.yes_rate, 4),
                "p_value": None if arm.p_value is None else float(f"{arm.p_value:.4g}"),
                "lift": None if arm.lift is None else round(arm.lift, 4),
                "winner": arm.winner,
                "time_to_yes": _times(times.get(arm.id, [])),
            }
            for arm in verdict.arms
        ]
        out["verdict"] = verdict.note
        out["min_sent"] = experiments.min_sent_for(step)
        if picked:
            out["picked"] = {"variant": picked.get("variant"), "at": picked.get("at")}
    return out


def _sequence(
    tx: Tx, sequence: Sequence, where: dict[str, dict[str, int]], experiments: Experiments
) -> dict[str, Any]:
    tallies = tx.answers.tallies(sequence.id)
    skipped = tx.reports.skipped_by_step(sequence.id)
    steps = []
    for step in sequence.steps:
        picked = tx.answers.winner(sequence.id, step.id) if step.pick_winner else None
        times = tx.answers.yes_times(sequence.id, step.id) if step.variants else {}
        here, skips = where.get(step.id, {}), skipped.get(step.id, 0)
        steps.append(_step(step, tallies, here, skips, experiments, picked, times))
    enrolled = sum(sum(c.values()) for c in where.values())
    converted = sum(c.get("left:converted", 0) for c in where.values())
    return {
        "id": sequence.id,
        "name": sequence.name,
        "enrolled": enrolled,
        "converted": converted,
        "conversion_rate": _rate(converted, enrolled),
        "steps": steps,
    }


def build_report(
    tx: Tx, catalog: Catalog, experiments: Experiments, sequence_id: str | None = None
) -> dict[str, Any]:
    where: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    for r in tx.reports.status_counts():
        label = r.status if r.status != "exited" else f"left:{r.exit_reason}"
        where[r.sequence_id][r.step_id][label] = r.count
    return {
        "sequences": [
            _sequence(tx, seq, where.get(seq.id, {}), experiments)
            for seq in catalog
            if sequence_id is None or seq.id == sequence_id
        ]
    }


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def format_report(report: dict[str, Any]) -> str:
    lines: list[str] = []
    for seq in report["sequences"]:
        lines.append(
            f"\n{seq['id']} ({seq['name']}): {seq['enrolled']} enrolled, "
            f"{seq['converted']} converted ({_pct(seq['conversion_rate'])})"
        )
        lines.append(
            f"  {'step':<16}{'sent':>7}{'yes':>7}{'rate':>8}  {'click/reply/event':<18}"
            f"{'skipped':>8}{'waiting':>8}  left"
        )
        for st in seq["steps"]:
            kinds = f"{st['by_click']}/{st['by_reply']}/{st['by_event']}"
            left = ", ".join(f"{k} {n}" for k, n in st["left"].items()) or "-"
            bar = "#" * round((st["yes_rate"] or 0) * 20)
            lines.append(
                f"  {st['id']:<16}{st['sent']:>7}{st['yes']:>7}{_pct(st['yes_rate']):>8}  "
                f"{kinds:<18}{st['skipped']:>8}{st['waiting']:>8}  {left}  {bar}"
            )
            if "when" in st:
                lines.append(f"      when: {st['when']}")
            for a in st.get("answers", []):
                lines.append(f"      answer {a['id']:<14} chosen by {a['chose']}")
            for v in st.get("variants", []):
                p = "" if v["p_value"] is None else f"  p={v['p_value']:.3g}"
                lift = "" if v["lift"] is None else f"  lift {v['lift'] * 100:+.1f}%"
                median = v["time_to_yes"]["median_seconds"]
                win = f"  median {median / 3600:.1f} h to yes" if median is not None else ""
                win += "  WINNER" if v["winner"] else ""
                lines.append(
                    f"      variant {v['id']:<12} sent {v['sent']:>6}  yes {v['yes']:>6}  "
                    f"{_pct(v['yes_rate']):>7}{p}{lift}{win}"
                )
            if "verdict" in st:
                lines.append(f"      {st['verdict']}")
                if "picked" in st:
                    lines.append(
                        f"      since {st['picked']['at']} everyone gets variant "
                        f"{st['picked']['variant']}"
                    )
    return "\n".join(lines).lstrip("\n")
