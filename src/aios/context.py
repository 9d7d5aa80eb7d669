"""Context: the agent-facing API, and the only way an agent reaches a managed resource.

Each verb builds a frozen syscall and passes it to the kernel's single ``submit()`` door.
Nothing here talks to a backend, a queue or the database directly, and nothing here
keeps state beyond the process it belongs to.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from aios.errors import InvalidSyscall
from aios.syscalls import ChatResult, LLMChat

if TYPE_CHECKING:
    from aios.kernel import Kernel
    from aios.process import Process

__all__ = ["Context", "LLMClient", "LLMStream"]


class LLMStream:
    """Text deltas of one chat completion, as they are produced.

    Use as ``async with ctx.llm.stream(msgs) as s: async for delta in s: ...``; after the
    loop, ``s.result`` holds the full :class:`ChatResult`. Leaving the ``async with``
    early stops the generation and frees its slot at once.
    """

    def __init__(self, events: AsyncIterator[str | ChatResult]) -> None:
        self._events = events
        self._result: ChatResult | None = None

    @property
    def result(self) -> ChatResult:
        if self._result is None:
            raise RuntimeError("the stream has not finished yet")
        return self._result

    def __aiter__(self) -> LLMStream:
        return self

    async def __anext__(self) -> str:
        while True:
            item = await self._events.__anext__()
            if isinstance(item, str):
                return item
            self._result = item

    async def aclose(self) -> None:
        aclose = getattr(self._events, "aclose", None)
        if aclose is not None:
            await aclose()

    async def __aenter__(self) -> LLMStream:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class LLMClient:
    """``ctx.llm``: chat completions on the kernel's LLM resources."""

    __slots__ = ("_kernel", "_proc")

    def __init__(self, kernel: Kernel, proc: Process[Any]) -> None:
        self._kernel = kernel
        self._proc = proc

    def _build(self, messages: list[dict[str, Any]], llm: str, params: dict[str, Any]) -> LLMChat:
        known = LLMChat.model_fields
        extra = {k: params.pop(k) for k in list(params) if k not in known}
        try:
            return LLMChat(messages=messages, llm=llm, extra=extra,
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
        stop: list[str] | None = None,
        seed: int | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        response_format: dict[str, Any] | None = None,
        **extra: Any,
    ) -> ChatResult:
        """One chat completion. Unknown keyword arguments go to the backend as extra."""
        call = self._build(messages, llm, dict(
            max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=stop, seed=seed,
            tools=tools, tool_choice=tool_choice, response_format=response_format, **extra))
        result: Any = None
        async for item in self._kernel.submit(self._proc, call):
            result = item
        return result  # type: ignore[no-any-return]

    def stream(
        self,
        messages: list[dict[str, Any]],
        *,
        llm: str = "default",
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: list[str] | None = None,
        seed: int | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        response_format: dict[str, Any] | None = None,
        **extra: Any,
    ) -> LLMStream:
        """Like :meth:`chat`, streaming text deltas; see :class:`LLMStream`."""
        call = self._build(messages, llm, dict(
            max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=stop, seed=seed,
            tools=tools, tool_choice=tool_choice, response_format=response_format, **extra))
        return LLMStream(self._kernel.submit(self._proc, call))


class Context:
    """What an agent receives as its first argument."""

    __slots__ = ("_proc", "llm", "log")

    def __init__(self, kernel: Kernel, proc: Process[Any], log: Any) -> None:
        self._proc = proc
        self.llm = LLMClient(kernel, proc)
        self.log = log

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
