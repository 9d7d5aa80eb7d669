"""The door: dispatch by kind, guards, instruments, error mapping, streams, and the
kernel-level faults a new user hit (issue 9): errors out of ``async with``, exits,
process state, validation of what reaches the door."""

from __future__ import annotations

import sys
import time
from typing import Any, ClassVar

import anyio
import pytest
from pydantic import BaseModel, ConfigDict

import aios
from aios.abc import SyscallContext, SyscallHandler
from aios.plugins import PluginRegistry
from aios.testing import EchoLLM, ScriptedLLM

MSG = [{"role": "user", "content": "hello there"}]


def cfg(policy: str = "priority", window: int = 1, **kw: Any) -> aios.KernelConfig:
    return aios.KernelConfig(
        scheduler=aios.SchedulerConfig(policy=policy),
        llm=[aios.LLMConfig(name="default", max_concurrency=window, window=window)], **kw)


class Ping(BaseModel):
    model_config = ConfigDict(frozen=True)
    kind: str = "test.ping"


class Buggy(SyscallHandler):
    family = "test"
    kinds: ClassVar[tuple[str, ...]] = ("test.ping",)

    async def call(self, sc: SyscallContext, syscall: Any) -> Any:
        return {}["missing"]  # a handler's own bug


def registry_with(**handlers: type[SyscallHandler]) -> PluginRegistry:
    reg = PluginRegistry(autoload=True)
    for name, cls in handlers.items():
        reg._plugins["aios.handlers"][name] = type(reg.report()[0])(  # PluginInfo
            "aios.handlers", name, "test", "<test>", "", cls, None)
    return reg


async def test_unknown_kind_lists_the_installed_ones() -> None:
    async def agent(ctx: aios.Context) -> Any:
        return await ctx._door.call(ctx._proc, Ping(kind="nope.nothing"))

    async with aios.Kernel(cfg(), backends={"default": EchoLLM()}) as k:
        with pytest.raises(aios.InvalidSyscall, match=r"unknown syscall kind 'nope.nothing'"
                           r" \(installed: .*llm\.chat"):
            await k.spawn(agent).wait()


async def test_a_handlers_bug_is_a_kernel_internal_error_not_a_backend_failure() -> None:
    async def agent(ctx: aios.Context) -> Any:
        return await ctx._door.call(ctx._proc, Ping())

    async def other(ctx: aios.Context) -> str:
        return (await ctx.llm.chat(MSG)).text

    async with aios.Kernel(cfg(), backends={"default": EchoLLM("fine")},
                           registry=registry_with(test=Buggy)) as k:
        with pytest.raises(aios.KernelInternalError, match=r"test handler.*KeyError") as info:
            await k.spawn(agent).wait()
        assert isinstance(info.value.__cause__, KeyError)
        assert info.value.syscall == Ping()
        assert await k.spawn(other).wait() == "fine"  # the kernel goes on


async def test_guards_refuse_before_queueing_and_instruments_see_every_syscall() -> None:
    seen: list[tuple[str, str]] = []

    class Recorder:
        def syscall_started(self, sc: Any, syscall: Any) -> None:
            seen.append(("start", sc.name))

        def syscall_ended(self, sc: Any, syscall: Any, result: Any,
                          error: BaseException | None, duration_s: float) -> None:
            seen.append(("end" if error is None else type(error).__name__, sc.name))

    class Broken:
        def syscall_started(self, sc: Any, syscall: Any) -> None:
            raise RuntimeError("observers never change the outcome")

        syscall_ended = syscall_started

    def deny_mallory(sc: Any, syscall: Any) -> None:
        if sc.name == "mallory":
            raise aios.PermissionDenied(f"{sc.name} may not use {syscall.resource}")

    async def agent(ctx: aios.Context) -> str:
        return (await ctx.llm.chat(MSG)).text

    backend = ScriptedLLM(default="ok")
    async with aios.Kernel(cfg(), backends={"default": backend}) as k:
        k.add_guard(deny_mallory)
        k.add_instrument(Recorder())
        k.add_instrument(Broken())
        assert await k.spawn(agent, name="alice").wait() == "ok"
        with pytest.raises(aios.PermissionDenied, match="mallory may not use llm:default") as e:
            await k.spawn(agent, name="mallory").wait()
        assert e.value.syscall is not None
    assert seen == [("start", "alice"), ("end", "alice")]
    assert len(backend.requests) == 1  # the denied syscall never reached the backend


