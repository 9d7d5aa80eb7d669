"""The kernel over real HTTP: the ``openai`` backend against ``aios sim-serve``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import aios
from aios.testing import SimServer, sim_server


@pytest.fixture(scope="module")
def server() -> Iterator[SimServer]:
    with sim_server("--slots", "2", "--time-scale", "0.5") as s:
        yield s


def config(server: SimServer, policy: str, **llm: Any) -> aios.KernelConfig:
    llm.setdefault("model", "sim")
    return aios.KernelConfig(
        scheduler=aios.SchedulerConfig(policy=policy, time_slice_ms=5),
        llm=[aios.LLMConfig(backend="openai", base_url=server.base_url, max_concurrency=2,
                            window=2, supports_continuation=True, max_retries=1,
                            options={"backoff_base_s": 0.01}, **llm)])


async def agent(ctx: aios.Context, i: int) -> str:
    msgs = [{"role": "user", "content": f"agent {i} asks for a long story"}]
    return (await ctx.llm.chat(msgs, max_tokens=40, temperature=0.0)).text


async def test_preempted_over_http_resumes_to_the_uninterrupted_text(server: SimServer) -> None:
    async with aios.Kernel(config(server, "fifo")) as k:
        expected = [await k.spawn(agent, i).wait() for i in range(4)]
    async with aios.Kernel(config(server, "rr")) as k:
        procs = [k.spawn(agent, i) for i in range(4)]
        got = [await p.wait() for p in procs]
        switches = [s for p in procs for s in p.switch_log]
    assert got == expected
    assert switches, "5 ms slices over 40-token answers must switch"
    assert {s.restored for s in switches} == {"text"}  # continuation, no KV over HTTP


async def test_unknown_model_reaches_only_the_agent_that_asked(server: SimServer) -> None:
    cfg = config(server, "fifo")
    bad = aios.LLMConfig(name="bad", backend="openai", base_url=server.base_url,
                         model="no-such-model", max_retries=0)
    cfg = cfg.model_copy(update={"llm": [*cfg.llm, bad]})

    async def asks_bad(ctx: aios.Context) -> str:
        msgs = [{"role": "user", "content": "hi"}]
        return (await ctx.llm.chat(msgs, llm="bad", max_tokens=4)).text

    async with aios.Kernel(cfg) as k:
        good = [k.spawn(agent, i) for i in range(2)]
        wrong = k.spawn(asks_bad)
        with pytest.raises(aios.ModelNotFound, match="sim"):
            await wrong.wait()
        for p in good:
            assert len((await p.wait()).split()) == 40


async def test_unreachable_server_is_backend_unavailable() -> None:
    cfg = aios.KernelConfig(llm=[aios.LLMConfig(
        backend="openai", base_url="http://127.0.0.1:9/v1", model="m", max_retries=1,
        timeout_s=2, options={"backoff_base_s": 0.01, "backoff_cap_s": 0.02})])

    async def one(ctx: aios.Context) -> str:
        return (await ctx.llm.chat([{"role": "user", "content": "hi"}])).text

    async with aios.Kernel(cfg) as k:
        with pytest.raises(aios.BackendUnavailable, match=r"127\.0\.0\.1:9"):
            await k.spawn(one).wait()
