"""``ctx.tools``: the agent's verbs on the tool manager.

Each verb builds a syscall and hands it to the kernel's door; nothing here runs a tool
or keeps state. :meth:`ToolsClient.run` is the one convenience with logic: it runs every
tool call of a model reply at once and turns each failure into a tool message the model
can act on (which field was wrong and what was expected), as Pydantic AI does, instead
of raising.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import ValidationError

from aios.errors import InvalidSyscall, ToolArgumentsInvalid, ToolError
from aios.syscalls.llm import ToolCallRequest
from aios.syscalls.tools import ToolCall, ToolResult, ToolSpecs

if TYPE_CHECKING:
    from aios._core.door import Door
    from aios.process import Process

__all__ = ["ToolsClient"]


class ToolsClient:
    """``ctx.tools``: list, call and run tools through the kernel."""

    __slots__ = ("_door", "_proc")

    def __init__(self, door: Door, proc: Process[Any]) -> None:
        self._door = door
        self._proc = proc

    async def specs(self, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """The OpenAI ``tools`` list of the tools this agent may call (only ``names``
        when given; :class:`aios.ToolNotFound` for an unknown one). Pass it as
        ``ctx.llm.chat(..., tools=await ctx.tools.specs())``."""
        if isinstance(names, str):
            names = (names,)  # one name, not its letters
        try:
            syscall = ToolSpecs(names=None if names is None else tuple(names))
        except (TypeError, ValidationError) as exc:
            raise InvalidSyscall(f"tools.specs: names must be a list of tool names (str), "
                                 f"got {names!r}") from exc
        return await self._door.call(self._proc, syscall)  # type: ignore[no-any-return]

    async def call(self, name: str, arguments: Mapping[str, Any] | str | None = None, *,
                   call_id: str | None = None) -> ToolResult:
        """Run tool ``name`` with ``arguments`` (a mapping, or a model's JSON text).

        Raises :class:`aios.ToolNotFound`, :class:`aios.ToolArgumentsInvalid` (naming
        each bad field), :class:`aios.ToolTimeout`, :class:`aios.ToolFailed`,
        :class:`aios.ApprovalDenied`."""
        args: dict[str, Any] | str
        if isinstance(arguments, str):
            args = arguments
        elif arguments is None:
            args = {}
        elif isinstance(arguments, Mapping):
            args = dict(arguments)
        else:
            raise ToolArgumentsInvalid(
                f"tool {name!r}: arguments must be a mapping of parameter names to values "
                f"(or the model's JSON text), got {type(arguments).__name__} {arguments!r}",
                tool=str(name), errors=[{"loc": "", "msg": "must be an object",
                                         "type": "dict_type"}])
        try:
            syscall = ToolCall(name=name, arguments=args, call_id=call_id)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"])
            raise InvalidSyscall(f"tools.call: {field}: {err['msg']}") from None
        return await self._door.call(self._proc, syscall)  # type: ignore[no-any-return]

    async def run(self, tool_calls: Sequence[ToolCallRequest | Mapping[str, Any]]
                  ) -> list[dict[str, Any]]:
        """Run all ``tool_calls`` of one model reply in parallel; return one OpenAI
        ``{"role": "tool", "tool_call_id", "content"}`` message per call, in order.

        A call that fails as a tool call (unknown tool, invalid or non-JSON arguments,
        the tool raised, timed out or was not approved) is answered with a message
        saying so, so the model can correct itself; other errors (cancellation, a
        kernel that closed, a quota) propagate."""
        if isinstance(tool_calls, (str, bytes, Mapping)) or not isinstance(tool_calls,
                                                                            Sequence):
            raise InvalidSyscall(f"tools.run: tool_calls must be a list (a reply's "
                                 f"tool_calls), got {type(tool_calls).__name__}")
        calls = [_request(i, c) for i, c in enumerate(tool_calls)]
        out: list[dict[str, Any]] = [{} for _ in calls]
        failures: list[Exception] = []

        async def one(i: int, c: ToolCallRequest) -> None:
            try:
                result = await self.call(c.name, c.arguments, call_id=c.id)
                content = result.content
            except ToolArgumentsInvalid as exc:
                content = str(exc)
            except (ToolError, InvalidSyscall) as exc:
                content = f"Error: {exc}"
            except Exception as exc:  # raised after the others finish: no ExceptionGroup
                failures.append(exc)
                return
            out[i] = {"role": "tool", "tool_call_id": c.id, "content": content}

        if len(calls) == 1:  # no task group for the common single call
            await one(0, calls[0])
        else:
            async with anyio.create_task_group() as tg:
                for i, c in enumerate(calls):
                    tg.start_soon(one, i, c)
        if failures:
            raise failures[0]
        return out


def _request(i: int, c: ToolCallRequest | Mapping[str, Any]) -> ToolCallRequest:
    """A ToolCallRequest from one, or from an OpenAI ``tool_calls`` entry (``i``: its
    index, named in the error if it is neither)."""
    if isinstance(c, ToolCallRequest):
        return c
    fn = c.get("function") if isinstance(c, Mapping) else None
    if not isinstance(c, Mapping) or not isinstance(fn or {}, Mapping):
        raise InvalidSyscall(f"tools.run: tool_calls.{i} must be a ToolCallRequest or an "
                             f"OpenAI tool call {{'id', 'function': {{'name', 'arguments'}}}}"
                             f", got {c!r}")
    fn = fn or {}
    return ToolCallRequest(id=str(c.get("id", "")), name=str(fn.get("name", c.get("name", ""))),
                           arguments=str(fn.get("arguments", c.get("arguments", "")) or ""))
