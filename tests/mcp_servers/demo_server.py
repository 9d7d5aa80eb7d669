"""A real MCP server for the tool manager's tests, written with the ``mcp`` SDK.

``python demo_server.py stdio`` serves over stdin/stdout; ``python demo_server.py http
PORT`` serves streamable HTTP on 127.0.0.1:PORT/mcp. Tools: ``add``, ``echo``, ``slow``
(sleeps, reporting progress), ``fail`` (raises: an isError result), ``die`` (the process
exits mid-call), ``garbage`` (writes a line that is not JSON-RPC to stdout, then hangs),
``grow`` (adds a tool and announces tools/list_changed), ``pid``.
"""

from __future__ import annotations

import os
import sys

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("demo")
WIRE = os.dup(1)
"""The protocol's stdout, kept before the SDK diverts fd 1 to stderr (stdio only)."""


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@server.tool()
async def slow(seconds: float, ctx: Context) -> str:
    """Sleep, reporting progress twice."""
    await ctx.report_progress(0, 2, "started")
    await anyio.sleep(seconds / 2)
    await ctx.report_progress(1, 2, "half way")
    await anyio.sleep(seconds / 2)
    return f"slept {seconds}"


@server.tool()
def fail(reason: str) -> str:
    """Always fails (an isError result with this message)."""
    raise ToolError(f"failed on purpose: {reason}")


@server.tool()
def die() -> str:
    """The server process exits in the middle of the call."""
    os._exit(3)


@server.tool()
async def garbage() -> str:
    """Writes a line that is not JSON-RPC where the client reads, then hangs."""
    os.write(WIRE, b"this is not json-rpc\n")
    await anyio.sleep(3600)
    return "unreachable"


@server.tool()
def pid() -> int:
    """The server's process id."""
    return os.getpid()


@server.tool()
async def grow(ctx: Context) -> str:
    """Add the tool ``extra`` and announce the change."""

    def extra() -> str:
        """A tool that appeared later."""
        return "extra!"

    server.add_tool(extra, name="extra")
    await ctx.notify_tools_changed()
    return "grown"


if __name__ == "__main__":
    if sys.argv[1:2] == ["http"]:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run("stdio")
