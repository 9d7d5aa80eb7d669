"""LLM syscalls: one chat completion, and its result."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ChatResult",
    "LLMChat",
    "ToolCallRequest",
    "Usage",
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LLMChat(_Frozen):
    """Ask an LLM resource for one chat completion.

    Every sampling parameter given here reaches the backend unchanged; ``extra`` carries
    backend-specific fields (sent as extra body by the ``openai`` backend).
    """

    kind: Literal["llm.chat"] = "llm.chat"
    llm: str = "default"
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: list[str] | None = None
    seed: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    extra: dict[str, Any] = Field(default_factory=dict)

    @property
    def resource(self) -> str:
        return f"llm:{self.llm}"


class Usage(_Frozen):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class ToolCallRequest(_Frozen):
    """A tool call the model asked for (OpenAI shape: id, function name, JSON arguments)."""

    id: str
    name: str
    arguments: str


class ChatResult(_Frozen):
    """The result of :class:`LLMChat`."""

    text: str
    tool_calls: list[ToolCallRequest] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    finish_reason: str = "stop"
    model: str = ""
    context_switches: int = 0

    @property
    def message(self) -> dict[str, Any]:
        """The assistant message to append to the conversation (OpenAI shape: its
        ``tool_calls`` included, ``content`` None when it only calls tools)."""
        msg: dict[str, Any] = {"role": "assistant", "content": self.text or None}
        if self.tool_calls:
            msg["tool_calls"] = [
                {"id": c.id, "type": "function",
                 "function": {"name": c.name, "arguments": c.arguments}}
                for c in self.tool_calls
            ]
        elif msg["content"] is None:
            msg["content"] = ""
        return msg
