"""Tool syscalls: call one tool, list the tools a caller may use; and a call's result."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ToolCall", "ToolResult", "ToolSpecs"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ToolCall(_Frozen):
    """Call the tool ``name`` with ``arguments``.

    ``arguments`` is a mapping, or the JSON text a model produced (validated by the
    handler, so a string that is not JSON is answered as invalid arguments, naming the
    problem). ``call_id`` is the model's tool-call id, kept for logs and tool messages.
    """

    kind: Literal["tools.call"] = "tools.call"
    name: str = Field(min_length=1)
    arguments: dict[str, Any] | str = Field(default_factory=dict)
    call_id: str | None = None

    @property
    def resource(self) -> str:
        return f"tools:{self.name}"


class ToolSpecs(_Frozen):
    """The OpenAI ``tools`` list of the named tools (all when ``names`` is None) that
    the caller may use. A syscall, so that access control can filter what it shows."""

    kind: Literal["tools.specs"] = "tools.specs"
    names: tuple[str, ...] | None = None

    @property
    def resource(self) -> str:
        return "tools"


class ToolResult(_Frozen):
    """The result of :class:`ToolCall`.

    ``value`` is what the tool returned, made JSON-compatible; ``content`` is the text
    the model sees (the string itself, or ``value`` as JSON); ``is_error`` is true when
    the tool reported an error itself (an MCP ``isError`` result) or, in
    ``ctx.tools.run``, when the call failed and ``content`` explains why.
    ``elapsed_s`` is the tool's own run time in seconds (queueing excluded).
    """

    name: str
    value: Any = None
    content: str = ""
    is_error: bool = False
    call_id: str | None = None
    elapsed_s: float = 0.0
