"""Steps built in code for the engine's tests: three days to say yes to a click, unless told
otherwise."""

from __future__ import annotations

from datetime import timedelta

from nurture.sequences import AdvanceOn, Step


def step(id: str, **kw: object) -> Step:
    values: dict[str, object] = {
        "subject": id,
        "template": f"{id}.html",
        "advance_on": AdvanceOn.click,
        "wait": timedelta(days=3),
    }
    values.update(kw)
    return Step(id=id, **values)  # type: ignore[arg-type]
