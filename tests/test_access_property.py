"""Property: no sequence of syscalls by agent eve reads or changes bob's memories or files
beyond what eve was granted (here: read of bob's ``public`` directory only).

Eve knows bob's memory ids and tries every verb on his namespace, his storage space (in
many spellings of the same path), his group's space and look-alike names; whatever she
gets back must hold none of bob's secrets, and afterwards bob's memories, files and
their histories are exactly as he left them.
"""

from __future__ import annotations

from typing import Any

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aios
from aios.testing import ScriptedLLM

SECRET = "zqx-secret-7731"
PUBLIC = "public report"
NAMESPACES = [None, "agent:bob", "group:gb", "agent:bobby", "group:ga", "agent:eve",
              "agent:bo*", "agent:Bob"]
PATHS = ["agent:bob/s.txt", "agent:bob/./s.txt", "agent:bob//s.txt", "agent:bob/public/../s.txt",
         "agent:bob/public/p.txt", "agent:bob/public//p.txt", "agent:bob/public2/x.txt",
         "agent:bob/publi", "agent:bob", "agent:bob/", "group:gb/g.txt", "group:gb",
         "agent:bobby/x/f", "agent:Bob/s.txt", "agent:bo\u0062/s.txt", "agent:bob\u0301/s.txt",
         "mine.txt", "group:ga/x.txt", "agent:/s.txt", "../bob/s.txt", "/s.txt"]
EVE_CAPS = aios.Capabilities(memory={"agent:bobby": "rw"},
                             storage={"agent:bobby/x": "rw", "agent:bob/public": "r"})

op = st.one_of(
    st.tuples(st.just("memory.add"), st.sampled_from(NAMESPACES)),
    st.tuples(st.just("memory.search"), st.sampled_from(NAMESPACES)),
    st.tuples(st.sampled_from(["memory.get", "memory.update", "memory.delete"]),
              st.integers(0, 2)),
    st.tuples(st.sampled_from(["storage.write", "storage.read", "storage.delete",
                               "storage.history", "storage.rollback", "storage.list"]),
              st.sampled_from(PATHS)),
    st.tuples(st.just("storage.search"), st.just("")),
)


async def bob_setup(ctx: aios.Context) -> list[str]:
    ids = [await ctx.memory.add(f"{SECRET} one"), await ctx.memory.add(f"{SECRET} two"),
           await ctx.memory.add(f"{SECRET} group", namespace="group:gb")]
    await ctx.storage.write("s.txt", SECRET.encode())
    await ctx.storage.write("public/p.txt", PUBLIC.encode())
    await ctx.storage.write("group:gb/g.txt", SECRET.encode())
    return ids


async def bob_state(ctx: aios.Context, ids: list[str]) -> Any:
    mem = [(m.text, m.metadata) for m in [await ctx.memory.get(i) for i in ids]]
    files = {}
    for path in ("s.txt", "public/p.txt", "group:gb/g.txt"):
        files[path] = (await ctx.storage.read(path), len(await ctx.storage.history(path)))
    listing = [(f.path, f.version) for f in await ctx.storage.list("")]
    return mem, files, listing


async def eve(ctx: aios.Context, ops: list[tuple[str, Any]], ids: list[str]) -> list[str]:
    seen = []
    for kind, arg in ops:
        try:
            result = await _one(ctx, kind, arg, ids)
        except aios.AIOSError as exc:
            result = f"{type(exc).__name__}: {exc}"
        seen.append(repr(result))
    return seen


async def _one(ctx: aios.Context, kind: str, arg: Any, ids: list[str]) -> Any:
    m, s = ctx.memory, ctx.storage
    if kind == "memory.add":
        return await m.add("eve was here", namespace=arg)
    if kind == "memory.search":
        return await m.search(f"{SECRET} one", namespace=arg)
    if kind == "memory.get":
        return await m.get(ids[arg])
    if kind == "memory.update":
        return await m.update(ids[arg], text="pwned")
    if kind == "memory.delete":
        return await m.delete(ids[arg])
    if kind == "storage.write":
        return await s.write(arg, b"pwned")
    if kind == "storage.read":
        return await s.read(arg)
    if kind == "storage.delete":
        return await s.delete(arg)
    if kind == "storage.history":
        return await s.history(arg)
    if kind == "storage.rollback":
        return await s.rollback(arg, 1)
    if kind == "storage.list":
        return await s.list(arg)
    return await s.search(SECRET)


async def scenario(ops: list[tuple[str, Any]]) -> tuple[Any, Any, list[str]]:
    async with aios.Kernel(aios.KernelConfig(block_warn_s=0),
                           backends={"default": ScriptedLLM()}) as k:
        ids = await k.spawn(bob_setup, name="bob", group="gb").wait()
        before = await k.spawn(bob_state, ids, name="bob", group="gb").wait()
        seen = await k.spawn(eve, ops, ids, name="eve", group="ga", caps=EVE_CAPS).wait()
        after = await k.spawn(bob_state, ids, name="bob", group="gb").wait()
    return before, after, seen


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, min_size=1, max_size=12))
def test_no_syscall_sequence_reaches_another_agents_space(ops: list[tuple[str, Any]]) -> None:
    before, after, seen = anyio.run(scenario, ops)
    assert after == before
    assert not [s for s in seen if SECRET in s]


def test_the_granted_directory_is_readable() -> None:
    _, _, seen = anyio.run(scenario, [("storage.read", "agent:bob/public/p.txt"),
                                      ("storage.read", "agent:bob/s.txt")])
    assert PUBLIC in seen[0] and "PermissionDenied" in seen[1]
