"""Durations as marketers write them in sequence files: parse, reject with a sentence, format."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nurture.durations import format_duration, parse_duration

MINUTE, HOUR, DAY, WEEK = 60, 3600, 86400, 7 * 86400


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("10m", 10 * MINUTE),
        ("12h", 12 * HOUR),
        ("3d", 3 * DAY),
        ("2w", 2 * WEEK),
        ("1h30m", HOUR + 30 * MINUTE),
        ("1d12h", DAY + 12 * HOUR),
        ("1w2d3h4m5s", WEEK + 2 * DAY + 3 * HOUR + 4 * MINUTE + 5),
        ("0", 0),
        (0, 0),
        ("0s", 0),
        (" 0 ", 0),
        ("1h 30m", HOUR + 30 * MINUTE),
        ("  2d  ", 2 * DAY),
        ("5 m", 5 * MINUTE),
        ("90m", 90 * MINUTE),
    ],
)
def test_valid_durations(text: object, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "value",
    [
        "10",
        10,
        "3 days",
        "abc",
        True,
        False,
        None,
        -1,
        "-1h",
        "1.5h",
        "",
        "   ",
        "h",
        "1x",
        "1h30",
        "1h and 30m",
        5.0,
        ["1h"],
    ],
)
def test_invalid_durations_raise_value_error(value: object) -> None:
    with pytest.raises(ValueError, match="unit"):
        parse_duration(value)


@pytest.mark.parametrize("value", ["10", 10, " 10 "])
def test_number_without_unit_suggests_units(value: object) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    message = str(info.value)
    assert "has no unit" in message
    assert "10s" in message and "10d" in message


def test_words_are_not_units() -> None:
    with pytest.raises(ValueError) as info:
        parse_duration("3 days")
    assert "'3 days' is not a duration" in str(info.value)
    assert "3d" in str(info.value)


def test_negative_number_error_does_not_suggest_a_negative_duration() -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(-1)
    message = str(info.value)
    assert "-1 is not a duration" in message
    for bad in ("-1s", "-1m", "-1h", "-1d"):
        assert bad not in message


@pytest.mark.parametrize("value", ["\uff13d", "\u0663d", "\u0663", "1\u0660m", "\u00b2h"])
def test_only_ascii_digits_are_numbers(value: str) -> None:
    # Fullwidth 3, Arabic-Indic 3 and 0, superscript 2: int() takes some of them, we do not.
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert f"{value!r} is not a duration" in str(info.value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (1, "1s"),
        (90, "1m30s"),
        (HOUR, "1h"),
        (DAY + 2 * HOUR, "1d2h"),
        (WEEK, "1w"),
        (9 * DAY + 5, "1w2d5s"),
    ],
)
def test_format_duration(seconds: int, text: str) -> None:
    assert format_duration(timedelta(seconds=seconds)) == text


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        ("0", "0s"),
        ("90m", "1h30m"),
        ("1h30m", "1h30m"),
        ("1h 30m", "1h30m"),
        ("48h", "2d"),
        ("7d", "1w"),
        ("60s", "1m"),
        ("1w2d3h4m5s", "1w2d3h4m5s"),
    ],
)
def test_format_of_parse_is_the_canonical_spelling(written: str, canonical: str) -> None:
    assert format_duration(parse_duration(written)) == canonical
    # The canonical spelling is a fixed point.
    assert format_duration(parse_duration(canonical)) == canonical


@settings(database=None)
@given(st.integers(min_value=0, max_value=10 * 52 * WEEK))
def test_parse_of_format_round_trips_whole_seconds(seconds: int) -> None:
    value = timedelta(seconds=seconds)
    assert parse_duration(format_duration(value)) == value
