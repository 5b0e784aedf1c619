"""The command line: ``nurture run | validate | preview | subscribe | unsubscribe | status |
inbound | resume | move | end | db``, and ``import | remove | report`` (``nurture.cli_more``).

Each command parses its arguments, calls a service and prints; exit status 1 means the work
could not be done (bad files, bad settings, refused input), 2 a usage mistake.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from nurture.config import Settings, check_unknown_variables, load_settings
from nurture.errors import ConfigError, NurtureError, SequenceError, SubscribeError

if TYPE_CHECKING:
    from nurture.services import Services

__all__ = ["main", "shown"]

# C0 but tab and newline, DEL, C1: what a terminal may take as a command.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def shown(text: object) -> str:
    """Text that came from outside (a form, a CSV, an inbound From, a relay's answer) as it
    may reach the operator's terminal: control characters written out (ESC as \\x1b), so
    that none can retitle, clear or rewrite the terminal."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


def _settings(args: argparse.Namespace) -> Settings:
    # A typo such as NURTURE_SMTP_HOTS would otherwise send production mail to the catcher.
    check_unknown_variables()
    overrides: dict[str, Any] = {}
    if getattr(args, "sequences", None):
        overrides["sequences_dir"] = args.sequences
    if getattr(args, "templates", None):
        overrides["templates_dir"] = args.templates
    settings = load_settings(**overrides)
    if args.command == "run":
        _logging(settings.log_level, settings.log_format)
    return settings


def _fields(pairs: Sequence[str]) -> dict[str, str]:
    fields = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SubscribeError(f"--field takes KEY=VALUE, got {pair!r}")
        fields[key] = value
    return fields


def _logging(level: str, form: str = "text") -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if form == "json":
        from nurture.logs import JsonFormatter

        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    # One line per tick from APScheduler drowns what matters.
    quiet = max(logging.WARNING, logging.getLevelName(level))
    for noisy in ("apscheduler", "mail.log", "alembic.runtime.migration"):
        logging.getLogger(noisy).setLevel(quiet)


def cmd_run(args: argparse.Namespace) -> int:
    from nurture import daemon

    settings = _settings(args)
    try:
        # SIGTERM and SIGINT stop the daemon gracefully (nurture.daemon); a Ctrl-C before it
        # is up just ends the command.
        asyncio.run(daemon.run(settings, role=args.role))
    except KeyboardInterrupt:
        return 130
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from nurture import edits
    from nurture.services import load_sequences

    _, catalog = load_sequences(_settings(args))
    for seq in catalog:
        count = f"{len(seq.steps)} step{'s' if len(seq.steps) != 1 else ''}"
        print(f"ok  {seq.id}: {count} ({', '.join(s.id for s in seq.steps)}) from {seq.source}")
    if not args.against_db:
        return 0
    services = _services(args)
    with services.store.transaction() as tx:
        stranded = edits.stranded(services.journey, tx)
    for line in edits.describe_stranded(stranded):
        print(shown(line), file=sys.stderr)
    if not stranded:
        print("ok  nobody in the database waits at a step these files do not have")
    return 1 if stranded else 0


def cmd_move(args: argparse.Namespace) -> int:
    from nurture import edits

    services = _services(args)
    try:
        with services.store.transaction() as tx:
            n = edits.move(
                services.journey,
                tx,
                args.sequence,
                args.from_step,
                args.to_step,
                now=services.clock.now(),
            )
    except ValueError as exc:
        raise SubscribeError(str(exc)) from None
    print(f"moved {n} from {args.sequence}/{args.from_step} to {args.to_step}")
    return 0


def cmd_end(args: argparse.Namespace) -> int:
    from nurture import edits

    services = _services(args)
    with services.store.transaction() as tx:
        n = edits.end(services.journey, tx, args.sequence, args.step, now=services.clock.now())
    print(f"ended {args.sequence} for {n} waiting at {args.step}")
    return 0


def _services(args: argparse.Namespace) -> Services:
    from nurture.db.migrate import ensure_schema
    from nurture.services import build_services

    settings = _settings(args)
    ensure_schema(settings.database_url)
    return build_services(settings)


def cmd_subscribe(args: argparse.Namespace) -> int:
    services = _services(args)
    result = services.subscriptions.subscribe(
        email=args.email,
        sequence_id=args.sequence,
        fields=_fields(args.field),
        now=services.clock.now(),
        confirmed=args.confirmed,
        resubscribe=args.resubscribe,
        tags=args.tag,
    )
    if result.outcome == "reentered":
        print(f"{args.email} enters {args.sequence} again, from the first step")
    elif result.created:
        print(
            f"enrolled {args.email} in {args.sequence} (subscriber {result.subscriber_id}, "
            f"{result.status.value}); the daemon sends the first email"
        )
    else:
        print(f"{args.email} is already in {args.sequence}; nothing changed")
    return 0


def cmd_unsubscribe(args: argparse.Namespace) -> int:
    from nurture.subscriptions import normalize_email

    services = _services(args)
    address = normalize_email(args.email)
    changed = services.subscriptions.unsubscribe_address(address, now=services.clock.now())
    print(f"{address} unsubscribed" if changed else f"{address} was already unsubscribed")
    return 0


STATUS_LEGEND = (
    "\nwaiting, held (for a confirmation), completed, left: people (enrollments) at the step"
    " now, or when they finished or left the sequence; human clicks, bot clicks: clicks on"
    " the step's emails, its reminders included, as judged (each click of a flood counted)"
)


def cmd_status(args: argparse.Namespace) -> int:
    services = _services(args)
    with services.store.transaction() as tx:
        rows = tx.reports.status_counts()
        messages = tx.reports.message_counts()
        waiting = tx.reports.waiting_counts()
        inbound = tx.inbound.counts()
        pause = tx.control.pause()
        clicks: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
        for seq_id, step_id, verdict, n in tx.reports.click_counts():
            clicks[(seq_id, step_id)][verdict] = n
    by_seq: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        label = r.status if r.status != "exited" else f"left:{r.exit_reason}"
        by_seq[r.sequence_id][r.step_id][label] = r.count
    # Loaded sequences in file order, then any the database still has but no file defines.
    layout = [(seq.id, [step.id for step in seq.steps]) for seq in services.catalog]
    layout += [
        (seq_id, sorted(by_seq[seq_id]))
        for seq_id in by_seq
        if services.catalog.get(seq_id) is None
    ]
    if args.sequence:
        if args.sequence not in dict(layout):
            known = ", ".join(seq_id for seq_id, _ in layout)
            raise SubscribeError(f"unknown sequence {args.sequence!r} (known: {known})")
        layout = [(seq_id, steps) for seq_id, steps in layout if seq_id == args.sequence]
    if not rows:
        print("no enrollments yet")
    for seq_id, steps in layout:
        counts = by_seq.get(seq_id, {})
        total = sum(sum(v.values()) for v in counts.values())
        print(shown(f"\n{seq_id}: {total} enrollments"))
        print(
            f"  {'step':<16}{'waiting':>9}{'held':>7}{'completed':>11}"
            f"{'human clicks':>14}{'bot clicks':>12}  left (why)"
        )
        for step_id in steps + [s for s in counts if s not in steps]:
            c = counts.get(step_id, {})
            left = ", ".join(
                f"{k.split(':', 1)[1]} {v}" for k, v in sorted(c.items()) if k.startswith("left:")
            )
            k = clicks.get((seq_id, step_id), {})
            print(
                shown(
                    f"  {step_id:<16}{c.get('active', 0):>9}{c.get('held', 0):>7}"
                    f"{c.get('completed', 0):>11}{k.get('human', 0):>14}{k.get('bot', 0):>12}"
                    f"  {left or '-'}"
                )
            )
    if layout:
        print(STATUS_LEGEND)
    emails = ", ".join(f"{k} {v}" for k, v in sorted(messages.items())) or "none"
    print(f"\nemails (steps' and reminders'), by status: {emails}")
    if waiting:
        why = {"window": "their send window", "cap": "the per-person cap", "pace": "pacing"}
        print(
            "  queued, waiting for "
            + ", ".join(f"{why.get(k, k)} {v}" for k, v in sorted(waiting.items()))
        )
    if pause is not None:
        print(
            f"SENDING PAUSED since {pause.since:%Y-%m-%d %H:%M:%S} UTC: {shown(pause.reason)}\n"
            f"  retried at {pause.until:%Y-%m-%d %H:%M:%S} UTC; `nurture resume` retries now"
        )
    if inbound:
        print(
            "inbound: "
            + ", ".join(f"{k} {v}" for k, v in sorted(inbound.items()))
            + "  (nurture inbound lists them)"
        )
    return 0


def cmd_inbound(args: argparse.Namespace) -> int:
    services = _services(args)
    if args.raw is not None:
        with services.store.transaction() as tx:
            raw = tx.inbound.raw(args.raw)
        if raw is None:
            raise SubscribeError(f"no inbound message {args.raw} was kept")
        sys.stdout.buffer.write(raw)
        return 0
    with services.store.transaction() as tx:
        rows = tx.inbound.newest(args.limit, unmatched_reports=args.unmatched)
        unmatched = tx.inbound.unmatched_reports()
    if not rows:
        print("no unmatched reports" if args.unmatched else "no inbound mail yet")
    for r in rows:
        kept = f"  (kept: nurture inbound --raw {r.id})" if r.kept else ""
        print(
            f"{r.id:>6}  {r.received_at:%Y-%m-%d %H:%M:%S}  {r.source or '-':<8}"
            f"{r.kind or '-':<11}{r.status.value:<11}{shown(r.sender or '-')}"
        )
        if r.note:
            print(f"        {shown(r.note)}{kept}")
    if unmatched and not args.unmatched:
        # Reports that referenced no email we sent to the address they name changed nobody:
        # forged, or a real one whose relay dropped our headers (for a person to look at).
        reports = "1 report" if unmatched == 1 else f"{unmatched} reports"
        print(f"{reports} matched no email we sent; nobody changed (nurture inbound --unmatched)")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    pause = _services(args).dispatcher.handover.resume()
    if pause is None:
        print("sending was not paused")
    else:
        print(f"sending resumes at the next tick (it was paused: {shown(pause.reason)})")
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    from nurture.db.migrate import upgrade

    settings = _settings(args)
    _logging("INFO")
    upgrade(settings.database_url, args.revision)
    print(f"database upgraded to {args.revision}")
    return 0


def _parser() -> argparse.ArgumentParser:
    # No abbreviations: `--sequence` must never be read as `--sequences`.
    p = argparse.ArgumentParser(
        prog="nurture", description=__doc__.splitlines()[0], allow_abbrev=False
    )
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str, func: Any) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_, allow_abbrev=False)
        sp.add_argument("--sequences", help="sequences directory (NURTURE_SEQUENCES_DIR)")
        sp.add_argument("--templates", help="templates directory (NURTURE_TEMPLATES_DIR)")
        sp.set_defaults(func=func)
        return sp

    from nurture import cli_more

    sp = add(
        "run",
        "run the daemon: web app, scheduler tick and (without SMTP) the mail catcher",
        cmd_run,
    )
    sp.add_argument(
        "--role",
        choices=["all", "web", "worker"],
        default="all",
        help="all (default): one process does everything; web: tracked links, form, API and "
        "webhooks only, several may share the port; worker: ticks, sending and IMAP, no HTTP",
    )
    cli_more.register_preview(add)
    sp = add("validate", "check every sequence file and template; list every problem", cmd_validate)
    sp.add_argument(
        "--against-db",
        action="store_true",
        help="also list the people waiting at steps these files do not have (exit 1 if any)",
    )
    sp = add("subscribe", "enroll an address in a sequence", cmd_subscribe)
    sp.add_argument("email")
    sp.add_argument("--sequence", required=True)
    sp.add_argument("--field", action="append", default=[], metavar="KEY=VALUE")
    sp.add_argument(
        "--confirmed",
        action="store_true",
        help="the person already confirmed elsewhere: skip the confirmation step",
    )
    sp.add_argument(
        "--resubscribe",
        action="store_true",
        help="subscribe again someone who unsubscribed (they must confirm again)",
    )
    sp.add_argument("--tag", action="append", default=[], help="a tag for the person")
    sp = add("unsubscribe", "stop every email to an address", cmd_unsubscribe)
    sp.add_argument("email")
    sp = add("status", "per sequence and step: waiting, completed, left and why", cmd_status)
    sp.add_argument("--sequence", metavar="ID", help="only this sequence")
    sp = add("inbound", "inbound mail, newest first: what it was and what was done", cmd_inbound)
    sp.add_argument("--limit", type=int, default=50)
    sp.add_argument("--raw", type=int, metavar="ID", help="print a kept message's bytes")
    sp.add_argument(
        "--unmatched",
        action="store_true",
        help="only delivery and abuse reports that matched no email we sent (they changed nobody)",
    )
    add("resume", "resume sending now after a pause (the relay refused us)", cmd_resume)
    sp = add("move", "move everyone waiting at a step to another step of its sequence", cmd_move)
    sp.add_argument("sequence")
    sp.add_argument("--from", dest="from_step", required=True, metavar="STEP")
    sp.add_argument("--to", dest="to_step", required=True, metavar="STEP")
    sp = add("end", "end the sequence for everyone waiting at a step", cmd_end)
    sp.add_argument("sequence")
    sp.add_argument("--step", required=True)
    cli_more.register(add)
    sp = add("db", "database schema", cmd_db)
    sp.add_argument("action", choices=["upgrade"])
    sp.add_argument("revision", nargs="?", default="head")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SequenceError as exc:
        for problem in exc.problems:
            print(shown(problem), file=sys.stderr)
        n = len(exc.problems)
        print(f"{n} problem{'s' if n != 1 else ''} found", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"configuration error: {shown(exc)}", file=sys.stderr)
        return 1
    except NurtureError as exc:
        print(f"error: {shown(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
