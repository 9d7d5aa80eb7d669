"""LLM syscalls: one chat completion, and its result."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, field_validator

__all__ = [
    "ChatResult",
    "LLMChat",
    "ToolCallRequest",
    "Usage",
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """One entry of ``tools`` in OpenAI's shape: ``{"type": "function", "function":
    {"name": str, "description"?: str, "parameters"?: JSON schema}}``."""
    fn = tool.get("function")
    if tool.get("type") != "function" or not isinstance(fn, dict) or not (
            isinstance(fn.get("name"), str) and fn["name"]):
        raise ValueError('a tool must be {"type": "function", "function": {"name": str, '
                         f'...}}}} (as ctx.tools.specs() gives), got {tool!r:.200}')
    return tool


class LLMChat(_Frozen):
    """Ask an LLM resource for one chat completion.

    Every sampling parameter given here reaches the backend unchanged; ``extra`` carries
    backend-specific fields (sent as extra body by the ``openai`` backend).
    """

    kind: Literal["llm.chat"] = "llm.chat"
    llm: str = "default"
    messages: list[dict[str, Any]] = Field(min_length=1)
    # Strict: a "5" or a 5.0 is a mistake to name, not a value to convert.
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: list[str] | None = None
    seed: StrictInt | None = None
    tools: list[Annotated[dict[str, Any], AfterValidator(_check_tool)]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("messages")
    @classmethod
    def _check_messages(cls, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [_check_message(i, m) for i, m in enumerate(messages)]

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_list(cls, stop: Any) -> Any:
        return [stop] if isinstance(stop, str) else stop  # OpenAI accepts a lone string

    @field_validator("temperature", "top_p")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @field_validator("extra", "tools", "response_format", "tool_choice")
    @classmethod
    def _encodable(cls, v: Any) -> Any:
        _check_text(v, "value")
        return v

    @property
    def resource(self) -> str:
        return f"llm:{self.llm}"


_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def _check_message(i: int, m: dict[str, Any]) -> dict[str, Any]:
    """One message in OpenAI's shapes; text-only content parts become one string, so every
    backend (chat templates included) sees the same thing."""
    if not isinstance(m, dict):
        raise ValueError(f"message {i} must be an object, got {type(m).__name__}")
    role = m.get("role")
    if role not in _ROLES:
        raise ValueError(f"message {i}: role must be one of {', '.join(sorted(_ROLES))}, "
                         f"got {role!r}")
    content = m.get("content")
    if isinstance(content, list):
        if all(isinstance(p, dict) and p.get("type") == "text"
               and isinstance(p.get("text"), str) for p in content):
            m = {**m, "content": "".join(str(p["text"]) for p in content)}
        elif not all(isinstance(p, dict) and isinstance(p.get("type"), str) for p in content):
            raise ValueError(f"message {i}: content parts must be objects with a 'type'")
    elif content is not None and not isinstance(content, str):
        raise ValueError(f"message {i}: content must be a string, a list of content parts "
                         f"or null, got {type(content).__name__}")
    elif content is None and role != "assistant":
        raise ValueError(f"message {i}: a {role} message needs content")
    if len(m) == 2 and isinstance(content, str):  # the common {role, content}: no JSON pass
        try:
            content.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"message {i}: text is not valid Unicode (a lone surrogate)"
                             ) from None
    else:
        _check_text(m, f"message {i}")
    return m


def _check_text(v: Any, where: str) -> None:
    """Every string must encode as UTF-8 (a lone surrogate cannot be sent anywhere), and
    the whole value must be JSON (it goes on the wire). One pass in C."""
    if not v and not isinstance(v, str):  # None, {}, []: nothing to check
        return
    try:
        json.dumps(v, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{where}: text is not valid Unicode (a lone surrogate)") from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: not JSON-serialisable: {exc}") from None


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
    reasoning: str = ""
    """The model's reasoning (``reasoning_content`` of reasoning servers), apart from the
    answer; its tokens are in ``usage.completion_tokens``. Not part of :attr:`message`."""
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
