"""Access control at the door: capabilities, privilege groups, spawn and process control.

Each refusal is a typed error naming the process, the resource and the missing
capability, uses no capacity (the tool or model never sees it), and loses nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

import aios
from aios.testing import ScriptedLLM

MSG = [{"role": "user", "content": "hi"}]
RAN: list[str] = []


@aios.tool
async def files_read(path: str) -> str:
    """Read a file."""
    RAN.append(f"read {path}")
    return "text"


@aios.tool
async def files_delete(path: str) -> str:
    """Delete a file."""
    RAN.append(f"delete {path}")
    return "gone"


@aios.tool
async def shell(cmd: str) -> str:
    """Run a command."""
    RAN.append(f"shell {cmd}")
    return "done"


TOOLS = [files_read, files_delete, shell]


@pytest.fixture(autouse=True)
def _clear() -> None:
    RAN.clear()


def kernel(access: dict[str, Any] | None = None, llm: ScriptedLLM | None = None,
           **kw: Any) -> aios.Kernel:
    cfg = aios.KernelConfig(access=access or {})
    return aios.Kernel(cfg, backends={"default": llm or ScriptedLLM()}, tools=TOOLS, **kw)


async def run(k: aios.Kernel, agent: Callable[..., Awaitable[Any]], *args: Any,
              **spawn: Any) -> Any:
    return await k.spawn(agent, *args, **spawn).wait()


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"files": ["x"]}, "Capabilities.files: unknown key"),
    ({"tools": ["files_[read"]}, "unclosed or empty"),
    ({"tools": ["files read"]}, "not allowed in a name"),
    ({"tools": ["a[]b"]}, "unclosed or empty"),
    ({"tools": [""]}, "non-empty"),
    ({"tools": "shell"}, "not one string"),
    ({"tools": {"shell": "maybe"}}, "Capabilities.tools.shell"),
    ({"llms": "default"}, "not one string"),
    ({"memory": {"bob": "r"}}, "unknown namespace 'bob'"),
    ({"memory": {"agent:bob": "w"}}, "Capabilities.memory.agent:bob"),
    ({"storage": {"bob/reports": "r"}}, "unknown space"),
    ({"storage": {"agent:bob/../alice": "r"}}, "'..'"),
    ({"max_priority": "high"}, "Capabilities.max_priority"),
])
def test_malformed_capabilities_name_the_field(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(aios.ConfigError, match=match):
        aios.Capabilities(**kwargs)


def test_a_negative_quota_and_a_bad_group_in_the_config_are_config_errors() -> None:
    with pytest.raises(aios.ConfigError, match=r"Quota\.tokens"):
        aios.Quota(tokens=-1)
    with pytest.raises(aios.ConfigError) as ei:
        aios.KernelConfig.from_dict({"access": {"groups": {"lab": {
            "tools": ["[x"], "quota": {"tool_s": -1}, "colour": "red"}}}})
    text = str(ei.value)
    assert "access.groups.lab.tools" in text and "access.groups.lab.quota.tool_s" in text
    assert "access.groups.lab.colour: unknown key" in text


def test_storage_prefixes_are_normalised_directories() -> None:
    caps = aios.Capabilities(storage={"agent:bob/./reports//": "r", "group:lab": "rw"})
    assert caps.storage == {"agent:bob/reports": "r", "group:lab": "rw"}


async def test_spawn_refuses_an_unknown_group_and_caps_of_the_wrong_type() -> None:
    async def agent(ctx: aios.Context) -> None:
        return None

    async with kernel({"groups": {"lab": {}, "ops": {}}}) as k:
        with pytest.raises(aios.ProcessError, match=r"unknown group 'nope'.*lab, ops"):
            k.spawn(agent, group="nope")
        with pytest.raises(aios.ConfigError, match=r"caps must be an aios\.Capabilities"):
            k.spawn(agent, caps={"tools": ["shell"]})
        with pytest.raises(aios.ConfigError, match=r"quota must be an aios\.Quota"):
            k.spawn(agent, quota={"tokens": 5})
        assert k.ps() == []  # nothing half-spawned
        await run(k, agent, group="lab")  # a defined group, and no group at all, work
        await run(k, agent)


# -- tools and LLMs ------------------------------------------------------------------------


async def test_a_denied_tool_is_refused_at_the_door_and_never_runs() -> None:
    async def agent(ctx: aios.Context) -> Any:
        names = [s["function"]["name"] for s in await ctx.tools.specs()]
        ok = await ctx.tools.call("files_read", {"path": "a"})
        with pytest.raises(aios.PermissionDenied) as ei:
            await ctx.tools.call("shell", {"cmd": "rm -rf /"})
        return names, ok.content, ei.value

    async with kernel() as k:
        proc = k.spawn(agent, name="r1", group="lab",
                       caps=aios.Capabilities(tools=["files_*"]))
        names, content, err = await proc.wait()
        info = proc.info()
    assert names == ["files_read", "files_delete"]
    assert content == "text" and RAN == ["read a"]
    assert "process 1 (r1, group lab)" in str(err) and "tools:shell" in str(err)
    assert "missing capability tools ~ 'shell'" in str(err)
    assert err.syscall.name == "shell"
    assert info.tool_calls == 1  # the refused call used no capacity
    assert info.caps == {"tools": {"files_*": "allow", "*": "deny"}}


async def test_the_most_specific_rule_decides() -> None:
    caps = aios.Capabilities(tools={"files_*": "allow", "files_delete": "deny", "*": "deny"})

    async def agent(ctx: aios.Context) -> list[str]:
        out = []
        for name in ("files_read", "files_delete", "shell"):
            try:
                await ctx.tools.call(name, {"path": "p"} if name != "shell" else {"cmd": "x"})
                out.append(f"{name} ok")
            except aios.PermissionDenied:
                out.append(f"{name} denied")
        return out

    async with kernel() as k:
        assert await run(k, agent, caps=caps) == [
            "files_read ok", "files_delete denied", "shell denied"]


async def test_specs_of_a_named_denied_tool_is_refused() -> None:
    async def agent(ctx: aios.Context) -> None:
        await ctx.tools.specs(["shell"])

    async with kernel({"groups": {"lab": {"tools": ["files_read"]}}}) as k:
        with pytest.raises(aios.PermissionDenied, match="shell"):
            await run(k, agent, group="lab")


async def test_an_llm_outside_the_caps_is_refused_and_the_backend_never_sees_it() -> None:
    llm = ScriptedLLM()

    async def agent(ctx: aios.Context) -> None:
        await ctx.llm.chat(MSG)

    async with kernel(llm=llm) as k:
        with pytest.raises(aios.PermissionDenied, match=r"LLM 'default' \(resource "
                           r"llm:default\).*granted: gpt-\*"):
            await run(k, agent, caps=aios.Capabilities(llms=["gpt-*"]))
        assert llm.requests == []
        await run(k, agent, caps=aios.Capabilities(llms=["def*"]))
        assert len(llm.requests) == 1


async def test_default_deny_needs_a_grant_for_tools_and_llms() -> None:
    async def agent(ctx: aios.Context) -> list[str]:
        out = []
        for what, call in (("llm", ctx.llm.chat(MSG)),
                           ("tool", ctx.tools.call("files_read", {"path": "x"}))):
            try:
                await call
                out.append(f"{what} ok")
            except aios.PermissionDenied:
                out.append(f"{what} denied")
        out.append(str(len(await ctx.tools.specs())))
        return out

    access = {"default": "deny", "groups": {"trusted": {"llms": ["*"], "tools": ["*"]}}}
    async with kernel(access) as k:
        assert await run(k, agent) == ["llm denied", "tool denied", "0"]
        assert await run(k, agent, group="trusted") == ["llm ok", "tool ok", "3"]


async def test_own_caps_replace_the_groups_field_by_field() -> None:
    async def agent(ctx: aios.Context) -> list[str]:
        return [s["function"]["name"] for s in await ctx.tools.specs()]

    async with kernel({"groups": {"lab": {"tools": ["shell"], "max_priority": 2}}}) as k:
        assert await run(k, agent, group="lab", priority=5) == ["shell"]
        proc = k.spawn(agent, group="lab", priority=5,
                       caps=aios.Capabilities(tools=["files_read"]))
        assert await proc.wait() == ["files_read"]
        assert proc.info().caps == {"tools": {"files_read": "allow", "*": "deny"},
                                    "max_priority": 2}


# -- memory and storage --------------------------------------------------------------------


async def test_another_agents_memory_needs_a_grant_and_ids_cannot_be_probed() -> None:
    async def owner(ctx: aios.Context) -> str:
        return await ctx.memory.add("the launch code is 0000")

    async def reader(ctx: aios.Context, mid: str) -> list[str]:
        out = []
        for what, call in (
            ("search", ctx.memory.search("launch", namespace="agent:alice")),
            ("get", ctx.memory.get(mid)),
            ("add", ctx.memory.add("planted", namespace="agent:alice")),
            ("delete", ctx.memory.delete(mid)),
        ):
            try:
                await call
                out.append(f"{what} ok")
            except aios.PermissionDenied:
                out.append(f"{what} denied")
            except aios.MemoryNotFound:
                out.append(f"{what} not found")
        return out

    async with kernel() as k:
        mid = await run(k, owner, name="alice", group="a")
        assert await run(k, reader, mid, name="mallory", group="m") == [
            "search denied", "get not found", "add denied", "delete not found"]
        granted = aios.Capabilities(memory={"agent:alice": "r"})
        assert await run(k, reader, mid, name="bob", group="m", caps=granted) == [
            "search ok", "get ok", "add denied", "delete not found"]
        assert (await run(k, owner, name="alice", group="a"))  # alice's memory is intact

        async def check(ctx: aios.Context) -> list[str]:
            return [h.text for h in await ctx.memory.search("launch code")]

        assert await run(k, check, name="alice", group="a") == [
            "the launch code is 0000", "the launch code is 0000"]


async def test_a_storage_grant_is_a_directory_and_read_only_means_read_only() -> None:
    async def owner(ctx: aios.Context) -> None:
        for path in ("reports/q1.md", "reports2/x.md", "secret.txt"):
            await ctx.storage.write(path, b"data of " + path.encode())

    async def reader(ctx: aios.Context) -> list[str]:
        out = []
        for what, call in (
            ("read reports", ctx.storage.read("agent:alice/reports/q1.md")),
            ("read reports2", ctx.storage.read("agent:alice/reports2/x.md")),
            ("read secret", ctx.storage.read("agent:alice/secret.txt")),
            ("read dotted", ctx.storage.read("agent:alice/./reports//q1.md")),
            ("list space", ctx.storage.list("agent:alice")),
            ("list reports", ctx.storage.list("agent:alice/reports")),
            ("write reports", ctx.storage.write("agent:alice/reports/q1.md", b"x")),
            ("delete", ctx.storage.delete("agent:alice/reports/q1.md")),
        ):
            try:
                await call
                out.append(f"{what} ok")
            except aios.PermissionDenied as exc:
                named = "resource storage" in str(exc) and "agent:alice/" in str(exc)
                out.append(f"{what} denied" if named else f"{what}: {exc}")
        return out

    async with kernel() as k:
        await run(k, owner, name="alice")
        caps = aios.Capabilities(storage={"agent:alice/reports": "r"})
        assert await run(k, reader, name="bob", caps=caps) == [
            "read reports ok", "read reports2 denied", "read secret denied",
            "read dotted ok", "list space denied", "list reports ok",
            "write reports denied", "delete denied"]


async def test_the_group_space_follows_the_groups_shared_rule() -> None:
    async def agent(ctx: aios.Context) -> list[str]:
        out = []
        for what, call in (("mem read", ctx.memory.search("x", namespace="group:lab")),
                           ("mem write", ctx.memory.add("x", namespace="group:lab")),
                           ("file read", ctx.storage.list("group:lab")),
                           ("file write", ctx.storage.write("group:lab/f", b"x"))):
            try:
                await call
                out.append(f"{what} ok")
            except aios.PermissionDenied:
                out.append(f"{what} denied")
        return out

    groups = {"lab": {}, "ro": {"shared": "r"}, "none": {"shared": "none"}}
    async with kernel({"groups": groups}) as k:
        assert await run(k, agent, group="lab") == [
            "mem read ok", "mem write ok", "file read ok", "file write ok"]
        ro = await run(k, agent, group="ro", caps=aios.Capabilities(
            memory={"group:lab": "r"}, storage={"group:lab": "r"}))
        assert ro == ["mem read ok", "mem write denied", "file read ok", "file write denied"]
        assert await run(k, agent, group="none") == [
            "mem read denied", "mem write denied", "file read denied", "file write denied"]


# -- priority, spawn, signals --------------------------------------------------------------


async def test_priority_above_the_cap_is_refused_at_spawn_and_set_priority() -> None:
    handles: dict[int, aios.Process[Any]] = {}

    async def raiser(ctx: aios.Context, k: aios.Kernel) -> str:
        me = handles[ctx.pid]
        me.set_priority(3)  # less urgent: fine
        try:
            me.set_priority(0)
        except aios.PermissionDenied as exc:
            return str(exc)
        return "raised"

    caps = aios.Capabilities(max_priority=2)
    async with kernel() as k:
        with pytest.raises(aios.PermissionDenied, match="priority 1: its capability "
                           "max_priority is 2"):
            k.spawn(raiser, k, priority=1, caps=caps)
        proc = k.spawn(raiser, k, priority=5, caps=caps)
        handles[proc.pid] = proc
        assert "max_priority is 2" in await proc.wait()
        assert proc.info().priority == 3
        alive = k.spawn(_sleeper, priority=4, caps=caps)
        with pytest.raises(aios.PermissionDenied):
            alive.set_priority(-10)  # the app is bound by the cap too
        assert alive.info().priority == 4
        alive.kill()


async def _sleeper(ctx: aios.Context) -> None:
    await anyio.sleep_forever()


async def test_an_agent_needs_spawn_and_its_child_can_do_no_more_than_it() -> None:
    async def child(ctx: aios.Context) -> list[str]:
        out = []
        for name in ("files_read", "shell"):
            try:
                await ctx.tools.call(name, {"path": "p"} if name != "shell" else {"cmd": "x"})
                out.append(f"{name} ok")
            except aios.PermissionDenied:
                out.append(f"{name} denied")
        return out

    async def parent(ctx: aios.Context, k: aios.Kernel, **spawn: Any) -> Any:
        return await k.spawn(child, name=f"{ctx.name}.child", **spawn).wait()

    async with kernel() as k:
        with pytest.raises(aios.PermissionDenied, match="may not spawn processes: it lacks "
                           "the capability spawn=True"):
            await run(k, parent, k, name="p1", caps=aios.Capabilities(spawn=False))
        narrow = aios.Capabilities(spawn=True, tools=["files_read"])
        wide = aios.Capabilities(tools=["*"])
        got = await run(k, parent, k, name="p3", group="g", caps=narrow)
        assert got == ["files_read ok", "shell denied"]

        async def widening(ctx: aios.Context, k: aios.Kernel) -> Any:
            return await k.spawn(child, name="p4.child", group="g", caps=wide).wait()

        assert await run(k, widening, k, name="p4", group="g", caps=narrow) == [
            "files_read ok", "shell denied"]

        async def elsewhere(ctx: aios.Context, k: aios.Kernel) -> Any:
            return await k.spawn(child, name="p5.child", group="other").wait()

        with pytest.raises(aios.PermissionDenied, match="only into its own group 'g'"):
            await run(k, elsewhere, k, name="p5", group="g", caps=narrow)
        assert k.ps()  # the kernel goes on


async def test_signalling_another_process_needs_signal_and_the_same_group() -> None:
    async def killer(ctx: aios.Context, target: aios.Process[Any]) -> str:
        try:
            target.kill()
        except aios.PermissionDenied as exc:
            return str(exc)
        return "killed"

    async with kernel() as k:
        victim = k.spawn(_sleeper, name="v", group="g")
        no = await run(k, killer, victim, name="k1", group="g",
                       caps=aios.Capabilities(signal=False))
        assert "lacks the capability signal=True" in no
        other = await run(k, killer, victim, name="k2", group="h",
                          caps=aios.Capabilities(signal=True))
        assert "another group ('g')" in other
        assert not victim.done
        assert await run(k, killer, victim, name="k3", group="g",
                         caps=aios.Capabilities(signal=True)) == "killed"
        with pytest.raises(aios.ProcessKilled):
            await victim.wait()
