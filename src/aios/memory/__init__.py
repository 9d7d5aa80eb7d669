"""The memory manager: per-agent two-tier memory (RAM tier with LRU-K over a persistent
store with FTS5 search), the ``ctx.memory`` client, and :class:`Conversation`."""

from __future__ import annotations

from aios.memory.base import MemoryStore
from aios.memory.conversation import Conversation

__all__ = ["Conversation", "MemoryStore"]
