"""The receiver's group writer: concurrent deliveries share a commit, each gets its own answer."""

from __future__ import annotations

import asyncio

import pytest

from core.webhook.receive import Delivery, Outcome
from receiver.group import IDLE_TURNS, MAX_GROUP, GroupWriter


def _writer(groups: list[list[bytes]], inline: bool) -> GroupWriter:
    def write(deliveries: list[Delivery]) -> list[Outcome]:
        groups.append([d.payload for d in deliveries])
        return [Outcome(200, "processed", event_id=d.payload.decode()) for d in deliveries]

    return GroupWriter(write, inline=inline)


@pytest.mark.parametrize("inline", [True, False], ids=["on the loop", "in a thread"])
def test_concurrent_deliveries_share_groups_and_keep_their_own_answers(inline: bool) -> None:
    groups: list[list[bytes]] = []
    writer = _writer(groups, inline)
    count = MAX_GROUP * 2 + 5

    async def send_all() -> list[Outcome]:
        return await asyncio.gather(
            *(writer.submit(Delivery(f"evt_{i}".encode(), None)) for i in range(count))
        )

    outcomes = asyncio.run(send_all())
    assert [o.event_id for o in outcomes] == [f"evt_{i}" for i in range(count)]
    assert [p for group in groups for p in group] == [f"evt_{i}".encode() for i in range(count)]
    assert max(len(g) for g in groups) == MAX_GROUP  # grouped, and never beyond the cap
    assert not writer.busy


def test_a_lone_delivery_is_written_at_once_by_itself() -> None:
    groups: list[list[bytes]] = []
    writer = _writer(groups, inline=True)

    async def one_by_one() -> None:
        for i in range(3):
            assert (await writer.submit(Delivery(f"evt_{i}".encode(), None))).status == 200

    asyncio.run(one_by_one())
    assert groups == [[b"evt_0"], [b"evt_1"], [b"evt_2"]]


def test_deliveries_still_on_their_way_join_the_next_group() -> None:
    """Requests that need a few turns of the loop to reach the writer (reading their body)
    are waited for after a group, but not beyond IDLE_TURNS turns that bring nothing."""
    groups: list[list[bytes]] = []
    writer = _writer(groups, inline=True)

    async def late(name: str, turns: int) -> Outcome:
        for _ in range(turns):
            await asyncio.sleep(0)
        return await writer.submit(Delivery(name.encode(), None))

    async def scenario() -> None:
        first = asyncio.ensure_future(writer.submit(Delivery(b"first", None)))
        # Each arrives within IDLE_TURNS turns of the one before, the last one too late.
        spaced = [late(f"near_{i}", (i + 1) * (IDLE_TURNS - 1)) for i in range(3)]
        too_late = late("too_late", 3 * (IDLE_TURNS - 1) + 2 * IDLE_TURNS + 4)
        await asyncio.gather(first, *spaced, too_late)

    asyncio.run(scenario())
    assert groups[0] == [b"first"]
    assert groups[1] == [b"near_0", b"near_1", b"near_2"]
    assert groups[2:] == [[b"too_late"]]


def test_a_writer_bug_answers_500_and_the_writer_keeps_working() -> None:
    calls: list[int] = []

    def write(deliveries: list[Delivery]) -> list[Outcome]:
        calls.append(len(deliveries))
        if len(calls) == 1:
            raise RuntimeError("bug")
        return [Outcome(200, "processed")] * len(deliveries)

    writer = GroupWriter(write, inline=True)

    async def twice() -> list[int]:
        first = await writer.submit(Delivery(b"a", None))
        second = await writer.submit(Delivery(b"b", None))
        return [first.status, second.status]

    assert asyncio.run(twice()) == [500, 200]
