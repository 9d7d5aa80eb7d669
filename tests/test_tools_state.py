"""The memory and storage built-in tools, driven by a model's tool calls inside a real
kernel: each agent's calls reach its own space only, and bad arguments are answered
with a message naming the field."""

from __future__ import annotations

import json
from typing import Any

import aios
from aios.testing import ScriptedLLM, ScriptedReply, ScriptedToolCall

STATE_TOOLS = ["memory_search", "memory_add", "files_list", "files_read", "files_write"]


def calls(*specs: tuple[str, dict[str, Any] | str]) -> ScriptedReply:
    return ScriptedReply(tool_calls=tuple(
        ScriptedToolCall(id=f"c{i}", name=n, arguments=a) for i, (n, a) in enumerate(specs)))


async def tool_loop(ctx: aios.Context) -> list[str]:
    """Chat with the state tools until the model answers; the tool messages' contents."""
    msgs: list[dict[str, Any]] = [{"role": "user", "content": "work"}]
    specs = await ctx.tools.specs()
    seen: list[str] = []
    while True:
        reply = await ctx.llm.chat(msgs, tools=specs, max_tokens=8)
        if not reply.tool_calls:
            return seen
        results = await ctx.tools.run(reply.tool_calls)
        seen += [m["content"] for m in results]
        msgs += [reply.message, *results]


def kernel(llm: ScriptedLLM) -> aios.Kernel:
    return aios.Kernel(aios.KernelConfig(tools={"builtin": STATE_TOOLS}),
                       backends={"default": llm})


async def test_the_state_tools_are_opt_in_and_hide_the_context() -> None:
    async def names(ctx: aios.Context) -> dict[str, list[str]]:
        return {s["function"]["name"]: sorted(s["function"]["parameters"]["properties"])
                for s in await ctx.tools.specs()}

    async with kernel(ScriptedLLM()) as k:
        specs = await k.spawn(names).wait()
    assert specs == {
        "memory_search": ["k", "query"], "memory_add": ["tags", "text"],
        "files_list": ["prefix"], "files_read": ["offset", "path", "version"],
        "files_write": ["content", "path"]}
    async with aios.Kernel(aios.KernelConfig(), backends={"default": ScriptedLLM()}) as k:
        assert await k.spawn(names).wait() == {}


async def test_a_models_tool_calls_reach_only_its_own_agents_space() -> None:
    llm = ScriptedLLM([
        # alice's model writes a memory and a file ...
        calls(("memory_add", {"text": "the vault code is 4711", "tags": ["secret"]}),
              ("files_write", {"path": "notes/vault.md", "content": "code: 4711"})),
        # ... and finds both again
        calls(("memory_search", {"query": "vault code"}), ("files_list", {}),
              ("files_read", {"path": "notes/vault.md"})),
        "done",
        # bob's model looks for them with the same tools
        calls(("memory_search", {"query": "vault code"}), ("files_list", {"prefix": ""}),
              ("files_read", {"path": "notes/vault.md"})),
        "done",
    ])
    async with kernel(llm) as k:
        alice = await k.spawn(tool_loop, name="alice", group="lab").wait()
        bob = await k.spawn(tool_loop, name="bob", group="lab").wait()

        async def own(ctx: aios.Context) -> tuple[list[str], list[str]]:
            return ([h.text for h in await ctx.memory.search("vault")],
                    [f.path for f in await ctx.storage.list()])

        alice_direct = await k.spawn(own, name="alice").wait()
        bob_direct = await k.spawn(own, name="bob").wait()

        async def shared(ctx: aios.Context) -> list[aios.FileInfo]:
            return await ctx.storage.list("group:lab")

        group_files = await k.spawn(shared, name="carol", group="lab").wait()

    added, written, found, listed, read = (alice[0], alice[1], *map(json.loads, alice[2:4]),
                                           alice[4])
    assert set(json.loads(added)) == {"id"}
    assert json.loads(written) == {"path": "notes/vault.md", "version": 1, "size": 10}
    assert [(h["text"], h["metadata"]) for h in found] == [
        ("the vault code is 4711", {"source": "tool", "tags": ["secret"]})]
    assert [(f["path"], f["version"], f["size"]) for f in listed] == [("notes/vault.md", 1, 10)]
    assert read == "code: 4711"
    # bob, same group, same tools: nothing of alice's
    assert json.loads(bob[0]) == [] and json.loads(bob[1]) == []
    assert bob[2].startswith("Error: tool 'files_read' raised StorageNotFound")
    # and the tools wrote into alice's own spaces, not a shared one
    assert alice_direct == (["the vault code is 4711"], ["notes/vault.md"])
    assert bob_direct == ([], [])
    assert group_files == []


async def test_bad_arguments_are_answered_with_the_named_field() -> None:
    llm = ScriptedLLM([
        calls(("memory_search", {"query": "x", "k": 0}),
              ("memory_add", {"txt": "typo"}),
              ("files_write", {"path": "group:lab/x.md", "content": "shared?"}),
              ("files_read", {"path": "../alice/notes/vault.md"}),
              ("files_list", {"prefix": "agent:alice"}),
              ("files_read", "{not json")),
        "done",
    ])
    async with kernel(llm) as k:
        proc = k.spawn(tool_loop, name="mallory", group="lab")
        out = await proc.wait()
        info = proc.info()
    k_msg, add_msg, write_msg, read_msg, list_msg, json_msg = out
    assert k_msg.startswith("Invalid arguments for tool 'memory_search':")
    assert "- k: Input should be greater than or equal to 1" in k_msg
    assert "- text: Field required (expected string)" in add_msg
    assert "- txt: Extra inputs are not permitted (known: text, tags)" in add_msg
    assert "- path: Value error, 'group:lab' names another space" in write_msg
    assert "- path: Value error, path '../alice/notes/vault.md' holds '..'" in read_msg
    assert "- prefix: Value error, 'agent:alice' names another space" in list_msg
    assert "Invalid JSON" in json_msg
    assert all(m.endswith("Fix the arguments and call the tool again.") for m in out)
    assert info.tool_calls == 0  # none of them ran


async def test_long_and_binary_files_through_files_read() -> None:
    text = "".join(f"line {i:05d}\n" for i in range(2000))  # 22,000 characters

    async def seed(ctx: aios.Context) -> None:
        await ctx.storage.write("big.txt", text)
        await ctx.storage.write("blob.bin", bytes([0xFF, 0xFE, 0x00]))

    llm = ScriptedLLM([
        calls(("files_read", {"path": "big.txt"}),
              ("files_read", {"path": "big.txt", "offset": 16_000}),
              ("files_read", {"path": "blob.bin"})),
        "done",
    ])
    async with kernel(llm) as k:
        await k.spawn(seed, name="dana").wait()
        first, second, binary = await k.spawn(tool_loop, name="dana").wait()
    assert first.startswith(text[:16_000])
    assert first.endswith("[... 6000 more characters; call files_read with offset=16000 "
                          "to read on]")
    assert second == text[16_000:]
    assert "'blob.bin' is not a text file (3 bytes of binary data)" in binary
