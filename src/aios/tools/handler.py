"""The tool manager: ``tools.call`` and ``tools.specs`` behind the kernel's door.

Tools come from ``aios.Kernel(config, tools=[...])`` (functions, :class:`Tool`s or
:class:`ToolProvider`s), from the ``aios.tools`` entry points named in
``[tools] builtin``, and from the ``[[mcp]]`` servers. Each function tool is a resource
``tools:<name>`` and each provider (an MCP server) one resource ``tools:<provider>``,
with its own queue and window (``max_concurrency``) under the kernel's policy, so a
flood of calls from one agent cannot starve a more urgent one.

A call is validated (before it queues), approved if irreversible, admitted, run under
its timeout in the caller's task (a sync function in a worker thread), accounted
(``tool_calls``, ``tool_s``), and its value checked (JSON-compatible, not too long).
Every failure is a :class:`aios.ToolError` naming the tool; the slot is given back on
every path. This module never retries a tool: a tool's effects may not be idempotent.
"""

from __future__ import annotations

import difflib
import json
import time
from dataclasses import dataclass
from typing import Any

import anyio
from pydantic_core import PydanticSerializationError, to_jsonable_python

from aios.abc import KernelServices, SyscallContext, SyscallHandler
from aios.access.approval import ApprovalRequest, ask
from aios.access.grants import access_of, tool_rule
from aios.errors import (
    ApprovalDenied,
    ConfigError,
    InvalidSyscall,
    ToolArgumentsInvalid,
    ToolError,
    ToolFailed,
    ToolNotFound,
    ToolTimeout,
)
from aios.scheduler.queue import ResourceQueue
from aios.syscalls.tools import ToolCall, ToolResult, ToolSpecs
from aios.tools.base import OPENAI_NAME, ToolProvider, ToolSpec, safe_tool_name
from aios.tools.function import Tool, tool
from aios.tools.schema import check_arguments

__all__ = ["ToolsHandler"]


@dataclass(slots=True, eq=False)
class _Entry:
    """One tool as agents see it: exposed spec, where it runs, its queue and timeout."""

    spec: ToolSpec
    queue: ResourceQueue
    timeout_s: float
    tool: Tool | None = None
    provider: ToolProvider | None = None
    remote: str = ""
    """The provider's own name of the tool (the exposed name may be prefixed)."""

    def validate(self, arguments: dict[str, Any] | str) -> dict[str, Any]:
        if self.tool is not None:
            return self.tool.validate(arguments)
        return check_arguments(self.spec.name, self.spec.parameters, arguments)