async def test_stream_must_be_used_inside_async_with() -> None:
    async def agent(ctx: aios.Context) -> list[str]:
        return [d async for d in ctx.llm.stream(MSG)]

    async with aios.Kernel(cfg(), backends={"default": ScriptedLLM(["a b c"])}) as k:
        with pytest.raises(aios.InvalidSyscall, match="async with"):
            await k.spawn(agent).wait()
        assert not k.llm_resources()["default"].queue.running


async def test_a_stream_misused_is_invalid_syscall_not_a_runtime_error() -> None:
    async def early_result(ctx: aios.Context) -> str:
        async with ctx.llm.stream(MSG) as s:
            return s.result.text  # before the loop: not finished

    async def entered_twice(ctx: aios.Context) -> None:
        async with ctx.llm.stream(MSG) as s, s:
            pass

    async with aios.Kernel(cfg(), backends={"default": ScriptedLLM(default="a b")}) as k:
        with pytest.raises(aios.InvalidSyscall, match="has not finished yet"):
            await k.spawn(early_result).wait()
        with pytest.raises(aios.InvalidSyscall, match="already entered"):
            await k.spawn(entered_twice).wait()
        assert not k.llm_resources()["default"].queue.running


async def test_a_stream_left_early_frees_its_slot_at_once() -> None:
    backend = ScriptedLLM(default=" ".join(["w"] * 50), token_delay=0.001)

    async def leaver(ctx: aios.Context) -> str:
        async with ctx.llm.stream(MSG) as s:
            async for _ in s:
                break
        return "left"

    async def after(ctx: aios.Context) -> int:
        return len((await ctx.llm.chat(MSG, max_tokens=3)).text.split())

    async with aios.Kernel(cfg(window=1), backends={"default": backend}) as k:
        assert await k.spawn(leaver).wait() == "left"
        q = k.llm_resources()["default"].queue
        assert not q.running and q.waiting == 0
        assert await k.spawn(after).wait() == 3


async def test_a_429_storm_ends_in_rate_limited_and_others_go_on() -> None:
    class Storm(ScriptedLLM):
        async def generate(self, request: Any) -> Any:  # type: ignore[override]
            if request.call.messages[0]["content"] == "storm":
                raise aios.RateLimited("busy forever", retry_after=0.0)
            async for chunk in super().generate(request):
                yield chunk

    async def storm(ctx: aios.Context) -> str:
        return (await ctx.llm.chat([{"role": "user", "content": "storm"}])).text

    async def calm(ctx: aios.Context) -> str:
        return (await ctx.llm.chat(MSG)).text

    config = aios.KernelConfig(llm=[aios.LLMConfig(max_concurrency=2, max_retries=5)])
    async with aios.Kernel(config, backends={"default": Storm(default="fine")}) as k:
        with anyio.fail_after(30):
            stormy = k.spawn(storm)
            calms = [k.spawn(calm) for _ in range(3)]
            with pytest.raises(aios.RateLimited, match="busy forever"):
                await stormy.wait()
            assert [await p.wait() for p in calms] == ["fine"] * 3
        q = k.llm_resources()["default"].queue
        assert q.rejections == 6 and not q.running


# -- issue 9: the kernel as a new user meets it -----------------------------------------


