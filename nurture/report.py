"""``nurture report``: the staircase. Per sequence and step: how many reached the step, got its
email and its reminders, said yes (by click, reply or event; after a reminder or not; how fast
after delivery), were answered before the email went or skipped by ``when:``, clicked as people
or were judged machines, and where everyone is now; each answer's count; each A/B variant's yes
rate and the verdict. Per sequence: enrolled, converted, and how fast.

Each figure counts what its label says. Emails: ``sent`` is the step's own email (one per
visit), ``reminded`` its reminders, apart. Visits: ``entered``, ``yes``, ``answered_early``,
``skipped`` and each answer count an enrollment's pass through the step (a person sent back to
a step by a ``goto``, or entering again, counts once more there: ``revisits`` says how many),
never raw events: one person's three clicks are one yes. People: ``human_clickers`` is distinct
enrollments, and ``waiting``, ``held``, ``completed`` and ``left`` are enrollments where they
are now. Clicks: ``bot_clicks`` counts each click judged a machine's, a flood's one by one.
Everything comes from a few aggregate queries per sequence (``nurture.db.funnel``), whatever
the number of people.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nurture.db.answers import StepTally
from nurture.db.funnel import StepFunnel
from nurture.db.reports import Skips
from nurture.db.store import Tx
from nurture.experiments import Experiments
from nurture.sequences import Catalog, Sequence, Step
from nurture.vocabulary import YesBy

__all__ = ["LEGEND", "build_report", "format_report", "pct", "span"]


def _rate(yes: int, sent: int) -> float | None:
    return round(yes / sent, 4) if sent else None


@dataclass(frozen=True)
class _Facts:
    """What the queries found for one step."""

    funnel: StepFunnel
    tallies: list[StepTally]
    where: dict[str, int]
    skips: Skips
    entering: int
    picked: dict[str, Any] | None
    unmarked: dict[str | None, int]  # converted by the event it asks, yes not marked: per variant


def _step(step: Step, facts: _Facts, experiments: Experiments) -> dict[str, Any]:
    f, where, skips = facts.funnel, facts.where, facts.skips
    answers: dict[str, int] = defaultdict(int)
    tallies = [
        StepTally(t.sequence_id, t.step_id, t.variant, t.sent, t.yes, dict(t.answers))
        for t in facts.tallies
    ]
    for t in tallies:
        t.yes += facts.unmarked.get(t.variant, 0)
        for k, n in t.answers.items():
            answers[k] += n
    converting = sum(facts.unmarked.values())
    yes = f.yes + converting
    answered_early = skips.answered + f.answered_unsent
    out: dict[str, Any] = {
        "id": step.id,
        "entered": f.decided + skips.answered + skips.skipped + facts.entering,
        "revisits": f.revisits,
        "sent": f.sent,
        "reminded": f.reminded,
        "yes": yes,
        "by_click": f.by.get("click", 0),
        "by_reply": f.by.get("reply", 0),
        "by_event": f.by.get("event", 0) + converting,
        "yes_rate": _rate(yes, f.sent),
        "answered_early": answered_early,
        "after_reminder": f.after_reminder,
        "time_to_yes": {"median_seconds": f.median_seconds, "p90_seconds": f.p90_seconds},
        "human_clickers": f.human_clickers,
        "bot_clicks": f.bot_clicks,
        "bot_reasons": [{"reason": r, "clicks": n} for r, n in f.bot_reasons],
        "skipped": skips.skipped,
        "skipped_why": [{"reason": r, "count": n} for r, n in sorted(skips.when.items())],
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
        verdict = experiments.verdict(step, tallies)
        out["variants"] = []
        for arm in verdict.arms:
            _, median, p90 = f.variant_times.get(arm.id, (0, None, None))
            out["variants"].append(
                {
                    "id": arm.id,
                    "sent": arm.sent,
                    "yes": arm.yes,
                    "yes_rate": None if arm.yes_rate is None else round(arm.yes_rate, 4),
                    "p_value": None if arm.p_value is None else float(f"{arm.p_value:.4g}"),
                    "lift": None if arm.lift is None else round(arm.lift, 4),
                    "winner": arm.winner,
                    "time_to_yes": {"median_seconds": median, "p90_seconds": p90},
                }
            )
        out["verdict"] = verdict.note
        out["min_sent"] = experiments.min_sent_for(step)
        if facts.picked:
            out["picked"] = {
                "variant": facts.picked.get("variant"),
                "at": facts.picked.get("at"),
                "why": facts.picked.get("why"),
            }
    return out


def _unmarked(step: Step, found: dict[tuple[str, str | None, str], int]) -> dict[str | None, int]:
    """Per variant, the people this step's own ask (a goal event) converted whose yes the
    step's email lacks (recorded before the yes was marked first): they said this step's yes."""
    if not step.events or not step.advance_on.accepts(YesBy.event):
        return {}
    out: dict[str | None, int] = {}
    for (step_id, variant, name), n in found.items():
        if step_id == step.id and name in step.events:
            out[variant] = out.get(variant, 0) + n
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
    skips = tx.reports.skips_by_step(sequence.id, [s.id for s in sequence.steps], since)
    entering = tx.funnel.entering(sequence.id, since)
    unmarked = tx.funnel.converted_unmarked(sequence.id, since)
    steps = []
    for step in sequence.steps:
        facts = _Facts(
            funnel=funnel.get(step.id, StepFunnel()),
            tallies=[t for t in tallies if t.step_id == step.id],
            where=where.get(step.id, {}),
            skips=skips.get(step.id, Skips()),
            entering=entering.get(step.id, 0),
            picked=tx.answers.winner(sequence.id, step.id) if step.pick_winner else None,
            unmarked=_unmarked(step, unmarked),
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


def pct(rate: float | None) -> str:
    """A rate as a percentage with one decimal, or "-" when there is none."""
    return "-" if rate is None else f"{rate * 100:.1f}%"


def span(seconds: float | None) -> str:
    """A duration in the unit that reads best: 45s, 12m, 3.5h, 2.1d; "-" when there is none."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


