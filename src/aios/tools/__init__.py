"""The tool manager: tools defined with ``@aios.tool``, plugin providers, MCP servers.

Agents use it as ``ctx.tools`` (:mod:`aios.tools.client`); the kernel serves it through
:mod:`aios.tools.handler`. Plugin authors implement :class:`ToolProvider`.
"""

from __future__ import annotations

from aios.tools.base import ToolProvider, ToolSpec
from aios.tools.function import Tool, tool

__all__ = ["Tool", "ToolProvider", "ToolSpec", "tool"]
