"""Zero-cost preemption of requests queued inside the engine (issue 10): an urgent request
never waits behind less urgent ones in the engine's own FIFO queue, on any backend (no
continuation support needed), and the re-prefill cost of switches is reported."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio

import aios
from aios.llm.base import BackendCapabilities, Chunk, GenerationRequest
from aios.testing import ScriptedLLM

MSG = [{"role": "user", "content": "go"}]


class FifoEngine(ScriptedLLM):
    """One slot and a FIFO queue, like a server without priorities or continuation: a
    request waits (no tokens) until the one before it has finished."""

    capabilities = BackendCapabilities(token_boundary=True, continuation=False, engine_queue=True)

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.slot = anyio.Lock()
        self.cancelled = 0

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        finished = False
        try:
            async with self.slot:
                async for chunk in super().generate(request):
                    finished = chunk.finish_reason is not None
                    yield chunk
        finally:
            self.cancelled += not finished  # stopped before its end


def config(policy: str = "priority") -> aios.KernelConfig:
    return aios.KernelConfig(
        scheduler=aios.SchedulerConfig(policy=policy),
        llm=[aios.LLMConfig(max_concurrency=1, window=2)])  # one slot + one in its queue


async def run(policy: str) -> tuple[list[str], FifoEngine, list[aios.ProcessInfo]]:
    done: list[str] = []
    engine = FifoEngine(default=" ".join(["w"] * 20), token_delay=0.002)

    async def agent(ctx: aios.Context, label: str) -> None:
        await ctx.llm.chat(MSG)
        done.append(label)

    async with aios.Kernel(config(policy), backends={"default": engine}) as k:
        q = k.llm_resources()["default"].queue
        a = k.spawn(agent, "A", priority=5)
        await _until(lambda: any(e.started for e in q.running))
        b = k.spawn(agent, "B", priority=5)   # admitted into the headroom: engine-queued
        await _until(lambda: len(q.running) == 2)
        u = k.spawn(agent, "U", priority=0)
        for p in (a, b, u):
            await p.wait()
        return done, engine, k.ps()


async def _until(cond: Any) -> None:
    with anyio.fail_after(10):
        while not cond():  # noqa: ASYNC110 - polling kernel state, no event to wait on
            await anyio.sleep(0.001)


async def test_an_urgent_request_overtakes_one_queued_in_the_engine() -> None:
    done, engine, infos = await run("priority")
    assert done == ["A", "U", "B"]
    assert engine.cancelled == 1                  # B's queued request, stopped at once
    assert sum(i.context_switches for i in infos) == 0  # nothing produced: no checkpoint


async def test_fifo_never_bumps() -> None:
    done, engine, _ = await run("fifo")
    assert done == ["A", "B", "U"]
    assert engine.cancelled == 0


async def test_a_text_resume_reports_what_it_prefilled_again() -> None:
    backend = ScriptedLLM(default=" ".join(["w"] * 30), token_delay=0.001)

    async def agent(ctx: aios.Context) -> str:
        return (await ctx.llm.chat([{"role": "user", "content": "x" * 400}])).text

    cfg = aios.KernelConfig(scheduler=aios.SchedulerConfig(policy="rr", time_slice_ms=1),
                            llm=[aios.LLMConfig(max_concurrency=1, window=1)])
    async with aios.Kernel(cfg, backends={"default": backend}) as k:
        procs = [k.spawn(agent) for _ in range(2)]
        for p in procs:
            await p.wait()
    switches = [s for p in procs for s in p.switch_log]
    assert switches and all(s.restored == "text" for s in switches)
    # the prompt (~100 tokens at 4 characters a token) plus the output so far
    assert all(s.reprefill_tokens >= 100 + s.tokens for s in switches)