async def test_an_agents_error_leaves_async_with_as_itself() -> None:
    async def agent(ctx: aios.Context) -> None:
        await ctx.llm.chat(MSG, llm="nope")

    with pytest.raises(aios.InvalidSyscall, match="unknown llm resource 'nope'"):
        async with aios.Kernel(cfg(), backends={"default": EchoLLM()}) as k:
            await k.spawn(agent).wait()


async def test_spawning_a_plain_function_raises_process_error_not_a_group() -> None:
    def not_async(ctx: aios.Context) -> None:
        return None

    with pytest.raises(aios.ProcessError, match="async function"):
        async with aios.Kernel(cfg(), backends={"default": EchoLLM()}) as k:
            k.spawn(not_async)  # type: ignore[arg-type]


async def test_sys_exit_in_an_agent_ends_only_that_agent() -> None:
    async def quitter(ctx: aios.Context) -> None:
        sys.exit(3)

    async def worker(ctx: aios.Context) -> str:
        await anyio.sleep(0.01)
        return (await ctx.llm.chat(MSG)).text

    async with aios.Kernel(cfg(), backends={"default": EchoLLM("done")}) as k:
        q, w = k.spawn(quitter), k.spawn(worker)
        with pytest.raises(aios.ProcessError, match=r"sys.exit\(3\)"):
            await q.wait()
        assert q.info().state is aios.ProcessState.FAILED
        assert await w.wait() == "done"


async def test_on_exit_wait_kills_a_suspended_process_instead_of_hanging() -> None:
    async def agent(ctx: aios.Context) -> str:
        return (await ctx.llm.chat(MSG)).text

    backend = ScriptedLLM(default=" ".join(["w"] * 30), token_delay=0.01)
    with anyio.fail_after(20):
        async with aios.Kernel(cfg(on_exit="wait"), backends={"default": backend}) as k:
            p = k.spawn(agent)
            await anyio.sleep(0.02)
            p.suspend()
            done = k.spawn(agent)
    assert p.info().state is aios.ProcessState.KILLED
    assert done.info().state is aios.ProcessState.DONE


async def test_killed_reads_killed_at_once_and_wait_counts_while_waiting() -> None:
    backend = ScriptedLLM(default=" ".join(["w"] * 40), token_delay=0.002)

    async def agent(ctx: aios.Context) -> str:
        return (await ctx.llm.chat(MSG)).text

    async with aios.Kernel(cfg(window=1), backends={"default": backend}) as k:
        first = k.spawn(agent)
        second = k.spawn(agent)
        await anyio.sleep(0.03)  # second is queued behind first (40 tokens x 2 ms)
        assert k.llm_resources()["default"].queue.waiting == 1
        info = second.info()
        assert info.state is aios.ProcessState.WAITING
        assert info.wait_s > 0.0  # counted while it waits, not only once admitted
        second.kill()
        assert second.info().state is aios.ProcessState.KILLED
        first.kill()


@pytest.mark.parametrize(("kw", "match"), [
    ({"name": 123}, "name must be"),
    ({"group": ["a"]}, "group must be"),
    ({"name": ""}, "name must be"),
    ({"priority": "high"}, "priority must be an int"),
])
async def test_spawn_arguments_are_checked(kw: dict[str, Any], match: str) -> None:
    async def agent(ctx: aios.Context) -> None:
        return None

    async with aios.Kernel(cfg(), backends={"default": EchoLLM()}) as k:
        with pytest.raises(aios.ProcessError, match=match):
            k.spawn(agent, **kw)
        assert k.ps() == []


def test_a_lent_backend_must_be_a_backend() -> None:
    with pytest.raises(aios.ConfigError, match=r"backends.x: must be an aios.abc.LLMBackend"):
        aios.Kernel(backends={"x": object()})  # type: ignore[dict-item]


