"""The commands for what marketers write, the lists they bring and what they look at:
``nurture preview | simulate | import | remove | report | person``. Registered on the parser
by ``nurture.cli``; each parses, calls a service and prints, as there."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nurture.errors import SubscribeError

__all__ = ["register"]


def _services(args: argparse.Namespace) -> Any:
    from nurture.cli import _services as services

    return services(args)


def cmd_preview(args: argparse.Namespace) -> int:
    from nurture.services import build_renderer, load_sequences
    from nurture.tokens import Signer
    from nurture.vocabulary import MessageKind

    settings = _settings_of(args)
    env, catalog = load_sequences(settings)
    sequence = catalog.get(args.sequence)
    if sequence is None:
        raise SubscribeError(
            f"unknown sequence {args.sequence!r} (known: {', '.join(sorted(catalog.sequences))})"
        )
    if not sequence.has_step(args.step):
        raise SubscribeError(
            f"sequence {sequence.id} has no step {args.step!r} "
            f"(steps: {', '.join(s.id for s in sequence.steps)})"
        )
    step = sequence.step(args.step)
    if args.reminder and not 1 <= args.reminder <= len(step.reminders):
        raise SubscribeError(f"step {step.id} has {len(step.reminders)} reminders")
    if args.variant and step.variant(args.variant) is None:
        names = ", ".join(v.id for v in step.variants) or "none"
        raise SubscribeError(f"step {step.id} has no variant {args.variant!r} (variants: {names})")
    from nurture.conditions import sample_person

    fields, tags = sample_person(sequence)
    given = _fields_of(args.field)
    if "tags" in given:
        tags = [t for t in given.pop("tags").split(";") if t]
    fields.update(given)
    # The same renderer as the daemon's (open pixel, honeypot), signing with a throwaway key:
    # what is printed is what is sent, but its links lead nowhere.
    renderer = build_renderer(settings, env, Signer("preview-only-key"))
    kind = MessageKind(args.reminder)
    variant = args.variant or (step.variants[0].id if step.variants else None)
    out = renderer.render(
        sequence,
        step.id,
        kind,
        message_id=1,
        email=args.email,
        fields=fields,
        tags=tags,
        variant=variant,
    )
    print(f"From: {sequence.sender}\nTo: {args.email}\nSubject: {out.subject}")
    for line in _ask_lines(step, variant):
        print(line)
    print(_window_line(sequence, step, fields.get("timezone"), settings.default_timezone))
    print()
    print("----- text -----")
    print(out.text.rstrip())
    if not args.text_only:
        print("\n----- html -----")
        print(out.html.rstrip())
    print("\n----- links -----")
    for i, link in enumerate(out.links):
        what = (
            f"   (answer: {link.answer})"
            if link.answer
            else "   (micro-yes)"
            if link.counts
            else "   (hidden honeypot)"
            if link.honeypot
            else ""
        )
        print(f"{i}: {link.url}{what}")
    return 0


def _ask_lines(step: Any, variant: str | None) -> list[str]:
    """What preview says about a step beyond its email: who gets it, what yes it takes,
    where each answer leads, which variant this is."""
    out = []
    if step.when:
        out.append(f"# sent only when: {step.when} (else skipped, on to the next step)")
    takes = step.advance_on.value.replace("_or_", " or ")
    out.append(f"# yes: {takes}" + (f" (events: {', '.join(step.events)})" if step.events else ""))
    for a in step.answers:
        where = f"goto {a.goto}" if a.goto else "next step"
        said = [f"tag {t}" for t in a.tags] + [f"set {k}={v!r}" for k, v in a.fields]
        out.append(f"# answer {a.id}: {where}" + (f"; {', '.join(said)}" if said else ""))
    if step.variants:
        weights = ", ".join(f"{v.id} (weight {v.weight})" for v in step.variants)
        out.append(f"# variant {variant} of {weights}")
    return out


def _window_line(sequence: Any, step: Any, zone: object, default_zone: str) -> str:
    from nurture.sendtimes import describe

    window = sequence.window_for(step)
    if window is None:
        why = " (a confirmation: the person is waiting)" if step.confirms else ""
        return "# goes out: as soon as it is due" + why
    where = f"{zone}" if zone else f"the person's timezone field, else {default_zone}"
    spread = int(window.spread.total_seconds() // 60)
    return (
        f"# goes out: {describe(window)} in {where}; due outside, it waits for the next "
        f"opening (spread over its first {spread}m)"
    )


def _settings_of(args: argparse.Namespace) -> Any:
    from nurture.cli import _settings

    return _settings(args)


def _shown(text: object) -> str:
    from nurture.cli import shown

    return shown(text)


def _fields_of(pairs: list[str]) -> dict[str, str]:
    from nurture.cli import _fields

    return _fields(pairs)


def cmd_import(args: argparse.Namespace) -> int:
    from nurture.importer import import_csv

    services = _services(args)
    tty = sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        if tty:
            width = 30
            filled = round(width * done / total) if total else width
            bar = "#" * filled + "." * (width - filled)
            print(f"\r[{bar}] {done}/{total}", end="" if done < total else "\n", file=sys.stderr)

    report = import_csv(
        services.subscriptions,
        Path(args.file),
        sequence_id=args.sequence,
        now=services.clock.now,
        confirmed=args.confirmed,
        tags=args.tag,
        progress=progress,
        encoding=args.encoding,
    )
    for refused in report.refused:
        print(
            _shown(f"{args.file}:{refused.line}: {refused.email or '-'}: {refused.reason}"),
            file=sys.stderr,
        )
    print(
        f"{report.rows} rows: {report.enrolled} enrolled in {args.sequence}, "
        f"{report.reentered} entered it again, {report.already} were in it already, "
        f"{len(report.refused)} refused"
    )
    return 1 if report.refused else 0


def cmd_remove(args: argparse.Namespace) -> int:
    services = _services(args)
    removed = services.subscriptions.remove(
        email=args.email, sequence_id=args.sequence, now=services.clock.now()
    )
    if removed:
        print(f"{args.email} removed from {args.sequence}; their other sequences go on")
    else:
        print(f"{args.email} had already left {args.sequence}; nothing changed")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from nurture.errors import SubscribeError
    from nurture.report import build_report, format_report

    services = _services(args)
    if args.sequence and services.catalog.get(args.sequence) is None:
        known = ", ".join(sorted(services.catalog.sequences))
        raise SubscribeError(f"unknown sequence {args.sequence!r} (known: {known})")
    with services.store.transaction() as tx:
        report = build_report(
            tx,
            services.catalog,
            services.journey.experiments,
            sequence_id=args.sequence,
            since=_since(args.since),
        )
    print(json.dumps(report, indent=2) if args.json else _shown(format_report(report)))
    return 0


def register_preview(add: Any) -> None:
    sp = add("preview", "print the rendered subject, text and HTML of one step", cmd_preview)
    sp.add_argument("sequence")
    sp.add_argument("step")
    sp.add_argument("--reminder", type=int, default=0, help="preview reminder N (1-based)")
    sp.add_argument("--email", default="sample@example.com")
    sp.add_argument("--field", action="append", default=[], metavar="KEY=VALUE")
    sp.add_argument("--text-only", action="store_true")
    sp.add_argument("--variant", metavar="ID", help="preview this A/B variant of the step")


def cmd_simulate(args: argparse.Namespace) -> int:
    from nurture.conditions import Conditions
    from nurture.services import load_sequences
    from nurture.simulate import PERSONAS, format_runs, load_personas, simulate, warnings

    settings = _settings_of(args)
    env, catalog = load_sequences(settings)
    sequence = catalog.get(args.sequence)
    if sequence is None:
        known = ", ".join(sorted(catalog.sequences))
        raise SubscribeError(f"unknown sequence {args.sequence!r} (known: {known})")
    zone, start = _simulated_start(args.timezone or settings.default_timezone, args.start)
    personas = load_personas(Path(args.personas)) if args.personas else list(PERSONAS)
    conditions = Conditions(env)

    def subject(source: str, person: dict[str, Any]) -> str:
        try:
            return " ".join(env.from_string(source).render(subscriber=person).split())
        except Exception:  # noqa: BLE001 - validate renders every subject; show it as written
            return source

    runs = [
        simulate(sequence, p, conditions=conditions, render=subject, zone=zone, start=start)
        for p in personas
    ]
    if args.json:
        body = {"personas": [r.to_json() for r in runs], "notes": warnings(sequence, runs)}
        print(json.dumps(body, indent=2))
    else:
        print(format_runs(sequence, runs))
    return 0


def _simulated_start(zone_name: str, start: str | None) -> tuple[Any, datetime]:
    from nurture.sendtimes import zone_named
    from nurture.simulate import START

    zone = zone_named(zone_name)
    if zone is None:
        raise SubscribeError(f"--timezone: {zone_name!r} is not an IANA time zone name")
    if start is None:
        return zone, START
    try:
        when = datetime.fromisoformat(start)
    except ValueError:
        raise SubscribeError(
            f"--start: {start!r} is not a date and time like 2026-01-09 18:00"
        ) from None
    return zone, (when if when.tzinfo else when.replace(tzinfo=zone)).astimezone(UTC)


def cmd_person(args: argparse.Namespace) -> int:
    from nurture.people import normalize_email
    from nurture.person import format_story, person_story

    services = _services(args)
    address = normalize_email(args.email)
    with services.store.transaction() as tx:
        story = person_story(
            tx,
            services.catalog,
            services.signer,
            address,
            message_id_domain=services.settings.message_id_domain,
        )
    if story is None:
        raise SubscribeError(f"no subscriber {address}")
    # JSON escapes every control character itself.
    print(json.dumps(story, indent=2) if args.json else _shown(format_story(story)))
    return 0


def _since(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise SubscribeError(f"--since takes a date like 2026-12-01 (got {value!r})") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def cmd_dkim(args: argparse.Namespace) -> int:
    if args.action == "check":
        return _dkim_check(args)
    from nurture.mail.dkim import dns_record, keygen

    if not args.selector or not args.domain:
        raise SubscribeError("nurture dkim keygen needs --selector and --domain")
    out = Path(args.out or f"{args.selector}.{args.algorithm}.pem")
    if out.exists():
        raise SubscribeError(f"{out} exists; nurture never overwrites a key")
    key = keygen(out, args.algorithm)
    name = f"{args.selector}._domainkey.{args.domain.rstrip('.')}."
    print(f"wrote the private key to {out} (keep it secret; NURTURE_DKIM_PRIVATE_KEY_FILE={out})")
    print("publish this DNS record:")
    print(f'{name} IN TXT "{dns_record(key)}"')
    return 0


def _dkim_check(args: argparse.Namespace) -> int:
    """The configured keys against their published records, for each signing domain."""
    from email.utils import parseaddr

    from nurture.mail.dkim import DkimSigner, check_records, dns_lookup
    from nurture.services import load_sequences

    settings = _settings_of(args)
    signer = DkimSigner.from_settings(settings)
    if signer is None:
        raise SubscribeError("no DKIM key is configured (NURTURE_DKIM_SELECTOR, _PRIVATE_KEY_FILE)")
    domains = [args.domain or signer.domain or ""]
    if not domains[0]:  # each sequence's From domain signs its mail
        _, catalog = load_sequences(settings)
        domains = sorted({parseaddr(s.sender)[1].rpartition("@")[2].lower() for s in catalog})
    lines = check_records(signer, domains, dns_lookup(args.resolver))
    print("\n".join(lines))
    return 0 if all(line.startswith("ok") for line in lines) else 1


def register(add: Any) -> None:
    sp = add(
        "dkim",
        "DKIM keys: `keygen` writes one and prints its DNS record; `check` looks the records up",
        cmd_dkim,
    )
    sp.add_argument("action", choices=["keygen", "check"])
    sp.add_argument("--selector", help="keygen: the selector the record is published under")
    sp.add_argument("--domain", help="the signing domain (check: default, every From domain)")
    sp.add_argument("--resolver", metavar="HOST[:PORT]", help="check: ask this DNS server")
    sp.add_argument("--algorithm", choices=["rsa", "ed25519"], default="rsa")
    sp.add_argument(
        "--out", metavar="FILE", help="where to write the key (default SELECTOR.ALGORITHM.pem)"
    )
    sp = add(
        "person", "one person: every enrollment, email and event, and what is due next", cmd_person
    )
    sp.add_argument("email")
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    sp = add(
        "simulate",
        "run a sequence on a virtual clock for personas (eager, after-reminder, silent)",
        cmd_simulate,
    )
    sp.add_argument("sequence")
    sp.add_argument("--personas", metavar="FILE", help="personas from a YAML file")
    sp.add_argument(
        "--timezone", metavar="ZONE", help="the personas' time zone (default: the setting)"
    )
    sp.add_argument(
        "--start",
        metavar="WHEN",
        help="when they subscribe, local time, e.g. '2026-01-09 18:00' (default: a Monday 09:00)",
    )
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    sp = add(
        "import", "enroll every row of a CSV file (email, fields, tags) in a sequence", cmd_import
    )
    sp.add_argument("file", metavar="FILE.csv")
    sp.add_argument("--sequence", required=True)
    sp.add_argument(
        "--confirmed", action="store_true", help="they confirmed elsewhere: no confirmation email"
    )
    sp.add_argument("--tag", action="append", default=[], help="a tag for everyone imported")
    sp.add_argument(
        "--encoding", help="the file's encoding when it has no byte order mark (default utf-8)"
    )
    sp = add("remove", "take an address out of one sequence (not out of the others)", cmd_remove)
    sp.add_argument("email")
    sp.add_argument("--sequence", required=True)
    sp = add(
        "report", "per step: sent, yes (by click, reply, event), answers, A/B verdicts", cmd_report
    )
    sp.add_argument("sequence", nargs="?", help="only this sequence")
    sp.add_argument("--since", metavar="DATE", help="count only what happened since (UTC)")
    sp.add_argument("--json", action="store_true", help="print one JSON object")
