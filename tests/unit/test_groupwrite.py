"""Group commit on the request path (nurture.groupwrite): many requests' rows in few
transactions, each request told once its own row is written, a bad row failing alone, and
nothing handed in lost on close. A real thread, a list standing for the table."""

from __future__ import annotations

import asyncio
import threading

import pytest

from nurture.groupwrite import GroupWriter, WriteFailed


def test_rows_are_written_in_groups_and_each_caller_hears_of_its_own() -> None:
    written: list[list[int]] = []
    gate = threading.Event()

    def write(rows: list[int]) -> None:
        gate.wait(5)  # the first group holds the thread while the others queue up
        if 213 in rows:
            raise ValueError("unlucky")
        written.append(list(rows))

    writer: GroupWriter[int] = GroupWriter(write, name="test")

    async def burst(first: int) -> list[BaseException | None]:
        tasks = [asyncio.ensure_future(writer.write(i)) for i in range(first, first + 200)]
        await asyncio.sleep(0.05)
        gate.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    assert asyncio.run(burst(0)) == [None] * 200
    assert len(written) <= 3  # the first row alone, then the rest in a group or two
    gate.clear()
    outcomes = asyncio.run(burst(200))  # a group holding a row the database refuses
    writer.close()
    assert [i for i, o in enumerate(outcomes) if o is not None] == [13]
    assert isinstance(outcomes[13], WriteFailed)
    assert sorted(r for group in written for r in group) == [i for i in range(400) if i != 213]


def test_close_writes_what_was_handed_in() -> None:
    written: list[int] = []
    writer: GroupWriter[int] = GroupWriter(written.extend, name="test")

    async def main() -> None:
        await asyncio.gather(*(writer.write(i) for i in range(10)))

    asyncio.run(main())
    writer.close()
    writer.close()  # twice is fine
    assert sorted(written) == list(range(10))
    with pytest.raises(WriteFailed, match="closed"):  # nothing would write it: said at once
        asyncio.run(writer.write(99))


def test_a_full_queue_waits_in_a_thread_not_on_the_loop() -> None:
    gate = threading.Event()
    written: list[int] = []

    def write(rows: list[int]) -> None:
        gate.wait(5)
        written.extend(rows)

    writer: GroupWriter[int] = GroupWriter(write, name="test", max_waiting=2, max_group=1)

    async def main() -> None:
        tasks = [asyncio.ensure_future(writer.write(i)) for i in range(6)]
        await asyncio.sleep(0.05)
        ticks = 0
        for _ in range(5):  # the loop still runs while callers wait for room
            await asyncio.sleep(0)
            ticks += 1
        gate.set()
        await asyncio.gather(*tasks)
        assert ticks == 5

    asyncio.run(main())
    writer.close()
    assert sorted(written) == list(range(6))


@pytest.mark.parametrize("rows", [0, 1])
def test_close_without_or_with_one_row(rows: int) -> None:
    written: list[int] = []
    writer: GroupWriter[int] = GroupWriter(written.extend, name="test")
    if rows:
        asyncio.run(writer.write(7))
    writer.close()
    assert written == ([7] if rows else [])
