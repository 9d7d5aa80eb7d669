"""Kernel behaviour: processes, the syscall door, process control, bad input."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aios
from aios.testing import EchoLLM, ScriptedLLM

MSG = [{"role": "user", "content": "hello there"}]


def cfg(policy: str = "priority", window: int = 1, **sched: Any) -> aios.KernelConfig:
    return aios.KernelConfig(
        scheduler=aios.SchedulerConfig(policy=policy, **sched),
        llm=[aios.LLMConfig(name="default", max_concurrency=window, window=window)],
    )


async def ask(ctx: aios.Context, max_tokens: int | None = None) -> str:
    return (await ctx.llm.chat(MSG, max_tokens=max_tokens)).text


async def test_spawn_wait_returns_the_agents_result() -> None:
    async with aios.Kernel(cfg(), backends={"default": ScriptedLLM(["four words of text"])}) as k:
        proc = k.spawn(ask, name="a1", priority=3)
        assert await proc.wait() == "four words of text"
        info = proc.info()
    assert info.name == "a1" and info.priority == 3 and info.state is aios.ProcessState.DONE
    assert info.syscalls == 1 and info.tokens_out == 4 and info.tokens_in == 2
    assert info.service_s > 0


async def test_wait_reraises_the_agents_exception() -> None:
    async def boom(ctx: aios.Context) -> None:
        raise KeyError("nope")

    async with aios.Kernel(cfg(), backends={"default": EchoLLM()}) as k:
        proc = k.spawn(boom)
        with pytest.raises(KeyError, match="nope"):
            await proc.wait()
        assert proc.info().state is aios.ProcessState.FAILED
        assert "KeyError" in (proc.info().error or "")


async def test_every_parameter_reaches_the_backend() -> None:
    backend = ScriptedLLM(["x"])

    async def agent(ctx: aios.Context) -> None:
        await ctx.llm.chat(MSG, max_tokens=7, temperature=0.3, top_p=0.9, stop=["\n"], seed=5,
                           response_format={"type": "json_object"},
                           extra_body={"repetition_penalty": 1.1})

    async with aios.Kernel(cfg(), backends={"default": backend}) as k:
        await k.spawn(agent).wait()
    call = backend.requests[0].call
    assert (call.max_tokens, call.temperature, call.top_p, call.stop, call.seed) == (
        7, 0.3, 0.9, ["\n"], 5)
    assert call.response_format == {"type": "json_object"}
    assert call.extra == {"repetition_penalty": 1.1}


async def test_stream_yields_deltas_then_result() -> None:
    async def agent(ctx: aios.Context) -> tuple[list[str], str]:
        async with ctx.llm.stream(MSG) as s:
            deltas = [d async for d in s]
        return deltas, s.result.text

    async with aios.Kernel(cfg(), backends={"default": ScriptedLLM(["a b c"])}) as k:
        deltas, text = await k.spawn(agent).wait()
    assert deltas == ["a", " b", " c"] and text == "a b c"


async def test_abandoned_stream_frees_its_slot() -> None:
    backend = ScriptedLLM(["a b c d e f g h"], token_delay=0.001)

    async def agent(ctx: aios.Context) -> str:
        async with ctx.llm.stream(MSG) as s:
            async for _ in s:
                break
        return await ask(ctx)

    async with aios.Kernel(cfg(), backends={"default": backend}) as k:
        assert await k.spawn(agent).wait() == "ok"
        assert not k.llm_resources()["default"].queue.running


async def test_priority_order_and_preemption_with_exact_resume() -> None:
    text = " ".join(f"w{i}" for i in range(30))
    backend = ScriptedLLM([text, "urgent reply"], token_delay=0.001)
    async with aios.Kernel(cfg("priority"), backends={"default": backend}) as k:
        low = k.spawn(ask, priority=5)
        await anyio.wait_all_tasks_blocked()  # low is generating (sleeping between tokens)
        assert backend.requests
        high = k.spawn(ask, priority=0)
        assert await high.wait() == "urgent reply"
        assert not low.done  # the urgent one finished first: low was preempted
        assert await low.wait() == text  # and resumed exactly
        assert low.info().context_switches >= 1


async def test_kill_ends_a_waiting_agent_and_frees_the_slot() -> None:
    backend = ScriptedLLM(["a " * 500], token_delay=0.001)
    async with aios.Kernel(cfg(), backends={"default": backend}) as k:
        proc = k.spawn(ask)
        await anyio.sleep(0.01)
        proc.kill()
        with pytest.raises(aios.ProcessKilled):
            await proc.wait()
        q = k.llm_resources()["default"].queue
        assert not q.running and q.waiting == 0
        assert proc.info().state is aios.ProcessState.KILLED
        assert await k.spawn(ask, 1).wait() == "ok"


async def test_suspended_agent_is_not_dispatched_until_resumed() -> None:
    backend = ScriptedLLM(default="done", token_delay=0.001)
    async with aios.Kernel(cfg(window=1), backends={"default": backend}) as k:
        blocker = k.spawn(ask)  # holds the one slot for a moment
        proc = k.spawn(ask)
        proc.suspend()
        await blocker.wait()
        await anyio.sleep(0.02)
        assert not proc.done and proc.info().state is aios.ProcessState.SUSPENDED
        assert len(backend.requests) == 1
        proc.resume()
        assert await proc.wait() == "done"


async def test_set_priority_reorders_queued_syscalls() -> None:
    order: list[str] = []
    gate = anyio.Event()

    class Gated(ScriptedLLM):
        async def generate(self, request: Any) -> Any:  # type: ignore[override]
            await gate.wait()  # holds the only slot until the test opens the gate
            async for chunk in super().generate(request):
                yield chunk

    async def agent(ctx: aios.Context) -> None:
        await ctx.llm.chat(MSG, max_tokens=1)
        order.append(ctx.name)

    async with aios.Kernel(cfg("priority", window=1, preempt=False),
                           backends={"default": Gated(default="x")}) as k:
        first = k.spawn(agent, name="first")
        await anyio.wait_all_tasks_blocked()
        a = k.spawn(agent, name="a", priority=1)
        b = k.spawn(agent, name="b", priority=2)
        await anyio.wait_all_tasks_blocked()
        b.set_priority(0)
        gate.set()
        for p in (first, a, b):
            await p.wait()
    assert order == ["first", "b", "a"]


async def test_ps_lists_every_process() -> None:
    async with aios.Kernel(cfg(), backends={"default": EchoLLM()}) as k:
        procs = [k.spawn(ask, name=f"p{i}") for i in range(3)]
        for p in procs:
            await p.wait()
        infos = k.ps()
    assert [i.name for i in infos] == ["p0", "p1", "p2"]
    assert all(i.state is aios.ProcessState.DONE for i in infos)


async def test_leaving_the_kernel_cancels_agents_and_leaves_no_task() -> None:
    before = len(asyncio.all_tasks())

    async def forever(ctx: aios.Context) -> None:
        await anyio.sleep_forever()

    async with aios.Kernel(cfg(), backends={"default": EchoLLM()}) as k:
        procs = [k.spawn(forever) for _ in range(5)]
        await anyio.wait_all_tasks_blocked()
    assert all(p.info().state is aios.ProcessState.KILLED for p in procs)
    assert len(asyncio.all_tasks()) == before


async def test_on_exit_wait_lets_agents_finish() -> None:
    config = cfg().model_copy(update={"on_exit": "wait"})

    async def slow(ctx: aios.Context) -> int:
        await anyio.sleep(0.01)
        return 7

    async with aios.Kernel(config, backends={"default": EchoLLM()}) as k:
        proc = k.spawn(slow)
    assert await proc.wait() == 7


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(st.tuples(st.sampled_from(["kill", "suspend", "resume", "prio", "sleep"]),
                              st.integers(0, 7)), max_size=25),
       policy=st.sampled_from(["fifo", "priority", "las", "fair", "rr"]))
async def test_every_syscall_ends_exactly_once(ops: list[tuple[str, int]], policy: str) -> None:
    outcomes: dict[tuple[int, int], str] = {}

    async def agent(ctx: aios.Context) -> None:
        for i in range(3):
            key = (ctx.pid, i)
            try:
                await ctx.llm.chat(MSG, max_tokens=4)
            except BaseException:
                assert key not in outcomes
                outcomes[key] = "cancelled"
                raise
            assert key not in outcomes
            outcomes[key] = "ok"

    backend = ScriptedLLM(default="a b c d", token_delay=0.0005)
    async with aios.Kernel(cfg(policy, window=2, time_slice_ms=1),
                           backends={"default": backend}) as k:
        procs = [k.spawn(agent, priority=i % 3) for i in range(8)]
        for op, i in ops:
            p = procs[i]
            if p.done:
                continue
            if op == "kill":
                p.kill()
            elif op == "suspend":
                p.suspend()
            elif op == "resume":
                p.resume()
            elif op == "prio":
                p.set_priority(i % 4)
            else:
                await anyio.sleep(0.001)
        for p in procs:
            if not p.done and p.suspended:
                p.resume()
        for p in procs:
            with anyio.fail_after(10):
                with contextlib.suppress(aios.ProcessKilled):
                    await p.wait()
        q = k.llm_resources()["default"].queue
        assert not q.running and q.waiting == 0
        assert q.max_occupied <= 2  # the window, not counting generations about to end
        assert q.max_running <= 4
    for p in procs:
        mine = [v for (pid, _), v in outcomes.items() if pid == p.pid]
        if p.info().state is aios.ProcessState.DONE:
            assert mine == ["ok"] * 3
        else:
            n_ok = mine.count("ok")
            assert mine.count("cancelled") <= 1
            assert mine[:n_ok] == ["ok"] * n_ok


# -- bad input --------------------------------------------------------------------------

async def test_agent_must_be_a_coroutine_function() -> None:
    def sync_agent(ctx: aios.Context) -> None:
        pass

    async with aios.Kernel(cfg(), backends={"default": EchoLLM()}) as k:
        with pytest.raises(aios.ProcessError, match="async function"):
            k.spawn(sync_agent)  # type: ignore[arg-type]


async def test_calls_on_a_closed_kernel_fail_clearly() -> None:
    k = aios.Kernel(cfg(), backends={"default": EchoLLM()})
    with pytest.raises(aios.KernelClosedError):
        k.spawn(ask)
    async with k:
        proc = k.spawn(ask)
        await proc.wait()
    with pytest.raises(aios.KernelClosedError):
        k.spawn(ask)
    with pytest.raises(aios.AIOSError):
        proc.suspend()


async def test_unknown_policy_names_the_available_ones() -> None:
    with pytest.raises(aios.ConfigError, match=r"unknown scheduling policy 'lottery'.*fifo"):
        async with aios.Kernel(cfg("lottery"), backends={"default": EchoLLM()}):
            pass


async def test_unknown_backend_names_the_available_ones() -> None:
    config = aios.KernelConfig(llm=[aios.LLMConfig(backend="nosuch")])
    with pytest.raises(aios.ConfigError, match=r"unknown LLM backend 'nosuch'.*sim"):
        async with aios.Kernel(config):
            pass


def test_window_below_one_is_a_config_error() -> None:
    with pytest.raises(aios.ConfigError, match="window"):
        aios.LLMConfig(window=0)


async def test_unknown_llm_resource_and_bad_arguments_are_typed_errors() -> None:
    async def agent(ctx: aios.Context, kind: str) -> None:
        if kind == "resource":
            await ctx.llm.chat(MSG, llm="nosuch")
        else:
            await ctx.llm.chat(MSG, max_tokens=0)

    async with aios.Kernel(cfg(), backends={"default": EchoLLM()}) as k:
        with pytest.raises(aios.InvalidSyscall, match=r"nosuch.*available: default"):
            await k.spawn(agent, "resource").wait()
        with pytest.raises(aios.InvalidSyscall, match="max_tokens"):
            await k.spawn(agent, "args").wait()


async def test_backend_bug_reaches_the_agent_as_llm_error() -> None:
    class Broken(ScriptedLLM):
        async def generate(self, request: Any) -> Any:  # type: ignore[override]
            raise RuntimeError("kaboom")
            yield  # pragma: no cover

    async with aios.Kernel(cfg(), backends={"default": Broken()}) as k:
        with pytest.raises(aios.LLMError, match="kaboom"):
            await k.spawn(ask).wait()
        assert not k.llm_resources()["default"].queue.running


async def test_rate_limited_syscall_narrows_the_window_and_is_retried() -> None:
    from aios.errors import RateLimited
    from aios.llm.base import GenerationRequest

    class Picky(ScriptedLLM):
        """Rejects whatever arrives while two are already generating."""

        def __init__(self) -> None:
            super().__init__(default="a b c d", token_delay=0.001)
            self.active = 0
            self.rejected = 0

        async def generate(self, request: GenerationRequest) -> Any:  # type: ignore[override]
            if self.active >= 2:
                self.rejected += 1
                raise RateLimited("busy", retry_after=0.001)
            self.active += 1
            try:
                async for chunk in super().generate(request):
                    yield chunk
            finally:
                self.active -= 1

    backend = Picky()
    async with aios.Kernel(cfg("fifo", window=4), backends={"default": backend}) as k:
        procs = [k.spawn(ask) for _ in range(8)]
        assert [await p.wait() for p in procs] == ["a b c d"] * 8
        q = k.llm_resources()["default"].queue
    assert backend.rejected > 0
    assert q.rejections == backend.rejected
    assert q.limit < 4  # the window in force came down to what the backend absorbs


async def test_rate_limited_past_max_retries_reaches_the_agent() -> None:
    from aios.errors import RateLimited

    class Never(ScriptedLLM):
        async def generate(self, request: Any) -> Any:  # type: ignore[override]
            raise RateLimited("always busy", retry_after=0.0)
            yield  # pragma: no cover

    config = aios.KernelConfig(llm=[aios.LLMConfig(max_concurrency=1, max_retries=2)])
    async with aios.Kernel(config, backends={"default": Never()}) as k:
        with pytest.raises(aios.RateLimited, match="always busy"):
            await k.spawn(ask).wait()
        assert k.llm_resources()["default"].queue.rejections == 3


async def test_preempt_off_means_no_time_slice_preemption_either() -> None:
    backend = ScriptedLLM(default=" ".join(["w"] * 20), token_delay=0.001)
    async with aios.Kernel(cfg("rr", window=1, time_slice_ms=1, preempt=False),
                           backends={"default": backend}) as k:
        procs = [k.spawn(ask) for _ in range(3)]
        for p in procs:
            await p.wait()
        assert sum(p.info().context_switches for p in procs) == 0
