"""Which workers are alive, judged on the database's clock (issue 20, finding 5): two workers
on one database, each with its own clock, one of them off. Neither takes the other for dead;
the one whose clock is off says so, with the offset and the fix, and /metrics shows it. The
same with real processes: tests/acceptance/test_clocks.py."""

from __future__ import annotations

import logging
import re
from datetime import timedelta

import pytest
from support.world import MakeWorld, World

from nurture.metrics import render_metrics

HOUR = timedelta(hours=1)


def set_right(*worlds: World, off: timedelta = timedelta(0)) -> None:
    """Each world's clock at the database's time, plus ``off``."""
    with worlds[0].services.store.transaction() as tx:
        now = tx.workers.database_now()
    for world in worlds:
        world.clock.current = now + off


def skew_lines(caplog: pytest.LogCaptureFixture, action: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if getattr(r, "action", None) == action]


def beat(world: World) -> tuple[list[str], int]:
    timeout = timedelta(seconds=world.services.settings.worker_timeout_seconds)
    return world.dispatcher.handover.heartbeat(timeout=timeout)


@pytest.mark.parametrize("off", [timedelta(seconds=120), -HOUR], ids=["ahead", "stepped-back"])
def test_a_worker_whose_clock_is_off_takes_nobody_for_dead_nor_looks_dead(
    make_world: MakeWorld, caplog: pytest.LogCaptureFixture, off: timedelta
) -> None:
    right, wrong = make_world(), make_world()
    set_right(right)
    set_right(wrong, off=off)
    caplog.set_level(logging.INFO, logger="nurture.handover")
    for world in (right, wrong):
        world.dispatcher.handover.register()
    for _ in range(3):
        assert beat(right) == ([], 0)
        assert beat(wrong) == ([], 0)  # the last measure: the gauge is this process's
    with right.services.store.transaction() as tx:
        assert {w for w, *_ in tx.workers.live()} == {
            right.dispatcher.worker,
            wrong.dispatcher.worker,
        }
    assert skew_lines(caplog, "worker_revived") == []
    [said] = skew_lines(caplog, "clock_skew")  # once, not at each heartbeat
    way = "ahead of" if off > timedelta(0) else "behind"
    assert f"{abs(off.total_seconds()):.1f}s {way} the database's" in said
    assert "run NTP" in said
    metrics = render_metrics(wrong.services)[0].decode()
    [gauge] = re.findall(r"^nurture_clock_skew_seconds (\S+)$", metrics, re.M)
    assert abs(float(gauge) - off.total_seconds()) < 5

    set_right(wrong)  # NTP put it right
    assert beat(wrong) == ([], 0)
    [back] = skew_lines(caplog, "clock_skew_gone")
    assert "back within 5s" in back
    metrics = render_metrics(wrong.services)[0].decode()
    [gauge] = re.findall(r"^nurture_clock_skew_seconds (\S+)$", metrics, re.M)
    assert abs(float(gauge)) < 5


def test_a_web_process_says_at_start_that_its_clock_is_off(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    set_right(world, off=timedelta(seconds=-30))
    caplog.set_level(logging.INFO, logger="nurture.handover")
    skew = world.dispatcher.handover.check_clock()
    assert abs(skew.total_seconds() + 30) < 5
    [said] = skew_lines(caplog, "clock_skew")
    assert "behind the database's" in said and "run NTP" in said
