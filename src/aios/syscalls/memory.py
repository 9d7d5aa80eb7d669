"""Memory syscalls: add, search, get, update and delete an agent's memories.

Each is a frozen model with a ``kind`` literal; ``resource`` names the store it is
scheduled on (``memory:<store>``, filled in by the client from the kernel's config).
The models accept any text and metadata: what the memory manager refuses (empty or
oversized text, metadata that is not JSON, a bad filter) it refuses with a
:class:`~aios.errors.MemoryStoreError` naming the problem, so a syscall that arrives by
another road (HTTP, a journal replay) is checked the same way.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "MemoryAdd",
    "MemoryDelete",
    "MemoryGet",
    "MemoryHit",
    "MemoryItem",
    "MemorySearch",
    "MemoryUpdate",
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _MemorySyscall(_Frozen):
    store: str = "sqlite"
    """The memory store serving it (``memory.store`` of the kernel's config)."""

    @property
    def resource(self) -> str:
        return f"memory:{self.store}"


class MemoryAdd(_MemorySyscall):
    """Remember ``text`` (with optional JSON ``metadata``) in ``namespace``; the result is
    the new memory's id (``str``). ``namespace`` None: the agent's own."""

    kind: Literal["memory.add"] = "memory.add"
    text: str
    metadata: dict[str, Any] | None = None
    namespace: str | None = None


class MemorySearch(_MemorySyscall):
    """The ``k`` memories of ``namespace`` that best match ``query`` (BM25 with the
    built-in store), as a list of :class:`MemoryHit`, best first. ``filter`` keeps only
    memories whose metadata has each given key equal to the given value (a key that a
    memory lacks does not match)."""

    kind: Literal["memory.search"] = "memory.search"
    query: str
    k: int = Field(default=5, ge=1, le=1000)
    namespace: str | None = None
    filter: dict[str, Any] | None = None


class MemoryGet(_MemorySyscall):
    """The memory with this id (a :class:`MemoryItem`), if the caller may reach it."""

    kind: Literal["memory.get"] = "memory.get"
    id: str


class MemoryUpdate(_MemorySyscall):
    """Replace the text and/or the metadata of a memory (None keeps it); the result is
    the updated :class:`MemoryItem`."""

    kind: Literal["memory.update"] = "memory.update"
    id: str
    text: str | None = None
    metadata: dict[str, Any] | None = None


class MemoryDelete(_MemorySyscall):
    """Forget a memory. The result is None."""

    kind: Literal["memory.delete"] = "memory.delete"
    id: str


class MemoryItem(_Frozen):
    """One memory. ``created`` and ``updated`` are Unix times in seconds."""

    id: str
    namespace: str
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    created: float = 0.0
    updated: float = 0.0


class MemoryHit(_Frozen):
    """One search result. ``score``: higher is better; its scale is the store's (BM25
    for the built-in store), comparable only within one search."""

    id: str
    text: str
    score: float
    metadata: dict[str, Any] = Field(default_factory=dict)
    namespace: str

