"""Reading one sequence file as YAML: the size limit, no anchors, a syntax error with its line,
and the line of every key path, so that each later problem can say where it is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from nurture.errors import Problem
from nurture.sequences.schema import Loc

__all__ = ["MAX_FILE_BYTES", "read_yaml", "line_for"]

MAX_FILE_BYTES = 1024 * 1024


def read_yaml(path: Path, problems: list[Problem]) -> tuple[dict[str, Any], dict[Loc, int]] | None:
    """The file's top-level mapping and the line of each key path; None (with the problem
    appended) when there is no mapping to read: too big, unreadable, an anchor, a syntax
    error, or not a mapping."""
    source = str(path)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            problems.append(
                Problem(source, None, f"the file is larger than {MAX_FILE_BYTES // 1024} KiB")
            )
            return None
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(Problem(source, None, f"cannot read the file: {exc}"))
        return None
    refused = _anchor_problem(source, text)
    if refused is not None:
        problems.append(refused)
        return None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problems.append(_yaml_problem(source, exc))
        return None
    if node is None or not isinstance(data, dict):
        problems.append(
            Problem(source, 1, "a sequence file must be a mapping with id, name, from and steps")
        )
        return None
    return data, _line_map(node, source, problems)


def line_for(lines: dict[Loc, int], loc: Loc) -> int | None:
    """The line of a key path, or of the nearest key above it that has one."""
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def _line_map(node: yaml.Node, source: str, problems: list[Problem]) -> dict[Loc, int]:
    """Map each key path of a YAML document to its 1-based line; report duplicate keys."""
    lines: dict[Loc, int] = {}

    def walk(n: yaml.Node, path: Loc) -> None:
        lines.setdefault(path, n.start_mark.line + 1)
        if isinstance(n, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in n.value:
                key = str(key_node.value)
                if key in seen:
                    problems.append(
                        Problem(source, key_node.start_mark.line + 1, f"duplicate key '{key}'")
                    )
                seen.add(key)
                lines[(*path, key)] = key_node.start_mark.line + 1
                walk(value_node, (*path, key))
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                walk(item, (*path, i))

    walk(node, ())
    return lines


def _anchor_problem(source: str, text: str) -> Problem | None:
    """Anchors and aliases let a few lines of YAML grow into gigabytes (the "billion laughs"):
    sequence files take none. Read as a stream of events, before anything is built."""
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            anchor = getattr(event, "anchor", None)
            if anchor is None:
                continue
            what = (
                f"alias '*{anchor}'"
                if isinstance(event, yaml.AliasEvent)
                else f"anchor '&{anchor}'"
            )
            return Problem(
                source,
                event.start_mark.line + 1 if event.start_mark else None,
                f"YAML {what}: sequence files take no anchors or aliases (a few lines of them "
                "can grow huge); write the value out where it is used",
            )
    except yaml.YAMLError:
        return None  # the composer reports it, with its line
    return None


def _yaml_problem(source: str, exc: yaml.YAMLError) -> Problem:
    if not isinstance(exc, yaml.MarkedYAMLError):
        return Problem(source, None, f"YAML syntax error: {exc}")
    mark = exc.problem_mark or exc.context_mark
    what = exc.problem or "invalid YAML"
    if exc.context and exc.context_mark is not None and exc.context_mark is not mark:
        what += f" ({exc.context} that starts at line {exc.context_mark.line + 1})"
    return Problem(source, mark.line + 1 if mark else None, f"YAML syntax error: {what}")
