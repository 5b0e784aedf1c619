"""Abuse limits (nurture.limits) on a hand-moved clock: counts per key in fixed windows,
bounded in keys, and the three limits built on them."""

from __future__ import annotations

from nurture.limits import AbuseLimits, Window


class Hand:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_a_window_counts_per_key_and_starts_again() -> None:
    hand = Hand()
    w = Window(10, clock=hand)
    assert [w.hit("a")[0] for _ in range(3)] == [1, 2, 3]
    assert w.hit("b") == (1, 100.0)
    hand.t += 9.9
    assert w.hit("a") == (4, 100.0)
    hand.t += 0.1
    assert w.hit("a") == (1, 110.0)  # a new window


def test_a_window_forgets_the_least_recently_used_keys() -> None:
    w = Window(10, max_keys=3, clock=Hand())
    for key in "abcd":
        w.hit(key)
    assert w.hit("a")[0] == 1  # forgotten, counted again from one
    assert w.hit("d")[0] == 2


def test_clicks_past_the_link_or_client_limit_are_summarised() -> None:
    limits = AbuseLimits(click_limit=3, client_limit=5, seconds=10)
    results = [limits.click(1, 0, "198.51.100.1") for _ in range(5)]
    assert results[:3] == [None, None, None]
    assert [r[0] for r in results[3:] if r] == [1, 2]  # the clicks past the limit, counted
    # Another link from the same client: the client's limit (5) is reached at its sixth.
    assert limits.click(1, 1, "198.51.100.1") is not None
    assert limits.click(2, 0, "203.0.113.9") is None  # someone else is not held back


def test_opens_and_the_form() -> None:
    limits = AbuseLimits(click_limit=2, subscribe_per_minute=2)
    assert [limits.open(7) for _ in range(3)] == [True, True, False]
    assert [limits.subscribe("192.0.2.1") for _ in range(3)] == [True, True, False]
    assert limits.subscribe("192.0.2.2")


def test_the_api_tokens_sign_ups() -> None:
    limits = AbuseLimits(subscribe_per_minute=1, api_subscribe_per_minute=2)
    assert [limits.api_subscribe("token") for _ in range(3)] == [True, True, False]
    assert limits.subscribe("192.0.2.1")  # the form's budget is untouched
    unlimited = AbuseLimits(api_subscribe_per_minute=0)
    assert all(unlimited.api_subscribe("token") for _ in range(5000))
