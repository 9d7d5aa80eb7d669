"""Quotas: per process and per group, over the kernel's own counters, refused at the next
syscall they concern (QuotaExceeded naming the quota, the limit and the use)."""

from __future__ import annotations

from typing import Any

import pytest

import aios
from aios.testing import ScriptedLLM

MSG = [{"role": "user", "content": "hi"}]


@aios.tool
async def ping() -> str:
    """Answer pong."""
    return "pong"


def kernel(llm: ScriptedLLM | None = None, access: dict[str, Any] | None = None
           ) -> aios.Kernel:
    return aios.Kernel(aios.KernelConfig(access=access or {}),
                       backends={"default": llm or ScriptedLLM(default="one two three")},
                       tools=[ping])


async def chat_until_refused(ctx: aios.Context, n: int = 10) -> aios.QuotaExceeded:
    for _ in range(n):
        try:
            await ctx.llm.chat(MSG, max_tokens=8)
        except aios.QuotaExceeded as exc:
            return exc
    raise AssertionError("never refused")


async def test_a_token_quota_stops_the_next_llm_call_but_not_a_storage_write() -> None:
    llm = ScriptedLLM(default="one two three")

    async def agent(ctx: aios.Context) -> tuple[aios.QuotaExceeded, int]:
        exc = await chat_until_refused(ctx)
        fv = await ctx.storage.write("notes.md", b"saved before stopping")
        return exc, fv.version

    async with kernel(llm) as k:
        proc = k.spawn(agent, quota=aios.Quota(tokens=5))
        exc, version = await proc.wait()
        info = proc.info()
    # each call: 1 prompt token + 3 completion tokens; the second passes 5, the third
    # is refused before it reaches the backend
    assert len(llm.requests) == 2
    assert (exc.quota, exc.limit) == ("tokens", 5)
    assert exc.used == info.tokens_in + info.tokens_out == 8
    assert "process 1" in str(exc) and "8 of 5 tokens" in str(exc)
    assert isinstance(exc.syscall, aios.LLMChat)
    assert version == 1 and info.quota == {"tokens": 5}


async def test_tool_call_and_storage_byte_quotas() -> None:
    async def agent(ctx: aios.Context) -> list[str]:
        out = []
        for _ in range(3):
            try:
                out.append((await ctx.tools.call("ping")).content)
            except aios.QuotaExceeded as exc:
                out.append(f"quota {exc.quota} {exc.used:g}/{exc.limit:g}")
        await ctx.storage.write("a", b"x" * 10)
        with pytest.raises(aios.QuotaExceeded, match="storage_bytes"):
            await ctx.storage.write("b", b"y")
        out.append((await ctx.storage.read("a")).decode())  # reading goes on
        return out

    async with kernel() as k:
        got = await k.spawn(agent, quota=aios.Quota(tool_calls=2, storage_bytes=10)).wait()
    assert got == ["pong", "pong", "quota tool_calls 2/2", "x" * 10]


async def test_a_group_quota_sums_its_processes() -> None:
    async def one_call(ctx: aios.Context) -> str:
        return (await ctx.llm.chat(MSG)).text

    access = {"groups": {"lab": {"quota": {"llm_calls": 2}}, "ops": {}}}
    async with kernel(access=access) as k:
        assert await k.spawn(one_call, group="lab").wait() == "one two three"
        assert await k.spawn(one_call, group="lab").wait() == "one two three"
        with pytest.raises(aios.QuotaExceeded, match="group 'lab' used up its "
                           r"group\.llm_calls quota: 2 of 2") as ei:
            await k.spawn(one_call, group="lab").wait()
        assert ei.value.quota == "group.llm_calls"
        assert await k.spawn(one_call, group="ops").wait() == "one two three"
        assert sum(p.llm_calls for p in k.ps() if p.group == "lab") == 2


async def test_a_groups_process_quota_applies_to_each_and_own_quota_replaces_it() -> None:
    access = {"groups": {"lab": {"process_quota": {"llm_calls": 1}}}}
    async with kernel(access=access) as k:
        exc = await k.spawn(chat_until_refused, group="lab").wait()
        assert (exc.quota, exc.used) == ("llm_calls", 1)
        exc = await k.spawn(chat_until_refused, group="lab",
                            quota=aios.Quota(llm_calls=3)).wait()
        assert exc.used == 3


async def test_a_zero_wall_time_quota_refuses_everything() -> None:
    async def agent(ctx: aios.Context) -> None:
        await ctx.memory.add("x")

    async with kernel() as k:
        with pytest.raises(aios.QuotaExceeded, match="wall_s"):
            await k.spawn(agent, quota=aios.Quota(wall_s=0)).wait()
