"""Generated journeys (issue 19): sequences in the marketer's vocabulary and people (and
machines) behaving in every way, run through the real services on SQLite and PostgreSQL on a
virtual clock, checked after each run against the invariants and against ``nurture simulate``
(tests/support/journeys.py says what is drawn and run; README, "Generated journeys", lists
the invariants).

The suite runs ``JOURNEY_EXAMPLES`` scenarios per database (a bounded number by default;
``scripts/test --long`` runs many more). A failure shrinks to a small YAML and a short list
of people's plans, printed with the seed to replay it (``pytest --hypothesis-seed=N``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, note, settings
from support.journeys import Journey, Scenario, Web, reset, scenarios

EXAMPLES = int(os.environ.get("JOURNEY_EXAMPLES", "100"))


@pytest.fixture
def web() -> Iterator[Web]:
    served = Web()
    yield served
    served.close()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # one database per test, emptied per scenario
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
    print_blob=True,
)
@given(scenario=scenarios())
def test_generated_journeys_keep_the_promise(
    database_url: str, tmp_path: Path, web: Web, scenario: Scenario
) -> None:
    folder = reset(database_url, tmp_path)
    note(scenario.describe())
    journey = Journey(scenario, database_url, folder, web)
    try:
        journey.run()
        note("sent: " + ", ".join(f"{s.email} {s.step_id}/{s.kind}" for s in journey.sent))
        journey.check()
    finally:
        journey.close()