@pytest.mark.parametrize(("messages", "kw", "match"), [
    ([{"role": "user", "content": "hi \udc80"}], {}, "lone surrogate"),
    (MSG, {"temperature": float("inf")}, "temperature: .*finite"),
    ([{"content": "no role"}], {}, "role must be one of"),
    ([{"role": "user", "content": 123}], {}, "content must be a string"),
    (MSG, {"max_token": 3}, "unknown argument.*max_token"),
    (MSG, {"max_completion_tokens": 3}, "unknown argument.*max_completion_tokens"),
    ([], {}, "messages"),
    (MSG, {"tools": [{"x": 1}]}, r"tools\.0: .*\{\"type\": \"function\""),
    (MSG, {"tools": [{"type": "function", "function": {"description": "no name"}}]},
     r"tools\.0"),
    (MSG, {"max_tokens": "5"}, "max_tokens: Input should be a valid integer"),
    (MSG, {"max_tokens": 5.0}, "max_tokens: Input should be a valid integer"),
    (MSG, {"seed": "1"}, "seed: Input should be a valid integer"),
])
async def test_bad_llm_input_is_refused_at_the_door_before_any_backend(
    messages: list[dict[str, Any]], kw: dict[str, Any], match: str
) -> None:
    backend = ScriptedLLM(default="ok")

    async def agent(ctx: aios.Context) -> str:
        return (await ctx.llm.chat(messages, **kw)).text

    async with aios.Kernel(cfg(), backends={"default": backend}) as k:
        with pytest.raises(aios.InvalidSyscall, match=match):
            await k.spawn(agent).wait()
    assert backend.requests == []


async def test_openai_shapes_are_accepted_the_same_on_every_backend() -> None:
    backend = ScriptedLLM(default="hi")

    async def agent(ctx: aios.Context) -> str:
        msgs = [{"role": "user", "content": [{"type": "text", "text": "Say "},
                                             {"type": "text", "text": "hi"}]}]
        return (await ctx.llm.chat(msgs, stop="x")).text

    async with aios.Kernel(cfg(), backends={"default": backend}) as k:
        assert await k.spawn(agent).wait() == "hi"
    call = backend.requests[0].call
    assert call.messages[0]["content"] == "Say hi"  # text parts joined for every backend
    assert call.stop == ["x"]


async def test_default_policy_honours_priorities() -> None:
    order: list[int] = []
    backend = ScriptedLLM(default="a b", token_delay=0.001)

    async def agent(ctx: aios.Context) -> None:
        await ctx.llm.chat(MSG)
        order.append(ctx.priority)

    config = aios.KernelConfig(llm=[aios.LLMConfig(max_concurrency=1, window=1)])
    assert config.scheduler.policy == "priority"
    async with aios.Kernel(config, backends={"default": backend}) as k:
        procs = [k.spawn(agent, priority=p) for p in (5, 9, 0, 3)]
        for p in procs:
            await p.wait()
    assert order == [0, 3, 5, 9]  # the first, admitted at once, was preempted


async def test_two_kernels_make_distinct_syscall_ids() -> None:
    ids: list[str] = []

    class Recorder(ScriptedLLM):
        async def generate(self, request: Any) -> Any:  # type: ignore[override]
            ids.append(request.request_id)
            async for chunk in super().generate(request):
                yield chunk

    async def agent(ctx: aios.Context) -> str:
        return (await ctx.llm.chat(MSG)).text

    for _ in range(2):
        async with aios.Kernel(cfg(), backends={"default": Recorder()}) as k:
            await k.spawn(agent).wait()
    assert len(set(ids)) == 2 and all(i.endswith(".1.1") for i in ids)


async def test_the_watchdog_names_an_agent_that_blocks_the_loop() -> None:
    async def hog(ctx: aios.Context) -> None:
        time.sleep(0.6)  # noqa: ASYNC251 - blocking on purpose

    async with aios.Kernel(cfg(block_warn_s=0.2), backends={"default": EchoLLM()}) as k:
        await k.spawn(hog, name="hog").wait()
        await anyio.sleep(0.1)
        assert k.watchdog is not None
        assert any(agent == "hog" for agent, _ in k.watchdog.stalls)


