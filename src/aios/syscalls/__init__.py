"""Syscalls: the data an agent hands to the kernel, and the results it gets back.

Syscalls are frozen pydantic models named ``<Resource><Action>`` with a ``kind`` literal
discriminator (``"<family>.<verb>"``). Agents do not build them by hand: the verbs on
:class:`aios.Context` (``ctx.llm.chat``, ``ctx.tools.call``...) do, and pass them to the
kernel's one door. One module per family; this package must never do I/O or import a
backend SDK.
"""

from __future__ import annotations

from aios.syscalls.llm import ChatResult, LLMChat, ToolCallRequest, Usage
from aios.syscalls.tools import ToolCall, ToolResult, ToolSpecs

__all__ = [
    "ChatResult",
    "LLMChat",
    "ToolCall",
    "ToolCallRequest",
    "ToolResult",
    "ToolSpecs",
    "Usage",
]
