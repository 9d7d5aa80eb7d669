"""The memory manager inside a kernel: its syscalls are scheduled on the ``memory:<store>``
resource under the kernel's policy, so a flood of writes by one agent cannot starve
another agent's search."""

from __future__ import annotations

import anyio

import aios
from aios.testing import ScriptedLLM

FLOOD = 60
"""Concurrent memory writes the low-priority agent has queued at once."""


async def search_during_a_flood(policy: str) -> tuple[int, int, list[str]]:
    """(writes done when the search was submitted, writes done when it returned, hits)."""
    seeded = anyio.Event()
    flooding = anyio.Event()
    writes = 0
    seen: dict[str, int] = {}

    async def flood(ctx: aios.Context) -> None:
        nonlocal writes
        await seeded.wait()

        async def add(i: int) -> None:
            nonlocal writes
            await ctx.memory.add(f"bulk record {i} about nothing in particular")
            writes += 1
            flooding.set()  # the first write is done: the others are all queued

        async with anyio.create_task_group() as tg:
            for i in range(FLOOD):
                tg.start_soon(add, i)

    async def urgent(ctx: aios.Context) -> list[str]:
        await ctx.memory.add("the meeting moved to Thursday")
        seeded.set()
        await flooding.wait()
        seen["before"] = writes
        hits = await ctx.memory.search("meeting", k=3)
        seen["after"] = writes
        return [h.text for h in hits]

    cfg = aios.KernelConfig(scheduler={"policy": policy})
    async with aios.Kernel(cfg, backends={"default": ScriptedLLM()}) as k:
        bulk = k.spawn(flood, name="bulk", priority=5)
        quick = k.spawn(urgent, name="quick", priority=0)
        texts = await quick.wait()
        await bulk.wait()
        assert writes == FLOOD
    return seen["before"], seen["after"], texts


async def test_a_flood_of_writes_does_not_starve_an_urgent_search() -> None:
    before, after, texts = await search_during_a_flood("priority")
    assert texts == ["the meeting moved to Thursday"]
    assert before < 5  # the flood was still queued when the search came
    # window 1: the search waits for at most the write already admitted
    assert after - before <= 1


async def test_under_fifo_the_same_search_waits_behind_the_flood() -> None:
    # the counterpart that shows the test above can fail: without priority classes the
    # search queues behind every write submitted before it
    before, after, texts = await search_during_a_flood("fifo")
    assert texts == ["the meeting moved to Thursday"]
    assert after - before >= FLOOD - 5

