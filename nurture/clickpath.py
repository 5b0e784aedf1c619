"""The request path of the tracked links, off the HTTP layer: a click or an open as the web
app receives it, with what keeps it cheap and isolated. The token is checked and the email's
links found in memory (the database is read once per email); a click is answered once its
row is committed, in a group with the other clicks of the moment (``nurture.groupwrite``);
past the abuse limits (``nurture.limits``) a click is summarised and waits a little; a click
that will be judged soon wakes the tick for then (``nurture.wakeup``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool

from nurture.clock import Clock
from nurture.groupwrite import GroupWriter, WriteFailed
from nurture.limits import FLOOD_NOTE_EVERY, AbuseLimits
from nurture.tokens import TokenKind
from nurture.tracking import Click, ClickEvent, ClickRequest, FloodNote, Tracker
from nurture.wakeup import Wakeup

__all__ = ["ClickPath"]


@dataclass(frozen=True, kw_only=True)
class ClickPath:
    tracker: Tracker
    writer: GroupWriter[ClickEvent | FloodNote]
    limits: AbuseLimits
    wakeup: Wakeup
    clock: Clock

    async def click(self, token: str, request: ClickRequest) -> Click:
        """Record a click (or count it in its flood) and say where it goes; TokenError for a
        forged token or one that names no stored link."""
        tracker = self.tracker
        parsed = tracker.read(token)
        target = tracker.targets.get(parsed.message_id)
        if target is None:
            target = await run_in_threadpool(tracker.target, parsed.message_id)
        now = self.clock.now()
        result, event = tracker.judge(parsed, target, now=now, request=request)
        flood = self.limits.click(parsed.message_id, parsed.link, request.ip)
        if flood is None:
            with contextlib.suppress(WriteFailed):  # logged; the person still gets there
                await self.writer.write(event)
            if event.judged_in is not None:  # its yes, if it is one, takes effect then
                self.wakeup.soon(event.judged_in + 0.05)
            return result
        over, began = flood
        if over == 1 or over % FLOOD_NOTE_EVERY == 0:
            # Past the limit: the window's further clicks are one summary row.
            key = f"flood:{event.target.id}:{parsed.link}:{os.getpid()}:{int(began * 1000)}"
            reason = (
                f"more than {self.limits.click_limit} clicks on this link within "
                f"{self.limits.seconds:g} s"
            )
            with contextlib.suppress(WriteFailed):
                await self.writer.write(
                    FloodNote(event.target, parsed.link, key, over, reason, now)
                )
        # A hammering client waits a little for each answer (a sleeping request costs
        # nothing), so its storm cannot take the process's time from everyone else's.
        await asyncio.sleep(self.limits.tarpit_seconds)
        return result

    async def opened(self, token: str, detail: dict[str, Any]) -> None:
        """An open-pixel fetch, recorded unless its email's opens are past the limit (opens
        decide nothing); TokenError for a token we did not issue."""
        parsed = self.tracker.signer.read(token, TokenKind.open)
        if self.limits.open(parsed.message_id):
            now = self.clock.now()
            await run_in_threadpool(self.tracker.opened, parsed.message_id, now=now, detail=detail)
