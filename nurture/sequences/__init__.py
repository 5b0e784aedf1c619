"""Sequences: what marketers write (YAML files and their templates), checked and loaded into
frozen domain objects. ``model`` holds the objects, ``schema`` the keys a file may have,
``checks`` the rules across keys and templates, ``loader`` reading the files."""

from __future__ import annotations

from nurture.sequences.checks import TEMPLATE_NAMES
from nurture.sequences.loader import Reading, load_catalog, load_sequence_file, read_sequences
from nurture.sequences.model import (
    AdvanceOn,
    Answer,
    Catalog,
    PickWinner,
    Reentry,
    Reminder,
    SendWindow,
    Sequence,
    Step,
    Timeout,
    Variant,
)

__all__ = [
    "AdvanceOn",
    "Reminder",
    "Timeout",
    "Answer",
    "Variant",
    "PickWinner",
    "Reentry",
    "SendWindow",
    "Step",
    "Sequence",
    "Catalog",
    "TEMPLATE_NAMES",
    "Reading",
    "read_sequences",
    "load_catalog",
    "load_sequence_file",
]
