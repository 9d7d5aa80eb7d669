"""``ctx.memory``: the agent-facing verbs of the memory manager.

Each verb builds one syscall (:mod:`aios.syscalls.memory`) and passes it to the kernel's
door; nothing here touches a store, a queue or the database.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ValidationError

from aios.errors import MemoryStoreError
from aios.syscalls.memory import (
    MemoryAdd,
    MemoryDelete,
    MemoryGet,
    MemoryHit,
    MemoryItem,
    MemorySearch,
    MemoryUpdate,
)

if TYPE_CHECKING:
    from aios.memory.conversation import Conversation

__all__ = ["MemoryClient"]


class _Door(Protocol):
    async def call(self, proc: Any, syscall: Any) -> Any: ...


class MemoryClient:
    """``ctx.memory``: the calling agent's memories (its own namespace by default,
    ``group:<its group>`` when asked). Errors: :class:`~aios.MemoryStoreError` (bad
    text, metadata, filter; a broken store), :class:`~aios.MemoryNotFound`,
    :class:`~aios.PermissionDenied` (a namespace out of reach),
    :class:`~aios.QuotaExceeded` (the namespace's cap)."""

    __slots__ = ("_door", "_proc", "_store")

    def __init__(self, door: _Door, proc: Any, store: str = "sqlite") -> None:
        self._door = door
        self._proc = proc
        self._store = store

    async def _call(self, model: type[BaseModel], **fields: Any) -> Any:
        try:
            syscall = model(store=self._store, **fields)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"])
            kind = model.model_fields["kind"].default
            raise MemoryStoreError(f"{kind}: {field}: {err['msg']}") from None
        return await self._door.call(self._proc, syscall)

    async def add(self, text: str, metadata: dict[str, Any] | None = None,
                  namespace: str | None = None) -> str:
        """Remember ``text``; returns the new memory's id."""
        result: str = await self._call(MemoryAdd, text=text, metadata=metadata,
                                       namespace=namespace)
        return result

    async def search(self, query: str, k: int = 5, namespace: str | None = None,
                     filter: dict[str, Any] | None = None) -> list[MemoryHit]:
        """The ``k`` best matches for ``query`` (words, any syntax is taken literally),
        best first; ``filter`` keeps memories whose metadata equals each given value."""
        result: list[MemoryHit] = await self._call(MemorySearch, query=query, k=k,
                                                   namespace=namespace, filter=filter)
        return result

    async def get(self, id: str) -> MemoryItem:
        result: MemoryItem = await self._call(MemoryGet, id=id)
        return result

    async def update(self, id: str, text: str | None = None,
                     metadata: dict[str, Any] | None = None) -> MemoryItem:
        """Replace the text and/or the metadata (None keeps it)."""
        result: MemoryItem = await self._call(MemoryUpdate, id=id, text=text,
                                              metadata=metadata)
        return result

    async def delete(self, id: str) -> None:
        await self._call(MemoryDelete, id=id)

    def conversation(self, system: str | None = None, **options: Any) -> Conversation:
        """A :class:`~aios.Conversation` that spills old turns into this memory."""
        from aios.memory.conversation import Conversation

        return Conversation(self, system=system, **options)
