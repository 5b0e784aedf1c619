"""Domain pacing on a hand-moved monotonic clock: rates as written, each domain's budget,
the halving on "slow down" and the slow way back (the send path's use of it is in
tests/integration/test_pacing.py)."""

from __future__ import annotations

import pytest

from nurture.config import load_settings
from nurture.errors import ConfigError
from nurture.pacing import RECOVER_EVERY, Pacer, parse_rate, parse_rates


class Hand:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_rates_as_written() -> None:
    assert parse_rate("20/s") == 20 and parse_rate("600/m") == 10 and parse_rate("36/h") == 0.01
    rates = parse_rates("gmail.com+googlemail.com=20/s, outlook.com=10/s,*=50/s")
    assert rates.group_of("googlemail.com") == ("gmail.com", 20)
    assert rates.group_of("outlook.com") == ("outlook.com", 10)
    assert rates.group_of("example.org") == ("example.org", 50)  # each other domain its own
    assert parse_rates("gmail.com=1/s").group_of("example.org") is None  # no '*': not paced


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("gmail.com=fast", "like 20/s"),
        ("gmail.com", "DOMAIN=RATE"),
        ("gmail.com=1/s,gmail.com=2/s", "two rates"),
        ("not a domain=1/s", "not a domain"),
        ("*+gmail.com=1/s", "not a domain"),
        ("gmail.com=0/s", "like 20/s"),
    ],
)
def test_a_bad_rate_is_one_clear_setting_error(text: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None, domain_rates=text)
    assert "NURTURE_DOMAIN_RATES" in str(caught.value) and says in str(caught.value)
    with pytest.raises(ConfigError, match="NURTURE_MAX_RATE"):
        load_settings(_env_file=None, max_rate="lots")


def test_each_domain_has_its_own_budget_and_a_second_of_burst() -> None:
    hand = Hand()
    pacer = Pacer(parse_rates("slow.example=2/s,*=100/s"), clock=hand)
    # A second's burst goes at once, then nothing until the budget refills.
    assert [pacer.reserve("a@slow.example") for _ in range(3)] == [True, True, False]
    assert pacer.reserve("c@fast.example")  # another domain is not held up
    assert pacer.later("b@slow.example") == pytest.approx(0.5)
    assert pacer.later("b@slow.example", behind=2) == pytest.approx(1.5)
    hand.t += 0.5
    assert [pacer.reserve("b@slow.example") for _ in range(2)] == [True, False]


def test_the_global_ceiling_holds_every_domain() -> None:
    hand = Hand()
    pacer = Pacer(max_rate=parse_rate("1/s"), clock=hand)
    assert [pacer.reserve(f"p@d{i}.example") for i in range(2)] == [True, False]
    hand.t += 1
    assert pacer.reserve("p@d3.example")


def test_slow_down_halves_once_then_comes_back_slowly() -> None:
    hand = Hand()
    pacer = Pacer(parse_rates("slow.example=8/s"), clock=hand)
    assert pacer.throttled("x@slow.example") == 4
    assert pacer.throttled("y@slow.example") == 4  # the other connections heard it too
    hand.t += 1.5
    assert pacer.throttled("x@slow.example") == 2
    assert pacer.throttled("x@other.example") is None  # not paced: the usual retry
    for expected in (2.8, 3.6, 4.4):
        hand.t += RECOVER_EVERY
        pacer.reserve("x@slow.example")
        assert pacer.rates_now()["slow.example"] == pytest.approx(expected)
    for _ in range(20):
        hand.t += RECOVER_EVERY
        pacer.reserve("x@slow.example")
    assert pacer.rates_now()["slow.example"] == 8  # never above the rate set


def test_workers_share_the_deployment_rate() -> None:
    hand = Hand()
    pacer = Pacer(parse_rates("d.example=10/s"), clock=hand)
    pacer.reserve("a@d.example")
    pacer.set_share(2)
    assert pacer.rates_now()["d.example"] == 5
    pacer.set_share(1)
    assert pacer.rates_now()["d.example"] == 10


def test_split_keeps_what_has_room_and_sends_the_rest_back() -> None:
    hand = Hand()
    pacer = Pacer(parse_rates("slow.example=2/s,*=100/s"), clock=hand)
    emails = [f"{i}@slow.example" for i in range(6)] + ["z@fast.example"]
    kept, later = pacer.split(emails, lambda e: e)
    assert kept == ["0@slow.example", "1@slow.example", "z@fast.example"]
    # The others come back about when their turn will be: 0.5, 1, 1.5 and 2 s from now.
    assert sorted((s, e) for s, es in later.items() for e in es) == [
        (1, "2@slow.example"),
        (2, "3@slow.example"),
        (2, "4@slow.example"),
        (3, "5@slow.example"),
    ]
