"""MCP servers as kernel tools, against real server processes written with the ``mcp``
SDK (tests/mcp_servers/), over stdio and over streamable HTTP on 127.0.0.1.

Each bad input of the issue has a test here: a command that does not exist, a server
that dies mid-call, one that answers garbage; each gives a typed error in bounded time
and later calls work again.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from aios.config import KernelConfig, MCPServerConfig
from aios.errors import ConfigError, ToolArgumentsInvalid, ToolFailed, ToolNotFound, ToolTimeout
from aios.tools.mcp import MCPProvider
from test_tools import Harness, harness, wait_until

SERVERS = Path(__file__).parent / "mcp_servers"
DEMO = str(SERVERS / "demo_server.py")


def stdio(name: str = "demo", **kw: Any) -> MCPServerConfig:
    return MCPServerConfig(name=name, command=sys.executable, args=[DEMO, "stdio"], **kw)


@asynccontextmanager
async def mcp_kernel(*servers: MCPServerConfig) -> AsyncIterator[Harness]:
    async with harness(config=KernelConfig(mcp=list(servers))) as h:
        yield h


def provider(h: Harness, name: str = "demo") -> MCPProvider:
    (p,) = [p for p in h.handler._providers if p.name == f"mcp:{name}"]
    assert isinstance(p, MCPProvider)
    return p


# -- config ---------------------------------------------------------------------------


def test_a_server_needs_exactly_one_transport() -> None:
    with pytest.raises(ConfigError, match="exactly one of command"):
        MCPServerConfig(name="x")
    with pytest.raises(ConfigError, match="exactly one of command"):
        MCPServerConfig(name="x", command="a", url="http://127.0.0.1:1/mcp")
    with pytest.raises(ConfigError, match=r"mcp\.0\.name"):
        KernelConfig.from_dict({"mcp": [{"name": "bad name", "command": "x"}]})
    with pytest.raises(ConfigError, match="duplicate mcp server names"):
        KernelConfig(mcp=[stdio(), stdio()])


# -- stdio ----------------------------------------------------------------------------


async def test_stdio_tools_are_listed_with_a_prefix_and_called() -> None:
    async with mcp_kernel(stdio(allowed_tools=["add", "echo", "fail", "slow"])) as h:
        specs = await h.client().specs()
        names = sorted(s["function"]["name"] for s in specs)
        assert names == ["demo__add", "demo__echo", "demo__fail", "demo__slow"]
        add = next(s for s in specs if s["function"]["name"] == "demo__add")["function"]
        assert add["description"] == "Add two integers."
        assert add["parameters"]["required"] == ["a", "b"]
        r = await h.client().call("demo__add", {"a": 2, "b": 40})
        assert (r.content, r.is_error, r.name) == ("42", False, "demo__add")
        assert "tools:mcp:demo" in h.services.queues
        assert "demo__pid" not in [s["function"]["name"] for s in specs]  # not allowed


async def test_stdio_arguments_are_checked_before_the_server() -> None:
    async with mcp_kernel(stdio()) as h:
        with pytest.raises(ToolArgumentsInvalid) as ei:
            await h.client().call("demo__add", {"a": "two", "c": 1})
        locs = {e["loc"]: e["type"] for e in ei.value.errors}
        assert locs == {"b": "missing", "a": "type_error"}  # extra "c": the server's call
        msgs = await h.client().run([{"id": "1", "function": {
            "name": "demo__add", "arguments": "{oops"}}])
        assert "Invalid JSON" in msgs[0]["content"]


async def test_a_tool_error_is_an_error_result_not_a_crash() -> None:
    async with mcp_kernel(stdio()) as h:
        r = await h.client().call("demo__fail", {"reason": "test"})
        assert r.is_error and "failed on purpose: test" in r.content
        assert (await h.client().call("demo__echo", {"text": "still up"})).content == "still up"


async def test_progress_is_logged_and_a_slow_call_times_out_with_cancellation() -> None:
    async with mcp_kernel(stdio(timeout_s=0.5)) as h:
        r = await h.client().call("demo__slow", {"seconds": 0.05})
        assert r.content == "slept 0.05"
        progress = [kw for ev, kw in h.services.log.events if ev == "mcp.progress"]
        assert [p["message"] for p in progress] == ["started", "half way"]
        with pytest.raises(ToolTimeout, match="demo__slow"):
            await h.client().call("demo__slow", {"seconds": 30})
        assert not h.services.queues["tools:mcp:demo"].running
        assert (await h.client().call("demo__add", {"a": 1, "b": 1})).content == "2"


async def test_a_server_that_dies_mid_call_fails_the_call_and_is_restarted() -> None:
    async with mcp_kernel(stdio()) as h:
        first = (await h.client().call("demo__pid")).value
        with anyio.fail_after(30), pytest.raises(ToolFailed, match="closed the connection"):
            await h.client().call("demo__die")
        with anyio.fail_after(30):
            second = (await h.client().call("demo__pid")).value
        assert second != first and provider(h).restarts == 1


async def test_a_server_that_answers_garbage_fails_the_call_and_is_restarted() -> None:
    async with mcp_kernel(stdio()) as h:
        with anyio.fail_after(30), pytest.raises(ToolFailed, match="invalid message"):
            await h.client().call("demo__garbage")
        with anyio.fail_after(30):
            assert (await h.client().call("demo__echo", {"text": "ok"})).content == "ok"


async def test_a_tool_list_change_is_seen_at_the_next_use() -> None:
    async with mcp_kernel(stdio()) as h:
        with pytest.raises(ToolNotFound):
            await h.client().call("demo__extra")
        changed = anyio.Event()
        p = provider(h)
        kernel_hook = p.on_change
        assert kernel_hook is not None

        def hook() -> None:
            kernel_hook()
            changed.set()

        p.on_change = hook
        await h.client().call("demo__grow")
        with anyio.fail_after(30):
            await changed.wait()
        assert "demo__extra" in [s["function"]["name"] for s in await h.client().specs()]
        assert (await h.client().call("demo__extra")).content == "extra!"


async def test_a_command_that_does_not_exist_is_named_and_others_keep_working() -> None:
    missing = MCPServerConfig(name="ghost", command="/nonexistent/aios-mcp-server")
    async with mcp_kernel(missing, stdio()) as h:
        with anyio.fail_after(5), pytest.raises(ToolFailed, match=r"'mcp:ghost'.*not available"):
            await h.client().call("ghost__anything")
        assert "nonexistent" in provider(h, "ghost").error
        assert (await h.client().call("demo__add", {"a": 1, "b": 2})).content == "3"


async def test_a_server_that_only_speaks_garbage_fails_to_connect_in_bounded_time() -> None:
    bad = MCPServerConfig(name="junk", command=sys.executable,
                          args=[str(SERVERS / "garbage_server.py")], connect_timeout_s=5)
    with anyio.fail_after(10):
        async with mcp_kernel(bad) as h:
            with pytest.raises(ToolFailed, match="not available"):
                await h.client().call("junk__x")
    assert "invalid message" in provider(h, "junk").error or "did not connect" in (
        provider(h, "junk").error)


# -- streamable HTTP ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def http_server() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, DEMO, "http", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None:
                raise RuntimeError("the HTTP MCP server exited")
            import time

            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.kill()
        proc.wait()


async def test_http_tools_are_listed_and_called(http_server: str) -> None:
    async with mcp_kernel(MCPServerConfig(name="web", url=http_server)) as h:
        names = [s["function"]["name"] for s in await h.client().specs()]
        assert "web__add" in names and "web__echo" in names
        msgs = await h.client().run([
            {"id": "a", "function": {"name": "web__add", "arguments": '{"a": 1, "b": 2}'}},
            {"id": "b", "function": {"name": "web__echo", "arguments": '{"text": "hi"}'}},
        ])
        assert [m["content"] for m in msgs] == ["3", "hi"]
        await wait_until(lambda: not h.services.queues["tools:mcp:web"].running)
