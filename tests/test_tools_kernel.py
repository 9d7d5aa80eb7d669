"""The tool manager inside a kernel: agents call tools through ctx.tools, the kernel
accounts them per process, built-ins are opt-in, and a failing tool harms no one else."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

import aios
from aios.testing import ScriptedLLM, ScriptedReply, ScriptedToolCall


@aios.tool
async def word_count(text: str) -> int:
    """Count the words in a text."""
    return len(text.split())


@aios.tool
async def explode(why: str) -> str:
    """Always raises."""
    raise RuntimeError(why)


def calls(*specs: tuple[str, dict[str, Any] | str]) -> ScriptedReply:
    return ScriptedReply(tool_calls=tuple(
        ScriptedToolCall(id=f"c{i}", name=n, arguments=a) for i, (n, a) in enumerate(specs)))


async def researcher(ctx: aios.Context, question: str) -> list[dict[str, Any]]:
    msgs: list[dict[str, Any]] = [{"role": "user", "content": question}]
    reply = await ctx.llm.chat(msgs, tools=await ctx.tools.specs(), max_tokens=16)
    msgs += [reply.message, *await ctx.tools.run(reply.tool_calls)]
    final = await ctx.llm.chat(msgs, max_tokens=16)
    return [*msgs, final.message]


async def test_an_agent_calls_tools_and_answers() -> None:
    llm = ScriptedLLM([calls(("word_count", {"text": "a b c"}), ("word_count", "{bad")),
                       "three words"])
    async with aios.Kernel(aios.KernelConfig(), backends={"default": llm},
                           tools=[word_count]) as k:
        proc = k.spawn(researcher, "count", name="r1")
        msgs = await proc.wait()
        info = proc.info()
    assert msgs[1]["tool_calls"][0]["function"]["name"] == "word_count"
    assert msgs[2] == {"role": "tool", "tool_call_id": "c0", "content": "3"}
    assert msgs[3]["tool_call_id"] == "c1" and "Invalid JSON" in msgs[3]["content"]
    assert msgs[4] == {"role": "assistant", "content": "three words"}
    assert llm.requests[0].call.tools == [word_count.spec.openai()]
    # the call with invalid arguments never ran: only admitted calls are accounted
    assert info.tool_calls == 1 and info.tool_s > 0 and info.llm_calls == 2


async def test_builtins_are_opt_in_through_the_config() -> None:
    async def use(ctx: aios.Context) -> Any:
        names = [s["function"]["name"] for s in await ctx.tools.specs()]
        return names, (await ctx.tools.call("calculator", {"expression": "6 * 7"})).value

    cfg = aios.KernelConfig(tools={"builtin": ["calculator"]})
    async with aios.Kernel(cfg, backends={"default": ScriptedLLM()}) as k:
        assert await k.spawn(use).wait() == (["calculator"], 42)
    async with aios.Kernel(aios.KernelConfig(), backends={"default": ScriptedLLM()}) as k:
        with pytest.raises(aios.ToolNotFound):
            await k.spawn(use).wait()


async def test_an_unknown_builtin_is_a_config_error() -> None:
    cfg = aios.KernelConfig(tools={"builtin": ["no_such_tool"]})
    with pytest.raises(aios.ConfigError, match=r"no_such_tool.*available: calculator, .*python"):
        async with aios.Kernel(cfg, backends={"default": ScriptedLLM()}):
            pass


async def test_a_failing_tool_harms_no_other_agent() -> None:
    async def fragile(ctx: aios.Context) -> str:
        await ctx.tools.call("explode", {"why": "boom"})
        return "unreachable"

    async def steady(ctx: aios.Context) -> int:
        total = 0
        for _ in range(3):
            total += (await ctx.tools.call("word_count", {"text": "x y"})).value
        return total

    async with aios.Kernel(aios.KernelConfig(), backends={"default": ScriptedLLM()},
                           tools=[word_count, explode]) as k:
        bad, good = k.spawn(fragile), k.spawn(steady)
        with pytest.raises(aios.ToolFailed, match="raised RuntimeError: boom") as ei:
            await bad.wait()
        assert await good.wait() == 6
        assert ei.value.syscall.kind == "tools.call" and ei.value.tool == "explode"
        assert await k.spawn(steady).wait() == 6


async def test_an_agent_cancelled_mid_call_frees_the_tools_slot() -> None:
    started = anyio.Event()

    @aios.tool(max_concurrency=1)
    async def block() -> str:
        """Blocks until cancelled."""
        started.set()
        await anyio.sleep_forever()
        return "never"

    async def caller(ctx: aios.Context) -> str:
        return (await ctx.tools.call("block")).content

    async def quick(ctx: aios.Context) -> int:
        return (await ctx.tools.call("word_count", {"text": "a"})).value

    async with aios.Kernel(aios.KernelConfig(), backends={"default": ScriptedLLM()},
                           tools=[block, word_count]) as k:
        first = k.spawn(caller)
        await started.wait()
        first.kill()
        with pytest.raises(aios.ProcessKilled):
            await first.wait()
        started = anyio.Event()
        second = k.spawn(caller)
        with anyio.fail_after(5):
            await started.wait()  # the slot came back: the second call was admitted
        second.kill()
        assert await k.spawn(quick).wait() == 1


async def test_mcp_tools_in_a_kernel_and_a_clean_exit() -> None:
    import sys
    from pathlib import Path

    server = str(Path(__file__).parent / "mcp_servers" / "demo_server.py")
    cfg = aios.KernelConfig(mcp=[{"name": "demo", "command": sys.executable,
                                  "args": [server, "stdio"]}])

    async def use(ctx: aios.Context) -> str:
        return (await ctx.tools.call("demo__add", {"a": 20, "b": 22})).content

    async with aios.Kernel(cfg, backends={"default": ScriptedLLM()}) as k:
        assert await k.spawn(use).wait() == "42"
    # the server's supervisor is gone and left nothing behind in this task
    await anyio.lowlevel.checkpoint()
    async with aios.Kernel(aios.KernelConfig(), backends={"default": ScriptedLLM()},
                           tools=[word_count]) as k:
        assert await k.spawn(researcher_free).wait() == 2


async def researcher_free(ctx: aios.Context) -> int:
    return (await ctx.tools.call("word_count", {"text": "a b"})).value
