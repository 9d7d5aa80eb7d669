"""MCP servers as tool providers, each kept alive by a supervisor.

One :class:`MCPProvider` per ``[[mcp]]`` server: stdio (the kernel starts the command)
or streamable HTTP (``url``), through the ``mcp`` SDK (2.x). A supervisor task owns the
connection: it connects (within ``connect_timeout_s``), lists the tools, and waits; when
the connection is lost (the process exits, the server sends garbage, a call finds it
closed) it reconnects with exponential backoff (0.1 s doubling to 30 s), so one dead
server never fails every later call. A call in flight when the server dies fails at once
with :class:`aios.ToolFailed` (the SDK wakes it with "connection closed"; garbage
cancels it), never a hang; a call that runs past ``timeout_s`` is abandoned with an MCP
``notifications/cancelled`` and fails with :class:`aios.ToolTimeout`.

The tool list is cached and listed again only after ``notifications/tools/list_changed``
or a reconnect. Progress notifications go to the kernel log. This module never retries
a call: a tool's effects may not be idempotent.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from mcp import Client, MCPError, StdioServerParameters, stdio_client
from mcp import types as mcp_types
from mcp.client.streamable_http import streamable_http_client

from aios.errors import ToolFailed, ToolTimeout
from aios.syscalls.tools import ToolResult
from aios.tools.base import ToolProvider, ToolSpec

if TYPE_CHECKING:
    from mcp.client._transport import Transport, TransportStreams

    from aios.config import MCPServerConfig

__all__ = ["MCPProvider"]

_CONNECTION_CLOSED = -32000
_REQUEST_TIMEOUT = -32001
_BACKOFF_FIRST_S = 0.1
_BACKOFF_MAX_S = 30.0


class MCPProvider(ToolProvider):
    """The tools of one MCP server (prefixed ``<name>__``), under a supervisor."""

    def __init__(self, cfg: MCPServerConfig, *, log: Any) -> None:
        self.cfg = cfg
        self.name = f"mcp:{cfg.name}"
        self.prefix = cfg.name
        self.max_concurrency = cfg.max_concurrency
        self.log = log
        self.restarts = 0
        """Connections made after the first (for tests and ``aios plugins``)."""
        self.error = "not started"
        """Why the server is not connected (meaningful while it is not)."""
        self._client: Client | None = None
        self._up = anyio.Event()
        self._lost = anyio.Event()
        self._attempted = anyio.Event()
        self._failing = False
        self._tools: list[ToolSpec] | None = None
        self._inflight: set[anyio.CancelScope] = set()
        self._garbage: str | None = None
        self._connecting: anyio.CancelScope | None = None
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Start the supervisor; wait for its first attempt (never longer than
        ``connect_timeout_s``). A failed attempt is not raised: the supervisor retries.

        The supervisor is a task of its own, not a child of a task group entered here:
        the kernel starts and closes handlers around its own task group and under a
        shield, so a task group held open from start() to close() would not nest."""
        self._task = asyncio.get_running_loop().create_task(
            self._supervise(), name=f"aios-mcp-{self.cfg.name}")
        with anyio.move_on_after(self.cfg.connect_timeout_s + 1.0):
            await self._attempted.wait()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # waits without re-raising the task's cancellation

    async def _supervise(self) -> None:
        delay = _BACKOFF_FIRST_S
        connected_before = False
        while True:
            try:
                await self._connection(connected_before)
                connected_before = True
                delay = _BACKOFF_FIRST_S
            except Exception as exc:
                self.error = _describe(exc)
                self._failing = True
                self.log.warning("mcp.connect_failed", server=self.cfg.name, error=self.error,
                                 retry_in_s=delay)
            self._attempted.set()
            await anyio.sleep(delay)
            delay = min(_BACKOFF_MAX_S, delay * 2)

    async def _connection(self, reconnect: bool) -> None:
        """Connect, serve until the connection is lost, tear down."""
        self._lost = anyio.Event()
        self._garbage = None
        with anyio.CancelScope(deadline=anyio.current_time() + self.cfg.connect_timeout_s
                               ) as scope:
            self._connecting = scope
            client = Client(self._transport(), message_handler=self._on_message,
                            logging_callback=self._on_log, cache=None)
            async with client:
                self._tools = await self._list(client)
                scope.deadline = math.inf  # connected: no deadline from here on
                self._connecting = None
                self._client = client
                self._failing = False
                if reconnect:
                    self.restarts += 1
                self.log.info("mcp.connected", server=self.cfg.name, tools=len(self._tools),
                              restarts=self.restarts)
                self._up.set()
                if self.on_change is not None:
                    self.on_change()
                try:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self._listen, client)
                        await self._lost.wait()
                        tg.cancel_scope.cancel()
                finally:
                    if self._client is client:
                        self._client = None
                        self._up = anyio.Event()
                    for inflight in list(self._inflight):
                        inflight.cancel()
        if self._connecting is not None:  # the attempt failed: say why
            self._connecting = None
            if self._lost.is_set():
                raise ConnectionError(self._garbage or "the server closed the connection "
                                      "before the handshake finished")
            if scope.cancelled_caught:
                raise TimeoutError(f"did not connect within {self.cfg.connect_timeout_s:g} s")
        self.error = "connection lost: " + (self._garbage or "the server closed it")
        self.log.warning("mcp.connection_lost", server=self.cfg.name, error=self.error)

    def _transport(self) -> Transport:
        if self.cfg.command is not None:
            params = StdioServerParameters(command=self.cfg.command, args=self.cfg.args,
                                           env=self.cfg.env or None, cwd=self.cfg.cwd)
            return self._watched(stdio_client(params))
        assert self.cfg.url is not None
        return self._watched(self._http(self.cfg.url))

    @asynccontextmanager
    async def _http(self, url: str) -> AsyncIterator[TransportStreams]:
        import httpx2  # the mcp SDK's own HTTP client

        async with (
            httpx2.AsyncClient(headers=self.cfg.headers, follow_redirects=True,
                               timeout=httpx2.Timeout(30.0, read=300.0)) as http,
            streamable_http_client(url, http_client=http) as streams,
        ):
            yield streams

    @asynccontextmanager
    async def _watched(self, transport: Transport) -> AsyncIterator[TransportStreams]:
        """The transport's streams, with the incoming side watched (in line, no extra
        task): its end (the process exited) or a message that is not JSON-RPC marks
        the connection lost."""
        async with transport as (read, write):
            yield _WatchedStream(read, self._on_item, self._lose), write

    def _on_item(self, item: Any) -> None:
        if isinstance(item, Exception):
            self._garbage = f"the server sent an invalid message: {item}"
            self._lose()

    async def _listen(self, client: Client) -> None:
        """Follow ``tools/list_changed`` (2026 protocol: a ``subscriptions/listen``
        stream; older servers send the notification to :meth:`_on_message`)."""
        try:
            async with client.listen(tools_list_changed=True) as sub:
                async for _event in sub:
                    self._changed()
        except Exception as exc:  # an old protocol, or a server without subscriptions
            self.log.debug("mcp.listen_unavailable", server=self.cfg.name, error=str(exc))

    def _changed(self) -> None:
        self._tools = None
        if self.on_change is not None:
            self.on_change()

    def _lose(self) -> None:
        if not self._lost.is_set() and self._client is not None:
            self._client = None  # new calls wait for the supervisor's next connection
            self._up = anyio.Event()
        self._lost.set()
        if self._connecting is not None:  # lost while connecting: fail the attempt now
            self._connecting.cancel()

    async def _on_message(self, message: Any) -> None:
        if isinstance(message, mcp_types.ToolListChangedNotification):
            self._changed()

    async def _on_log(self, params: Any) -> None:
        self.log.debug("mcp.server_log", server=self.cfg.name,
                       level=getattr(params, "level", None), data=getattr(params, "data", None))

    # -- the provider interface -----------------------------------------------------

    async def _ready(self) -> Client:
        """The live client; while reconnecting after a loss (not while failing to
        connect at all) wait for it, bounded by ``connect_timeout_s``."""
        if self._client is None and not self._failing and self._task is not None:
            with anyio.move_on_after(self.cfg.connect_timeout_s):
                await self._up.wait()
        if self._client is None:
            raise ToolFailed(f"MCP server {self.cfg.name!r} is not connected ({self.error})")
        return self._client

    async def _list(self, client: Client) -> list[ToolSpec]:
        allowed = set(self.cfg.allowed_tools) if self.cfg.allowed_tools is not None else None
        specs: list[ToolSpec] = []
        cursor: str | None = None
        for _ in range(100):  # pages; a server that pages forever is cut off
            page = await client.list_tools(cursor=cursor)
            for t in page.tools:
                if allowed is None or t.name in allowed:
                    specs.append(ToolSpec(
                        name=t.name, description=t.description or t.title or "",
                        parameters=t.input_schema, timeout_s=self.cfg.timeout_s,
                        irreversible=t.name in self.cfg.irreversible_tools))
            cursor = page.next_cursor
            if cursor is None:
                break
        return specs

    async def list_tools(self) -> list[ToolSpec]:
        if self._tools is None:
            self._tools = await self._list(await self._ready())
        return self._tools

    async def call(self, name: str, arguments: dict[str, Any]) -> Any:
        client = await self._ready()
        server = self.cfg.name

        async def on_progress(progress: float, total: float | None, message: str | None
                              ) -> None:
            self.log.info("mcp.progress", server=server, tool=name, progress=progress,
                          total=total, message=message)

        scope = anyio.CancelScope()
        self._inflight.add(scope)
        try:
            with scope:
                result = await client.call_tool(name, arguments,
                                                read_timeout_seconds=self.cfg.timeout_s,
                                                progress_callback=on_progress)
        except MCPError as exc:
            if exc.code == _REQUEST_TIMEOUT:
                raise ToolTimeout(f"MCP tool {name!r} on {server!r} did not answer within "
                                  f"{self.cfg.timeout_s:g} s (cancelled)") from None
            if exc.code == _CONNECTION_CLOSED:
                self._lose()
                raise ToolFailed(f"MCP server {server!r} closed the connection during the "
                                 "call; it is being restarted") from None
            raise ToolFailed(f"MCP server {server!r} answered error {exc.code}: "
                             f"{exc.message}") from None
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            self._lose()
            raise ToolFailed(f"MCP server {server!r} is unreachable: {_describe(exc)}") from None
        finally:
            self._inflight.discard(scope)
        if scope.cancelled_caught:
            why = self._garbage or self.error
            raise ToolFailed(f"MCP server {server!r}: {why}; the call was abandoned and the "
                             "server is being restarted")
        return _result(name, result)


class _WatchedStream:
    """A read stream that reports each item and its end to the supervisor."""

    def __init__(self, inner: Any, on_item: Any, on_end: Any) -> None:
        self._inner = inner
        self._on_item = on_item
        self._on_end = on_end

    def __getattr__(self, name: str) -> Any:  # last_context and the like
        return getattr(self._inner, name)

    async def receive(self) -> Any:
        try:
            item = await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._on_end()
            raise
        self._on_item(item)
        return item

    def __aiter__(self) -> _WatchedStream:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> _WatchedStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _result(name: str, result: mcp_types.CallToolResult) -> ToolResult:
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            parts.append(block.text)
        else:
            parts.append(f"[{block.type} content]")
    text = "\n".join(parts)
    value = result.structured_content if result.structured_content is not None else text
    return ToolResult(name=name, value=value, content=text, is_error=result.is_error)


def _describe(exc: BaseException) -> str:
    """One line for an exception, looking inside exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"