# (label, width) of the step table's columns (negative: left-aligned); LEGEND says what each
# one counts.
COLUMNS = (
    ("step", -14),
    ("entered", 7),
    ("sent", 6),
    ("rem.", 5),
    ("yes", 5),
    ("rate", 7),
    ("click/reply/event", -17),
    ("median", 6),
    ("p90", 6),
    ("yes after rem.", 14),
    ("people clicked", 14),
    ("bot clicks", 10),
    ("waiting", 7),
    ("left", -4),
)

LEGEND = (
    (
        "entered",
        "visits that reached the step (a person sent back to it, or entering again, counts again)",
    ),
    ("sent", "the step's own email, sent (one per visit; its reminders are not counted here)"),
    ("rem.", "its reminders sent"),
    ("yes", "visits whose email went and got the step's yes; rate: yes / sent"),
    ("click/reply/event", "how those yeses came"),
    ("median, p90", "time from the email's sending to the yes"),
    ("yes after rem.", "yeses that came after a reminder had gone"),
    (
        "people clicked",
        "distinct people with a click judged a person's on any of the step's"
        " emails, reminders included",
    ),
    ("bot clicks", "clicks judged machines' (each click of a flood counted)"),
    ("waiting", "people at the step now"),
    ("left", "people who left the sequence at the step, by why"),
    (
        "answered before its email",
        "visits whose ask, an outside event, came before the"
        " email went: not sent, a yes, not in the rate",
    ),
    ("skipped by when", "visits the step's condition skipped, by reason"),
)


def _cells(values: tuple[Any, ...]) -> str:
    return "  " + " ".join(
        f"{v!s:<{-w}}" if w < 0 else f"{v!s:>{w}}"
        for v, (_, w) in zip(values, COLUMNS, strict=True)
    )


def format_report(report: dict[str, Any]) -> str:
    lines: list[str] = []
    for seq in report["sequences"]:
        convert = span(seq["median_seconds_to_convert"])
        lines.append(
            f"\n{seq['id']} ({seq['name']}): {seq['enrolled']} enrolled, "
            f"{seq['converted']} converted ({pct(seq['conversion_rate'])}; median {convert}"
            " from enrolling)"
        )
        lines.append(_cells(tuple(label for label, _ in COLUMNS)).rstrip())
        for st in seq["steps"]:
            t = st["time_to_yes"]
            left = ", ".join(f"{k} {n}" for k, n in st["left"].items()) or "-"
            row = (
                st["id"],
                st["entered"],
                st["sent"],
                st["reminded"],
                st["yes"],
                pct(st["yes_rate"]),
                f"{st['by_click']}/{st['by_reply']}/{st['by_event']}",
                span(t["median_seconds"]),
                span(t["p90_seconds"]),
                st["after_reminder"],
                st["human_clickers"],
                st["bot_clicks"],
                st["waiting"],
                left,
            )
            lines.append(_cells(row).rstrip())
            if st["yes_rate"]:
                lines.append(f"  {'':<14}{'#' * round(min(st['yes_rate'], 1.0) * 40)}")
            lines += _details(st)
    if report["sequences"]:
        lines.append("")
        lines += [f"{label}: {meaning}" for label, meaning in LEGEND]
    return "\n".join(lines).lstrip("\n")


def _details(st: dict[str, Any]) -> list[str]:
    lines = []
    if st["answered_early"]:
        lines.append(
            f"      answered before its email: {st['answered_early']}"
            " (the event it asks for came first; not sent)"
        )
    if st["skipped"]:
        why = "; ".join(f"{w['reason']}: {w['count']}" for w in st["skipped_why"])
        lines.append(f"      skipped by when: {st['skipped']} ({why})")
    if st["bot_reasons"]:
        reasons = ", ".join(f"{r['reason']} {r['clicks']}" for r in st["bot_reasons"])
        lines.append(f"      bot clicks mostly: {reasons}")
    for a in st.get("answers", []):
        times = "time" if a["chose"] == 1 else "times"
        lines.append(f"      answer {a['id']:<14} chosen {a['chose']} {times} (visits)")
    for v in st.get("variants", []):
        p = "" if v["p_value"] is None else f"  p={v['p_value']:.3g}"
        lift = "" if v["lift"] is None else f"  lift {v['lift'] * 100:+.1f}%"
        median = v["time_to_yes"]["median_seconds"]
        more = f"  median {span(median)} to yes" if median is not None else ""
        more += "  WINNER" if v["winner"] else ""
        lines.append(
            f"      variant {v['id']:<12} sent {v['sent']:>6}  yes {v['yes']:>6}  "
            f"{pct(v['yes_rate']):>7}{p}{lift}{more}"
        )
    if "verdict" in st:
        lines.append(f"      {st['verdict']}")
        picked = st.get("picked")
        if picked and picked["variant"]:
            lines.append(f"      since {picked['at']} everyone gets variant {picked['variant']}")
        elif picked:
            lines.append(f"      looked at once on {picked['at']}: no winner; the split goes on")
    return lines
