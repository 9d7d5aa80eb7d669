"""Context: the agent-facing API, and the only way an agent reaches a managed resource.

Each verb builds a frozen syscall and passes it to the kernel's door. Nothing here talks
to a backend, a queue or the database directly, and nothing here keeps state beyond the
process it belongs to.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from aios.errors import InvalidSyscall
from aios.syscalls.llm import ChatResult, LLMChat

if TYPE_CHECKING:
    from aios._core.door import Door
    from aios.memory.client import MemoryClient
    from aios.process import Process
    from aios.storage.client import StorageClient
    from aios.tools.client import ToolsClient

__all__ = ["Context", "LLMClient", "LLMStream"]


class LLMStream:
    """Text deltas of one chat completion, as they are produced.

    Use as ``async with ctx.llm.stream(msgs) as s: async for delta in s: ...``; after the
    loop, ``s.result`` holds the full :class:`ChatResult`. Leaving the ``async with``
    (early, by an error or by cancellation) stops the generation and frees its slot at
    once. Iterating without ``async with`` raises :class:`InvalidSyscall`: a stream
    abandoned mid-way would otherwise hold its slot until the garbage collector ran.
    """

    def __init__(self, opener: AbstractAsyncContextManager[AsyncIterator[Any]]) -> None:
        self._opener = opener
        self._events: AsyncIterator[Any] | None = None
        self._result: ChatResult | None = None
        self._entered = False

    @property
    def result(self) -> ChatResult:
        """The full :class:`ChatResult`, once the ``async for`` loop has ended
        (:class:`InvalidSyscall` before)."""
        if self._result is None:
            raise InvalidSyscall("the stream has not finished yet: read s.result after "
                                 "the `async for delta in s` loop has ended")
        return self._result

    def __aiter__(self) -> LLMStream:
        if self._events is None:
            raise InvalidSyscall("iterate ctx.llm.stream(...) inside `async with "
                                 "ctx.llm.stream(...) as s:` so its slot is freed on exit")
        return self

    async def __anext__(self) -> str:
        assert self._events is not None
        while True:
            item = await self._events.__anext__()
            if isinstance(item, str):
                return item
            self._result = item

    async def __aenter__(self) -> LLMStream:
        if self._entered:
            raise InvalidSyscall("this ctx.llm.stream(...) was already entered: a stream is "
                                 "one generation, entered once (call ctx.llm.stream again "
                                 "for another)")
        self._entered = True
        self._events = await self._opener.__aenter__()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._opener.__aexit__(et, e, tb)


class LLMClient:
    """``ctx.llm``: chat completions on the kernel's LLM resources."""

    __slots__ = ("_door", "_proc")

    def __init__(self, door: Door, proc: Process[Any]) -> None:
        self._door = door
        self._proc = proc

    @staticmethod
    def _build(messages: Any, llm: str, params: dict[str, Any],
               extra: dict[str, Any]) -> LLMChat:
        unknown = sorted(k for k in extra if k != "extra_body") if extra else None
        if unknown:
            raise InvalidSyscall(
                f"llm.chat: unknown argument(s) {', '.join(unknown)} (known: "
                f"{', '.join(sorted(k for k in LLMChat.model_fields if k != 'kind'))}, "
                "extra_body={...} for backend-specific fields)")
        body = extra.get("extra_body") or {}
        try:
            return LLMChat(messages=messages, llm=llm, extra=body,
                           **{k: v for k, v in params.items() if v is not None})
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"])
            raise InvalidSyscall(f"llm.chat: {field}: {err['msg']}") from None

    async def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        llm: str = "default",
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: str | list[str] | None = None,
        seed: int | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        response_format: dict[str, Any] | None = None,
        **extra: Any,
    ) -> ChatResult:
        """One chat completion (OpenAI's message shapes). ``extra_body={...}`` sends
        backend-specific fields; any other unknown keyword is an :class:`InvalidSyscall`.

        Raises :class:`InvalidSyscall` (a bad field, named), the backend's ``LLMError``
        subclasses, ``PermissionDenied``/``QuotaExceeded`` from access control."""
        call = self._build(messages, llm, dict(
            max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=stop, seed=seed,
            tools=tools, tool_choice=tool_choice, response_format=response_format), extra)
        result: ChatResult = await self._door.call(self._proc, call)
        return result

    def stream(
        self,
        messages: list[dict[str, Any]],
        *,
        llm: str = "default",
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: str | list[str] | None = None,
        seed: int | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        response_format: dict[str, Any] | None = None,
        **extra: Any,
    ) -> LLMStream:
        """Like :meth:`chat`, streaming text deltas; see :class:`LLMStream`."""
        call = self._build(messages, llm, dict(
            max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=stop, seed=seed,
            tools=tools, tool_choice=tool_choice, response_format=response_format), extra)
        return LLMStream(self._door.stream(self._proc, call))


class Context:
    """What an agent receives as its first argument: its identity and one client per
    syscall family (``llm``, ``tools``, ``memory``, ``storage``)."""

    __slots__ = ("_door", "_memory", "_proc", "_storage", "_tools", "llm")

    def __init__(self, door: Door, proc: Process[Any]) -> None:
        self._door = door
        self._proc = proc
        self.llm = LLMClient(door, proc)
        self._tools: ToolsClient | None = None
        self._memory: MemoryClient | None = None
        self._storage: StorageClient | None = None

    @property
    def tools(self) -> ToolsClient:
        if self._tools is None:
            from aios.tools.client import ToolsClient

            self._tools = ToolsClient(self._door, self._proc)
        return self._tools

    @property
    def memory(self) -> MemoryClient:
        if self._memory is None:
            from aios.memory.client import MemoryClient

            self._memory = MemoryClient(self._door, self._proc,
                                        store=self._proc.kernel_config.memory.store)
        return self._memory

    @property
    def storage(self) -> StorageClient:
        if self._storage is None:
            from aios.storage.client import StorageClient

            self._storage = StorageClient(self._door, self._proc)
        return self._storage

    @property
    def log(self) -> Any:
        """A structlog-style logger bound to this process (pid, agent)."""
        return self._proc.log

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def name(self) -> str:
        return self._proc.name

    @property
    def group(self) -> str:
        return self._proc.group

    @property
    def priority(self) -> int:
        return self._proc.priority

    @property
    def access(self) -> Any:
        """What this agent may do (:class:`aios.access.grants.ProcessAccess`: its
        ``caps`` and ``quota``), or None when access control is off."""
        return self._proc.access