class ToolsHandler(SyscallHandler):
    family = "tools"
    kinds = ("tools.call", "tools.specs")

    def __init__(self, services: KernelServices) -> None:
        super().__init__(services)
        self.config = services.config.tools
        self._entries: dict[str, _Entry] = {}
        self._openai: list[dict[str, Any]] = []
        self._providers: list[ToolProvider] = []
        self._provider_queues: dict[int, ResourceQueue] = {}
        self._provider_errors: dict[str, str] = {}
        self._stale: set[ToolProvider] = set()

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Register every tool; start providers (MCP servers connect, a failed one is
        logged and retried by its supervisor: the kernel starts anyway)."""
        sources: list[Any] = list(self.services.options.get("tools") or ())
        for name in self.config.builtin:
            sources.append(self.services.registry.get("aios.tools", name))
        for obj in sources:
            self._add_source(obj)
        for cfg in self.services.config.mcp:
            from aios.tools.mcp import MCPProvider  # late: only kernels with MCP import it

            self._add_provider(MCPProvider(cfg, log=self.services.log))
        for provider in self._providers:
            try:
                await provider.start()
            except Exception as exc:
                self._provider_errors[provider.name] = f"{type(exc).__name__}: {exc}"
                self.services.log.warning("tools.provider_failed", provider=provider.name,
                                          error=str(exc))
            await self._load(provider, at_start=True)
        self._rebuild_specs()

    async def close(self) -> None:
        for provider in reversed(self._providers):
            try:
                await provider.close()
            except Exception as exc:  # closing must go on for the others
                self.services.log.warning("tools.provider_close_failed",
                                          provider=provider.name, error=str(exc))

    def _add_source(self, obj: Any) -> None:
        if isinstance(obj, ToolProvider):
            self._add_provider(obj)
        elif isinstance(obj, type) and issubclass(obj, ToolProvider):
            self._add_provider(obj())
        elif isinstance(obj, Tool):
            self._add_local(obj)
        elif callable(obj):
            self._add_local(tool(obj))
        else:
            raise ConfigError(f"not a tool, function or ToolProvider: {obj!r}", key="tools")

    def _add_local(self, t: Tool) -> None:
        window = t.spec.max_concurrency or self.config.max_concurrency
        queue = self.services.resource(f"tools:{t.name}", window)
        self._register(_Entry(t.spec, queue, t.spec.timeout_s or self.config.timeout_s, tool=t),
                       strict=True)

    def _add_provider(self, provider: ToolProvider) -> None:
        if not provider.name:
            raise ConfigError(f"tool provider {provider!r} has no name", key="tools")
        self._providers.append(provider)
        self._provider_queues[id(provider)] = self.services.resource(
            f"tools:{provider.name}", provider.max_concurrency)
        provider.on_change = lambda: self._stale.add(provider)

    def _register(self, entry: _Entry, *, strict: bool) -> bool:
        name = entry.spec.name
        old = self._entries.get(name)
        if old is not None and (old.provider is None or old.provider is not entry.provider):
            if strict:
                raise ConfigError(f"two tools are named {name!r}", key="tools")
            self.services.log.warning("tools.duplicate_skipped", tool=name,
                                      provider=entry.provider and entry.provider.name)
            return False
        self._entries[name] = entry
        return True

    async def _load(self, provider: ToolProvider, *, at_start: bool = False) -> None:
        """(Re)list a provider's tools. On failure the old list stays (its calls then
        fail with the provider's error) and the error is kept for ToolNotFound."""
        try:
            specs = await provider.list_tools()
        except Exception as exc:
            self._provider_errors[provider.name] = f"{type(exc).__name__}: {exc}"
            if not at_start or provider.name not in self._provider_errors:
                self.services.log.warning("tools.list_failed", provider=provider.name,
                                          error=str(exc))
            return
        self._provider_errors.pop(provider.name, None)
        for name in [n for n, e in self._entries.items() if e.provider is provider]:
            del self._entries[name]
        queue = self._provider_queues[id(provider)]
        for spec in specs:
            exposed = f"{provider.prefix}__{spec.name}" if provider.prefix else spec.name
            if not OPENAI_NAME.match(exposed):
                exposed = safe_tool_name(exposed)
            entry = _Entry(_renamed(spec, exposed), queue,
                           spec.timeout_s or self.config.timeout_s,
                           provider=provider, remote=spec.name)
            self._register(entry, strict=False)

    async def _refresh(self) -> None:
        stale, self._stale = self._stale, set()
        for provider in stale:
            await self._load(provider)
        self._rebuild_specs()

    def _rebuild_specs(self) -> None:
        self._openai = [e.spec.openai() for e in self._entries.values()]

    # -- syscalls -------------------------------------------------------------------

    async def call(self, sc: SyscallContext, syscall: Any) -> Any:
        if self._stale:
            await self._refresh()
        if isinstance(syscall, ToolCall):
            return await self._call(sc, syscall)
        if isinstance(syscall, ToolSpecs):
            return self._specs(sc, syscall)
        raise InvalidSyscall(f"tools handler cannot serve {syscall.kind!r}", syscall=syscall)

    def _specs(self, sc: SyscallContext, syscall: ToolSpecs) -> list[dict[str, Any]]:
        """What this caller may call: tools its rules deny are left out (the door
        refused explicitly named ones already)."""
        if syscall.names is not None:
            return [self._lookup(name, syscall).spec.openai() for name in syscall.names]
        if access_of(sc) is None:
            return list(self._openai)
        return [e.spec.openai() for name, e in self._entries.items()
                if tool_rule(sc, name) != "deny"]

    def _lookup(self, name: str, syscall: Any) -> _Entry:
        entry = self._entries.get(name)
        if entry is not None:
            return entry
        for provider in self._providers:  # a tool of a provider that is down
            if provider.prefix and name.startswith(f"{provider.prefix}__"):
                err = self._provider_errors.get(provider.name)
                if err:
                    raise ToolFailed(f"tool {name!r}: provider {provider.name!r} is not "
                                     f"available ({err})", syscall=syscall, tool=name)
        close = difflib.get_close_matches(name, list(self._entries), n=3)
        hint = f"close: {', '.join(close)}" if close else (
            f"available: {', '.join(sorted(self._entries)[:20]) or 'none'}")
        raise ToolNotFound(f"no tool named {name!r} ({hint})", syscall=syscall, tool=name)

    async def _call(self, sc: SyscallContext, call: ToolCall) -> ToolResult:
        entry = self._lookup(call.name, call)
        try:
            args = entry.validate(call.arguments)
        except ToolArgumentsInvalid as exc:
            exc.syscall = call
            raise
        if entry.spec.irreversible or tool_rule(sc, call.name) == "ask":
            args = await self._approve(sc, entry, call, args)
        async with sc.admitted(entry.queue) as slot:
            t0 = time.perf_counter()
            try:
                value = await self._invoke(sc, entry, args, call)
            finally:
                dt = time.perf_counter() - t0
                slot.service = dt
                sc.account(tool_calls=1, tool_s=dt)
        return self._result(call, value, dt)

    async def _approve(self, sc: SyscallContext, entry: _Entry, call: ToolCall,
                       args: dict[str, Any]) -> dict[str, Any]:
        """Wait for the approver, holding no slot (the process shows as waiting on
        approval and can be killed meanwhile); return the arguments to run with (the
        approver may have edited them: validated again) or raise ApprovalDenied."""
        reason = "irreversible" if entry.spec.irreversible else "marked 'ask' by a rule"
        request = ApprovalRequest(pid=sc.pid, agent=sc.name, group=sc.group, tool=call.name,
                                  arguments=args, reason=reason, call_id=call.call_id)
        access = access_of(sc)
        audit = access.manager.audit if access is not None and access.manager else None
        if access is not None:
            access.awaiting = call.name
        try:
            decision = await ask(self.services.options.get("approver"), request,
                                 timeout_s=self.config.approval_timeout_s, syscall=call,
                                 log=sc.log)
        finally:
            if access is not None:
                access.awaiting = None
        if audit is not None:
            audit.note(sc.sid, f"approved by {decision.by or 'approver'}")
        if decision.arguments is None:
            return args
        try:
            return entry.validate(decision.arguments)
        except ToolArgumentsInvalid as exc:
            raise ApprovalDenied(f"tool {call.name!r}: the approver's edited arguments are "
                                 f"invalid ({exc}); not run", syscall=call, tool=call.name,
                                 reason="invalid edited arguments") from None

    async def _invoke(self, sc: SyscallContext, entry: _Entry, args: dict[str, Any],
                      call: ToolCall) -> Any:
        """Run the tool under its timeout; every failure becomes a ToolError."""
        with anyio.move_on_after(entry.timeout_s) as scope:
            try:
                if entry.tool is not None:
                    return await entry.tool.invoke(sc.ctx, args)
                assert entry.provider is not None
                return await entry.provider.call(entry.remote, args)
            except ToolError as exc:
                exc.syscall = exc.syscall or call
                exc.tool = exc.tool or call.name
                raise
            except Exception as exc:
                raise ToolFailed(f"tool {call.name!r} raised {type(exc).__name__}: {exc}",
                                 syscall=call, tool=call.name) from exc
        assert scope.cancelled_caught
        raise ToolTimeout(f"tool {call.name!r} did not finish within {entry.timeout_s:g} s "
                          "(cancelled)", syscall=call, tool=call.name)

    def _result(self, call: ToolCall, value: Any, elapsed: float) -> ToolResult:
        if isinstance(value, ToolResult):
            content, is_error, value = value.content, value.is_error, value.value
        else:
            try:
                value = to_jsonable_python(value)
            except PydanticSerializationError as exc:
                raise ToolFailed(f"tool {call.name!r} returned a value that is not "
                                 f"JSON-serialisable: {exc}", syscall=call,
                                 tool=call.name) from None
            is_error = False
            content = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        limit = self.config.max_result_chars
        if len(content) > limit:
            raise ToolFailed(f"tool {call.name!r} returned {len(content):,} characters, more "
                             f"than tools.max_result_chars={limit:,}", syscall=call,
                             tool=call.name)
        return ToolResult(name=call.name, value=value, content=content, is_error=is_error,
                          call_id=call.call_id, elapsed_s=elapsed)


def _renamed(spec: ToolSpec, name: str) -> ToolSpec:
    if spec.name == name:
        return spec
    return ToolSpec(name=name, description=spec.description, parameters=spec.parameters,
                    timeout_s=spec.timeout_s, max_concurrency=spec.max_concurrency,
                    irreversible=spec.irreversible)
