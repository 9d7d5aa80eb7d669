"""What a tool is to the kernel: a :class:`ToolSpec`, and the :class:`ToolProvider`
interface through which plugins and MCP servers offer tools.

A provider only lists and calls; validation, scheduling, timeouts, approval and
accounting are the kernel's (``aios.tools.handler``), so a provider must never
implement its own queue or retry loop.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["OPENAI_NAME", "ToolProvider", "ToolSpec", "safe_tool_name"]

OPENAI_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""What OpenAI (and most servers following it) accept as a function name."""


def safe_tool_name(name: str) -> str:
    """``name`` made valid as an OpenAI function name: other characters become ``_``,
    cut to 64 characters."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64] or "_"


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """One tool as the model sees it, plus the kernel's limits for it.

    ``parameters`` is a JSON schema of an object. ``timeout_s`` and
    ``max_concurrency`` default to the ``[tools]`` config when None. ``irreversible``
    calls need approval (default: denied).
    """

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}})
    timeout_s: float | None = None
    max_concurrency: int | None = None
    irreversible: bool = False

    def openai(self) -> dict[str, Any]:
        """The entry of an OpenAI ``tools`` list."""
        return {"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": self.parameters}}


class ToolProvider(ABC):
    """A source of tools (entry-point group ``aios.tools``, or an MCP server).

    ``name`` names the provider's resource (``tools:<name>``: one queue whose window is
    ``max_concurrency`` for all its tools). With ``prefix`` set, its tools appear to
    agents as ``<prefix>__<tool>``. A provider whose tool list changes calls
    :attr:`on_change` (set by the kernel); the kernel lists again before the next use.
    """

    name: str = ""
    prefix: str | None = None
    max_concurrency: int = 8
    on_change: Callable[[], None] | None = None

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect, spawn, open. Called once when the kernel starts. Default: nothing."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what :meth:`start` acquired. Default: nothing."""

    @abstractmethod
    async def list_tools(self) -> list[ToolSpec]:
        """The tools offered now (names as the provider knows them)."""

    @abstractmethod
    async def call(self, name: str, arguments: dict[str, Any]) -> Any:
        """Run tool ``name`` with validated ``arguments``; return a JSON-compatible
        value, or a :class:`aios.ToolResult` to set its text and ``is_error`` directly.
        Raise :class:`aios.ToolFailed` (or any exception, which the kernel wraps)."""