# -- found by a new user: spawning under another's name, stray cancellations --------------


async def test_an_agent_cannot_spawn_a_child_under_another_agents_name() -> None:
    async def writer(ctx: aios.Context) -> None:
        await ctx.storage.write("secrets.md", "mine")
        await ctx.memory.add("writer memory secret")

    async def mallory(ctx: aios.Context, kernel: aios.Kernel) -> Any:
        async def child(cc: aios.Context) -> Any:
            await cc.storage.write("secrets.md", "overwritten")

        return await kernel.spawn(child, name="writer").wait()

    async with aios.Kernel(cfg(), backends={"default": EchoLLM()}) as k:
        await k.spawn(writer, name="writer").wait()
        with pytest.raises(aios.PermissionDenied, match="may spawn only under its own name"):
            await k.spawn(mallory, k, name="mallory").wait()

        async def read(ctx: aios.Context) -> bytes:
            return await ctx.storage.read("secrets.md")

        assert await k.spawn(read, name="writer").wait() == b"mine"


async def test_a_child_gets_a_derived_name_and_stays_in_its_parents_group() -> None:
    async def parent(ctx: aios.Context, kernel: aios.Kernel) -> tuple[str, str]:
        async def child(cc: aios.Context) -> tuple[str, str]:
            return cc.name, cc.group

        mine = await kernel.spawn(child).wait()
        with pytest.raises(aios.PermissionDenied, match="its own group"):
            kernel.spawn(child, group="other")
        named = await kernel.spawn(child, name=f"{ctx.name}.helper").wait()
        assert named == (f"{ctx.name}.helper", ctx.group)
        return mine

    async with aios.Kernel(cfg(), backends={"default": EchoLLM()}) as k:
        name, group = await k.spawn(parent, k, name="boss", group="team").wait()
    assert name.startswith("boss.child-") and group == "team"


@pytest.mark.parametrize("bad", ["a/b", "..", ".", "agent:x", "group:x", "a\\b"])
async def test_names_that_would_address_other_spaces_are_refused(bad: str) -> None:
    async def agent(ctx: aios.Context) -> None:
        return None

    async with aios.Kernel(cfg(), backends={"default": EchoLLM()}) as k:
        with pytest.raises(aios.ProcessError, match="may not contain"):
            k.spawn(agent, name=bad)
        with pytest.raises(aios.ProcessError, match="may not contain"):
            k.spawn(agent, group=bad)


async def test_a_stray_cancellation_raised_by_an_agent_fails_only_that_agent() -> None:
    async def stray(ctx: aios.Context) -> None:
        raise anyio.get_cancelled_exc_class()()

    async def ok(ctx: aios.Context) -> str:
        return (await ctx.llm.chat(MSG)).text

    async with aios.Kernel(cfg(), backends={"default": EchoLLM("fine")}) as k:
        with pytest.raises(aios.ProcessError, match="raised a cancellation itself"):
            await k.spawn(stray).wait()
        with anyio.fail_after(10):
            assert await k.spawn(ok).wait() == "fine"


async def test_a_derived_child_name_owned_by_another_group_is_refused() -> None:
    async def victim(ctx: aios.Context) -> None:
        await ctx.storage.write("secret.txt", "swordfish")

    async def attacker(ctx: aios.Context, kernel: aios.Kernel) -> Any:
        async def reader(cc: aios.Context) -> bytes:
            return await cc.storage.read("secret.txt")

        return await kernel.spawn(reader, name="alice.bob").wait()

    async with aios.Kernel(cfg(), backends={"default": EchoLLM()}) as k:
        await k.spawn(victim, name="alice.bob", group="h").wait()
        with pytest.raises(aios.PermissionDenied, match="belongs to a process of group 'h'"):
            await k.spawn(attacker, k, name="alice", group="g").wait()
